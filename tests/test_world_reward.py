"""quarklab.world.reward: the offline TL;DR reward ("tiny-tldr"), deterministic, from the text alone."""

from __future__ import annotations

import numpy as np
import pytest

import quarklab as ql

PROMPT = ("SUBREDDIT: r/relationships\nTITLE: My [25F] boyfriend [27M] of 3 years forgot my birthday\n"
          "POST: My boyfriend and I have been together for 3 years. Last week he forgot my birthday and "
          "went out with friends instead. I feel really hurt about it. Should I break up?\nTL;DR:")


@pytest.fixture(scope="module")
def reward():
    return ql.load_reward("tiny-tldr")


def test_own_reference_beats_another_posts_reference_on_real_tldr(reward, real_tldr):
    rng = np.random.default_rng(0)
    labels = real_tldr["label"].tolist()
    shift = rng.integers(1, len(labels), size=len(labels))
    others = [labels[(i + s) % len(labels)] for i, s in enumerate(shift)]
    own = reward(real_tldr["prompt"], labels)
    other = reward(real_tldr["prompt"], others)
    assert (own > other).mean() >= 0.90  # README: 97.9% with this seed


def test_reward_prefers_grounded_inclusive_unrepeated_summaries(reward):
    good = "boyfriend of 3 years forgot my birthday and went out with friends, I feel hurt. should I break up?"
    terse = "boyfriend forgot my birthday."
    made_up = "my landlord kept my deposit of $500 after I moved out."
    repeated = "boyfriend forgot birthday boyfriend forgot birthday boyfriend forgot birthday"
    scores = reward([PROMPT] * 5, [good, terse, made_up, repeated, ""])
    assert scores[0] > scores[1] > scores[2]
    assert scores[3] < scores[1]
    assert scores[4] == -1.0
    copied = PROMPT.split("POST: ")[1].split("\nTL;DR")[0] * 2  # a copy of the post is no summary
    assert reward([PROMPT], [copied])[0] < scores[0]


def test_reward_is_deterministic_and_works_on_free_text(reward):
    a = reward([PROMPT, "just some text about cats"], ["forgot birthday", "cats"])
    b = ql.load_reward("tiny-tldr")([PROMPT, "just some text about cats"], ["forgot birthday", "cats"])
    assert np.array_equal(a, b) and a.dtype == np.float64
