"""Named stages of the Quark loop, marked where they happen, so a profile never patches the code.

The loop wraps each stage in :func:`stage` (``load``, ``sample``, ``score``, ``pool``,
``train.policy``, ``train.reference``, ``train.optimizer``, ``checkpoint``, ``evaluate``). Each
is a ``torch.profiler.record_function`` range, so it shows by name in a ``torch.profiler`` trace;
inside :func:`clock` its wall time is also added up, exclusive of the stages nested in it::

    with stages.clock() as c:
        quarklab.run_quark(config, run_dir)
    c.seconds  # {"sample": 3.1, "train.policy": 5.6, ...}

Outside a clock a stage costs one profiler range (microseconds): nothing is timed or synchronised.
"""

from __future__ import annotations

import contextlib
import contextvars
import time
from collections import defaultdict
from typing import Iterator

import torch

_CLOCK: contextvars.ContextVar["StageClock | None"] = contextvars.ContextVar("quarklab_stage_clock", default=None)


class StageClock:
    """Wall seconds and entries per stage name; time in a nested stage counts for it alone."""

    def __init__(self):
        self.seconds: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)
        self._stack: list[list] = []  # [name, start of the current uninterrupted span]

    def enter(self, name: str) -> None:
        now = _now()
        if self._stack:  # the enclosing stage pauses
            parent = self._stack[-1]
            self.seconds[parent[0]] += now - parent[1]
        self._stack.append([name, now])
        self.calls[name] += 1

    def exit(self) -> None:
        now = _now()
        name, start = self._stack.pop()
        self.seconds[name] += now - start
        if self._stack:
            self._stack[-1][1] = now

    def total(self) -> float:
        return float(sum(self.seconds.values()))


def _now() -> float:
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()  # a GPU stage ends when its kernels do, not when they are queued
    return time.perf_counter()


@contextlib.contextmanager
def clock() -> Iterator[StageClock]:
    """Time every stage entered inside the ``with`` block (in this thread or task)."""
    c = StageClock()
    token = _CLOCK.set(c)
    try:
        yield c
    finally:
        _CLOCK.reset(token)


@contextlib.contextmanager
def stage(name: str) -> Iterator[None]:
    """Mark a stage of the loop: a profiler range named ``quarklab.<name>``, timed inside :func:`clock`."""
    c = _CLOCK.get()
    with torch.profiler.record_function(f"quarklab.{name}"):
        if c is None:
            yield
            return
        c.enter(name)
        try:
            yield
        finally:
            c.exit()
