"""The bench's inputs: synthetic prompts with the lengths of real Reddit TL;DR posts, and training rows
built from sampled completions the way the loop builds them."""

from __future__ import annotations

import re

import numpy as np

from quarklab.errors import QuarkError
from quarklab.tldr import format_prompt, parse

from .settings import TLDR_PROMPT_WORD_QUANTILES


def prompt_word_lengths(count: int, quantiles=TLDR_PROMPT_WORD_QUANTILES, seed: int = 0) -> list[int]:
    """``count`` prompt lengths in words following the quantile function given by ``quantiles``
    (at evenly spaced levels 0..1): stratified at levels (i + 0.5) / count, then shuffled."""
    levels = np.linspace(0.0, 1.0, len(quantiles))
    u = (np.arange(count) + 0.5) / count
    lengths = np.rint(np.interp(u, levels, np.asarray(quantiles, dtype=np.float64))).astype(int)
    return [int(x) for x in np.random.default_rng(seed).permutation(lengths)]


def synthetic_prompts(count: int, seed: int = 0, source: list[str] | None = None,
                      quantiles=TLDR_PROMPT_WORD_QUANTILES) -> list[str]:
    """``count`` prompts in the TL;DR layout (:func:`quarklab.tldr.format_prompt`) whose lengths in
    words (``len(p.split())``) follow ``quantiles``, deterministically from ``seed``.

    Subreddit and title come from a source post; the post is consecutive sentences of source posts,
    cut to the exact length. ``source`` (prompts in that layout, read with :func:`quarklab.tldr.parse`)
    defaults to the tiny world's train split.
    """
    if source is None:
        from quarklab.data import load_prompts
        source = load_prompts("tiny-tldr", "train")["prompt"].tolist()
    heads, sentences = [], []
    for p in source:
        post = parse(p)
        if not post.subreddit or not post.title:  # free text: no head to borrow
            continue
        heads.append((post.subreddit, post.title.split()))
        sentences += [s.split() for s in re.split(r"(?<=[.!?])\s+", post.body) if s.strip()]
        if len(heads) >= 2000:
            break
    if not heads or not sentences:
        raise QuarkError("synthetic prompts need source prompts in the TL;DR layout (SUBREDDIT/TITLE/POST/TL;DR:)")
    rng = np.random.default_rng(seed)
    out = []
    for length in prompt_word_lengths(count, quantiles, seed):
        sub, title = heads[int(rng.integers(len(heads)))]
        room = max(2, length - 5)  # 5 words: "SUBREDDIT:", "r/<sub>", "TITLE:", "POST:", "TL;DR:"
        title = title[: max(1, min(len(title), room - 1))]
        need, words, k = room - len(title), [], int(rng.integers(len(sentences)))
        while len(words) < need:
            words += sentences[k % len(sentences)]
            k += 1
        out.append(format_prompt(sub, " ".join(title), " ".join(words[:need])))
    return out


def training_rows(samples, config, count: int) -> list[dict]:
    """``count`` Quark training rows from sampled completions, as the loop builds them: the samples' own
    ``prompt_ids``, quantiles of ``config.reward``'s scores (``config.quantile_scope``); the rows are
    cycled to make ``count``."""
    from quarklab.quantiles import assign_quantiles
    from quarklab.rewards import config_reward
    from quarklab.train import table_rows

    reward = config_reward(config)  # its fields, reward_precision included, as the loop loads it
    scores = reward(samples["prompt"].tolist(), samples["completion"].tolist())
    groups = samples["prompt_id"].to_numpy() if config.quantile_scope == "local" else None
    table = samples.assign(quantile=assign_quantiles(scores, config.num_quantiles, groups))
    rows = [r for r in table_rows(table) if r["completion_ids"] or r["finished"]]
    return [rows[i % len(rows)] for i in range(count)]
