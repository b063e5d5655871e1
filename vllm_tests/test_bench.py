"""``quarklab bench`` measures the vLLM sampler beside quarklab.sample, on the same prompts and settings."""

from __future__ import annotations

import json
import subprocess
import sys

import vllm

from benchmarks.settings import BenchSettings


def test_the_bench_measures_vllm_as_a_peer_of_the_transformers_sampler(world, tmp_path):
    out = tmp_path / "bench.json"
    proc = subprocess.run([sys.executable, "-m", "quarklab.cli", "bench", "--quick", "--threads", "1",
                           "--out", str(out)], capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    report = json.loads(out.read_text())
    sp = report["sampling"]
    quick = BenchSettings.make(quick=True)
    assert "skipped" not in sp["vllm"], sp["vllm"]
    for case in ("sampler", "vllm"):  # the same repetitions, each generating real tokens
        assert len(sp[case]["tokens"]) == len(sp[case]["seconds"]) == quick.reps
        assert min(sp[case]["tokens"]) > 0 and min(sp[case]["seconds"]) > 0
        assert sp[case]["tokens_per_s"]["median"] > 0
    # the same prompts and settings: n samples of every prompt, each at most max_new_tokens (+ its EOS)
    c = quick.config
    assert max(sp["vllm"]["tokens"]) <= sp["prompts"]["count"] * c.samples_per_prompt * (c.max_new_tokens + 1)
    assert sp["ratios"]["vllm_vs_sampler"] == sp["vllm"]["tokens_per_s"]["median"] / sp["sampler"]["tokens_per_s"][
        "median"]
    assert report["versions"]["vllm"] == vllm.__version__
    assert "VLLMSampler" in sp["vllm"]["how"]
    vllm_line = next(line for line in proc.stdout.splitlines() if line.strip().startswith("vLLM"))
    assert "tok/s" in vllm_line and "skipped" not in vllm_line  # the printed table shows it measured
