"""``quarklab bench``: how fast quarklab samples, trains, scores and runs a Quark iteration.

Every figure is the median of ``reps`` repetitions after ``warmup`` warm-up runs, with every
repetition's value and the spread (min, max, IQR) recorded, and every comparison is run side by
side in the same process, its cases interleaved repetition by repetition (in a rotating order),
so that a load change on a shared machine hits all cases alike:

1. **sampling** (generated tokens/s, a sequence that ended with EOS counted up to and including
   its EOS, not the padded width): :func:`quarklab.sample` against (a) a loop calling
   ``model.generate`` one prompt at a time with ``num_return_sequences=n`` and (b) one raw
   batched ``model.generate`` over pre-tokenized, left-padded prompts x n (tokenization left out
   of its time: the ceiling of the transformers path); on CUDA also the optional vLLM backend.
   Prompts are synthesized from the tiny world's text with the word lengths of real Reddit
   TL;DR posts (:data:`TLDR_PROMPT_WORD_QUANTILES`).
2. **training** (completion tokens/s of an optimizer step): :func:`quarklab.train.train_on_rows`
   with NLL only and with KL + entropy (reference = a second copy of the model), and TRL's
   ``SFTTrainer`` (completion-only loss, same model, rows and batch size) when ``trl`` imports.
   Steps are timed between consecutive optimizer-step ends (a global ``torch.optim`` hook), the
   first step of each call left out, for quarklab and TRL alike: steady-state step throughput.
3. **reward** rows/s of ``load_reward("tiny-tldr")`` on the sampled completions, cold (a fresh
   reward object per repetition) and warm (its per-prompt cache filled).
4. **one tiny Quark iteration** (:func:`quarklab.run_quark`, ``iterations=1``) in a subprocess:
   wall time, peak RSS, and where the time goes (seconds and share per stage).

``--threads`` sets torch's CPU threads (default: torch's own, one per core). On a CPU that other
processes keep busy, one thread is the steadier choice: while another process held both cores of a
2-core machine, a training step took ~20x longer with 2 threads than with 1 (threads waiting on each
other at every op), and the figures measured the neighbour, not quarklab.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import functools
import gc
import importlib.metadata
import json
import math
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from quarklab.errors import QuarkError

# Prompt length, in words (``len(prompt.split())`` of the whole prompt: the SUBREDDIT/TITLE/POST
# header, the post and "TL;DR:"), of real Reddit TL;DR posts at the quantile levels 0, 0.05, ..., 1
# (numpy.quantile, linear interpolation). Measured once from the 1,945 held-out rows of
# ../shared/data/tldr_sample.jsonl (OpenAI's filtered TL;DR, see that folder's SOURCES.md; the file
# is not shipped with quarklab, so only these 21 numbers are). Median 267 words; the tiny world's
# own prompts are ~70 words, so these prompts are the length a real TL;DR run samples from.
TLDR_PROMPT_WORD_QUANTILES: tuple[int, ...] = (25, 142, 161, 177, 189, 204, 216, 227, 241, 254, 267, 281, 293,
                                               309, 321, 331, 343, 357, 372, 388, 426)
QUANTILE_LEVELS = tuple(float(x) for x in np.linspace(0.0, 1.0, len(TLDR_PROMPT_WORD_QUANTILES)))

# name: (comparison, threshold, what it means)
TARGETS: dict[str, tuple[str, float, str]] = {
    "sampler_vs_raw": (">=", 0.9, "quarklab.sample tokens/s over one raw batched generate"),
    "sampler_vs_loop": (">=", 5.0, "quarklab.sample tokens/s over a one-prompt-per-call generate loop"),
    "kl_step_cost": ("<=", 1.6, "NLL-only step tokens/s over NLL + KL + entropy step tokens/s"),
    "nll_vs_trl": (">=", 1.0, "quarklab NLL step tokens/s over TRL SFTTrainer step tokens/s"),
    "bench_wall_seconds": ("<=", 300.0, "the full default bench on a 2-core CPU, world load included"),
}


@dataclass
class BenchSettings:
    """What the bench runs; ``quick()`` shrinks everything for tests."""

    model: str | None = None
    """A causal LM folder or hub id; None = the tiny world's SFT model."""
    device: str = "cpu"
    threads: int | None = None
    """torch CPU threads (``torch.set_num_threads``); None = torch's default (one per core)."""
    quick: bool = False
    warmup: int = 1
    reps: int = 3
    seed: int = 0
    # sampling
    prompts: int = 16
    n: int = 8
    max_new_tokens: int = 48
    temperature: float = 0.9
    top_p: float = 0.9
    # training
    train_batch_size: int = 32
    train_steps: int = 3
    """Timed optimizer steps per repetition (each call runs one more, untimed, first)."""
    num_quantiles: int = 5
    lr: float = 1e-3
    kl_coef: float = 0.05
    entropy_coef: float = 0.06
    # one Quark iteration
    iteration_prompts: int = 32
    iteration_samples: int = 16
    iteration_eval_prompts: int = 32
    iteration_batch_size: int = 32
    iteration_epochs: int = 2

    @classmethod
    def quick_settings(cls, **changes) -> "BenchSettings":
        return cls(**{**dict(quick=True, warmup=1, reps=2, prompts=4, n=2, max_new_tokens=8, train_batch_size=4,
                             train_steps=1, iteration_prompts=4, iteration_samples=5, iteration_eval_prompts=4,
                             iteration_batch_size=8, iteration_epochs=1), **changes})

    def validate(self) -> None:
        if self.device not in ("cpu", "cuda") and not self.device.startswith("cuda:"):
            raise QuarkError(f"bench --device must be cpu or cuda, got {self.device!r}")
        if self.warmup < 1 or self.reps < 1:
            raise QuarkError("bench needs at least one warm-up and one repetition")
        for name in ("prompts", "n", "max_new_tokens", "train_batch_size", "train_steps", "iteration_prompts",
                     "iteration_samples", "iteration_eval_prompts", "iteration_batch_size", "iteration_epochs"):
            if getattr(self, name) < 1:
                raise QuarkError(f"bench setting {name} must be >= 1, got {getattr(self, name)}")
        if self.threads is not None and self.threads < 1:
            raise QuarkError(f"bench --threads must be >= 1, got {self.threads}")


# ------------------------------------------------------------------------------------ statistics
def spread(values) -> dict:
    """``values`` with their median, min, max, quartiles and IQR."""
    a = np.asarray([float(v) for v in values], dtype=np.float64)
    q1, q3 = np.quantile(a, [0.25, 0.75])
    return {"values": a.tolist(), "median": float(np.median(a)), "min": float(a.min()), "max": float(a.max()),
            "q1": float(q1), "q3": float(q3), "iqr": float(q3 - q1)}


def _ratio(a: dict | None, b: dict | None) -> float | None:
    if not a or not b or "median" not in a or "median" not in b or not b["median"]:
        return None
    return a["median"] / b["median"]


def _interleaved(cases: dict[str, Callable[[int, bool], tuple[float, float]]], warmup: int, reps: int,
                 label: str) -> dict[str, dict]:
    """Run ``cases`` (``fn(rep, warm) -> (units, seconds)``) ``warmup`` times, then ``reps`` times,
    rotating their order each round; return per case the units, seconds and rate spread."""
    names = list(cases)
    rec = {name: {"units": [], "seconds": []} for name in names}
    for w in range(warmup):
        for name in names:
            _log(f"{label}: {name} warm-up {w + 1}/{warmup}")
            cases[name](w, True)
    for r in range(reps):
        k = r % len(names)
        for name in names[k:] + names[:k]:
            _log(f"{label}: {name} rep {r + 1}/{reps}")
            units, seconds = cases[name](r, False)
            rec[name]["units"].append(float(units))
            rec[name]["seconds"].append(float(seconds))
    for name in names:
        rec[name]["rate"] = spread([u / s for u, s in zip(rec[name]["units"], rec[name]["seconds"])])
    return rec


def _log(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


@contextlib.contextmanager
def _quiet_hf():
    """transformers' warnings and datasets' progress bars off (inside the bench process only)."""
    import datasets
    from transformers import logging as hf_logging

    verbosity, bars = hf_logging.get_verbosity(), datasets.is_progress_bar_enabled()
    hf_bars = hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    datasets.disable_progress_bars()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if hf_bars:
            hf_logging.enable_progress_bar()
        if bars:
            datasets.enable_progress_bars()


def _process_seconds() -> float | None:
    """Seconds since this process started (interpreter start and imports included), where /proc tells."""
    try:
        start_ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
        uptime = float(Path("/proc/uptime").read_text().split()[0])
        return uptime - start_ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


def _sync(device) -> None:
    import torch

    if getattr(device, "type", str(device)).startswith("cuda"):
        torch.cuda.synchronize()


# ------------------------------------------------------------------------------ synthetic prompts
def prompt_word_lengths(count: int, quantiles=TLDR_PROMPT_WORD_QUANTILES, seed: int = 0) -> list[int]:
    """``count`` prompt lengths in words following the quantile function given by ``quantiles``
    (at evenly spaced levels 0..1): stratified at levels (i + 0.5) / count, then shuffled."""
    levels = np.linspace(0.0, 1.0, len(quantiles))
    u = (np.arange(count) + 0.5) / count
    lengths = np.rint(np.interp(u, levels, np.asarray(quantiles, dtype=np.float64))).astype(int)
    return [int(x) for x in np.random.default_rng(seed).permutation(lengths)]


_TLDR_LAYOUT = re.compile(r"^SUBREDDIT: r/(\S+)\nTITLE: (.*?)\nPOST: (.*)\nTL;DR:\s*$", re.S)


def synthetic_prompts(count: int, seed: int = 0, source: list[str] | None = None,
                      quantiles=TLDR_PROMPT_WORD_QUANTILES) -> list[str]:
    """``count`` prompts in the TL;DR layout (``SUBREDDIT: r/x\\nTITLE: ...\\nPOST: ...\\nTL;DR:``) whose
    lengths in words (``len(p.split())``) follow ``quantiles``, deterministically from ``seed``.

    Subreddit and title come from a tiny-world train post; the post is consecutive sentences of
    tiny-world train posts, cut to the exact length. ``source`` (prompts in that layout) defaults
    to the tiny world's train split.
    """
    if source is None:
        from quarklab.data import load_prompts
        source = load_prompts("tiny-tldr", "train")["prompt"].tolist()
    heads, sentences = [], []
    for p in source:
        m = _TLDR_LAYOUT.match(p)
        if not m:
            continue
        heads.append((m.group(1), m.group(2).split()))
        sentences += [s.split() for s in re.split(r"(?<=[.!?])\s+", m.group(3)) if s.strip()]
        if len(heads) >= 2000:
            break
    if not heads or not sentences:
        raise QuarkError("synthetic prompts need source prompts in the TL;DR layout (SUBREDDIT/TITLE/POST/TL;DR:)")
    rng = np.random.default_rng(seed)
    out = []
    for length in prompt_word_lengths(count, quantiles, seed):
        sub, title = heads[int(rng.integers(len(heads)))]
        room = max(2, length - 5)  # 5 words: "SUBREDDIT:", "r/<sub>", "TITLE:", "POST:", "TL;DR:"
        title = title[: max(1, min(len(title), room - 1))]
        need, words, k = room - len(title), [], int(rng.integers(len(sentences)))
        while len(words) < need:
            words += sentences[k % len(sentences)]
            k += 1
        out.append(f"SUBREDDIT: r/{sub}\nTITLE: {' '.join(title)}\nPOST: {' '.join(words[:need])}\nTL;DR:")
    return out


# ----------------------------------------------------------------------------------- environment
def machine_info(device) -> dict:
    import torch

    info = {"platform": platform.platform(), "machine": platform.machine(), "cpu_count": os.cpu_count(),
            "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
            "cpu_model": _cpu_model(), "torch_threads": torch.get_num_threads(), "device": str(device),
            "cuda_available": torch.cuda.is_available(), "gpu": None}
    if torch.cuda.is_available():
        idx = device.index if getattr(device, "type", "") == "cuda" and device.index is not None else 0
        props = torch.cuda.get_device_properties(idx)
        info["gpu"] = {"name": props.name, "memory_gib": round(props.total_memory / 2**30, 1),
                       "count": torch.cuda.device_count(), "cuda": torch.version.cuda}
    try:
        info["load_average"] = list(os.getloadavg())
    except OSError:
        pass
    return info


def _cpu_model() -> str | None:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or None


def versions() -> dict:
    out = {"python": platform.python_version()}
    for name in ("quarklab", "torch", "transformers", "accelerate", "datasets", "numpy", "pandas", "trl", "vllm"):
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


# --------------------------------------------------------------------------------------- models
def _load(source: str, device, cuda: bool):
    """The model in the bench's precision: float32 on CPU; bf16 with SDPA attention on CUDA (where the
    architecture supports SDPA; otherwise its default attention)."""
    from quarklab.models import load_policy

    if not cuda:
        return load_policy(source, dtype="float32", device=device)
    try:
        return load_policy(source, dtype="bfloat16", device=device, attn_implementation="sdpa")
    except (QuarkError, ValueError, NotImplementedError):
        return load_policy(source, dtype="bfloat16", device=device)


def _generated_tokens(new_ids, eos: int) -> int:
    """Tokens really generated: up to and including the first EOS of a row, else the whole row."""
    import torch

    is_eos = new_ids == eos
    has = is_eos.any(dim=1)
    first = is_eos.int().argmax(dim=1)
    width = torch.full_like(first, new_ids.shape[1])
    return int(torch.where(has, first + 1, width).sum())


# ------------------------------------------------------------------------------------- sampling
def bench_sampling(model, tokenizer, source: str, prompts: list[str], s: BenchSettings, device) -> tuple[dict, object]:
    """Side by side: quarklab.sample, a one-prompt-per-call generate loop, one raw batched generate
    (and the vLLM backend on CUDA). Returns the section and the sampler's warm-up samples."""
    import torch

    from quarklab.models import load_tokenizer
    from quarklab.sampling import sample
    from quarklab.tldr import prompt_budget

    cuda = device.type == "cuda"
    eos = tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    budget = prompt_budget(model, s.max_new_tokens)
    batch = len(prompts) * s.n
    gen_kwargs = dict(do_sample=True, temperature=s.temperature, top_p=s.top_p, top_k=None,
                      max_new_tokens=s.max_new_tokens, pad_token_id=pad, eos_token_id=eos)
    # the baselines' tokenizer: a long prompt keeps its end (the TL;DR: tail), as quarklab's budget does
    base_tok = load_tokenizer(source)
    base_tok.truncation_side = "left"
    kept = {}

    def run_sampler(rep: int, warm: bool):
        _sync(device)
        t0 = time.perf_counter()
        df = sample(model, tokenizer, prompts, n=s.n, temperature=s.temperature, top_p=s.top_p, top_k=0,
                    max_new_tokens=s.max_new_tokens, batch_size=batch, seed=s.seed * 1000 + rep + (500 if warm else 0))
        _sync(device)
        dt = time.perf_counter() - t0
        kept.setdefault("samples", df)
        return int(df["num_tokens"].sum() + df["finished"].sum()), dt

    def run_loop(rep: int, warm: bool):
        torch.manual_seed(s.seed * 1000 + rep + (500 if warm else 0))
        chosen = prompts[:2] if warm else prompts  # a warm-up needs the code path, not every prompt
        tokens = 0
        _sync(device)
        t0 = time.perf_counter()
        for p in chosen:
            enc = base_tok(p, return_tensors="pt", truncation=True, max_length=budget).to(device)
            with torch.no_grad():
                out = model.generate(**enc, num_return_sequences=s.n, **gen_kwargs)
            new = out[:, enc["input_ids"].shape[1]:]
            base_tok.batch_decode(new, skip_special_tokens=True)
            tokens += _generated_tokens(new, eos)
        _sync(device)
        return tokens, time.perf_counter() - t0

    enc = base_tok(prompts, return_tensors="pt", padding=True, truncation=True, max_length=budget)
    raw_ids = enc["input_ids"].repeat_interleave(s.n, dim=0).to(device)
    raw_mask = enc["attention_mask"].repeat_interleave(s.n, dim=0).to(device)

    def run_raw(rep: int, warm: bool):
        torch.manual_seed(s.seed * 1000 + rep + (500 if warm else 0))
        _sync(device)
        t0 = time.perf_counter()
        with torch.inference_mode():
            out = model.generate(input_ids=raw_ids, attention_mask=raw_mask, **gen_kwargs)
        _sync(device)
        dt = time.perf_counter() - t0
        return _generated_tokens(out[:, raw_ids.shape[1]:], eos), dt

    cases = {"sampler": run_sampler, "raw": run_raw, "loop": run_loop}
    vllm_section = _vllm_case(source, prompts, s, cuda, cases)
    rec = _interleaved(cases, s.warmup, s.reps, "sampling")
    token_lengths = [len(base_tok(p, add_special_tokens=False)["input_ids"]) for p in prompts]
    section = {
        "prompts": {"count": len(prompts), "word_lengths": [len(p.split()) for p in prompts],
                    "token_lengths": token_lengths, "truncated_to_budget": int(sum(t > budget for t in token_lengths)),
                    "prompt_budget_tokens": budget, "embedded_word_quantiles": list(TLDR_PROMPT_WORD_QUANTILES),
                    "quantile_levels": list(QUANTILE_LEVELS)},
        "settings": {"n": s.n, "max_new_tokens": s.max_new_tokens, "temperature": s.temperature, "top_p": s.top_p,
                     "top_k": None, "sampler_batch_size": batch, "sequences": batch},
    }
    for name in cases:
        section[name] = {"tokens_per_s": rec[name]["rate"], "tokens": rec[name]["units"],
                         "seconds": rec[name]["seconds"]}
    section["sampler"]["how"] = ("quarklab.sample, every prompt x n in one batch (tokenize, cut, generate, decode, "
                                 "table)")
    section["loop"]["how"] = ("for each prompt: tokenizer(prompt) + model.generate(num_return_sequences=n) + "
                              "batch_decode (warm-up: 2 prompts)")
    section["raw"]["how"] = "one model.generate on pre-tokenized, left-padded prompts x n (tokenization not timed)"
    section["vllm"] = vllm_section if "vllm" not in cases else {
        "tokens_per_s": rec["vllm"]["rate"], "tokens": rec["vllm"]["units"], "seconds": rec["vllm"]["seconds"],
        "how": "quarklab.vllm_backend.VLLMSampler.sample, same prompts and settings"}
    section["ratios"] = {"sampler_vs_raw": _ratio(section["sampler"]["tokens_per_s"], section["raw"]["tokens_per_s"]),
                         "sampler_vs_loop": _ratio(section["sampler"]["tokens_per_s"], section["loop"]["tokens_per_s"])}
    if "vllm" in cases:
        section["ratios"]["vllm_vs_sampler"] = _ratio(section["vllm"]["tokens_per_s"],
                                                      section["sampler"]["tokens_per_s"])
    return section, kept["samples"]


def _vllm_case(source: str, prompts: list[str], s: BenchSettings, cuda: bool, cases: dict) -> dict:
    """Add the vLLM case to ``cases`` when it can run; otherwise return why not."""
    from quarklab.vllm_backend import VLLMSampler, vllm_available

    if not cuda:
        return {"skipped": "vLLM is compared on --device cuda only"}
    if not vllm_available():
        return {"skipped": "vllm not installed"}
    try:
        sampler = VLLMSampler(source, dtype="bfloat16", seed=s.seed)
    except QuarkError as exc:
        return {"skipped": str(exc)}

    def run_vllm(rep: int, warm: bool):
        t0 = time.perf_counter()
        df = sampler.sample(prompts, n=s.n, temperature=s.temperature, top_p=s.top_p, top_k=0,
                            max_new_tokens=s.max_new_tokens, seed=s.seed * 1000 + rep + (500 if warm else 0))
        dt = time.perf_counter() - t0
        return int(df["num_tokens"].sum() + df["finished"].sum()), dt

    cases["vllm"] = run_vllm
    return {}


# --------------------------------------------------------------------------------------- reward
def bench_reward(samples, s: BenchSettings) -> dict:
    """Rows/s of the default reward: cold (fresh object, empty per-prompt cache) and warm."""
    from quarklab.rewards import load_reward

    prompts, completions = samples["prompt"].tolist(), samples["completion"].tolist()
    state = {}

    def cold(rep: int, warm: bool):
        state["fn"] = fn = load_reward("tiny-tldr")
        t0 = time.perf_counter()
        fn(prompts, completions)
        return len(prompts), time.perf_counter() - t0

    def warm_(rep: int, warm: bool):
        fn = state["fn"]
        t0 = time.perf_counter()
        fn(prompts, completions)
        return len(prompts), time.perf_counter() - t0

    rec = _interleaved({"cold": cold, "warm": warm_}, s.warmup, s.reps, "reward")  # warm runs right after cold
    return {"reward": "tiny-tldr", "rows": len(prompts), "distinct_prompts": len(set(prompts)),
            "cold": {"rows_per_s": rec["cold"]["rate"], "seconds": rec["cold"]["seconds"],
                     "how": "a fresh load_reward('tiny-tldr') per repetition: its per-prompt cache starts empty"},
            "warm": {"rows_per_s": rec["warm"]["rate"], "seconds": rec["warm"]["seconds"],
                     "how": "the same rows again on the object just used: per-prompt salience cached"}}


# ------------------------------------------------------------------------------------- training
class _StepClock:
    """Times optimizer steps (a global ``torch.optim`` post-hook) and, through a forward pre-hook on
    the policy, the completion tokens of each micro-batch it trains on."""

    def __init__(self, device):
        self.device, self.ends, self.tokens, self._handles = device, [], [], []

    def __enter__(self):
        from torch.optim.optimizer import register_optimizer_step_post_hook

        def on_step(optimizer, args, kwargs):
            _sync(self.device)
            self.ends.append(time.perf_counter())

        self._handles.append(register_optimizer_step_post_hook(on_step))
        return self

    def count_policy(self, policy):
        def pre(module, args, kwargs):
            if module.training and kwargs.get("logits_to_keep"):
                completion = int(kwargs["logits_to_keep"]) - 1
                self.tokens.append(kwargs["attention_mask"][:, -completion:].sum())
        self._handles.append(policy.register_forward_pre_hook(pre, with_kwargs=True))

    def __exit__(self, *exc):
        for h in self._handles:
            h.remove()
        return False

    def steady(self) -> tuple[float, float]:
        """(tokens, seconds) of every step but the first: from the first step's end to the last's."""
        if len(self.ends) < 2 or len(self.tokens) != len(self.ends):
            raise QuarkError(f"bench: expected one micro-batch per optimizer step, got {len(self.tokens)} "
                             f"forwards for {len(self.ends)} steps")
        return float(sum(int(t) for t in self.tokens[1:])), self.ends[-1] - self.ends[0]


def _training_rows(samples, tokenizer, s: BenchSettings, budget: int) -> list[dict]:
    """Quark rows from the sampled completions: prompt ids cut as quarklab cuts them, quantiles per prompt
    by the tiny reward; cycled to fill ``train_batch_size x (train_steps + 1)`` rows."""
    from quarklab.quantiles import assign_quantiles
    from quarklab.rewards import load_reward
    from quarklab.tldr import encode_prompt

    rewards = load_reward("tiny-tldr")(samples["prompt"].tolist(), samples["completion"].tolist())
    quantiles = assign_quantiles(rewards, s.num_quantiles, samples["prompt_id"].to_numpy())
    ids = {p: encode_prompt(tokenizer, p, budget)[0] for p in samples["prompt"].unique()}
    rows = [{"prompt_ids": ids[p], "completion_ids": list(c), "finished": bool(f), "quantile": int(q)}
            for p, c, f, q in zip(samples["prompt"], samples["completion_ids"], samples["finished"], quantiles)
            if len(c) or f]
    need = s.train_batch_size * (s.train_steps + 1)
    return [rows[i % len(rows)] for i in range(need)]


def bench_training(model, source: str, samples, s: BenchSettings, device, tmp: Path) -> dict:
    from quarklab.config import preset
    from quarklab.models import add_quantile_tokens, load_tokenizer
    from quarklab.tldr import prompt_budget
    from quarklab.train import train_on_rows

    cuda = device.type == "cuda"
    tokenizer = load_tokenizer(source)
    policy = copy.deepcopy(model)
    control_ids = add_quantile_tokens(policy, tokenizer, s.num_quantiles, seed=s.seed)
    reference = model.requires_grad_(False)  # the sampling model, untouched by training: the frozen copy
    rows = _training_rows(samples, tokenizer, s, prompt_budget(policy, s.max_new_tokens))
    pad, eos = tokenizer.pad_token_id, tokenizer.eos_token_id
    base = preset("tiny", batch_size=s.train_batch_size, grad_accum=1, epochs_per_iteration=1, lr=s.lr,
                  warmup_ratio=0.0, num_quantiles=s.num_quantiles, device=str(device), seed=s.seed)
    configs = {"nll": base.replace(kl_coef=0.0, entropy_coef=0.0),
               "kl": base.replace(kl_coef=s.kl_coef, entropy_coef=s.entropy_coef)}

    def quark_case(mode: str):
        def run(rep: int, warm: bool):
            with _StepClock(device) as clock:
                clock.count_policy(policy)
                train_on_rows(policy, reference if mode == "kl" else None, rows, configs[mode], control_ids, pad, eos,
                              seed=s.seed * 1000 + rep)
            return clock.steady()
        return run

    cases = {"nll": quark_case("nll"), "kl": quark_case("kl")}
    trl_section = _trl_case(policy, tokenizer, rows, control_ids, s, device, tmp, cases)
    rec = _interleaved(cases, s.warmup, s.reps, "training")
    tokens_per_row = [len(r["completion_ids"]) + r["finished"] for r in rows]
    out = {"rows_per_call": len(rows), "batch_size": s.train_batch_size, "timed_steps_per_rep": s.train_steps,
           "completion_tokens_per_row_mean": float(np.mean(tokens_per_row)),
           "prompt_tokens_per_row_mean": float(np.mean([len(r["prompt_ids"]) + 1 for r in rows])),
           "how": ("quarklab.train.train_on_rows over batch_size x (steps + 1) rows sampled above; time from the end "
                   "of its first optimizer step to the end of its last (fresh AdamW per call, as per iteration)"),
           "precision": "bf16 autocast" if cuda else "fp32"}
    out["nll"] = {"tokens_per_s": rec["nll"]["rate"], "tokens": rec["nll"]["units"], "seconds": rec["nll"]["seconds"],
                  "kl_coef": 0.0, "entropy_coef": 0.0, "reference_forward": False}
    out["kl"] = {"tokens_per_s": rec["kl"]["rate"], "tokens": rec["kl"]["units"], "seconds": rec["kl"]["seconds"],
                 "kl_coef": s.kl_coef, "entropy_coef": s.entropy_coef, "reference_forward": True}
    out["trl"] = trl_section if "trl" not in cases else {
        **trl_section, "tokens_per_s": rec["trl"]["rate"], "tokens": rec["trl"]["units"],
        "seconds": rec["trl"]["seconds"]}
    out["ratios"] = {"kl_step_cost": _ratio(out["nll"]["tokens_per_s"], out["kl"]["tokens_per_s"]),
                     "nll_vs_trl": _ratio(out["nll"]["tokens_per_s"], out["trl"].get("tokens_per_s"))}
    for name in list(cases):
        cases.pop(name)
    del policy
    gc.collect()
    return out


def _trl_case(policy, tokenizer, rows, control_ids, s: BenchSettings, device, tmp: Path, cases: dict) -> dict:
    """Add TRL's SFTTrainer to ``cases`` (same model, rows, batch size; completion-only loss), or say why not."""
    try:
        import trl
        from datasets import Dataset
        from trl import SFTConfig, SFTTrainer
    except Exception as exc:  # not installed, or broken against these transformers
        first = str(exc).splitlines()[0] if str(exc) else ""
        return {"skipped": f"trl cannot be imported ({type(exc).__name__}: {first})"}

    cuda = device.type == "cuda"
    eos = tokenizer.eos_token_id
    # the very token sequences quarklab trains on: [quantile token, prompt] -> completion (+ EOS), loss on completions
    seqs = [[control_ids[r["quantile"]]] + r["prompt_ids"] + r["completion_ids"] + ([eos] if r["finished"] else [])
            for r in rows]
    masks = [[0] * (1 + len(r["prompt_ids"])) + [1] * (len(r["completion_ids"]) + r["finished"]) for r in rows]
    dataset = Dataset.from_dict({"input_ids": seqs, "completion_mask": masks})
    counts: list = []

    class TimedSFTTrainer(SFTTrainer):
        def training_step(self, *args, **kwargs):
            inputs = args[1] if len(args) > 1 else kwargs["inputs"]
            counts.append((inputs["labels"][:, 1:] != -100).sum())
            return super().training_step(*args, **kwargs)

    # SFTConfig turns activation (gradient) checkpointing on by default; quarklab does not checkpoint
    names = {f.name for f in dataclasses.fields(SFTConfig)}
    no_ckpt = "activation_checkpointing" if "activation_checkpointing" in names else "gradient_checkpointing"
    try:
        args = SFTConfig(output_dir=str(tmp / "trl"), per_device_train_batch_size=s.train_batch_size,
                         gradient_accumulation_steps=1, max_steps=s.train_steps + 1, learning_rate=s.lr,
                         lr_scheduler_type="linear", warmup_steps=0, weight_decay=0.0, max_grad_norm=1.0,
                         completion_only_loss=True, max_length=None, logging_strategy="no", save_strategy="no",
                         report_to="none", disable_tqdm=True, use_cpu=not cuda, bf16=cuda, seed=s.seed,
                         dataloader_num_workers=0, **{no_ckpt: False})
        t0 = time.perf_counter()
        with _quiet_hf():
            trainer = TimedSFTTrainer(model=copy.deepcopy(policy), args=args, train_dataset=dataset,
                                      processing_class=tokenizer)
        setup = time.perf_counter() - t0
    except Exception as exc:  # an incompatible trl/transformers pair must not sink the whole bench
        return {"skipped": f"SFTTrainer could not be set up ({type(exc).__name__}: {str(exc).splitlines()[0]})"}
    from transformers.trainer_callback import PrinterCallback
    trainer.remove_callback(PrinterCallback)  # it prints every log (disable_tqdm=True adds it)

    def run_trl(rep: int, warm: bool):
        counts.clear()
        trainer.optimizer, trainer.lr_scheduler = None, None  # a fresh AdamW per call, as quarklab
        with _StepClock(device) as clock:
            trainer.train()
        clock.tokens = list(counts)
        return clock.steady()

    cases["trl"] = run_trl
    return {"version": trl.__version__, "setup_seconds_excluded": setup,
            "optim": str(args.optim), "activation_checkpointing": bool(getattr(args, no_ckpt)),
            "how": ("trl.SFTTrainer (completion_only_loss, no gradient checkpointing, AdamW as its default optim) "
                    "on the same token sequences, batch size and lr; steps timed like quarklab's, the first left out; "
                    "dataset preparation in the constructor, not timed")}


# ------------------------------------------------------------------------------ one Quark iteration
STAGES = ("sampling", "scoring", "reference_forward", "policy_forward_backward", "optimizer", "evaluation", "other")


def iteration_config(s: BenchSettings):
    from quarklab.config import preset

    changes = dict(iterations=1, prompts_per_iteration=s.iteration_prompts, samples_per_prompt=s.iteration_samples,
                   eval_prompts=s.iteration_eval_prompts, batch_size=s.iteration_batch_size,
                   epochs_per_iteration=s.iteration_epochs, device=s.device, seed=s.seed,
                   max_new_tokens=s.max_new_tokens, eval_max_new_tokens=s.max_new_tokens)
    if s.model:
        changes["policy"] = s.model
    return preset("tiny", **changes)


def bench_iteration(s: BenchSettings, tmp: Path) -> dict:
    """One tiny Quark iteration in a child process: its wall time, peak RSS and stage profile."""
    run_dir, out = tmp / "iteration_run", tmp / "iteration_profile.json"
    log = tmp / "iteration.log"
    cmd = [sys.executable, str(Path(__file__).resolve()), "iteration", json.dumps(asdict(s)), str(run_dir), str(out)]
    _log("iteration: one Quark iteration in a subprocess")
    t0 = time.perf_counter()
    with open(log, "wb") as f:
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0 or not out.exists():
        tail = log.read_text(errors="replace")[-2000:]
        raise QuarkError(f"bench: the Quark iteration subprocess failed (exit {proc.returncode}):\n{tail}")
    profile = json.loads(out.read_text())
    # ru_maxrss is in kilobytes on Linux, bytes on macOS
    rss = usage.ru_maxrss * (1 if sys.platform == "darwin" else 1024)
    return {"process_wall_seconds": wall, "peak_rss_mb": rss / 2**20, **profile}


class StageTimer:
    """Exclusive time per stage path: a stage entered inside another is charged to ``outer/inner``
    and subtracted from the outer one, so the paths' seconds add up to the time covered."""

    def __init__(self):
        self.seconds: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)
        self._stack: list[list] = []  # [path, start, time spent in children]

    def enter(self, name: str) -> None:
        path = f"{self._stack[-1][0]}/{name}" if self._stack else name
        self._stack.append([path, time.perf_counter(), 0.0])

    def exit(self) -> None:
        path, start, child = self._stack.pop()
        elapsed = time.perf_counter() - start
        self.seconds[path] += elapsed - child
        self.calls[path] += 1
        if self._stack:
            self._stack[-1][2] += elapsed

    @contextlib.contextmanager
    def stage(self, name: str):
        self.enter(name)
        try:
            yield
        finally:
            self.exit()

    def wrap(self, name: str | Callable[..., str], fn: Callable) -> Callable:
        @functools.wraps(fn)
        def timed(*args, **kwargs):
            with self.stage(name(*args, **kwargs) if callable(name) else name):
                return fn(*args, **kwargs)
        return timed


def stage_of(path: str) -> str:
    """The summary stage of a timer path."""
    if path.startswith("evaluation"):
        return "evaluation"
    leaf = path.rsplit("/", 1)[-1]
    if path in ("sampling", "scoring"):
        return path
    if path.startswith("training"):
        return {"training": "policy_forward_backward", "policy_forward": "policy_forward_backward",
                "loss": "policy_forward_backward", "reference_forward": "reference_forward",
                "optimizer": "optimizer"}.get(leaf, "other")
    return "other"


def _iteration_child(settings_json: str, run_dir: str, out: str) -> None:
    """Run one Quark iteration (``quarklab.run_quark``) with its stages timed; write the profile."""
    import pandas as pd
    import torch

    from quarklab import quark, runs
    from quarklab import train as train_mod

    evaluate_mod = importlib.import_module("quarklab.evaluate")  # quarklab.evaluate is also a function's name

    s = BenchSettings(**json.loads(settings_json))
    if s.threads:
        torch.set_num_threads(s.threads)
    config = iteration_config(s)
    timer = StageTimer()
    session = {}
    device_is_cuda = s.device.startswith("cuda")

    def synced(fn):
        @functools.wraps(fn)
        def inner(*a, **k):
            r = fn(*a, **k)
            if device_is_cuda:
                torch.cuda.synchronize()
            return r
        return inner

    open_ = quark.Session.open.__func__

    def opened(cls, *a, **k):
        sess = open_(cls, *a, **k)
        session["s"] = sess
        sess.reward = timer.wrap("scoring", sess.reward)
        return sess

    quark.Session.open = classmethod(timer.wrap("load", opened))
    quark.sample = timer.wrap("sampling", synced(quark.sample))
    quark.evaluate = timer.wrap("evaluation", quark.evaluate)
    evaluate_mod.sample = timer.wrap("sampling", synced(evaluate_mod.sample))
    quark.train_on_rows = timer.wrap("training", synced(quark.train_on_rows))
    quark.training_rows = timer.wrap("read_pool", quark.training_rows)
    train_mod.build_batch = timer.wrap("batch", train_mod.build_batch)
    train_mod.quark_loss = timer.wrap("loss", synced(train_mod.quark_loss))

    def forward_name(model, *a, **k):
        return "reference_forward" if "s" in session and model is session["s"].reference else "policy_forward"

    train_mod.completion_logits = timer.wrap(forward_name, synced(train_mod.completion_logits))
    orig_clip = torch.nn.utils.clip_grad_norm_
    torch.nn.utils.clip_grad_norm_ = timer.wrap("optimizer", orig_clip)
    from torch.optim.optimizer import register_optimizer_step_post_hook, register_optimizer_step_pre_hook
    register_optimizer_step_pre_hook(lambda *a: timer.enter("optimizer"))
    register_optimizer_step_post_hook(lambda *a: (synced(lambda: None)(), timer.exit()))
    orig_atomic_dir = runs.atomic_dir

    @contextlib.contextmanager
    def timed_dir(*a, **k):
        with timer.stage("checkpoint"), orig_atomic_dir(*a, **k) as d:
            yield d

    runs.atomic_dir = timed_dir
    runs.write_parquet = timer.wrap("write_parquet", runs.write_parquet)
    runs.record_metrics = timer.wrap("write_metrics", runs.record_metrics)

    t0 = time.perf_counter()
    metrics = quark.run(config, run_dir, progress=False)
    total = time.perf_counter() - t0
    stages = defaultdict(float)
    for path, sec in timer.seconds.items():
        stages[stage_of(path)] += sec
    stages["other"] += total - sum(timer.seconds.values())  # untimed glue (config, resume checks, encode prompts)
    pool = pd.read_parquet(runs.pool_path(run_dir, 1))
    train_steps = metrics[metrics["kind"] == "train"] if len(metrics) else metrics
    runs.atomic_write_json(out, {
        "run_seconds": total,
        "stages": {k: {"seconds": stages.get(k, 0.0), "share": stages.get(k, 0.0) / total} for k in STAGES},
        "detail_seconds": dict(sorted(timer.seconds.items())),
        "detail_calls": dict(sorted(timer.calls.items())),
        "config": config.to_dict(),
        "pool_rows": int(len(pool)),
        "pool_completion_tokens": int(pool["num_tokens"].sum() + pool["finished"].sum()),
        "train_steps": int(len(train_steps)),
        "how": ("quarklab.run_quark(preset('tiny', iterations=1, ...)) in a fresh process: iteration 0 evaluates the "
                "reference, iteration 1 samples, scores, quantizes, trains and evaluates every token; stages timed by "
                "wrapping quark.py's calls (exclusive time: evaluation includes its own sampling, scoring and "
                "reference perplexity forwards; other = model loading, pool/metrics/checkpoint writes, glue)"),
    })


# ------------------------------------------------------------------------------------ the bench
def run_bench(settings: BenchSettings, out: str | os.PathLike) -> dict:
    """Run every section and write the JSON report (atomically) to ``out``; return it."""
    settings.validate()
    with _quiet_hf():
        return _run_bench(settings, out)


def _run_bench(settings: BenchSettings, out: str | os.PathLike) -> dict:
    import torch

    from quarklab.models import load_tokenizer
    from quarklab.runs import atomic_write_json

    t_start = time.perf_counter()
    if settings.threads:
        torch.set_num_threads(settings.threads)
    device = torch.device(settings.device)
    cuda = device.type == "cuda"
    if cuda and not torch.cuda.is_available():
        raise QuarkError("bench --device cuda, but torch sees no CUDA device here")
    if settings.model is None:
        from quarklab.world import tiny_world
        source = tiny_world(progress=False).policy
    else:
        from quarklab.models import resolve_source
        source = resolve_source(settings.model)
    torch.manual_seed(settings.seed)
    model = _load(source, device, cuda)
    tokenizer = load_tokenizer(source)
    prompts = synthetic_prompts(settings.prompts, settings.seed)
    setup_seconds = time.perf_counter() - t_start
    report = {"schema": 1, "settings": {**asdict(settings), "model_source": source,
                                        "dtype": str(next(model.parameters()).dtype).replace("torch.", ""),
                                        "attn_implementation": getattr(model.config, "_attn_implementation", None)},
              "machine": machine_info(device), "versions": versions()}
    with tempfile.TemporaryDirectory(prefix="quarklab-bench-") as tmp:
        tmp = Path(tmp)
        t = time.perf_counter()
        report["sampling"], samples = bench_sampling(model, tokenizer, source, prompts, settings, device)
        report["sampling"]["section_seconds"] = time.perf_counter() - t
        t = time.perf_counter()
        report["reward"] = bench_reward(samples, settings)
        report["reward"]["section_seconds"] = time.perf_counter() - t
        t = time.perf_counter()
        report["training"] = bench_training(model, source, samples, settings, device, tmp)
        report["training"]["section_seconds"] = time.perf_counter() - t
        del model
        gc.collect()
        if cuda:
            torch.cuda.empty_cache()
        t = time.perf_counter()
        report["iteration"] = bench_iteration(settings, tmp)
        report["iteration"]["section_seconds"] = time.perf_counter() - t
    report["setup_seconds"] = setup_seconds
    report["wall_seconds"] = time.perf_counter() - t_start
    report["process_seconds"] = _process_seconds()  # with interpreter start and imports
    report["ratios"] = {**report["sampling"]["ratios"], **report["training"]["ratios"]}
    report["targets"] = targets(report)
    atomic_write_json(out, _finite(report))
    return report


def targets(report: dict) -> dict:
    values = {**report["ratios"], "bench_wall_seconds": report.get("process_seconds") or report["wall_seconds"]}
    s = report["settings"]
    out = {}
    for name, (op, threshold, what) in TARGETS.items():
        value = values.get(name)
        entry = {"value": value, "op": op, "target": threshold, "what": what}
        if name == "bench_wall_seconds" and (s["quick"] or s["device"] != "cpu" or s["model"] is not None):
            entry.update({"pass": None, "note": "applies to the full default bench on CPU only"})
        elif value is None:
            entry.update({"pass": None, "note": "not measured (see its section)"})
        else:
            entry["pass"] = bool(value >= threshold if op == ">=" else value <= threshold)
        out[name] = entry
    return out


def _finite(obj):
    """JSON without NaN/inf (strict parsers reject them): non-finite floats become null."""
    if isinstance(obj, dict):
        return {str(k): _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    if isinstance(obj, (np.floating, float)):
        return float(obj) if math.isfinite(float(obj)) else None
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.bool_):
        return bool(obj)
    return obj


# ---------------------------------------------------------------------------------------- table
def format_table(report: dict) -> str:
    """A readable summary of the report."""
    s, m = report["settings"], report["machine"]

    def fig(d: dict | None, unit: str) -> str:
        if not d or "median" not in d:
            return f"{'-':>10}  {unit}"
        return f"{d['median']:>10,.1f}  {unit:<9} [{d['min']:,.1f} .. {d['max']:,.1f}, IQR {d['iqr']:,.1f}]"

    def skipped(d: dict) -> str:
        return f"{'skipped':>10}  ({d.get('skipped')})"

    dev = m["gpu"]["name"] if m.get("gpu") and s["device"] != "cpu" else f"{m['cpus_usable']} CPU cores"
    lines = [f"quarklab bench: {'the tiny world SFT GPT-J' if s['model'] is None else s['model']} on {s['device']} "
             f"({dev}, {m['torch_threads']} torch threads, {s['dtype']}); medians of {s['reps']} reps after "
             f"{s['warmup']} warm-up [min .. max, IQR]" + ("  --quick" if s["quick"] else "")]
    sp = report["sampling"]
    lines += ["", f"sampling: {sp['prompts']['count']} TL;DR-length prompts x {s['n']}, {s['max_new_tokens']} new "
              f"tokens, T={s['temperature']} top-p={s['top_p']} (generated tokens/s)",
              f"  quarklab.sample          {fig(sp['sampler']['tokens_per_s'], 'tok/s')}",
              f"  raw batched generate     {fig(sp['raw']['tokens_per_s'], 'tok/s')}",
              f"  generate loop, 1/prompt  {fig(sp['loop']['tokens_per_s'], 'tok/s')}",
              "  vLLM                     " + (fig(sp['vllm']['tokens_per_s'], 'tok/s') if "tokens_per_s" in sp["vllm"]
                                              else skipped(sp["vllm"]))]
    rw = report["reward"]
    lines += ["", f"reward ({rw['reward']}, {rw['rows']} rows of {rw['distinct_prompts']} prompts)",
              f"  cold (fresh object)      {fig(rw['cold']['rows_per_s'], 'rows/s')}",
              f"  warm (cached prompts)    {fig(rw['warm']['rows_per_s'], 'rows/s')}"]
    tr = report["training"]
    lines += ["", f"training: optimizer steps of {tr['batch_size']} rows "
              f"({tr['prompt_tokens_per_row_mean']:.0f} prompt + "
              f"{tr['completion_tokens_per_row_mean']:.0f} completion tokens a row; completion tokens/s)",
              f"  quarklab NLL             {fig(tr['nll']['tokens_per_s'], 'tok/s')}",
              f"  quarklab NLL+KL+entropy  {fig(tr['kl']['tokens_per_s'], 'tok/s')}",
              "  TRL SFTTrainer           " + (fig(tr['trl']['tokens_per_s'], 'tok/s') if "tokens_per_s" in tr["trl"]
                                              else skipped(tr["trl"]))]
    it = report["iteration"]
    c = it["config"]
    lines += ["", f"one Quark iteration ({c['prompts_per_iteration']} prompts x {c['samples_per_prompt']} samples, "
              f"{it['train_steps']} train steps, {c['eval_prompts']} eval prompts): {it['run_seconds']:.1f} s in "
              f"run_quark, {it['process_wall_seconds']:.1f} s process, peak RSS {it['peak_rss_mb']:,.0f} MB"]
    for name in STAGES:
        st = it["stages"][name]
        lines.append(f"  {name:<24} {st['seconds']:>8.2f} s  {100 * st['share']:>5.1f} %")
    lines += ["", "targets"]
    for name, t in report["targets"].items():
        verdict = "n/a " if t["pass"] is None else ("PASS" if t["pass"] else "FAIL")
        value = "-" if t["value"] is None else f"{t['value']:.2f}"
        note = f"  ({t['note']})" if t.get("note") else ""
        lines.append(f"  {verdict}  {name:<20} {value:>8} {t['op']} {t['target']:g}{note}")
    lines.append(f"\nbench wall time {report['wall_seconds']:.1f} s "
                 f"(world and model load {report['setup_seconds']:.1f} s)"
                 + (f"; {report['process_seconds']:.1f} s with interpreter start and imports"
                    if report.get("process_seconds") else ""))
    return "\n".join(lines)


if __name__ == "__main__":  # the iteration child: python -m quarklab.bench iteration SETTINGS RUN_DIR OUT
    if len(sys.argv) == 5 and sys.argv[1] == "iteration":
        _iteration_child(*sys.argv[2:])
    else:
        sys.exit("usage: python -m quarklab.bench iteration SETTINGS_JSON RUN_DIR OUT_JSON (internal; "
                 "use `quarklab bench`)")
