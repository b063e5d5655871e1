"""Experiment tracking (report_to): a real tiny run's TensorBoard event file holds what metrics.jsonl records, at one
increasing step; the config as hyperparameters; nothing else the run writes changes; one error for a bad tracker;
and one summary line per iteration on the terminal."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import TINY_RUN

from quarklab import tracking
from quarklab.config import QuarkConfig

pytest.importorskip("tensorboard")
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402


def _train(run_dir: Path, settings: list[str]) -> subprocess.CompletedProcess:
    args = [sys.executable, "-m", "quarklab.cli", "train", "--preset", "tiny", "--run-dir", str(run_dir)]
    return subprocess.run(args + [a for s in settings for a in ("--set", s)], capture_output=True, text=True,
                          timeout=900)


@pytest.fixture(scope="module")
def tracked(world, tmp_path_factory) -> tuple[Path, str]:
    """The tiny run of conftest's tiny_run (same settings, seed 0) with report_to=tensorboard, and its stdout."""
    run_dir = tmp_path_factory.mktemp("tracked") / "run"
    proc = _train(run_dir, TINY_RUN + ["report_to=tensorboard"])
    assert proc.returncode == 0, proc.stderr[-2000:]
    return run_dir, proc.stdout


def _metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _scalars(folder: Path) -> EventAccumulator:
    acc = EventAccumulator(str(folder), size_guidance={"scalars": 0})
    acc.Reload()
    return acc


def test_event_file_scalars_equal_metrics_jsonl(tracked):
    run_dir, _ = tracked
    assert list((run_dir / "tracking" / "quarklab").glob("events.out.tfevents.*"))
    acc = _scalars(run_dir / "tracking" / "quarklab")
    rows = _metrics(run_dir)
    train = sorted((r for r in rows if r["kind"] == "train"), key=lambda r: (r["iteration"], r["step"]))
    assert {r["iteration"] for r in train} == {1, 2}
    # every optimizer step's loss terms and lr, at a step that keeps increasing across iterations
    for key in ("loss", "nll", "kl", "entropy", "lr"):
        events = acc.Scalars(f"train/{key}")
        assert [e.step for e in events] == list(range(1, len(train) + 1))
        assert [e.value for e in events] == pytest.approx([r[key] for r in train], rel=1e-6)
    end = {it: sum(r["iteration"] <= it for r in train) for it in (0, 1, 2)}  # the step each iteration ends on
    evals = [r for r in rows if r["kind"] == "eval"]
    assert {r["iteration"] for r in evals} == {0, 1, 2}
    for key in ("reward", "perplexity", "length"):  # every eval row, per token
        for r in evals:
            token = "none" if r["token"] is None else r["token"]
            tag = f"eval/{r['mode']}/token_{token}/{key}"
            assert [(e.step, pytest.approx(e.value, rel=1e-6)) for e in acc.Scalars(tag)
                    if e.step == end[r["iteration"]]] == [(end[r["iteration"]], r[key])], tag
    ctrl = [r for r in evals if r["iteration"] == 2 and r["token"] == 0][0]["controllability"]
    assert acc.Scalars("eval/greedy/token_0/controllability")[-1].value == pytest.approx(ctrl, rel=1e-6, abs=1e-7)
    n_evals = {f"eval/{r['mode']}/token_{'none' if r['token'] is None else r['token']}/reward" for r in evals}
    assert sum(len(acc.Scalars(t)) for t in n_evals) == len(evals)  # each row once: nothing logged twice


def test_config_is_logged_as_hyperparameters(tracked):
    from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData

    run_dir, _ = tracked
    config = QuarkConfig.from_stored(json.loads((run_dir / "config.json").read_text()))
    [folder] = [p for p in (run_dir / "tracking" / "quarklab").iterdir() if p.is_dir() and list(p.glob("events*"))]
    acc = _scalars(folder)
    content = acc.PluginTagToContent("hparams")["_hparams_/session_start_info"]
    hparams = HParamsPluginData.FromString(content).session_start_info.hparams
    assert hparams["lr"].number_value == pytest.approx(config.lr)
    assert hparams["report_to"].string_value == "tensorboard" and hparams["policy"].string_value == config.policy
    assert hparams["seed"].number_value == config.seed
    assert set(hparams) == {k for k, v in config.to_dict().items() if v is not None}


def test_tracking_changes_no_run_output_and_an_untracked_run_has_no_tracking_folder(tracked, tiny_run):
    run_dir, _ = tracked
    assert not (tiny_run / "tracking").exists()
    outputs = sorted(str(p.relative_to(tiny_run)) for p in tiny_run.rglob("*")
                     if p.is_file() and p.parts[len(tiny_run.parts)] in ("pool", "eval", "checkpoints"))
    assert {"pool/iter_001.parquet", "checkpoints/iter_002/model.safetensors"} <= set(outputs)
    assert sorted(str(p.relative_to(run_dir)) for p in run_dir.rglob("*") if p.is_file()
                  and p.parts[len(run_dir.parts)] in ("pool", "eval", "checkpoints")) == outputs
    for name in outputs + ["metrics.jsonl"]:
        assert (run_dir / name).read_bytes() == (tiny_run / name).read_bytes(), name


def test_one_summary_line_per_iteration_on_the_terminal(tracked):
    run_dir, stdout = tracked
    lines = [line for line in stdout.splitlines() if line.startswith("iteration ")]
    assert len(lines) == 3, stdout[-2000:]
    assert re.fullmatch(r"iteration 0/2 \(SFT\): reward [\d.]+, ppl [\d.]+, len [\d.]+, \d+ s", lines[0])
    rows = _metrics(run_dir)
    sft = [r for r in rows if r["kind"] == "eval" and r["iteration"] == 0][0]["reward"]
    for it, line in enumerate(lines[1:], start=1):
        token0 = [r for r in rows if r["kind"] == "eval" and r["iteration"] == it and r["token"] == 0][0]
        assert line.startswith(f"iteration {it}/2: token 0 reward {token0['reward']:.3f} (SFT {sft:.3f}), "
                               f"ppl {token0['perplexity']:.2f}, len {token0['length']:.1f}, "
                               f"controllability {token0['controllability']:.2f}, "), line
        assert re.search(r", \d+ s$", line)


def test_reopened_tracking_logs_only_rows_it_has_not_logged(tracked, tmp_path):
    """As a resumed run does: what the ledger holds is not logged again; a group it lacks is, once."""
    src, _ = tracked
    run_dir = tmp_path / "run"
    shutil.copytree(src, run_dir)
    config = json.loads((run_dir / "config.json").read_text())

    def counts() -> dict[str, int]:
        acc = _scalars(run_dir / "tracking" / "quarklab")
        return {t: len(acc.Scalars(t)) for t in acc.Tags()["scalars"]}

    before = counts()
    with tracking.Tracking(run_dir, "tensorboard", config):
        pass
    assert counts() == before
    ledger = run_dir / "tracking" / "logged.json"
    ledger.write_text(json.dumps([g for g in json.loads(ledger.read_text()) if g != [2, "eval"]]))
    with tracking.Tracking(run_dir, "tensorboard", config):
        pass
    after = counts()
    [(_, _, step, values)] = [e for e in tracking.scalars(_metrics(run_dir)) if e[:2] == (2, "eval")]
    assert {t: after[t] - before[t] for t in after if after[t] != before[t]} == {t: 1 for t in values}
    assert [2, "eval"] in json.loads(ledger.read_text())


def test_an_unknown_tracker_is_one_error_naming_the_valid_ones_before_any_model_loads(tmp_path):
    proc = _train(tmp_path / "run", ["report_to=tensorboard,tensorbored"])
    assert proc.returncode == 2, proc.stderr[-2000:]
    [line] = proc.stderr.splitlines()
    assert line.startswith("quarklab: error: report_to: unknown tracker 'tensorbored': choose from ")
    assert all(name in line for name in ("tensorboard", "wandb", "trackio", "mlflow"))
    assert not (tmp_path / "run").exists()  # not even the run folder: the same --run-dir works once it is fixed


def test_an_uninstalled_tracker_is_one_clear_error():
    import accelerate.utils

    missing = next((n for n in ("clearml", "aim", "dvclive", "swanlab", "comet_ml")
                    if not getattr(accelerate.utils, f"is_{n}_available")()), None)
    if missing is None:
        pytest.skip("every tracker tried is installed here")
    with pytest.raises(Exception, match=f"the '{missing}' tracker is not installed: pip install {missing}"):
        tracking.check_trackers(f"tensorboard,{missing}")


def test_report_to_reads_as_tracker_names():
    assert tracking.tracker_names("none") == []
    assert tracking.tracker_names("tensorboard,wandb,tensorboard") == ["tensorboard", "wandb"]
    assert QuarkConfig().report_to == "none"
    assert QuarkConfig().with_overrides(["report_to=tensorboard,wandb"]).report_to == "tensorboard,wandb"
    with pytest.raises(Exception, match="report_to must be 'none' or tracker names, comma-separated"):
        QuarkConfig().with_overrides(["report_to=Tensor Board"])


def test_under_two_processes_the_main_process_alone_logs(world, tmp_path):
    """accelerate launch --num_processes 2 (DDP, CPU processes): the launch's Accelerator and the trackers live side by
    side; one event file, every optimizer step once, and the summary lines printed once."""
    from launching import ENV, launch_head

    run_dir = tmp_path / "run"
    sets = [a for s in TINY_RUN + ["report_to=tensorboard"] for a in ("--set", s)]
    proc = subprocess.run(launch_head("ddp") + ["-m", "quarklab.cli", "train", "--preset", "tiny", "--run-dir",
                                                str(run_dir), *sets], capture_output=True, text=True, env=ENV,
                          timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert len(list((run_dir / "tracking").rglob("events.out.tfevents.*"))) == 2  # the scalars' and the hparams'
    acc = _scalars(run_dir / "tracking" / "quarklab")
    train = [r for r in _metrics(run_dir) if r["kind"] == "train"]
    assert [e.step for e in acc.Scalars("train/loss")] == list(range(1, len(train) + 1))
    assert sum(line.startswith("iteration ") for line in proc.stdout.splitlines()) == 3
