"""Sampling completions: batched, left-padded ``generate`` with a KV cache, n samples per prompt.

Prompts are tokenized once, cut to fit the context as their task says (TL;DR: from the left of the post
body, keeping the ``SUBREDDIT``/``TITLE`` head when possible and always the trailing ``TL;DR:``;
continuation: keeping the end; :mod:`quarklab.tasks`), optionally prefixed with a quantile token (no
space), sorted by length so each batch carries little padding, and generated under ``inference_mode``. The
result is a table with one row per completion, in the order of the prompts given; it carries the
encoded prompt (``prompt_ids``), so nothing downstream (training, perplexity) encodes it again.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Literal

import numpy as np
import pandas as pd
import torch

from .config import QuarkConfig, check_field
from .errors import QuarkError
from .models import position_ids_from_mask
from .tasks import get_task
from .tldr import prompt_budget, prompt_lists

COLUMNS = ["prompt_id", "sample", "prompt", "token", "completion", "completion_ids", "finished",
           "prompt_ids", "prompt_truncated", "num_tokens"]
"""The columns of a samples table, as :func:`sample` and :class:`quarklab.vllm_backend.VLLMSampler` return it."""

Purpose = Literal["explore", "greedy", "sampled"]


@dataclass(frozen=True)
class SamplingParams:
    """How to sample. ``do_sample=False`` is greedy decoding (temperature, top-p, top-k unused). ``task`` says how
    a prompt is cut to the context (:mod:`quarklab.tasks`).

    Each field is checked as the config field it comes from (:data:`CONFIG_FIELDS`, the same rules and
    wording); :meth:`from_config` builds the settings a run samples with."""

    n: int = 1
    do_sample: bool = True
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    max_new_tokens: int = 48
    batch_size: int = 64
    seed: int = 0
    task: str = "tldr"

    def __post_init__(self):
        for name, (field_name, called) in CONFIG_FIELDS.items():
            if name != "temperature" or self.do_sample:  # greedy decoding has no temperature
                check_field(field_name, getattr(self, name), where="sampling", called=called)

    @classmethod
    def from_config(cls, config: QuarkConfig, purpose: Purpose = "explore", seed: int = 0) -> "SamplingParams":
        """The settings a run samples with: ``"explore"``, an iteration's pool (``samples_per_prompt`` per prompt at
        the exploration ``temperature``, ``top_p`` and ``top_k``, ``max_new_tokens``, ``sample_batch_size``);
        ``"greedy"`` and ``"sampled"``, its evaluation (greedy, or ``eval_sampled_n`` per prompt at the
        exploration settings; ``eval_max_new_tokens``, ``eval_batch_size``)."""
        c = config
        if purpose == "explore":
            return cls(n=c.samples_per_prompt, do_sample=True, temperature=c.temperature, top_p=c.top_p, top_k=c.top_k,
                       max_new_tokens=c.max_new_tokens, batch_size=c.sample_batch_size, seed=seed, task=c.task)
        if purpose == "greedy":
            return cls(do_sample=False, max_new_tokens=c.eval_max_new_tokens, batch_size=c.eval_batch_size, seed=seed,
                       task=c.task)
        if purpose == "sampled":
            return cls(n=c.eval_sampled_n, temperature=c.temperature, top_p=c.top_p, top_k=c.top_k,
                       max_new_tokens=c.eval_max_new_tokens, batch_size=c.eval_batch_size, seed=seed, task=c.task)
        raise QuarkError(f"purpose must be one of 'explore', 'greedy', 'sampled', got {purpose!r}")


CONFIG_FIELDS: dict[str, tuple[str, str]] = {
    "n": ("samples_per_prompt", "n (samples per prompt)"), "temperature": ("temperature", "temperature"),
    "top_p": ("top_p", "top_p"), "top_k": ("top_k", "top_k"), "max_new_tokens": ("max_new_tokens", "max_new_tokens"),
    "batch_size": ("sample_batch_size", "batch_size (sequences per generate call)"), "seed": ("seed", "seed"),
    "task": ("task", "task")}
"""Each :class:`SamplingParams` field checked as a :class:`~quarklab.config.QuarkConfig` field: ``(config field,
name in the message)``."""


@dataclass
class EncodedPrompts:
    """Prompts as every sampler encodes them: their texts and ids, and each text's token ids, cut to fit the
    context with room for the completion, and whether it was cut (the task's ``encode_prompt``,
    :mod:`quarklab.tasks`)."""

    texts: list[str]
    ids: list
    encoded: list[tuple[list[int], bool]]


def encode_prompts(tokenizer, prompts, model, max_new_tokens: int, task: str = "tldr") -> EncodedPrompts:
    """``prompts`` (strings or a table with ``prompt`` and ``prompt_id``) encoded for ``model`` (anything
    :func:`quarklab.tldr.prompt_budget` reads: a model, or a vLLM sampler) as ``task`` cuts them, each distinct
    text once."""
    texts, pids = prompt_lists(prompts)
    budget = prompt_budget(model, max_new_tokens)
    encode = get_task(task).encode_prompt
    seen: dict[str, tuple[list[int], bool]] = {}
    return EncodedPrompts(texts, pids, [seen.get(t) or seen.setdefault(t, encode(tokenizer, t, budget))
                                        for t in texts])


def samples_table(prompts: EncodedPrompts, completions: list[list[tuple[list[int], bool]]], token: int | None,
                  tokenizer) -> pd.DataFrame:
    """The samples table (:data:`COLUMNS`): ``completions[i]`` holds prompt ``i``'s samples in order, each as
    ``(ids without EOS, finished)``; the text is decoded with ``tokenizer``."""
    rows = [(prompts.ids[i], s, prompts.texts[i], token, ids, finished, *prompts.encoded[i])
            for i, samples in enumerate(completions) for s, (ids, finished) in enumerate(samples)]
    df = pd.DataFrame(rows, columns=["prompt_id", "sample", "prompt", "token", "completion_ids", "finished",
                                     "prompt_ids", "prompt_truncated"])
    df.insert(4, "completion", tokenizer.batch_decode(df["completion_ids"].tolist(), skip_special_tokens=True))
    df["num_tokens"] = df["completion_ids"].map(len).astype(np.int64)
    return df


def cache_field(model) -> str:
    """The name of the KV-cache argument and output field: ``cache`` in transformers 5, else ``past_key_values``."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def sample(model, tokenizer, prompts, params: SamplingParams | None = None, *, token: int | None = None,
           prefix_token_id: int | None = None, suppress: list[int] | None = None, progress: bool = False,
           **overrides) -> pd.DataFrame:
    """Generate ``params.n`` completions for each prompt.

    ``prompts`` is a list of strings or a DataFrame with ``prompt`` (and ``prompt_id``).
    ``prefix_token_id`` (with ``token`` its quantile index, recorded in the table) is
    prepended to every prompt; ``suppress`` lists token ids never to generate (the quantile
    tokens). Keyword ``overrides`` replace fields of ``params``.

    Returns one row per completion: ``prompt_id``, ``sample``, ``prompt``, ``token``,
    ``completion``, ``completion_ids``, ``finished`` (ended with EOS), ``prompt_ids`` (the
    prompt as encoded and cut to the context, without the quantile token), ``prompt_truncated``,
    ``num_tokens``.
    """
    from dataclasses import replace

    from .progress import tqdm

    params = replace(params or SamplingParams(), **overrides)
    enc = encode_prompts(tokenizer, prompts, model, params.max_new_tokens, params.task)
    encoded = enc.encoded
    eos = tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    prefix = [] if prefix_token_id is None else [prefix_token_id]

    # distinct prompts, longest first: batches of similar length carry little padding. Each prompt is
    # run through the model once and its KV cache repeated for its n samples (the prefill of a TL;DR
    # post costs far more than the few dozen tokens generated after it).
    order = sorted(range(len(encoded)), key=lambda i: (-len(encoded[i][0]), i))
    per_batch = max(1, params.batch_size // params.n)
    batches = [order[b:b + per_batch] for b in range(0, len(order), per_batch)]
    device = next(model.parameters()).device
    gen_kwargs = dict(max_new_tokens=params.max_new_tokens, do_sample=params.do_sample, pad_token_id=pad,
                      eos_token_id=eos, suppress_tokens=suppress or None)
    if params.do_sample:
        gen_kwargs.update(temperature=params.temperature, top_p=params.top_p, top_k=params.top_k or None)
    else:
        gen_kwargs.update(temperature=None, top_p=None, top_k=None)
    out_ids: dict[tuple[int, int], list[int]] = {}
    cache_kw = cache_field(model)
    with torch.inference_mode():
        for b, batch in enumerate(tqdm(batches, desc="sampling", disable=not progress)):
            seqs = [prefix + encoded[i][0] for i in batch]
            width = max(map(len, seqs))
            input_ids = torch.full((len(seqs), width), pad, dtype=torch.long)
            mask = torch.zeros((len(seqs), width), dtype=torch.long)
            for r, seq in enumerate(seqs):
                input_ids[r, width - len(seq):] = torch.tensor(seq)
                mask[r, width - len(seq):] = 1
            input_ids, mask = input_ids.to(device), mask.to(device)
            cache = None
            if width > 1:  # prefill all but the last prompt token once per prompt, then share it n ways
                out = model(input_ids=input_ids[:, :-1], attention_mask=mask[:, :-1],
                            position_ids=position_ids_from_mask(mask[:, :-1]), use_cache=True,
                            logits_to_keep=1)  # only the cache is used: no logits over every prompt position
                cache = getattr(out, cache_kw)
                if params.n > 1:
                    cache.batch_repeat_interleave(params.n)
            torch.manual_seed(params.seed * 1_000_003 + b)
            gen = model.generate(input_ids=input_ids.repeat_interleave(params.n, 0),
                                 attention_mask=mask.repeat_interleave(params.n, 0), **{cache_kw: cache},
                                 **gen_kwargs)
            rows_out = gen[:, width:].tolist()
            for r, i in enumerate(batch):
                for s in range(params.n):
                    out_ids[(i, s)] = rows_out[r * params.n + s]

    completions = [[(before_eos(row, eos), eos in row) for row in (out_ids[(i, s)] for s in range(params.n))]
                   for i in range(len(encoded))]
    return samples_table(enc, completions, token, tokenizer)


def before_eos(ids: list[int], eos: int) -> list[int]:
    """``ids`` up to their first EOS (all of them without one)."""
    return ids[: ids.index(eos)] if eos in ids else ids
