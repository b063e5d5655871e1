"""Reward quantiles: the global Quark rule, the local (per-prompt) ALT rule, ties, and draws per quantile."""

from __future__ import annotations

import numpy as np
import pytest

from quarklab.errors import QuarkError
from quarklab.quantiles import assign_quantiles, quantile_thresholds, select_per_quantile


def _ordered(rewards: np.ndarray, q: np.ndarray) -> bool:
    """Every reward in quantile j is >= every reward in quantile j+1 (over the quantiles present)."""
    present = np.unique(q)
    return all(rewards[q == a].min() >= rewards[q == b].max() for a, b in zip(present[:-1], present[1:]))


def test_global_hand_example_with_remainder_in_last():
    rewards = [0.5, 0.9, 0.1, 0.7, 0.3, 0.8, 0.2]  # descending: .9 .8 | .7 .5 | .3 .2 .1
    q = assign_quantiles(rewards, 3)
    assert q.dtype == np.int64
    assert q.tolist() == [1, 0, 2, 1, 2, 0, 2]
    assert np.bincount(q).tolist() == [2, 2, 3]


def test_global_exact_formula_on_sorted_input():
    n, k = 11, 4  # slices of 2, the last gets 2 + 3
    q = assign_quantiles(np.arange(n, 0, -1.0), k)
    assert q.tolist() == [min(i // (n // k), k - 1) for i in range(n)]
    assert q.tolist() == [0, 0, 1, 1, 2, 2, 3, 3, 3, 3, 3]


def test_single_quantile_and_empty():
    assert assign_quantiles([3.0, 1.0, 2.0], 1).tolist() == [0, 0, 0]
    empty = assign_quantiles([], 3)
    assert empty.dtype == np.int64 and empty.shape == (0,)
    assert assign_quantiles([], 3, groups=[]).shape == (0,)


def test_local_differs_from_global_when_one_prompt_is_all_high():
    rewards = np.array([10.0, 11.0, 12.0, 13.0, 0.0, 1.0, 2.0, 3.0])
    groups = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    glob = assign_quantiles(rewards, 2)
    local = assign_quantiles(rewards, 2, groups)
    assert glob.tolist() == [0, 0, 0, 0, 1, 1, 1, 1]
    assert local.tolist() == [1, 1, 0, 0, 1, 1, 0, 0]
    for g in (0, 1):  # the all-high prompt still spreads over every quantile
        assert sorted(local[groups == g].tolist()) == [0, 0, 1, 1]


def test_local_groups_as_strings_and_noncontiguous_ids():
    rewards = np.array([1.0, 5.0, 2.0, 9.0, 3.0, 4.0, 8.0, 7.0, 0.0])
    ids = np.array([70, 3, 70, 3, 70, 3, 1000, 1000, 1000])
    names = np.array([f"prompt-{i}" for i in ids])
    expected = [2, 1, 1, 0, 0, 2, 0, 1, 2]
    assert assign_quantiles(rewards, 3, ids).tolist() == expected
    assert assign_quantiles(rewards, 3, names).tolist() == expected
    assert assign_quantiles(rewards.tolist(), 3, names.tolist()).tolist() == expected


def test_ties_are_deterministic_and_earlier_row_wins():
    rewards = [1.0, 1.0, 1.0, 1.0, 1.0, 1.0]
    q = assign_quantiles(rewards, 3)
    assert q.tolist() == [0, 0, 1, 1, 2, 2]
    assert assign_quantiles(rewards, 3).tolist() == q.tolist()
    tied = assign_quantiles([2.0, 5.0, 2.0, 2.0], 2, groups=["a", "a", "a", "a"])
    assert tied.tolist() == [0, 0, 1, 1]  # 5.0 first, then the earliest 2.0


def test_scores_an_ulp_apart_take_the_same_quantiles_either_way_round_once_rounded_to_float32():
    # Issue 18: two completions of one prompt whose reward is the same number, computed in two orders of addition,
    # came out one float64 ulp apart, the larger one in row 0 in one process and in row 1 in another.
    from quarklab.rewards import round_rewards

    x = 2.7
    y = np.nextafter(x, np.inf)  # one ulp above: 2.7000000000000006
    groups = ["post"] * 4
    one_way, other_way = np.array([x, y, 1.0, 0.5]), np.array([y, x, 1.0, 0.5])
    for rewards in (one_way, other_way):
        assert round_rewards(rewards, "float32")[:2].tolist() == [float(np.float32(2.7))] * 2  # one tie ...
        assert assign_quantiles(round_rewards(rewards, "float32"), 4, groups).tolist() == [0, 1, 2, 3]  # ... by row
    # At float64 (what runs before reward_precision used) the ulp decides: the quantiles of rows 0 and 1 swap.
    assert assign_quantiles(round_rewards(one_way, "float64"), 4, groups).tolist() == [1, 0, 2, 3]
    assert assign_quantiles(round_rewards(other_way, "float64"), 4, groups).tolist() == [0, 1, 2, 3]


def test_rounding_cannot_join_two_scores_that_straddle_a_rounding_boundary():
    # The trade-off: rounding makes an ulp-apart pair a tie unless the pair sits on a boundary between two float32
    # values. 1 + 2**-24 is halfway between 1 and the next float32, 1 + 2**-23: ties to even rounds it down to 1,
    # while the float64 just above it rounds up. Such a pair still swaps quantiles with the ulp (the fix for that is
    # a reward whose scores are the same bits in every process: quarklab.world.reward, ValueHeadReward).
    from quarklab.rewards import round_rewards

    m = 1 + 2 ** -24
    above = np.nextafter(m, np.inf)
    assert round_rewards(np.array([m, above]), "float32").tolist() == [1.0, 1 + 2 ** -23]
    assert assign_quantiles(round_rewards(np.array([m, above]), "float32"), 2).tolist() == [1, 0]
    assert assign_quantiles(round_rewards(np.array([above, m]), "float32"), 2).tolist() == [0, 1]


def test_float16_makes_scores_a_thousandth_apart_one_tie():
    # ALT's fp16 reward model: steps of 2**-9 between 2 and 4; 2.703 * 512 = 1383.9 and 2.704 * 512 = 1384.4 both
    # round to 1384 / 512 = 2.703125, so the two are one tie, ordered by row; float32 keeps them apart.
    from quarklab.rewards import round_rewards

    rewards = np.array([2.703, 2.704, 2.0])
    assert round_rewards(rewards, "float16").tolist() == [2.703125, 2.703125, 2.0]
    assert assign_quantiles(round_rewards(rewards, "float16"), 3).tolist() == [0, 1, 2]
    assert assign_quantiles(round_rewards(rewards, "float32"), 3).tolist() == [1, 0, 2]


def test_fewer_samples_than_quantiles():
    assert assign_quantiles([0.2, 0.9], 5).tolist() == [1, 0]
    q = assign_quantiles([0.2, 0.9, 0.5, 0.1, 0.4, 0.3], 4, groups=[0, 0, 0, 1, 1, 1])
    # each group of 3 takes quantiles 0..2 by descending reward; quantile 3 stays empty
    assert q.tolist() == [2, 0, 1, 2, 0, 1]
    assert q.max() == 2


@pytest.mark.parametrize("seed", [0, 1, 2, 3, 4])
def test_random_counts_and_ordering(seed):
    rng = np.random.default_rng(seed)
    for _ in range(20):
        n, k = int(rng.integers(1, 60)), int(rng.integers(1, 9))
        rewards = rng.integers(0, 6, size=n).astype(float)  # many ties
        q = assign_quantiles(rewards, k)
        assert _ordered(rewards, q)
        counts = np.bincount(q, minlength=k)
        if n >= k:
            assert counts.tolist() == [n // k] * (k - 1) + [n // k + n % k]
        else:
            assert counts.tolist() == [1] * n + [0] * (k - n)

        groups = rng.choice(np.array(["x", "y", "z", "w"]), size=n)
        local = assign_quantiles(rewards, k, groups)
        for g in np.unique(groups):
            rows = groups == g
            sub = assign_quantiles(rewards[rows], k)
            assert local[rows].tolist() == sub.tolist()  # local = the global rule inside each group
            assert _ordered(rewards[rows], local[rows])


@pytest.mark.parametrize("k", [0, -1, 2.0, True, "3", None])
def test_bad_num_quantiles(k):
    with pytest.raises(QuarkError, match="num_quantiles"):
        assign_quantiles([1.0, 2.0], k)


def test_nonfinite_rewards_name_count_and_first_row():
    with pytest.raises(QuarkError, match=r"2 non-finite.*row 1"):
        assign_quantiles([1.0, np.nan, 2.0, np.inf], 2)


def test_bad_shapes_and_lengths():
    with pytest.raises(QuarkError, match="1-D"):
        assign_quantiles([[1.0, 2.0], [3.0, 4.0]], 2)
    with pytest.raises(QuarkError, match="group ids for 3 rows"):
        assign_quantiles([1.0, 2.0, 3.0], 2, groups=[0, 1])
    with pytest.raises(QuarkError, match="numbers"):
        assign_quantiles(["a", "b"], 2)
    with pytest.raises(QuarkError, match="missing"):
        assign_quantiles([1.0, 2.0], 2, groups=["a", None])


def test_quantile_thresholds():
    rewards = np.array([0.5, 0.9, 0.1, 0.7, 0.3, 0.8, 0.2])
    q = assign_quantiles(rewards, 3)
    assert quantile_thresholds(rewards, q, 3).tolist() == [0.8, 0.5, 0.1]
    thresholds = quantile_thresholds([0.2, 0.9], [1, 0], 4)
    assert thresholds[:2].tolist() == [0.9, 0.2] and np.isnan(thresholds[2:]).all()
    with pytest.raises(QuarkError, match="outside 0..2"):
        quantile_thresholds([1.0, 2.0], [0, 3], 3)
    with pytest.raises(QuarkError, match="2 quantiles for 3 rewards"):
        quantile_thresholds([1.0, 2.0, 3.0], [0, 1], 3)


def _pool(seed: int = 0):
    rng = np.random.default_rng(seed)
    groups = np.repeat(np.array([5, 17, 2, 40]), [12, 9, 3, 20])
    rewards = rng.normal(size=len(groups))
    return assign_quantiles(rewards, 4, groups), groups


def test_select_per_quantile_caps_and_covers_every_pair():
    q, groups = _pool()
    chosen = select_per_quantile(q, groups, 2, seed=0)
    assert np.all(np.diff(chosen) > 0)  # sorted, no repeats
    pairs = set(zip(groups.tolist(), q.tolist()))
    picked = list(zip(groups[chosen].tolist(), q[chosen].tolist()))
    assert set(picked) == pairs
    for pair in pairs:
        available = sum(p == pair for p in zip(groups.tolist(), q.tolist()))
        assert picked.count(pair) == min(2, available)


def test_select_per_quantile_seeded_and_independent_of_other_groups():
    q, groups = _pool()
    a = select_per_quantile(q, groups, 2, seed=0)
    assert a.tolist() == select_per_quantile(q, groups, 2, seed=0).tolist()
    assert a.tolist() != select_per_quantile(q, groups, 2, seed=1).tolist()
    # moving another group's rows in front leaves group 40's draw unchanged
    keep = groups == 40
    order = np.r_[np.flatnonzero(~keep)[::-1], np.flatnonzero(keep)]
    b = select_per_quantile(q[order], groups[order], 2, seed=0)
    assert sorted(order[b][groups[order][b] == 40].tolist()) == a[groups[a] == 40].tolist()
    # group ids may be strings; groups=None treats the pool as one group
    assert len(select_per_quantile(q, groups.astype(str), 2, seed=0)) == len(a)
    assert np.bincount(q[select_per_quantile(q, None, 3, seed=0)]).tolist() == [3, 3, 3, 3]


def test_select_per_quantile_draws_uniformly():
    q, groups = np.zeros(4, dtype=np.int64), np.zeros(4, dtype=np.int64)
    hits = np.zeros(4)
    for seed in range(400):
        hits[select_per_quantile(q, groups, 1, seed)] += 1
    assert hits.min() > 60  # each of 4 rows near 100 of 400 draws


def test_select_per_quantile_prefers_finished_rows_as_alt():
    """ALT draws completions that ended before the token limit first; the others only fill up a short pair."""
    q, groups = _pool()
    finished = np.random.default_rng(1).random(len(q)) < 0.4
    chosen = select_per_quantile(q, groups, 2, seed=0, prefer=finished)
    uniform = select_per_quantile(q, groups, 2, seed=0)
    assert len(chosen) == len(uniform) and finished[chosen].mean() > finished[uniform].mean()
    for g, k in set(zip(groups.tolist(), q.tolist())):
        pair = (groups == g) & (q == k)
        taken = np.isin(np.flatnonzero(pair), chosen)
        assert finished[pair][taken].sum() == min(2, finished[pair].sum())  # every finished row it could take
    hits = np.zeros(4)  # still random among the finished
    for seed in range(200):
        hits[select_per_quantile(np.zeros(4, dtype=np.int64), None, 1, seed, prefer=np.array([1, 1, 0, 0], bool))] += 1
    assert hits[2:].sum() == 0 and hits[:2].min() > 60
    with pytest.raises(QuarkError, match="one bool per row"):
        select_per_quantile([0, 1], [0, 0], 1, seed=0, prefer=[1, 0])


@pytest.mark.parametrize("per_quantile", [0, -2, 1.5])
def test_select_per_quantile_bad_count(per_quantile):
    with pytest.raises(QuarkError, match="per_quantile"):
        select_per_quantile([0, 1], [0, 0], per_quantile, seed=0)


def test_select_per_quantile_bad_input():
    with pytest.raises(QuarkError, match="group ids for 2 rows"):
        select_per_quantile([0, 1], [0], 1, seed=0)
    with pytest.raises(QuarkError, match="integers"):
        select_per_quantile([0.5, 1.0], [0, 0], 1, seed=0)
    with pytest.raises(QuarkError, match="seed"):
        select_per_quantile([0, 1], [0, 0], 1, seed="a")


def _random_layout(rng):
    """Rewards with heavy ties, group ids interleaved in random row order, and K, for one property case."""
    sizes = rng.integers(1, 41, size=int(rng.integers(1, 9)))
    ids = rng.permutation(np.repeat(rng.choice(1000, size=len(sizes), replace=False), sizes))  # interleaved rows
    levels = int(rng.integers(1, 6))  # 1 level: every reward tied; 5: still many ties
    rewards = rng.integers(0, levels, size=len(ids)) * 0.5 - 1.0
    return rewards, ids, int(rng.integers(1, 9))


@pytest.mark.parametrize("seed", range(10))
def test_property_local_quantiles_over_random_group_layouts(seed):
    rng = np.random.default_rng(1000 + seed)
    for _ in range(50):
        rewards, ids, k = _random_layout(rng)
        q = assign_quantiles(rewards, k, ids)
        assert q.dtype == np.int64 and q.shape == rewards.shape
        for g in np.unique(ids):
            rows = np.flatnonzero(ids == g)  # in row order
            r, qg, n = rewards[rows], q[rows], len(rows)
            # the documented counts: n // K in 0..K-2 and the rest in K-1; with n < K, one each in 0..n-1
            want = [n // k] * (k - 1) + [n - (k - 1) * (n // k)] if n >= k else [1] * n + [0] * (k - n)
            assert np.bincount(qg, minlength=k).tolist() == want
            # a higher reward never gets a worse (higher) quantile than a lower reward
            hi, lo = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
            assert not ((r[hi] > r[lo]) & (qg[hi] > qg[lo])).any()
            # tied rewards keep row order: the earlier row never gets the worse quantile
            assert not ((r[hi] == r[lo]) & (hi < lo) & (qg[hi] > qg[lo])).any()
            # and so each row's quantile is the rule on its place in the stable descending order
            order = sorted(range(n), key=lambda i: -r[i])
            place = np.empty(n, dtype=int)
            place[order] = np.arange(n)
            assert qg.tolist() == np.minimum(place // max(n // k, 1), k - 1).tolist()
        # a group's quantiles depend on its own rows only, not on how other groups interleave with it
        regrouped = np.concatenate([np.flatnonzero(ids == g) for g in rng.permutation(np.unique(ids))])
        assert assign_quantiles(rewards[regrouped], k, ids[regrouped]).tolist() == q[regrouped].tolist()


def test_assign_by_scope_is_local_per_prompt_or_global_and_names_the_valid_scopes():
    from quarklab.quantiles import SCOPES, assign_by_scope

    rewards = np.array([0.5, 0.9, 0.1, 0.7, 0.3, 0.8, 0.2, 0.4])
    prompts = np.array(["a", "b", "a", "b", "a", "b", "a", "b"])
    assert SCOPES == ("local", "global")
    assert assign_by_scope(rewards, prompts, 2, "local").tolist() == assign_quantiles(rewards, 2, prompts).tolist()
    assert assign_by_scope(rewards, prompts, 2, "global").tolist() == assign_quantiles(rewards, 2).tolist()
    assert assign_by_scope(rewards, None, 2, "global").tolist() == assign_quantiles(rewards, 2).tolist()
    for bad in ("per-prompt", None, "Local"):
        with pytest.raises(QuarkError, match=r"scope must be one of 'local', 'global', got "):
            assign_by_scope(rewards, prompts, 2, bad)
    with pytest.raises(QuarkError, match="prompt_ids"):
        assign_by_scope(rewards, None, 2, "local")
