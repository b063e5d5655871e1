"""Rewards: anything that maps ``(prompts, completions)`` to one finite float per row.

``load_reward(spec)`` accepts

* ``"tiny-tldr"``: the offline TL;DR summary reward (:mod:`quarklab.world.reward`), the default;
* a hub id or folder of an ``AutoModelForSequenceClassification`` checkpoint (pick the
  ``label`` whose logit or probability is the reward);
* a trlx/ALT-style value-head reward model (causal-LM backbone plus a linear ``v_head``), fed
  as ALT feeds CarperAI's TL;DR reward model by default: ``"<|startoftext|>{post}\\nTL;DR:
  {summary}<|endoftext|>"``, at most 550 tokens cut on the right, eos as the right padding,
  read at the token before the first eos; see :class:`quarklab.reward_models.ValueHeadReward`;
* any Python callable ``f(prompts, completions) -> sequence of floats``.

Every reward is wrapped so that a wrong length, NaN or inf is one clear error, and its scores are
rounded to a stated precision (``precision=``: "float64", "float32" or "float16",
:func:`round_rewards`) as they leave it; a run's reward comes from :func:`config_reward`.
"""

from __future__ import annotations

import os
import typing
from typing import Callable, Protocol, Sequence

import numpy as np

from .config import QuarkConfig, RewardPrecision
from .errors import QuarkError, finite_1d
from .names import TINY, is_named, lookup


class RewardFn(Protocol):
    """``(prompts, completions) -> np.ndarray[float]`` of ``len(prompts)``, batched."""

    def __call__(self, prompts: list[str], completions: list[str]) -> np.ndarray: ...


def check_rewards(values, n: int, name: str = "reward") -> np.ndarray:
    """Return ``values`` as a float64 array of length ``n``; raise if its length or values are wrong."""
    if np.ndim(values) == 1 and len(values) != n:
        raise QuarkError(f"{name} returned {len(values)} values for {n} completions")
    arr = finite_1d(values, f"{name}'s output")
    if arr.shape[0] != n:
        raise QuarkError(f"{name} returned {arr.shape[0]} values for {n} completions")
    return arr


PRECISIONS: tuple[str, ...] = typing.get_args(RewardPrecision)
"""The precisions a reward's scores can be rounded to: "float64" (as computed), "float32", "float16"."""


def round_rewards(values: np.ndarray, precision: str, name: str = "reward") -> np.ndarray:
    """``values`` (float64) rounded to the nearest ``precision`` float (ties to even), as a float64 array.

    Rounding turns scores that differ only by float64 rounding error into equal ones, which quantiles then order
    by row (:mod:`quarklab.quantiles`). A score beyond the precision's range (float16: 65504) is an error."""
    if precision not in PRECISIONS:
        raise QuarkError(f"reward precision must be one of {', '.join(map(repr, PRECISIONS))}, got {precision!r}")
    if precision == "float64":
        return values
    with np.errstate(over="ignore"):
        rounded = values.astype(precision).astype(np.float64)
    if not np.isfinite(rounded).all():
        first = int(np.flatnonzero(~np.isfinite(rounded))[0])
        raise QuarkError(f"{name} gave {float(values[first]):g} (row {first}), beyond {precision}'s range "
                         f"(±{float(np.finfo(precision).max):g}): use a wider reward precision")
    return rounded


class CheckedReward:
    """Wraps any reward callable: checks its inputs and output, scores in batches, rounds the scores to
    ``precision`` (:func:`round_rewards`; "float64" = as computed)."""

    def __init__(self, fn: Callable[[list[str], list[str]], Sequence[float]], name: str | None = None,
                 batch_size: int | None = None, precision: str = "float64"):
        self.fn = fn
        self.name = name or getattr(fn, "name", None) or getattr(fn, "__name__", type(fn).__name__)
        self.batch_size = batch_size
        if precision not in PRECISIONS:
            raise QuarkError(f"reward precision must be one of {', '.join(map(repr, PRECISIONS))}, "
                             f"got {precision!r}")
        self.precision = precision

    def __call__(self, prompts: Sequence[str], completions: Sequence[str]) -> np.ndarray:
        prompts, completions = list(prompts), list(completions)
        if len(prompts) != len(completions):
            raise QuarkError(f"reward {self.name!r}: {len(prompts)} prompts but {len(completions)} completions")
        if not prompts:
            return np.zeros(0, dtype=np.float64)
        step = self.batch_size or len(prompts)
        out = [check_rewards(self.fn(prompts[i:i + step], completions[i:i + step]),
                             len(prompts[i:i + step]), f"reward {self.name!r}")
               for i in range(0, len(prompts), step)]
        return round_rewards(np.concatenate(out), self.precision, f"reward {self.name!r}")

    def __repr__(self) -> str:
        return f"CheckedReward({self.name!r})" if self.precision == "float64" else \
            f"CheckedReward({self.name!r}, precision={self.precision!r})"


def load_reward(spec: str | os.PathLike | Callable = "tiny-tldr", *, kind: str = "auto",
                label: str | int | None = None, score: str = "logit", template: str | None = None,
                max_length: int | None = None, base_model: str | None = None, device: str | None = "auto",
                dtype: str | None = "auto", batch_size: int = 16, trust_remote_code: bool = False,
                precision: str | None = None) -> CheckedReward:
    """Return a checked, batched :class:`RewardFn` for ``spec``.

    ``kind`` is ``"auto"`` (guess from ``spec``), ``"tiny-tldr"``, ``"seq-classification"``,
    ``"value-head"`` or ``"callable"``. For model rewards, ``template`` formats the text the
    model reads from ``{prompt}``, ``{completion}``, ``{post}`` and ``{summary}`` (ALT's split at
    "TL;DR:"; default: :data:`~quarklab.reward_models.CARPER_TEMPLATE` for a value head,
    ``"{completion}"`` for a classifier); ``max_length`` caps its tokens, cut on the right
    (default: 550 for a value head, as ALT, else the model's context); ``dtype`` is the model's
    weights (scores are float64 either way); ``label`` and ``score`` pick the classifier output;
    ``base_model`` names the backbone of a bare value-head state dict. The tiny-tldr reward and
    callables ignore these options. Every kind takes ``precision`` (:data:`PRECISIONS`), the float each
    score is rounded to (None: "float64", as computed; a :class:`CheckedReward` given as ``spec`` keeps its own).
    """
    if isinstance(spec, CheckedReward):
        if precision is None or precision == spec.precision:
            return spec
        return CheckedReward(spec.fn, spec.name, spec.batch_size, precision)
    precision = precision or "float64"
    if callable(spec) and kind in ("auto", "callable"):
        return CheckedReward(spec, precision=precision)
    if kind == "callable":
        raise QuarkError(f"reward kind 'callable' needs a Python callable, got {spec!r}")
    spec_s = os.fspath(spec)
    if kind == "auto":
        kind = TINY if is_named(spec_s) else _guess_model_kind(spec_s)
    if kind == TINY:
        named = lookup(spec_s if is_named(spec_s) else TINY)
        return CheckedReward(named.reward(), name=TINY, batch_size=None, precision=precision)
    from . import reward_models
    common = dict(template=template, max_length=max_length, device=device, dtype=dtype, batch_size=batch_size,
                  trust_remote_code=trust_remote_code)
    if kind == "seq-classification":
        return CheckedReward(reward_models.SequenceClassifierReward(spec_s, label=label, score=score, **common),
                             name=spec_s, precision=precision)
    if kind == "value-head":
        return CheckedReward(reward_models.ValueHeadReward(spec_s, base_model=base_model, **common), name=spec_s,
                             precision=precision)
    raise QuarkError(f"unknown reward kind {kind!r}: use 'auto', 'tiny-tldr', 'seq-classification', "
                     "'value-head' or 'callable'")


def config_reward(config: QuarkConfig, device: str | None = None) -> CheckedReward:
    """The reward a run of ``config`` scores with: ``config.reward`` loaded with the config's reward fields
    (base model, template, max length, dtype) and scores rounded to ``config.reward_precision``; on ``device``
    (default: ``config.device``). Everything that scores for a run (the loop, benchmarks) loads it here."""
    return load_reward(config.reward, base_model=config.reward_base_model, template=config.reward_template,
                       max_length=config.reward_max_length, dtype=config.reward_dtype,
                       device=device or config.device, precision=config.reward_precision)


def _guess_model_kind(spec: str) -> str:
    from .reward_models import guess_kind
    return guess_kind(spec)
