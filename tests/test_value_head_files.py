"""quarklab.value_head_files: a value-head reward model written in quarklab's folder layout reads back whole, and a
state-dict file is read without unpickling anything but tensors (whole reward models in both layouts are scored in
test_reward_models)."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file
from transformers import GPT2Config, GPT2LMHeadModel

from quarklab.errors import QuarkError
from quarklab.value_head_files import V_HEAD_FILE, V_HEAD_KEY, load_folder, read_state_dict, save_value_head_model


class Evil:
    """A custom class: a pickled instance must never be loaded."""


@pytest.fixture(scope="module")
def lm():
    torch.manual_seed(0)
    return GPT2LMHeadModel(GPT2Config(vocab_size=64, n_embd=16, n_layer=1, n_head=2, n_positions=32)).eval()


def test_the_folder_layout_round_trips_backbone_and_head(lm, sft, tmp_path):
    _, tokenizer = sft
    head = torch.nn.Linear(16, 1, bias=False)
    folder = save_value_head_model(lm, tokenizer, head, tmp_path / "rm")
    assert (folder / V_HEAD_FILE).is_file() and (folder / "config.json").is_file()
    backbone, weight = load_folder(folder, torch.float32, trust_remote_code=False)
    assert torch.equal(weight, head.weight.detach())
    for name, tensor in lm.transformer.state_dict().items():
        assert torch.equal(backbone.state_dict()[name], tensor), name


def test_a_head_with_a_bias_or_the_wrong_shape_is_refused(lm, sft, tmp_path):
    _, tokenizer = sft
    with pytest.raises(QuarkError, match="no bias"):
        save_value_head_model(lm, tokenizer, torch.nn.Linear(16, 1), tmp_path / "a")
    with pytest.raises(QuarkError, match=r"expected \(1, 16\)"):
        save_value_head_model(lm, tokenizer, torch.zeros(2, 16), tmp_path / "b")


def test_state_dicts_hold_tensors_only(tmp_path):
    plain = {V_HEAD_KEY: torch.ones(1, 4), "transformer.wte.weight": torch.zeros(3, 4)}
    torch.save(plain, tmp_path / "plain.bin")
    save_file(plain, str(tmp_path / "plain.safetensors"))
    for name in ("plain.bin", "plain.safetensors"):
        assert {k: v.tolist() for k, v in read_state_dict(tmp_path / name).items()} == \
            {k: v.tolist() for k, v in plain.items()}
    torch.save({**plain, "evil": Evil()}, tmp_path / "evil.bin")
    with pytest.raises(QuarkError, match="only files holding nothing but tensors"):
        read_state_dict(tmp_path / "evil.bin")
    torch.save([torch.ones(1)], tmp_path / "list.pt")
    with pytest.raises(QuarkError, match="not a flat state dict"):
        read_state_dict(tmp_path / "list.pt")
    (tmp_path / "bad.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(QuarkError, match="could not read the safetensors file"):
        read_state_dict(tmp_path / "bad.safetensors")
