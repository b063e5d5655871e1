"""Prompt sources: a hub dataset id, a local JSONL/CSV/parquet file, or the tiny world.

Every source yields the CarperAI ``openai_summarize_tldr`` layout: a ``prompt`` column
(``SUBREDDIT: r/...\\nTITLE: ...\\nPOST: ...\\nTL;DR:``) and, where present, a ``label``.
"""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from .errors import QuarkError, describe
from .names import TINY, lookup

LOCAL_FORMATS = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet"}


def load_prompts(source: str | os.PathLike = TINY, split: str = "test", *, limit: int | None = None,
                 seed: int = 0, strip: bool = False) -> pd.DataFrame:
    """Load prompts as a DataFrame with ``prompt_id``, ``prompt`` and (when the source has it) ``label``.

    ``source`` is ``"tiny-tldr"`` (the offline world; ``split`` train/valid/test), a local
    ``.jsonl``/``.csv``/``.parquet`` file (``split`` ignored), or a hub dataset id such as
    ``CarperAI/openai_summarize_tldr`` (``split`` train/valid/test). ``limit`` keeps the
    first rows. ``prompt_id`` is the row's position in the source, stable across calls. ``strip``
    removes each prompt's leading and trailing whitespace (a run's ``strip_prompts``, as ALT does:
    ``ALT@79bc706:tasks/summarization/datasets/sampling_dataset_and_collator.py:73-76``).
    """
    named = lookup(source, seed=seed)
    if named is not None:
        source, split = named.data_file(split), None
    df = read_table(os.fspath(source), split)
    if "prompt" not in df.columns:
        raise QuarkError(f"dataset {os.fspath(source)!r} has no 'prompt' column "
                         f"(columns: {list(df.columns)}); quarklab expects the fields 'prompt' and 'label'")
    if len(df) == 0:
        raise QuarkError(f"dataset {os.fspath(source)!r} is empty")
    bad = df["prompt"].map(lambda p: not isinstance(p, str) or not p.strip())
    if bad.any():
        raise QuarkError(f"dataset {os.fspath(source)!r} has {int(bad.sum())} empty or non-text prompts "
                         f"(first at row {int(bad.to_numpy().nonzero()[0][0])})")
    keep = ["prompt"] + (["label"] if "label" in df.columns else [])
    df = df[keep].reset_index(drop=True)
    if strip:
        df["prompt"] = df["prompt"].map(str.strip)  # Python's strip, as ALT's
    df.insert(0, "prompt_id", range(len(df)))
    return df.head(limit).copy() if limit is not None else df


def read_table(source: str, split: str | None = None) -> pd.DataFrame:
    """A table from a local ``.jsonl``/``.json``/``.csv``/``.parquet`` file (by its suffix; an empty file is an
    empty table) or, for any other name, a hub dataset id at ``split`` (default ``"test"``)."""
    path = Path(source).expanduser()
    suffix = path.suffix.lower()
    if path.exists() or suffix in LOCAL_FORMATS:
        if not path.exists():
            raise QuarkError(f"dataset file does not exist: {source!r}")
        if path.is_dir() or suffix not in LOCAL_FORMATS:
            raise QuarkError(f"cannot read dataset {source!r}: use a .jsonl, .csv or .parquet file, "
                             "or a hub dataset id")
        try:
            if suffix in (".jsonl", ".json"):
                return pd.read_json(path, lines=suffix == ".jsonl", dtype=False)
            if suffix == ".csv":
                return pd.read_csv(path, keep_default_na=False)
            return pd.read_parquet(path)
        except ValueError as exc:
            if path.stat().st_size == 0:
                return pd.DataFrame()
            raise QuarkError(f"cannot parse dataset file {source!r}: {exc}") from exc
    return _read_hub(source, split or "test")


def _read_hub(dataset_id: str, split: str) -> pd.DataFrame:
    import datasets

    from .hub import resolve_source

    # Offline (or the hub unreachable) this is the dataset's folder in the local hub cache, or one error now.
    source = resolve_source(dataset_id, "dataset", repo_type="dataset")
    where = "from the hub" if source == dataset_id else f"from its copy in the local hub cache {source!r}"
    try:
        ds = datasets.load_dataset(source, split=split)
    except Exception as exc:  # datasets raises many types for a missing id, split or network
        raise QuarkError(f"could not load dataset {dataset_id!r} split {split!r} {where} "
                         f"({describe(exc)}). "
                         "Offline, pass a local .jsonl/.csv/.parquet file or 'tiny-tldr'.") from exc
    return ds.to_pandas()
