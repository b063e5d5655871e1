"""The 2x3 grid over Quark iterations, one figure for one run (:func:`.run_plots.iteration_curves`) and for a group
of seed runs (:func:`.seed_plots.seed_iteration_curves`) alike: the panels, their titles, units and gids, the integer
iteration axis, and how a token's line and the SFT reference look. Each caller fills the panels with its own data.

Panels (axes gids): (a) ``"reward"``, greedy reward by token; (b) ``"kl"``, KL to the reference during training;
(c) ``"perplexity"`` and (d) ``"length"`` by token; (e) ``"loss"``, the training loss terms; (f) ``"control"``,
controllability (Spearman ρ of token index vs reward, −1 = token order respected).
"""

from __future__ import annotations

from typing import Iterable

from matplotlib.axes import Axes
from matplotlib.ticker import MaxNLocator

from ..tokens import sorted_tokens, token_label
from .figures import (ITERATION_LABEL, KL_LABEL, LENGTH_LABEL, NONE_COLOR, PERPLEXITY_LABEL, REFERENCE_COLOR,
                      QuarkFigure, new_figure, palette, reward_label)

__all__ = ["iteration_grid", "integer_iterations", "token_colors", "token_style", "reference_line", "token_legend",
           "zero_line"]

CONTROL_LIMITS = (-1.05, 1.05)


def panels(reward_name: str = "reward") -> list[tuple[str, str, str]]:
    """``(gid, title, y label)`` of the six panels, row by row."""
    return [("reward", "(a) greedy reward by token", "greedy " + reward_label(reward_name)),
            ("kl", "(b) KL to the reference during training", KL_LABEL),
            ("perplexity", "(c) perplexity by token", PERPLEXITY_LABEL),
            ("length", "(d) length by token", LENGTH_LABEL),
            ("loss", "(e) training loss terms (mean over steps)", "loss term (nats/token)"),
            ("control", "(f) controllability (−1 = token order respected)",
             "Spearman ρ (token index vs reward, −1..1)")]


def iteration_grid(iterations: Iterable[int], *, reward_name: str = "reward") -> tuple[QuarkFigure, dict[str, Axes]]:
    """A 17 x 9.5 inch figure of six empty panels over ``iterations`` (x from -0.25 to the last iteration, integer
    ticks), each with its gid, title and axis labels, the controllability panel's y axis fixed to −1.05..1.05;
    returned with the panels by gid (``"reward"``, ``"kl"``, ``"perplexity"``, ``"length"``, ``"loss"``,
    ``"control"``)."""
    iterations = list(iterations)
    fig = new_figure(17, 9.5)
    axes = {}
    for ax, (gid, title, ylabel) in zip(fig.subplots(2, 3).flat, panels(reward_name)):
        ax.set_gid(gid)
        ax.set_title(title)
        ax.set_xlabel(ITERATION_LABEL)
        ax.set_ylabel(ylabel)
        integer_iterations(ax, iterations)
        axes[gid] = ax
    axes["control"].set_ylim(*CONTROL_LIMITS)
    return fig, axes


def integer_iterations(ax: Axes, iterations: list[int]) -> None:
    """The x axis of ``ax`` over ``iterations``: from -0.25 to the last (at least 1) + 0.25, integer ticks only."""
    last = max(iterations) if iterations else 1
    ax.set_xlim(-0.25, max(last, 1) + 0.25)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))


def token_colors(tokens) -> dict[int, tuple]:
    """Quantile token k → its palette colour (k-th of as many as there are tokens), over the tokens in ``tokens``."""
    numeric = [t for t in sorted_tokens(tokens) if t is not None]
    return dict(zip(numeric, palette(len(numeric))))


def token_style(token, colors: dict) -> tuple[tuple | str, str, dict]:
    """``(colour, label, line keywords)`` of ``token``'s line: ``token k`` in its colour with round markers, no token
    grey and dashed with crosses."""
    if token is None:
        return NONE_COLOR, token_label(None), {"linestyle": "--", "marker": "x"}
    return colors[token], token_label(token), {"marker": "o", "markersize": 4}


def reference_line(ax: Axes, value: float) -> None:
    """The SFT reference (iteration 0) as a dotted black line across the panel."""
    ax.axhline(value, color=REFERENCE_COLOR, linestyle=":", linewidth=1.5, label="reference (SFT)")


def token_legend(ax: Axes, two_columns: bool) -> None:
    """The legend of a by-token panel, when anything in it is labelled."""
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize="x-small", ncol=2 if two_columns else 1, loc="best")


def zero_line(ax: Axes) -> None:
    """The controllability panel's ρ = 0 (no relation between token and reward)."""
    ax.axhline(0, color="0.5", linewidth=1)
