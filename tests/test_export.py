"""quarklab export: a real tiny run's checkpoint as a model folder with its model card."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys

import pytest
import torch

import quarklab as ql
from quarklab import runs
from quarklab.errors import QuarkError
from quarklab.export import export_run, model_card
from quarklab.protocols import card_table, markdown


@pytest.fixture(scope="module")
def exported(tiny_run, tmp_path_factory):
    return export_run(tiny_run, tmp_path_factory.mktemp("export") / "model")


def test_export_opens_with_the_checkpoints_logits(tiny_run, exported):
    it, ckpt = runs.latest_checkpoint(tiny_run)
    tok, tok_ckpt = ql.load_tokenizer(exported), ql.load_tokenizer(ckpt)
    text = "_QUANTILE_TOKEN_0_SUBREDDIT: r/cats\nTL;DR:"
    ids = tok(text, return_tensors="pt")["input_ids"]
    assert ids.tolist() == tok_ckpt(text, return_tensors="pt")["input_ids"].tolist()
    assert ids[0, 0].item() == tok.convert_tokens_to_ids("_QUANTILE_TOKEN_0_")
    with torch.no_grad():
        ours = ql.load_policy(exported, device="cpu")(ids).logits
        theirs = ql.load_policy(ckpt, device="cpu")(ids).logits
    assert torch.equal(ours, theirs)
    assert not (exported / runs.TRAINER_STATE).exists()
    assert (exported / "README.md").is_file()


def test_card_holds_prompting_measured_reward_and_config(tiny_run, exported):
    card = (exported / "README.md").read_text()
    it = runs.latest_checkpoint(tiny_run)[0]
    m = runs.read_metrics(tiny_run)
    row = m[(m["kind"] == "eval") & (m["mode"] == "greedy") & (m["iteration"] == it) & (m["token"] == 0)].iloc[0]
    ref = m[(m["kind"] == "eval") & (m["mode"] == "greedy") & (m["iteration"] == 0)].iloc[0]
    assert f"| {it} | policy | `_QUANTILE_TOKEN_0_` | {row['reward']:.3f} | {row['perplexity']:.3f} |" in card
    assert f"| 0 | reference | none | {ref['reward']:.3f} |" in card
    assert "K = 3" in card and "`_QUANTILE_TOKEN_2_`" in card
    assert '"_QUANTILE_TOKEN_0_" + "SUBREDDIT' in card and "do_sample=False" in card
    config = runs.read_config(tiny_run)
    for name, value in config.to_dict().items():
        assert f"\n{name}:" in card, name
    assert f"\niterations: {config.iterations}" in card and f"\nnum_quantiles: {config.num_quantiles}" in card


def test_card_parses_as_a_hub_model_card(tiny_run, exported):
    from huggingface_hub import ModelCard

    meta = ModelCard((exported / "README.md").read_text()).data.to_dict()
    assert meta["library_name"] == "transformers"
    assert {"quark", "quantile-tokens", "text-generation"} <= set(meta["tags"])
    assert "base_model" not in meta and "datasets" not in meta  # tiny-tldr is a registered name, not a hub id


def test_hub_ids_become_base_model_and_datasets(tiny_run, tmp_path):
    from huggingface_hub import ModelCard

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    d = json.loads((run / "config.json").read_text())
    d.update(policy="CarperAI/openai_summarize_tldr_sft", dataset="CarperAI/openai_summarize_tldr")
    (run / "config.json").write_text(json.dumps(d))
    meta = ModelCard(model_card(run, runs.latest_checkpoint(run)[0])).data.to_dict()
    assert meta["base_model"] == "CarperAI/openai_summarize_tldr_sft"
    assert meta["datasets"] == ["CarperAI/openai_summarize_tldr"]


def test_protocol_rows_appear_with_their_intervals(tiny_run, tmp_path):
    from quarklab.protocols import default_out, evaluate_policy, resolve_target, write_result

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    it = runs.latest_checkpoint(run)[0]
    result = evaluate_policy(run, "alt-card", prompts=8)  # what quarklab eval RUN --prompts 8 writes
    write_result(result, default_out(resolve_target(run), "alt-card", 8))
    card = model_card(run, it)
    assert "Under the `alt-card` protocol (first 8 prompts)" in card
    assert markdown(card_table(result.summary)) in card
    s = result.summary.iloc[0]
    assert f"{s['reward']:.2f} [{s['reward_low']:.2f}, {s['reward_high']:.2f}]" in card

def test_existing_folder_and_bad_iteration_are_errors(tiny_run, tmp_path):
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("mine")
    with pytest.raises(QuarkError, match="busy.*already exists"):
        export_run(tiny_run, busy)
    assert sorted(p.name for p in busy.iterdir()) == ["notes.txt"]
    kept = [runs.iteration_of(p) for p in runs.checkpoints(tiny_run)]
    with pytest.raises(QuarkError, match=re.escape(f"iteration 7 (kept: {kept}")):
        export_run(tiny_run, tmp_path / "new", iteration=7)
    assert not (tmp_path / "new").exists()
    with pytest.raises(QuarkError, match="config.json"):
        export_run(tmp_path, tmp_path / "new2")


def _cli(*args, env=None):
    return subprocess.run([sys.executable, "-m", "quarklab.cli", "export", *map(str, args)], capture_output=True,
                          text=True, timeout=300, env=env)


def test_cli_export_prints_where_it_wrote(tiny_run, tmp_path):
    it = runs.latest_checkpoint(tiny_run)[0]
    proc = _cli(tiny_run, "--iteration", it, "--to", tmp_path / "m")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert str(tmp_path / "m") in proc.stdout
    assert (tmp_path / "m" / "model.safetensors").is_file() and (tmp_path / "m" / "README.md").is_file()


def test_cli_push_without_token_is_one_error_before_writing(tiny_run, tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN")}
    env.update(HF_HOME=str(tmp_path / "hf"), HF_HUB_OFFLINE="1")  # no stored token; nothing reaches the network
    proc = _cli(tiny_run, "--to", tmp_path / "m", "--push-to-hub", "me/tiny-quark", env=env)
    assert proc.returncode == 2
    assert "quarklab: error: --push-to-hub me/tiny-quark: no Hugging Face token" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "m").exists()
