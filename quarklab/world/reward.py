"""The offline TL;DR reward: a deterministic score of summary quality computed from the text.

A good TL;DR covers the salient facts of the post, says nothing the post does not, does
not repeat itself, and is short. The score is

    3.0 * coverage + 1.5 * grounding + 0.5 * fluency - 2.0 * repetition - overlength - 1.0 * empty

* coverage: the salience-weighted share of the post's key content words (title words count
  double, frequent words more) that the summary mentions: rewards inclusive summaries, and
  so, like real reward models, longer ones;
* grounding: the share of the summary's content words that appear in the post;
* fluency: ``tanh(words / 12)``, a small bonus for a summary of a few words over a fragment;
* repetition: the share of repeated word bigrams;
* overlength: 0.1 per word past 48 (a summary, not a copy of the post).

Words are lower-cased, stop words dropped, and light suffix stripping makes "borrowed" and
"borrow" one word. Nothing is random and nothing looks up an answer, and the score of a row is the same float,
to the bit, in every process and whatever else is in the batch (sums over sets of words are exact, ``math.fsum``,
so the order a set iterates in, which changes with PYTHONHASHSEED, does not matter). On 1,945 real held-out
Reddit TL;DR posts, a post's own reference summary outscores another random post's
reference summary in the share of pairs stated in the README.
"""

from __future__ import annotations

import math
import re
from collections import Counter

import numpy as np

from ..tldr import parse

STOPWORDS = frozenset("""
a about above after again against all am an and any are as at be because been before being
below between both but by can could did do does doing don down during each few for from further
had has have having he her here hers herself him himself his how i if in into is it its itself
just me more most my myself no nor not now of off on once only or other our ours ourselves out
over own same she should so some such than that the their theirs them themselves then there these
they this those through to too under until up very was we were what when where which while who
whom why will with would you your yours yourself yourselves i'm im it's dont don't didn't doesn't
can't cant won't wont i've ive i'd id i'll ill get got really also even still like one
tl dr tldr subreddit title post r
""".split())

_WORD = re.compile(r"[a-z0-9$][a-z0-9$,]*[a-z0-9]|[a-z0-9]")
_SUFFIXES = ("ing", "ed", "es", "ly", "s")


def _stem(word: str) -> str:
    for suf in _SUFFIXES:
        if len(word) > len(suf) + 3 and word.endswith(suf):
            return word[: -len(suf)]
    return word


def words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def content_stems(text: str) -> list[str]:
    return [_stem(w) for w in words(text) if w not in STOPWORDS]


class TinyTLDRReward:
    """``(prompts, completions) -> np.ndarray`` of summary-quality scores (higher is better)."""

    name = "tiny-tldr"
    top_k = 12  # how many of the post's most salient words a perfect summary would cover

    def __init__(self):
        self._cache: dict[str, tuple[dict[str, float], float]] = {}

    def _salience(self, prompt: str) -> tuple[dict[str, float], float]:
        hit = self._cache.get(prompt)
        if hit is None:
            post = parse(prompt)
            title, body = post.title, post.body
            counts = Counter(content_stems(body))
            for s in content_stems(title):
                counts[s] += 2
            weights = {s: 1.0 + math.log(c) for s, c in counts.items()}
            norm = sum(sorted(weights.values(), reverse=True)[: self.top_k]) or 1.0
            if len(self._cache) > 50_000:
                self._cache.clear()
            hit = self._cache[prompt] = (weights, norm)
        return hit

    def score(self, prompt: str, completion: str) -> float:
        weights, norm = self._salience(prompt)
        ws = words(completion)
        stems = [_stem(w) for w in ws if w not in STOPWORDS]
        if not stems:
            return -1.0
        # fsum: the exact sum, whatever order the set gives (a set of strings iterates in an order that changes
        # with PYTHONHASHSEED, i.e. with every process; a plain sum would differ in its last bits between runs).
        coverage = min(1.0, math.fsum(weights.get(s, 0.0) for s in set(stems)) / norm)
        grounding = sum(s in weights for s in stems) / len(stems)
        bigrams = list(zip(ws, ws[1:]))
        repetition = 1.0 - len(set(bigrams)) / len(bigrams) if bigrams else 0.0
        overlength = 0.1 * max(0, len(ws) - 48)
        fluency = math.tanh(len(ws) / 12)
        return 3.0 * coverage + 1.5 * grounding + 0.5 * fluency - 2.0 * repetition - overlength

    def __call__(self, prompts: list[str], completions: list[str]) -> np.ndarray:
        return np.array([self.score(p, c) for p, c in zip(prompts, completions)], dtype=np.float64)
