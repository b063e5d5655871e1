"""Files on disk: atomic writes, so that nothing is ever left half-written, and the one JSON-lines reader.

A JSON-lines file (metrics.jsonl, the judge's cache.jsonl) holds one JSON object per line. An interrupted write
can leave only its last line unfinished: :func:`read_jsonl` reports that line as torn, for its owner to drop,
while a bad line anywhere before it is damage no interrupted write leaves, and one QuarkError.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from .errors import QuarkError


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


def write_parquet(path: str | os.PathLike, df) -> None:
    buf = io.BytesIO()
    df.to_parquet(buf, index=False)
    atomic_write_bytes(path, buf.getvalue())


@dataclass(frozen=True)
class JsonLines:
    """What :func:`read_jsonl` read: the rows, and the torn last line (its number and text) when there was one."""

    rows: list[dict]
    torn: str | None = None
    torn_number: int | None = None
    clean_end: bool = True  # the file ends with a newline (or is empty): an append starts a line of its own


def read_jsonl(path: str | os.PathLike, fix: str) -> JsonLines:
    """The JSON objects of ``path``, one per line (blank lines skipped; a missing file has none).

    The last line is torn when it is not a JSON object: an interrupted write, reported in ``torn`` and left out.
    A bad line before it is one QuarkError naming the file and the line, and saying ``fix``.
    """
    path = Path(path)
    if not path.exists():
        return JsonLines([])
    text = path.read_bytes().decode("utf-8", errors="replace")
    lines = text.splitlines()
    rows: list[dict] = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            if not isinstance(row, dict):
                raise ValueError(f"a JSON {type(row).__name__}, not an object")
        except ValueError as exc:
            if number < len(lines):
                raise QuarkError(f"{str(path)!r} line {number} is damaged (not a JSON object: {exc}), in the file's "
                                 f"middle, which an interrupted write never leaves; {fix}") from exc
            return JsonLines(rows, torn=line, torn_number=number, clean_end=False)
        rows.append(row)
    return JsonLines(rows, clean_end=text.endswith("\n") or not text)


def write_jsonl(path: str | os.PathLike, rows: list[dict]) -> None:
    """Replace ``path`` by ``rows``, one JSON object per line, atomically."""
    atomic_write_text(path, "".join(json.dumps(r, default=float) + "\n" for r in rows))
