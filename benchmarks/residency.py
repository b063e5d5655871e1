"""Residency by phase, measured on CPU: each phase's peak memory with every model kept (``idle_models="keep"``)
and with the idle reference and reward model released (``"release"``), beside ``quarklab plan``'s prediction for
the same sizes (``plan(..., device="cpu")``: on a CPU an offloaded model is still in memory, a released one not).

Each configuration runs :func:`quarklab.run_quark` in a fresh process (so one run's freed memory does not hide the
next one's peak) inside :func:`quarklab.residency.watch` with ``memory=True``: as a phase begins the kernel's peak
resident size is reset to the current one (``echo 5 > /proc/self/clear_refs``), and as it ends ``VmHWM`` is read;
a phase's figure is that peak above the resident size as the run began, after a warm-up in the same process
(:func:`warm_up`: the libraries a run imports, its tokenizers and reward loaded once and dropped), so that what
the run's models and tensors take is measured, not the interpreter and libraries (as a GPU plan leaves out the
CUDA context). Weights loaded from safetensors become resident as they are first read, so a model's bytes count
from its first use. glibc is told to return freed blocks above 64 KiB to the kernel (``MALLOC_MMAP_THRESHOLD_``),
so resident memory follows live memory. The plan's figure has the host baseline added (what the run's tokenizers
and prompt tables take, measured by :func:`warm_up`), which a CPU run holds and a GPU plan has no reason to count.
Linux only.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from quarklab.config import QuarkConfig
from quarklab.errors import QuarkError

ROOT = Path(__file__).resolve().parents[1]
RULES = ("keep", "release")
MIB = 2 ** 20
STANDIN = ["train_targets=sampled", "perplexity=sampled-ids", "dataset=tiny-tldr", "iterations=1",
           "prompts_per_iteration=3", "samples_per_prompt=10", "max_new_tokens=10", "eval_prompts=4",
           "eval_max_new_tokens=10", "sample_batch_size=30", "eval_batch_size=8", "dtype=bfloat16",
           "final_protocol=None", "gradient_checkpointing=true", "epochs_per_iteration=1"]
"""Settings over the ``tldr-gptj`` preset for one iteration on its stand-ins (:func:`quarklab.testing.
tldr_gptj_hub_cache`: 28 GPT-J blocks, GPT-J 6B's 50,400-row vocabulary). A random stand-in samples filler
entries whose text re-tokenizes to about 11 ids each, so ALT's re-tokenized targets and perplexity would train and
score 115 tokens where 10 were sampled: training and perplexity on the sampled ids keep the sizes the plan counts."""


def measure(config: QuarkConfig, run_dir: str | os.PathLike, env: dict | None = None, threads: int | None = None
            ) -> dict:
    """Run ``config`` in ``run_dir`` in a fresh process (``env`` added to its environment); what it measured:
    ``peaks`` (per phase: bytes above the starting resident size, or on a CUDA device torch's peak allocation), ``phases`` (per phase entered: where each model
    was, bytes moved and seconds spent moving), ``run_seconds``, ``prompt_tokens`` (the longest pool prompt), and
    ``planned`` (the plan's GiB per phase for a CPU at that prompt length, from the model configs the run read)."""
    out = Path(run_dir).with_suffix(".json")
    cmd = [sys.executable, "-m", "benchmarks.residency", json.dumps(config.to_dict()), str(run_dir), str(out),
           str(threads or 0)]
    path = os.pathsep.join([str(ROOT)] + [p for p in [os.environ.get("PYTHONPATH")] if p])
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1800,
                          env={**os.environ, **(env or {}), "PYTHONPATH": path, "MALLOC_MMAP_THRESHOLD_": "65536"})
    if proc.returncode != 0 or not out.exists():
        raise QuarkError(f"residency measurement failed (exit {proc.returncode}):\n{proc.stderr[-2000:]}")
    return json.loads(out.read_text())


def warm_up(config: QuarkConfig) -> int:
    """Import what a run of ``config`` imports and load its models, tokenizers and reward once, then drop them: the
    libraries' memory is then in the process before a measurement begins. Returns the host baseline: the bytes
    that the run's tokenizers (the policy's, the reward's) and prompt tables add to the resident size, loaded again
    alone and dropped. A CPU run holds them through every phase; a GPU's memory never does, so the plan leaves
    them out."""
    import gc

    from quarklab.data import config_prompts
    from quarklab.distributed import Dist
    from quarklab.models import load_policy, load_tokenizer
    from quarklab.residency import _status
    from quarklab.rewards import config_reward

    Dist.from_env()  # accelerate, and DeepSpeed where installed
    reward = config_reward(config, "cpu")
    reward_tokenizer = getattr(reward.fn, "tokenizer", None)
    held = [load_tokenizer(config.policy), load_policy(config.policy, dtype=config.dtype, device="cpu"), reward]
    del held, reward
    gc.collect()
    before = _status("VmRSS")
    host = [load_tokenizer(config.policy), config_prompts(config, config.train_split),
            config_prompts(config, config.eval_split, limit=config.eval_prompts)]
    if reward_tokenizer is not None:
        host.append(load_tokenizer(reward_tokenizer.name_or_path))
    gc.collect()
    baseline = _status("VmRSS") - before
    del host, reward_tokenizer
    gc.collect()
    return baseline


def _child(config_json: str, run_dir: str, out: str, threads: int) -> None:
    import pandas as pd
    import torch

    from quarklab import quark, residency, runs
    from quarklab.files import atomic_write_json
    from quarklab.models import resolve_device
    from quarklab.plan import PHASE_COLUMNS, plan

    if threads:
        torch.set_num_threads(threads)
    config = QuarkConfig.from_dict(json.loads(config_json))
    host = warm_up(config)
    gpu = resolve_device(config.device).type == "cuda"  # then torch's peak allocation on the GPU per phase
    with residency.watch(memory=True) as record:
        t0 = time.perf_counter()
        quark.run(config, run_dir, progress=False)
        seconds = time.perf_counter() - t0
    prompt_tokens = int(pd.read_parquet(runs.pool_path(run_dir, 1))["prompt_ids"].map(len).max())
    table, _ = plan(config, prompt_tokens=prompt_tokens, device="cuda" if gpu else "cpu")
    one = table.set_index("strategy").loc["1 GPU"]
    atomic_write_json(out, {"peaks": record.device_peaks if gpu else record.peaks, "phases": record.phases,
                            "run_seconds": seconds, "prompt_tokens": prompt_tokens, "host_bytes": 0 if gpu else host,
                            "planned": {p: float(one[c]) for p, c in PHASE_COLUMNS.items()}})


def compare(config: QuarkConfig, tmp: str | os.PathLike, env: dict | None = None, threads: int | None = None,
            rules: tuple[str, ...] = RULES) -> dict:
    """Measure ``config`` under each of ``rules`` (``idle_models``) and put the plan's per-phase prediction beside each: under
    ``rules``, per rule ``measured_mib``, ``planned_mib`` (phase: MiB; the plan plus ``host_mib``, the host
    baseline that :func:`warm_up` measured), ``run_seconds``, ``moved_mib`` and
    ``move_seconds``, and where each model was in each phase (``holds``, by "ITERATION PHASE")."""
    report = {}
    for rule in rules:
        got = measure(config.replace(idle_models=rule), Path(tmp) / f"run-{rule}", env, threads)
        report[rule] = {"measured_mib": {p: v / MIB for p, v in got["peaks"].items()},
                        "planned_mib": {p: v * 1024 + got["host_bytes"] / MIB for p, v in got["planned"].items()},
                        "host_mib": got["host_bytes"] / MIB,
                        "run_seconds": got["run_seconds"], "prompt_tokens": got["prompt_tokens"],
                        "moved_mib": sum(p["moved_bytes"] for p in got["phases"]) / MIB,
                        "move_seconds": sum(p["move_seconds"] for p in got["phases"]),
                        "holds": {f"{p['iteration']} {p['phase']}": {m: p[m] for m in ("policy", "reference", "reward")}
                                  for p in got["phases"]}}
    return {"rules": report, "how": __doc__.split("\n\n")[1].replace("\n", " ")}


def format_residency(section: dict) -> str:
    """:func:`compare`'s section as text: per phase, measured and planned MiB under each rule."""
    report = section["rules"]
    lines = [f"{'phase':<10}" + "".join(f"{r + ' measured':>18}{r + ' planned':>17}" for r in report)]
    for phase in next(iter(report.values()))["planned_mib"]:
        lines.append(f"{phase:<10}" + "".join(f"{r['measured_mib'].get(phase, float('nan')):>18.0f}"
                                               f"{r['planned_mib'][phase]:>17.0f}" for r in report.values()))
    lines.append("planned: the plan's peak plus the host baseline (the run's tokenizers and prompts): " + ", ".join(
        f"{k} {r['host_mib']:.0f} MiB" for k, r in report.items()))
    lines.append("run seconds: " + ", ".join(f"{k} {r['run_seconds']:.1f} (moving {r['move_seconds']:.1f}, "
                                             f"{r['moved_mib']:.0f} MiB)" for k, r in report.items()))
    return "\n".join(lines)


if __name__ == "__main__":  # the child: python -m benchmarks.residency CONFIG_JSON RUN_DIR OUT_JSON THREADS
    if len(sys.argv) != 5:
        sys.exit("usage: python -m benchmarks.residency CONFIG_JSON RUN_DIR OUT_JSON THREADS (internal)")
    _child(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]))
