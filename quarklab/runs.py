"""A run directory: its layout, its settings, metrics, pools and checkpoints, and the lock of the process running it.

Everything is written through :mod:`quarklab.files` (atomic: nothing is ever left half-written)."""

from __future__ import annotations

import contextlib
import json
import os
import re
import sys
from pathlib import Path
from typing import Iterator

from .config import QuarkConfig
from .errors import QuarkError, describe
from .files import atomic_write_json, read_jsonl, write_jsonl
from .tokens import token_series


# ---------------------------------------------------------------------------- run directory
#   config.json                     the QuarkConfig of the run
#   pool/iter_NNN.parquet           each iteration's scored, quantized samples (train = drawn for training)
#   checkpoints/iter_NNN/           the policy after iteration NNN (save_pretrained, safetensors)
#   eval/iter_NNN.parquet           every evaluation sample of iteration NNN (0 = the reference, before training)
#   metrics.jsonl                   one JSON object per row: kind "eval" (per token) or "train" (per step)
#   .lock                           flock-ed by the process running the run; holds its pid
# Every file is written atomically, and a stage's output is its marker of completion: a run
# killed at any moment resumes at the first stage whose output is missing.

CONFIG = "config.json"


def is_run_dir(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a run directory: its ``config.json`` is a run's settings (a model folder's config.json,
    with ``model_type``, is not); a config.json that does not parse counts, so reading it names the damage."""
    file = Path(path) / CONFIG
    if not file.is_file():
        return False
    try:
        d = json.loads(file.read_bytes())
    except ValueError:
        return True
    return isinstance(d, dict) and "model_type" not in d


def read_config(run_dir: str | os.PathLike) -> QuarkConfig:
    """The run's settings (``config.json``), fields added since the run filled with their defaults; one QuarkError
    when the file is missing (not a run directory) or damaged (nothing in the run is changed)."""
    path = Path(run_dir) / CONFIG
    if not path.exists():
        raise QuarkError(f"{str(path)!r} does not exist: is {str(run_dir)!r} a Quark run directory (run notebook 02 "
                         "or `quarklab train` into it first)?")
    try:
        d = json.loads(path.read_bytes())
        if not isinstance(d, dict):
            raise ValueError(f"a JSON {type(d).__name__}, not an object")
        return QuarkConfig.from_stored(d)
    except (ValueError, TypeError) as exc:  # bad JSON or bytes, bad fields (QuarkError is a ValueError)
        raise QuarkError(f"{str(path)!r}, the settings of this run, is damaged ({describe(exc)}); restore it from a "
                         "copy (quarklab train --help-config lists the fields); nothing in the run was changed") from exc


def write_config(run_dir: str | os.PathLike, config: QuarkConfig) -> None:
    atomic_write_json(Path(run_dir) / CONFIG, config.to_dict())


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


def read_metrics(run_dir: str | os.PathLike):
    """metrics.jsonl as a DataFrame (empty when the run has none yet), ``token`` as nullable ``Int64``."""
    import pandas as pd

    df = pd.DataFrame.from_records(_metric_rows(Path(run_dir) / "metrics.jsonl", warn=True)[0])
    if "token" in df.columns:  # one form: the quantile index, or <NA> for no token (older runs wrote "none")
        df["token"] = token_series(df["token"])
    return df


def _metric_rows(path: Path, warn: bool = False) -> tuple[list[dict], str | None]:
    """The rows of metrics.jsonl and, when its last line is torn (an interrupted write), a note saying what was
    dropped: the torn line, and the other rows of its stage when the fragment names it, so that the stage counts
    as not done and is redone."""
    read = read_jsonl(path, "restore it from a copy, or delete that line to have its stage redone on --resume")
    if read.torn is None:
        return read.rows, None
    rows = read.rows
    stage = re.match(r'\{"iteration": (\d+), "kind": "(\w+)"', read.torn)
    if stage:
        it, kind = int(stage[1]), stage[2]
        rows = [r for r in rows if not (r.get("iteration") == it and r.get("kind") == kind)]
    note = (f"dropped the torn last line {read.torn_number} of {str(path)!r} (an interrupted write)"
            + (f" and the other {kind!r} rows of iteration {it}, which are redone" if stage else ""))
    if warn:
        print(f"quarklab: warning: {note}", file=sys.stderr)
    return rows, note


def repair_metrics(run_dir: str | os.PathLike) -> None:
    """Drop a torn last line of metrics.jsonl for good, saying so on stderr (see :func:`_metric_rows`)."""
    path = Path(run_dir) / "metrics.jsonl"
    rows, note = _metric_rows(path)
    if note:
        write_jsonl(path, rows)
        print(f"quarklab: {note}", file=sys.stderr)


def record_metrics(run_dir: str | os.PathLike, rows: list[dict], iteration: int, kind: str) -> None:
    """Replace the rows of ``(iteration, kind)`` in metrics.jsonl by ``rows``, atomically: idempotent,
    so a stage redone after a kill never duplicates its rows."""
    path = Path(run_dir) / "metrics.jsonl"
    kept = [r for r in _metric_rows(path, warn=True)[0]
            if not (r.get("iteration") == iteration and r.get("kind") == kind)]
    new = [{"iteration": iteration, "kind": kind, **r} for r in rows]
    write_jsonl(path, kept + new)


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
