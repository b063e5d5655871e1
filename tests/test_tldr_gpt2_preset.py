"""The `tldr-gpt2` preset (one 24 GB consumer GPU) end to end on CPU, offline, under its own hub ids: a hub cache
holds a 12-block GPT-2 stand-in as ``gpt2`` and a tiny one-logit DeBERTa-v2 sequence classifier as
``OpenAssistant/reward-model-deberta-v3-large-v2``, both random and both with the tiny world's byte-level BPE
tokenizer (the real RM's SentencePiece tokenizer cannot be built offline; the model class, its config's
architecture and the sequence-classification reward path are the real ones). Only sizes and the dataset are
overridden."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import quarklab as ql
from quarklab import runs
from quarklab.config import preset
from quarklab.testing import cache_repo

POLICY, RM = "gpt2", "OpenAssistant/reward-model-deberta-v3-large-v2"
SIZES = ["dataset=tiny-tldr", "iterations=1", "prompts_per_iteration=3", "samples_per_prompt=10",
         "max_new_tokens=10", "eval_prompts=4", "eval_max_new_tokens=10", "sample_batch_size=30", "eval_batch_size=8"]


def standins(world, root: Path) -> tuple[Path, Path]:
    from transformers import (AutoTokenizer, DebertaV2Config, DebertaV2ForSequenceClassification, GPT2Config,
                              GPT2LMHeadModel)

    tok = AutoTokenizer.from_pretrained(world.policy)
    eos = tok.eos_token_id
    torch.manual_seed(0)
    policy = GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_positions=1024, n_embd=64, n_layer=12, n_head=4,
                                        bos_token_id=eos, eos_token_id=eos))  # GPT-2 124M's 12 blocks, 1024 positions
    policy.save_pretrained(root / "gpt2")
    tok.save_pretrained(root / "gpt2")
    # DeBERTa-v3's shape where the code reads it: relative attention, no absolute positions, no token types, 512
    # positions, one output (num_labels=1) as OpenAssistant's RM.
    rm = DebertaV2ForSequenceClassification(DebertaV2Config(
        vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
        max_position_embeddings=512, relative_attention=True, position_buckets=256, pos_att_type=["p2c", "c2p"],
        position_biased_input=False, type_vocab_size=0, num_labels=1, pad_token_id=eos))
    rm.save_pretrained(root / "rm")
    tok.model_max_length = 512
    tok.save_pretrained(root / "rm")
    return root / "gpt2", root / "rm"


@pytest.fixture(scope="module")
def hub_cache(world, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("gpt2-standins")
    policy, rm = standins(world, root)
    cache = root / "hub"
    for repo_id, folder in ((POLICY, policy), (RM, rm)):
        cache_repo(cache, repo_id, {f.name: f for f in folder.iterdir()})
    return cache


def offline(hub_cache: Path) -> dict:
    return {**os.environ, "HF_HUB_CACHE": str(hub_cache), "HF_HUB_OFFLINE": "1"}


@pytest.fixture(scope="module")
def gpt2_run(hub_cache, tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("runs") / "gpt2"
    cmd = [sys.executable, "-m", "quarklab.cli", "train", "--preset", "tldr-gpt2", "--run-dir", str(run_dir)]
    proc = subprocess.run(cmd + [a for s in SIZES for a in ("--set", s)], env=offline(hub_cache),
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return run_dir


def test_the_run_is_the_preset_with_only_sizes_and_dataset_changed(gpt2_run):
    config = ql.QuarkConfig.from_dict(json.loads((gpt2_run / "config.json").read_text()))
    assert config == preset("tldr-gpt2").with_overrides(SIZES)
    assert (config.policy, config.reward, config.lr, config.trainable_fraction) == (POLICY, RM, 2e-5, 1.0)


def test_the_checkpoint_is_a_fully_trained_bfloat16_gpt2(gpt2_run, hub_cache):
    folder = runs.checkpoint_path(gpt2_run, 1)
    assert json.loads((folder / "config.json").read_text())["architectures"] == ["GPT2LMHeadModel"]
    start = load_file(str(next(hub_cache.glob("models--gpt2/snapshots/*/model.safetensors"))))
    ckpt = load_file(str(folder / "model.safetensors"))
    assert {t.dtype for t in ckpt.values()} == {torch.bfloat16}
    blocks = {int(k.split(".")[2]) for k in start if k.startswith("transformer.h.")
              and k.endswith(".weight") and not torch.equal(start[k].to(torch.bfloat16), ckpt[k])}
    assert blocks == set(range(12))  # trainable_fraction 1.0: every block trains
    assert ckpt["transformer.wte.weight"].shape[0] == start["transformer.wte.weight"].shape[0] + 5  # K=5 tokens


def test_the_pool_is_scored_by_the_deberta_classifier_through_the_presets_template(gpt2_run, hub_cache):
    pool = runs.read_pool(gpt2_run, 1)
    assert len(pool) == 30 and sorted(pool["quantile"].unique()) == [0, 1, 2, 3, 4]
    rm_dir = next(hub_cache.glob("models--OpenAssistant--*/snapshots/*"))
    assert json.loads((rm_dir / "config.json").read_text())["architectures"] == ["DebertaV2ForSequenceClassification"]
    reward = ql.load_reward(rm_dir, template="{post}[SEP]{summary}", max_length=512, dtype="bfloat16",
                            precision="float32")
    rows = pool.iloc[:6]
    assert reward(rows["prompt"].tolist(), rows["completion"].tolist()).tolist() == rows["reward"].tolist()
    assert pool["reward"].nunique() > 1


def test_plan_gives_gpt2_figures_for_one_24gb_gpu_offline(tmp_path):
    env = {**os.environ, "HF_HUB_CACHE": str(tmp_path), "HF_HUB_OFFLINE": "1"}  # an empty cache: nothing to read
    proc = subprocess.run([sys.executable, "-m", "quarklab.cli", "plan", "--preset", "tldr-gpt2", "--gpus", "1",
                           "--gpu-memory-gb", "24"], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    assert "policy gpt2: 0.12 B parameters, 12 blocks, 0.12 B trained" in out, out
    assert "reward backbone 0.43 B" in out  # OpenAssistant's DeBERTa-v3 large, counted from its known config
    assert "fits in 90% of 24 GiB: 1 GPU" in out
    assert "160 optimizer steps" in out  # 256 prompts x 5 quantiles x 2 rows / 32 rows a step x 2 epochs
