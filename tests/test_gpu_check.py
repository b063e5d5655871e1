"""benchmarks/gpu_check.py, the one script a lent GPU runs, rehearsed on CPU (--small): every stage measured, the
ZeRO-2 stage trained by DeepSpeed, the plan's prediction beside them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_gpu_check_rehearses_every_stage_on_cpu(world, tmp_path):
    out = tmp_path / "gpu_check.json"
    proc = subprocess.run([sys.executable, "-m", "benchmarks.gpu_check", "--small", "--out", str(out), "--workdir",
                           str(tmp_path / "work")], cwd=ROOT, capture_output=True, text=True, timeout=900,
                          env={**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(out.read_text())
    stages = report["stages"]
    assert (stages["build"]["blocks"], stages["build"]["vocab_rows"]) == (28, 50405)  # GPT-J's 50,400 + 5 tokens
    for name in ("sample.hf", "train"):
        assert stages[name]["tokens_per_s"] > 0 and stages[name]["peak_gib"] > 0
    assert stages["train"]["optimizer_steps"] == 1
    assert "tokens_per_s" in stages["sample.vllm"] or "skipped" in stages["sample.vllm"]
    z = stages["zero2"]["trained_by"]
    assert (z["engine"], z["zero_stage"], z["processes"]) == ("deepspeed", 2, 1)
    p = stages["protocol"]  # the card's protocol: 128 greedy tokens (a random model never stops), fp32 on a CPU
    assert (p["prompts"], p["tokens"], p["cut"], p["conditioning"]) == (2, 2 * 128, 1.0, "_QUANTILE_TOKEN_0_")
    assert (p["policy_dtype"], p["reference_dtype"]) == ("float32", "float32") and p["perplexity"] > 1
    assert report["plan"]["train_peak_gib"] > 0 and report["plan"]["prompt_tokens"] > 0
    r = stages["residency"]["rules"]  # the loop's phases under each rule, beside the plan's (CPU: resident memory)
    assert list(r) == ["keep", "release"] and r["keep"]["moved_mib"] == 0 < r["release"]["moved_mib"]
    assert r["release"]["holds"]["1 train"] == {"policy": "device", "reference": "released", "reward": "released"}
    for got in r.values():
        assert set(got["measured_mib"]) == set(got["planned_mib"]) == {"sample", "score", "train", "evaluate"}
