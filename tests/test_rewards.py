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


def test_scores_are_rounded_to_the_stated_precision_and_stay_float64():
    import numpy as np

    def fixed(prompts, completions):
        return [2.7183, 0.1, 1 / 3][: len(completions)]

    three = (["p"] * 3, ["a", "b", "c"])
    as_computed = ql.load_reward(fixed)(*three)
    assert as_computed.tolist() == [2.7183, 0.1, 1 / 3]
    single = ql.load_reward(fixed, precision="float32")(*three)
    assert single.dtype == np.float64 and single.tolist() == [float(np.float32(v)) for v in as_computed]
    assert single[1] != 0.1 and abs(single[1] - 0.1) < 2 ** -27  # 0.1 has no exact float32: the nearest one
    half = ql.load_reward(fixed, precision="float16")(*three)
    assert half[0] == 1392 * 2 ** -9 == 2.71875  # 2.7183 / 2**-9 = 1391.77: fp16's step between 2 and 4 is 2**-9
    assert half[2] == 1365 * 2 ** -12  # (1/3) / 2**-12 = 1365.33: the step between 1/4 and 1/2 is 2**-12


def test_a_checked_reward_keeps_its_precision_unless_another_is_asked_for():
    r = ql.load_reward("tiny-tldr", precision="float16")
    assert r.precision == "float16" and ql.load_reward(r) is r
    wider = ql.load_reward(r, precision="float64")
    assert wider.precision == "float64" and wider.fn is r.fn and r.precision == "float16"
    assert repr(r) == "CheckedReward('tiny-tldr', precision='float16')" and repr(wider) == "CheckedReward('tiny-tldr')"


def test_a_run_config_loads_its_reward_at_its_precision(world):
    import numpy as np

    from quarklab.config import preset
    from quarklab.rewards import config_reward

    prompts = ql.load_prompts("tiny-tldr", "test", limit=8)["prompt"].tolist()
    summaries = [" " + " ".join(p.split("POST:")[1].split()[:9]) for p in prompts]
    exact = ql.load_reward("tiny-tldr")(prompts, summaries)
    for precision, dtype in [("float64", np.float64), ("float32", np.float32), ("float16", np.float16)]:
        reward = config_reward(preset("tiny", reward_precision=precision))
        assert reward.precision == precision
        assert reward(prompts, summaries).tolist() == exact.astype(dtype).astype(np.float64).tolist()


@pytest.mark.parametrize("precision, values, message", [
    ("float16", [1.0, 7e4],
     r"'<lambda>' gave 70000 \(row 1\), beyond float16's range \(±65504\): use a wider reward precision"),
    ("bfloat16", [1.0, 2.0], "reward precision must be one of 'float64', 'float32', 'float16', got 'bfloat16'"),
])
def test_a_score_the_precision_cannot_hold_or_an_unknown_precision_is_one_error(precision, values, message):
    with pytest.raises(ql.QuarkError, match=message):
        ql.load_reward(lambda p, c: values, precision=precision)(["p", "q"], ["a", "b"])
