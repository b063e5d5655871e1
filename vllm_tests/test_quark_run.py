"""``quarklab train --set sampler=vllm``: a real tiny Quark run whose pools a vLLM engine samples, one engine per
iteration, each stopped before the run goes on."""

from __future__ import annotations

import subprocess
import sys
import time

import pandas as pd
import psutil
import vllm

import quarklab as ql
from quarklab import runs
from quarklab.tokens import quantile_token_ids
from tests.conftest import TINY_RUN

from engines import engine_processes


def _engine_cores(root) -> set[int]:
    return {p.pid for p in engine_processes(root) if "EngineCore" in " ".join(p.cmdline())}


def test_a_tiny_run_samples_each_pool_with_its_own_engine_stopped_before_the_run_goes_on(world, tmp_path):
    run_dir = tmp_path / "run"
    settings = TINY_RUN + ["sampler=vllm", "idle_models=release"]  # the reference and reward model leave for sampling
    iterations = int(dict(s.split("=") for s in settings)["iterations"])
    args = [sys.executable, "-m", "quarklab.cli", "train", "--preset", "tiny", "--run-dir", str(run_dir)]
    with open(tmp_path / "stderr.txt", "w") as err:
        proc = psutil.Popen(args + [a for s in settings for a in ("--set", s)], stdout=subprocess.DEVNULL, stderr=err)
        started: list[int] = []  # engine cores in the order they appeared
        most_alive, late = 0, []
        while proc.poll() is None and time.time() - proc.create_time() < 900:
            # the pools first, then the engines: an engine seen after its iteration's pool was written is a leak
            pools = sum(runs.pool_path(run_dir, it).exists() for it in range(1, iterations + 1))
            alive = _engine_cores(proc) if proc.is_running() else set()
            started += sorted(alive - set(started))
            most_alive = max(most_alive, len(alive))
            late += [pid for pid in alive if started.index(pid) < pools]
            time.sleep(0.1)
    assert proc.wait(timeout=60) == 0, (tmp_path / "stderr.txt").read_text()[-3000:]
    assert len(started) == iterations  # one engine per iteration...
    assert most_alive == 1  # ... never two at once ...
    assert not late  # ... each gone before its pool was scored and written ...
    assert not [pid for pid in started if psutil.pid_exists(pid)  # ... and none left behind
                and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE]

    tokenizer = ql.load_tokenizer(runs.checkpoint_path(run_dir, iterations))
    quantile_ids = set(quantile_token_ids(tokenizer, 3))
    for it in range(1, iterations + 1):
        pool = runs.read_pool(run_dir, it)
        assert pool["sampler"].str.startswith(f"vllm {vllm.__version__} (").all()  # the run records who sampled
        assert len(pool) == 6 * 8 and pool["num_tokens"].gt(0).any()
        assert not any(quantile_ids & set(ids) for ids in pool["completion_ids"])
        assert pool["token"].isna().all() if it == 1 else (pool["token"] == 0).all()  # 1: the SFT model, no token
    metrics = pd.DataFrame(runs.read_metrics(run_dir))
    assert sorted(metrics.loc[metrics["kind"] == "eval", "iteration"].unique()) == list(range(iterations + 1))
