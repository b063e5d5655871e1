"""The one GPU check: ALT's run (``tldr-gptj``) at small sizes on a randomly initialised GPT-J 6B, measured stage by
stage beside what ``quarklab plan`` predicts for the same settings.

    python -m benchmarks.gpu_check --out gpu_check.json            # one GPU: GPT-J 6B's shape, built, no download
    python -m benchmarks.gpu_check --small --out gpu_check.json    # the same script on CPU, a 28-block stand-in

Stages, each in the order a Quark iteration meets them:

1. ``build``: GPT-J 6B from transformers' ``GPTJConfig`` defaults (GPT-J 6B's: 28 blocks, 4,096 wide, 50,400
   rows), random bf16 weights, saved with the tiny world's tokenizer laid out as GPT-J's (50,400 entries) and the
   quantile tokens added at 50400-50404 (50,405 rows), as a ``save_pretrained`` folder: what vLLM and ``quarklab train`` load;
2. ``sample.hf``: :func:`quarklab.sample` of ``prompts x samples`` completions of ``max_new_tokens``
   (``sample_batch_size`` sequences a call): tokens/s and peak memory;
3. ``train``: :func:`quarklab.train.train_on_rows` over rows from those samples (8 blocks trained, fp32 masters,
   ``steps`` optimizer steps): trained tokens/s and peak memory;
4. ``sample.vllm``: :class:`quarklab.vllm_backend.VLLMSampler` on the same prompts and settings (skipped, with
   the reason, when vLLM cannot be imported): tokens/s and the device memory its engine held;
5. ``protocol``: :func:`quarklab.protocols.evaluate_policy` under ``alt-card`` (greedy, 128 new tokens, the
   policy in fp16 and the perplexity reference in fp32 on a GPU) on a few prompts: its wall time, its peak memory
   and the dtypes it used;
6. ``zero2``: ``accelerate launch --config_file configs/accelerate/zero2.yaml --num_processes 1 quarklab train``
   for one iteration of one optimizer step: its wall time, its peak device memory, and what trained it
   (``trained_by.json``: DeepSpeed, stage 2);
7. ``residency``: one iteration of the ``tldr-gptj`` loop on its stand-ins (28 GPT-J blocks, 1,024 wide; the
   CarperAI value-head reward model on the same backbone; ``--small``: 64 wide) under ``idle_models`` "keep",
   "offload" and "release" (``--small``: "keep" and "release"), each in a fresh process
   (:mod:`benchmarks.residency`): each phase's peak beside the plan's for the same sizes, where each model was,
   and the bytes and seconds the moves took.

Peak memory is torch's peak allocation in this process for stages 2-3 and per phase in stage 7 (on a CPU, the
resident set above the run's start), and the device's (GPU: ``nvidia-smi``'s
memory.used, sampled every 0.2 s; CPU: the resident set of the process tree) for stages 4-5, whose memory lives
in other processes. The plan's figures are for one GPU, the same settings and the measured prompt length.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch

import quarklab as ql
from quarklab import runs
from quarklab.config import preset
from quarklab.tokens import add_quantile_tokens, quantile_token_ids
from quarklab.plan import plan
from quarklab.quantiles import assign_quantiles
from quarklab.train import table_rows, train_on_rows

ROOT = Path(__file__).resolve().parents[1]
GIB = 2**30


def settings(small: bool) -> dict:
    """The sizes of the check: ALT's preset, small enough for minutes (``--small``: seconds on CPU)."""
    return dict(prompts=2 if small else 8, samples=10 if small else 16, max_new_tokens=16 if small else 64,
                sample_batch_size=8 if small else 64, batch_size=4 if small else 8, steps=1 if small else 2)


def build_model(folder: Path, small: bool, device: torch.device) -> tuple[Path, dict]:
    """GPT-J 6B (``--small``: 28 blocks, 128 wide: heads of 32, as vLLM's CPU attention needs), random weights in the run's dtype, with the quantile tokens."""
    from transformers import GPTJConfig, GPTJForCausalLM

    from quarklab.testing.standins import gptj_tokenizer

    tok = gptj_tokenizer()  # GPT-J 6B's layout: 50,400 entries, so the quantile tokens are 50400-50404
    shape = dict(n_embd=128, n_head=4, rotary_dim=8) if small else {}
    config = GPTJConfig(bos_token_id=tok.eos_token_id, eos_token_id=tok.eos_token_id, **shape)
    dtype = torch.float32 if device.type == "cpu" else torch.bfloat16
    t0 = time.perf_counter()
    torch.manual_seed(0)
    with torch.device(device):
        model = GPTJForCausalLM(config).to(dtype)
    add_quantile_tokens(model, tok, 5, seed=0)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    params, rows = sum(p.numel() for p in model.parameters()), model.get_input_embeddings().num_embeddings
    del model
    release(device)
    return folder, {"seconds": round(time.perf_counter() - t0, 1), "parameters": params, "dtype": str(dtype),
                    "blocks": config.n_layer, "hidden": config.n_embd, "vocab_rows": rows}


def release(device: torch.device) -> None:
    import gc

    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def peak_gib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated() / GIB
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GIB  # the process's peak (Linux: KiB)


class DeviceMemory:
    """The device's memory in use, sampled in a thread while a stage runs (other processes' included)."""

    def __init__(self, device: torch.device, root_pid: int | None = None):
        self.device, self.root_pid, self.peak, self._stop = device, root_pid or os.getpid(), 0.0, threading.Event()

    def _read(self) -> float:
        if self.device.type == "cuda":
            out = subprocess.run(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits",
                                  "-i", str(self.device.index or 0)], capture_output=True, text=True)
            return float(out.stdout.strip() or 0) * 2**20 / GIB
        import psutil

        try:
            root = psutil.Process(self.root_pid)
            procs = [root, *root.children(recursive=True)]
        except psutil.Error:  # the launch has ended
            return 0.0
        total = 0
        for p in procs:
            with contextlib.suppress(psutil.Error):  # a process that ended in between
                total += p.memory_info().rss
        return total / GIB

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._read())
            self._stop.wait(0.2)

    def __enter__(self):
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def check(out: Path, small: bool, workdir: Path) -> dict:
    device = torch.device("cpu" if small or not torch.cuda.is_available() else "cuda")
    s = settings(small)
    report = {"device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu", "small": small,
              "settings": s, "stages": {}}
    stages = report["stages"]
    folder, stages["build"] = build_model(workdir / "gptj", small, device)
    config = preset("tldr-gptj").replace(
        policy=str(folder), reward="tiny-tldr", reward_base_model=None, dataset="tiny-tldr",
        dtype="float32" if device.type == "cpu" else "bfloat16", prompts_per_iteration=s["prompts"],
        samples_per_prompt=s["samples"], max_new_tokens=s["max_new_tokens"], sample_batch_size=s["sample_batch_size"],
        batch_size=s["batch_size"], steps_per_iteration=s["steps"], iterations=1, eval_prompts=2,
        eval_max_new_tokens=s["max_new_tokens"], eval_batch_size=s["sample_batch_size"])
    prompts = ql.load_prompts("tiny-tldr", "train", limit=s["prompts"])

    policy, tok = ql.load_policy(folder, dtype=config.dtype, device=device), ql.load_tokenizer(folder)
    control = quantile_token_ids(tok, config.num_quantiles)
    params = ql.SamplingParams(n=s["samples"], temperature=config.temperature, top_p=config.top_p,
                               max_new_tokens=s["max_new_tokens"], batch_size=s["sample_batch_size"], seed=0)
    release(device)
    t0 = time.perf_counter()
    pool = ql.sample(policy, tok, prompts, params, suppress=control)
    seconds = time.perf_counter() - t0
    tokens = int(pool["num_tokens"].sum())
    prompt_tokens = int(pool["prompt_ids"].map(len).max())
    stages["sample.hf"] = {"seconds": round(seconds, 2), "tokens": tokens, "tokens_per_s": round(tokens / seconds, 1),
                           "peak_gib": round(peak_gib(device), 2)}

    pool["reward"] = np.arange(len(pool), dtype=float)  # a spread of rewards: every quantile gets rows
    pool["quantile"] = assign_quantiles(pool["reward"].to_numpy(), config.num_quantiles, pool["prompt_id"].to_numpy())
    rows = table_rows(pool)
    release(device)
    t0 = time.perf_counter()
    log, _ = train_on_rows(policy, None, rows, config, control, tok.pad_token_id, tok.eos_token_id, seed=0)
    seconds = time.perf_counter() - t0
    trained = len(log) * config.batch_size * config.grad_accum * (prompt_tokens + s["max_new_tokens"])
    stages["train"] = {"seconds": round(seconds, 2), "optimizer_steps": len(log),
                       "tokens_per_s": round(trained / seconds, 1), "peak_gib": round(peak_gib(device), 2),
                       "loss": [round(e["loss"], 4) for e in log]}
    del policy
    release(device)

    stages["sample.vllm"] = vllm_stage(folder, prompts, params, config, device)
    stages["protocol"] = protocol_stage(folder, device, prompts=2 if small else 16)
    stages["zero2"] = zero2_stage(config, workdir, device)
    stages["residency"] = residency_stage(workdir, device, small)

    gpu_gib = torch.cuda.get_device_properties(0).total_memory / GIB if device.type == "cuda" else 80.0
    table, _ = plan(config, gpus=1, gpu_memory_gb=gpu_gib, prompt_tokens=prompt_tokens)
    one = table[table["strategy"] == "1 GPU"].iloc[0]
    report["plan"] = {"prompt_tokens": prompt_tokens, "train_peak_gib": round(float(one["train_peak_gib"]), 2),
                      "sample_peak_gib": round(float(one["sample_peak_gib"]), 2),
                      "kv_cache_gib": round(float(one["kv_cache_gib"]), 2), "note": (
                          "each plan phase holds the models quarklab.residency puts on the GPU for it (idle_models; "
                          f"here {config.idle_models!r}); sample.hf and train here hold the policy alone")}
    out.write_text(json.dumps(report, indent=1))
    return report


def vllm_stage(folder: Path, prompts, params, config, device: torch.device) -> dict:
    from quarklab.errors import describe
    from quarklab.vllm_backend import VLLMSampler, vllm_available

    if not vllm_available():
        return {"skipped": "vllm is not installed here"}
    try:
        with DeviceMemory(device) as mem:
            t0 = time.perf_counter()
            with VLLMSampler(folder, dtype=config.dtype, seed=0) as sampler:  # the engine stops on leaving
                start = time.perf_counter() - t0
                t0 = time.perf_counter()
                df = sampler.sample(prompts, params, suppress=quantile_token_ids(sampler.tokenizer, 5))
                seconds = time.perf_counter() - t0
    except Exception as exc:  # an engine that fails is a finding of the check, not the end of it
        return {"failed": describe(exc)}
    tokens = int(df["num_tokens"].sum())
    return {"engine_start_seconds": round(start, 1), "seconds": round(seconds, 2), "tokens": tokens,
            "tokens_per_s": round(tokens / seconds, 1), "device_peak_gib": round(mem.peak, 2)}


def protocol_stage(folder: Path, device: torch.device, prompts: int) -> dict:
    """The card's protocol on the built model (its own perplexity reference, the tiny-tldr reward and prompts)."""
    from quarklab.protocols import evaluate_policy

    release(device)
    t0 = time.perf_counter()
    result = evaluate_policy(folder, "alt-card", reward="tiny-tldr", reference=str(folder), dataset="tiny-tldr",
                             prompts=prompts, device=device.type)
    row, used = result.summary.iloc[0], result.used
    return {"seconds": round(time.perf_counter() - t0, 2), "peak_gib": round(peak_gib(device), 2),
            "prompts": int(row["prompts"]), "tokens": int(result.samples["num_tokens"].sum()),
            "cut": float(row["cut"]), "perplexity": round(float(row["perplexity"]), 2),
            **{k: used[k] for k in ("policy_dtype", "reward_dtype", "reference_dtype", "conditioning")}}


def zero2_stage(config, workdir: Path, device: torch.device) -> dict:
    """One iteration of one optimizer step under DeepSpeed ZeRO-2 (one process), as a researcher launches it."""
    run_dir = workdir / "zero2"
    sets = {"policy": config.policy, "reward": "tiny-tldr", "reward_base_model": "none", "dataset": "tiny-tldr",
            "dtype": config.dtype, "iterations": 1, "steps_per_iteration": 1, "prompts_per_iteration": 2,
            "samples_per_prompt": config.samples_per_prompt, "max_new_tokens": config.max_new_tokens,
            "sample_batch_size": config.sample_batch_size, "batch_size": config.batch_size, "eval_prompts": 2,
            "eval_max_new_tokens": 8, "eval_batch_size": 8, "final_protocol": "None"}  # the protocol stage measures it
    with socket.socket() as sock:  # a free port: nothing else on the machine may hold accelerate's default
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
           str(ROOT / "configs" / "accelerate" / "zero2.yaml"), "--num_processes", "1", "--main_process_port",
           str(port), "-m", "quarklab.cli",
           "train", "--preset", "tldr-gptj", "--run-dir", str(run_dir)]
    cmd += [a for k, v in sets.items() for a in ("--set", f"{k}={v}")]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    with DeviceMemory(device, proc.pid) as mem:
        _, err = proc.communicate()
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        return {"failed": err[-2000:]}
    return {"seconds": round(seconds, 1), "device_peak_gib": round(mem.peak, 2),
            "trained_by": runs.read_trained_by(run_dir, 1)}


def residency_stage(workdir: Path, device: torch.device, small: bool) -> dict:
    """Each phase's peak of one stand-in ``tldr-gptj`` iteration under each ``idle_models`` rule, beside the plan's."""
    from benchmarks.residency import STANDIN, compare
    from quarklab.testing import tldr_gptj_hub_cache

    cache = tldr_gptj_hub_cache(workdir / "standins", n_embd=64 if small else 1024, n_rows=8)
    config = preset("tldr-gptj").with_overrides(STANDIN + [f"device={device.type}"])
    rules = ("keep", "release") if small else ("keep", "offload", "release")
    t0 = time.perf_counter()
    try:
        report = compare(config, workdir / "residency", env={"HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1"},
                         rules=rules)
    except Exception as exc:  # a failed measurement is a finding of the check, not the end of it
        from quarklab.errors import describe

        return {"failed": describe(exc)}
    return {"seconds": round(time.perf_counter() - t0, 1), **report}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.gpu_check", description=__doc__.split("\n\n")[0])
    parser.add_argument("--small", action="store_true", help="a 28-block, 128-wide stand-in on CPU (a rehearsal)")
    parser.add_argument("--out", default="gpu_check.json", help="the JSON report (default gpu_check.json)")
    parser.add_argument("--workdir", help="where the model folder and the run go (default: a temporary folder)")
    args = parser.parse_args(argv)
    if not args.small and not torch.cuda.is_available():
        parser.error("no GPU here: run it where one is, or rehearse with --small")
    with tempfile.TemporaryDirectory() as tmp:
        report = check(Path(args.out), args.small, Path(args.workdir or tmp))
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
