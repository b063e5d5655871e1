"""quarklab.rewards: any callable is a reward; every reward is checked (length, NaN, inf, numbers) and batched;
an unknown kind or a missing model is one error."""

from __future__ import annotations

import pytest

import quarklab as ql


def test_a_python_callable_is_a_reward_scored_in_batches():
    seen = []

    def length(prompts, completions):
        seen.append(len(completions))
        return [len(c) for c in completions]

    r = ql.CheckedReward(length, batch_size=2)
    assert r(["p", "q", "r"], ["ab", "abcd", "a"]).tolist() == [2.0, 4.0, 1.0] and seen == [2, 1]
    assert ql.load_reward(length).name == "length" and ql.load_reward(r) is r


@pytest.mark.parametrize("fn, message", [
    (lambda p, c: [float("nan")] * len(c), "non-finite"),
    (lambda p, c: [1.0, float("inf")][: len(c)], "non-finite"),
    (lambda p, c: [1.0], "returned 1 values for 2"),
    (lambda p, c: ["a", "b"], "not a list of numbers"),
])
def test_a_bad_reward_gives_one_clear_error(fn, message):
    with pytest.raises(ql.QuarkError, match=message):
        ql.load_reward(fn)(["p", "q"], ["a", "b"])


def test_mismatched_inputs_and_unknown_kinds_are_errors():
    with pytest.raises(ql.QuarkError, match="2 prompts but 1 completions"):
        ql.load_reward("tiny-tldr")(["a", "b"], ["c"])
    with pytest.raises(ql.QuarkError, match="unknown reward kind"):
        ql.load_reward("tiny-tldr", kind="magic")
    with pytest.raises(ql.QuarkError, match="does not exist"):
        ql.load_reward("./no/such/reward-model")
