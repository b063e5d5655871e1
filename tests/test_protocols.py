"""`quarklab eval` and the alt-card protocol: each field against a hand computation, on real tiny runs and models."""

from __future__ import annotations

import json
import subprocess
import sys
import typing
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

import quarklab as ql
from quarklab import config as qc
from quarklab.protocols import ALT_CARD, PROTOCOLS, evaluate_policy, get_protocol, resolve_target, write_result
from quarklab.testing import gptj_standin
from tests.conftest import train_tiny

RUN = ["iterations=1", "prompts_per_iteration=8", "samples_per_prompt=8", "max_new_tokens=24", "eval_prompts=8",
       "eval_max_new_tokens=24", "batch_size=16", "num_quantiles=3", "final_protocol=alt-card"]


@pytest.fixture(scope="module")
def run(world, tmp_path_factory) -> Path:
    """A tiny run that ends with the alt-card evaluation of its last checkpoint and of its reference."""
    return train_tiny(tmp_path_factory.mktemp("runs") / "tiny", RUN)


@pytest.fixture(scope="module")
def padded(tmp_path_factory, world) -> Path:
    """Six test prompts of the tiny world with whitespace around them, as a local dataset file."""
    rows = ql.load_prompts("tiny-tldr", "test", limit=6)
    path = tmp_path_factory.mktemp("data") / "padded.jsonl"
    path.write_text("".join(json.dumps({"prompt": f"  \n{p}  \n"}) + "\n" for p in rows["prompt"]))
    return path


def test_alt_card_is_alts_evaluation_field_by_field():
    p = ALT_CARD
    assert (p.eval_split, p.eval_prompts, p.eval_max_new_tokens, p.strip_prompts) == ("test", None, 128, True)
    assert (p.perplexity, p.reference_dtype, p.reward_dtype, p.length) == ("alt", "float32", "float16", "text")
    assert p.reward_precision == "float16"  # ALT's RM runs in fp16: its scores are fp16 values
    assert p.models["reward"] == "CarperAI/openai_summarize_tldr_rm_checkpoint/pytorch_model.bin"
    assert p.models["reference"] == p.models["reward_base_model"] == "CarperAI/openai_summarize_tldr_sft"
    assert (p.models["dataset"], p.models["reward_max_length"]) == ("CarperAI/openai_summarize_tldr", 550)
    assert set(p.sources) >= {"eval_split", "eval_max_new_tokens", "strip_prompts", "perplexity", "reference_dtype"}
    # the config field that names a final protocol accepts exactly the named protocols
    assert set(typing.get_args(qc.FinalProtocol)) == set(PROTOCOLS)


def test_a_run_ends_with_the_protocol_evaluation_of_its_checkpoint_and_reference(run):
    rows = {}
    for it in (0, 1):
        out = run / "evals" / f"alt-card-iter_{it:03d}"
        summary = json.loads((out / "summary.json").read_text())
        samples = pd.read_parquet(out / "samples.parquet")
        assert summary["used"]["iteration"] == it and summary["summary"]["prompts"] == 400 == len(samples)
        assert samples["prompt_id"].tolist() == list(range(400))  # the whole test split, in order
        assert (samples["num_tokens"] <= 128).all() and summary["used"]["protocol"]["eval_max_new_tokens"] == 128
        assert (out / "table.md").read_text().startswith("| model | token | RM | PPL | Avg. len | cut | prompts |")
        rows[it] = summary
    assert rows[0]["used"]["conditioning"] == "none" and rows[1]["used"]["conditioning"] == "_QUANTILE_TOKEN_0_"
    assert rows[0]["summary"]["model"] == "tiny reference" and rows[1]["summary"]["model"] == "tiny iteration 1"
    assert rows[0]["used"]["reward"] == "tiny-tldr" and rows[0]["used"]["reference_dtype"] == "float32"


def test_each_field_matches_a_hand_computation(run, padded, world):
    result = evaluate_policy(run, "alt-card", dataset=str(padded))
    s, tok = result.samples, ql.load_tokenizer(resolve_target(run).source)
    model = ql.load_policy(resolve_target(run).source, dtype="float32", device="cpu")
    reference = ql.load_policy(world.policy, dtype="float32", device="cpu")
    token0 = tok.convert_tokens_to_ids("_QUANTILE_TOKEN_0_")
    stripped = [p.strip() for p in ql.load_prompts(str(padded))["prompt"]]
    assert s["prompt"].tolist() == stripped and (s["token"] == 0).all()
    reward = ql.load_reward("tiny-tldr", precision="float16")
    for i in (0, 3):
        ids = tok(stripped[i], add_special_tokens=False)["input_ids"]
        assert list(s["prompt_ids"][i]) == ids  # the stripped text, encoded
        out = model.generate(torch.tensor([[token0] + ids]), do_sample=False, max_new_tokens=128,
                             pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)[0, len(ids) + 1:].tolist()
        gen = out[:out.index(tok.eos_token_id)] if tok.eos_token_id in out else out
        assert list(s["completion_ids"][i]) == gen  # greedy, on token 0
        text = tok.decode(gen, skip_special_tokens=True)
        target = tok(text, add_special_tokens=False)["input_ids"]  # ALT: the text re-tokenized, no EOS
        assert s["length"][i] == len(target)
        logits = reference(torch.tensor([ids + target])).logits[0, len(ids) - 1:-1].float()  # no token, fp32
        nll = F.cross_entropy(logits, torch.tensor(target)).item()
        assert s["perplexity"][i] == pytest.approx(np.exp(nll), rel=1e-5)
        assert s["reward"][i] == reward([stripped[i]], [text])[0]  # rounded to fp16, as ALT's fp16 RM gives it
    row = result.summary.iloc[0]
    assert row["reward"] == pytest.approx(s["reward"].mean()) and row["prompts"] == 6
    for m in ("reward", "perplexity", "length"):
        assert row[f"{m}_low"] <= row[m] <= row[f"{m}_high"]
    again = evaluate_policy(run, "alt-card", dataset=str(padded))
    pd.testing.assert_frame_equal(again.summary, result.summary)  # seeded intervals, greedy: the same numbers


def test_a_model_that_never_stops_is_cut_at_128_tokens(tmp_path, world):
    folder = gptj_standin(tmp_path / "gptj", n_layer=2, n_embd=32)  # random weights: EOS is all but never drawn
    result = evaluate_policy(folder, "alt-card", reward="tiny-tldr", reference=str(folder), dataset="tiny-tldr",
                             prompts=3)
    s = result.samples
    assert (s["num_tokens"] == 128).all() and s["cut"].all() and result.summary["cut"].iloc[0] == 1.0
    assert result.used["conditioning"] == "none" and s["token"].isna().all()  # no quantile tokens: no token
    assert result.used["reference"] == str(folder) and result.used["policy_dtype"] == "float32"  # CPU: fp32


def test_bad_input_is_one_clear_error(run, tmp_path):
    with pytest.raises(ql.QuarkError, match="unknown protocol 'alt'.*alt-card"):
        get_protocol("alt")
    with pytest.raises(ql.QuarkError, match="protocol 'run' is a run's own"):
        get_protocol("run")
    with pytest.raises(ql.QuarkError, match="no checkpoint of iteration 7"):
        resolve_target(run, 7)
    with pytest.raises(ql.QuarkError, match="iteration= picks a checkpoint of a run directory"):
        resolve_target(tmp_path, 1)
    assert get_protocol("run", ql.runs.read_config(run)).eval_max_new_tokens == 24


def test_quarklab_eval_prints_the_table_writes_it_and_judges(run, tmp_path):
    out = tmp_path / "ev"
    cmd = [sys.executable, "-m", "quarklab.cli", "eval", str(run), "--prompts", "8", "--out", str(out),
           "--against", f"{run}:reference"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    table = (out / "table.md").read_text().splitlines()
    assert len(table) == 3 and table[2].startswith("| tiny iteration 1 | _QUANTILE_TOKEN_0_ |")
    assert "RM = tiny-tldr" in proc.stdout and "win rate of tiny_iteration_1 over tiny-reference" in proc.stdout
    assert len(pd.read_parquet(out / "samples.parquet")) == 8 and list((out / "judge").glob("*.json"))
    written = write_result(evaluate_policy(run, prompts=8), tmp_path / "again")
    assert (written / "table.md").read_text() == (out / "table.md").read_text()  # CLI and library agree
