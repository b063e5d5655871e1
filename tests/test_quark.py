"""Quark runs end to end: the run directory, pool strategies, kill -9 and resume, the tiny preset's result."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import transformers

import quarklab as ql
from quarklab import files, runs
from quarklab.config import QuarkConfig, preset
from quarklab.quark import Session, run, training_rows
from quarklab.tldr import encode_prompt, format_prompt, parse, prompt_budget
from quarklab.tokens import sorted_tokens

SMALL = ["iterations=2", "prompts_per_iteration=6", "samples_per_prompt=10", "max_new_tokens=24",
         "eval_prompts=8", "eval_max_new_tokens=24", "epochs_per_iteration=1", "batch_size=16"]


def _cli(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "quarklab.cli", "train", *args],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


@pytest.fixture(scope="module")
def small_run(world, tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("runs") / "small"
    proc = _cli("--preset", "tiny", "--run-dir", str(run_dir), *[a for s in SMALL for a in ("--set", s)])
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-2000:]
    return run_dir


def _eval_table(run_dir: Path) -> pd.DataFrame:
    m = runs.read_metrics(run_dir)
    return m[m["kind"] == "eval"].sort_values(["iteration", "token"], key=lambda c: c.astype(str)).reset_index(drop=True)


def test_run_directory_holds_config_pools_checkpoint_and_metrics(small_run):
    config = QuarkConfig.from_dict(json.loads((small_run / "config.json").read_text()))
    assert config == preset("tiny").with_overrides(SMALL)
    for it in (1, 2):
        pool = pd.read_parquet(runs.pool_path(small_run, it))
        assert len(pool) == 6 * 10 and not pool.duplicated(["prompt_id", "sample"]).any()
        assert {"iteration", "prompt_id", "prompt", "completion", "reward", "quantile", "token"} <= set(pool.columns)
        assert (pool["sampler"] == f"transformers {transformers.__version__} (cpu)").all()  # who sampled it
        for _, g in pool.groupby("prompt_id"):  # local quantiles: each prompt's samples spread over all 5
            assert sorted(g["quantile"].value_counts().to_dict().items()) == [(k, 2) for k in range(5)]
            assert g.groupby("quantile")["reward"].min().iloc[:-1].values.tolist() >= \
                g.groupby("quantile")["reward"].max().iloc[1:].values.tolist()
    assert pd.read_parquet(runs.pool_path(small_run, 1))["token"].isna().all()  # iteration 1: reference, no token
    assert (pd.read_parquet(runs.pool_path(small_run, 2))["token"] == 0).all()  # then: policy on token 0
    assert [p.name for p in (small_run / "checkpoints").iterdir()] == ["iter_002"]  # keep_checkpoints=1
    assert (small_run / "checkpoints" / "iter_002" / "model.safetensors").exists()
    m = runs.read_metrics(small_run)
    train = m[m["kind"] == "train"]
    assert set(train["iteration"]) == {1, 2} and train[["loss", "nll", "kl", "entropy"]].notna().all().all()
    ev = _eval_table(small_run)
    assert str(ev["token"].dtype) == "Int64" and ev[ev["iteration"] == 0]["token"].isna().tolist() == [True]
    assert sorted_tokens(ev[ev["iteration"] == 2]["token"]) == [0, 1, 2, 3, 4, None]
    assert ev[["reward", "perplexity", "length", "dist1", "dist2", "dist3"]].notna().all().all()
    assert (ev["perplexity"] >= 1).all() and ev[ev["iteration"] == 2]["controllability"].notna().all()
    assert len(training_rows(config, small_run, 2)) == 6 * 5 * 2  # ALT: 2 per quantile per prompt
    assert not [p for p in small_run.rglob("*") if ".tmp-" in p.name]


def test_killed_run_resumes_to_the_same_metrics(small_run, tmp_path):
    run_dir = tmp_path / "killed"
    args = ["--preset", "tiny", "--run-dir", str(run_dir), *[a for s in SMALL for a in ("--set", s)]]
    # kill -9 at three moments: mid-sampling of iteration 1, mid-training of 1, after iteration 2's pool
    moments = [lambda: (run_dir / "metrics.jsonl").exists(),
               lambda: runs.pool_path(run_dir, 1).exists(),
               lambda: runs.pool_path(run_dir, 2).exists()]
    for i, moment in enumerate(moments):
        proc = _cli(*args) if i == 0 else _cli("--resume", str(run_dir))
        deadline = time.time() + 300
        while not moment() and proc.poll() is None and time.time() < deadline:
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert not runs.has_metrics(run_dir, 2, "eval"), "the run finished before the last kill"
    proc = _cli("--resume", str(run_dir))
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-2000:]
    for it in (1, 2):
        a, b = (pd.read_parquet(runs.pool_path(d, it)) for d in (small_run, run_dir))
        pd.testing.assert_frame_equal(a, b)  # no pool row lost, duplicated or changed
    got, want = _eval_table(run_dir), _eval_table(small_run)
    cols = ["iteration", "token", "reward", "perplexity", "length", "dist1", "dist2", "dist3"]
    pd.testing.assert_frame_equal(got[cols], want[cols], rtol=1e-6)
    m = runs.read_metrics(run_dir)
    assert not m[m["kind"] == "train"].duplicated(["iteration", "step"]).any()


def test_pool_stores_prompt_ids_and_training_reads_exactly_them(world, sft, tmp_path):
    model, tokenizer = sft
    posts = [parse(p) for p in ql.load_prompts("tiny-tldr", "test", limit=3)["prompt"]]
    data = tmp_path / "long.jsonl"  # posts too long for the context: sampling cuts them
    pd.DataFrame({"prompt": [format_prompt(p.subreddit, p.title, " ".join([p.body] * 16)) for p in posts]}) \
        .to_json(data, orient="records", lines=True)
    config = preset("tiny").with_overrides(SMALL).replace(dataset=str(data), iterations=1, prompts_per_iteration=3,
                                                          samples_per_prompt=5, eval_prompts=1, eval_max_new_tokens=2)
    base = tmp_path / "base"
    run(config, base, progress=False)
    pool = pd.read_parquet(runs.pool_path(base, 1))
    budget = prompt_budget(model, config.max_new_tokens)
    assert pool["prompt_truncated"].all() and len(pool) == 15
    for prompt, ids in zip(pool["prompt"], pool["prompt_ids"]):
        assert ids.tolist() == encode_prompt(tokenizer, prompt, budget)[0]

    def train_log(name: str, pool_file: pd.DataFrame) -> pd.DataFrame:
        """Resume a copy of the run whose pool is ``pool_file`` (and evaluations, not training): it trains on it."""
        run_dir = tmp_path / name
        run_dir.mkdir()
        shutil.copy(base / "config.json", run_dir)
        files.write_parquet(runs.pool_path(run_dir, 1), pool_file)
        for it in (0, 1):
            ev = runs.read_metrics(base).query("kind == 'eval' and iteration == @it")
            runs.record_metrics(run_dir, json.loads(ev.drop(columns=["iteration", "kind"]).to_json(orient="records")),
                                it, "eval")
        m = run(None, run_dir, resume=True, progress=False)
        return m[m["kind"] == "train"][["step", "loss", "nll", "entropy", "kl"]].reset_index(drop=True)

    want = train_log("same", pool)
    assert len(want) >= 1
    m = runs.read_metrics(base)
    pd.testing.assert_frame_equal(want, m[m["kind"] == "train"][want.columns].reset_index(drop=True))
    # the ids are what training reads: other text with the same ids trains the same, other ids do not
    pd.testing.assert_frame_equal(train_log("text", pool.assign(prompt="another post\nTL;DR:")), want)
    shorter = pool.assign(prompt_ids=[ids[-40:] for ids in pool["prompt_ids"]])
    assert not np.allclose(train_log("ids", shorter)["nll"], want["nll"])
    # a pool written before pools stored prompt_ids gets them once, as sampling would have encoded them
    pd.testing.assert_frame_equal(train_log("old", pool.drop(columns="prompt_ids")), want)
    upgraded = pd.read_parquet(runs.pool_path(tmp_path / "old", 1))
    assert [a.tolist() for a in upgraded["prompt_ids"]] == [a.tolist() for a in pool["prompt_ids"]]


def test_stripped_prompts_reach_sampler_reward_and_evaluation_and_training_takes_alts_targets(world, sft, tmp_path):
    """strip_prompts on a dataset whose prompts are padded with whitespace, and train_targets='alt': the sampler,
    the reward and the evaluation see the stripped text, and the iteration trains on ALT's targets."""
    _, tok = sft
    source = ql.load_prompts("tiny-tldr", "train", limit=8)
    padded = [" \n" + p + " " if i % 2 else "\t" + p + "\n\n" for i, p in enumerate(source["prompt"])]
    data = tmp_path / "padded.jsonl"
    pd.DataFrame({"prompt": padded, "label": source["label"]}).to_json(data, orient="records", lines=True)
    settings = ["iterations=1", "prompts_per_iteration=8", "samples_per_prompt=6", "num_quantiles=3",
                "max_new_tokens=12", "eval_prompts=4", "eval_max_new_tokens=12", "epochs_per_iteration=1",
                "batch_size=16", f"dataset={data}", "strip_prompts=true", "train_targets=alt"]
    proc = _cli("--preset", "tiny", "--run-dir", str(tmp_path / "run"), *[a for s in settings for a in ("--set", s)])
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-2000:]
    config, run_dir = preset("tiny").with_overrides(settings), tmp_path / "run"
    pool = runs.read_pool(run_dir, 1)
    stripped = dict(enumerate(source["prompt"]))  # the tiny world's prompts, as padded.jsonl wrote them unpadded
    assert pool["prompt"].tolist() == pool["prompt_id"].map(stripped).tolist() and len(pool) == 8 * 6
    tail = tok("\nTL;DR:", add_special_tokens=False)["input_ids"]
    budget = prompt_budget(sft[0], config.max_new_tokens)
    for prompt, ids in zip(pool["prompt"], pool["prompt_ids"]):  # the sampler encoded the stripped text
        assert ids.tolist() == encode_prompt(tok, prompt, budget)[0] and ids.tolist()[-len(tail):] == tail
    reward = ql.load_reward("tiny-tldr")
    assert pool["reward"].to_numpy() == pytest.approx(reward(pool["prompt"].tolist(), pool["completion"].tolist()))
    assert set(pd.read_parquet(runs.eval_path(run_dir, 1))["prompt"]) == {stripped[i] for i in range(4)}
    # ALT's targets, by hand: EOS unless the stripped text is exactly 12 tokens and ends in none of . ? !
    rows = training_rows(config, run_dir, 1)
    cut = [len(tok(t.strip())["input_ids"]) == 12 and not t.strip().endswith((".", "?", "!"))
           for t in rows["completion"]]
    train = runs.read_metrics(run_dir).query("kind == 'train'")
    assert (train["rows"] == len(rows)).all() and (train["eos_rows"] == len(rows) - sum(cut)).all()
    assert sum(cut) < len(rows) - rows["finished"].sum()  # completions cut at 12 on a "." now learn to end there


def test_run_dir_layout_helpers(tmp_path):
    for name in ["checkpoints/iter_010", "checkpoints/iter_002", "checkpoints/.iter_003.tmp-x", "checkpoints/iter_4"]:
        (tmp_path / name).mkdir(parents=True)
    for it in (0, 12, 3):
        files.atomic_write_text(runs.eval_path(tmp_path, it), "")
        files.atomic_write_text(runs.pool_path(tmp_path, it + 1), "")
    assert runs.checkpoints(tmp_path) == [runs.checkpoint_path(tmp_path, 2), runs.checkpoint_path(tmp_path, 10)]
    assert runs.latest_checkpoint(tmp_path) == (10, runs.checkpoint_path(tmp_path, 10))
    assert [runs.iteration_of(p) for p in runs.eval_files(tmp_path)] == [0, 3, 12]
    assert [runs.iteration_of(p) for p in runs.pool_files(tmp_path)] == [1, 4, 13]
    assert runs.latest_checkpoint(tmp_path / "empty") is None


def test_quark_pool_accumulates_with_global_quantiles(world, tmp_path):
    """Quark: the pool grows and is re-sorted; one AdamW and one schedule span the run, resumed from the checkpoint."""
    config = preset("tiny").with_overrides(SMALL + ['pool_strategy="quark"', 'quantile_scope="global"',
                                                    "kl_coef=0", "eval_sampled_n=2", "steps_per_iteration=3",
                                                    "keep_checkpoints=2", "warmup_ratio=0.34"])
    metrics = run(config, tmp_path / "run", progress=False)
    sampled = metrics[(metrics["kind"] == "eval") & (metrics["mode"] == "sampled")]
    assert set(sampled["iteration"]) == {0, 1, 2} and (sampled["n"] == 2 * 8).all()
    rows = training_rows(config, tmp_path / "run", 2)
    assert len(rows) == 2 * 6 * 10 and set(rows["iteration"]) == {1, 2}
    order = rows.sort_values("reward", ascending=False, kind="stable")["quantile"].to_numpy()
    assert (np.diff(order) >= 0).all()  # quantiles re-sorted over the whole pool
    train = metrics[metrics["kind"] == "train"]
    # 3 steps per iteration in one schedule of 2 x 3 steps: warmup int(0.34 * 6) = 2 steps, then linear decay
    assert train["lr"].tolist() == pytest.approx([config.lr * f for f in [0, 0.5, 1, 0.75, 0.5, 0.25]])
    assert (tmp_path / "run" / "checkpoints" / "iter_001" / runs.TRAINER_STATE).exists()
    # lose iteration 2 (its checkpoint, evaluation and metrics): --resume retrains it from iteration 1's optimizer
    shutil.copytree(tmp_path / "run", tmp_path / "resumed")
    shutil.rmtree(runs.checkpoint_path(tmp_path / "resumed", 2))
    runs.eval_path(tmp_path / "resumed", 2).unlink()
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    (tmp_path / "resumed" / "metrics.jsonl").write_text(
        "".join(line + "\n" for line in lines if json.loads(line)["iteration"] < 2))
    resumed = run(None, tmp_path / "resumed", resume=True, progress=False)
    pd.testing.assert_frame_equal(resumed[resumed["kind"] == "train"].reset_index(drop=True),
                                  train.reset_index(drop=True))
    with pytest.raises(ql.QuarkError, match="holds another run"):
        run(config.replace(lr=1.0), tmp_path / "run", progress=False)
    with pytest.raises(ql.QuarkError, match="set steps_per_iteration"):
        config.replace(steps_per_iteration=None)


def test_first_iteration_never_samples_a_quantile_token_from_the_reference(world, sft, tmp_path):
    """A model whose embedding has more rows than its tokenizer has tokens (padded, as Pythia's is) gets its quantile
    tokens in rows the reference can generate. (Not GPT-J 6B: its tokenizer's 143 <|extratoken_N|> fill its 50,400
    rows, so the tokens land at 50400-50404, past the reference's head; tests/test_standins.py.) Here a tiny GPT-J
    padded by 16 rows, with those rows made to win; iteration 1 must still never sample a quantile token."""
    import torch

    _, tok = sft
    padded = ql.load_policy(world.policy)
    padded.resize_token_embeddings(len(tok) + 16, mean_resizing=False)
    with torch.no_grad():
        padded.get_output_embeddings().bias[len(tok):] = 30.0  # GPT-J's head has a bias
    padded.save_pretrained(tmp_path / "padded")
    tok.save_pretrained(tmp_path / "padded")
    prompts = ql.load_prompts("tiny-tldr", "train", limit=4)
    quantile_ids = set(range(len(tok), len(tok) + 5))  # where add_quantile_tokens puts them
    free = ql.sample(padded, tok, prompts, max_new_tokens=8, n=2)
    assert free["completion_ids"].map(quantile_ids.intersection).map(len).sum() > 10  # the trap is real
    config = preset("tiny").with_overrides(SMALL + ["iterations=1", f"policy={tmp_path / 'padded'}"])
    run(config, tmp_path / "run", progress=False)
    pool = runs.read_pool(tmp_path / "run", 1)
    assert pool["completion_ids"].map(lambda ids: max(ids, default=0) >= len(tok)).any()  # the other padded rows
    assert not pool["completion_ids"].map(quantile_ids.intersection).any()


def test_session_adds_the_quantile_tokens_by_the_configs_token_init(world, tmp_path):
    """token_init reaches add_quantile_tokens: "alt" gives the 5 new head rows ALT's bias of 0, "quark" the mean of
    the existing rows' biases (the tiny SFT model's head bias is trained, so the two differ)."""
    import torch

    config = preset("tiny").with_overrides(["device=cpu", "eval_prompts=2"])
    bias = {}
    for init in ("quark", "alt"):
        session = Session.open(config.replace(token_init=init), tmp_path / init)
        head = session.policy.get_output_embeddings()
        assert session.control_ids == list(range(1407, 1412))
        bias[init] = head.bias.detach()[session.control_ids]
        existing = head.bias.detach()[:1407]
    assert torch.equal(bias["alt"], torch.zeros(5))
    assert torch.allclose(bias["quark"], existing.mean().expand(5)) and existing.mean().abs() > 1e-3


def test_a_run_written_before_a_field_existed_resumes_as_it_trained(tmp_path):
    """config.json from an earlier quarklab lacks the fields added since: reading it back keeps that run's
    behaviour (AdamW's default beta1, no quantile tokens in the softmax, a uniform draw), not today's defaults."""
    from quarklab.quark import prepare_run_dir

    old = preset("tiny").to_dict()
    for name in ["per_quantile_draw", "adam_beta1", "adam_beta2", "loss_vocab", "perplexity", "warmup_shape"]:
        del old[name]
    (tmp_path / "config.json").write_text(json.dumps(old))
    config = prepare_run_dir(tmp_path, None, resume=True)
    assert (config.adam_beta1, config.loss_vocab, config.per_quantile_draw, config.perplexity) == \
        (0.9, "no-quantile-tokens", "uniform", "sampled-ids")
    assert preset("tiny").adam_beta1 == 0.8 and preset("tiny").loss_vocab == "full"


def test_lora_run_trains_adapters_merges_them_and_notebook_03_opens_the_checkpoint(world, sft, tmp_path):
    """LoRA (peft) on the top block and the quantile tokens' rows: the checkpoint is a plain merged GPT-J folder."""
    import torch
    from safetensors.torch import load_file

    from quarklab.tokens import quantile_token_ids
    from quarklab.notebooks import run_notebooks

    config = preset("tiny").with_overrides(SMALL + ["iterations=1", "lora_rank=4", "lora_alpha=8",
                                                    "trainable_fraction=0.34", "lr=3e-3"])
    run(config, tmp_path / "run", progress=False)
    folder = runs.checkpoint_path(tmp_path / "run", 1)
    assert not list(folder.glob("adapter_*"))  # merged: nothing peft-specific to load
    base = {k: v for k, v in sft[0].state_dict().items()}
    ckpt = load_file(str(folder / "model.safetensors"))
    ids = quantile_token_ids(ql.load_tokenizer(folder), 5)
    changed = {k for k in base if k in ckpt and ckpt[k].shape == base[k].shape and not torch.equal(ckpt[k], base[k])}
    assert any(k.startswith("transformer.h.2.") for k in changed)  # the top int(0.34 * 3) = 1 block's adapters
    assert not any(k.startswith(("transformer.h.0.", "transformer.h.1.")) for k in changed)
    wte = ckpt["transformer.wte.weight"]
    assert torch.equal(wte[: ids[0]], base["transformer.wte.weight"])  # only the quantile tokens' rows train
    policy = ql.load_policy(folder)
    assert policy.get_input_embeddings().weight.shape[0] == wte.shape[0]
    executed = run_notebooks(tmp_path / "run", {"run_dir": str(tmp_path / "run")},
                             notebooks=["03_compare_tokens.ipynb"], progress=False)
    assert executed and (tmp_path / "run" / "results").exists()


def test_vllm_sampler_without_vllm_is_one_clear_error_before_any_model_loads(tmp_path):
    from quarklab.vllm_backend import vllm_available

    if vllm_available():
        pytest.skip("vLLM is installed here: its sampler runs instead of failing")
    proc = _cli("--preset", "tiny", "--run-dir", str(tmp_path / "run"), "--set", "sampler=vllm")
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 2 and "vLLM sampling backend needs the vllm package" in err
    assert not (tmp_path / "run" / "pool").exists()


# Issue 18: four fresh tiny runs with one seed, one diverged at iteration 1 (two completions the tiny reward scores
# equal came out an ulp apart in one process, and the quantile sort swapped them). reward_precision="float64": no
# rounding hides an ulp, so the scores themselves must be the same bits in every process. Completions of 48 tokens
# (the preset's): with the tiny reward's plain sum over a set, 1 of iteration 1's 48 pool rewards (5 of iteration
# 2's) differed between hash seeds 1, 2 and 3; with 16 tokens none did.
REPEAT = ["iterations=2", "prompts_per_iteration=8", "samples_per_prompt=6", "num_quantiles=3", "max_new_tokens=48",
          "eval_prompts=2", "eval_max_new_tokens=16", "epochs_per_iteration=1", "batch_size=16",
          "reward_precision=float64"]
TIMING = ("second", "time", "wall", "elapsed")  # metrics.jsonl holds no such field today; a future one may differ


def _metric_rows(run_dir: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in row.items() if not any(t in k for t in TIMING)} for row in rows]


def test_fresh_runs_with_one_seed_are_the_same_bytes_in_processes_of_other_hash_seeds(world, tmp_path):
    import os

    dirs = []
    for hash_seed in ("1", "2", "3"):  # PYTHONHASHSEED sets the order a set of strings iterates in
        run_dir = tmp_path / f"hashseed{hash_seed}"
        args = [sys.executable, "-m", "quarklab.cli", "train", "--preset", "tiny", "--run-dir", str(run_dir)]
        proc = subprocess.run(args + [a for s in REPEAT for a in ("--set", s)], capture_output=True, text=True,
                              env={**os.environ, "PYTHONHASHSEED": hash_seed}, timeout=600)
        assert proc.returncode == 0, proc.stderr[-2000:]
        dirs.append(run_dir)
    first, *others = dirs
    files_ = sorted(str(p.relative_to(first)) for p in first.rglob("*")
                    if p.suffix in (".parquet", ".safetensors"))
    assert {"pool/iter_001.parquet", "pool/iter_002.parquet", "eval/iter_002.parquet",
            "checkpoints/iter_002/model.safetensors"} <= set(files_)
    for other in others:
        for name in files_:
            assert (first / name).read_bytes() == (other / name).read_bytes(), f"{other.name}/{name} differs"
        assert _metric_rows(other) == _metric_rows(first)
    pool = pd.read_parquet(runs.pool_path(first, 1))
    assert len(pool) == 8 * 6 and pool["reward"].nunique() > 24  # real, mostly distinct scores, not one constant
