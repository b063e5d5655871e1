"""Trade-off points: one row per greedy evaluation (iteration, token) of a run, figures quoted from elsewhere kept
apart, and the Pareto front of the measured ones.

Several runs' points are joined with ``pd.concat``; :func:`quarklab.present.run_plots.tradeoff_scatter` draws them
and :mod:`.cards` tabulates them.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from ..errors import QuarkError
from ..metrics import pareto_mask
from ..tokens import sorted_tokens, token_label, token_series
from .inputs import check_frame
from .metric_rows import eval_rows, token_mask

POINT_COLUMNS = ["label", "group", "iteration", "token", "reward", "perplexity", "length", "quoted", "run"]

CARD_SOURCE = "the ALT-Quark model card, huggingface.co/sauc-abadal-lloret/gpt-j-6b-ALT-Quark-tldr"
"""Where the quoted ALT figures come from."""
QUOTED_CAPTION = (f"Quoted, not measured: {CARD_SOURCE} (GPT-J 6B on the whole real TL;DR test set, scored by "
                  "CarperAI's reward model). Another reward on another scale: not comparable to the measured points, so "
                  "never drawn on their axes.")


def tradeoff_points(metrics: pd.DataFrame, *, quoted=None, label_prefix: str = "") -> pd.DataFrame:
    """One row per greedy evaluation (iteration, token), plus optional quoted figures.

    Columns: ``label`` (``"SFT (reference)"`` for iteration 0, ``"iter 3 · token 0"``,
    ``"iter 3 · no token"``; ``label_prefix`` is prepended verbatim, e.g. ``"run A: "``),
    ``group`` (``"reference"``, ``"token 0"``, ..., ``"no token"``, ``"quoted"``), ``iteration``
    (nullable int), ``token`` (the quantile index as nullable ``Int64``, ``<NA>`` for no token and for
    quoted rows), ``reward``, ``perplexity``, ``length`` and ``quoted``. ``quoted`` is a list of dicts or
    a DataFrame with ``label`` and ``reward`` and, where known, ``perplexity`` and ``length`` (e.g. figures
    typed in from a model card); they are appended with ``quoted=True``. ``run`` names the run the
    points come from: ``label_prefix`` without its trailing ``":"`` (``""`` without a prefix).
    Several results can be joined with ``pd.concat``.
    """
    if not isinstance(label_prefix, str):
        raise QuarkError(f"label_prefix must be a string, got {label_prefix!r}")
    ev = eval_rows(metrics)
    for col in ("reward", "perplexity", "length"):
        ev[col] = pd.to_numeric(ev[col], errors="coerce") if col in ev.columns else np.nan
    rows = []
    tokens = sorted_tokens(ev["token"])
    for it in sorted(ev["iteration"].unique()):
        part = ev[ev["iteration"] == it]
        for token in tokens:
            sel = part[token_mask(part["token"], token)]
            if sel.empty:
                continue
            if it == 0:
                label = "SFT (reference)" + ("" if token is None else f" · {token_label(token)}")
                group = "reference"
            else:
                label = f"iter {it} · {token_label(token)}"
                group = token_label(token)
            rows.append({"label": label_prefix + label, "group": group, "iteration": int(it), "token": token,
                         "reward": float(sel["reward"].mean()), "perplexity": float(sel["perplexity"].mean()),
                         "length": float(sel["length"].mean()), "quoted": False})
    run = label_prefix.strip().rstrip(":").strip()
    out = pd.DataFrame([{**row, "run": run} for row in rows], columns=POINT_COLUMNS)
    if quoted is not None:
        q = quoted_points(quoted, label_prefix=label_prefix)
        if not q.empty:
            out = pd.concat([_point_dtypes(out), q], ignore_index=True)
    return _point_dtypes(out)


def quoted_points(quoted, *, label_prefix: str = "") -> pd.DataFrame:
    """The quoted figures alone as :func:`tradeoff_points` appends them (``quoted=True``, group ``"quoted"``,
    no iteration or token; ``label_prefix`` prepended to each label, ``run`` the prefix without its ``":"``)."""
    run = label_prefix.strip().rstrip(":").strip()
    q = quoted_frame(quoted)
    if q.empty:
        return _point_dtypes(pd.DataFrame({c: pd.Series(dtype=str) for c in POINT_COLUMNS}))  # typed as no points
    q = q.assign(label=label_prefix + q["label"], group="quoted", iteration=pd.NA, token=pd.NA, quoted=True, run=run)
    return _point_dtypes(q[POINT_COLUMNS].reset_index(drop=True))


def _point_dtypes(out: pd.DataFrame) -> pd.DataFrame:
    out["iteration"] = out["iteration"].astype("Int64")
    out["token"] = token_series(out["token"])
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
