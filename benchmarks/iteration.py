"""One tiny Quark run (:func:`quarklab.run_quark` with ``config``, one iteration by default) in a fresh
process: wall time, peak RSS, and where the time goes by the loop's own stage marks.

The loop marks its stages itself (:mod:`quarklab.stages`: ``load``, ``evaluate``, ``sample``, ``score``,
``pool``, ``train.reference``, ``train.policy``, ``train.optimizer``, ``checkpoint``); the child process
runs the loop inside :func:`quarklab.stages.clock` and reports each stage's exclusive seconds and
entries. Nothing in quarklab is wrapped or replaced: what the marks do not cover is reported as
``unmarked_seconds`` (config checks, prompt encoding, batch building, metric writes).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from quarklab.errors import QuarkError

from .common import log
from .settings import BenchSettings

ROOT = Path(__file__).resolve().parents[1]  # the source checkout: benchmarks/ and quarklab/ side by side


def profile_run(s: BenchSettings, run_dir: str | os.PathLike) -> dict:
    """Run ``s.config`` in ``run_dir`` inside a stage clock; its stage profile."""
    import pandas as pd
    import torch

    from quarklab import quark, runs, stages

    if s.threads:
        torch.set_num_threads(s.threads)
    with stages.clock() as marked:
        t0 = time.perf_counter()
        metrics = quark.run(s.config, run_dir, progress=False)
        total = time.perf_counter() - t0
    pools = [pd.read_parquet(runs.pool_path(run_dir, i)) for i in range(1, s.config.iterations + 1)]
    return {
        "run_seconds": total,
        "stages": {name: {"seconds": sec, "calls": marked.calls[name], "share": sec / total}
                   for name, sec in marked.seconds.items()},
        "marked_seconds": marked.total(),
        "unmarked_seconds": total - marked.total(),
        "config": s.config.to_dict(),
        "pool_rows": int(sum(len(p) for p in pools)),
        "pool_completion_tokens": int(sum(p["num_tokens"].sum() + p["finished"].sum() for p in pools)),
        "train_steps": int((metrics["kind"] == "train").sum()),
        "how": ("quarklab.run_quark(config) in a fresh process inside quarklab.stages.clock(): iteration 0 evaluates "
                "the reference, iteration 1 samples, scores, pools, trains and evaluates every token; seconds per "
                "stage as the loop marks them, exclusive of nested stages (evaluate includes its own sampling, "
                "scoring and perplexity forwards)"),
    }


def bench_iteration(s: BenchSettings, tmp: Path) -> dict:
    """The run in a child process (``python -m benchmarks.iteration``): its profile, wall time and peak RSS."""
    run_dir, out, log_file = tmp / "iteration_run", tmp / "iteration_profile.json", tmp / "iteration.log"
    cmd = [sys.executable, "-m", "benchmarks.iteration", json.dumps(s.to_dict()), str(run_dir), str(out)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT)] + [p for p in [os.environ.get("PYTHONPATH")] if p])}
    log("iteration: one Quark iteration in a subprocess")
    t0 = time.perf_counter()
    with open(log_file, "wb") as f:
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=env)
        _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    code = proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here: Popen must not wait again
    if code != 0 or not out.exists():
        tail = log_file.read_text(errors="replace")[-2000:]
        raise QuarkError(f"bench: the Quark iteration subprocess failed (exit {code}):\n{tail}")
    rss = usage.ru_maxrss * (1 if sys.platform == "darwin" else 1024)  # kilobytes on Linux, bytes on macOS
    return {"process_wall_seconds": wall, "peak_rss_mb": rss / 2**20, **json.loads(out.read_text())}


if __name__ == "__main__":  # the child: python -m benchmarks.iteration SETTINGS_JSON RUN_DIR OUT_JSON
    if len(sys.argv) != 4:
        sys.exit("usage: python -m benchmarks.iteration SETTINGS_JSON RUN_DIR OUT_JSON (internal; use `quarklab bench`)")
    from quarklab.files import atomic_write_json

    atomic_write_json(sys.argv[3], profile_run(BenchSettings.from_dict(json.loads(sys.argv[1])), sys.argv[2]))
