"""quarklab.schedule: an iteration's optimizer steps, and which rows each micro-batch of each process holds (the
learning-rate schedule's shape is checked through the training loop in test_train)."""

from __future__ import annotations

import math
import random

import pytest

from quarklab.config import preset
from quarklab.schedule import micro_batches, schedule_steps


@pytest.mark.parametrize("world", [2, 3])
def test_micro_batches_are_dealt_evenly_to_processes_and_cover_every_one(world):
    rows = [{"id": i} for i in range(70)]  # 5 micro-batches of 16 per epoch
    config = preset("tiny").replace(batch_size=16, grad_accum=1, epochs_per_iteration=1)
    one = micro_batches(rows, config, schedule_steps(config, 70)[0], random.Random(0))
    steps = schedule_steps(config, 70, world)[0]
    shares = [micro_batches(rows, config, steps, random.Random(0), world, r) for r in range(world)]
    assert len(one) == 5 and steps == math.ceil(5 / world)
    assert {len(s) for s in shares} == {steps}  # every process takes as many: DDP's collectives pair up
    dealt = [b for i in range(steps) for s in shares for b in s[i:i + 1]]
    assert dealt[:5] == one and dealt[5:] == one[: len(dealt) - 5]  # one process's batches, the first again


def test_the_same_seed_deals_the_same_batches_and_every_row_once_per_epoch():
    rows = [{"id": i} for i in range(64)]
    config = preset("tiny").replace(batch_size=16, grad_accum=1, epochs_per_iteration=2)
    steps = schedule_steps(config, 64)[0]
    first, again = (micro_batches(rows, config, steps, random.Random(7)) for _ in range(2))
    assert first == again and steps == 8
    for epoch in (first[:4], first[4:]):
        assert sorted(r["id"] for batch in epoch for r in batch) == list(range(64))
