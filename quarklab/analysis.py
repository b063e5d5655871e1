"""Tables behind the figures: reward quantiles of a scored pool, a run's evaluation rows, trade-off points.

Pure pandas/numpy (no matplotlib): every function takes a DataFrame and returns a DataFrame or a
Series that a notebook can print, test or join; :mod:`quarklab.present` draws them.

Inputs:

* ``samples``: a DataFrame from :func:`quarklab.sample` plus a ``reward`` column (needs
  ``prompt_id``, ``reward`` and, for lengths, ``num_tokens``).
* ``metrics``: :func:`quarklab.runs.read_metrics` of a run directory (``metrics.jsonl``). Only
  greedy evaluation rows (``kind == "eval"``, ``mode == "greedy"``) are used; sampled ones are
  ignored. The ``token`` column mixes ``"none"`` and ints (it comes from JSON) and is normalised
  to strings (``"0"``, ``"1"``, ..., ``"none"``).
"""

from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np
import pandas as pd

from .checks import check_int, check_int_list, check_num_quantiles
from .errors import QuarkError
from .metrics import pareto_mask
from .quantiles import assign_quantiles
from .runs import read_config
from .tokens import as_token

__all__ = [
    "check_samples", "eval_rows", "train_rows", "token_order", "prompt_quantile_counts", "quantile_contrast",
    "best_of_n", "tradeoff_points", "quoted_points", "pareto_front", "model_card_table", "card_tables", "reward_name",
    "run_reward_name", "QUOTED_CAPTION",
]

SCOPES = ("global", "local")


# ---------------------------------------------------------------------------- input checks

def check_frame(df, columns: Iterable[str], what: str) -> pd.DataFrame:
    """``df`` itself, once it is a non-empty DataFrame holding ``columns``; else a QuarkError naming ``what``."""
    if not isinstance(df, pd.DataFrame):
        raise QuarkError(f"{what} must be a pandas DataFrame, got {type(df).__name__}")
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise QuarkError(f"{what} lacks the column(s) {missing}; it has {list(df.columns)}")
    if df.empty:
        raise QuarkError(f"{what} is empty: nothing to plot")
    return df


def check_samples(samples, *, need_length: bool = False) -> pd.DataFrame:
    """A copy of ``samples`` with a float ``reward`` (all finite), ids present and, if asked, numeric ``num_tokens``."""
    cols = ["prompt_id", "reward"] + (["num_tokens"] if need_length else [])
    df = check_frame(samples, cols, "samples")
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


# ---------------------------------------------------------------------------- a run's metrics

def token_str(value) -> str:
    """A metrics ``token`` (:func:`quarklab.tokens.as_token` reads every spelling) as ``"none"`` or ``"<k>"``."""
    k = as_token(value)
    return "none" if k is None else str(k)


def token_order(tokens: Iterable[str]) -> list[str]:
    """Numeric tokens ascending, then anything else, ``"none"`` last."""
    uniq = set(tokens)
    numeric = sorted((t for t in uniq if t.lstrip("-").isdigit()), key=int)
    other = sorted(t for t in uniq if not t.lstrip("-").isdigit() and t != "none")
    return numeric + other + (["none"] if "none" in uniq else [])


def eval_rows(metrics) -> pd.DataFrame:
    """The greedy evaluation rows of ``metrics``, ``token`` normalised to str and ``iteration`` as int."""
    df = check_frame(metrics, ["kind", "iteration"], "metrics")
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
    ev["token"] = ev["token"].map(token_str)
    ev["iteration"] = pd.to_numeric(ev["iteration"]).astype(int)
    return ev.reset_index(drop=True)


def train_rows(metrics: pd.DataFrame) -> pd.DataFrame:
    """The training-step rows of ``metrics`` (possibly none), ``iteration`` as int."""
    tr = metrics[metrics["kind"] == "train"].copy()
    if not tr.empty:
        tr["iteration"] = pd.to_numeric(tr["iteration"]).astype(int)
    return tr


# ---------------------------------------------------------------------------- quantiles of a scored pool

def _assign(r: np.ndarray, pid: np.ndarray, k: int, scope: str) -> np.ndarray:
    return assign_quantiles(r, k) if scope == "global" else assign_quantiles(r, k, groups=pid)


def prompt_quantile_counts(samples: pd.DataFrame, num_quantiles: int, scope: str) -> pd.DataFrame:
    """How many of each prompt's samples fall in each quantile: rows = ``prompt_id`` by mean reward
    (highest first), columns = quantiles ``0..K-1``. ``scope`` is ``"global"`` (over the whole pool,
    Quark) or ``"local"`` (within each prompt, ALT: every row then splits evenly, by construction).
    """
    if scope not in SCOPES:
        raise QuarkError(f"scope must be 'global' or 'local', got {scope!r}")
    k = check_num_quantiles(num_quantiles)
    df = check_samples(samples)
    pid = df["prompt_id"].to_numpy()
    q = _assign(df["reward"].to_numpy(), pid, k, scope)
    order = df.groupby("prompt_id", sort=False)["reward"].mean().sort_values(ascending=False, kind="stable").index
    table = pd.crosstab(pd.Series(pid, name="prompt_id"), pd.Series(q, name="quantile"))
    return table.reindex(index=order, columns=range(k), fill_value=0)


def _top_bottom(r: np.ndarray, q: np.ndarray, k: int) -> tuple[float, float]:
    """(mean reward of quantile 0, of quantile k-1); NaN for an empty quantile."""
    top = r[q == 0].mean() if (q == 0).any() else np.nan
    bottom = r[q == k - 1].mean() if (q == k - 1).any() else np.nan
    return float(top), float(bottom)


def quantile_contrast(samples: pd.DataFrame, ks: Sequence[int] = (2, 3, 5, 7)) -> pd.DataFrame:
    """For each K in ``ks`` and each scope: the mean reward of quantile 0 (``top``) and of quantile
    K-1 (``bottom``) and their difference ``contrast``. Columns ``scope``, ``K``, ``top``,
    ``bottom``, ``contrast``; rows global first, K ascending. NaN where quantile K-1 is empty (e.g.
    local with fewer than K samples per prompt).
    """
    df = check_samples(samples)
    ks = check_int_list(ks, "ks", 1)
    r, pid = df["reward"].to_numpy(), df["prompt_id"].to_numpy()
    rows = []
    for scope in SCOPES:
        for k in ks:
            top, bottom = _top_bottom(r, _assign(r, pid, k, scope), k)
            rows.append({"scope": scope, "K": k, "top": top, "bottom": bottom, "contrast": top - bottom})
    return pd.DataFrame(rows, columns=["scope", "K", "top", "bottom", "contrast"])


def default_ns(available: int) -> list[int]:
    """2, 4, 8, ... below ``available``, then ``available`` itself."""
    ns = [n for n in (2 ** i for i in range(1, 20)) if n < available]
    return ns + [available] if available >= 2 else [available]


def best_of_n(samples: pd.DataFrame, ns: Sequence[int] | None = None, *, seed: int = 0) -> pd.DataFrame:
    """Best-of-n: keep n samples of every prompt, assign K = min(5, n) quantiles locally, and report the
    mean reward of quantile 0 (``top``) and of quantile K-1 (``bottom``). Columns ``n``, ``K``,
    ``top``, ``bottom``; one row per n. ``ns`` defaults to 2, 4, 8, ... up to the smallest number
    every prompt has. The subsamples are nested (the first n of one random order per prompt, drawn
    from ``seed``), so the result is deterministic.
    """
    df = check_samples(samples)
    check_int(seed, "seed")
    available = int(df.groupby("prompt_id", sort=False).size().min())
    ns = default_ns(available) if ns is None else check_int_list(ns, "ns", 1)
    if max(ns) > available:
        raise QuarkError(f"ns asks for {max(ns)} samples per prompt, but some prompt has only {available}; "
                         f"use ns <= {available}")
    r, pid = df["reward"].to_numpy(), df["prompt_id"].to_numpy()
    rng = np.random.default_rng(int(seed))
    order = np.empty(len(df), dtype=np.int64)  # each row's position in its prompt's random order
    for rows in df.groupby("prompt_id", sort=False).indices.values():
        order[rows] = rng.permutation(len(rows))
    out = []
    for n in ns:
        keep = order < n
        k = min(5, n)
        top, bottom = _top_bottom(r[keep], assign_quantiles(r[keep], k, groups=pid[keep]), k)
        out.append({"n": n, "K": k, "top": top, "bottom": bottom})
    return pd.DataFrame(out, columns=["n", "K", "top", "bottom"])


# ---------------------------------------------------------------------------- trade-offs

POINT_COLUMNS = ["label", "group", "iteration", "token", "reward", "perplexity", "length", "quoted", "run"]

QUOTED_CAPTION = ("Quoted, not measured: the ALT model card's figures for GPT-J 6B on the real TL;DR data, scored by "
                  "another reward model (the CarperAI RM). Another reward on another scale: not comparable to the "
                  "measured points, so never drawn on their axes.")


def tradeoff_points(metrics: pd.DataFrame, *, quoted=None, label_prefix: str = "") -> pd.DataFrame:
    """One row per greedy evaluation (iteration, token), plus optional quoted figures.

    Columns: ``label`` (``"SFT (reference)"`` for iteration 0, ``"iter 3 · token 0"``,
    ``"iter 3 · no token"``; ``label_prefix`` is prepended verbatim, e.g. ``"run A: "``),
    ``group`` (``"reference"``, ``"token 0"``, ..., ``"no token"``, ``"quoted"``), ``iteration``
    (nullable int), ``token`` (``"0"``, ..., ``"none"`` as str; NaN for quoted), ``reward``,
    ``perplexity``, ``length`` and ``quoted``. ``quoted`` is a list of dicts or a DataFrame with
    ``label`` and ``reward`` and, where known, ``perplexity`` and ``length`` (e.g. figures typed
    in from a model card); they are appended with ``quoted=True``. ``run`` names the run the
    points come from: ``label_prefix`` without its trailing ``":"`` (``""`` without a prefix).
    Several results can be joined with ``pd.concat``.
    """
    if not isinstance(label_prefix, str):
        raise QuarkError(f"label_prefix must be a string, got {label_prefix!r}")
    ev = eval_rows(metrics)
    for col in ("reward", "perplexity", "length"):
        ev[col] = pd.to_numeric(ev[col], errors="coerce") if col in ev.columns else np.nan
    rows = []
    tokens = token_order(ev["token"])
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
    run = label_prefix.strip().rstrip(":").strip()
    out = pd.DataFrame([{**row, "run": run} for row in rows], columns=POINT_COLUMNS)
    if quoted is not None:
        q = quoted_points(quoted, label_prefix=label_prefix)
        if not q.empty:
            out = pd.concat([out, q], ignore_index=True)
    return _point_dtypes(out)


def quoted_points(quoted, *, label_prefix: str = "") -> pd.DataFrame:
    """The quoted figures alone as :func:`tradeoff_points` appends them (``quoted=True``, group ``"quoted"``,
    no iteration or token; ``label_prefix`` prepended to each label, ``run`` the prefix without its ``":"``)."""
    run = label_prefix.strip().rstrip(":").strip()
    q = quoted_frame(quoted)
    if q.empty:
        return _point_dtypes(pd.DataFrame({c: pd.Series(dtype=str) for c in POINT_COLUMNS}))  # typed as no points
    q = q.assign(label=label_prefix + q["label"], group="quoted", iteration=pd.NA, token=np.nan, quoted=True, run=run)
    q["token"] = q["token"].astype(object)  # as in a frame of measured points (tokens are strings)
    return _point_dtypes(q[POINT_COLUMNS].reset_index(drop=True))


def _point_dtypes(out: pd.DataFrame) -> pd.DataFrame:
    out["iteration"] = out["iteration"].astype("Int64")
    out["quoted"] = out["quoted"].astype(bool)
    for col in ("reward", "perplexity", "length"):
        out[col] = out[col].astype(float)
    return out


def quoted_frame(quoted) -> pd.DataFrame:
    """Quoted figures (a list of dicts or a DataFrame) as ``label`` (str), ``reward``, ``perplexity``,
    ``length`` (float, NaN where not given); every one needs a label and a reward."""
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


def check_points(points) -> pd.DataFrame:
    """``points`` (from :func:`tradeoff_points`) with a fresh index, once it holds the columns drawn."""
    df = check_frame(points, ["label", "group", "reward", "perplexity", "length", "quoted"], "points")
    df = df.reset_index(drop=True)
    if "run" not in df.columns:
        df = df.assign(run="")
    return df


def pareto_front(points: pd.DataFrame, x: str = "perplexity") -> pd.Series:
    """True for the MEASURED points on the Pareto front of (maximise reward, minimise ``x``).

    Quoted points and points whose reward or ``x`` is missing are never on it and never remove a
    measured point from it (they come from another setting). Aligned with ``points.index``.
    """
    if x not in ("perplexity", "length"):
        raise QuarkError(f"x must be 'perplexity' or 'length', got {x!r}")
    df = check_frame(points, ["reward", x, "quoted"], "points")
    values = df[["reward", x]].apply(pd.to_numeric, errors="coerce")
    eligible = ~df["quoted"].astype(bool) & values.notna().all(axis=1) & np.isfinite(values).all(axis=1)
    mask = pd.Series(False, index=df.index)
    if eligible.any():
        mask[eligible] = pareto_mask(values[eligible].to_numpy(dtype=float), [True, False])
    return mask


def model_card_table(points: pd.DataFrame) -> pd.DataFrame:
    """A model-card style table: ``model``, ``RM``, ``PPL``, ``Avg. len``, ``source``; 2 decimals, in order."""
    df = check_points(points)
    table = pd.DataFrame({
        "model": df["label"].astype(str),
        "RM": pd.to_numeric(df["reward"], errors="coerce").round(2),
        "PPL": pd.to_numeric(df["perplexity"], errors="coerce").round(2),
        "Avg. len": pd.to_numeric(df["length"], errors="coerce").round(2),
        "source": np.where(df["quoted"].astype(bool), "quoted", "measured"),
    })
    return table.reset_index(drop=True)


def card_tables(points: pd.DataFrame, *, reward_name: str = "tiny-tldr score") -> tuple:
    """The model card split in two captioned tables (pandas Stylers, for a notebook): the measured rows,
    their reward named, and the quoted ones under :data:`QUOTED_CAPTION` (an empty table when none)."""
    card = model_card_table(points)
    styles = []
    for source, caption in (("measured", f"Measured here (greedy evaluation): RM = {reward_name}, PPL = perplexity "
                                         "under the reference model, Avg. len in tokens."),
                            ("quoted", QUOTED_CAPTION)):
        part = card[card["source"] == source].drop(columns="source").reset_index(drop=True)
        styles.append(part.style.format(precision=2, na_rep="–").hide(axis="index").set_caption(caption)
                      .set_properties(subset=["model"], **{"text-align": "left"})
                      .set_table_styles([{"selector": "caption", "props": "caption-side: top; text-align: left"}]))
    return tuple(styles)


# ---------------------------------------------------------------------------- the reward a run used

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
