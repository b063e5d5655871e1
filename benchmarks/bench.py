"""``quarklab bench`` (and ``make bench``): how fast quarklab samples, trains, scores and runs a Quark iteration.

Every figure is the median of ``reps`` repetitions after ``warmup`` warm-up runs, with every
repetition's value and the spread (min, max, IQR) recorded, and every comparison is run side by
side in the same process, its cases interleaved repetition by repetition (in a rotating order),
so that a load change on a shared machine hits all cases alike. The sections, one module each:

1. :mod:`benchmarks.sampling`: generated tokens/s of :func:`quarklab.sample` against a one-prompt
   ``generate`` loop and raw batched ``generate`` (and vLLM on CUDA), on synthetic prompts with the
   word lengths of real Reddit TL;DR posts (:mod:`benchmarks.prompts`);
2. :mod:`benchmarks.reward`: rows/s of the run's reward, cold and warm;
3. :mod:`benchmarks.training`: completion tokens/s of quarklab's training step, NLL only and with
   KL + entropy, and TRL's ``SFTTrainer`` when installed (:mod:`benchmarks.trl_compare`);
4. :mod:`benchmarks.iteration`: one tiny Quark iteration in a fresh process, with where its time goes
   by the loop's own stage marks (:mod:`quarklab.stages`);
5. :mod:`benchmarks.residency`: that iteration again with every model kept through every phase and with the
   idle reference and reward model released: its time and each phase's peak memory, beside the plan's.

What runs is a :class:`~benchmarks.settings.BenchSettings`: a :class:`quarklab.config.QuarkConfig`
(``preset("tiny")`` with one iteration; ``--quick`` shrinks it) plus the bench's own knobs.

``--threads`` sets torch's CPU threads (default: torch's own, one per core). On a CPU that other
processes keep busy, one thread is the steadier choice: while another process held both cores of a
2-core machine, a training step took ~20x longer with 2 threads than with 1 (threads waiting on each
other at every op), and the figures measured the neighbour, not quarklab.
"""

from __future__ import annotations

import gc
import os
import sys
import tempfile
import time
from pathlib import Path

from quarklab.errors import QuarkError

from .common import load_model, machine_info, process_seconds, quiet_hf, versions
from .iteration import bench_iteration
from .prompts import synthetic_prompts
from .report import finite, format_table, targets
from .residency import compare
from .reward import bench_reward
from .sampling import bench_sampling
from .settings import BenchSettings
from .training import bench_training

__all__ = ["BenchSettings", "format_table", "run_bench"]


def run_bench(settings: BenchSettings, out: str | os.PathLike) -> dict:
    """Run every section and write the JSON report (atomically) to ``out``; return it."""
    settings.validate()
    with quiet_hf():
        return _run_bench(settings, out)


def _timed_section(report: dict, name: str, fn):
    t = time.perf_counter()
    result = fn()
    section = result[0] if isinstance(result, tuple) else result
    section["section_seconds"] = time.perf_counter() - t
    report[name] = section
    return result


def _run_bench(settings: BenchSettings, out: str | os.PathLike) -> dict:
    import torch

    from quarklab.hub import resolve_source

    from quarklab.models import load_tokenizer
    from quarklab.files import atomic_write_json

    t_start = time.perf_counter()
    c = settings.config
    if settings.threads:
        torch.set_num_threads(settings.threads)
    device = torch.device(c.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise QuarkError("bench --device cuda, but torch sees no CUDA device here")
    source = resolve_source(c.policy)  # "tiny-tldr": the tiny world's SFT model, built on first need
    torch.manual_seed(c.seed)
    model = load_model(source, c, device)
    tokenizer = load_tokenizer(source)
    prompts = synthetic_prompts(settings.sample_prompts, c.seed)
    setup_seconds = time.perf_counter() - t_start
    report = {"schema": 2, "settings": {**settings.to_dict(), "model": settings.model, "model_source": source,
                                        "model_dtype": str(next(model.parameters()).dtype).replace("torch.", ""),
                                        "attn_implementation": getattr(model.config, "_attn_implementation", None)},
              "machine": machine_info(device), "versions": versions()}
    with tempfile.TemporaryDirectory(prefix="quarklab-bench-") as tmp:
        tmp = Path(tmp)
        _, samples = _timed_section(report, "sampling",
                                    lambda: bench_sampling(model, tokenizer, source, prompts, settings, device))
        _timed_section(report, "reward", lambda: bench_reward(samples, settings))
        _timed_section(report, "training", lambda: bench_training(model, source, samples, settings, device, tmp))
        del model
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
        _timed_section(report, "iteration", lambda: bench_iteration(settings, tmp))
        _timed_section(report, "residency", lambda: compare(c, tmp / "residency", threads=settings.threads))
    report["setup_seconds"] = setup_seconds
    report["wall_seconds"] = time.perf_counter() - t_start
    report["process_seconds"] = process_seconds()  # with interpreter start and imports
    report["ratios"] = {**report["sampling"]["ratios"], **report["training"]["ratios"]}
    report["targets"] = targets(report)
    atomic_write_json(out, finite(report))
    return report


def main(argv: list[str]) -> int:
    """``python -m benchmarks.bench KNOBS_JSON OUT`` (what ``quarklab bench`` starts in the source checkout):
    :meth:`BenchSettings.make` of the knobs, the table on stdout, everything in OUT."""
    import json

    if len(argv) != 2:
        print("usage: python -m benchmarks.bench KNOBS_JSON OUT (use `quarklab bench`)", file=sys.stderr)
        return 2
    try:
        report = run_bench(BenchSettings.make(**json.loads(argv[0])), argv[1])
    except QuarkError as exc:
        print(f"quarklab bench: error: {exc}", file=sys.stderr)
        return 2
    print(format_table(report))
    print(f"report: {argv[1]}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
