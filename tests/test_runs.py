"""The run directory under damage and contention: damaged files on --resume, the lock, file modes.

Every case goes through the real ``quarklab train`` command in a subprocess and checks what a user
sees (the exit code and one line on stderr) and that nothing else in the run directory changed.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from quarklab import files, runs
from quarklab.config import QuarkConfig

TINIER = ["iterations=1", "prompts_per_iteration=4", "samples_per_prompt=5", "max_new_tokens=16",
          "eval_prompts=4", "eval_max_new_tokens=16", "epochs_per_iteration=1", "batch_size=16"]


def _cli(*args: str, umask: int = 0o022) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "quarklab.cli", "train", *args], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, preexec_fn=lambda: os.umask(umask))


def _train(*args: str) -> tuple[int, str]:
    proc = _cli(*args)
    _, err = proc.communicate(timeout=600)
    return proc.returncode, err


def _new_run_args(run_dir: Path) -> list[str]:
    return ["--preset", "tiny", "--run-dir", str(run_dir), *[a for s in TINIER for a in ("--set", s)]]


def _files(run_dir: Path) -> dict[str, bytes]:
    """Every file of the run (the lock file aside, it holds the last holder's pid), by relative path."""
    return {str(p.relative_to(run_dir)): p.read_bytes() for p in sorted(run_dir.rglob("*"))
            if p.is_file() and p.name != ".lock"}


@pytest.fixture(scope="module")
def finished(world, tmp_path_factory) -> Path:
    """A finished one-iteration run, written under umask 022."""
    run_dir = tmp_path_factory.mktemp("runs") / "finished"
    code, err = _train(*_new_run_args(run_dir))
    assert code == 0, err[-2000:]
    return run_dir


@pytest.fixture
def copy(finished, tmp_path) -> Path:
    shutil.copytree(finished, tmp_path / "run")
    return tmp_path / "run"


def _fails_cleanly(run_dir: Path, *names: str) -> str:
    """Resume ``run_dir``: one error line naming ``names``, exit 2, and every file byte for byte as before."""
    before = _files(run_dir)
    code, err = _train("--resume", str(run_dir))
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("quarklab: error: "), err[-2000:]
    for name in names:
        assert name in lines[0]
    assert _files(run_dir) == before
    return lines[0]


# ---------------------------------------------------------------------------- damaged files on --resume

def test_torn_last_metrics_line_is_dropped_and_its_stage_redone(finished, copy):
    path = copy / "metrics.jsonl"
    text = path.read_text()
    assert json.loads(text.splitlines()[-1])["kind"] == "eval"  # the run's last write: iteration 1's evaluation
    path.write_text(text[: len(text) - len(text.splitlines()[-1]) // 2 - 1])  # an append cut mid-line
    before = _files(copy)
    code, err = _train("--resume", str(copy))
    assert code == 0, err[-2000:]
    notes = [line for line in err.splitlines() if "torn" in line]
    assert len(notes) == 1 and "metrics.jsonl" in notes[0] and "'eval' rows of iteration 1" in notes[0]
    after = _files(copy)
    changed = {"metrics.jsonl", "eval/iter_001.parquet"}  # the evaluation of iteration 1, redone
    assert {k: v for k, v in after.items() if k not in changed} == {k: v for k, v in before.items() if k not in changed}
    pd.testing.assert_frame_equal(runs.read_metrics(copy), runs.read_metrics(finished), rtol=1e-6)
    pd.testing.assert_frame_equal(pd.read_parquet(copy / "eval/iter_001.parquet"),
                                  pd.read_parquet(finished / "eval/iter_001.parquet"), rtol=1e-6)


def test_bad_metrics_line_in_the_middle_is_one_error_naming_the_line(copy):
    path = copy / "metrics.jsonl"
    lines = path.read_text().splitlines(keepends=True)
    lines[1] = lines[1][:20] + "\n"
    path.write_text("".join(lines))
    _fails_cleanly(copy, "metrics.jsonl", "line 2")


def test_damaged_config_is_one_error(copy):
    (copy / "config.json").write_text('{"seed": 0, "iterations": ')
    _fails_cleanly(copy, "config.json", "damaged")


def test_truncated_checkpoint_is_one_error_saying_what_is_retrained(copy):
    weights = copy / "checkpoints" / "iter_001" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    line = _fails_cleanly(copy, "checkpoints/iter_001", "delete that folder")
    assert "retrains iterations 1..1" in line


def test_unreadable_pool_is_one_error_and_its_advice_recovers_the_run(finished, copy):
    shutil.rmtree(copy / "checkpoints")  # killed after the pool of iteration 1, before its checkpoint
    pool = runs.pool_path(copy, 1)
    pool.write_bytes(pool.read_bytes()[: pool.stat().st_size // 2])  # a copy cut short
    line = _fails_cleanly(copy, "pool/iter_001.parquet", "iteration 1", "delete it", "re-sample")
    pool.unlink()  # as the error says
    code, err = _train("--resume", str(copy))
    assert code == 0, err[-2000:]
    pd.testing.assert_frame_equal(pd.read_parquet(pool), pd.read_parquet(runs.pool_path(finished, 1)))
    assert (copy / "checkpoints" / "iter_001" / "model.safetensors").exists()
    assert "nothing else" in line


# ---------------------------------------------------------------------------- the lock

def _wait_for(predicate, proc: subprocess.Popen, seconds: float = 300) -> None:
    deadline = time.time() + seconds
    while not predicate() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert predicate(), "the process ended or stalled before the moment the test waits for"


def _holds_lock(run_dir: Path, proc: subprocess.Popen) -> bool:
    lock = run_dir / ".lock"
    return (run_dir / "config.json").exists() and lock.exists() and lock.read_text().strip() == str(proc.pid)


def test_second_process_on_a_run_dir_fails_and_kill_9_leaves_no_stale_lock(world, tmp_path):
    """Deterministic whatever the machine's speed: the first run is long (50 iterations) and is frozen (SIGSTOP)
    the moment it holds the lock, so it holds it for as long as the test needs."""
    run_dir = tmp_path / "contended"
    first = _cli(*_new_run_args(run_dir), "--set", "iterations=50")
    try:
        _wait_for(lambda: _holds_lock(run_dir, first), first)
        first.send_signal(signal.SIGSTOP)
        assert first.poll() is None
        code, err = _train("--resume", str(run_dir))
        assert code == 2 and err.strip().splitlines() == [
            f"quarklab: error: {str(run_dir)!r} is in use by another quarklab process (pid {first.pid}); two runs "
            "must not write one run directory: wait for it to end, or stop it, then --resume"]
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    assert (run_dir / ".lock").read_text().strip() == str(first.pid)  # the stale pid stays in the file ...
    second = _cli("--resume", str(run_dir))
    try:
        _wait_for(lambda: _holds_lock(run_dir, second), second)  # ... and blocks nothing
    finally:
        second.send_signal(signal.SIGKILL)
        second.wait()


def test_lock_is_released_when_the_holder_returns(tmp_path):
    with runs.run_lock(tmp_path):
        assert (tmp_path / ".lock").read_text() == f"{os.getpid()}\n"
        probe = subprocess.run([sys.executable, "-c", "import sys; from quarklab import runs\n"
                                f"with runs.run_lock({str(tmp_path)!r}): pass"], capture_output=True, text=True)
        assert probe.returncode == 1 and f"(pid {os.getpid()})" in probe.stderr.splitlines()[-1]
    probe = subprocess.run([sys.executable, "-c", "from quarklab import runs\n"
                            f"with runs.run_lock({str(tmp_path)!r}): print('locked')"], capture_output=True, text=True)
    assert probe.stdout == "locked\n", probe.stderr[-2000:]


# ---------------------------------------------------------------------------- file modes

def _modes(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): p.stat().st_mode & 0o777 for p in [root, *root.rglob("*")]}


def test_a_run_writes_files_and_folders_with_the_umask_modes(finished):
    modes = _modes(finished)
    assert "checkpoints/iter_001/model.safetensors" in modes and "pool/iter_001.parquet" in modes
    assert {name: mode for name, mode in modes.items()
            if mode != (0o755 if (finished / name).is_dir() else 0o644)} == {}


@pytest.mark.parametrize("mask", [0o022, 0o077])
def test_atomic_writes_and_checkpoint_folders_follow_the_umask(mask, sft, tmp_path):
    model, tokenizer = sft
    old = os.umask(mask)
    try:
        files.atomic_write_json(tmp_path / "results" / "summary.json", {"a": 1})
        files.write_parquet(tmp_path / "pool" / "iter_001.parquet", pd.DataFrame({"x": [1, 2]}))
        with files.atomic_dir(runs.checkpoint_path(tmp_path, 1)) as tmp:
            model.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
        with files.atomic_dir(runs.checkpoint_path(tmp_path, 1)) as tmp:  # replacing an existing one
            model.save_pretrained(tmp)
    finally:
        os.umask(old)
    modes = _modes(tmp_path)
    assert "checkpoints/iter_001/model.safetensors" in modes and "results/summary.json" in modes
    want = {name: (0o777 if (tmp_path / name).is_dir() else 0o666) & ~mask for name in modes if name != "."}
    assert {k: v for k, v in modes.items() if k != "."} == want


def test_a_run_directory_is_told_from_a_model_folder(tmp_path, sft):
    run, model = tmp_path / "run", tmp_path / "model"
    runs.write_config(run, QuarkConfig())
    sft[0].save_pretrained(model)  # a config.json too, the model's
    (tmp_path / "damaged").mkdir()
    (tmp_path / "damaged" / "config.json").write_text("{not json")
    assert runs.is_run_dir(run) and not runs.is_run_dir(model) and not runs.is_run_dir(tmp_path)
    assert runs.is_run_dir(tmp_path / "damaged")  # reading it says what is wrong
