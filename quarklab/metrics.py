"""Evaluation metrics: dist-n diversity, Spearman rank correlation, Pareto fronts, and the bootstrap interval of a mean.

dist-n follows Quark's ``len(set(ngrams)) / len(ngrams)`` over word tokens: words are
``text.split()`` (any whitespace, case kept), n-grams never cross the boundary between two
texts, and the denominator is the number of n-grams (Quark's released code divides by the
number of words for every n, which gives a lower dist-2 and dist-3).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd

from .checks import check_int
from .errors import QuarkError, finite_1d


LEVEL = 0.95
"""The level of every bootstrap interval quarklab reports."""


def bootstrap_interval(scores, *, seed: int = 0, n_boot: int = 2000, level: float = LEVEL) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of ``scores`` (one per prompt), resampling prompts with
    ``numpy.random.default_rng(seed)``; (nan, nan) for no scores."""
    x = np.asarray(scores, dtype=np.float64)
    if x.ndim != 1 or not np.isfinite(x).all():
        raise QuarkError("bootstrap_interval needs a 1-D list of finite scores")
    if n_boot < 1 or not 0 < level < 1:
        raise QuarkError(f"bootstrap needs n_boot >= 1 and 0 < level < 1, got {n_boot} and {level}")
    if len(x) == 0:
        return float("nan"), float("nan")
    means = x[np.random.default_rng(seed).integers(0, len(x), size=(n_boot, len(x)))].mean(axis=1)
    tail = (1 - level) / 2 * 100
    return float(np.percentile(means, tail)), float(np.percentile(means, 100 - tail))


def distinct_n(texts: Sequence[str], n: int) -> float:
    """Unique word n-grams over all ``texts`` divided by their total count; 0.0 when there are none."""
    _check_n(n)
    total, unique = _ngram_counts(_check_texts(texts), n)
    return unique / total if total else 0.0


def distinct_n_per_group(texts: Sequence[str], groups: Sequence | np.ndarray, n: int) -> float:
    """Mean over groups (e.g. the samples of one prompt) of :func:`distinct_n` within each group.

    Groups whose texts hold no n-gram at all are left out of the mean (dist-n is undefined
    for them); 0.0 when no group has one.
    """
    _check_n(n)
    texts = _check_texts(texts)
    g = np.asarray(groups)
    if g.ndim != 1 or len(g) != len(texts):
        raise QuarkError(f"groups must hold one id per text: got shape {g.shape} for {len(texts)} texts")
    codes, _ = pd.factorize(g)
    if (codes < 0).any():
        raise QuarkError(f"groups hold {int((codes < 0).sum())} missing ids (None or NaN)")
    members: dict[int, list[str]] = {}
    for code, text in zip(codes.tolist(), texts):
        members.setdefault(code, []).append(text)
    scores = [unique / total for total, unique in (_ngram_counts(t, n) for t in members.values()) if total]
    return float(np.mean(scores)) if scores else 0.0


def spearman(x: Sequence[float] | np.ndarray, y: Sequence[float] | np.ndarray) -> float:
    """Spearman rank correlation (average ranks for ties); NaN if ``len < 2`` or either side is constant."""
    a, b = finite_1d(x, "x"), finite_1d(y, "y")
    if len(a) != len(b):
        raise QuarkError(f"spearman needs equal lengths, got {len(a)} and {len(b)}")
    if len(a) < 2:
        return float("nan")
    ra, rb = _average_ranks(a), _average_ranks(b)
    ra, rb = ra - ra.mean(), rb - rb.mean()
    denom = np.sqrt((ra @ ra) * (rb @ rb))
    return float(ra @ rb / denom) if denom > 0 else float("nan")


def pareto_mask(points: np.ndarray, maximize: Sequence[bool]) -> np.ndarray:
    """True for each row of ``points`` (n, d) that no other row dominates.

    Row ``a`` dominates row ``b`` when it is at least as good on every objective and better
    on one (``maximize[j]`` says whether objective ``j`` is maximised or minimised). Equal
    rows do not dominate each other, so duplicates on the front all stay on it. O(n^2 d).
    """
    p = np.asarray(points, dtype=np.float64)
    if p.ndim != 2:
        raise QuarkError(f"points must be a 2-D array (n points, d objectives), got shape {p.shape}")
    if len(maximize) != p.shape[1]:
        raise QuarkError(f"maximize has {len(maximize)} entries for {p.shape[1]} objectives")
    if not np.isfinite(p).all():
        raise QuarkError(f"points hold {int((~np.isfinite(p)).sum())} non-finite values (NaN or inf)")
    p = np.where(np.asarray(maximize, dtype=bool), p, -p)
    mask = np.empty(len(p), dtype=bool)
    chunk = max(1, 2**22 // max(1, p.size))  # bounds the (chunk, n, d) comparison arrays
    for start in range(0, len(p), chunk):
        block = p[start:start + chunk, None, :]
        dominated = ((p[None] >= block).all(-1) & (p[None] > block).any(-1)).any(-1)
        mask[start:start + chunk] = ~dominated
    return mask


def _average_ranks(a: np.ndarray) -> np.ndarray:
    """1-based ranks of ``a``; tied values share the mean of the ranks they span."""
    order = np.argsort(a, kind="stable")
    s = a[order]
    first = np.r_[True, s[1:] != s[:-1]]
    starts = np.flatnonzero(first)
    ends = np.r_[starts[1:], len(a)]
    ranks = np.empty(len(a))
    ranks[order] = ((starts + ends + 1) / 2)[np.cumsum(first) - 1]
    return ranks


def _ngram_counts(texts: list[str], n: int) -> tuple[int, int]:
    """(total, unique) word n-grams over ``texts``, none crossing two texts."""
    grams = [tuple(words[i:i + n]) for words in (t.split() for t in texts) for i in range(len(words) - n + 1)]
    return len(grams), len(set(grams))


def _check_n(n: int) -> None:
    check_int(n, "n", 1)


def _check_texts(texts: Sequence[str]) -> list[str]:
    texts = list(texts)
    bad = [i for i, t in enumerate(texts) if not isinstance(t, str)]
    if bad:
        raise QuarkError(f"texts must be strings: {len(bad)} are not; the first at row {bad[0]}: {texts[bad[0]]!r}")
    return texts
