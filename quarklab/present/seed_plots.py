"""Figures of several runs of one setting under different seeds: mean lines with shaded 95 % intervals.

``curves`` is :func:`quarklab.seeds.seed_curves`; the interval is Student's t over seeds,
``mean ± t(0.975, n−1)·s/√n`` (no band where n = 1), as the figures say in their titles. The layout
follows :func:`quarklab.present.run_plots.iteration_curves` panel for panel (same axes gids), so a
seed-averaged figure reads like the single-run one.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from ..analysis import token_order
from ..errors import QuarkError
from ..seeds import INTERVAL_NOTE
from .figures import (ITERATION_LABEL, KL_LABEL, LENGTH_LABEL, NONE_COLOR, PERPLEXITY_LABEL, REFERENCE_COLOR,
                      new_figure, no_data, palette, reward_label)
from .run_plots import _integer_iterations

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


def _by_token(ax, curves: pd.DataFrame, metric: str, ylabel: str, title: str, colors: dict) -> None:
    ax.set_title(title)
    ax.set_xlabel(ITERATION_LABEL)
    ax.set_ylabel(ylabel)
    rows = curves[curves["metric"] == metric]
    if rows.empty:
        no_data(ax, f"{metric} not measured")
        return
    ref = rows[(rows["iteration"] == 0) & (rows["token"] == "none")]
    if not ref.empty and np.isfinite(ref["mean"].iloc[0]):
        r = ref.iloc[0]
        ax.axhline(r["mean"], color=REFERENCE_COLOR, linestyle=":", linewidth=1.5, label="reference (SFT)")
        if np.isfinite(r["half_width"]) and r["half_width"] > 0:
            ax.axhspan(r["low"], r["high"], color=REFERENCE_COLOR, alpha=0.08, linewidth=0, gid="seed_band")
    policy = rows[rows["iteration"] >= 1]
    if policy.empty:
        no_data(ax, "no training yet")
    for token in token_order(policy["token"]):
        part = policy[policy["token"] == token]
        if token == "none":
            _band(ax, part, NONE_COLOR, "no token", linestyle="--", marker="x")
        else:
            _band(ax, part, colors[token], f"token {token}")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize="x-small", ncol=2 if len(colors) > 4 else 1, loc="best")


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
    numeric = [t for t in token_order(c["token"]) if t.lstrip("-").isdigit()]
    colors = dict(zip(numeric, palette(len(numeric))))
    iterations = sorted(set(c["iteration"]))

    fig = new_figure(17, 9.5)
    axes = fig.subplots(2, 3)
    (ax_r, ax_kl, ax_p), (ax_len, ax_loss, ax_c) = axes
    _by_token(ax_r, c, "reward", "greedy " + reward_label(reward_name), "(a) greedy reward by token", colors)
    _by_token(ax_p, c, "perplexity", PERPLEXITY_LABEL, "(c) perplexity by token", colors)
    _by_token(ax_len, c, "length", LENGTH_LABEL, "(d) length by token", colors)
    for ax, gid in zip(axes.flat, ("reward", "kl", "perplexity", "length", "loss", "control")):
        ax.set_gid(gid)
        ax.set_xlabel(ITERATION_LABEL)
        _integer_iterations(ax, iterations)

    term_colors = palette(6)
    panels = [(ax_kl, "(b) KL to the reference during training", KL_LABEL, [("kl", "mean over steps", "-")]),
              (ax_loss, "(e) training loss terms (mean over steps)", "loss term (nats/token)",
               [("nll", "nll", "-"), ("kl", "kl", "-"), ("entropy", "entropy", "-"), ("loss", "loss (total)", "--")]),
              (ax_c, "(f) controllability (−1 = token order respected)", "Spearman ρ (token index vs reward, −1..1)",
               [("order_spearman", "order_spearman (order of mean rewards)", "-"),
                ("controllability", "controllability (per sample)", "--")])]
    for ax, title, ylabel, terms in panels:
        ax.set_title(title)
        ax.set_ylabel(ylabel)
        for j, (metric, label, style) in enumerate(terms):
            part = c[(c["metric"] == metric) & (c["token"] == "all")]
            if not part.empty:
                _band(ax, part, term_colors[j if ax is not ax_c else 4 + j], label, linestyle=style)
        if ax.lines:
            ax.legend(fontsize="small")
        else:
            no_data(ax, "no training yet")
    ax_c.set_ylim(-1.05, 1.05)
    ax_c.axhline(0, color="0.5", linewidth=1)

    n = int(c["n"].max())
    seeds = max(c["seeds"], key=lambda s: len(s.split(",")))
    fig.suptitle(f"Quark training, {len(numeric)} quantile tokens: mean of {n} seed{'s' if n != 1 else ''} "
                 f"(seeds {seeds}; greedy evaluation), shaded: {INTERVAL_NOTE}", fontsize="x-large")
    return fig
