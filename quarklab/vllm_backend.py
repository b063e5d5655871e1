"""An optional vLLM sampling backend with the table interface of :func:`quarklab.sample`.

vLLM is not a dependency of quarklab (it needs a CUDA machine); this module imports it only
when a :class:`VLLMSampler` is created, and says so clearly when it is missing::

    sampler = VLLMSampler(world.policy)                 # or a hub id
    samples = sampler.sample(prompts, n=8, temperature=0.9, top_p=0.9)

Prompts are encoded and cut exactly as :func:`quarklab.sample` does (same budget, same
``TL;DR:`` tail), and the result has the same columns: ``prompt_id``, ``sample``, ``prompt``,
``token``, ``completion``, ``completion_ids``, ``finished``, ``prompt_ids``, ``prompt_truncated``,
``num_tokens``.
vLLM seeds its own generator, so samples differ from the transformers path's for the same seed.
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import replace

import numpy as np
import pandas as pd

from .errors import QuarkError
from .sampling import SamplingParams
from .tldr import encode_prompt, prompt_budget, prompt_lists

COLUMNS = ["prompt_id", "sample", "prompt", "token", "completion", "completion_ids", "finished",
           "prompt_ids", "prompt_truncated", "num_tokens"]


def vllm_available() -> bool:
    """Whether ``import vllm`` would find the package (without importing it)."""
    return importlib.util.find_spec("vllm") is not None


def require_vllm():
    """The vllm module, or one clear error when it cannot be imported (a run with ``sampler="vllm"`` checks
    before it starts)."""
    try:
        import vllm
    except ImportError as exc:  # missing, or installed without its CUDA libraries
        raise QuarkError(f"the vLLM sampling backend needs the vllm package, which cannot be imported here "
                         f"({type(exc).__name__}: {exc}); install it on a CUDA machine (pip install vllm), "
                         "or sample with quarklab.sample (transformers)") from exc
    return vllm


class VLLMSampler:
    """Samples completions with a vLLM engine; ``sample`` mirrors :func:`quarklab.sample`.

    ``model`` is a hub id or a ``save_pretrained`` folder (vLLM loads its own copy of the
    weights; ``dtype``, ``gpu_memory_utilization``, ``max_model_len`` and any other keyword
    go to ``vllm.LLM``).
    """

    def __init__(self, model: str | os.PathLike, *, tokenizer: str | os.PathLike | None = None,
                 dtype: str = "auto", gpu_memory_utilization: float = 0.3, max_model_len: int | None = None,
                 seed: int = 0, **llm_kwargs):
        vllm = require_vllm()
        self._vllm = vllm
        self.model = os.fspath(model)
        kwargs = dict(model=self.model, tokenizer=os.fspath(tokenizer or model), dtype=dtype, seed=seed,
                      gpu_memory_utilization=gpu_memory_utilization, **llm_kwargs)
        if max_model_len:
            kwargs["max_model_len"] = max_model_len
        try:
            self.llm = vllm.LLM(**kwargs)
        except Exception as exc:  # vLLM raises many types (no GPU, unsupported architecture, memory)
            raise QuarkError(f"vLLM could not load {self.model!r} ({type(exc).__name__}: "
                             f"{str(exc).splitlines()[0] if str(exc) else ''})") from exc
        self.tokenizer = self.llm.get_tokenizer()
        self.config = self.llm.llm_engine.model_config  # its max_model_len is the context (models.context_length)

    def _sampling_params(self, params: SamplingParams, suppress: list[int] | None, seed: int):
        kwargs = dict(n=params.n, max_tokens=params.max_new_tokens, seed=seed, skip_special_tokens=True,
                      stop_token_ids=[self.tokenizer.eos_token_id])
        if params.do_sample:
            kwargs.update(temperature=params.temperature, top_p=params.top_p, top_k=params.top_k or -1)
        else:
            kwargs.update(temperature=0.0)
        if suppress:
            kwargs["logit_bias"] = {int(i): -100.0 for i in suppress}
        return self._vllm.SamplingParams(**kwargs)

    def sample(self, prompts, params: SamplingParams | None = None, *, token: int | None = None,
               prefix_token_id: int | None = None, suppress: list[int] | None = None, **overrides) -> pd.DataFrame:
        """``params.n`` completions per prompt, as a table with :func:`quarklab.sample`'s columns."""
        params = replace(params or SamplingParams(), **overrides)
        texts, pids = prompt_lists(prompts)
        budget = prompt_budget(self, params.max_new_tokens)
        seen: dict[str, tuple[list[int], bool]] = {}
        encoded = [seen.get(t) or seen.setdefault(t, encode_prompt(self.tokenizer, t, budget)) for t in texts]
        inputs = [{"prompt_token_ids": ([prefix_token_id] if prefix_token_id is not None else []) + ids}
                  for ids, _ in encoded]
        outputs = self.llm.generate(inputs, self._sampling_params(params, suppress, params.seed), use_tqdm=False)
        eos = self.tokenizer.eos_token_id
        rows = []
        for i, out in enumerate(outputs):
            for s, comp in enumerate(sorted(out.outputs, key=lambda c: c.index)):
                ids = list(comp.token_ids)
                finished = comp.finish_reason == "stop"
                if eos in ids:
                    ids = ids[: ids.index(eos)]
                rows.append((pids[i], s, texts[i], token, ids, finished, encoded[i][0], encoded[i][1]))
        df = pd.DataFrame(rows, columns=["prompt_id", "sample", "prompt", "token", "completion_ids", "finished",
                                         "prompt_ids", "prompt_truncated"])
        df.insert(4, "completion", self.tokenizer.batch_decode(df["completion_ids"].tolist(),
                                                               skip_special_tokens=True))
        df["num_tokens"] = df["completion_ids"].map(len).astype(np.int64)
        return df[COLUMNS]

    __call__ = sample
