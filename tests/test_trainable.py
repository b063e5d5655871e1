"""quarklab.trainable: ALT's rule, the top int(fraction * n_layers) transformer blocks train (at least one) with
everything outside the blocks; and LoRA adapters on those blocks only."""

from __future__ import annotations

import pytest
import torch
from transformers import GPTJConfig, GPTJForCausalLM

from quarklab.config import preset
from quarklab.errors import QuarkError
from quarklab.trainable import set_trainable, trained_blocks, transformer_blocks, with_lora


def gptj(n_layer: int) -> GPTJForCausalLM:
    torch.manual_seed(0)
    return GPTJForCausalLM(GPTJConfig(vocab_size=64, n_embd=16, n_layer=n_layer, n_head=2, rotary_dim=4,
                                      n_positions=32))


@pytest.mark.parametrize("n_layers, fraction, top", [(28, 0.3, 8), (3, 0.3, 1), (3, 0.7, 2), (4, 1.0, 4)])
def test_the_top_blocks_train_and_nothing_below_them(n_layers, fraction, top):
    model = gptj(n_layers)
    count = set_trainable(model, fraction)
    assert trained_blocks(n_layers, fraction) == top
    trains = [all(p.requires_grad for p in block.parameters()) for block in model.transformer.h]
    assert trains == [False] * (n_layers - top) + [True] * top
    assert model.transformer.wte.weight.requires_grad and model.lm_head.weight.requires_grad
    assert count == sum(p.numel() for p in model.parameters() if p.requires_grad)


def test_transformer_blocks_are_found_by_their_count_or_one_error():
    assert transformer_blocks(gptj(2))[0] == "h"
    no_blocks = torch.nn.Sequential(torch.nn.Linear(2, 2))
    no_blocks.config = GPTJConfig(n_layer=3)  # says 3 blocks, holds no list of 3
    with pytest.raises(QuarkError, match="one list of transformer blocks"):
        transformer_blocks(no_blocks)


def test_lora_adapts_only_the_top_blocks_and_the_quantile_rows():
    pytest.importorskip("peft")
    model = gptj(4)
    lora = with_lora(model, preset("tiny", lora_rank=2, trainable_fraction=0.5), control_ids=[60, 61])
    adapted = {int(n.split(".h.")[1].split(".")[0]) for n, p in lora.named_parameters()
               if p.requires_grad and "lora_" in n}
    assert adapted == {2, 3}
    assert any(p.requires_grad for n, p in lora.named_parameters() if "trainable_tokens" in n)
