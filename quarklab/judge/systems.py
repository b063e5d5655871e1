"""Systems to compare: a run's completions at one token and iteration, its reference, or a file of completions.

A system spec is one string, typed the same on the command line and in a notebook::

    runs/demo                          token 0 at the run's last iteration, greedy (the default)
    runs/demo:token=0                  the same, said explicitly
    runs/demo:reference                the reference (SFT) model: iteration 0, no token
    runs/demo:iteration=0              the same
    runs/demo:token=2,iteration=1      token 2 after iteration 1
    runs/demo:token=none               the last iteration's policy without a token
    runs/demo:token=0,mode=sampled,sample=3
    file:results/gpt4_summaries.jsonl  a .jsonl/.json/.csv/.parquet file with 'prompt' and 'completion'
    token=0 / token 0 / reference      options alone: of the default run directory (a notebook's run_dir)

Options: ``token`` (an integer or ``none``), ``iteration`` (an integer or ``last``), ``mode`` (``greedy`` or
``sampled``) and ``sample`` (which sample of a prompt; default: the first), written ``key=value`` or
``key value`` (``token 0, iteration 2``: the form a notebook parameter takes, since papermill cannot read a
parameter line holding two ``=``). Relative paths are read from the
project root (:func:`quarklab.paths.resolve_path`). A run's completions come from ``RUN/eval/iter_NNN.parquet``.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from ..data import LOCAL_FORMATS, read_table
from ..checks import check_int
from ..errors import QuarkError
from ..tokens import sorted_tokens, token_series

OPTIONS = ("token", "iteration", "mode", "sample")
FILE_FORMATS = tuple(LOCAL_FORMATS)


@dataclass(frozen=True)
class SystemSpec:
    """A parsed system spec: a run directory with options, or a file of completions."""

    kind: str                      # "run" or "file"
    path: Path
    token: int | None = 0          # None: no token (the reference at iteration 0, the bare policy later)
    iteration: int | None = None   # None: the run's last evaluated iteration
    mode: str = "greedy"
    sample: int | None = None      # None: each prompt's first sample


@dataclass
class System:
    """A loaded system: its spec, a short label (for files, figures and tables) and one row per prompt."""

    spec: str
    label: str
    table: pd.DataFrame  # prompt_id, prompt, completion (one row per prompt, in the source's order)
    run: Path | None = None  # the run directory, for a run's system


def parse_system(spec: str, run_dir: str | os.PathLike | None = None) -> SystemSpec:
    """Parse a system spec (see the module docstring); ``run_dir`` is the run that options alone refer to.

    One QuarkError names the bad part: an unknown option, a value that is not a number, a missing path.
    """
    from ..paths import resolve_path

    if not isinstance(spec, str) or not spec.strip():
        raise QuarkError(f"a system spec must be a non-empty string such as 'runs/demo:token=0', got {spec!r}")
    text = spec.strip()
    if text.startswith("file:"):
        path = resolve_path(text[len("file:"):].strip() or ".")
        if path.suffix.lower() not in FILE_FORMATS:
            raise QuarkError(f"system {spec!r}: a file of completions must end in {', '.join(FILE_FORMATS)}, "
                             f"got {path.name!r}")
        if not path.is_file():
            raise QuarkError(f"system {spec!r}: the file {str(path)!r} does not exist")
        return SystemSpec("file", path)
    head, _, tail = text.rpartition(":")
    if not _is_options(tail):  # no options part: the whole spec is a path (which may hold a colon)
        head, tail = text, ""
    if not head:
        if run_dir is None:
            raise QuarkError(f"system {spec!r} names options but no run directory: write RUN_DIR:{text}")
        head = os.fspath(run_dir)
    options = _options(tail, spec)
    path = resolve_path(head)
    if not path.is_dir():
        raise QuarkError(f"system {spec!r}: the run directory {str(path)!r} does not exist (a file of completions "
                         "is written file:PATH)")
    return SystemSpec("run", path, **options)


_OPTION = re.compile(r"^(\w+)\s*(?:=|\s)\s*(.*)$")


def _is_options(text: str) -> bool:
    parts = [p.strip() for p in text.split(",") if p.strip()]
    return bool(parts) and all(p == "reference" or "=" in p or (m := _OPTION.match(p)) and m[1] in OPTIONS
                               for p in parts)


def _options(text: str, spec: str) -> dict:
    out: dict = {}
    for part in (p.strip() for p in text.split(",") if p.strip()):
        if part == "reference":
            out.update(iteration=0, token=None)
            continue
        m = _OPTION.match(part)
        key, value = (m[1], m[2].strip()) if m else (part, "")
        if key not in OPTIONS:
            raise QuarkError(f"system {spec!r}: {part!r} is not an option; use token=N|none, iteration=N|last, "
                             "mode=greedy|sampled, sample=N (or with a space: token 0), or reference")
        if key == "mode":
            if value not in ("greedy", "sampled"):
                raise QuarkError(f"system {spec!r}: mode must be 'greedy' or 'sampled', got {value!r}")
            out[key] = value
        elif key == "token" and value.lower() == "none":
            out[key] = None
        elif key == "iteration" and value.lower() == "last":
            out[key] = None
        elif re.fullmatch(r"\d+", value):
            out[key] = int(value)
        else:
            extra = "none or " if key == "token" else "last or " if key == "iteration" else ""
            raise QuarkError(f"system {spec!r}: {key} must be {extra}an integer >= 0, got {value!r}")
    if out.get("iteration") == 0 and "token" not in out:
        out["token"] = None  # iteration 0 is the reference: it has no token
    return out


def load_system(spec: str | System, run_dir: str | os.PathLike | None = None) -> System:
    """The completions of a system spec, one row per prompt (``prompt_id``, ``prompt``, ``completion``)."""
    if isinstance(spec, System):
        return spec
    parsed = parse_system(spec, run_dir)
    if parsed.kind == "file":
        return System(spec, file_slug(parsed.path.stem), _first_per_prompt(_read_file(parsed.path, spec), None, spec))
    return _load_run(parsed, spec)


def _read_file(path: Path, spec: str) -> pd.DataFrame:
    try:
        df = read_table(os.fspath(path))
    except QuarkError as exc:
        raise QuarkError(f"system {spec!r}: {exc}") from exc
    missing = [c for c in ("prompt", "completion") if c not in df.columns]
    if missing:
        raise QuarkError(f"system {spec!r}: {str(path)!r} has no {' or '.join(map(repr, missing))} column "
                         f"(columns: {list(df.columns)}); a file of completions needs 'prompt' and 'completion'")
    if "prompt_id" not in df.columns:
        df = df.assign(prompt_id=range(len(df)))
    return df


def _load_run(s: SystemSpec, spec: str) -> System:
    from ..runs import eval_files, eval_path, iteration_of

    found = {iteration_of(p): p for p in eval_files(s.path)}
    if not found:
        raise QuarkError(f"system {spec!r}: {str(s.path)!r} has no eval/iter_*.parquet; train the run first "
                         "(quarklab train, or notebook 02)")
    iteration = max(found) if s.iteration is None else s.iteration
    if iteration not in found:
        raise QuarkError(f"system {spec!r}: iteration {iteration} was not evaluated; the run has "
                         f"{sorted(found)} ({eval_path(s.path, iteration).name} is missing)")
    ev = pd.read_parquet(found[iteration])
    ev = ev[ev["mode"] == s.mode] if "mode" in ev.columns else ev
    if ev.empty:
        raise QuarkError(f"system {spec!r}: iteration {iteration} has no {s.mode} evaluation samples")
    token = s.token
    tokens = token_series(ev["token"])
    rows = ev[tokens.isna().to_numpy() if token is None else (tokens == token).fillna(False).to_numpy()]
    if rows.empty:
        have = ["none" if k is None else str(k) for k in sorted_tokens(tokens)]
        raise QuarkError(f"system {spec!r}: iteration {iteration} ({s.mode}) has no samples for token "
                         f"{'none' if token is None else token}; it has tokens {', '.join(have)}"
                         + (" (iteration 0 is the reference: token=none)" if iteration == 0 else ""))
    what = "reference" if iteration == 0 else f"it{iteration}-" + ("notoken" if token is None else f"token{token}")
    label = file_slug(f"{s.path.name}-{what}" + ("" if s.mode == "greedy" else "-sampled")
                  + ("" if s.sample is None else f"-s{s.sample}"))
    return System(spec, label, _first_per_prompt(rows, s.sample, spec), s.path)


def _first_per_prompt(df: pd.DataFrame, sample: int | None, spec: str) -> pd.DataFrame:
    """One row per prompt text: the given ``sample`` (by the ``sample`` column), else the first one."""
    if sample is not None:
        if "sample" not in df.columns:
            raise QuarkError(f"system {spec!r}: sample={sample} asked for, but it has no 'sample' column")
        df = df[df["sample"] == sample]
        if df.empty:
            raise QuarkError(f"system {spec!r}: no rows with sample={sample}")
    elif "sample" in df.columns:
        df = df.sort_values("sample", kind="stable")
    bad = df["completion"].map(lambda c: not isinstance(c, str))
    if bad.any():
        raise QuarkError(f"system {spec!r}: {int(bad.sum())} completions are not text")
    df = df.drop_duplicates("prompt", keep="first").sort_values("prompt_id", kind="stable")
    return df[["prompt_id", "prompt", "completion"]].reset_index(drop=True)


def file_slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_") or "system"


def pair_systems(a: System, b: System, limit: int | None = None) -> pd.DataFrame:
    """The prompts both systems answered (matched on the prompt text), in ``a``'s order, at most ``limit``:
    ``prompt_id`` (a's), ``prompt``, ``completion_a``, ``completion_b``. No shared prompt is a QuarkError."""
    if limit is not None:
        check_int(limit, "limit", 1)  # prompts, or None for all
    pairs = a.table.merge(b.table[["prompt", "completion"]], on="prompt", suffixes=("_a", "_b"))
    if pairs.empty:
        raise QuarkError(f"systems {a.spec!r} ({len(a.table)} prompts) and {b.spec!r} ({len(b.table)} prompts) "
                         "share no prompt: a pairwise judge compares two systems' answers to the same prompts")
    return pairs.head(limit).reset_index(drop=True) if limit else pairs
