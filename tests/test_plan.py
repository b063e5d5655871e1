"""quarklab plan: parameter counts from a meta-device build, and a training step's memory against a measured one."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from transformers import GPTJConfig, GPTJForCausalLM

from quarklab.config import preset
from quarklab.plan import GB, meta_model, plan, quantile_rows

MEASURE = r"""
import json, sys, torch
import quarklab as ql
from quarklab.config import QuarkConfig
from quarklab.train import train_on_rows
torch.set_num_threads(2)
config = QuarkConfig.from_dict(json.loads(sys.argv[2]))
policy = ql.load_policy(sys.argv[1], dtype="float32", device="cpu")
B, P, C = config.batch_size, int(sys.argv[3]), config.max_new_tokens
rows = [{"prompt_ids": [11 + i] * P, "completion_ids": [7] * C, "finished": True, "quantile": 0} for i in range(2 * B)]
def rss(field):
    return next(int(l.split()[1]) * 1024 for l in open("/proc/self/status") if l.startswith(field))
before = rss("VmRSS:")
open("/proc/self/clear_refs", "w").write("5")  # the peak (VmHWM) starts again from here
train_on_rows(policy, None, rows, config, [3, 4, 5, 6, 8], 0, 1, seed=0)  # 2 steps: the 2nd holds AdamW's moments
print(rss("VmHWM:") - before)
"""


@pytest.fixture(scope="module")
def gptj_77m(tmp_path_factory):
    """A randomly initialised GPT-J of 77 M parameters (GPT-J's vocabulary, 8 blocks of width 512)."""
    folder = tmp_path_factory.mktemp("gptj77m")
    GPTJForCausalLM(GPTJConfig(n_embd=512, n_layer=8, n_head=8, rotary_dim=32)).save_pretrained(folder)
    return folder


def test_meta_build_counts_parameters_without_weights(gptj_77m):
    model = meta_model(str(gptj_77m), trainable_fraction=0.25)
    real = GPTJForCausalLM.from_pretrained(gptj_77m)
    assert model.params == sum(p.numel() for p in real.parameters())
    blocks = real.transformer.h
    outside = model.params - sum(p.numel() for p in blocks.parameters())
    assert model.trainable == outside + 2 * sum(p.numel() for p in blocks[0].parameters())  # top int(0.25*8)=2
    gptj = meta_model("CarperAI/openai_summarize_tldr_sft", 0.3)  # offline: GPT-J 6B's config, nothing downloaded
    assert 6.0e9 < gptj.params < 6.1e9 and gptj.blocks == 28 and gptj.vocab == 50400


def test_the_plan_grows_gptjs_vocabulary_by_the_quantile_tokens(gptj_77m, world, tmp_path):
    """GPT-J 6B's tokenizer fills its 50,400 rows (143 <|extratoken_N|> after GPT-2's 50,257), so the 5 quantile
    tokens take ids 50400-50404 and the policy trains a 50,405-row embedding and head (each row: 4,096 in, 4,096 out
    and a bias); the reference keeps 50,400."""
    import quarklab as ql

    bare = meta_model("CarperAI/openai_summarize_tldr_sft", 0.3)
    assert (bare.vocab, bare.row_params, bare.row_trainable) == (50400, 4096 + 4096 + 1, 4096 + 4096 + 1)
    _, totals = plan(preset("tldr-gptj"))
    assert totals["policy_vocab"] == 50405
    assert totals["policy_params"] == bare.params + 5 * 8193 and totals["trainable_params"] == bare.trainable + 5 * 8193
    assert quantile_rows("sauc-abadal-lloret/gpt-j-6b-ALT-Quark-tldr", 50405, 5) == 0  # it holds them already
    assert quantile_rows(world.policy, 1407, 5) == 5  # read from the tiny tokenizer: 1,407 entries, 1,407 rows
    tok = ql.load_tokenizer(world.policy)
    tok.add_tokens([ql.quantile_token(k) for k in range(5)], special_tokens=True)
    tok.save_pretrained(tmp_path)
    assert quantile_rows(str(tmp_path), 1412, 5) == 0 and quantile_rows(str(tmp_path), 1412, 7) == 2
    assert quantile_rows(str(gptj_77m), 50400, 5) == 0  # no tokenizer to read: none counted


def test_predicted_training_step_memory_is_within_a_quarter_of_the_measured(gptj_77m):
    """The plan's training memory (gradients, AdamW's moments, activations, the loss's logits) against the peak RSS
    increase of two real optimizer steps on CPU (predicted 1.32 GiB, measured 1.40 GiB when written). glibc's
    dynamic mmap threshold would keep freed activations in the heap; a fixed one makes RSS follow live memory."""
    config = preset("tiny", policy=str(gptj_77m), dtype="float32", batch_size=4, max_new_tokens=32,
                    epochs_per_iteration=1, kl_coef=0.0, reward_base_model=None)
    prompt = 200
    table, _ = plan(config, prompt_tokens=prompt)
    row = table.set_index("strategy").loc["1 GPU"]
    predicted = (row["train_peak_gib"] - row["weights_gib"]) * GB
    out = subprocess.run([sys.executable, "-c", MEASURE, str(gptj_77m), json.dumps(config.to_dict()), str(prompt)],
                         capture_output=True, text=True, timeout=600,
                         env={**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"})
    assert out.returncode == 0, out.stderr[-2000:]
    measured = int(out.stdout.split()[-1])
    assert abs(predicted - measured) <= 0.25 * measured, (predicted / GB, measured / GB)


def test_plan_command_for_alts_run_on_one_h100(tmp_path):
    out = subprocess.run([sys.executable, "-m", "quarklab.cli", "plan", "--preset", "tldr-gptj", "--gpus", "1",
                          "--gpu-memory-gb", "80"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    text = out.stdout
    assert "6.05 B parameters, 28 blocks, 2.02 B trained" in text and "2,560 optimizer steps" in text
    for strategy in ("1 GPU", "DDP", "ZeRO-2", "ZeRO-3 / FSDP", "LoRA"):
        assert strategy in text
    assert "fits in 90% of 80 GiB: LoRA" in text  # full fine-tuning of 8 blocks needs checkpointing or more GPUs
    more = subprocess.run([sys.executable, "-m", "quarklab.cli", "plan", "--preset", "tldr-gptj", "--gpus", "1",
                           "--gpu-memory-gb", "80", "--set", "gradient_checkpointing=true"],
                          capture_output=True, text=True, timeout=300)
    assert "fits in 90% of 80 GiB: 1 GPU" in more.stdout


def test_one_80gb_gpu_fits_alts_full_run_with_checkpointing_when_each_phase_holds_only_its_models():
    """tldr-gptj (kl_coef 0, an fp32 reference) with gradient checkpointing on one 80 GiB GPU: with every model kept
    through every phase, training holds all three (44.7 GiB of weights, 80.9 GiB peak: no fit); with idle models
    offloaded (the default on a GPU) it holds the policy alone, and every phase fits with room. The starting model
    generates in the policy's bf16, so iteration 1 samples without the fp32 reference (23.7 GiB of KV cache, not
    47.3)."""
    config = preset("tldr-gptj", gradient_checkpointing=True)
    new, totals = plan(config)
    old, old_totals = plan(config.replace(idle_models="keep"))
    new, old = new.set_index("strategy").loc["1 GPU"], old.set_index("strategy").loc["1 GPU"]
    assert old["weights_gib"] == pytest.approx(44.7, abs=0.05) and old["train_peak_gib"] == pytest.approx(80.9, abs=0.05)
    assert not old["fits"] and old_totals["moved_bytes"] == 0
    assert new["weights_gib"] == pytest.approx(11.3, abs=0.05)  # the policy alone: the reference and RM are parked
    assert old["train_peak_gib"] - new["train_peak_gib"] == pytest.approx(old["weights_gib"] - new["weights_gib"])
    peaks = new[["sample_peak_gib", "score_peak_gib", "train_peak_gib", "eval_peak_gib"]]
    assert new["fits"] and peaks.max() < 0.9 * 80 - 6  # room to spare under the 90% headroom
    assert peaks["eval_peak_gib"] == peaks.max() == pytest.approx(65.5, abs=0.05)  # it holds all three models
    assert peaks["sample_peak_gib"] == pytest.approx(11.3 + 23.7, abs=0.3)  # the bf16 policy and its KV cache
    assert totals["holds"]["train", 2] == ("policy",) and totals["holds"]["score", 2] == ("reward",)
    assert totals["holds"]["sample", 1] == totals["holds"]["sample", 2] == ("policy",)
    # per iteration: the reference and RM out and in around training and evaluation, the policy out for scoring
    assert totals["moved_bytes"] / GB == pytest.approx(2 * (22.5 + 10.9) + 2 * (11.3 + 10.9), abs=0.3)
    assert 4 < totals["move_seconds"] < 6  # at 25 GB/s
