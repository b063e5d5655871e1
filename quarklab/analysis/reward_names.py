"""How figures name the reward a run was scored with (its ``config.json`` ``reward``), and the refusal to draw runs
scored by different rewards on one axis."""

from __future__ import annotations

from ..errors import QuarkError
from ..runs import read_config


def reward_name(spec: str) -> str:
    """How figures name a reward spec (a run's ``config.json`` ``reward``): ``"tiny-tldr"`` is the ``"tiny-tldr
    score"``; a model is its hub id or folder's name (a weights file dropped) + ``" score"``."""
    if not isinstance(spec, str) or not spec.strip("/ "):
        raise QuarkError(f"a reward spec must be a non-empty string, got {spec!r}")
    parts = spec.strip().rstrip("/").split("/")
    if len(parts) > 1 and parts[-1].endswith((".bin", ".pt", ".pth", ".safetensors")):
        parts = parts[:-1]
    if spec.strip().startswith(("/", "~", ".")):  # a local folder: its name, not the whole path
        parts = parts[-1:]
    return "/".join(parts) + " score"


def run_reward_name(*run_dirs) -> str:
    """The :func:`reward_name` of the reward the runs in ``run_dirs`` were scored with (their ``config.json``);
    runs scored by different rewards share no scale: then one QuarkError naming each run's reward."""
    if not run_dirs:
        raise QuarkError("run_reward_name needs at least one run directory")
    names = {str(run_dir): reward_name(read_config(run_dir).reward) for run_dir in run_dirs}
    if len(set(names.values())) != 1:
        raise QuarkError("these runs were scored by different rewards ("
                         + ", ".join(f"{d}: {r}" for d, r in names.items())
                         + "), which share no scale: draw each reward's runs in a figure of their own")
    return next(iter(names.values()))
