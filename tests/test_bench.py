"""quarklab bench: a real ``--quick`` run (tiny sizes) writes a complete, self-consistent report.

No test here asserts a speed: timings belong in the report, not in pass/fail.
"""

from __future__ import annotations

import importlib.util
import json
import math
import re
import subprocess
import sys
import time

import numpy as np
import pytest

from quarklab import QuarkError
from benchmarks.bench import (QUANTILE_LEVELS, STAGES, TARGETS, TLDR_PROMPT_WORD_QUANTILES, BenchSettings, StageTimer,
                            prompt_word_lengths, run_bench, synthetic_prompts)

QUICK = BenchSettings.quick_settings()


@pytest.fixture(scope="module")
def report(world, tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "bench.json"
    # one torch thread: on a shared 2-core machine a second thread waiting on a busy core slows every op
    proc = subprocess.run([sys.executable, "-m", "quarklab.cli", "bench", "--quick", "--threads", "1",
                           "--out", str(out)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "sampler_vs_raw" in proc.stdout and "quarklab.sample" in proc.stdout  # the table is printed
    text = out.read_text()

    def no_constant(name):
        raise AssertionError(f"the report holds {name}: not strict JSON")

    return json.loads(text, parse_constant=no_constant)


def _figures(report):
    """(where, spread) of every throughput in the report."""
    out = [(f"sampling.{k}", report["sampling"][k]["tokens_per_s"]) for k in ("sampler", "raw", "loop")]
    out += [(f"reward.{k}", report["reward"][k]["rows_per_s"]) for k in ("cold", "warm")]
    out += [(f"training.{k}", report["training"][k]["tokens_per_s"]) for k in ("nll", "kl")]
    if "tokens_per_s" in report["training"]["trl"]:
        out.append(("training.trl", report["training"]["trl"]["tokens_per_s"]))
    return out


def test_the_report_has_every_section(report):
    for key in ("settings", "machine", "versions", "sampling", "reward", "training", "iteration", "ratios",
                "targets", "wall_seconds"):
        assert key in report, key
    assert report["settings"]["quick"] and report["settings"]["reps"] == QUICK.reps
    assert report["settings"]["model_source"].endswith("sft")


def test_every_throughput_is_a_positive_median_of_the_configured_repetitions(report):
    for where, fig in _figures(report):
        values = fig["values"]
        assert len(values) == QUICK.reps, where
        assert all(math.isfinite(v) and v > 0 for v in values), where
        assert fig["median"] == pytest.approx(float(np.median(values))), where
        assert fig["min"] == min(values) and fig["max"] == max(values), where
        q1, q3 = np.quantile(values, [0.25, 0.75])
        assert fig["iqr"] == pytest.approx(q3 - q1) and fig["iqr"] >= 0, where
    for case in ("sampler", "raw", "loop"):  # each repetition's rate is its units over its seconds
        rec = report["sampling"][case]
        assert len(rec["tokens"]) == len(rec["seconds"]) == QUICK.reps
        assert rec["tokens_per_s"]["values"] == pytest.approx([t / s for t, s in zip(rec["tokens"], rec["seconds"])])
        # generated tokens, counted to EOS: never more than every sequence's full width
        assert 0 < max(rec["tokens"]) <= QUICK.prompts * QUICK.n * QUICK.max_new_tokens


def test_ratios_are_the_ratios_of_the_recorded_medians(report):
    sp, tr = report["sampling"], report["training"]

    def med(section, case):
        return section[case]["tokens_per_s"]["median"]

    assert sp["ratios"]["sampler_vs_raw"] == pytest.approx(med(sp, "sampler") / med(sp, "raw"))
    assert sp["ratios"]["sampler_vs_loop"] == pytest.approx(med(sp, "sampler") / med(sp, "loop"))
    assert tr["ratios"]["kl_step_cost"] == pytest.approx(med(tr, "nll") / med(tr, "kl"))
    if "tokens_per_s" in tr["trl"]:
        assert tr["ratios"]["nll_vs_trl"] == pytest.approx(med(tr, "nll") / med(tr, "trl"))
    else:
        assert tr["ratios"]["nll_vs_trl"] is None and report["targets"]["nll_vs_trl"]["pass"] is None
    assert report["ratios"] == {**sp["ratios"], **tr["ratios"]}


def test_every_target_has_its_value_threshold_and_verdict(report):
    assert set(report["targets"]) == set(TARGETS)
    for name, t in report["targets"].items():
        op, threshold, _ = TARGETS[name]
        assert (t["op"], t["target"]) == (op, threshold)
        if t["pass"] is not None:
            assert t["pass"] == (t["value"] >= threshold if op == ">=" else t["value"] <= threshold)
    assert report["targets"]["sampler_vs_raw"]["value"] == report["ratios"]["sampler_vs_raw"]
    assert report["targets"]["bench_wall_seconds"]["pass"] is None  # judged on the full default bench only


def test_trl_is_measured_when_installed_and_skipped_with_a_reason_otherwise(report):
    trl = report["training"]["trl"]
    if importlib.util.find_spec("trl") is not None:
        assert "tokens_per_s" in trl and trl["version"] == report["versions"]["trl"]
        assert sum(trl["tokens"]) > 0
    else:
        assert isinstance(trl["skipped"], str) and trl["skipped"]
    if "tokens" in trl:  # TRL and quarklab time the same number of steps of the same rows
        assert len(trl["tokens"]) == len(report["training"]["nll"]["tokens"]) == QUICK.reps
        assert 0 < max(trl["tokens"]) <= QUICK.train_batch_size * QUICK.train_steps * QUICK.max_new_tokens + \
            QUICK.train_batch_size * QUICK.train_steps  # completion tokens (+ EOS) of the timed steps


def test_machine_and_versions_are_recorded(report):
    m, v = report["machine"], report["versions"]
    assert m["cpu_count"] >= 1 and m["torch_threads"] == 1 and m["device"] == "cpu"
    assert m["cuda_available"] in (True, False) and "gpu" in m
    for name in ("python", "torch", "transformers", "quarklab"):
        assert v[name], name
    import torch
    import transformers
    assert v["torch"].split("+")[0] == torch.__version__.split("+")[0] and v["transformers"] == transformers.__version__


def test_the_iteration_profile_shares_add_up_to_one(report):
    it = report["iteration"]
    assert it["config"]["iterations"] == 1 and it["train_steps"] >= 1 and it["pool_rows"] > 0
    assert set(it["stages"]) == set(STAGES)
    assert all(st["seconds"] >= 0 for st in it["stages"].values())
    assert sum(st["share"] for st in it["stages"].values()) == pytest.approx(1.0, abs=1e-6)
    assert sum(st["seconds"] for st in it["stages"].values()) == pytest.approx(it["run_seconds"], rel=1e-6)
    for stage in ("sampling", "policy_forward_backward", "reference_forward", "optimizer", "evaluation"):
        assert it["stages"][stage]["seconds"] > 0, stage  # each stage was seen, not left to "other"
    assert it["peak_rss_mb"] > 50 and it["process_wall_seconds"] >= it["run_seconds"] > 0


def test_vllm_is_recorded_as_skipped_on_cpu(report):
    assert report["sampling"]["vllm"] == {"skipped": "vLLM is compared on --device cuda only"}


def test_synthetic_prompts_follow_the_embedded_tldr_length_distribution(world, report):
    prompts = synthetic_prompts(400, seed=0)
    assert prompts == synthetic_prompts(400, seed=0)  # deterministic
    layout = re.compile(r"^SUBREDDIT: r/\S+\nTITLE: .+\nPOST: .+\nTL;DR:$", re.S)
    assert all(layout.match(p) for p in prompts)
    lengths = np.array([len(p.split()) for p in prompts])
    assert sorted(lengths) == sorted(prompt_word_lengths(400))  # each prompt has its drawn length exactly
    inner = slice(1, -1)  # the 5 % .. 95 % quantiles (the extremes of 400 draws sit half a step inside)
    got = np.quantile(lengths, QUANTILE_LEVELS)[inner]
    want = np.asarray(TLDR_PROMPT_WORD_QUANTILES, dtype=float)[inner]
    assert np.all(np.abs(got - want) <= 0.03 * want), (got, want)
    assert abs(lengths.min() - TLDR_PROMPT_WORD_QUANTILES[0]) <= 10
    assert abs(lengths.max() - TLDR_PROMPT_WORD_QUANTILES[-1]) <= 10
    # the bench sampled from exactly these prompts
    assert report["sampling"]["prompts"]["word_lengths"] == [len(p.split()) for p in synthetic_prompts(QUICK.prompts)]
    assert report["sampling"]["prompts"]["embedded_word_quantiles"] == list(TLDR_PROMPT_WORD_QUANTILES)


def test_stage_timer_charges_nested_stages_exclusively():
    timer = StageTimer()
    t0 = time.perf_counter()
    with timer.stage("outer"):
        time.sleep(0.02)
        with timer.stage("inner"):
            time.sleep(0.03)
    total = time.perf_counter() - t0
    assert set(timer.seconds) == {"outer", "outer/inner"}
    assert timer.seconds["outer/inner"] >= 0.03 and timer.seconds["outer"] >= 0.02
    assert sum(timer.seconds.values()) == pytest.approx(total, abs=0.01)


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vllm is installed here")
def test_the_vllm_backend_without_vllm_is_one_clear_error(world):
    from quarklab.vllm_backend import VLLMSampler, vllm_available

    assert not vllm_available()
    with pytest.raises(QuarkError, match="vllm"):
        VLLMSampler(world.policy)


def test_bad_bench_settings_are_clear_errors(tmp_path):
    with pytest.raises(QuarkError, match="repetition"):
        run_bench(BenchSettings.quick_settings(reps=0), tmp_path / "b.json")
    with pytest.raises(QuarkError, match="device"):
        run_bench(BenchSettings.quick_settings(device="tpu"), tmp_path / "b.json")
    import torch
    if not torch.cuda.is_available():
        with pytest.raises(QuarkError, match="CUDA"):
            run_bench(BenchSettings.quick_settings(device="cuda"), tmp_path / "b.json")
    assert not (tmp_path / "b.json").exists()


def test_trl_stays_optional(tmp_path, monkeypatch):
    import torch

    from benchmarks.bench import _trl_case

    # importing quarklab and its bench never imports trl
    out = subprocess.run([sys.executable, "-c", "import sys, quarklab, benchmarks.bench, quarklab.cli; "
                          "print('trl' in sys.modules)"], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
    # without trl, the TRL comparison is recorded as skipped, with the reason, and nothing else changes
    monkeypatch.setitem(sys.modules, "trl", None)
    cases = {}
    got = _trl_case(None, None, [], [], QUICK, torch.device("cpu"), tmp_path, cases)
    assert cases == {} and "trl cannot be imported" in got["skipped"]
