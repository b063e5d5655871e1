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


# Scores 200 real tiny-world rows (test split: each post against a summary of every third of its words, so that
# coverage stays below its cap of 1 and sums many weights) and prints the md5 of the float64 array's bytes.
_HASH_SCRIPT = """
import hashlib, quarklab as ql
df = ql.load_prompts("tiny-tldr", "test", limit=200)
summaries = [" " + " ".join(p.split("POST:")[1].split()[::3][:15]) for p in df["prompt"]]
scores = ql.load_reward("tiny-tldr")(list(df["prompt"]), summaries)
print(hashlib.md5(scores.tobytes()).hexdigest(), len(scores), int((scores < 3.0).sum()))
"""


def test_scores_are_the_same_bytes_in_every_process_whatever_the_hash_seed(world):
    # A set of strings iterates in an order set by PYTHONHASHSEED, random per process: before math.fsum these four
    # processes printed four different hashes (issue 18: one ulp apart, then a tie broken the other way).
    import os
    import subprocess
    import sys

    outs = set()
    for hash_seed in ("1", "2", "3", "4"):
        env = {**os.environ, "PYTHONHASHSEED": hash_seed}
        proc = subprocess.run([sys.executable, "-c", _HASH_SCRIPT], capture_output=True, text=True, env=env,
                              timeout=300)
        assert proc.returncode == 0, proc.stderr[-2000:]
        outs.add(proc.stdout.strip())
    assert len(outs) == 1, outs
    _, n, below_cap = outs.pop().split()
    assert n == "200" and int(below_cap) > 20  # many rows sum weights below the coverage cap, where order mattered


def test_a_rows_score_does_not_depend_on_its_batch(reward, world):
    df = ql.load_prompts("tiny-tldr", "test", limit=12)
    prompts = list(df["prompt"])
    summaries = [" " + " ".join(p.split("POST:")[1].split()[i % 3::3][:5 + i]) for i, p in enumerate(prompts)]
    together = reward(prompts, summaries)
    alone = np.array([reward([p], [s])[0] for p, s in zip(prompts, summaries)])
    reversed_ = reward(prompts[::-1], summaries[::-1])[::-1]
    assert together.tobytes() == alone.tobytes() == reversed_.tobytes()
