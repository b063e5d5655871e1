"""The tiny CarperAI-layout reward model stand-in: its file, its loading, and that it tracks tiny-tldr."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import quarklab as ql
from quarklab.config import QuarkConfig
from quarklab.quark import Session
from quarklab.reward_models import CARPER_TEMPLATE, guess_kind
from quarklab.testing import carper_reward_model
from quarklab.testing.standins import VARIANTS, read_rows, tldr_pairs


@pytest.fixture(scope="module")
def standin(world, tmp_path_factory):
    """A stand-in written to an explicit path (always built anew)."""
    return carper_reward_model(tmp_path_factory.mktemp("rm_checkpoint") / "pytorch_model.bin", world=world)


def test_standin_is_one_state_dict_in_carperai_layout(standin, world):
    assert sorted(p.name for p in standin.parent.iterdir()) == ["pytorch_model.bin", "standin.json"]  # no temp files
    state = torch.load(standin, map_location="cpu", weights_only=True)
    sft = load_file(f"{world.policy}/model.safetensors")
    backbone = {k.removeprefix("transformer.") for k in sft if k.startswith("transformer.")}
    assert set(state) == {f"transformer.{k}" for k in backbone} | {"v_head.weight"}
    for k in backbone:
        torch.testing.assert_close(state[f"transformer.{k}"], sft[f"transformer.{k}"])
    assert state["v_head.weight"].shape == (1, 128) and state["v_head.weight"].abs().sum() > 0
    info = json.loads((standin.parent / "standin.json").read_text())
    assert info["pearson_r_held_out"] > 0.5 and info["pairs_fit"] == 64 * len(VARIANTS)


def test_standin_scores_track_tiny_tldr_on_held_out_posts(standin, world, sft):
    assert guess_kind(standin) == "value-head"
    reward, truth = ql.load_reward(standin, base_model=world.policy, device="cpu"), ql.load_reward("tiny-tldr")
    prompts, completions = tldr_pairs(read_rows(world, "test", 40, seed=7), seed=7)  # posts the fit never saw
    scores = reward(prompts, completions)
    assert np.corrcoef(scores, truth(prompts, completions))[0, 1] > 0.5  # measured 0.72
    by_variant = scores.reshape(-1, len(VARIANTS))
    assert (by_variant.argmin(1) == VARIANTS.index("empty")).mean() > 0.9  # an empty summary is worst
    # what a run scores: the SFT policy's own samples of held-out posts
    out = ql.sample(*sft, ql.load_prompts("tiny-tldr", "test").sample(32, random_state=1), n=4, seed=1)
    r = np.corrcoef(reward(out["prompt"], out["completion"]), truth(out["prompt"], out["completion"]))[0, 1]
    assert r > 0.2  # measured 0.45


def test_standin_is_cached_in_the_world_and_deterministic(standin, world):
    cached = carper_reward_model(world=world)
    assert cached.parent.parent == world.root / "standins" and cached.name == "pytorch_model.bin"
    stamp = cached.stat().st_mtime_ns
    assert carper_reward_model(world=world) == cached and cached.stat().st_mtime_ns == stamp  # reused
    a = torch.load(cached, weights_only=True)
    b = torch.load(standin, weights_only=True)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)  # same seed, same file
    with pytest.raises(ql.QuarkError, match="pass path="):
        carper_reward_model(base_model=world.policy, world=world)


def test_session_feeds_the_reward_as_the_config_says(standin, world, tmp_path):
    config = QuarkConfig(reward=str(standin), reward_base_model=world.policy, reward_max_length=64,
                         reward_dtype="bfloat16", reward_template="{prompt}{completion}<|endoftext|>",
                         device="cpu", eval_prompts=2)
    fn = Session.open(config, tmp_path).reward.fn
    assert (fn.max_length, fn.template, fn.backbone.dtype) == (64, config.reward_template, torch.bfloat16)
    default = Session.open(config.replace(reward_max_length=None, reward_template=None, reward_dtype="auto"),
                           tmp_path).reward.fn
    assert (default.max_length, default.template, default.backbone.dtype) == (512, CARPER_TEMPLATE, torch.float32)


# --- the GPT-J 6B-layout stand-in -----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def gptj(world, tmp_path_factory):
    """A GPT-J stand-in folder, 2 blocks (the layout under test is the vocabulary's, not the depth)."""
    from quarklab.testing import gptj_standin

    return gptj_standin(tmp_path_factory.mktemp("gptj") / "sft", n_layer=2, world=world)


def test_gptj_standin_has_gptj_6bs_vocabulary_layout(gptj, world):
    from transformers import AutoConfig, AutoTokenizer

    tok, tiny = ql.load_tokenizer(gptj), AutoTokenizer.from_pretrained(world.policy)
    assert len(tok) == 50400 == AutoConfig.from_pretrained(gptj).vocab_size  # GPT-J 6B: 50,257 + 143
    assert tok.eos_token == tok.bos_token == tok.unk_token == "<|endoftext|>"
    assert (tok.eos_token_id, tok.bos_token_id, tok.unk_token_id) == (50256, 50256, 50256)  # GPT-2's last id
    extras = [f"<|extratoken_{n}|>" for n in range(1, 144)]
    assert tok.convert_tokens_to_ids(extras) == list(range(50257, 50400))
    assert (tok.convert_tokens_to_ids("<|extratoken_1|>"), tok.convert_tokens_to_ids("<|extratoken_143|>")) == \
        (50257, 50399)
    decoder = tok.added_tokens_decoder
    assert [decoder[i].special for i in (50256, 50257, 50399)] == [True, False, False]  # as GPT-J's added tokens
    assert tok.model_max_length == 2048
    text = "SUBREDDIT: r/relationships\nTITLE: My (24F) boyfriend forgot\nTL;DR:"
    ids, tiny_ids = tok(text)["input_ids"], tiny(text)["input_ids"]
    assert tok.convert_ids_to_tokens(ids) == tiny.convert_ids_to_tokens(tiny_ids)  # the same pieces
    assert ids == [i - 1 for i in tiny_ids] and tok.decode(ids) == text  # tiny's <|endoftext|> (0) moved to 50256
    assert tok(" the end<|endoftext|>")["input_ids"][-1] == 50256
    assert tok("a<|extratoken_7|>")["input_ids"][-1] == 50263


def test_quantile_tokens_on_the_gptj_layout_are_50400_to_50404_in_50405_rows(gptj):
    from quarklab.tokens import add_quantile_tokens

    policy, tok = ql.load_policy(gptj), ql.load_tokenizer(gptj)
    assert policy.get_input_embeddings().num_embeddings == 50400
    ids = add_quantile_tokens(policy, tok, 5, seed=0)
    assert ids == [50400, 50401, 50402, 50403, 50404] and len(tok) == 50405  # as in ALT's run
    head = policy.get_output_embeddings()
    assert policy.get_input_embeddings().num_embeddings == head.weight.shape[0] == head.bias.shape[0] == 50405


def test_gptj_standin_is_deterministic_and_small(gptj, world, tmp_path):
    from quarklab.testing import gptj_standin

    again = gptj_standin(tmp_path / "again", n_layer=2, world=world)
    for name in ["tokenizer.json", "tokenizer_config.json", "config.json", "model.safetensors"]:
        assert (again / name).read_bytes() == (gptj / name).read_bytes(), name
    assert (gptj / "tokenizer.json").stat().st_size < 2_000_000
