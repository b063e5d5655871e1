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
from ..quantiles import assign_quantiles
from .inputs import check_samples

SCOPES = ("global", "local")  # the order figures and tables show them in: Quark's global first, then ALT's local


# ---------------------------------------------------------------------------- scope → groups
# MERGE: helper A adds quarklab.quantiles.check_scope and quarklab.quantiles.assign_by_scope with these signatures
# and this message. Once merged, delete these two and import them from ..quantiles here (pools re-exports them to
# present.quantile_plots and present.widgets): this is the one place in analysis, present and seeds where a scope
# becomes groups.

def check_scope(scope) -> str:
    """``scope`` if it names a quantile scope (``"local"`` or ``"global"``), else one QuarkError naming both."""
    if not isinstance(scope, str) or scope not in SCOPES:
        raise QuarkError(f"scope must be one of 'local', 'global', got {scope!r}")
    return scope


def assign_by_scope(rewards, prompt_ids, num_quantiles: int, scope: str) -> np.ndarray:
    """:func:`quarklab.assign_quantiles` by scope: ``"local"`` within each prompt's own samples (``prompt_ids``, one
    per row), ``"global"`` over all the rows (``prompt_ids`` unused, may be None)."""
    if check_scope(scope) == "local":
        if prompt_ids is None:
            raise QuarkError("local quantiles need the prompt id of every row (prompt_ids)")
        return assign_quantiles(rewards, num_quantiles, prompt_ids)
    return assign_quantiles(rewards, num_quantiles)

# ---------------------------------------------------------------------------- (end of the MERGE block)


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


def quantile_summary(samples: pd.DataFrame, quantiles, num_quantiles: int, scope: str) -> pd.DataFrame:
    """Per quantile of the assignment ``quantiles`` (one per row of ``samples``: columns ``reward``, ``num_tokens``,
    ``prompt_id``), made for ``scope``: count, mean reward, mean length and threshold (the lowest reward in the
    quantile; for local quantiles the mean over prompts of each prompt's lowest reward in it).

    MERGE: :func:`quarklab.quantiles.quantile_table` computes the same after assigning by itself; it could become
    ``quantile_summary(samples, assign_by_scope(...), K, scope)`` with this function moved beside it.
    """
    check_scope(scope)
    k = check_num_quantiles(num_quantiles)
    rewards = samples["reward"].to_numpy(dtype=np.float64)
    groups = samples["prompt_id"].to_numpy()
    df = pd.DataFrame({"quantile": quantiles, "reward": rewards,
                       "length": samples["num_tokens"].to_numpy(dtype=np.float64), "group": groups})
    out = df.groupby("quantile").agg(count=("reward", "size"), reward=("reward", "mean"), length=("length", "mean"))
    out["threshold"] = (df.groupby(["quantile", "group"])["reward"].min().groupby(level=0).mean()
                        if scope == "local" else df.groupby("quantile")["reward"].min())
    out = out.reindex(range(k))
    out["count"] = out["count"].fillna(0).astype(np.int64)
    return out.reset_index()


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
