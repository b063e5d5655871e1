"""Pairwise judge win rates: is system A's summary better than system B's, on the same prompts?

::

    import quarklab as ql
    judge = ql.judge.make_judge("rm")                          # or "lm" (a local causal LM), "http" (an endpoint)
    result = ql.judge.win_rate("runs/demo:token=0", "runs/demo:reference", judge)
    print(result)                                              # win rate, 95 % interval, counts
    result.records                                             # one row per pair, both raw answers

Systems (:mod:`.systems`), judges (:mod:`.judges`; the judging prompts are the tasks', :mod:`quarklab.tasks`), the cache, outcomes and the
bootstrap (:mod:`.winrate`), figures and tables (:mod:`.present`, loaded on first use: it needs matplotlib).
The tiny world's models are no judges of quality: with them, a win rate shows the machinery works, not which
summary is better.
"""

from ..tldr import JUDGE_PROMPT, post_of  # the TL;DR task's judging prompt and what it reads of a prompt
from .judges import HTTPJudge, LMJudge, RewardJudge, judge_prompt, make_judge, parse_answer
from .systems import System, SystemSpec, load_system, pair_systems, parse_system
from .winrate import JudgmentCache, WinRate, bootstrap_interval, judge_orders, outcomes, summarize, win_rate


def __getattr__(name):
    if name in ("win_rate_figure", "pairs_html", "quoted_table"):
        from . import present
        return getattr(present, name)
    raise AttributeError(f"module 'quarklab.judge' has no attribute {name!r}")


__all__ = ["JUDGE_PROMPT", "HTTPJudge", "JudgmentCache", "LMJudge", "RewardJudge", "System", "SystemSpec", "WinRate",
           "bootstrap_interval", "judge_orders", "judge_prompt", "load_system", "make_judge", "outcomes",
           "pair_systems", "parse_answer", "parse_system", "post_of", "summarize", "win_rate", "win_rate_figure",
           "pairs_html", "quoted_table"]
