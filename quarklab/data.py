"""Prompt sources: a hub dataset id, a local JSONL/CSV/parquet file, or the tiny world.

Every source yields the CarperAI ``openai_summarize_tldr`` layout: a ``prompt`` column
(``SUBREDDIT: r/...\\nTITLE: ...\\nPOST: ...\\nTL;DR:``) and, where present, a ``label``; a source whose
prompts are in another column is read with ``prompt_column=`` (a run's ``dataset_prompt_column``).
``"tiny-continuation"`` is the continuation task's: the tiny world's posts cut after their first sentence.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pandas as pd

from .errors import QuarkError, describe
from .names import TINY, lookup
from .tldr import parse

TINY_CONTINUATION = "tiny-continuation"
"""The continuation task's offline prompts, derived from the tiny world's (:func:`continuation_table`)."""
LOCAL_FORMATS = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet"}


def load_prompts(source: str | os.PathLike = TINY, split: str = "test", *, limit: int | None = None,
                 seed: int = 0, strip: bool = False, prompt_column: str = "prompt", label_column: str | None = "label",
                 subset: str | None = None, revision: str | None = None) -> pd.DataFrame:
    """Load prompts as a DataFrame with ``prompt_id``, ``prompt`` and (when the source has it) ``label``.

    ``source`` is ``"tiny-tldr"`` (the offline world; ``split`` train/valid/test), ``"tiny-continuation"`` (the
    same posts as openings to continue: :func:`continuation_table`), a local
    ``.jsonl``/``.csv``/``.parquet`` file (``split`` ignored), or a hub dataset id such as
    ``CarperAI/openai_summarize_tldr`` (``split`` train/valid/test; ``subset``: its config name, ``revision``: a
    branch, tag or commit, both passed to ``datasets.load_dataset`` and for hub datasets only). ``limit`` keeps
    the first rows. ``prompt_id`` is the row's position in the source, stable across calls. ``strip``
    removes each prompt's leading and trailing whitespace (a run's ``strip_prompts``, as ALT does:
    ``ALT@79bc706:tasks/summarization/datasets/sampling_dataset_and_collator.py:73-76``).
    ``prompt_column`` is the source's column read as ``prompt``; ``label_column`` the one kept as ``label``
    (the default "label" when the source has it; another name must be there; None: no label).
    """
    where = os.fspath(source)
    continuation = where == TINY_CONTINUATION
    named = lookup(TINY if continuation else source, seed=seed)
    if named is not None:
        source, split = named.data_file(split), None
    hub = named is None and is_hub_source(os.fspath(source))
    for what, value in (("subset", subset), ("revision", revision)):
        if value is not None and not hub:
            raise QuarkError(f"dataset {where!r}: a {what} ({value!r}) applies to a hub dataset only, and this is "
                             f"{'a registered name' if named is not None else 'a local file'}")
    df = read_table(os.fspath(source), split, subset=subset, revision=revision) if hub else \
        read_table(os.fspath(source), split)
    if continuation:
        df = continuation_table(df)
    columns = list(df.columns)
    if not columns:
        raise QuarkError(f"dataset {where!r} is empty")
    if prompt_column not in df.columns:
        hint = "" if prompt_column != "prompt" else " (dataset_prompt_column / prompt_column= names another)"
        raise QuarkError(f"dataset {where!r} has no {prompt_column!r} column{hint}; its columns: {columns}")
    if label_column is not None and label_column != "label" and label_column not in df.columns:
        raise QuarkError(f"dataset {where!r} has no {label_column!r} column (the label); its columns: {columns}")
    if len(df) == 0:
        raise QuarkError(f"dataset {where!r} is empty")
    bad = df[prompt_column].map(lambda p: not isinstance(p, str) or not p.strip())
    if bad.any():
        raise QuarkError(f"dataset {where!r} has {int(bad.sum())} empty or non-text prompts in column "
                         f"{prompt_column!r} (first at row {int(bad.to_numpy().nonzero()[0][0])})")
    df = pd.DataFrame({"prompt": df[prompt_column].to_numpy(),
                       **({"label": df[label_column].to_numpy()} if label_column in df.columns else {})})
    if strip:
        df["prompt"] = df["prompt"].map(str.strip)  # Python's strip, as ALT's
    df.insert(0, "prompt_id", range(len(df)))
    return df.head(limit).copy() if limit is not None else df


def continuation_table(posts: pd.DataFrame) -> pd.DataFrame:
    """Openings to continue, from TL;DR prompts (``posts["prompt"]``), one per post in its order: ``prompt`` the
    first sentence of the post's body (up to the first ".", "!" or "?" followed by a space), ``label`` the rest
    of the body (empty when the body is one sentence)."""
    bodies = [parse(p).body.strip() for p in posts["prompt"]]
    cut = [re.split(r"(?<=[.!?])\s+", body, maxsplit=1) + [""] for body in bodies]
    return pd.DataFrame({"prompt": [c[0] for c in cut], "label": [c[1] for c in cut]})


def is_hub_source(source: str) -> bool:
    """Whether :func:`read_table` reads ``source`` from the hub: not an existing path, nor a local file's name."""
    path = Path(source).expanduser()
    return not (path.exists() or path.suffix.lower() in LOCAL_FORMATS)


def read_table(source: str, split: str | None = None, *, subset: str | None = None,
               revision: str | None = None) -> pd.DataFrame:
    """A table from a local ``.jsonl``/``.json``/``.csv``/``.parquet`` file (by its suffix; an empty file is an
    empty table) or, for any other name, a hub dataset id at ``split`` (default ``"test"``), ``subset`` (its
    config name) and ``revision``."""
    path = Path(source).expanduser()
    suffix = path.suffix.lower()
    if not is_hub_source(source):
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
    return _read_hub(source, split or "test", subset, revision)


def _read_hub(dataset_id: str, split: str, subset: str | None = None, revision: str | None = None) -> pd.DataFrame:
    import datasets

    from .hub import resolve_source

    # Offline (or the hub unreachable) this is the dataset's folder in the local hub cache (the snapshot of
    # ``revision``, which is then that folder's), or one error now.
    source = resolve_source(dataset_id, "dataset", repo_type="dataset", revision=revision)
    from_hub = source == dataset_id
    where = "from the hub" if from_hub else f"from its copy in the local hub cache {source!r}"
    args = hub_dataset_args(source, split, subset, revision if from_hub else None)
    try:
        ds = datasets.load_dataset(**args)
    except Exception as exc:  # datasets raises many types for a missing id, split, subset or network
        named = "".join(f" {k} {v!r}" for k, v in (("subset", subset), ("revision", revision)) if v is not None)
        raise QuarkError(f"could not load dataset {dataset_id!r}{named} split {split!r} {where} "
                         f"({describe(exc)}). "
                         "Offline, pass a local .jsonl/.csv/.parquet file or 'tiny-tldr'.") from exc
    return ds.to_pandas()


def hub_dataset_args(source: str, split: str, subset: str | None = None, revision: str | None = None) -> dict:
    """The keywords of ``datasets.load_dataset`` for ``source`` (a hub id or its cached folder) at ``split``,
    ``subset`` (as ``name``, the dataset's config) and ``revision``; a None is left out (the dataset's default)."""
    return {"path": source, "split": split, **({"name": subset} if subset is not None else {}),
            **({"revision": revision} if revision is not None else {})}


def config_prompts(config, split: str, *, limit: int | None = None, strip: bool | None = None) -> pd.DataFrame:
    """The prompts of a run of ``config`` at ``split``: ``config.dataset`` read with its column, subset and
    revision fields (``dataset_prompt_column``, ``dataset_subset``, ``dataset_revision``), stripped as
    ``config.strip_prompts`` says (or ``strip``). Everything that loads a run's prompts loads them here."""
    return load_prompts(config.dataset, split, limit=limit, strip=config.strip_prompts if strip is None else strip,
                        prompt_column=config.dataset_prompt_column, subset=config.dataset_subset,
                        revision=config.dataset_revision)
