"""Reward quantiles of a scored pool: how each prompt's samples fall into them, the contrast between the best and
the worst quantile for several K, and the best-of-n effect.

``samples`` is a DataFrame from :func:`quarklab.sample` plus a ``reward`` column (``prompt_id``, ``reward`` and, for
lengths, ``num_tokens``). A scope is ``"global"`` (quantiles over the whole pool, Quark) or ``"local"`` (within each
prompt's own samples, ALT). Quantiles are assigned once per (K, scope) and handed on: :func:`counts_by_prompt` and
:func:`quantile_summary` read an assignment instead of making their own.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd

from ..checks import check_int, check_int_list, check_num_quantiles
from ..errors import QuarkError
from ..quantiles import assign_by_scope, check_scope
from .inputs import check_samples

SHOWN_SCOPES = ("global", "local")  # the order figures and tables show them in: Quark's global first, then ALT's local


# ---------------------------------------------------------------------------- scope → groups


def check_assignment(quantiles, num_rows: int, num_quantiles: int) -> np.ndarray:
    """``quantiles`` as int64, once it is one quantile in ``0..K-1`` per row (an assignment made elsewhere)."""
    q = np.asarray(quantiles)
    if q.shape != (num_rows,) or q.dtype.kind not in "iu" or (num_rows and (q.min() < 0 or q.max() >= num_quantiles)):
        raise QuarkError(f"quantiles must be one int in 0..{num_quantiles - 1} per sample ({num_rows}), "
                         f"got {q.dtype} of shape {q.shape}")
    return q.astype(np.int64, copy=False)


def counts_by_prompt(samples: pd.DataFrame, quantiles, num_quantiles: int) -> pd.DataFrame:
    """How many of each prompt's samples fall in each quantile of the assignment ``quantiles`` (one per row of the
    checked ``samples``): rows = ``prompt_id`` by mean reward (highest first), columns = quantiles ``0..K-1``."""
    pid = samples["prompt_id"].to_numpy()
    order = samples.groupby("prompt_id", sort=False)["reward"].mean().sort_values(ascending=False, kind="stable").index
    table = pd.crosstab(pd.Series(pid, name="prompt_id"), pd.Series(quantiles, name="quantile"))
    return table.reindex(index=order, columns=range(num_quantiles), fill_value=0)


def prompt_quantile_counts(samples: pd.DataFrame, num_quantiles: int, scope: str) -> pd.DataFrame:
    """How many of each prompt's samples fall in each quantile: rows = ``prompt_id`` by mean reward
    (highest first), columns = quantiles ``0..K-1``. ``scope`` is ``"global"`` (over the whole pool,
    Quark) or ``"local"`` (within each prompt, ALT: every row then splits evenly, by construction).
    """
    check_scope(scope)
    k = check_num_quantiles(num_quantiles)
    df = check_samples(samples)
    q = assign_by_scope(df["reward"].to_numpy(), df["prompt_id"].to_numpy(), k, scope)
    return counts_by_prompt(df, q, k)


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
    for scope in SHOWN_SCOPES:
        for k in ks:
            top, bottom = _top_bottom(r, assign_by_scope(r, pid, k, scope), k)
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
        top, bottom = _top_bottom(r[keep], assign_by_scope(r[keep], pid[keep], k, "local"), k)
        out.append({"n": n, "K": k, "top": top, "bottom": bottom})
    return pd.DataFrame(out, columns=["n", "K", "top", "bottom"])
