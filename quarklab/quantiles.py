"""Reward quantiles: which ``_QUANTILE_TOKEN_k_`` each sample in the pool gets.

Quantile 0 holds the BEST (highest-reward) samples, quantile ``K-1`` the worst.

Global (``groups=None``), as the official Quark code: sort every reward in the pool
descending and cut the order into ``K`` slices of ``n // K`` samples; the remainder
(``n % K`` samples, the lowest rewards) joins the last quantile. The sample at position
``i`` of the descending order gets quantile ``min(i // (n // K), K - 1)``, so the counts are
``n // K`` for quantiles ``0..K-2`` and ``n // K + n % K`` for quantile ``K-1``.

Local (``groups`` = one id per row, e.g. the prompt id), as ALT: the same rule applied to
each group's own samples independently, so every prompt spreads its samples over the
quantiles however high or low its rewards are compared with other prompts.

:func:`assign_by_scope` takes the scope by name (``"local"`` or ``"global"``, :data:`SCOPES`), as a run's
``quantile_scope`` gives it: the one place a scope becomes groups.

Rules shared by both:

* Ties: the sort is stable, so equal rewards keep their row order (the sample order of the pool)
  and the earlier row gets the better (lower) quantile. The same input always gives the same output.
  "Equal" means equal as given: a run's rewards come rounded to its ``reward_precision``
  (:func:`quarklab.rewards.round_rewards`; "float32" by default, "float16" as ALT's fp16 reward
  model), so two completions whose scores differ only by float64 rounding error (an ulp, from an
  order of additions) are one tie, ordered by row, and not an order that flips with that error. At
  "float64" such scores stay distinct and the higher one wins. Two scores that straddle a rounding
  boundary of the precision stay one step apart either way: rounding makes near-ties rare, exact
  scores (the same bits in every process and batch) make them impossible.
* Fewer samples than quantiles (``n < K``, for the pool or for one group): the ``n`` samples
  take quantiles ``0..n-1`` in descending reward order; nothing goes beyond ``n-1``. One
  formula covers both cases: ``min(i // max(n // K, 1), K - 1)``.
"""

from __future__ import annotations

import typing
from typing import Sequence

import numpy as np
import pandas as pd

from .checks import check_int, check_num_quantiles
from .config import QuantileScope
from .errors import QuarkError, finite_1d

SCOPES: tuple[str, ...] = typing.get_args(QuantileScope)
"""The quantile scopes: "local" (within each prompt's own samples, ALT) and "global" (over the whole pool, Quark)."""


def assign_quantiles(rewards: Sequence[float] | np.ndarray, num_quantiles: int,
                     groups: Sequence | np.ndarray | None = None) -> np.ndarray:
    """Return the quantile (int64, 0 = highest rewards) of each row; local per group when ``groups`` is given."""
    k = check_num_quantiles(num_quantiles)
    r = _as_rewards(rewards)
    codes = np.zeros(len(r), dtype=np.int64) if groups is None else _factorize(groups, len(r))[0]
    # Position in the group's descending order; the stable sort keeps tied rows in row order.
    position = _rank_within(codes, np.lexsort((-r, codes)))
    slice_size = np.maximum(np.bincount(codes) // k, 1)[codes]
    return np.minimum(position // slice_size, k - 1)


def check_scope(scope) -> str:
    """``scope`` if it names a quantile scope (:data:`SCOPES`), else one QuarkError naming the valid ones."""
    if not isinstance(scope, str) or scope not in SCOPES:
        raise QuarkError(f"scope must be one of {', '.join(map(repr, SCOPES))}, got {scope!r}")
    return scope


def assign_by_scope(rewards: Sequence[float] | np.ndarray, prompt_ids: Sequence | np.ndarray | None,
                    num_quantiles: int, scope: str) -> np.ndarray:
    """:func:`assign_quantiles` by scope: ``"local"`` within each prompt's own samples (``prompt_ids``, one per
    row), ``"global"`` over all the rows (``prompt_ids`` unused, may be None)."""
    if check_scope(scope) == "local":
        if prompt_ids is None:
            raise QuarkError("local quantiles need the prompt id of every row (prompt_ids)")
        return assign_quantiles(rewards, num_quantiles, prompt_ids)
    return assign_quantiles(rewards, num_quantiles)


def quantile_thresholds(rewards: Sequence[float] | np.ndarray, quantiles: Sequence[int] | np.ndarray,
                        num_quantiles: int) -> np.ndarray:
    """Return the minimum reward in each of the ``num_quantiles`` quantiles (NaN for an empty one)."""
    k = check_num_quantiles(num_quantiles)
    r = _as_rewards(rewards)
    q = _as_quantiles(quantiles, len(r), k)
    out = np.full(k, np.inf)
    np.minimum.at(out, q, r)
    out[np.bincount(q, minlength=k) == 0] = np.nan
    return out


def select_per_quantile(quantiles: Sequence[int] | np.ndarray, groups: Sequence | np.ndarray | None,
                        per_quantile: int, seed: int, prefer: Sequence[bool] | np.ndarray | None = None
                        ) -> np.ndarray:
    """Return sorted row indices: up to ``per_quantile`` rows drawn at random for each (group, quantile).

    ALT's "2 drawn per quantile per prompt". Draws are uniform without replacement and
    deterministic given ``seed``; with ``prefer`` (one bool per row, e.g. "the completion finished
    before the token limit", as ALT) the preferred rows of a (group, quantile) are drawn first. A row's random key comes from the seed, its group id, its
    quantile and its rank among that (group, quantile)'s rows, so one group's draw does not
    change when other groups' rows are added, removed or reordered. ``groups=None`` treats
    all rows as one group.
    """
    check_int(per_quantile, "per_quantile", 1)
    check_int(seed, "seed")
    q = _as_quantiles(quantiles, None, None)
    n = len(q)
    if groups is None:
        codes, group_hash = np.zeros(n, dtype=np.int64), np.zeros(n, dtype=np.uint64)
    else:
        codes, uniques = _factorize(groups, n)
        group_hash = pd.util.hash_array(uniques)[codes]
    pair = codes * (int(q.max(initial=0)) + 1) + q
    rank = _rank_within(pair, np.argsort(pair, kind="stable"))
    key = _mix(group_hash ^ _mix(np.array([seed % 2**64], dtype=np.uint64)))
    key = _mix(_mix(key ^ q.astype(np.uint64)) ^ rank.astype(np.uint64))
    first = np.zeros(n, dtype=bool) if prefer is None else ~_as_flags(prefer, n)
    return np.flatnonzero(_rank_within(pair, np.lexsort((key, first, pair))) < per_quantile)


def _as_flags(flags, n: int) -> np.ndarray:
    f = np.asarray(flags)
    if f.shape != (n,) or f.dtype != bool:
        raise QuarkError(f"prefer must be one bool per row ({n}), got {f.dtype} of shape {f.shape}")
    return f


def _rank_within(labels: np.ndarray, order: np.ndarray) -> np.ndarray:
    """Each row's 0-based rank among the rows with its label, in the order ``order`` (which sorts by label)."""
    sorted_labels = labels[order]
    first = np.r_[True, sorted_labels[1:] != sorted_labels[:-1]] if len(order) else np.zeros(0, bool)
    starts = np.flatnonzero(first)
    block_start = starts[np.cumsum(first) - 1]
    rank = np.empty(len(order), dtype=np.int64)
    rank[order] = np.arange(len(order)) - block_start
    return rank


def _mix(x: np.ndarray) -> np.ndarray:
    """The splitmix64 finaliser on a uint64 array (wrapping arithmetic)."""
    x = x + np.uint64(0x9E3779B97F4A7C15)
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def _as_rewards(rewards) -> np.ndarray:
    return finite_1d(rewards, "rewards")


def _as_quantiles(quantiles, n: int | None, k: int | None) -> np.ndarray:
    """``quantiles`` as a 1-D int64 array of non-negative labels (below ``k`` and of length ``n`` if given)."""
    q = np.asarray(quantiles)
    if q.ndim != 1:
        raise QuarkError(f"quantiles must be 1-D (one per row), got shape {q.shape}")
    if q.size and q.dtype.kind not in "iu":
        raise QuarkError(f"quantiles must be integers, got dtype {q.dtype}")
    q = q.astype(np.int64)
    if n is not None and len(q) != n:
        raise QuarkError(f"{len(q)} quantiles for {n} rewards")
    bad = (q < 0) if k is None else (q < 0) | (q >= k)
    if bad.any():
        first = int(np.flatnonzero(bad)[0])
        limit = ">= 0" if k is None else f"0..{k - 1}"
        raise QuarkError(f"{int(bad.sum())} quantiles are outside {limit}; the first at row {first}: {q[first]}")
    return q


def _factorize(groups, n: int) -> tuple[np.ndarray, np.ndarray]:
    """(int64 code per row, unique ids) for ``n`` group ids; a QuarkError for a wrong shape or missing id."""
    g = np.asarray(groups)
    if g.ndim != 1:
        raise QuarkError(f"groups must be 1-D (one hashable id per row), got shape {g.shape}")
    if len(g) != n:
        raise QuarkError(f"{len(g)} group ids for {n} rows")
    codes, uniques = pd.factorize(g)
    missing = codes < 0
    if missing.any():
        raise QuarkError(f"groups hold {int(missing.sum())} missing ids (None or NaN); "
                         f"the first at row {int(np.flatnonzero(missing)[0])}")
    return codes.astype(np.int64), np.asarray(uniques)


def quantile_table(samples, num_quantiles: int, scope: str = "local", quantiles=None):
    """Per quantile of ``samples`` (columns ``reward``, ``num_tokens``, ``prompt_id``), assigned by ``scope`` (or the
    assignment ``quantiles`` made for that scope, one per row): count, mean reward, mean length and threshold (the
    lowest reward in the quantile; for local quantiles the mean over prompts of each prompt's lowest reward in it)."""
    import pandas as pd

    rewards = samples["reward"].to_numpy(dtype=np.float64)
    groups = samples["prompt_id"].to_numpy()
    if quantiles is None:
        q = assign_by_scope(rewards, groups, num_quantiles, scope)
    else:
        check_scope(scope)
        q = _as_quantiles(quantiles, len(rewards), check_num_quantiles(num_quantiles))
    df = pd.DataFrame({"quantile": q, "reward": rewards, "length": samples["num_tokens"].to_numpy(dtype=np.float64),
                       "group": groups})
    out = df.groupby("quantile").agg(count=("reward", "size"), reward=("reward", "mean"), length=("length", "mean"))
    out["threshold"] = (df.groupby(["quantile", "group"])["reward"].min().groupby(level=0).mean()
                        if scope == "local" else df.groupby("quantile")["reward"].min())
    out = out.reindex(range(num_quantiles))
    out["count"] = out["count"].fillna(0).astype(np.int64)
    return out.reset_index()
