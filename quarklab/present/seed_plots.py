"""Figures of several runs of one setting under different seeds: mean lines with shaded 95 % intervals.

``curves`` is :func:`quarklab.seeds.seed_curves`; the interval is Student's t over seeds,
``mean ± t(0.975, n−1)·s/√n`` (no band where n = 1), as the figures say in their titles. The figure is
:func:`quarklab.present.run_plots.iteration_curves`' grid (:mod:`.iteration_grid`: the same panels, axes gids
and token styles), so a seed-averaged figure reads like the single-run one.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from ..errors import QuarkError
from ..seeds import INTERVAL_NOTE
from ..tokens import sorted_tokens
from ..analysis.metric_rows import token_mask
from .figures import REFERENCE_COLOR, no_data, palette
from .iteration_grid import iteration_grid, reference_line, token_colors, token_legend, token_style, zero_line

__all__ = ["seed_iteration_curves"]


def _band(ax, part: pd.DataFrame, color, label: str, **line) -> None:
    """The mean over iterations as a line with the 95 % interval as error bars (visible with one iteration too)
    and as a band (gid ``"seed_band"``)."""
    part = part.sort_values("iteration")
    x = part["iteration"].to_numpy(float)
    ax.errorbar(x, part["mean"].to_numpy(float), yerr=part["half_width"].to_numpy(float), color=color, label=label,
                capsize=2.5, elinewidth=0.8, **{"marker": "o", "markersize": 4, **line})
    if part["half_width"].notna().any():
        ax.fill_between(x, part["low"].to_numpy(float), part["high"].to_numpy(float), color=color, alpha=0.13,
                        linewidth=0, gid="seed_band")


def _by_token(ax, curves: pd.DataFrame, metric: str, colors: dict) -> None:
    rows = curves[curves["metric"] == metric]
    if rows.empty:
        no_data(ax, f"{metric} not measured")
        return
    ref = rows[(rows["iteration"] == 0) & rows["token"].isna()]
    if not ref.empty and np.isfinite(ref["mean"].iloc[0]):
        r = ref.iloc[0]
        reference_line(ax, r["mean"])
        if np.isfinite(r["half_width"]) and r["half_width"] > 0:
            ax.axhspan(r["low"], r["high"], color=REFERENCE_COLOR, alpha=0.08, linewidth=0, gid="seed_band")
    policy = rows[rows["iteration"] >= 1]
    if policy.empty:
        no_data(ax, "no training yet")
    for token in sorted_tokens(policy["token"]):
        color, label, style = token_style(token, colors)
        _band(ax, policy[token_mask(policy["token"], token)], color, label, **style)
    token_legend(ax, len(colors) > 4)


def seed_iteration_curves(curves: pd.DataFrame, *, reward_name: str = "reward", group: str | None = None) -> Figure:
    """A 2x3 grid over Quark iterations of one group of seed runs (``group``: the only one by default), as
    :func:`~quarklab.present.run_plots.iteration_curves` draws one run, each line the mean over seeds and
    its shaded band the 95 % t interval: (a) greedy reward by token (the SFT reference dotted), (b) KL to
    the reference (mean over steps), (c) perplexity and (d) length by token, (e) loss terms,
    (f) controllability. Axes gids ``"reward"``, ``"kl"``, ``"perplexity"``, ``"length"``, ``"loss"``,
    ``"control"``; bands gid ``"seed_band"``.
    """
    groups = list(dict.fromkeys(curves["group"]))
    if group is None and len(groups) != 1:
        raise QuarkError(f"these curves hold {len(groups)} groups of seed runs ({groups}): pick one with group=")
    group = groups[0] if group is None else group
    if group not in groups:
        raise QuarkError(f"no group {group!r} in these curves; they hold {groups}")
    c = curves[curves["group"] == group]
    colors = token_colors(c["token"])

    fig, axes = iteration_grid(sorted(set(c["iteration"])), reward_name=reward_name)
    for gid in ("reward", "perplexity", "length"):
        _by_token(axes[gid], c, gid, colors)

    term_colors = palette(6)
    panels = [(axes["kl"], [("kl", "mean over steps", "-")]),
              (axes["loss"], [("nll", "nll", "-"), ("kl", "kl", "-"), ("entropy", "entropy", "-"),
                              ("loss", "loss (total)", "--")]),
              (axes["control"], [("order_spearman", "order_spearman (order of mean rewards)", "-"),
                                 ("controllability", "controllability (per sample)", "--")])]
    for ax, terms in panels:
        for j, (metric, label, style) in enumerate(terms):
            part = c[c["metric"] == metric]  # a run-level metric: one row per iteration, no token
            if not part.empty:
                _band(ax, part, term_colors[j if ax is not axes["control"] else 4 + j], label, linestyle=style)
        if ax.lines:
            ax.legend(fontsize="small")
        else:
            no_data(ax, "no training yet")
    zero_line(axes["control"])

    n = int(c["n"].max())
    seeds = max(c["seeds"], key=lambda s: len(s.split(",")))
    fig.suptitle(f"Quark training, {len(colors)} quantile tokens: mean of {n} seed{'s' if n != 1 else ''} "
                 f"(seeds {seeds}; greedy evaluation), shaded: {INTERVAL_NOTE}", fontsize="x-large")
    return fig
