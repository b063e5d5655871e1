"""Figures of Quark runs: the curves over iterations, and the reward trade-offs between runs and tokens.

``metrics`` is :func:`quarklab.runs.read_metrics` of a run directory; only its greedy evaluation
rows are drawn (:func:`quarklab.analysis.eval_rows`). ``points`` is
:func:`quarklab.analysis.tradeoff_points` (several runs joined with ``pd.concat``); figures quoted
from elsewhere (a model card) go in a table of their own, never on the measured axes. Point labels
are placed by :func:`place_labels` so that none collide. Style, labels and saving: :mod:`.figures`.
"""

from __future__ import annotations

import re
import textwrap

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from ..analysis.metric_rows import eval_rows, token_mask, train_rows
from ..analysis.tradeoffs import QUOTED_CAPTION, check_points, pareto_front
from ..errors import QuarkError
from ..tokens import as_token, sorted_tokens, token_label
from .figures import (FRONT_COLOR, LENGTH_LABEL, NONE_COLOR, PERPLEXITY_LABEL, REFERENCE_COLOR, new_figure,
                      no_data, palette, reward_label, reward_unit)
from .iteration_grid import (iteration_grid, reference_line, token_colors, token_legend, token_style,
                             zero_line)

__all__ = ["iteration_curves", "tradeoff_scatter", "place_labels"]


# ---------------------------------------------------------------------------- training iterations

def _by_token(ax, ev: pd.DataFrame, column: str, tokens: list, colors: dict) -> None:
    """One line per token over iterations >= 1, the iteration-0 reference as a dotted line."""
    if column not in ev.columns or not pd.to_numeric(ev[column], errors="coerce").notna().any():
        no_data(ax, f"{column} not measured")
        return
    values = ev.assign(_v=pd.to_numeric(ev[column], errors="coerce"))
    ref = values[values["iteration"] == 0]
    if not ref.empty:
        unconditioned = ref["token"].isna()
        ref_value = float((ref[unconditioned] if unconditioned.any() else ref)["_v"].mean())
        if np.isfinite(ref_value):
            reference_line(ax, ref_value)
    policy = values[values["iteration"] >= 1]
    if policy.empty:
        no_data(ax, "no training yet")
    for token in tokens:
        part = policy[token_mask(policy["token"], token)].groupby("iteration")["_v"].mean()
        if part.empty:
            continue
        color, label, style = token_style(token, colors)
        ax.plot(part.index, part.to_numpy(), color=color, label=label, **style)
    token_legend(ax, len(tokens) > 4)


def iteration_curves(metrics: pd.DataFrame, *, reward_name: str = "reward") -> Figure:
    """A 2x3 grid over Quark iterations (from ``read_metrics(run_dir)``; the grid: :mod:`.iteration_grid`).

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
    tokens = sorted_tokens(ev["token"])
    colors = token_colors(tokens)
    iterations = sorted(set(ev["iteration"]) | set(train["iteration"] if not train.empty else []))

    fig, axes = iteration_grid(iterations, reward_name=reward_name)
    for gid in ("reward", "perplexity", "length"):
        _by_token(axes[gid], ev, gid, tokens, colors)

    ax_kl, ax_loss, ax_c = axes["kl"], axes["loss"], axes["control"]
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

    zero_line(ax_c)
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
                 f"{len(colors)} quantile token{'s' if len(colors) != 1 else ''} (greedy evaluation)")
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
        elif g == token_label(None):
            colors[g] = NONE_COLOR
        else:
            colors[g] = next(spare, base[0])
    return colors


# Where a label may go around its point: right, left, above, below, then the diagonals; nearer rings first.
DIRECTIONS = [(1, 0), (-1, 0), (0, 1), (0, -1), (1, 1), (-1, 1), (1, -1), (-1, -1)]
RINGS = (4, 9, 16, 26, 40)  # points between a marker's edge and its label
MARKER_PT = 5.5  # half the width of the box a marker (or its Pareto ring) keeps free, in points
MARKERS = "osD^vP<>"


def place_labels(ax, texts: list[str], xs, ys, *, draw: bool = True, **kwargs) -> list:
    """Label the points (xs, ys) of ``ax`` with ``texts`` so that no two labels overlap, none covers a
    marker and all stay inside the axes; return the annotations (gid ``"point_label"``).

    Greedy over the points most crowded first: each label takes the first free spot of 8 directions
    on rings of growing distance (with a thin leader line beyond the first ring). A label with
    no free spot may cover a marker, never another label; with none at all it is left out. Draws the
    figure once to settle its layout (``draw=False``: the caller has just drawn it): call it last; the
    labels take no part in the layout.
    """
    fig = ax.figure
    if draw:
        fig.draw_without_rendering()
    px = ax.transData.transform(np.column_stack([np.asarray(xs, float), np.asarray(ys, float)]))
    scale = fig.dpi / 72.0
    r = MARKER_PT * scale
    markers = [(x - r, y - r, x + r, y + r) for x, y in px]
    frame = ax.get_window_extent()
    inside = (frame.x0 + 2, frame.y0 + 2, frame.x1 - 2, frame.y1 - 2)
    crowd = [sum(np.hypot(*(p - q)) < 40 * scale for q in px) for p in px]
    placed, out = [], []
    for i in sorted(range(len(texts)), key=lambda i: (-crowd[i], i)):
        probe = ax.text(0, 0, texts[i], **kwargs)
        extent = probe.get_window_extent()
        probe.remove()
        w, h = extent.width + 2, extent.height + 2
        spot = (_free_spot(px[i], w, h, scale, inside, placed, markers)
                or _free_spot(px[i], w, h, scale, inside, placed, []))
        if spot is None:
            continue
        (dx, dy, ha, va, ring), box = spot
        leader = None if ring <= RINGS[0] else {"arrowstyle": "-", "color": "0.55", "linewidth": 0.6,
                                                "shrinkA": 1, "shrinkB": MARKER_PT}
        ann = ax.annotate(texts[i], (float(xs[i]), float(ys[i])), xytext=(dx, dy), textcoords="offset points",
                          ha=ha, va=va, arrowprops=leader, gid="point_label", **kwargs)
        ann.set_in_layout(False)
        placed.append(box)
        out.append(ann)
    return out


def _overlap(a, b) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def _free_spot(p, w, h, scale, inside, placed, markers):
    """((dx, dy, ha, va, ring), box in pixels) of the first free spot for a w x h label around pixel p."""
    for ring in RINGS:
        for ux, uy in DIRECTIONS:
            d = (MARKER_PT + ring) / (np.sqrt(2) if ux and uy else 1)
            dx, dy = ux * d, uy * d
            cx, cy = p[0] + dx * scale, p[1] + dy * scale
            x0 = cx if ux > 0 else cx - w if ux < 0 else cx - w / 2
            y0 = cy if uy > 0 else cy - h if uy < 0 else cy - h / 2
            box = (x0, y0, x0 + w, y0 + h)
            if not (box[0] >= inside[0] and box[1] >= inside[1] and box[2] <= inside[2] and box[3] <= inside[3]):
                continue
            if any(_overlap(box, b) for b in placed) or any(_overlap(box, m) for m in markers):
                continue
            ha = "left" if ux > 0 else "right" if ux < 0 else "center"
            va = "bottom" if uy > 0 else "top" if uy < 0 else "center"
            return (dx, dy, ha, va, ring), box
    return None


def _short_label(row) -> str:
    """What a point's label says: ``SFT`` for the reference, else its Quark iteration."""
    if row["group"] == "reference":
        token = as_token(row["token"])
        return "SFT" if token is None else f"SFT·t{token}"
    return str(int(row["iteration"]))


def _quoted_table(ax, quoted: pd.DataFrame) -> None:
    """The quoted rows as a table on an axes of its own, under :data:`QUOTED_CAPTION`."""
    def cell(v):
        return "–" if pd.isna(v) else f"{float(v):.2f}"

    rows = [[str(r["label"]), cell(r["reward"]), cell(r["perplexity"]), cell(r["length"])]
            for _, r in quoted.iterrows()]
    ax.set_axis_off()
    ax.set_gid("quoted_table")
    table = ax.table(cellText=rows, colLabels=["model (quoted)", "RM", "PPL", "Avg. len"], cellLoc="center",
                     colLoc="center", bbox=[0.2, 0, 0.6, 1], colWidths=[0.3, 0.1, 0.1, 0.1])
    table.auto_set_font_size(False)
    table.set_fontsize(9)
    for (row, col), c in table.get_celld().items():
        c.set_edgecolor("0.75")
        if row == 0:
            c.set_text_props(weight="bold")
        if col == 0:
            c.set_text_props(ha="left")
            c.PAD = 0.03
    ax.set_title(textwrap.fill(QUOTED_CAPTION, 130), fontsize="small", loc="center", color="0.25")


def tradeoff_scatter(points: pd.DataFrame, *, reward_name: str = "reward") -> Figure:
    """Reward vs perplexity and reward vs length of the MEASURED points, each panel on axes scaled to them,
    with the Pareto front; quoted points (``points["quoted"]``) only in a table below, never on those axes.

    ``reward_name`` names the reward the runs used (:func:`quarklab.analysis.run_reward_name`), on the
    y axes. Colour = group (``token k`` is palette colour k, as in :func:`iteration_curves`; the
    reference black, no token grey); marker = run (several runs concatenated); each point is labelled
    with its Quark iteration (``SFT`` for the reference), labels placed by :func:`place_labels` so
    that none collide. Per panel the Pareto front (:func:`quarklab.analysis.pareto_front`: maximise
    reward, minimise x) is ringed (gid ``"pareto_ring"``) and joined by a step line (gid
    ``"pareto_front"``). Axes gids: ``"perplexity"``, ``"length"``, and ``"quoted_table"`` when
    quoted rows are given (a table captioned :data:`quarklab.analysis.QUOTED_CAPTION`). Points that are
    means over seeds (:func:`quarklab.seeds.tradeoff_points_over_seeds`: columns ``reward_hw``,
    ``perplexity_hw``, ``length_hw``) get their 95 % t intervals as error bars (gid ``"seed_errorbar"``).
    """
    df = check_points(points)
    quoted = df["quoted"].astype(bool)
    measured = df[~quoted]
    if measured.empty:
        raise QuarkError("points hold no measured point (only quoted ones): nothing to draw on the measured axes")
    groups = list(dict.fromkeys(measured["group"].astype(str)))
    colors = _group_colors(groups)
    run_names = list(dict.fromkeys(measured["run"].astype(str)))
    markers = {run: MARKERS[j % len(MARKERS)] for j, run in enumerate(run_names)}
    ylabel = reward_label(reward_name)

    table_height = 0.25 * (quoted.sum() + 1)  # inches: a row per quoted figure and the header
    fig = new_figure(13, 5.6 + (table_height + 0.6 if quoted.any() else 0))
    grid = fig.add_gridspec(2 if quoted.any() else 1, 2, height_ratios=[5.2, table_height] if quoted.any() else None)
    axes = [fig.add_subplot(grid[0, 0]), fig.add_subplot(grid[0, 1])]
    drawn = []
    for ax, x, xlabel, letter in zip(axes, ("perplexity", "length"), (PERPLEXITY_LABEL, LENGTH_LABEL), "ab"):
        ax.set_gid(x)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.set_title(f"({letter}) reward vs {x}: up and to the left is better", fontsize="medium")
        xs = pd.to_numeric(measured[x], errors="coerce")
        ys = pd.to_numeric(measured["reward"], errors="coerce")
        ok = xs.notna() & ys.notna() & np.isfinite(xs) & np.isfinite(ys)
        if not ok.any():
            no_data(ax, f"no measured point has a {x}")
            continue
        for (group, run), part in measured[ok].groupby([measured["group"].astype(str), measured["run"].astype(str)],
                                                       sort=False):
            ax.scatter(xs[part.index], ys[part.index], s=46, marker=markers[run], color=colors[group],
                       edgecolors="white", linewidths=0.6, zorder=3)
            if f"{x}_hw" in part.columns and part["reward_hw"].notna().any():  # means over seeds: 95 % t intervals
                bars = ax.errorbar(xs[part.index], ys[part.index], xerr=part[f"{x}_hw"], yerr=part["reward_hw"],
                                   fmt="none", ecolor=colors[group], elinewidth=1, capsize=2.5, alpha=0.8, zorder=2)
                for lines in bars.lines[2]:
                    lines.set_gid("seed_errorbar")
        front = pareto_front(measured, x) & ok
        order = xs[front].sort_values(kind="stable").index
        ax.plot(xs[order], ys[order], drawstyle="steps-post", color=FRONT_COLOR, linewidth=1, alpha=0.6,
                zorder=2, gid="pareto_front")
        ax.scatter(xs[front], ys[front], s=150, facecolors="none", edgecolors=FRONT_COLOR, linewidths=1.1,
                   zorder=4, gid="pareto_ring")
        ax.margins(0.1)
        ax.grid(True, color="0.92", linewidth=0.8, zorder=0)
        ax.set_axisbelow(True)
        drawn.append((ax, measured[ok], xs[ok], ys[ok]))

    legend = [Line2D([], [], linestyle="none", marker="o", markersize=7, color=colors[g],
                     label={"reference": "SFT reference"}.get(g, g)) for g in groups]
    legend += [Line2D([], [], linestyle="none", marker="o", markersize=11, markerfacecolor="none",
                      markeredgecolor=FRONT_COLOR, label="Pareto front"),
               Line2D([], [], linestyle="none", marker="$3$", markersize=8, color="0.2",
                      label="label: Quark iteration")]
    if "reward_hw" in measured.columns and measured["reward_hw"].notna().any():
        legend.append(Line2D([], [], color="0.3", marker="|", label="bars: 95 % interval over seeds\n"
                                                                    "(mean ± t(0.975, n−1)·s/√n)"))
    if len(run_names) > 1:
        legend += [Line2D([], [], linestyle="none", marker=markers[run], markersize=7, color="0.4",
                          label=f"run: {run or 'this run'}") for run in run_names]
    fig.legend(handles=legend, loc="outside right upper", fontsize="small", frameon=False)
    if quoted.any():
        _quoted_table(fig.add_subplot(grid[1, :]), df[quoted])
    n = len(measured)
    fig.suptitle(f"Reward trade-offs of {n} measured point{'s' if n != 1 else ''} (greedy evaluation; "
                 f"reward: {reward_unit(reward_name)})")
    if drawn:
        fig.draw_without_rendering()  # once, last: the layout is settled (the labels take no part in it)
    for ax, part, xs, ys in drawn:
        place_labels(ax, [_short_label(row) for _, row in part.iterrows()], xs.to_numpy(), ys.to_numpy(),
                     draw=False, fontsize=8, color="0.15")
    return fig
