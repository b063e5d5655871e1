"""quarklab.models: loading policies and tokenizers; left padding needs explicit position ids for GPT-2 and GPT-J."""

from __future__ import annotations


import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel, GPTJConfig, GPTJForCausalLM

import quarklab as ql
from quarklab.models import context_length


def test_local_folder_loads_with_dtype_and_device(world):
    model = ql.load_policy(world.policy, dtype="bfloat16", device="cpu")
    assert model.dtype == torch.bfloat16 and model.device.type == "cpu" and not model.training
    assert ql.load_policy(world.policy).dtype == torch.float32  # auto on CPU
    with pytest.raises(ql.QuarkError, match="unknown dtype"):
        ql.load_policy(world.policy, dtype="float8")


def test_tiny_tldr_names_the_offline_worlds_sft_model(world, sft):
    model, tokenizer = ql.load_policy("tiny-tldr"), ql.load_tokenizer("tiny-tldr")
    assert tokenizer.get_vocab() == sft[1].get_vocab()
    for (name, a), (_, b) in zip(model.state_dict().items(), sft[0].state_dict().items()):
        assert torch.equal(a, b), name
    assert ql.resolve_model("tiny-tldr") == world.policy and ql.resolve_model("org/model") == "org/model"


def test_context_length_is_the_smaller_of_model_and_tokenizer_limits(sft):
    model, tokenizer = sft
    assert context_length(model) == context_length(model.config) == model.config.n_positions == 512
    assert context_length(model, tokenizer) == min(512, tokenizer.model_max_length)
    short = GPT2Config(n_positions=1024)
    tokenizer_limit = tokenizer.model_max_length
    try:
        tokenizer.model_max_length = 300
        assert context_length(short, tokenizer) == 300
    finally:
        tokenizer.model_max_length = tokenizer_limit
    assert context_length(short) == 1024
    assert context_length(GPTJConfig(n_positions=0)) == 2048  # nothing says: the fallback


def _tiny(kind: str, vocab: int):
    torch.manual_seed(0)
    if kind == "gpt2":
        return GPT2LMHeadModel(GPT2Config(vocab_size=vocab, n_embd=32, n_layer=2, n_head=2, n_positions=64)).eval()
    return GPTJForCausalLM(GPTJConfig(vocab_size=vocab, n_embd=32, n_layer=2, n_head=4, rotary_dim=4,
                                      n_positions=64)).eval()


@pytest.mark.parametrize("kind", ["gpt2", "gptj"])
def test_left_padded_batch_needs_position_ids(kind, sft):
    _, tokenizer = sft
    model = _tiny(kind, len(tokenizer))
    texts = ["a short one", "a much longer prompt that needs no padding at all here"]
    batch = tokenizer(texts, return_tensors="pt", padding=True)
    assert batch["attention_mask"][0, 0] == 0  # left-padded
    alone = model(**tokenizer(texts[0], return_tensors="pt")).logits[0]
    n = alone.shape[0]
    with torch.no_grad():
        right = model(**batch, position_ids=ql.position_ids_from_mask(batch["attention_mask"])).logits[0, -n:]
        wrong = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[0, -n:]
    assert torch.allclose(right, alone, atol=1e-5)
    if kind == "gpt2":  # GPT-2 numbers pad tokens too unless told otherwise
        assert not torch.allclose(wrong, alone, atol=1e-3)
