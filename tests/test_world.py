"""The offline tiny TL;DR world: data, tokenizer, SFT GPT-J; deterministic, cached, atomic."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import quarklab as ql
from quarklab.world.reward import content_stems

from launching import ENV, launch_head

LAYOUT = re.compile(r"^SUBREDDIT: r/\w+\nTITLE: [^\n]+\nPOST: .+\nTL;DR:$", re.DOTALL)
SMALL = dict(n_train=200, n_valid=20, n_test=20, vocab_size=400, n_embd=32, n_layer=1, n_head=2,
             sft_steps=4, sft_batch_size=8)


def test_world_data_has_the_tldr_layout_and_disjoint_splits(world):
    splits = {s: ql.load_prompts(world.data_file(s)) for s in ("train", "valid", "test")}
    train = set(splits["train"]["prompt"])
    assert len(train) >= 5000
    assert not train & set(splits["valid"]["prompt"])
    assert not train & set(splits["test"]["prompt"])
    assert not set(splits["valid"]["prompt"]) & set(splits["test"]["prompt"])
    for df in splits.values():
        assert df["prompt"].map(LAYOUT.match).map(bool).all()
        assert (df["label"].str.len() > 0).all()
    # varied enough to be worth learning: many subreddits, titles and labels
    assert splits["train"]["prompt"].str.extract(r"r/(\w+)")[0].nunique() >= 8
    assert splits["train"]["label"].nunique() > 3000


def test_world_model_is_a_gptj_that_loads_like_a_hub_checkpoint(world, sft):
    model, tokenizer = sft
    assert type(model).__name__ == "GPTJForCausalLM"
    assert 5e5 < sum(p.numel() for p in model.parameters()) < 1e7
    assert (Path(world.policy) / "model.safetensors").exists()
    assert tokenizer.eos_token == "<|endoftext|>" and tokenizer.padding_side == "left"
    text = "SUBREDDIT: r/tifu\nTITLE: Ünïcode — ok 😀\nPOST: x\nTL;DR:"
    assert tokenizer.decode(tokenizer(text)["input_ids"]) == text  # byte-level: nothing is lost


def test_sft_greedy_summaries_are_on_format_end_with_eos_and_mention_the_post(world, sft):
    model, tokenizer = sft
    prompts = ql.load_prompts("tiny-tldr", "test", limit=48)
    out = ql.sample(model, tokenizer, prompts, do_sample=False, max_new_tokens=64)
    assert out["finished"].mean() >= 0.95
    assert not out["completion"].str.contains("SUBREDDIT|TITLE|POST|TL;DR").any()
    overlap = [len(set(content_stems(c)) & set(content_stems(p))) / max(1, len(set(content_stems(c))))
               for p, c in zip(out["prompt"], out["completion"])]
    assert sum(overlap) / len(overlap) > 0.8  # what it says comes from the post
    reward = ql.load_reward("tiny-tldr")
    sft_score = reward(out["prompt"], out["completion"]).mean()
    wrong_post = reward(out["prompt"], out["completion"].iloc[::-1].tolist()).mean()
    assert sft_score > wrong_post + 1.0


def test_world_loads_from_cache_in_seconds(world):
    start = time.perf_counter()
    again = ql.tiny_world(0, progress=False)
    ql.load_policy(again.policy)
    assert again.root == world.root
    assert time.perf_counter() - start < 10
    assert world.info["build_seconds"] > 0


def test_same_seed_builds_the_same_world(tmp_path):
    spec = ql.WorldSpec(seed=3, **SMALL)
    a = ql.build_world(spec, home=tmp_path / "a", progress=False)
    b = ql.build_world(spec, home=tmp_path / "b", progress=False)
    for split in ("train", "valid", "test"):
        assert Path(a.data_file(split)).read_bytes() == Path(b.data_file(split)).read_bytes()
    wa, wb = (load_file(Path(w.policy) / "model.safetensors") for w in (a, b))
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    other = ql.build_world(ql.WorldSpec(seed=4, **SMALL), home=tmp_path / "a", progress=False)
    assert Path(other.data_file("train")).read_bytes() != Path(a.data_file("train")).read_bytes()


def test_a_killed_build_leaves_no_world_behind(tmp_path):
    spec = dict(SMALL, sft_steps=100_000)
    code = ("import quarklab as ql; "
            f"ql.build_world(ql.WorldSpec(**{spec!r}), home={str(tmp_path)!r}, progress=False)")
    proc = subprocess.Popen([sys.executable, "-c", code])
    try:
        deadline = time.time() + 60
        while not list(tmp_path.glob(".*tmp-*/data/test.jsonl")) and time.time() < deadline:
            time.sleep(0.2)
        assert list(tmp_path.glob(".*tmp-*/data/test.jsonl")), "the build never started writing"
        time.sleep(1.0)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert not [p for p in tmp_path.iterdir() if not p.name.startswith(".")]
    with pytest.raises(ql.QuarkError):
        ql.World(tmp_path / "nope").data_file("train")
    built = ql.build_world(ql.WorldSpec(**SMALL), home=tmp_path, progress=False)
    assert json.loads((built.root / "world.json").read_text())["sizes"]["train"] == 200


def test_world_command_reports_the_cached_world(world):
    out = subprocess.run([sys.executable, "-m", "quarklab.cli", "world", "build"], capture_output=True,
                         text=True, check=True).stdout
    assert str(world.root) in out and "GPT-J" in out


def test_two_processes_asking_for_a_new_world_build_it_once(tmp_path):
    """The second waits for the first builder's lock, then finds the world built (it used to build its own and
    swap folders under the first one's readers)."""
    code = ("import json, sys, quarklab as ql; from quarklab.world import WorldSpec, build_world; "
            f"w = build_world(WorldSpec(**{SMALL!r}), home=sys.argv[1], progress=False); "
            "print(json.dumps({'folder': __import__('os').stat(w.root).st_ino, **w.info}))")
    procs = [subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], stdout=subprocess.PIPE, text=True)
             for _ in range(2)]
    infos = [json.loads(p.communicate(timeout=300)[0].splitlines()[-1]) for p in procs]
    assert all(p.returncode == 0 for p in procs)
    assert infos[0] == infos[1], "both processes built a world (each returned a folder of its own)"
    from quarklab.world import world_dir

    assert [p.name for p in tmp_path.iterdir() if not p.name.endswith(".lock")] == [
        world_dir(ql.WorldSpec(**SMALL), tmp_path).name]


def test_a_non_main_process_of_a_launch_refuses_to_build_a_world_it_could_not_save(tmp_path):
    """transformers writes weights on rank 0 only: rank 1 building would leave a world.json over no model."""
    script = tmp_path / "rank1_builds.py"
    script.write_text(
        "import sys, torch.distributed as d\nfrom accelerate import Accelerator\nfrom quarklab.errors import QuarkError\n"
        "from quarklab.world import WorldSpec, build_world\nacc = Accelerator(cpu=True)\n"
        "if acc.process_index == 1:\n"
        f"    try:\n        build_world(WorldSpec(**{SMALL!r}), home=sys.argv[1], progress=False)\n"
        "    except QuarkError as exc:\n        print('REFUSED', exc)\n")
    proc = subprocess.run([*launch_head("ddp"), str(script), str(tmp_path / "home")], capture_output=True,
                          text=True, timeout=300, env=ENV)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "REFUSED" in proc.stdout and "is process 1 of a distributed launch" in proc.stdout
    assert not list((tmp_path / "home").glob("*/world.json"))
