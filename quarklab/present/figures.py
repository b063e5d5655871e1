"""What every figure shares: the colour-blind-safe palette, axis labels with units, saving into a run.

Every plotting function (:mod:`.quantile_plots`, :mod:`.run_plots`) returns a :class:`QuarkFigure`, a
:class:`matplotlib.figure.Figure` built with the object API (nothing is registered with pyplot, so
nothing accumulates, no backend is needed, and a figure is freed like any object once no name holds
it). It shows itself as a PNG: in Jupyter, ending a cell with ``fig`` (or ``display(fig)``) draws it
inline, in JupyterLab and in notebooks executed by papermill alike; :func:`save_figure` writes the
same PNG into a run directory. Colours come from
seaborn's colour-blind-safe ``"colorblind"`` palette (:func:`palette`); quantile/token ``k`` gets
colour ``k`` everywhere, so quantile 0 (the BEST rewards) always has the same colour.

Axis units: rewards are labelled ``"reward (tiny-tldr score)"`` by default; pass ``reward_name``
(e.g. ``"OpenAssistant RM logit"``) to label another reward ``"reward (OpenAssistant RM logit)"``,
or a full label with its own parentheses to use it verbatim.
"""

from __future__ import annotations

import io
import os
import re
from pathlib import Path
from typing import Sequence

import numpy as np
from matplotlib.figure import Figure

from ..checks import check_int
from ..errors import QuarkError
from ..files import atomic_write_bytes

__all__ = ["QuarkFigure", "palette", "save_figure", "reward_label"]

LENGTH_LABEL = "length (tokens)"
PERPLEXITY_LABEL = "perplexity (exp mean NLL, reference model)"
COUNT_LABEL = "samples"
SAMPLES_LABEL = "samples (count)"
ITERATION_LABEL = "Quark iteration (0 = SFT reference)"
KL_LABEL = "KL(policy||ref) (nats/token)"
QUANTILE_LABEL = "quantile (0 = best reward)"
MAX_PROMPTS = 64  # prompts shown in per-prompt panels (more: evenly spaced ones, and the panel says so)

REFERENCE_COLOR = "black"
NONE_COLOR = "0.35"
FRONT_COLOR = "black"


DPI = 120  # of saved and displayed PNGs


class QuarkFigure(Figure):
    """A matplotlib Figure that Jupyter draws inline as a PNG (the one :func:`save_figure` writes), with a
    one-line text form naming its title instead of ``<Figure size ... with N Axes>``."""

    def png(self) -> bytes:
        """The figure as PNG bytes (dpi 120, tight bounding box): what :func:`save_figure` writes."""
        return png_bytes(self)

    def title(self) -> str:
        """The figure's suptitle, else its panels' titles joined by " · "."""
        if self.get_suptitle().strip():
            return " ".join(self.get_suptitle().split())
        titles = [" ".join(ax.get_title().split()) for ax in self.axes if ax.get_title().strip()]
        return " · ".join(titles) or "untitled"

    def _repr_mimebundle_(self, include=None, exclude=None):
        return {"image/png": self.png(), "text/plain": f"figure: {self.title()}"}

    def __repr__(self) -> str:
        return f"<QuarkFigure {self.title()!r}>"


def palette(n: int) -> list:
    """``n`` colours (RGB tuples) from seaborn's colour-blind-safe ``"colorblind"`` palette.

    The palette has 10 distinct colours; beyond that it repeats.
    """
    check_int(n, "palette's number of colours", 0)
    if n == 0:
        return []
    import seaborn as sns

    return list(sns.color_palette("colorblind", int(n)))


def save_figure(fig: Figure, run_dir: str | os.PathLike, name: str) -> Path:
    """Save ``fig`` as ``<run_dir>/figures/<name>.png`` (dpi 120, tight box), atomically; return the path.

    The PNG is rendered in memory and then written through a temporary file and a rename, so a
    reader never sees a half-written figure, and an existing file is replaced whole.
    """
    if not isinstance(fig, Figure):
        raise QuarkError(f"save_figure needs a matplotlib Figure, got {type(fig).__name__}")
    if not isinstance(name, str) or not name.strip():
        raise QuarkError(f"figure name must be a non-empty string, got {name!r}")
    name = name.strip()
    if name.lower().endswith(".png"):
        name = name[:-4]
    if not name or "/" in name or "\\" in name or name in {".", ".."} or name.startswith("."):
        raise QuarkError(f"figure name must be a plain file name (no folders, not hidden), got {name!r}")
    path = Path(run_dir) / "figures" / f"{name}.png"
    atomic_write_bytes(path, png_bytes(fig))
    return path


def png_bytes(fig: Figure, dpi: float = DPI) -> bytes:
    """``fig`` as PNG bytes, dpi 120 (``dpi``) with a tight bounding box: one rendering for files and for Jupyter."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    return buf.getvalue()


def reward_label(reward_name: str = "reward") -> str:
    """The axis label of a reward: ``"reward (tiny-tldr score)"`` by default, ``"reward (<name>)"`` otherwise.

    A name that already holds a unit in parentheses is used as it is.
    """
    if not isinstance(reward_name, str) or not reward_name.strip():
        raise QuarkError(f"reward_name must be a non-empty string, got {reward_name!r}")
    name = reward_name.strip()
    if name == "reward":
        return "reward (tiny-tldr score)"
    if re.search(r"\(.+\)", name):
        return name
    return f"reward ({name})"


def reward_unit(reward_name: str) -> str:
    """The part of :func:`reward_label` in parentheses (e.g. ``tiny-tldr score``)."""
    match = re.search(r"\(([^()]*)\)\s*$", reward_label(reward_name))
    return match.group(1) if match else reward_name


def new_figure(width: float, height: float) -> QuarkFigure:
    """A figure of ``width`` x ``height`` inches with the constrained layout, shown inline in Jupyter."""
    return QuarkFigure(figsize=(width, height), layout="constrained")


def no_data(ax, text: str) -> None:
    """An italic note in the middle of an empty panel (e.g. "no training yet")."""
    ax.text(0.5, 0.62, text, transform=ax.transAxes, ha="center", va="center", fontsize=11, color="0.4",
            style="italic", bbox={"facecolor": "white", "edgecolor": "none", "alpha": 0.8})


def pick_prompts(order: Sequence, limit: int = MAX_PROMPTS) -> list:
    """At most ``limit`` items of ``order``, evenly spaced so that both ends stay in."""
    order = list(order)
    if len(order) <= limit:
        return order
    idx = np.unique(np.round(np.linspace(0, len(order) - 1, limit)).astype(int))
    return [order[i] for i in idx]
