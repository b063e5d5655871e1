"""Rewards: anything that maps ``(prompts, completions)`` to one finite float per row.

``load_reward(spec)`` accepts

* ``"tiny-tldr"``: the offline TL;DR summary reward (:mod:`quarklab.world.reward`), the default;
* ``"repetition"``: the continuation task's model-free reward, the completion's diversity (:func:`diversity`);
* a hub id or folder of an ``AutoModelForSequenceClassification`` checkpoint (pick the
  ``label`` whose logit or probability is the reward);
* a trlx/ALT-style value-head reward model (causal-LM backbone plus a linear ``v_head``), fed
  as ALT feeds CarperAI's TL;DR reward model by default: ``"<|startoftext|>{post}\\nTL;DR:
  {summary}<|endoftext|>"``, at most 550 tokens cut on the right, eos as the right padding,
  read at the token before the first eos; see :class:`quarklab.reward_models.ValueHeadReward`;
* any Python callable ``f(prompts, completions) -> sequence of floats``, given as itself or by name:
  ``"module:function"`` (a module on the import path) or ``"path/to/file.py:function"`` (a file: a relative
  path given here is read from the working directory, as Python reads it; a run, every ``quarklab`` command
  and the notebooks read it from the project root first, :func:`quarklab.paths.locate`), so a run's config can
  name it (``quarklab train --set reward=my_rewards.py:score``) and every process that reads the config loads
  the same function.

Every reward is wrapped so that a wrong length, NaN or inf is one clear error, and its scores are
rounded to a stated precision (``precision=``: "float64", "float32" or "float16",
:func:`round_rewards`) as they leave it; a run's reward comes from :func:`config_reward`.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import os
import re
import sys
import typing
from pathlib import Path
from typing import Callable, Protocol, Sequence

import numpy as np

from .config import QuarkConfig, RewardPrecision
from .errors import QuarkError, describe, finite_1d
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


REPETITION = "repetition"
"""The name of the model-free repetition reward (:func:`repetition_reward`)."""
REPETITION_MIN_WORDS = 16
"""Words a completion needs for its full diversity: fewer scale it down (:func:`diversity`)."""


def diversity(text: str, min_words: int = REPETITION_MIN_WORDS) -> float:
    """The diversity of ``text``, Quark's repetition-unlearning reward (Lu et al. 2022, §4.3, after Welleck et al.
    2020): the product over n = 2, 3, 4 of ``1 - rep_n``, ``rep_n = 1 - unique n-grams / n-grams`` over the
    whitespace-separated words (a text with no n-grams of a size has ``rep_n = 0``), times
    ``min(1, words / min_words)``: a text of fewer than ``min_words`` words, which has few n-grams to repeat,
    scores below a varied one of ``min_words`` words (an empty text scores 0). In [0, 1]; 1 is no repeated
    2-gram in at least ``min_words`` words."""
    words = str(text).split()
    score = min(1.0, len(words) / min_words)
    for n in (2, 3, 4):
        grams = [tuple(words[i:i + n]) for i in range(len(words) - n + 1)]
        if grams:
            score *= len(set(grams)) / len(grams)
    return score


def repetition_reward(prompts: list[str], completions: list[str]) -> np.ndarray:
    """The ``"repetition"`` reward: each completion's :func:`diversity` (the prompt is not read)."""
    return np.array([diversity(c) for c in completions], dtype=np.float64)


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

    def to(self, device) -> "CheckedReward":
        """Move the wrapped reward's model, if it has one, to ``device``."""
        if hasattr(self.fn, "to"):
            self.fn.to(device)
        return self

    def __repr__(self) -> str:
        return f"CheckedReward({self.name!r})" if self.precision == "float64" else \
            f"CheckedReward({self.name!r}, precision={self.precision!r})"


def load_reward(spec: str | os.PathLike | Callable = "tiny-tldr", *, kind: str = "auto",
                label: str | int | None = None, score: str = "logit", template: str | None = None,
                max_length: int | None = None, base_model: str | None = None, device: str | None = "auto",
                dtype: str | None = "auto", batch_size: int = 16, trust_remote_code: bool = False,
                precision: str | None = None) -> CheckedReward:
    """Return a checked, batched :class:`RewardFn` for ``spec``.

    ``kind`` is ``"auto"`` (guess from ``spec``), ``"tiny-tldr"``, ``"repetition"``, ``"seq-classification"``,
    ``"value-head"`` or ``"callable"``. For model rewards, ``template`` formats the text the
    model reads from ``{prompt}``, ``{completion}``, ``{post}`` and ``{summary}`` (ALT's split at
    "TL;DR:"; default: :data:`~quarklab.reward_models.CARPER_TEMPLATE` for a value head,
    ``"{completion}"`` for a classifier); ``max_length`` caps its tokens, cut on the right
    (default: 550 for a value head, as ALT, else the model's context); ``dtype`` is the model's
    weights (scores are float64 either way); ``label`` and ``score`` pick the classifier output;
    ``base_model`` names the backbone of a bare value-head state dict. The tiny-tldr and repetition rewards and
    callables ignore these options (a ``label`` for them is an error). A string ``"module:function"`` or
    ``"path/to/file.py:function"`` is a callable too (:func:`callable_spec`, :func:`import_callable`). Every kind
    takes ``precision`` (:data:`PRECISIONS`), the float each score is rounded to (None: "float64", as computed;
    a :class:`CheckedReward` given as ``spec`` keeps its own).
    """
    if isinstance(spec, CheckedReward):
        if precision is None or precision == spec.precision:
            return spec
        return CheckedReward(spec.fn, spec.name, spec.batch_size, precision)
    precision = precision or "float64"
    named = callable_spec(spec) if isinstance(spec, (str, os.PathLike)) else None
    if (callable(spec) or named is not None) and kind in ("auto", "callable") and label is not None:
        raise QuarkError(f"label={label!r} picks a sequence classifier's output, and reward {spec!r} is a Python "
                         "callable: drop the label (reward_label)")
    if callable(spec) and kind in ("auto", "callable"):
        return CheckedReward(spec, precision=precision)
    if named is not None and kind in ("auto", "callable"):
        return CheckedReward(import_callable(*named), name=os.fspath(spec), precision=precision)
    if kind == "callable":
        raise QuarkError(f"reward kind 'callable' needs a Python callable, 'module:function' or "
                         f"'path/to/file.py:function', got {spec!r}")
    spec_s = os.fspath(spec)
    if kind == "auto":
        kind = REPETITION if spec_s == REPETITION else TINY if is_named(spec_s) else _guess_model_kind(spec_s)
    if label is not None and kind in (TINY, REPETITION, "value-head"):
        raise QuarkError(f"label={label!r} picks a sequence classifier's output, and reward {spec_s!r} is "
                         f"{'a value-head' if kind == 'value-head' else 'the ' + kind} reward: drop the label "
                         "(reward_label)")
    if kind == REPETITION:
        return CheckedReward(repetition_reward, name=REPETITION, batch_size=None, precision=precision)
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
    raise QuarkError(f"unknown reward kind {kind!r}: use 'auto', 'tiny-tldr', 'repetition', 'seq-classification', "
                     "'value-head' or 'callable'")


def config_reward(config: QuarkConfig, device: str | None = None) -> CheckedReward:
    """The reward a run of ``config`` scores with: ``config.reward`` loaded with the config's reward fields
    (base model, template, max length, dtype, a classifier's label) and scores rounded to
    ``config.reward_precision``; on ``device`` (default: ``config.device``). Everything that scores for a run
    (the loop, benchmarks) loads it here."""
    return load_reward(config.reward, base_model=config.reward_base_model, template=config.reward_template,
                       max_length=config.reward_max_length, dtype=config.reward_dtype, label=config.reward_label,
                       device=device or config.device, precision=config.reward_precision)


_IDENTIFIER = r"[A-Za-z_]\w*"
_MODULE = re.compile(rf"{_IDENTIFIER}(?:\.{_IDENTIFIER})*")


def callable_spec(spec: str | os.PathLike) -> tuple[str, str] | None:
    """``(where, attribute)`` when ``spec`` names a Python callable, else None (a hub id, a path, a name).

    ``"pkg.module:function"`` gives ``("pkg.module", "function")``; ``"path/to/file.py:function"`` gives
    ``("path/to/file.py", "function")``. The attribute may be dotted (``"mod:Class.method"``). A hub id has no
    ``:``, and a registered name such as ``"tiny-tldr"`` is never one."""
    from .names import is_named

    text = os.fspath(spec)
    where, sep, attribute = text.rpartition(":")
    if not sep or is_named(text) or not _MODULE.fullmatch(attribute):
        return None
    where = where.strip()
    if where.lower().endswith(".py") or _MODULE.fullmatch(where):
        return where, attribute
    return None


def import_callable(where: str | os.PathLike, attribute: str) -> Callable:
    """The callable ``attribute`` of the Python file ``where`` (ending in ``.py``; a relative path is read from
    the working directory, as Python reads it: runs and commands make it absolute from the project root first,
    :func:`quarklab.paths.locate`; the file is executed on each call, so an edited file is read afresh) or of the
    module ``where`` (imported by name, from the import path). A missing file, module or attribute, a file that fails
    to run, or an attribute that is not callable is one QuarkError naming it."""
    where = os.fspath(where)
    if where.lower().endswith(".py"):
        path = Path(where).expanduser().resolve()
        if not path.is_file():
            raise QuarkError(f"reward file {where!r} does not exist (looked for {path})")
        digest = hashlib.sha1(str(path).encode()).hexdigest()[:12]
        name = "quarklab_reward_" + re.sub(r"\W", "_", path.stem) + "_" + digest
        loader_spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(loader_spec)
        sys.modules[name] = module  # as an import would (dataclasses and pickling look the module up)
        try:
            loader_spec.loader.exec_module(module)
        except Exception as exc:
            sys.modules.pop(name, None)
            raise QuarkError(f"reward file {where!r} failed to run ({describe(exc)})") from exc
        what = f"reward file {where!r}"
    else:
        try:
            module = importlib.import_module(where)
        except ModuleNotFoundError as exc:
            if exc.name is not None and where.startswith(exc.name) and where[len(exc.name):][:1] in ("", "."):
                raise QuarkError(f"reward module {where!r} not found: is it on the import path (pip install it, or "
                                 "add its folder to PYTHONPATH)? A file is named 'path/to/file.py:function'") from exc
            raise QuarkError(f"reward module {where!r} failed to import ({describe(exc)})") from exc
        except Exception as exc:
            raise QuarkError(f"reward module {where!r} failed to import ({describe(exc)})") from exc
        what = f"reward module {where!r}"
    target: typing.Any = module
    for part in attribute.split("."):
        if not hasattr(target, part):
            found = sorted(k for k, v in vars(module).items() if callable(v) and not k.startswith("_")
                           and getattr(v, "__module__", None) == module.__name__)
            raise QuarkError(f"{what} has no {attribute!r} (its functions and classes: {found or 'none'})")
        target = getattr(target, part)
    if not callable(target):
        raise QuarkError(f"{what}: {attribute!r} is a {type(target).__name__}, not a callable "
                         "f(prompts, completions) -> floats")
    return target


def _guess_model_kind(spec: str) -> str:
    from .reward_models import guess_kind
    return guess_kind(spec)
