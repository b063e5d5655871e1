"""An iteration's training schedule: how many optimizer steps it takes, the learning rate at each, and which
rows each micro-batch (on each process) holds."""

from __future__ import annotations

import math
import random

import torch
from transformers import get_linear_schedule_with_warmup

from .config import QuarkConfig


def schedule_steps(config: QuarkConfig, num_rows: int, world: int = 1) -> tuple[int, int]:
    """``(steps, total)``: optimizer steps this iteration takes and steps in the whole learning-rate schedule.

    Without ``steps_per_iteration``, ``epochs_per_iteration`` passes over the rows, in a schedule of their
    own (ALT: a fresh optimizer each iteration); with it, that many steps, in one schedule over the run
    (``iterations * steps_per_iteration``, Quark) when the pool strategy is "quark". One step takes
    ``grad_accum`` micro-batches of ``batch_size`` rows on each of ``world`` processes."""
    if config.steps_per_iteration is None:
        steps = max(1, math.ceil(math.ceil(num_rows / config.batch_size) * config.epochs_per_iteration
                                 / (config.grad_accum * world)))
        return steps, steps
    steps = config.steps_per_iteration
    return steps, steps * config.iterations if config.pool_strategy == "quark" else steps


def lr_schedule(opt, config: QuarkConfig, total: int):
    """Warmup over ``warmup = max(1, int(warmup_ratio * total))`` steps from lr 0, then linear decay to 0 at
    ``total``: "linear" warmup is transformers' ``get_linear_schedule_with_warmup``; "log" is DeepSpeed's
    ``WarmupDecayLR`` default (ALT's run): ``lr * ln(t + 1) / ln(warmup)`` at step ``t < warmup``."""
    warmup = min(max(1, int(config.warmup_ratio * total)), total - 1)  # one step alone trains at full lr
    if config.warmup_shape == "linear" or warmup < 2:
        return get_linear_schedule_with_warmup(opt, warmup, total)

    def factor(t: int) -> float:
        return math.log(t + 1) / math.log(warmup) if t < warmup else max(0.0, (total - t) / (total - warmup))

    return torch.optim.lr_scheduler.LambdaLR(opt, factor)


def micro_batches(rows: list[dict], config: QuarkConfig, steps: int, rng: random.Random, world: int = 1,
                  rank: int = 0) -> list[list[dict]]:
    """Process ``rank``'s micro-batches for ``steps`` optimizer steps: the rows reshuffled on every pass and
    dealt to the ``world`` processes in turn; when they do not divide evenly, the first are dealt again, so
    that every process takes as many (as a DistributedSampler does)."""
    per_step = config.grad_accum * world
    if config.steps_per_iteration is None:
        passes = config.epochs_per_iteration
    else:
        passes = math.ceil(steps * per_step * config.batch_size / len(rows))
    out = []
    for _ in range(passes):
        order = list(range(len(rows)))
        rng.shuffle(order)
        out += [[rows[i] for i in order[b:b + config.batch_size]] for b in range(0, len(order), config.batch_size)]
    out = out if config.steps_per_iteration is None else out[: steps * per_step]
    return dealt_evenly(out, world)[rank::world]


def dealt_evenly(items: list, n: int) -> list:
    """``items`` followed by its first items again (cyclically) up to a multiple of ``n``."""
    return items + [items[i % len(items)] for i in range(-len(items) % n)]
