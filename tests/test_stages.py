"""quarklab.stages: the loop's named stages, timed inside a clock exclusive of the stages nested in them, and a
profiler range each (a real profile of a run's stages is in test_bench)."""

from __future__ import annotations

import torch

from quarklab import stages


def test_nested_stages_count_their_own_time_only(monkeypatch):
    ticks = iter([0.0, 1.0, 3.0, 6.0, 10.0])  # enter outer, enter inner, leave inner, leave outer, (spare)
    monkeypatch.setattr(stages.time, "perf_counter", lambda: next(ticks))
    with stages.clock() as c:
        with stages.stage("train"):
            with stages.stage("train.optimizer"):
                pass
    assert dict(c.seconds) == {"train": 1.0 + 3.0, "train.optimizer": 2.0}
    assert dict(c.calls) == {"train": 1, "train.optimizer": 1} and c.total() == 6.0


def test_outside_a_clock_a_stage_is_a_profiler_range_and_nothing_is_timed():
    with torch.profiler.profile() as prof:
        with stages.stage("sample"):
            torch.ones(2) + 1
    assert "quarklab.sample" in {e.name for e in prof.events()}
    with stages.clock() as c:
        pass
    assert c.total() == 0.0
