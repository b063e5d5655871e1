"""quarklab.precision: the dtype a training step computes in, and fp32 master weights that keep updates far below
bf16's resolution (the end-to-end runs in half precision are in test_train)."""

from __future__ import annotations

import pytest
import torch

from quarklab.errors import QuarkError
from quarklab.precision import MasterWeights, compute_dtype


@pytest.mark.parametrize("weights, precision, computes", [
    (torch.float32, "auto", None), (torch.float32, "fp32", None), (torch.float32, "bf16", torch.bfloat16),
    (torch.float32, "fp16", torch.float16), (torch.bfloat16, "auto", torch.bfloat16),
    (torch.bfloat16, "bf16", torch.bfloat16), (torch.float16, "fp16", torch.float16)])
def test_half_weights_compute_in_their_own_dtype_and_float32_under_autocast_when_asked(weights, precision, computes):
    assert compute_dtype(weights, precision) == computes


def test_a_precision_that_does_not_fit_half_weights_is_one_error():
    with pytest.raises(QuarkError, match=r"precision='fp32' does not fit a policy loaded in torch.bfloat16"):
        compute_dtype(torch.bfloat16, "fp32")


def test_master_weights_accumulate_updates_bf16_alone_would_round_away():
    w = torch.nn.Parameter(torch.full((4,), 0.02, dtype=torch.bfloat16))
    masters = MasterWeights([w])
    assert masters.copies and masters.masters[0].dtype == torch.float32
    opt = torch.optim.SGD(masters.masters, lr=1.0)
    for _ in range(100):  # 100 steps of -1e-6: each far below bf16's spacing near 0.02 (about 1.2e-4)
        w.grad = torch.full((4,), 1e-6, dtype=torch.bfloat16)
        masters.collect()
        opt.step()
        opt.zero_grad()
        masters.publish()
    assert masters.masters[0][0].item() == pytest.approx(0.02 - 1e-4, rel=1e-3)
    assert w[0].item() == torch.tensor(0.02 - 1e-4).to(torch.bfloat16).item()  # the masters' value, rounded
    alone = torch.full((4,), 0.02, dtype=torch.bfloat16)
    for _ in range(100):
        alone -= torch.full((4,), 1e-6, dtype=torch.bfloat16)
    assert alone[0].item() == torch.tensor(0.02, dtype=torch.bfloat16).item()  # every step rounded away


def test_float32_parameters_are_their_own_masters():
    w = torch.nn.Parameter(torch.zeros(3))
    masters = MasterWeights([w])
    assert not masters.copies and masters.masters[0] is w
