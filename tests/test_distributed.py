"""quarklab train under ``accelerate launch --num_processes 2`` on CPU (gloo): the run directory one process
writes, identical weights on every process, kill -9 and --resume."""

from __future__ import annotations

import contextlib
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

import quarklab as ql
from quarklab import runs
from quarklab.errors import QuarkError

from launching import CONFIGS, ENV, launch_head

HERE = Path(__file__).resolve().parent
SMALL = ["iterations=2", "prompts_per_iteration=7", "samples_per_prompt=10", "max_new_tokens=24",
         "eval_prompts=9", "eval_max_new_tokens=24", "epochs_per_iteration=1", "batch_size=16"]
ROOT = HERE.parent


def _launch(args: list[str], processes: int = 2, config: str = "ddp") -> subprocess.Popen:
    """``accelerate launch`` of ``args`` with a shipped config (``processes`` 2), as the README runs it (on a
    machine without GPUs the processes use gloo on CPU), or plain python (1)."""
    head = launch_head(config) if processes == 2 else [sys.executable]
    return subprocess.Popen(head + args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)


# FSDP on CPU processes needs a test-only override of accelerate (tests/fsdp_cpu.py says why)
ENTRY = {"fsdp": [str(HERE / "fsdp_cpu.py")]}


def _train(run_dir: Path, *extra: str, processes: int = 2, config: str = "ddp", sets: tuple = ()) -> subprocess.Popen:
    sets = [a for s in [*SMALL, *sets] for a in ("--set", s)]
    args = ["--resume", str(run_dir)] if "--resume" in extra else ["--preset", "tiny", "--run-dir", str(run_dir), *sets]
    return _launch([*ENTRY.get(config, ["-m", "quarklab.cli"]), "train", *args], processes, config)


def _finish(proc: subprocess.Popen) -> str:
    out, err = proc.communicate(timeout=900)
    assert proc.returncode == 0, err[-3000:]
    return out


@pytest.fixture(scope="module")
def two_runs(world, tmp_path_factory) -> tuple[Path, Path, str]:
    """The same small run in one process and in two: (one, two, what the two-process command printed)."""
    root = tmp_path_factory.mktemp("dist")
    out = _finish(_train(root / "two"))
    _finish(_train(root / "one", processes=1))
    return root / "one", root / "two", out


def test_two_processes_write_one_run_directory_with_every_prompt_sampled_once(two_runs):
    one, two, printed = two_runs
    lines = printed.splitlines()
    header = [line for line in lines if line.split()[:2] == ["iteration", "model"]]
    summaries = [line for line in lines if line.startswith("iteration ") and "/2" in line.split()[1]]
    assert len(header) == 1, "only the main process prints the final table"
    assert [line.split()[1].rstrip(":") for line in summaries] == ["0/2", "1/2", "2/2"]  # one line per iteration
    for it in (1, 2):
        pool, single = runs.read_pool(two, it), runs.read_pool(one, it)
        # the same seeded prompts, each sampled 10 times by one process, in one process's order
        assert pool["prompt_id"].tolist() == single["prompt_id"].tolist()
        assert (pool.groupby("prompt_id")["sample"].apply(sorted) == [list(range(10))] * 7).all()
        for _, g in pool.groupby("prompt_id"):  # local quantiles over each prompt's 10 samples
            assert sorted(g["quantile"].value_counts().tolist()) == [2] * 5
    m, m1 = runs.read_metrics(two), runs.read_metrics(one)
    key = ["iteration", "kind", "mode", "token"]
    ev, ev1 = (x[x["kind"] == "eval"][key + ["n"]].astype(str).reset_index(drop=True) for x in (m, m1))
    pd.testing.assert_frame_equal(ev, ev1)  # the same rows a single process writes, over all 9 eval prompts
    assert set(ev["n"].astype(float)) == {9.0}
    samples = pd.read_parquet(runs.eval_path(two, 2))
    assert samples.groupby("token", dropna=False).size().tolist() == [9] * 6
    train, train1 = m[m["kind"] == "train"], m1[m1["kind"] == "train"]
    # 70 rows in 5 micro-batches of 16: 5 optimizer steps in one process, 3 of 2 x 1 micro-batches in two
    assert train.groupby("iteration").size().tolist() == [3, 3] and train1.groupby("iteration").size().tolist() == [5, 5]
    assert not list(two.rglob("*.tmp-*")) and not (two / "checkpoints" / "iter_001").exists()
    assert runs.read_trained_by(two, 2) == {"engine": "ddp", "distributed_type": "MULTI_CPU", "processes": 2,
                                            "backend": "gloo", "zero_stage": None, "held_fraction": 1.0}
    assert runs.read_trained_by(one, 2)["engine"] == "none"


def test_the_two_process_checkpoint_loads_and_generates(two_runs):
    _, two, _ = two_runs
    folder = runs.checkpoint_path(two, 2)
    policy, tok = ql.load_policy(folder), ql.load_tokenizer(folder)
    out = ql.sample(policy, tok, ["SUBREDDIT: r/test\nTITLE: a\nPOST: b\nTL;DR:"], max_new_tokens=5, seed=0)
    assert len(out) == 1 and "_QUANTILE_TOKEN_0_" in tok.get_vocab()


@pytest.mark.parametrize("accum,dtype,tol", [(2, "float32", 1e-4), (1, "bfloat16", 0.1)])
def test_every_process_holds_the_same_weights_as_one_process_accumulating(world, tmp_path, accum, dtype, tol):
    """Two processes x ``accum`` micro-batches per step train as one process accumulating 2 x ``accum`` does
    (fp32: through DDP's no_sync; bf16: fp32 master weights fed after every all-reduce): the two updates differ
    by float rounding only (measured: 9e-7 of the update's norm in fp32, 2 % in bf16)."""
    _finish(_launch([str(HERE / "ddp_probe.py"), str(tmp_path / "two"), str(accum), dtype]))
    _finish(_launch([str(HERE / "ddp_probe.py"), str(tmp_path / "one"), str(accum), dtype, "--one-process"], 1))
    r0, r1, one = (load_file(str(tmp_path / d / f"rank{r}.safetensors")) for d, r in (("two", 0), ("two", 1), ("one", 0)))
    assert all(torch.equal(r0[k], r1[k]) for k in r0), "the two processes' weights differ"
    start = ql.load_policy(world.policy).state_dict()  # without the quantile tokens' new rows

    def norm(d: dict) -> float:
        return sum(float((v.float() ** 2).sum()) for v in d.values()) ** 0.5

    update = norm({k: one[k][: start[k].shape[0]] - start[k] for k in start})
    differ = norm({k: r0[k] - one[k] for k in r0}) / update
    print(f"{dtype}: update norm {update:.3g}; two processes vs one differ by {differ:.2g} of it")
    assert update > 1e-2, "the probe did not train"
    assert differ < tol
    logs = [pd.read_json(tmp_path / d / f"log{r}.json") for d, r in (("two", 0), ("two", 1), ("one", 0))]
    pd.testing.assert_frame_equal(logs[0], logs[1])  # every process logs the mean over processes
    pd.testing.assert_frame_equal(logs[0], logs[2], rtol=tol)


# The engines of the shipped configs, for real on 2 CPU processes: what each must report having run.
ENGINES = {"zero2": {"engine": "deepspeed", "distributed_type": "DEEPSPEED", "zero_stage": 2, "held_fraction": 1.0},
           "zero3": {"engine": "deepspeed", "distributed_type": "DEEPSPEED", "zero_stage": 3, "held_fraction": 0.5},
           "fsdp": {"engine": "fsdp", "distributed_type": "FSDP", "zero_stage": None, "held_fraction": 0.5}}
# FSDP keeps float32 shards as master weights. ZeRO-3 and FSDP release the reference and reward model whenever a phase
# does not use them (the engine keeps its shards of the policy), so that path runs under a sharding engine too.
ENGINE_SETS = {"zero3": ("idle_models=release",), "fsdp": ("dtype=float32", "idle_models=release")}


@pytest.fixture(scope="module")
def engine_runs(world, tmp_path_factory) -> dict[str, Path]:
    """The small run of :func:`two_runs` under DeepSpeed ZeRO-2, ZeRO-3 and FSDP2 (2 CPU processes each)."""
    root = tmp_path_factory.mktemp("engines")
    procs = {}
    for config in ENGINES:  # one at a time: 2 cores
        procs[config] = _train(root / config, config=config, sets=ENGINE_SETS.get(config, ()))
        _finish(procs[config])
    return {config: root / config for config in ENGINES}


@pytest.mark.parametrize("config", list(ENGINES))
def test_each_engine_really_runs_and_leaves_a_run_like_one_process(engine_runs, two_runs, config):
    """The launch of configs/accelerate/<config>.yaml trains with that engine (ZeRO-3 and FSDP: each process holds
    half the parameters), and leaves the run directory one process leaves: the same metrics rows, a float32
    checkpoint (the policy's dtype) that loads and generates."""
    run_dir, (one, _, _) = engine_runs[config], two_runs
    assert runs.read_trained_by(run_dir, 2) == {**ENGINES[config], "processes": 2, "backend": "gloo"}
    assert runs.read_config(run_dir).idle_models == ("release" if config in ENGINE_SETS else "auto")
    m, m1 = runs.read_metrics(run_dir), runs.read_metrics(one)
    key = ["iteration", "kind", "mode", "token", "n"]
    ev, ev1 = (x[x["kind"] == "eval"][key].astype(str).reset_index(drop=True) for x in (m, m1))
    pd.testing.assert_frame_equal(ev, ev1)
    train, train1 = m[m["kind"] == "train"], m1[m1["kind"] == "train"]
    assert sorted(train.dropna(axis=1, how="all").columns) == sorted(train1.dropna(axis=1, how="all").columns)
    assert train.groupby("iteration").size().tolist() == [3, 3]  # 5 micro-batches dealt to 2 processes
    assert train["loss"].notna().all() and (train["lr"] > 0).any()
    for it in (1, 2):  # the pools: every prompt sampled 10 times by one process
        assert runs.read_pool(run_dir, it)["prompt_id"].tolist() == runs.read_pool(one, it)["prompt_id"].tolist()
    folder = runs.checkpoint_path(run_dir, 2)
    with safe_open(str(folder / "model.safetensors"), "pt") as f:
        assert {f.get_slice(k).get_dtype() for k in f.keys()} == {"F32"}
    policy, tok = ql.load_policy(folder), ql.load_tokenizer(folder)
    start = ql.load_policy(ql.tiny_world(0).policy).state_dict()
    trained = policy.state_dict()
    assert any(not torch.equal(trained[k][: start[k].shape[0]], start[k]) for k in start), "nothing trained"
    out = ql.sample(policy, tok, ["SUBREDDIT: r/test\nTITLE: a\nPOST: b\nTL;DR:"], max_new_tokens=5, seed=0)
    assert len(out) == 1 and out["num_tokens"].iloc[0] > 0


@pytest.mark.parametrize("idle", ["auto", "release"])
def test_a_deepspeed_launch_of_one_process_still_trains_with_deepspeed(world, tmp_path, idle):
    """``--num_processes 1`` (one GPU with ZeRO offload, say) is no reason to drop the engine the config names; with
    ``idle_models=release`` the reference and reward model leave and come back around the engine's training phase
    while the engine keeps the policy."""
    cmd = [*launch_head("zero2", 1), "-m", "quarklab.cli", "train", "--preset", "tiny", "--run-dir",
           str(tmp_path / "run"), *[a for s in [*SMALL, "iterations=1", f"idle_models={idle}"] for a in ("--set", s)]]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=ENV)
    assert proc.returncode == 0, proc.stderr[-3000:]
    trained_by = runs.read_trained_by(tmp_path / "run", 1)
    assert (trained_by["engine"], trained_by["zero_stage"], trained_by["processes"]) == ("deepspeed", 2, 1)


def test_fsdp_launch_on_cpu_processes_stops_with_one_clear_error_before_anything_is_written(tmp_path):
    """accelerate adopts FSDP on GPUs only: without the tests' override the FSDP launch is one error, not DDP."""
    proc = _launch(["-m", "quarklab.cli", "train", "--preset", "tiny", "--run-dir", str(tmp_path / "run"),
                    "--set", "dtype=float32"], config="fsdp")
    _, err = proc.communicate(timeout=300)
    assert proc.returncode != 0
    assert "quarklab: error: the launch asked for fsdp (configs/accelerate/fsdp.yaml) but accelerate runs MULTI_CPU" in err
    assert "Traceback" not in err.split("quarklab: error")[0] and not (tmp_path / "run").exists()


@pytest.mark.parametrize("config", ["zero2", "zero3"])
def test_accelerate_launch_cpu_which_drops_the_configs_engine_is_one_clear_error(config, tmp_path):
    """accelerate's launcher starts one plain process under --cpu, whatever the config names: refused, not run."""
    proc = _launch(["--cpu", "-m", "quarklab.cli", "train", "--preset", "tiny", "--run-dir", str(tmp_path / "run")],
                   config=config)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode != 0 and "quarklab: error: accelerate launch --cpu (or use_cpu: true) starts one plain" in err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("config", ["ddp", "zero2", "zero3", "fsdp"])
def test_a_launch_whose_engine_accelerate_does_not_run_is_one_clear_error(config):
    """Whatever the config asked for (the yaml's distributed_type), an accelerate that runs something else (here:
    nothing) is refused with what was asked, what runs and what to do."""
    import yaml

    from quarklab.distributed import Dist, check_engine

    asked = {"DEEPSPEED": "deepspeed", "FSDP": "fsdp", "MULTI_GPU": "ddp"}[
        yaml.safe_load((CONFIGS / f"{config}.yaml").read_text())["distributed_type"]]
    with pytest.raises(QuarkError, match=f"the launch asked for {asked} .* but accelerate runs NO"):
        check_engine(asked, Dist(rank=0, world=2))


def test_deepspeed_would_cast_the_policy_in_place_is_one_clear_error(tmp_path):
    """--mixed_precision bf16 over a float32 policy: DeepSpeed would train and save bf16 weights; quarklab stops."""
    proc = _launch(["--mixed_precision", "bf16", "-m", "quarklab.cli", "train", "--preset", "tiny", "--run-dir",
                    str(tmp_path / "run")], config="zero2")
    _, err = proc.communicate(timeout=300)
    assert proc.returncode != 0 and "mixed_precision 'bf16' would make DeepSpeed cast the torch.float32 policy" in err


def _kill_all(proc: subprocess.Popen) -> None:
    """kill -9 of the launcher and every process under it, at once (torchrun starts its workers in sessions of
    their own: killing the launcher's group alone would leave them running)."""
    import psutil

    tree = psutil.Process(proc.pid)
    for p in [tree, *tree.children(recursive=True)]:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.send_signal(signal.SIGKILL)


@pytest.mark.parametrize("config", ["ddp", "zero2"])
def test_killed_two_process_run_resumes_to_the_same_metrics(request, config, tmp_path):
    two = request.getfixturevalue("two_runs")[1] if config == "ddp" else request.getfixturevalue("engine_runs")[config]
    run_dir = tmp_path / "killed"
    moments = [lambda: runs.pool_path(run_dir, 1).exists(),      # mid-training of iteration 1
               lambda: runs.pool_path(run_dir, 2).exists()]      # after iteration 2's pool
    for i, moment in enumerate(moments):
        proc = _train(run_dir, config=config) if i == 0 else _train(run_dir, "--resume", config=config)
        deadline = time.time() + 600
        while not moment() and proc.poll() is None and time.time() < deadline:
            time.sleep(0.05)
        _kill_all(proc)
        proc.communicate()
    assert not runs.has_metrics(run_dir, 2, "eval"), "the run finished before the last kill"
    _finish(_train(run_dir, "--resume", config=config))
    assert runs.read_trained_by(run_dir, 2)["engine"] == {"ddp": "ddp", "zero2": "deepspeed"}[config]
    for it in (1, 2):
        pd.testing.assert_frame_equal(runs.read_pool(run_dir, it), runs.read_pool(two, it))
    m, want = runs.read_metrics(run_dir), runs.read_metrics(two)
    cols = ["iteration", "token", "reward", "perplexity", "length"]
    got, want = (x[x["kind"] == "eval"][cols].astype({"token": str}).reset_index(drop=True) for x in (m, want))
    pd.testing.assert_frame_equal(got, want, rtol=1e-5)
    assert not m[m["kind"] == "train"].duplicated(["iteration", "step"]).any()


def test_lora_with_gradient_checkpointing_trains_under_two_processes(world, tmp_path):
    run_dir = tmp_path / "lora"
    sets = SMALL + ["iterations=1", "lora_rank=4", "lora_alpha=8", "gradient_checkpointing=true"]
    _finish(_launch(["-m", "quarklab.cli", "train", "--preset", "tiny", "--run-dir", str(run_dir),
                     *[a for s in sets for a in ("--set", s)]]))
    trained = ql.load_policy(runs.checkpoint_path(run_dir, 1)).state_dict()  # merged: a plain model folder
    start = ql.load_policy(world.policy).state_dict()
    assert set(trained) == set(start)
    changed = {k for k in start if not torch.equal(trained[k][: start[k].shape[0]], start[k])}
    assert changed and all(".h." in k or "wte" in k or "lm_head" in k for k in changed)


def test_vllm_sampling_under_several_processes_is_one_clear_error():
    from quarklab.config import preset
    from quarklab.distributed import Dist
    from quarklab.quark import check_processes

    with pytest.raises(QuarkError, match="sampler='vllm' runs in one process"):
        check_processes(preset("tiny").replace(sampler="vllm"), Dist(rank=0, world=2))
