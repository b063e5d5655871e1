"""Files on disk: atomic writes, so that nothing is ever left half-written."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator


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
        yield tmp
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


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file, fsync, then rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent)
    try:
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
# Every file is written atomically, and a stage's output is its marker of completion: a run
# killed at any moment resumes at the first stage whose output is missing.

def pool_path(run_dir: str | os.PathLike, iteration: int) -> Path:
    return Path(run_dir) / "pool" / f"iter_{iteration:03d}.parquet"


def checkpoint_path(run_dir: str | os.PathLike, iteration: int) -> Path:
    return Path(run_dir) / "checkpoints" / f"iter_{iteration:03d}"


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
    import io

    buf = io.BytesIO()
    df.to_parquet(buf, index=False)
    atomic_write_bytes(path, buf.getvalue())


def read_metrics(run_dir: str | os.PathLike):
    """metrics.jsonl as a DataFrame (empty when the run has none yet)."""
    import pandas as pd

    path = Path(run_dir) / "metrics.jsonl"
    if not path.exists() or path.stat().st_size == 0:
        return pd.DataFrame()
    return pd.read_json(path, lines=True)


def record_metrics(run_dir: str | os.PathLike, rows: list[dict], iteration: int, kind: str) -> None:
    """Replace the rows of ``(iteration, kind)`` in metrics.jsonl by ``rows``, atomically: idempotent,
    so a stage redone after a kill never duplicates its rows."""
    path = Path(run_dir) / "metrics.jsonl"
    kept = []
    if path.exists():
        for line in path.read_text().splitlines():
            row = json.loads(line)
            if not (row.get("iteration") == iteration and row.get("kind") == kind):
                kept.append(line)
    new = [json.dumps({"iteration": iteration, "kind": kind, **r}, default=float) for r in rows]
    atomic_write_text(path, "".join(line + "\n" for line in kept + new))


def has_metrics(run_dir: str | os.PathLike, iteration: int, kind: str) -> bool:
    df = read_metrics(run_dir)
    return bool(len(df)) and bool(((df["iteration"] == iteration) & (df["kind"] == kind)).any())
