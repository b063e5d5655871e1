"""Names that stand for a whole local setup wherever a model, dataset or reward is named.

``"tiny-tldr"`` (:data:`TINY`) is the offline tiny world: its SFT folder as a model, its data files as a
dataset, its text reward as a reward. The library core resolves such a name only here, through a registry,
so it never imports the world that answers it: :mod:`quarklab.world` registers itself under :data:`TINY`
when quarklab is imported.
"""

from __future__ import annotations

import os
from typing import Any, Callable, Protocol


TINY = "tiny-tldr"
"""The name that stands for the offline world wherever a model, dataset or reward is named."""


class NamedSetup(Protocol):
    """What a registered name provides."""

    @property
    def policy(self) -> str: ...  # a save_pretrained folder: the model and its tokenizer

    def data_file(self, split: str) -> str: ...  # a local .jsonl/.csv/.parquet file for the split

    def reward(self) -> Callable[[list[str], list[str]], Any]: ...  # (prompts, completions) -> floats


_REGISTRY: dict[str, Callable[..., NamedSetup]] = {}


def register(name: str, provider: Callable[..., NamedSetup]) -> None:
    """Make ``name`` stand for ``provider(seed=..., progress=...)``'s setup (built or located on first need)."""
    _REGISTRY[name] = provider


def is_named(spec: Any) -> bool:
    """Whether ``spec`` is a registered name (a path or hub id never is)."""
    return isinstance(spec, (str, os.PathLike)) and os.fspath(spec) in _REGISTRY


def lookup(spec: Any, *, seed: int = 0, progress: bool = True) -> NamedSetup | None:
    """The setup ``spec`` names, built on first need, or None when ``spec`` is not a registered name."""
    return _REGISTRY[os.fspath(spec)](seed=seed, progress=progress) if is_named(spec) else None
