"""Files on disk: atomic writes, so that nothing is ever left half-written."""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any, Iterator

from .errors import QuarkError, describe


@contextlib.contextmanager
def atomic_dir(final: str | os.PathLike) -> Iterator[Path]:
    """Yield a fresh temporary directory beside ``final``; on success rename it to ``final``.

    On any exception the temporary directory is removed and ``final`` is untouched.
    An existing ``final`` is replaced only once the new one is complete.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
    try:
        os.chmod(tmp, 0o777 & ~umask())  # mkdtemp makes it 0700: unreadable to colleagues
        yield tmp
        _umask_modes(tmp)
        if final.exists():
            old = final.with_name(f".{final.name}.old-{os.getpid()}")
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def umask() -> int:
    """The process's umask, read without changing it (Linux), else by setting it back at once."""
    with contextlib.suppress(OSError, ValueError, StopIteration):
        with open("/proc/self/status") as f:
            return int(next(line for line in f if line.startswith("Umask:")).split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _umask_modes(folder: Path) -> None:
    """Give everything under ``folder`` the modes the umask gives (some writers, e.g. safetensors, make 0600)."""
    mask = umask()
    for root, dirs, files in os.walk(folder):
        for d in dirs:
            os.chmod(os.path.join(root, d), 0o777 & ~mask)
        for f in files:
            p = os.path.join(root, f)
            os.chmod(p, (0o777 if os.stat(p).st_mode & 0o111 else 0o666) & ~mask)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file, fsync, then rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~umask())  # mkstemp makes it 0600: unreadable to colleagues
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


# ---------------------------------------------------------------------------- run directory
#   config.json                     the QuarkConfig of the run
#   pool/iter_NNN.parquet           each iteration's scored, quantized samples (train = drawn for training)
#   checkpoints/iter_NNN/           the policy after iteration NNN (save_pretrained, safetensors)
#   eval/iter_NNN.parquet           every evaluation sample of iteration NNN (0 = the reference, before training)
#   metrics.jsonl                   one JSON object per row: kind "eval" (per token) or "train" (per step)
#   .lock                           flock-ed by the process running the run; holds its pid
# Every file is written atomically, and a stage's output is its marker of completion: a run
# killed at any moment resumes at the first stage whose output is missing.

def pool_path(run_dir: str | os.PathLike, iteration: int) -> Path:
    return Path(run_dir) / "pool" / f"iter_{iteration:03d}.parquet"


def checkpoint_path(run_dir: str | os.PathLike, iteration: int) -> Path:
    return Path(run_dir) / "checkpoints" / f"iter_{iteration:03d}"


TRAINER_STATE = "trainer_state.pt"
"""In a checkpoint of a run whose optimizer spans iterations (pool_strategy "quark"): AdamW, schedule and
GradScaler state, a plain tensor dict (read with ``weights_only=True``)."""


TRAINED_BY = "trained_by.json"
"""In every checkpoint: what trained it (engine, accelerate's distributed type, processes, backend, ZeRO stage, the
share of the parameters each process held), as :meth:`quarklab.distributed.Dist.describe` saw it."""


def read_trained_by(run_dir: str | os.PathLike, iteration: int) -> dict:
    return json.loads((checkpoint_path(run_dir, iteration) / TRAINED_BY).read_text())


def read_trainer_state(run_dir: str | os.PathLike, iteration: int) -> dict:
    import torch

    return torch.load(checkpoint_path(run_dir, iteration) / TRAINER_STATE, map_location="cpu", weights_only=True)


def eval_path(run_dir: str | os.PathLike, iteration: int) -> Path:
    return Path(run_dir) / "eval" / f"iter_{iteration:03d}.parquet"


def iteration_of(path: str | os.PathLike) -> int:
    """The iteration a pool, checkpoint or eval path belongs to (``.../iter_NNN[.parquet]``)."""
    return int(Path(path).name.split(".")[0][len("iter_"):])


def pool_files(run_dir: str | os.PathLike) -> list[Path]:
    """The run's pool files, iteration 1 first."""
    return sorted(Path(run_dir, "pool").glob("iter_[0-9][0-9][0-9].parquet"))


def checkpoints(run_dir: str | os.PathLike) -> list[Path]:
    """The run's checkpoint folders, oldest first."""
    return sorted(Path(run_dir, "checkpoints").glob("iter_[0-9][0-9][0-9]"))


def eval_files(run_dir: str | os.PathLike) -> list[Path]:
    """The run's evaluation sample files, iteration 0 (the reference) first."""
    return sorted(Path(run_dir, "eval").glob("iter_[0-9][0-9][0-9].parquet"))


def latest_checkpoint(run_dir: str | os.PathLike) -> tuple[int, Path] | None:
    """``(iteration, folder)`` of the newest checkpoint, or None."""
    found = checkpoints(run_dir)
    return (iteration_of(found[-1]), found[-1]) if found else None


def write_parquet(path: str | os.PathLike, df) -> None:
    buf = io.BytesIO()
    df.to_parquet(buf, index=False)
    atomic_write_bytes(path, buf.getvalue())


def read_metrics(run_dir: str | os.PathLike):
    """metrics.jsonl as a DataFrame (empty when the run has none yet)."""
    import pandas as pd

    return pd.DataFrame.from_records(_metric_rows(Path(run_dir) / "metrics.jsonl", warn=True)[0])


def _metric_rows(path: Path, warn: bool = False) -> tuple[list[dict], str | None]:
    """The rows of metrics.jsonl and, when its last line is torn (an interrupted append), a note saying
    what was dropped. A bad line anywhere else is a QuarkError naming the file and the line."""
    if not path.exists():
        return [], None
    lines = path.read_bytes().decode("utf-8", errors="replace").splitlines()
    rows, note = [], None
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            if not isinstance(row, dict):
                raise ValueError(f"a JSON {type(row).__name__}, not an object")
        except ValueError as exc:
            if number < len(lines):
                raise QuarkError(f"{str(path)!r} line {number} is not a JSON object ({exc}): the file is damaged "
                                 "in its middle, which an interrupted run never leaves; restore it from a "
                                 "copy, or delete that line to have its stage redone on --resume") from exc
            # A torn last line: drop it, and the other rows of its stage when the fragment names it, so
            # that the stage counts as not done and is redone.
            stage = re.match(r'\{"iteration": (\d+), "kind": "(\w+)"', line)
            if stage:
                it, kind = int(stage[1]), stage[2]
                rows = [r for r in rows if not (r.get("iteration") == it and r.get("kind") == kind)]
            note = (f"dropped the torn last line {number} of {str(path)!r} (an interrupted write)"
                    + (f" and the other {kind!r} rows of iteration {it}, which are redone" if stage else ""))
            if warn:
                print(f"quarklab: warning: {note}", file=sys.stderr)
            continue
        rows.append(row)
    return rows, note


def repair_metrics(run_dir: str | os.PathLike) -> None:
    """Drop a torn last line of metrics.jsonl for good, saying so on stderr (see :func:`_metric_rows`)."""
    path = Path(run_dir) / "metrics.jsonl"
    rows, note = _metric_rows(path)
    if note:
        atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in rows))
        print(f"quarklab: {note}", file=sys.stderr)


def record_metrics(run_dir: str | os.PathLike, rows: list[dict], iteration: int, kind: str) -> None:
    """Replace the rows of ``(iteration, kind)`` in metrics.jsonl by ``rows``, atomically: idempotent,
    so a stage redone after a kill never duplicates its rows."""
    path = Path(run_dir) / "metrics.jsonl"
    kept = [r for r in _metric_rows(path, warn=True)[0]
            if not (r.get("iteration") == iteration and r.get("kind") == kind)]
    new = [{"iteration": iteration, "kind": kind, **r} for r in rows]
    atomic_write_text(path, "".join(json.dumps(r, default=float) + "\n" for r in kept + new))


def has_metrics(run_dir: str | os.PathLike, iteration: int, kind: str) -> bool:
    df = read_metrics(run_dir)
    return bool(len(df)) and bool(((df["iteration"] == iteration) & (df["kind"] == kind)).any())


# ---------------------------------------------------------------------------- damaged files and the lock

def read_pool(run_dir: str | os.PathLike, iteration: int):
    """Iteration ``iteration``'s pool file, or one QuarkError saying it is damaged and how to recover."""
    import pandas as pd

    path = pool_path(run_dir, iteration)
    try:
        return pd.read_parquet(path)
    except FileNotFoundError:
        raise
    except Exception as exc:  # pyarrow raises several types (ArrowInvalid, OSError) for a damaged file
        latest = latest_checkpoint(run_dir)
        if latest is None or latest[0] < iteration:
            fix = (f"delete it and --resume again to re-sample iteration {iteration} from "
                   + (f"checkpoints/iter_{latest[0]:03d}" if latest else "the reference model")
                   + " (its sampling and scoring are redone; nothing else)")
        else:
            fix = (f"iteration {iteration} was trained already and its checkpoint is gone or later, so it cannot be "
                   "re-sampled as it was: restore the file from a copy, or start a new --run-dir")
        raise QuarkError(f"the pool file of iteration {iteration}, {str(path)!r}, cannot be read "
                         f"({describe(exc)}); {fix}") from exc


def check_checkpoint(run_dir: str | os.PathLike, iteration: int, trainer_state: bool = False) -> None:
    """One QuarkError when checkpoint ``iteration``'s config.json or safetensors headers (or, with
    ``trainer_state``, its optimizer state) are damaged."""
    folder = checkpoint_path(run_dir, iteration)
    try:
        json.loads((folder / "config.json").read_text())
        if trainer_state:
            read_trainer_state(run_dir, iteration)
        from safetensors import safe_open

        weights = sorted(folder.glob("*.safetensors"))
        if not weights:
            raise FileNotFoundError("it has no .safetensors weights")
        for f in weights:
            with safe_open(str(f), "np") as st:
                st.keys()
    except Exception as exc:  # missing, truncated or garbled files: json, OSError, SafetensorError
        earlier = [i for i in map(iteration_of, checkpoints(run_dir)) if i < iteration]
        start = f"checkpoints/iter_{earlier[-1]:03d}" if earlier else "the SFT model"
        first = earlier[-1] + 1 if earlier else 1
        raise QuarkError(f"the checkpoint {str(folder)!r} is damaged ({describe(exc)}); delete that folder and "
                         f"--resume again: training restarts from {start} and retrains iterations {first}..{iteration} from their "
                         "pools (their evaluations are kept)") from exc


@contextlib.contextmanager
def run_lock(run_dir: str | os.PathLike) -> Iterator[None]:
    """Hold an exclusive lock on ``run_dir`` (``flock`` on ``run_dir/.lock``, which holds our pid).

    A second process fails at once with the holder's pid. The kernel releases the lock when
    its holder exits, even after ``kill -9``; the stale pid left in the file blocks nothing.
    """
    import fcntl

    path = Path(run_dir) / ".lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
            raise QuarkError(f"{str(run_dir)!r} is in use by another quarklab process (pid {holder}); two runs "
                             "must not write one run directory: wait for it to end, or stop it, then --resume") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the lock
