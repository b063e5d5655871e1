"""Figures for the research notebooks: reward quantiles, training iterations, reward trade-offs.

Every plotting function returns a :class:`matplotlib.figure.Figure` built with the object API
(nothing is registered with pyplot, so nothing accumulates and no backend is needed): in Jupyter
``display(fig)`` (or ending a cell with ``fig``) shows it, and :func:`save_figure` writes it into a
run directory. Colours come from seaborn's colour-blind-safe ``"colorblind"`` palette
(:func:`palette`); quantile/token ``k`` gets colour ``k`` everywhere, so quantile 0 (the BEST
rewards) always has the same colour.

Inputs:

* ``samples``: a DataFrame from :func:`quarklab.sample` plus a ``reward`` column (needs
  ``prompt_id``, ``reward`` and, for lengths, ``num_tokens``).
* ``metrics``: :func:`quarklab.runs.read_metrics` of a run directory (``metrics.jsonl``). Only
  greedy evaluation rows (``kind == "eval"``, ``mode == "greedy"``) are plotted; sampled ones are
  ignored. The ``token`` column mixes ``"none"`` and ints (it comes from JSON) and is normalised
  to strings (``"0"``, ``"1"``, ..., ``"none"``).

Axis units: rewards are labelled ``"reward (tiny-tldr score)"`` by default; pass ``reward_name``
(e.g. ``"OpenAssistant RM logit"``) to label another reward ``"reward (OpenAssistant RM logit)"``,
or a full label with its own parentheses to use it verbatim.
"""

from __future__ import annotations

import io
import math
import numbers
import os
import re
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import MaxNLocator

from ..errors import QuarkError
from ..metrics import pareto_mask
from ..quantiles import assign_quantiles, quantile_thresholds
from ..runs import atomic_write_bytes

__all__ = [
    "palette", "save_figure", "reward_label", "reward_distribution", "quantile_comparison", "k_and_n_effect",
    "iteration_curves", "tradeoff_points", "pareto_front", "tradeoff_scatter", "model_card_table",
]

LENGTH_LABEL = "length (tokens)"
PERPLEXITY_LABEL = "perplexity (exp mean NLL, reference model)"
COUNT_LABEL = "samples"
SAMPLES_LABEL = "samples (count)"
ITERATION_LABEL = "Quark iteration (0 = SFT reference)"
KL_LABEL = "KL(policy||ref) (nats/token)"
QUANTILE_LABEL = "quantile (0 = best reward)"
MAX_PROMPTS = 30  # prompts shown in per-prompt panels

_REFERENCE_COLOR = "black"
_NONE_COLOR = "0.35"
_FRONT_COLOR = "black"


# ---------------------------------------------------------------------------- basics

def palette(n: int) -> list:
    """``n`` colours (RGB tuples) from seaborn's colour-blind-safe ``"colorblind"`` palette.

    The palette has 10 distinct colours; beyond that it repeats.
    """
    if isinstance(n, bool) or not isinstance(n, numbers.Integral) or n < 0:
        raise QuarkError(f"palette needs a number of colours >= 0, got {n!r}")
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
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120, bbox_inches="tight")
    path = Path(run_dir) / "figures" / f"{name}.png"
    atomic_write_bytes(path, buf.getvalue())
    return path


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


def _reward_unit(reward_name: str) -> str:
    """The part of :func:`reward_label` in parentheses (e.g. ``tiny-tldr score``)."""
    match = re.search(r"\(([^()]*)\)\s*$", reward_label(reward_name))
    return match.group(1) if match else reward_name


def _figure(width: float, height: float) -> Figure:
    return Figure(figsize=(width, height), layout="constrained")


def _no_data(ax, text: str) -> None:
    ax.text(0.5, 0.62, text, transform=ax.transAxes, ha="center", va="center", fontsize=11, color="0.4",
            style="italic", bbox={"facecolor": "white", "edgecolor": "none", "alpha": 0.8})


# ---------------------------------------------------------------------------- input checks

def _check_frame(df, columns: Iterable[str], what: str) -> pd.DataFrame:
    if not isinstance(df, pd.DataFrame):
        raise QuarkError(f"{what} must be a pandas DataFrame, got {type(df).__name__}")
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise QuarkError(f"{what} lacks the column(s) {missing}; it has {list(df.columns)}")
    if df.empty:
        raise QuarkError(f"{what} is empty: nothing to plot")
    return df


def _check_samples(samples, *, need_length: bool = False) -> pd.DataFrame:
    cols = ["prompt_id", "reward"] + (["num_tokens"] if need_length else [])
    df = _check_frame(samples, cols, "samples")
    r = pd.to_numeric(df["reward"], errors="coerce").to_numpy(dtype=float)
    if not np.isfinite(r).all():
        raise QuarkError(f"samples['reward'] holds {int((~np.isfinite(r)).sum())} missing or non-finite values; "
                         "score every sample before plotting")
    if df["prompt_id"].isna().any():
        raise QuarkError("samples['prompt_id'] holds missing ids")
    out = df.assign(reward=r).reset_index(drop=True)
    if need_length:
        lengths = pd.to_numeric(out["num_tokens"], errors="coerce")
        if lengths.isna().any():
            raise QuarkError("samples['num_tokens'] holds missing values")
        out["num_tokens"] = lengths
    return out


def _check_int_list(values, what: str, minimum: int) -> list[int]:
    try:
        items = list(values)
    except TypeError:
        raise QuarkError(f"{what} must be a sequence of ints, got {values!r}") from None
    if not items:
        raise QuarkError(f"{what} must hold at least one value")
    for v in items:
        if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < minimum:
            raise QuarkError(f"{what} must hold ints >= {minimum}, got {v!r}")
    return sorted(set(int(v) for v in items))


def _token_str(value) -> str:
    """A metrics ``token`` (``"none"``, an int, a float from JSON, None/NaN) as ``"none"`` or ``"<k>"``."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "none"
    if isinstance(value, str):
        s = value.strip().lower()
        if s in {"none", "", "nan"}:
            return "none"
        try:
            f = float(s)
        except ValueError:
            return s
        return str(int(f)) if f.is_integer() else s
    if isinstance(value, numbers.Real) and float(value).is_integer():
        return str(int(value))
    return str(value)


def _token_order(tokens: Iterable[str]) -> list[str]:
    """Numeric tokens ascending, then anything else, ``"none"`` last."""
    uniq = set(tokens)
    numeric = sorted((t for t in uniq if t.lstrip("-").isdigit()), key=int)
    other = sorted(t for t in uniq if not t.lstrip("-").isdigit() and t != "none")
    return numeric + other + (["none"] if "none" in uniq else [])


def _eval_rows(metrics) -> pd.DataFrame:
    """Greedy evaluation rows with ``token`` normalised to str and ``iteration`` as int."""
    df = _check_frame(metrics, ["kind", "iteration"], "metrics")
    ev = df[df["kind"] == "eval"]
    if ev.empty:
        raise QuarkError("metrics hold no evaluation rows (kind == 'eval'): nothing to plot yet")
    for col in ("token", "mode"):
        if col not in ev.columns:
            raise QuarkError(f"metrics' eval rows lack the column {col!r}")
    ev = ev[ev["mode"] == "greedy"]
    if ev.empty:
        raise QuarkError("metrics hold no greedy evaluation rows (mode == 'greedy')")
    ev = ev.copy()
    ev["token"] = ev["token"].map(_token_str)
    ev["iteration"] = pd.to_numeric(ev["iteration"]).astype(int)
    return ev.reset_index(drop=True)


def _train_rows(metrics: pd.DataFrame) -> pd.DataFrame:
    tr = metrics[metrics["kind"] == "train"].copy()
    if not tr.empty:
        tr["iteration"] = pd.to_numeric(tr["iteration"]).astype(int)
    return tr


def _pick_prompts(order: Sequence, limit: int = MAX_PROMPTS) -> list:
    """At most ``limit`` items of ``order``, evenly spaced so that both ends stay in."""
    order = list(order)
    if len(order) <= limit:
        return order
    idx = np.unique(np.round(np.linspace(0, len(order) - 1, limit)).astype(int))
    return [order[i] for i in idx]


# ---------------------------------------------------------------------------- rewards and quantiles

def reward_distribution(samples: pd.DataFrame, *, reward_name: str = "reward") -> Figure:
    """Histogram of every reward, and each prompt's reward spread (box per prompt, sorted by median).

    The right panel shows why local (per-prompt) quantiles matter: prompts differ in their
    baseline reward, so global quantiles mostly sort prompts rather than completions. With more
    than 30 prompts, 30 evenly spaced in median order are shown (the lowest and highest included).
    """
    df = _check_samples(samples)
    label = reward_label(reward_name)
    fig = _figure(13, 4.8)
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
    shown = _pick_prompts(medians.index)
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
                      fontsize="small" if len(shown) > 12 else None)
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


def quantile_comparison(samples: pd.DataFrame, num_quantiles: int, *, reward_name: str = "reward") -> Figure:
    """Global (Quark) vs local (ALT) quantile assignment, side by side (columns: global, local).

    Rows: (a) reward per quantile (box plots, quantile 0 = best; for global the thresholds, i.e.
    the minimum reward of quantiles 0..K-2, as dashed lines: K-1 lines, gid ``"threshold"``);
    (b) length (``num_tokens``) per quantile; (c) a heatmap of how many of each prompt's samples
    fall in each quantile (prompts sorted by mean reward, at most 30). Local is uniform per row by
    construction; global is not: prompts with a high baseline fill the best quantiles.

    Axes carry gids ``"<scope>/reward"``, ``"<scope>/length"``, ``"<scope>/heatmap"`` with scope
    ``global`` or ``local``; a heatmap's counts are ``ax.images[0].get_array()`` (rows = the
    prompts in its y tick labels, columns = quantiles).
    """
    if isinstance(num_quantiles, bool) or not isinstance(num_quantiles, numbers.Integral) or num_quantiles < 1:
        raise QuarkError(f"num_quantiles must be an int >= 1, got {num_quantiles!r}")
    k = int(num_quantiles)
    df = _check_samples(samples, need_length=True)
    r = df["reward"].to_numpy()
    lengths = df["num_tokens"].to_numpy(dtype=float)
    pid = df["prompt_id"].to_numpy()
    scopes = {"global": assign_quantiles(r, k), "local": assign_quantiles(r, k, groups=pid)}
    colors = palette(k)
    label = reward_label(reward_name)

    means = df.groupby("prompt_id", sort=False)["reward"].mean().sort_values(ascending=False, kind="stable")
    shown = _pick_prompts(means.index)
    counts = {}
    for scope, q in scopes.items():
        table = pd.crosstab(pd.Series(pid, name="prompt_id"), pd.Series(q, name="quantile"))
        counts[scope] = table.reindex(index=shown, columns=range(k), fill_value=0).to_numpy()
    vmax = max(int(c.max()) for c in counts.values())

    n_rows = len(shown)
    fig = _figure(13, 8.5 + 0.24 * n_rows)
    axes = fig.subplots(3, 2, height_ratios=[1, 1, max(1.0, n_rows / 9)])
    titles = {"global": "global: quantiles over the whole pool (Quark)",
              "local": "local: quantiles within each prompt (ALT)"}
    for col, (scope, q) in enumerate(scopes.items()):
        ax_r, ax_l, ax_h = axes[:, col]
        _quantile_boxes(ax_r, r, q, k, colors, label)
        ax_r.set_title(f"(a) {titles[scope]}\nreward per quantile"
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
                handles.append(Line2D([], [], color="0.3", linestyle="--",
                                      label="threshold (min reward of quantile)"))
        ax_r.legend(handles=handles, fontsize="small", loc="upper right")
        ax_r.set_gid(f"{scope}/reward")

        _quantile_boxes(ax_l, lengths, q, k, colors, LENGTH_LABEL)
        ax_l.set_title("(b) length per quantile")
        ax_l.legend(handles=handles[:1], fontsize="small", loc="upper right")
        ax_l.set_gid(f"{scope}/length")

        c = counts[scope]
        image = ax_h.imshow(c, aspect="auto", cmap="cividis", vmin=0, vmax=max(vmax, 1), interpolation="nearest")
        for i in range(c.shape[0]):
            for j in range(c.shape[1]):
                ax_h.text(j, i, str(int(c[i, j])), ha="center", va="center", fontsize=7 if n_rows > 15 else 9,
                          color="black" if c[i, j] > 0.55 * vmax else "white")
        ax_h.set_xticks(range(k), [str(j) for j in range(k)])
        ax_h.set_yticks(range(n_rows), [str(p) for p in shown], fontsize=7 if n_rows > 15 else None)
        ax_h.set_xlabel(QUANTILE_LABEL)
        subset = "" if n_rows == len(means) else f", {n_rows} of {len(means)}"
        ax_h.set_ylabel(f"prompt (prompt_id, by mean reward{subset})")
        ax_h.set_title("(c) samples per prompt and quantile\n"
                       + ("(each prompt split evenly, by construction)" if scope == "local"
                          else "(high-baseline prompts fill the best quantiles)"))
        ax_h.set_gid(f"{scope}/heatmap")
        fig.colorbar(image, ax=ax_h, label=COUNT_LABEL, shrink=0.9)
    n_per = df.groupby("prompt_id").size()
    fig.suptitle(f"Global vs local quantiles, K = {k} ({len(r)} samples, {len(means)} prompts, "
                 f"{n_per.min() if n_per.min() == n_per.max() else f'{n_per.min()}-{n_per.max()}'} per prompt)",
                 fontsize="x-large")
    return fig


def _contrast(r: np.ndarray, q: np.ndarray, k: int) -> tuple[float, float]:
    """(mean reward of quantile 0, of quantile k-1); NaN for an empty quantile."""
    top = r[q == 0].mean() if (q == 0).any() else np.nan
    bottom = r[q == k - 1].mean() if (q == k - 1).any() else np.nan
    return float(top), float(bottom)


def _default_ns(available: int) -> list[int]:
    ns = [n for n in (2 ** i for i in range(1, 20)) if n < available]
    return ns + [available] if available >= 2 else [available]


def k_and_n_effect(samples: pd.DataFrame, *, ks: Sequence[int] = (2, 3, 5, 7), ns: Sequence[int] | None = None,
                   seed: int = 0, reward_name: str = "reward") -> Figure:
    """How the number of quantiles K and of samples per prompt n shape what quantile 0 means.

    Left (gid ``"contrast"``): for each K in ``ks``, the contrast = mean reward of quantile 0 minus that of quantile
    K-1, for global and local assignment (lines with gids ``"contrast/global"``,
    ``"contrast/local"``; NaN where quantile K-1 is empty, e.g. local with fewer than K samples
    per prompt). Right (gid ``"best_of_n"``): subsample n samples of every prompt (``ns`` default 2, 4, 8, ... up to
    the smallest number every prompt has), assign K = min(5, n) quantiles locally and plot the
    mean reward of quantile 0 and of quantile K-1 vs n (gids ``"n/top"``, ``"n/bottom"``): the
    best-of-n effect. The subsamples are nested (the first n of one random order per prompt,
    drawn from ``seed``), so the result is deterministic.
    """
    df = _check_samples(samples)
    ks = _check_int_list(ks, "ks", 1)
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise QuarkError(f"seed must be an int, got {seed!r}")
    r = df["reward"].to_numpy()
    pid = df["prompt_id"].to_numpy()
    per_prompt = df.groupby("prompt_id", sort=False).size()
    available = int(per_prompt.min())
    ns = _default_ns(available) if ns is None else _check_int_list(ns, "ns", 1)
    if max(ns) > available:
        raise QuarkError(f"ns asks for {max(ns)} samples per prompt, but some prompt has only {available}; "
                         f"use ns <= {available}")
    colors = palette(4)
    unit = _reward_unit(reward_name)
    label = reward_label(reward_name)

    fig = _figure(13, 4.8)
    ax_k, ax_n = fig.subplots(1, 2)
    for i, scope in enumerate(("global", "local")):
        contrast = []
        for k in ks:
            q = assign_quantiles(r, k) if scope == "global" else assign_quantiles(r, k, groups=pid)
            top, bottom = _contrast(r, q, k)
            contrast.append(top - bottom)
        (line,) = ax_k.plot(ks, contrast, marker="o", color=colors[i], linestyle="-" if i == 0 else "--",
                            label=f"{scope} ({'over the pool' if scope == 'global' else 'per prompt'})")
        line.set_gid(f"contrast/{scope}")
    ax_k.set_xticks(ks)
    ax_k.set_xlabel("K (number of quantiles)")
    ax_k.set_ylabel(f"mean reward, quantile 0 − quantile K−1 ({unit})")
    ax_k.set_title("Contrast between best and worst quantile")
    ax_k.set_gid("contrast")
    ax_k.legend(fontsize="small")
    plotted = np.concatenate([np.asarray(line.get_ydata(), dtype=float) for line in ax_k.lines])
    if np.isfinite(plotted).any() and np.nanmin(plotted) >= 0:
        ax_k.set_ylim(bottom=0)

    rng = np.random.default_rng(int(seed))
    order = np.empty(len(df), dtype=np.int64)  # each row's position in its prompt's random order
    for rows in df.groupby("prompt_id", sort=False).indices.values():
        order[rows] = rng.permutation(len(rows))
    tops, bottoms, kk = [], [], []
    for n in ns:
        keep = order < n
        k = min(5, n)
        q = assign_quantiles(r[keep], k, groups=pid[keep])
        top, bottom = _contrast(r[keep], q, k)
        tops.append(top)
        bottoms.append(bottom)
        kk.append(k)
    (line,) = ax_n.plot(ns, tops, marker="o", color=colors[0], label="quantile 0 (best)")
    line.set_gid("n/top")
    (line,) = ax_n.plot(ns, bottoms, marker="s", color=colors[3], linestyle="--", label="quantile K−1 (worst)")
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
    fig.suptitle(f"Effect of K and of samples per prompt ({len(per_prompt)} prompts, seed {seed})")
    return fig


# ---------------------------------------------------------------------------- training iterations

def _by_token(ax, ev: pd.DataFrame, column: str, ylabel: str, title: str, tokens: list[str], colors: dict,
              iterations: list[int]) -> None:
    """One line per token over iterations >= 1, the iteration-0 reference as a dotted line."""
    ax.set_title(title)
    ax.set_xlabel(ITERATION_LABEL)
    ax.set_ylabel(ylabel)
    _integer_iterations(ax, iterations)
    if column not in ev.columns or not pd.to_numeric(ev[column], errors="coerce").notna().any():
        _no_data(ax, f"{column} not measured")
        return
    values = ev.assign(_v=pd.to_numeric(ev[column], errors="coerce"))
    ref = values[values["iteration"] == 0]
    if not ref.empty:
        ref_row = ref[ref["token"] == "none"] if (ref["token"] == "none").any() else ref
        ref_value = float(ref_row["_v"].mean())
        if np.isfinite(ref_value):
            ax.axhline(ref_value, color=_REFERENCE_COLOR, linestyle=":", linewidth=1.5, label="reference (SFT)")
    policy = values[values["iteration"] >= 1]
    if policy.empty:
        _no_data(ax, "no training yet")
    for token in tokens:
        part = policy[policy["token"] == token].groupby("iteration")["_v"].mean()
        if part.empty:
            continue
        if token == "none":
            ax.plot(part.index, part.to_numpy(), color=_NONE_COLOR, linestyle="--", marker="x", label="no token")
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
    ev = _eval_rows(metrics)
    train = _train_rows(metrics)
    tokens = _token_order(ev["token"])
    numeric = [t for t in tokens if t != "none"]
    colors = dict(zip(numeric, palette(len(numeric))))
    iterations = sorted(set(ev["iteration"]) | set(train["iteration"] if not train.empty else []))

    fig = _figure(17, 9.5)
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
        _no_data(ax_kl, "no training yet")
        _no_data(ax_loss, "no training yet")
    else:
        if "kl" in train.columns and train["kl"].notna().any():
            kl = train.groupby("iteration")["kl"].agg(["mean", "min", "max"])
            ax_kl.fill_between(kl.index, kl["min"], kl["max"], color=palette(1)[0], alpha=0.2,
                               label="min–max over steps")
            ax_kl.plot(kl.index, kl["mean"], marker="o", color=palette(1)[0], label="mean over steps")
            ax_kl.legend(fontsize="small")
        else:
            _no_data(ax_kl, "kl not logged")
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
            _no_data(ax_loss, "no loss terms logged")

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
        _no_data(ax_c, "no training yet" if (ev["iteration"] >= 1).sum() == 0 else "needs ≥ 2 tokens")

    done = max(iterations) if iterations else 0
    if done == 0:
        title = "Quark training: reference (SFT) only, no training yet (greedy evaluation)"
    else:
        title = (f"Quark training: {done} iteration{'s' if done != 1 else ''}, "
                 f"{len(numeric)} quantile token{'s' if len(numeric) != 1 else ''} (greedy evaluation)")
    fig.suptitle(title, fontsize="x-large")
    return fig


# ---------------------------------------------------------------------------- trade-offs

_POINT_COLUMNS = ["label", "group", "iteration", "token", "reward", "perplexity", "length", "quoted"]


def tradeoff_points(metrics: pd.DataFrame, *, quoted=None, label_prefix: str = "") -> pd.DataFrame:
    """One row per greedy evaluation (iteration, token), plus optional quoted figures.

    Columns: ``label`` (``"SFT (reference)"`` for iteration 0, ``"iter 3 · token 0"``,
    ``"iter 3 · no token"``; ``label_prefix`` is prepended verbatim, e.g. ``"run A: "``),
    ``group`` (``"reference"``, ``"token 0"``, ..., ``"no token"``, ``"quoted"``), ``iteration``
    (nullable int), ``token`` (``"0"``, ..., ``"none"`` as str; NaN for quoted), ``reward``,
    ``perplexity``, ``length`` and ``quoted``. ``quoted`` is a list of dicts or a DataFrame with
    ``label`` and ``reward`` and, where known, ``perplexity`` and ``length`` (e.g. figures typed
    in from a model card); they are appended with ``quoted=True``. Several results can be joined
    with ``pd.concat``.
    """
    if not isinstance(label_prefix, str):
        raise QuarkError(f"label_prefix must be a string, got {label_prefix!r}")
    ev = _eval_rows(metrics)
    for col in ("reward", "perplexity", "length"):
        ev[col] = pd.to_numeric(ev[col], errors="coerce") if col in ev.columns else np.nan
    rows = []
    tokens = _token_order(ev["token"])
    for it in sorted(ev["iteration"].unique()):
        part = ev[ev["iteration"] == it]
        for token in tokens:
            sel = part[part["token"] == token]
            if sel.empty:
                continue
            if it == 0:
                label = "SFT (reference)" if token == "none" else f"SFT (reference) · token {token}"
                group = "reference"
            else:
                label = f"iter {it} · " + ("no token" if token == "none" else f"token {token}")
                group = "no token" if token == "none" else f"token {token}"
            rows.append({"label": label_prefix + label, "group": group, "iteration": int(it), "token": token,
                         "reward": float(sel["reward"].mean()), "perplexity": float(sel["perplexity"].mean()),
                         "length": float(sel["length"].mean()), "quoted": False})
    out = pd.DataFrame(rows, columns=_POINT_COLUMNS)
    if quoted is not None:
        q = _quoted_frame(quoted)
        if not q.empty:
            q = q.assign(label=label_prefix + q["label"], group="quoted", iteration=pd.NA, token=np.nan, quoted=True)
            out = pd.concat([out, q[_POINT_COLUMNS]], ignore_index=True)
    out["iteration"] = out["iteration"].astype("Int64")
    out["quoted"] = out["quoted"].astype(bool)
    for col in ("reward", "perplexity", "length"):
        out[col] = out[col].astype(float)
    return out


def _quoted_frame(quoted) -> pd.DataFrame:
    if isinstance(quoted, pd.DataFrame):
        q = quoted.copy()
    else:
        try:
            items = list(quoted)
        except TypeError:
            raise QuarkError(f"quoted must be a list of dicts or a DataFrame, got {type(quoted).__name__}") from None
        if not all(isinstance(item, dict) for item in items):
            raise QuarkError("quoted must be a list of dicts (label, reward, perplexity, length) or a DataFrame")
        q = pd.DataFrame(items)
    if q.empty:
        return pd.DataFrame(columns=["label", "reward", "perplexity", "length"])
    missing = [c for c in ("label", "reward") if c not in q.columns]
    if missing:
        raise QuarkError(f"quoted figures lack {missing}: each needs label and reward (perplexity, length if known)")
    for col in ("reward", "perplexity", "length"):
        if col not in q.columns:
            q[col] = np.nan
        values = pd.to_numeric(q[col], errors="coerce")
        if (values.isna() & q[col].notna()).any():
            raise QuarkError(f"quoted {col} values must be numbers, got {q[col].tolist()}")
        q[col] = values.astype(float)
    if q["reward"].isna().any():
        raise QuarkError("every quoted figure needs a reward")
    q["label"] = q["label"].astype(str)
    return q.reset_index(drop=True)


def _check_points(points) -> pd.DataFrame:
    df = _check_frame(points, ["label", "group", "reward", "perplexity", "length", "quoted"], "points")
    return df.reset_index(drop=True)


def pareto_front(points: pd.DataFrame, x: str = "perplexity") -> pd.Series:
    """True for the MEASURED points on the Pareto front of (maximise reward, minimise ``x``).

    Quoted points and points whose reward or ``x`` is missing are never on it and never remove a
    measured point from it (they come from another setting). Aligned with ``points.index``.
    """
    if x not in ("perplexity", "length"):
        raise QuarkError(f"x must be 'perplexity' or 'length', got {x!r}")
    df = _check_frame(points, ["reward", x, "quoted"], "points")
    values = df[["reward", x]].apply(pd.to_numeric, errors="coerce")
    eligible = ~df["quoted"].astype(bool) & values.notna().all(axis=1) & np.isfinite(values).all(axis=1)
    mask = pd.Series(False, index=df.index)
    if eligible.any():
        mask[eligible] = pareto_mask(values[eligible].to_numpy(dtype=float), [True, False])
    return mask


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
            colors[g] = _REFERENCE_COLOR
        elif g == "no token":
            colors[g] = _NONE_COLOR
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
    the Pareto front (maximise reward, minimise x) over the measured points only is ringed (gid
    ``"pareto_ring"``) and joined by a step line sorted by x (gid ``"pareto_front"``). Axes have
    gids ``"perplexity"`` and ``"length"``. Groups share colours across concatenated runs
    (``token k`` is palette colour k, as in :func:`iteration_curves`); labels tell runs apart.
    """
    df = _check_points(points)
    label = reward_label(reward_name)
    quoted = df["quoted"].astype(bool)
    groups = list(dict.fromkeys(df.loc[~quoted, "group"].astype(str)))
    colors = _group_colors(groups)

    fig = _figure(14, 5.8)
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
            _no_data(ax, f"no point has a {x}")
            continue
        for group in groups:
            sel = ok & ~quoted & (df["group"].astype(str) == group)
            if sel.any():
                ax.scatter(xs[sel], ys[sel], s=42, color=colors[group], edgecolors="white", linewidths=0.6,
                           label=group, zorder=3)
        front = pareto_front(df, x) & ok
        if front.any():
            order = xs[front].sort_values(kind="stable").index
            (line,) = ax.plot(xs[order], ys[order], drawstyle="steps-post", color=_FRONT_COLOR, linewidth=1,
                              alpha=0.7, zorder=2)
            line.set_gid("pareto_front")
            ring = ax.scatter(xs[front], ys[front], s=150, facecolors="none", edgecolors=_FRONT_COLOR,
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


def model_card_table(points: pd.DataFrame) -> pd.DataFrame:
    """A model-card style table: ``model``, ``RM``, ``PPL``, ``Avg. len``, ``source``; 2 decimals, in order."""
    df = _check_points(points)
    table = pd.DataFrame({
        "model": df["label"].astype(str),
        "RM": pd.to_numeric(df["reward"], errors="coerce").round(2),
        "PPL": pd.to_numeric(df["perplexity"], errors="coerce").round(2),
        "Avg. len": pd.to_numeric(df["length"], errors="coerce").round(2),
        "source": np.where(df["quoted"].astype(bool), "quoted", "measured"),
    })
    return table.reset_index(drop=True)
