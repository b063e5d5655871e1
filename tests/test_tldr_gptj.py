"""The `tldr-gptj` preset (ALT's run) end to end on CPU: its own hub ids, answered offline from a hub cache that
holds local stand-ins of the same architecture and file layout (a 28-block GPT-J with GPT-J 6B's vocabulary layout as
CarperAI/openai_summarize_tldr_sft, a value-head RM in CarperAI's single-file layout as
CarperAI/openai_summarize_tldr_rm_checkpoint/pytorch_model.bin). Only the sizes and the dataset are overridden."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

import quarklab as ql
from quarklab import runs
from quarklab.config import preset
from quarklab.testing import tldr_gptj_hub_cache
from quarklab.tokens import quantile_token_ids

SFT, RM = "CarperAI/openai_summarize_tldr_sft", "CarperAI/openai_summarize_tldr_rm_checkpoint"
SIZES = ["dataset=tiny-tldr", "iterations=2", "prompts_per_iteration=3", "samples_per_prompt=10",
         "max_new_tokens=10", "eval_prompts=4", "eval_max_new_tokens=10", "sample_batch_size=30", "eval_batch_size=8",
         "dtype=bfloat16", "final_protocol=None"]  # the card's protocol is run below on 4 prompts, not all 400


@pytest.fixture(scope="module")
def hub_cache(world, tmp_path_factory) -> Path:
    return tldr_gptj_hub_cache(tmp_path_factory.mktemp("standins"), world=world)


@pytest.fixture(scope="module")
def gptj_run(hub_cache, tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("runs") / "gptj"
    env = {**os.environ, "HF_HUB_CACHE": str(hub_cache), "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "quarklab.cli", "train", "--preset", "tldr-gptj", "--run-dir", str(run_dir)]
    proc = subprocess.run(cmd + [a for s in SIZES for a in ("--set", s)], env=env, capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return run_dir


def test_the_run_keeps_alts_settings(gptj_run):
    config = ql.QuarkConfig.from_dict(json.loads((gptj_run / "config.json").read_text()))
    assert config == preset("tldr-gptj").with_overrides(SIZES)
    assert (config.policy, config.reward, config.reward_base_model) == (SFT, RM + "/pytorch_model.bin", SFT)
    assert (config.adam_beta1, config.adam_beta2, config.weight_decay, config.lr) == (0.8, 0.999, 3e-7, 2e-5)
    assert (config.batch_size, config.grad_accum, config.epochs_per_iteration) == (8, 2, 2)
    assert config.token_init == "alt"


def test_quantile_tokens_take_ids_50400_to_50404_past_gptjs_143_extra_tokens(gptj_run, hub_cache):
    sft_dir = next(hub_cache.glob("models--*sft/snapshots/*"))
    sft_tok = ql.load_tokenizer(sft_dir)
    assert len(sft_tok) == 50400 and sft_tok.eos_token_id == 50256
    extras = [t for t in sft_tok.get_vocab() if t.startswith("<|extratoken_")]
    assert len(extras) == 143 and sft_tok.convert_tokens_to_ids(["<|extratoken_1|>", "<|extratoken_143|>"]) == \
        [50257, 50399]
    folder = runs.checkpoint_path(gptj_run, 2)
    assert quantile_token_ids(ql.load_tokenizer(folder)) == [50400, 50401, 50402, 50403, 50404]
    ckpt = load_file(str(folder / "model.safetensors"))
    assert ckpt["transformer.wte.weight"].shape[0] == ckpt["lm_head.weight"].shape[0] == 50405  # as ALT's 50,405
    assert ckpt["lm_head.bias"].shape == (50405,)


def test_eight_top_blocks_of_28_train_and_the_checkpoint_is_bfloat16(gptj_run, hub_cache):
    sft = load_file(str(next(hub_cache.glob("models--*sft/snapshots/*/model.safetensors"))))
    ckpt = load_file(str(runs.checkpoint_path(gptj_run, 2) / "model.safetensors"))
    assert {t.dtype for t in ckpt.values()} == {torch.bfloat16}  # the dtype the policy was loaded in
    changed = {int(k.split(".")[2]) for k in sft if k.startswith("transformer.h.")
               and not torch.equal(sft[k].to(torch.bfloat16), ckpt[k])}
    assert changed == set(range(20, 28))  # ALT's int(0.3 * 28) = 8, from the top
    assert not torch.equal(sft["transformer.wte.weight"].to(torch.bfloat16), ckpt["transformer.wte.weight"])


def test_training_steps_and_schedule_follow_the_preset(gptj_run):
    metrics = runs.read_metrics(gptj_run)
    train = metrics[metrics["kind"] == "train"]
    # 3 prompts x 5 quantiles x 2 rows = 30 rows: 4 micro-batches of 8 per epoch, 2 epochs, 2 per step = 4 steps
    assert train.groupby("iteration").size().tolist() == [4, 4] and (train["rows"] == 30).all()
    assert train["lr"].tolist()[:4] == pytest.approx([0.0, 2e-5, 2e-5 * 2 / 3, 2e-5 / 3])  # warmup of 1 step


def test_pool_is_scored_by_the_carperai_layout_rm_fed_as_alt(gptj_run, hub_cache):
    pool = runs.read_pool(gptj_run, 1)
    assert len(pool) == 30 and pool.groupby("prompt_id")["quantile"].value_counts().eq(2).all()
    rm_file = next(hub_cache.glob("models--*rm_checkpoint/snapshots/*/pytorch_model.bin"))
    sft_dir = rm_file.parents[3] / f"models--{SFT.replace('/', '--')}" / "snapshots" / ("0" * 40)
    reward = ql.load_reward(rm_file, base_model=sft_dir, max_length=550, dtype="float16", precision="float16")
    rows = pool.iloc[:6]  # scored again, in another batch: the same bits, each a float16 value (ALT's fp16 RM)
    scores = reward(rows["prompt"].tolist(), rows["completion"].tolist())
    assert scores.tolist() == rows["reward"].tolist() == scores.astype(np.float16).astype(np.float64).tolist()


def test_evaluation_reads_the_valid_split(gptj_run):
    valid = set(ql.load_prompts("tiny-tldr", "valid", limit=4)["prompt"])
    scored = pd.read_parquet(runs.eval_path(gptj_run, 2))
    assert set(scored["prompt"]) == valid
    metrics = runs.read_metrics(gptj_run)
    assert set(metrics.loc[metrics["kind"] == "eval", "iteration"]) == {0, 1, 2}


def test_quarklab_eval_runs_the_cards_protocol_on_the_stand_ins(gptj_run, hub_cache, tmp_path):
    """`quarklab eval` under alt-card, offline: the run's last checkpoint (token 0 = id 50400) and the SFT model by
    its hub id (no token), with the CarperAI-layout RM (fp16 scores) and the perplexity reference in float32."""
    env = {**os.environ, "HF_HUB_CACHE": str(hub_cache), "HF_HUB_OFFLINE": "1"}
    used = {}
    for name, policy, extra in (("run", str(gptj_run), []), ("sft", SFT, ["--dataset", "tiny-tldr"])):
        out = tmp_path / name
        proc = subprocess.run([sys.executable, "-m", "quarklab.cli", "eval", policy, "--protocol", "alt-card",
                               "--prompts", "4", "--out", str(out), *extra], env=env, capture_output=True, text=True,
                              timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
        used[name] = json.loads((out / "summary.json").read_text())["used"]
        samples = pd.read_parquet(out / "samples.parquet")
        assert len(samples) == 4 and (samples["num_tokens"] <= 128).all()
        assert samples["reward"].tolist() == samples["reward"].astype(np.float16).astype(float).tolist()  # fp16
    run, sft = used["run"], used["sft"]
    assert run["conditioning"] == "_QUANTILE_TOKEN_0_" and sft["conditioning"] == "none"
    assert ql.load_tokenizer(run["policy"]).convert_tokens_to_ids("_QUANTILE_TOKEN_0_") == 50400
    assert (run["reward"], run["reference"]) == (RM + "/pytorch_model.bin", SFT)  # the run's own models
    assert (sft["reward"], sft["reference"]) == (RM + "/pytorch_model.bin", SFT)  # the protocol's models
    assert run["reference_dtype"] == sft["reference_dtype"] == "float32" and run["protocol"]["eval_split"] == "test"
