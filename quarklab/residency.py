"""Which models each phase of the Quark loop holds on the accelerator, decided in one place from the config.

No phase needs the policy, the reference and the reward model at once but evaluation:

* ``sample``: the policy; none with ``sampler="vllm"`` (the engine loads the weights itself, and is stopped once it
  has sampled). Iteration 1 samples the starting model without a token (:func:`generator`): the reference, or
  the untrained policy when the reference is the same model held in another dtype;
* ``score``: the reward model;
* ``train``: the policy, and the reference only when ``kl_coef > 0`` (the KL term's logits);
* ``evaluate``: the evaluated model (at iteration 0 the starting model), the reward model and the reference
  (perplexity).

After the last iteration the run's models leave memory before ``final_protocol`` loads its own.

``idle_models`` says where a model waits through a phase that does not need it (:func:`placement`): "keep" on
the accelerator (every model through every phase); "offload" in CPU memory, moved back when a phase needs it
(``.to``: the same bits come back); "release" the frozen models (reference, reward) dropped and loaded again from
their source when a phase needs them, the trained policy offloaded (its one copy is in memory); "auto" offloads
on a CUDA device and keeps elsewhere (on CPU an offload moves nothing, and a release reads the files again).
Under a DeepSpeed or FSDP engine the policy stays put (the engine owns it while it trains); the reference and
the reward model follow the rule. :class:`Residency` applies it and records where each model was in each phase.
"""

from __future__ import annotations

import contextlib
import gc
import time
from typing import Callable, Iterator

import torch

from .config import QuarkConfig

PHASES = ("sample", "score", "train", "evaluate")
MODELS = ("policy", "reference", "reward")
DEVICE, CPU, RELEASED = "device", "cpu", "released"


def generator(config: QuarkConfig, phase: str, iteration: int) -> str:
    """The model that generates in ``phase`` ("sample" or "evaluate") of ``iteration``: the policy, but for the
    starting point (iteration 1's samples, iteration 0's evaluation; no token) the reference, unless it is the
    policy's own model held in another dtype (``reference_dtype``, as ``tldr-gptj``'s fp32 perplexity reference):
    then the untrained policy (its quantile tokens suppressed), which generates in the policy's dtype as every
    later iteration and the vLLM sampler do (ALT samples its SFT model in fp16), with half the fp32 reference's KV
    cache."""
    if (phase, iteration) not in (("sample", 1), ("evaluate", 0)):
        return "policy"
    own = config.reference in (None, config.policy)
    return "policy" if own and config.reference_dtype not in (None, config.dtype) else "reference"


def needs(config: QuarkConfig, phase: str, iteration: int) -> tuple[str, ...]:
    """The models ``phase`` of ``iteration`` uses, by name (:data:`MODELS`)."""
    if phase == "sample":
        return () if config.sampler == "vllm" else (generator(config, phase, iteration),)
    if phase == "score":
        return ("reward",)
    if phase == "train":
        return ("policy", "reference") if config.kl_coef > 0 else ("policy",)
    if phase == "evaluate":
        return tuple(m for m in MODELS if m in (generator(config, phase, iteration), "reference", "reward"))
    raise ValueError(f"unknown phase {phase!r}: one of {PHASES}")


def idle_rule(config: QuarkConfig, device: torch.device | str) -> str:
    """``config.idle_models`` with "auto" decided for ``device``: "offload" on CUDA, else "keep"."""
    if config.idle_models != "auto":
        return config.idle_models
    return "offload" if torch.device(device).type == "cuda" else "keep"


def placement(config: QuarkConfig, phase: str, iteration: int, device: torch.device | str = "cuda",
              engine: bool = False) -> dict[str, str]:
    """Where each model is during ``phase``: :data:`DEVICE`, :data:`CPU` or :data:`RELEASED`."""
    rule, used = idle_rule(config, device), needs(config, phase, iteration)
    where = {}
    for name in MODELS:
        if name in used or rule == "keep" or (name == "policy" and engine):
            where[name] = DEVICE
        else:
            where[name] = RELEASED if rule == "release" and name != "policy" else CPU
    return where


def weight_bytes(obj) -> int:
    """Bytes of the tensors a model (or a reward object holding one) keeps."""
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, torch.nn.Module):
        return sum(weight_bytes(t) for t in (*obj.parameters(), *obj.buffers()))
    held = getattr(obj, "__dict__", {})  # a reward's model and tensors, or those of the function it wraps
    return sum(weight_bytes(v) for k, v in held.items() if isinstance(v, torch.nn.Module | torch.Tensor) or k == "fn")


class Residency:
    """Arranges a holder's models (attributes ``policy``, ``reference``, ``reward``) for each phase it enters.

    ``loaders`` loads a released model again (on ``device``); ``moved`` counts the bytes moved or reloaded so
    far. Under :func:`watch` each phase entered is recorded: where each model was, and its peak memory."""

    def __init__(self, config: QuarkConfig, device: torch.device, loaders: dict[str, Callable[[], object]],
                 engine: bool = False):
        self.config, self.device, self.loaders, self.engine = config, torch.device(device), loaders, engine
        self.rule = idle_rule(config, self.device)
        self.moved = 0
        self.at = dict.fromkeys(MODELS, DEVICE)  # the holder's models are loaded on the device

    @contextlib.contextmanager
    def phase(self, holder, name: str, iteration: int) -> Iterator[None]:
        where = placement(self.config, name, iteration, self.device, self.engine)
        moved, start = self.moved, time.perf_counter()
        if self.rule != "keep":
            for model in sorted(MODELS, key=lambda m: where[m] == DEVICE):  # make room first, then bring back
                self._put(holder, model, where[model])
        with _watching({"iteration": iteration, "phase": name, **where, "moved_bytes": self.moved - moved,
                        "move_seconds": time.perf_counter() - start}):
            yield

    def idle_state(self, state: dict | None) -> dict | None:
        """An optimizer state dict kept between training phases (pool_strategy "quark"), in CPU memory unless the
        rule keeps models on the device (the optimizer's ``load_state_dict`` moves it back, the same bits)."""
        if state is None or self.rule == "keep":
            return state
        return _to(state, torch.device("cpu"))

    def _put(self, holder, name: str, where: str) -> None:
        if self.at[name] == where:
            return
        model = getattr(holder, name)
        if where == RELEASED:
            setattr(holder, name, None)
        elif self.at[name] == RELEASED:
            model = self.loaders[name]()  # loaded on the device
            setattr(holder, name, model)
        if where == CPU or self.at[name] == CPU:
            model.to(torch.device("cpu") if where == CPU else self.device)
        self.moved += weight_bytes(model)
        self.at[name] = where
        del model
        _free(self.device)


def _free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def _to(value, device: torch.device):
    if isinstance(value, torch.Tensor):
        return value.to(device)
    if isinstance(value, dict):
        return {k: _to(v, device) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_to(v, device) for v in value)
    return value


# ------------------------------------------------------------------ recording each phase

class PhaseRecord:
    """The phases entered under :func:`watch`: ``phases`` lists each one's iteration, name, where each model was, and
    the bytes moved (or reloaded) and seconds spent arranging the models as it began (with ``memory``, also
    ``start_bytes``: the resident memory above ``base`` once they were arranged);
    with ``memory``, ``peaks`` holds the peak resident memory of each phase name, in bytes above ``base`` (the
    resident memory when the watch began), and on a CUDA device ``device_peaks`` torch's peak allocation on it
    (every tensor on the device: the plan's figure). Linux: ``VmHWM`` of /proc/self/status, the kernel's peak
    having been reset to the current resident size (``echo 5 > /proc/self/clear_refs``, Linux 4.0+) as the phase
    began, as CUDA's peak is (``torch.cuda.reset_peak_memory_stats``)."""

    def __init__(self, memory: bool):
        self.memory = memory
        self.phases: list[dict] = []
        self.peaks: dict[str, int] = {}
        self.device_peaks: dict[str, int] = {}
        self.base = _status("VmRSS") if memory else 0

    def enter(self, entry: dict) -> None:
        self.phases.append(entry)
        if self.memory:
            gc.collect()
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
            entry["start_bytes"] = _status("VmRSS") - self.base
            if _on_cuda():
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()

    def exit(self, name: str) -> None:
        if self.memory:
            self.peaks[name] = max(self.peaks.get(name, 0), _status("VmHWM") - self.base)
            if _on_cuda():
                torch.cuda.synchronize()
                self.device_peaks[name] = max(self.device_peaks.get(name, 0), torch.cuda.max_memory_allocated())


_WATCH: list[PhaseRecord] = []


def _on_cuda() -> bool:
    return torch.cuda.is_available() and torch.cuda.is_initialized()


def _status(field: str) -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith(field + ":"))


@contextlib.contextmanager
def watch(memory: bool = False) -> Iterator[PhaseRecord]:
    """Record every phase entered inside the ``with`` block (in this process), with its peak resident memory when
    ``memory`` (Linux; a CPU run's working set)."""
    record = PhaseRecord(memory)
    _WATCH.append(record)
    try:
        yield record
    finally:
        _WATCH.remove(record)


@contextlib.contextmanager
def _watching(entry: dict) -> Iterator[None]:
    if not _WATCH:
        yield
        return
    record = _WATCH[-1]
    record.enter(entry)
    try:
        yield
    finally:
        record.exit(entry["phase"])
