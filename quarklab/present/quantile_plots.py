"""Figures of a scored pool: its rewards, its quantiles (global vs local), the effect of K and of n.

``samples`` is a DataFrame from :func:`quarklab.sample` plus a ``reward`` column (``prompt_id``,
``reward`` and, for lengths, ``num_tokens``); the tables behind these figures come from
:mod:`quarklab.analysis`. Style, labels and saving: :mod:`.figures`.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from ..analysis.inputs import check_samples
from ..analysis.pools import SHOWN_SCOPES, best_of_n, check_assignment, counts_by_prompt, quantile_contrast
from ..checks import check_num_quantiles
from ..errors import QuarkError
from ..quantiles import assign_by_scope, check_scope, quantile_thresholds
from .figures import (COUNT_LABEL, LENGTH_LABEL, QUANTILE_LABEL, SAMPLES_LABEL, new_figure, palette, pick_prompts,
                      reward_label, reward_unit)

__all__ = ["reward_distribution", "quantile_comparison", "k_and_n_effect"]

MAX_HEIGHT = 9.0  # inches: about 900 px at 100 dpi, one laptop screen


def reward_distribution(samples: pd.DataFrame, *, reward_name: str = "reward") -> Figure:
    """Histogram of every reward, and each prompt's reward spread (box per prompt, sorted by median).

    The right panel shows why local (per-prompt) quantiles matter: prompts differ in their
    baseline reward, so global quantiles mostly sort prompts rather than completions. With more
    than 64 prompts, 64 evenly spaced in median order are shown (the lowest and highest included),
    and the axis label says so.
    Axes carry gids ``"histogram"`` and ``"per_prompt"``.
    """
    df = check_samples(samples)
    label = reward_label(reward_name)
    fig = new_figure(13, 4.8)
    ax_hist, ax_box = fig.subplots(1, 2, width_ratios=[1, 1.6])
    colors = palette(3)

    r = df["reward"].to_numpy()
    ax_hist.hist(r, bins=min(40, max(5, int(np.sqrt(len(r))) + 1)), color=colors[0], alpha=0.8,
                 edgecolor="white", label=f"all samples (n={len(r)})")
    ax_hist.axvline(float(np.mean(r)), color=colors[1], linestyle="--", linewidth=2,
                    label=f"mean = {np.mean(r):.2f}")
    ax_hist.axvline(float(np.median(r)), color=colors[2], linestyle=":", linewidth=2,
                    label=f"median = {np.median(r):.2f}")
    ax_hist.set_xlabel(label)
    ax_hist.set_ylabel(SAMPLES_LABEL)
    ax_hist.set_title("All rewards")
    ax_hist.legend(fontsize="small")
    ax_hist.set_gid("histogram")

    grouped = df.groupby("prompt_id", sort=False)["reward"]
    medians = grouped.median().sort_values(kind="stable")
    shown = pick_prompts(medians.index)
    data = [df.loc[df["prompt_id"] == p, "reward"].to_numpy() for p in shown]
    pos = np.arange(len(shown))
    boxes = ax_box.boxplot(data, positions=pos, widths=0.6, patch_artist=True, showfliers=False,
                           medianprops={"color": "black"})
    for patch in boxes["boxes"]:
        patch.set_facecolor(colors[0])
        patch.set_alpha(0.45)
    rng = np.random.default_rng(0)
    for x, values in zip(pos, data):
        ax_box.scatter(x + rng.uniform(-0.18, 0.18, len(values)), values, s=9, color=colors[0], alpha=0.8,
                       linewidths=0, zorder=3)
    ax_box.axhline(float(np.median(r)), color=colors[2], linestyle=":", linewidth=2)
    ax_box.set_xticks(pos, [str(p) for p in shown], rotation=90 if len(shown) > 12 else 0,
                      fontsize=7 if len(shown) > 40 else "small" if len(shown) > 12 else None)
    ax_box.set_xlim(-0.7, len(shown) - 0.3)
    n_prompts = len(medians)
    subset = "" if len(shown) == n_prompts else f", {len(shown)} of {n_prompts} shown"
    ax_box.set_xlabel(f"prompt (prompt_id, sorted by median reward{subset})")
    ax_box.set_ylabel(label)
    ax_box.set_title("Reward per prompt: baselines differ, so quantiles should be per prompt")
    ax_box.legend(handles=[Patch(facecolor=colors[0], alpha=0.45, edgecolor="black", label="one prompt's samples"),
                           Line2D([], [], color=colors[2], linestyle=":", linewidth=2, label="median over all")],
                  fontsize="small", loc="best")
    ax_box.set_gid("per_prompt")
    per = grouped.size()
    n_per = f"{per.min()}" if per.min() == per.max() else f"{per.min()}-{per.max()}"
    fig.suptitle(f"Reward distribution: {len(r)} samples, {n_prompts} prompts × {n_per} samples each")
    return fig


def _quantile_boxes(ax, values: np.ndarray, q: np.ndarray, k: int, colors: list, ylabel: str) -> None:
    present = [j for j in range(k) if (q == j).any()]
    data = [values[q == j] for j in present]
    boxes = ax.boxplot(data, positions=present, widths=0.6, patch_artist=True, showmeans=True,
                       medianprops={"color": "black"},
                       meanprops={"marker": "^", "markerfacecolor": "white", "markeredgecolor": "black"},
                       flierprops={"marker": ".", "markersize": 3})
    for patch, j in zip(boxes["boxes"], present):
        patch.set_facecolor(colors[j])
        patch.set_alpha(0.8)
    ax.set_xticks(range(k), [str(j) for j in range(k)])
    ax.set_xlim(-0.6, k - 0.4)
    ax.set_xlabel(QUANTILE_LABEL)
    ax.set_ylabel(ylabel)


SCOPE_TITLES = {"global": "global: quantiles over the whole pool (Quark)",
                "local": "local: quantiles within each prompt (ALT)"}


def _local_split(per_prompt: pd.Series, k: int) -> str:
    """How local quantiles split each prompt's samples, as :func:`quarklab.assign_quantiles` does it."""
    sizes = sorted(set(int(n) for n in per_prompt))
    if len(sizes) > 1:
        return f"each prompt: n // {k} per quantile, the remainder in quantile {k - 1}"
    n = sizes[0]
    if n < k:
        return f"each prompt: 1 in each of quantiles 0..{n - 1}, none beyond"
    base, rest = divmod(n, k)
    if rest == 0 or k == 1:
        return f"each prompt split evenly: {n // k} per quantile"
    return f"each prompt: {base} per quantile, quantile {k - 1} takes the remainder: {base + rest}"


def _scope_panels(ax_r, ax_l, ax_h, fig, scope: str, q: np.ndarray, r: np.ndarray, lengths: np.ndarray,
                  counts: pd.DataFrame, n_prompts: int, per_prompt: pd.Series, k: int, label: str, vmax: int,
                  panel_width: float, letters: str = "abc") -> None:
    """Reward and length per quantile, and the prompt × quantile heatmap, for one scope (panels ``letters``)."""
    colors = palette(k)
    _quantile_boxes(ax_r, r, q, k, colors, label)
    ax_r.set_title(f"({letters[0]}) {SCOPE_TITLES[scope]}\nreward per quantile"
                   + (" (thresholds differ per prompt)" if scope == "local" else ""))
    handles = [Line2D([], [], marker="^", linestyle="none", markerfacecolor="white", markeredgecolor="black",
                      label="mean")]
    if scope == "global":
        thresholds = quantile_thresholds(r, q, k)
        for j in range(k - 1):
            if np.isfinite(thresholds[j]):
                line = ax_r.axhline(thresholds[j], color=colors[j], linestyle="--", linewidth=1.3, zorder=0)
                line.set_gid("threshold")
        if k > 1:
            handles.append(Line2D([], [], color="0.3", linestyle="--", label="threshold (min reward of quantile)"))
    ax_r.legend(handles=handles, fontsize="small", loc="upper right")
    ax_r.set_gid(f"{scope}/reward")

    _quantile_boxes(ax_l, lengths, q, k, colors, LENGTH_LABEL)
    ax_l.set_title(f"({letters[1]}) length per quantile")
    ax_l.legend(handles=handles[:1], fontsize="small", loc="upper right")
    ax_l.set_gid(f"{scope}/length")

    c = counts.to_numpy().T  # rows = quantiles, columns = prompts
    shown = list(counts.index)
    image = ax_h.imshow(c, aspect="auto", cmap="cividis", vmin=0, vmax=max(vmax, 1), interpolation="nearest")
    if panel_width / max(len(shown), 1) >= 0.14:  # a count fits its cell (inches): write it
        for j in range(c.shape[0]):
            for i in range(c.shape[1]):
                ax_h.text(i, j, str(int(c[j, i])), ha="center", va="center", fontsize=7 if len(shown) > 15 else 9,
                          color="black" if c[j, i] > 0.55 * vmax else "white")
    ax_h.set_yticks(range(k), [str(j) for j in range(k)])
    ax_h.set_xticks(range(len(shown)), [str(p) for p in shown], rotation=90 if len(shown) > 12 else 0,
                    fontsize=7 if len(shown) > 24 else None)
    ax_h.set_ylabel(QUANTILE_LABEL)
    ax_h.set_xlabel("prompt (prompt_id, by mean reward, best on the left)")
    subset = "" if len(shown) == n_prompts else f"; {len(shown)} of {n_prompts} prompts shown"
    ax_h.set_title(f"({letters[2]}) samples per prompt and quantile\n("
                   + (_local_split(per_prompt, k) if scope == "local" else
                      "high-baseline prompts fill the best quantiles") + subset + ")")
    ax_h.set_gid(f"{scope}/heatmap")
    fig.colorbar(image, ax=ax_h, label=COUNT_LABEL, shrink=0.9, pad=0.01)


def quantile_comparison(samples: pd.DataFrame, num_quantiles: int, *, scope: str | None = None,
                        reward_name: str = "reward", quantiles=None) -> Figure:
    """How the same samples fall into K quantiles, global (Quark) and/or local (ALT).

    ``scope=None`` draws both side by side (columns: global, local); ``"global"`` or ``"local"``
    draws that one only (the explorer follows its scope toggle so). For each scope: (a) reward per
    quantile (box plots, quantile 0 = best; for global the thresholds, i.e. the minimum reward of
    quantiles 0..K-2, as dashed lines: K-1 lines, gid ``"threshold"``); (b) length
    (``num_tokens``) per quantile; (c) a heatmap of how many of each prompt's samples fall in each
    quantile (:func:`quarklab.analysis.prompt_quantile_counts`): rows = quantiles, columns =
    prompts by mean reward (best on the left; all of them up to 64, else 64 evenly spaced and the
    title says "64 of N prompts shown"). Local splits each prompt the same way by construction
    (the title says how: n // K per quantile, the remainder in quantile K-1); global does not:
    prompts with a high baseline fill the best quantiles. At most 9 inches tall.

    Axes carry gids ``"<scope>/reward"``, ``"<scope>/length"``, ``"<scope>/heatmap"``; a heatmap's
    counts are ``ax.images[0].get_array()`` (rows = quantiles, columns = the prompts in its x tick
    labels).

    Quantiles are assigned once per scope drawn; ``quantiles`` (with one ``scope``) is an assignment
    already made for these samples, K and scope (the explorer's), drawn as it is.
    """
    k = check_num_quantiles(num_quantiles)
    scopes = list(SHOWN_SCOPES) if scope is None else [check_scope(scope)]
    df = check_samples(samples, need_length=True)
    r = df["reward"].to_numpy()
    lengths = df["num_tokens"].to_numpy(dtype=float)
    pid = df["prompt_id"].to_numpy()
    if quantiles is None:
        assigned = {s: assign_by_scope(r, pid, k, s) for s in scopes}
    elif scope is None:
        raise QuarkError("quantiles are one scope's assignment: pass that scope too (scope='global' or 'local')")
    else:
        assigned = {scope: check_assignment(quantiles, len(df), k)}
    label = reward_label(reward_name)
    per_prompt = df.groupby("prompt_id").size()

    tables = {s: counts_by_prompt(df, assigned[s], k) for s in scopes}
    n_prompts = len(per_prompt)
    shown = pick_prompts(tables[scopes[0]].index)
    counts = {s: table.loc[shown] for s, table in tables.items()}
    vmax = max(int(c.to_numpy().max()) for c in counts.values())

    heat = max(0.8, 0.25 + 0.12 * k)  # the heatmap's height relative to a box-plot row
    if scope is None:
        fig = new_figure(13, min(MAX_HEIGHT, 7.0 + 0.15 * k))
        axes = fig.subplots(3, 2, height_ratios=[1, 0.85, heat])
        panels = {s: axes[:, col] for col, s in enumerate(scopes)}
        panel_width = 13 / 2 - 1.4
    else:
        fig = new_figure(12, min(MAX_HEIGHT, 6.2 + 0.15 * k))
        mosaic = fig.subplot_mosaic([["reward", "length"], ["heatmap", "heatmap"]], height_ratios=[1, heat])
        panels = {scope: (mosaic["reward"], mosaic["length"], mosaic["heatmap"])}
        panel_width = 12 - 1.6
    for s, letters in zip(scopes, ["abc", "def"]):  # side by side: (a)-(c) global, (d)-(f) local
        _scope_panels(*panels[s], fig, s, assigned[s], r, lengths, counts[s], n_prompts, per_prompt, k, label,
                      vmax, panel_width, letters)
    n_per = f"{per_prompt.min()}" if per_prompt.min() == per_prompt.max() else f"{per_prompt.min()}-{per_prompt.max()}"
    what = "Global vs local quantiles" if scope is None else f"{scope.capitalize()} quantiles"
    fig.suptitle(f"{what}, K = {k} ({len(r)} samples, {n_prompts} prompts, {n_per} per prompt)",
                 fontsize="x-large")
    return fig


def k_and_n_effect(samples: pd.DataFrame, *, ks: Sequence[int] = (2, 3, 5, 7), ns: Sequence[int] | None = None,
                   seed: int = 0, reward_name: str = "reward") -> Figure:
    """How the number of quantiles K and of samples per prompt n shape what quantile 0 means.

    Left (gid ``"contrast"``): for each K in ``ks``, the contrast = mean reward of quantile 0 minus
    that of quantile K-1, for global and local assignment (lines with gids ``"contrast/global"``,
    ``"contrast/local"``; :func:`quarklab.analysis.quantile_contrast`). Right (gid
    ``"best_of_n"``): the mean reward of quantile 0 and of quantile K-1 vs n samples per prompt,
    K = min(5, n), local (gids ``"n/top"``, ``"n/bottom"``; :func:`quarklab.analysis.best_of_n`,
    ``ns`` and ``seed`` as there): the best-of-n effect.
    """
    df = check_samples(samples)
    contrast = quantile_contrast(df, ks)
    best = best_of_n(df, ns, seed=seed)
    r = df["reward"].to_numpy()
    n_prompts = df["prompt_id"].nunique()
    colors = palette(4)
    unit = reward_unit(reward_name)
    label = reward_label(reward_name)

    fig = new_figure(13, 4.8)
    ax_k, ax_n = fig.subplots(1, 2)
    for i, scope in enumerate(SHOWN_SCOPES):
        part = contrast[contrast["scope"] == scope]
        (line,) = ax_k.plot(part["K"].tolist(), part["contrast"].tolist(), marker="o", color=colors[i],
                            linestyle="-" if i == 0 else "--",
                            label=f"{scope} ({'over the pool' if scope == 'global' else 'per prompt'})")
        line.set_gid(f"contrast/{scope}")
    ks = sorted(contrast["K"].unique().tolist())
    ax_k.set_xticks(ks)
    ax_k.set_xlabel("K (number of quantiles)")
    ax_k.set_ylabel(f"mean reward, quantile 0 − quantile K−1 ({unit})")
    ax_k.set_title("Contrast between best and worst quantile")
    ax_k.set_gid("contrast")
    ax_k.legend(fontsize="small")
    plotted = contrast["contrast"].to_numpy(dtype=float)
    if np.isfinite(plotted).any() and np.nanmin(plotted) >= 0:
        ax_k.set_ylim(bottom=0)

    ns = best["n"].tolist()
    (line,) = ax_n.plot(ns, best["top"].tolist(), marker="o", color=colors[0], label="quantile 0 (best)")
    line.set_gid("n/top")
    (line,) = ax_n.plot(ns, best["bottom"].tolist(), marker="s", color=colors[3], linestyle="--",
                        label="quantile K−1 (worst)")
    line.set_gid("n/bottom")
    ax_n.axhline(float(r.mean()), color="0.4", linestyle=":", label="mean of all samples")
    ax_n.set_xscale("log", base=2)
    ax_n.set_xticks(ns, [str(n) for n in ns])
    ax_n.minorticks_off()
    ax_n.set_xlabel("samples per prompt n (count; K = min(5, n), local)")
    ax_n.set_ylabel(f"mean {label}")
    ax_n.set_title("Best-of-n: more samples per prompt, better quantile 0")
    ax_n.set_gid("best_of_n")
    ax_n.legend(fontsize="small")
    fig.suptitle(f"Effect of K and of samples per prompt ({n_prompts} prompts, seed {seed})")
    return fig
