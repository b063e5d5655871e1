"""Shared fixtures: the real tiny world (built once, then cached) and the SFT model loaded once."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

# Tests never reach a hub: a hub id must fail at once, not after network time-outs.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
# Under pytest-xdist (make test: a worker per core, each test file's tests in one worker) each worker and every
# process it starts computes on one thread: two workers of two threads each on two cores wait on each other at every
# op. Launches take a free port each (tests/launching.py), so two workers' process groups never meet.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ["OMP_NUM_THREADS"] = "1"

import quarklab as ql  # noqa: E402

REAL_TLDR = Path(__file__).resolve().parents[2] / "shared" / "data" / "tldr_sample.jsonl"


@pytest.fixture(scope="session")
def world() -> ql.World:
    """The default tiny world, from $QUARKLAB_HOME (built on first need, about 2 minutes)."""
    return ql.tiny_world(0, progress=False)


@pytest.fixture(scope="session")
def sft(world):
    """(model, tokenizer) of the tiny world's SFT GPT-J."""
    return ql.load_policy(world.policy), ql.load_tokenizer(world.policy)


@pytest.fixture(scope="session")
def real_tldr():
    """Real held-out Reddit TL;DR rows (../shared/data), for tests where real text matters."""
    if not REAL_TLDR.exists():
        pytest.skip("the real TL;DR sample (../shared/data/tldr_sample.jsonl) is not beside the project")
    return ql.load_prompts(REAL_TLDR)


# A real Quark run of the tiny preset, small: 2 iterations, 3 tokens (a minute on a 2-core CPU).
TINY_RUN = ["iterations=2", "prompts_per_iteration=6", "samples_per_prompt=8", "max_new_tokens=24", "eval_prompts=8",
            "eval_max_new_tokens=24", "epochs_per_iteration=1", "batch_size=16", "num_quantiles=3"]


def train_tiny(run_dir: Path, settings: list[str]) -> Path:
    """``quarklab train --preset tiny`` into ``run_dir`` with ``settings`` (``KEY=VALUE``), in a subprocess."""
    args = [sys.executable, "-m", "quarklab.cli", "train", "--preset", "tiny", "--run-dir", str(run_dir)]
    proc = subprocess.run(args + [a for s in settings for a in ("--set", s)], capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return run_dir


@pytest.fixture(scope="session")
def tiny_run(world, tmp_path_factory) -> Path:
    """A real Quark run of the tiny preset (:data:`TINY_RUN`, seed 0)."""
    return train_tiny(tmp_path_factory.mktemp("runs") / "tiny", TINY_RUN)


@pytest.fixture(scope="session")
def tiny_seed_runs(tiny_run, tmp_path_factory) -> list[Path]:
    """:func:`tiny_run` and the same setting under seeds 1 and 2: three runs to average over seeds."""
    root = tmp_path_factory.mktemp("seeds")
    return [tiny_run] + [train_tiny(root / f"seed{s}", TINY_RUN + [f"seed={s}"]) for s in (1, 2)]


# Synthetic tables (tests/tables.py) for the analysis, figure and widget tests.
@pytest.fixture(scope="module")
def samples() -> pd.DataFrame:
    from tables import make_samples  # tests/ is on the path under pytest; vllm_tests imports this module too

    return make_samples()


@pytest.fixture(scope="module")
def metrics5(tmp_path_factory) -> pd.DataFrame:
    from tables import make_metrics

    return make_metrics(tmp_path_factory.mktemp("run5"), 5)


# A Quark model of the tiny world (its SFT GPT-J with K quantile tokens added) and what compare_tokens makes of it,
# for the compare, html and evaluate tests.


@pytest.fixture(scope="module")
def prompts(world):
    return ql.load_prompts("tiny-tldr", "test", limit=3)


@pytest.fixture(scope="module")
def reward():
    return ql.load_reward("tiny-tldr")


@pytest.fixture(scope="module", params=[3, 5])
def quark(request, world):
    """(K, policy, tokenizer): a fresh copy of the SFT model with K quantile tokens (the shared sft stays untouched)."""
    k = request.param
    policy, tokenizer = ql.load_policy(world.policy), ql.load_tokenizer(world.policy)
    ql.add_quantile_tokens(policy, tokenizer, k)
    return k, policy, tokenizer


@pytest.fixture(scope="module")
def greedy_table(quark, sft, prompts, reward):
    k, policy, tokenizer = quark
    from tables import NEW  # max_new_tokens: keep the tests fast

    return ql.compare_tokens(policy, tokenizer, prompts, reward, reference=sft[0], max_new_tokens=NEW)
