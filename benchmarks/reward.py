"""Reward throughput: rows/s of ``load_reward(config.reward)`` on the sampled completions, cold and warm."""

from __future__ import annotations

import time

from .common import case_section, interleaved
from .settings import BenchSettings


def bench_reward(samples, s: BenchSettings) -> dict:
    """Cold: a fresh reward object per repetition (its per-prompt cache empty); warm: the same rows again."""
    from quarklab.rewards import config_reward

    c = s.config
    prompts, completions = samples["prompt"].tolist(), samples["completion"].tolist()
    state = {}

    def timed(fn) -> tuple[int, float]:
        t0 = time.perf_counter()
        fn(prompts, completions)
        return len(prompts), time.perf_counter() - t0

    def cold(rep: int, warm: bool):
        state["fn"] = config_reward(c)
        return timed(state["fn"])

    def warm_(rep: int, warm: bool):
        return timed(state["fn"])

    rec = interleaved({"cold": cold, "warm": warm_}, s.warmup, s.reps, "reward")  # warm runs right after cold
    return {"reward": c.reward, "rows": len(prompts), "distinct_prompts": len(set(prompts)),
            "cold": {**case_section(rec["cold"], "rows"),
                     "how": f"a fresh load_reward({c.reward!r}) per repetition: its per-prompt cache starts empty"},
            "warm": {**case_section(rec["warm"], "rows"),
                     "how": "the same rows again on the object just used: per-prompt work cached"}}
