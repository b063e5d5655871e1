"""Figures of Quark runs: the curves over iterations, and the reward trade-offs between runs and tokens.

``metrics`` is :func:`quarklab.runs.read_metrics` of a run directory; only its greedy evaluation
rows are drawn (:func:`quarklab.analysis.eval_rows`). ``points`` is
:func:`quarklab.analysis.tradeoff_points` (several runs joined with ``pd.concat``). Style, labels and
saving: :mod:`.figures`.
"""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from ..analysis import check_points, eval_rows, pareto_front, token_order, train_rows
from .figures import (FRONT_COLOR, ITERATION_LABEL, KL_LABEL, LENGTH_LABEL, NONE_COLOR, PERPLEXITY_LABEL,
                      REFERENCE_COLOR, new_figure, no_data, palette, reward_label)

__all__ = ["iteration_curves", "tradeoff_scatter"]


# ---------------------------------------------------------------------------- training iterations

def _by_token(ax, ev: pd.DataFrame, column: str, ylabel: str, title: str, tokens: list[str], colors: dict,
              iterations: list[int]) -> None:
    """One line per token over iterations >= 1, the iteration-0 reference as a dotted line."""
    ax.set_title(title)
    ax.set_xlabel(ITERATION_LABEL)
    ax.set_ylabel(ylabel)
    _integer_iterations(ax, iterations)
    if column not in ev.columns or not pd.to_numeric(ev[column], errors="coerce").notna().any():
        no_data(ax, f"{column} not measured")
        return
    values = ev.assign(_v=pd.to_numeric(ev[column], errors="coerce"))
    ref = values[values["iteration"] == 0]
    if not ref.empty:
        ref_row = ref[ref["token"] == "none"] if (ref["token"] == "none").any() else ref
        ref_value = float(ref_row["_v"].mean())
        if np.isfinite(ref_value):
            ax.axhline(ref_value, color=REFERENCE_COLOR, linestyle=":", linewidth=1.5, label="reference (SFT)")
    policy = values[values["iteration"] >= 1]
    if policy.empty:
        no_data(ax, "no training yet")
    for token in tokens:
        part = policy[policy["token"] == token].groupby("iteration")["_v"].mean()
        if part.empty:
            continue
        if token == "none":
            ax.plot(part.index, part.to_numpy(), color=NONE_COLOR, linestyle="--", marker="x", label="no token")
        else:
            ax.plot(part.index, part.to_numpy(), color=colors[token], marker="o", markersize=4,
                    label=f"token {token}")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize="x-small", ncol=2 if len(tokens) > 4 else 1, loc="best")


def _integer_iterations(ax, iterations: list[int]) -> None:
    last = max(iterations) if iterations else 1
    ax.set_xlim(-0.25, max(last, 1) + 0.25)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))


def iteration_curves(metrics: pd.DataFrame, *, reward_name: str = "reward") -> Figure:
    """A 2x3 grid over Quark iterations (from ``read_metrics(run_dir)``).

    (a) greedy reward by conditioning token (the iteration-0 reference as a dotted line),
    (b) KL to the reference (mean of the train rows' ``kl`` per iteration), (c) perplexity by token,
    (d) length by token, (e) training loss terms (mean nll, kl, entropy, loss per iteration),
    (f) controllability (``order_spearman``, ``controllability``; -1 = token order respected,
    since token 0 asks for the best reward). Only greedy evaluation rows are used. Works for any
    number of tokens and before any training (panels then say "no training yet"). Axes carry gids
    ``"reward"``, ``"kl"``, ``"perplexity"``, ``"length"``, ``"loss"``, ``"control"``.
    """
    ev = eval_rows(metrics)
    train = train_rows(metrics)
    tokens = token_order(ev["token"])
    numeric = [t for t in tokens if t != "none"]
    colors = dict(zip(numeric, palette(len(numeric))))
    iterations = sorted(set(ev["iteration"]) | set(train["iteration"] if not train.empty else []))

    fig = new_figure(17, 9.5)
    axes = fig.subplots(2, 3)
    ax_r, ax_kl, ax_p = axes[0]
    ax_len, ax_loss, ax_c = axes[1]

    _by_token(ax_r, ev, "reward", "greedy " + reward_label(reward_name), "(a) greedy reward by token", tokens,
              colors, iterations)
    _by_token(ax_p, ev, "perplexity", PERPLEXITY_LABEL, "(c) perplexity by token", tokens, colors, iterations)
    _by_token(ax_len, ev, "length", LENGTH_LABEL, "(d) length by token", tokens, colors, iterations)
    ax_r.set_gid("reward")
    ax_p.set_gid("perplexity")
    ax_len.set_gid("length")

    for ax in (ax_kl, ax_loss):
        ax.set_xlabel(ITERATION_LABEL)
        _integer_iterations(ax, iterations)
    ax_kl.set_title("(b) KL to the reference during training")
    ax_kl.set_ylabel(KL_LABEL)
    ax_kl.set_gid("kl")
    ax_loss.set_title("(e) training loss terms (mean over steps)")
    ax_loss.set_ylabel("loss term (nats/token)")
    ax_loss.set_gid("loss")
    if train.empty:
        no_data(ax_kl, "no training yet")
        no_data(ax_loss, "no training yet")
    else:
        if "kl" in train.columns and train["kl"].notna().any():
            kl = train.groupby("iteration")["kl"].agg(["mean", "min", "max"])
            ax_kl.fill_between(kl.index, kl["min"], kl["max"], color=palette(1)[0], alpha=0.2,
                               label="min–max over steps")
            ax_kl.plot(kl.index, kl["mean"], marker="o", color=palette(1)[0], label="mean over steps")
            ax_kl.legend(fontsize="small")
        else:
            no_data(ax_kl, "kl not logged")
        term_colors = palette(4)
        styles = {"nll": "-", "kl": "-", "entropy": "-", "loss": "--"}
        for color, (term, style) in zip(term_colors, styles.items()):
            if term in train.columns and train[term].notna().any():
                mean = train.groupby("iteration")[term].mean()
                ax_loss.plot(mean.index, mean.to_numpy(), marker="o", markersize=4, color=color, linestyle=style,
                             label={"loss": "loss (total)", "kl": "kl", "nll": "nll", "entropy": "entropy"}[term])
        if ax_loss.lines:
            ax_loss.legend(fontsize="small")
        else:
            no_data(ax_loss, "no loss terms logged")

    ax_c.set_title("(f) controllability (−1 = token order respected)")
    ax_c.set_xlabel(ITERATION_LABEL)
    ax_c.set_ylabel("Spearman ρ (token index vs reward, −1..1)")
    ax_c.set_ylim(-1.05, 1.05)
    ax_c.axhline(0, color="0.5", linewidth=1)
    _integer_iterations(ax_c, iterations)
    ax_c.set_gid("control")
    control_colors = palette(6)[4:6]
    for color, (col, name, style) in zip(control_colors, [("order_spearman", "order of mean rewards", "-"),
                                                          ("controllability", "per sample", "--")]):
        if col in ev.columns:
            series = pd.to_numeric(ev[col], errors="coerce").groupby(ev["iteration"]).mean().dropna()
            if not series.empty:
                ax_c.plot(series.index, series.to_numpy(), marker="o", color=color, linestyle=style,
                          label=f"{col} ({name})")
    if ax_c.lines[1:]:
        ax_c.legend(fontsize="small", loc="upper right")
    else:
        no_data(ax_c, "no training yet" if (ev["iteration"] >= 1).sum() == 0 else "needs ≥ 2 tokens")

    done = max(iterations) if iterations else 0
    if done == 0:
        title = "Quark training: reference (SFT) only, no training yet (greedy evaluation)"
    else:
        title = (f"Quark training: {done} iteration{'s' if done != 1 else ''}, "
                 f"{len(numeric)} quantile token{'s' if len(numeric) != 1 else ''} (greedy evaluation)")
    fig.suptitle(title, fontsize="x-large")
    return fig


# ---------------------------------------------------------------------------- trade-offs

def _group_colors(groups: list[str]) -> dict:
    """``token k`` gets palette colour k (as in :func:`iteration_curves`), the reference black, no token grey,
    any other group the palette colours no token uses."""
    base = palette(10)
    taken = {int(m.group(1)) % 10 for g in groups if (m := re.fullmatch(r"token (\d+)", g))}
    spare = iter([c for j, c in enumerate(base) if j not in taken] or base)
    colors = {}
    for g in groups:
        m = re.fullmatch(r"token (\d+)", g)
        if m:
            colors[g] = base[int(m.group(1)) % 10]
        elif g == "reference":
            colors[g] = REFERENCE_COLOR
        elif g == "no token":
            colors[g] = NONE_COLOR
        else:
            colors[g] = next(spare, base[0])
    return colors


def _annotate(ax, text: str, x: float, y: float, all_x: pd.Series, *, dy, **kwargs) -> None:
    """Label a point to its right, or to its left when it lies in the right part of the data (stays inside).

    ``dy`` is the vertical offset in points, or a pair (right of the point, left of it).
    """
    lo, hi = float(all_x.min()), float(all_x.max())
    right_part = hi > lo and x > lo + 0.6 * (hi - lo)
    if isinstance(dy, tuple):
        dy = dy[1] if right_part else dy[0]
    ax.annotate(text, (x, y), xytext=(-7 if right_part else 7, dy), textcoords="offset points",
                ha="right" if right_part else "left", **kwargs)


def tradeoff_scatter(points: pd.DataFrame, *, reward_name: str = "reward") -> Figure:
    """Reward vs perplexity and reward vs length, with the measured Pareto front.

    Measured points are coloured by ``group``; quoted ones are hollow black-edged diamonds
    (gid ``"quoted"``) annotated ``"<label> (quoted)"``; a quoted figure without the panel's x (e.g.
    a model card that gives only the reward) is a dotted horizontal line at its reward. Per panel
    the Pareto front (:func:`quarklab.analysis.pareto_front`: maximise reward, minimise x, measured
    points only) is ringed (gid ``"pareto_ring"``) and joined by a step line sorted by x (gid
    ``"pareto_front"``). Axes have gids ``"perplexity"`` and ``"length"``. Groups share colours
    across concatenated runs (``token k`` is palette colour k, as in :func:`iteration_curves`);
    labels tell runs apart.
    """
    df = check_points(points)
    label = reward_label(reward_name)
    quoted = df["quoted"].astype(bool)
    groups = list(dict.fromkeys(df.loc[~quoted, "group"].astype(str)))
    colors = _group_colors(groups)

    fig = new_figure(14, 5.8)
    axes = fig.subplots(1, 2)
    for ax, x, xlabel in zip(axes, ("perplexity", "length"), (PERPLEXITY_LABEL, LENGTH_LABEL)):
        ax.set_gid(x)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(label)
        ax.set_title(f"Reward vs {x}: up and to the left is better")
        xs = pd.to_numeric(df[x], errors="coerce")
        ys = pd.to_numeric(df["reward"], errors="coerce")
        ok = xs.notna() & ys.notna()
        if not ok.any():
            no_data(ax, f"no point has a {x}")
            continue
        for group in groups:
            sel = ok & ~quoted & (df["group"].astype(str) == group)
            if sel.any():
                ax.scatter(xs[sel], ys[sel], s=42, color=colors[group], edgecolors="white", linewidths=0.6,
                           label=group, zorder=3)
        front = pareto_front(df, x) & ok
        if front.any():
            order = xs[front].sort_values(kind="stable").index
            (line,) = ax.plot(xs[order], ys[order], drawstyle="steps-post", color=FRONT_COLOR, linewidth=1,
                              alpha=0.7, zorder=2)
            line.set_gid("pareto_front")
            ring = ax.scatter(xs[front], ys[front], s=150, facecolors="none", edgecolors=FRONT_COLOR,
                              linewidths=1.2, zorder=4, label="Pareto front")
            ring.set_gid("pareto_ring")
            for i in order:  # the front rises to the right: below-right / above-left of a point is free
                _annotate(ax, str(df.at[i, "label"]), xs[i], ys[i], xs[ok], dy=(-11, 5), fontsize="x-small",
                          color="0.2")
        reward_only = quoted & xs.isna() & ys.notna()
        for n, i in enumerate(df.index[reward_only]):  # a model card that gives only the reward: a level line
            ax.axhline(ys[i], color="black", linestyle=(0, (1, 3)), linewidth=1.2, gid="quoted_reward_only",
                       label="quoted, reward only" if n == 0 else None)
            ax.annotate(f"{df.at[i, 'label']} (quoted, no {x})", (0.99, ys[i]), xycoords=("axes fraction", "data"),
                        xytext=(0, 3), textcoords="offset points", ha="right", fontsize="small")
        sel = ok & quoted
        if sel.any():
            q = ax.scatter(xs[sel], ys[sel], s=70, marker="D", facecolors="none", edgecolors="black", linewidths=1.5,
                           label="quoted from model card", zorder=5)
            q.set_gid("quoted")
            for i in df.index[sel]:
                _annotate(ax, f"{df.at[i, 'label']} (quoted)", xs[i], ys[i], xs[ok], dy=6, fontsize="small")
        ax.margins(0.12)
        if len(ax.get_legend_handles_labels()[0]) > 1:
            ax.legend(fontsize="small", loc="best")
    title = "Reward trade-offs (greedy evaluation; ringed: Pareto front of measured points)"
    if quoted.any():
        title += ("\nquoted figures come from another setup: comparable only where the reward model "
                  "(and its scale) is the same")
    fig.suptitle(title)
    return fig
