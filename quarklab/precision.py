"""Training precision: the dtype a step computes in, and fp32 master weights for half-precision parameters.

Half-precision weights train on fp32 master copies of the trainable parameters and compute in their own
dtype (bf16, or fp16 with a GradScaler); float32 weights may compute under autocast (``precision`` "bf16"
or "fp16"). A DeepSpeed or FSDP engine keeps masters of its own.
"""

from __future__ import annotations

import torch

from .errors import QuarkError

HALF = (torch.bfloat16, torch.float16)


def compute_dtype(weights: torch.dtype, precision: str) -> torch.dtype | None:
    """The dtype training computes in (None = float32). Half-precision weights compute in their own dtype
    (``precision`` "auto" or that dtype); float32 weights compute under autocast when ``precision`` names
    "bf16" or "fp16", in float32 for "auto" and "fp32"."""
    named = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None, "auto": None}[precision]
    if weights in HALF:
        if precision != "auto" and named != weights:
            raise QuarkError(f"precision={precision!r} does not fit a policy loaded in {weights}: half-precision "
                             "weights compute in their own dtype; set precision='auto' (or dtype='float32' to "
                             "compute under autocast)")
        return weights
    return named


def autocast_context(device: torch.device, dtype: torch.dtype | None):
    return torch.autocast(device.type, dtype=dtype, enabled=dtype is not None)


class MasterWeights:
    """fp32 master copies of half-precision trainable parameters, as DeepSpeed and mixed-precision training keep.

    The model computes in its own dtype; after each backward :meth:`collect` moves the half-precision gradients
    into the masters' fp32 gradients (accumulating there), the optimizer steps the masters, and :meth:`publish`
    writes them back, rounded, into the model. Updates far below bf16's resolution (lr 2e-5 on weights near
    0.02) accumulate in the masters instead of rounding away at every step. Float32 parameters are their own
    masters.
    """

    def __init__(self, params: list[torch.nn.Parameter], copy: bool = True):
        self.params = params
        self.copies = copy and any(p.dtype in HALF for p in params)
        self.masters = [torch.nn.Parameter(p.detach().float()) for p in params] if self.copies else params

    def collect(self) -> None:
        if self.copies:
            for m, p in zip(self.masters, self.params):
                if p.grad is not None:
                    m.grad = p.grad.float() if m.grad is None else m.grad.add_(p.grad)
                    p.grad = None

    @torch.no_grad()
    def publish(self) -> None:
        if self.copies:
            for m, p in zip(self.masters, self.params):
                p.copy_(m)
