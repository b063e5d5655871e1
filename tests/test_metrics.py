"""Metrics: dist-n, Spearman rank correlation, Pareto masks, on hand-worked examples."""

from __future__ import annotations

import math

import numpy as np
import pytest

from quarklab.errors import QuarkError
from quarklab.metrics import distinct_n, distinct_n_per_group, pareto_mask, spearman


def test_distinct_n_hand_examples():
    assert distinct_n(["a b a b"], 1) == 0.5
    assert distinct_n(["a b a b"], 2) == pytest.approx(2 / 3)
    # n-grams do not cross texts: bigrams (a,b) (b,c) (a,b) -> 2 unique of 3
    assert distinct_n(["a b c", "a b"], 2) == pytest.approx(2 / 3)
    # case kept, any whitespace splits
    assert distinct_n(["A a\tA\na"], 1) == 0.5


def test_distinct_n_no_ngrams_and_bad_input():
    assert distinct_n([], 1) == 0.0
    assert distinct_n(["one two"], 3) == 0.0
    with pytest.raises(QuarkError, match="n must be"):
        distinct_n(["a"], 0)
    with pytest.raises(QuarkError, match="strings"):
        distinct_n(["a", 3], 1)


def test_distinct_n_per_group_is_mean_over_groups():
    texts = ["a b a b", "x y", "x z", "short"]
    groups = ["p1", "p2", "p2", "p3"]
    # unigrams: p1 2/4, p2 3/4, p3 1/1
    assert distinct_n_per_group(texts, groups, 1) == pytest.approx((0.5 + 0.75 + 1.0) / 3)
    # bigrams: p1 2/3, p2 2/2, p3 has none and is left out
    assert distinct_n_per_group(texts, groups, 2) == pytest.approx((2 / 3 + 1.0) / 2)
    assert distinct_n_per_group(["a", "b"], [0, 1], 2) == 0.0
    with pytest.raises(QuarkError, match="one id per text"):
        distinct_n_per_group(texts, groups[:3], 1)


def test_spearman_with_ties_matches_hand_value():
    # ranks x: 1, 2.5, 2.5, 4; y: 1, 3, 2, 4 -> 4.5 / sqrt(4.5 * 5)
    assert spearman([1, 2, 2, 3], [1, 3, 2, 4]) == pytest.approx(3 / math.sqrt(10))
    assert spearman([1, 3, 2, 4], [1, 2, 2, 3]) == pytest.approx(3 / math.sqrt(10))


def test_spearman_perfect_and_undefined():
    x = np.array([0.3, 10.0, -2.0, 5.0])
    assert spearman(x, x ** 3) == pytest.approx(1.0)
    assert spearman(x, -np.exp(x)) == pytest.approx(-1.0)
    # no ties: 1 - 6 * sum(d^2) / (n (n^2 - 1)) with d = (0, 2, -1, -1) -> 1 - 36/60
    assert spearman([1, 2, 3, 4], [1, 4, 2, 3]) == pytest.approx(0.4)
    assert math.isnan(spearman([1, 1, 1], [1, 2, 3]))
    assert math.isnan(spearman([5.0], [2.0]))
    assert math.isnan(spearman([], []))


def test_spearman_bad_input():
    with pytest.raises(QuarkError, match="equal lengths"):
        spearman([1, 2, 3], [1, 2])
    with pytest.raises(QuarkError, match="non-finite"):
        spearman([1, np.nan], [1, 2])


def test_pareto_mask_with_a_minimised_objective():
    # objectives: reward (maximise), toxicity (minimise)
    points = np.array([
        [0.9, 0.5],  # front: best reward
        [0.7, 0.2],  # front
        [0.7, 0.3],  # dominated by row 1
        [0.2, 0.1],  # front: least toxic
        [0.1, 0.1],  # dominated by row 3
        [0.7, 0.2],  # duplicate of row 1: both stay
        [0.8, 0.6],  # dominated by row 0
    ])
    assert pareto_mask(points, [True, False]).tolist() == [True, True, False, True, False, True, False]
    # maximising both, only the top reward row and the most toxic row survive
    assert pareto_mask(points, [True, True]).tolist() == [True, False, False, False, False, False, True]


def test_pareto_mask_edges_and_bad_input():
    assert pareto_mask(np.zeros((0, 2)), [True, True]).shape == (0,)
    assert pareto_mask(np.ones((3, 2)), [True, False]).all()
    rng = np.random.default_rng(0)
    pts = rng.normal(size=(300, 3))
    mask = pareto_mask(pts, [True, False, True])
    flipped = pts * np.array([1, -1, 1])
    for i in np.flatnonzero(mask):  # nothing dominates a front point
        assert not np.any(np.all(flipped >= flipped[i], axis=1) & np.any(flipped > flipped[i], axis=1))
    with pytest.raises(QuarkError, match="2 entries for 3 objectives"):
        pareto_mask(pts, [True, False])
    with pytest.raises(QuarkError, match="2-D"):
        pareto_mask(np.ones(3), [True])
    with pytest.raises(QuarkError, match="non-finite"):
        pareto_mask(np.array([[1.0, np.nan]]), [True, True])
