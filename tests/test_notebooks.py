"""The four notebooks: committed clean, parametrized alike, and executed for real by papermill."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import nbformat
import pandas as pd
import pytest

import quarklab as ql
from quarklab.notebooks import NOTEBOOKS, SHARED_PARAMETERS, notebooks_dir, results, run_notebooks

SMALL = {"num_quantiles": 3, "num_prompts": 4, "samples_per_prompt": 6, "max_new_tokens": 24, "iterations": 1,
         "prompts_per_iteration": 6, "ks": [2, 3], "extra_config": {"eval_prompts": 6, "eval_max_new_tokens": 24, "max_new_tokens": 24}}


def _parameters_cell(path: Path):
    book = nbformat.read(path, as_version=4)
    cells = [c for c in book.cells if "parameters" in c.metadata.get("tags", [])]
    return book, cells


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_is_clean_thin_and_shares_the_parameters(name):
    book, params = _parameters_cell(notebooks_dir() / name)
    assert len(params) == 1
    assert book.cells[0].cell_type == "markdown" and "Try" in book.cells[0].source
    for cell in book.cells:
        if cell.cell_type == "code":
            assert not cell.outputs and cell.execution_count is None
            if "parameters" not in cell.metadata.get("tags", []):
                assert len(cell.source.splitlines()) <= 12  # thin: logic lives in the library
    assigned = {t.id for node in ast.parse(params[0].source).body if isinstance(node, ast.Assign) for t in node.targets}
    assert set(SHARED_PARAMETERS) <= assigned
    for line in params[0].source.splitlines():  # every knob has a comment
        if line and not line.startswith((" ", "#", "]", "}")) and "=" in line:
            assert "#" in line, line


@pytest.fixture(scope="module")
def executed(world, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("nb") / "demo"
    paths = run_notebooks(run_dir, SMALL, progress=False)
    return run_dir, paths


def test_all_four_notebooks_run_headless_and_record_their_results(executed):
    run_dir, paths = executed
    assert [p.name for p in paths] == NOTEBOOKS
    for p in paths:
        book = nbformat.read(p, as_version=4)
        assert any(c.get("outputs") for c in book.cells if c.cell_type == "code")
    got = results(run_dir)
    q = got["01_quantile_distributions"]
    assert q["num_samples"] == 4 * 6 and sum(q["quantile_count"]) == 24 and len(q["quantile_count"]) == 3
    assert q["quantile_mean_reward"] == sorted(q["quantile_mean_reward"], reverse=True)
    t = got["02_training_iterations"]
    assert t["iterations"] == 1 and set(t["token_reward"]) == {"0", "1", "2", "none"}
    c = got["03_compare_tokens"]
    assert set(c["mean_by_column"]) == {"token 0", "token 1", "token 2", "reference"}
    assert c["policy"].endswith("checkpoints/iter_001")
    assert got["04_tradeoffs"]["points"] == 1 + 4 and got["04_tradeoffs"]["quoted"] == 5
    figures = sorted(p.name for p in (run_dir / "figures").glob("*.png"))
    assert figures == ["01_effect_of_k_and_n.png", "01_quantiles_global_vs_local.png", "01_reward_distribution.png",
                       "02_iterations.png", "04_tradeoffs.png"]
    assert all((run_dir / "figures" / f).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for f in figures)
    assert "token 0" in (run_dir / "03_compare_tokens.html").read_text()
    card = pd.read_csv(run_dir / "04_model_card.csv")
    assert list(card.columns[:4]) == ["model", "RM", "PPL", "Avg. len"] and (card["source"] == "quoted").sum() == 5


def test_a_failing_notebook_names_the_cell_and_exits_non_zero(world, tmp_path):
    with pytest.raises(ql.QuarkError, match=r"01_quantile_distributions.ipynb failed in cell .*does not exist"):
        run_notebooks(tmp_path, {"dataset": str(tmp_path / "missing.jsonl")}, progress=False)
    proc = subprocess.run([sys.executable, "-m", "quarklab.cli", "notebooks", "run", "--run-dir", str(tmp_path),
                           "-p", "dataset", str(tmp_path / "missing.jsonl"), "--only", NOTEBOOKS[0]],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and "failed in cell" in proc.stderr and "Traceback" not in proc.stderr


def test_sweep_runs_the_grid_and_writes_one_summary(world, tmp_path):
    args = [sys.executable, "-m", "quarklab.cli", "notebooks", "sweep", "-p", "quantile_scope", "local", "global",
            "--out", str(tmp_path), "--only", NOTEBOOKS[1]]
    for name, value in SMALL.items():
        args += ["--set", name, json.dumps(value)]
    proc = subprocess.run(args, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    summary = pd.read_csv(tmp_path / "summary.csv")
    assert summary["quantile_scope"].tolist() == ["local", "global"]
    assert summary[["sft_reward", "token0_reward", "token2_reward"]].notna().all().all()
    for run_dir in summary["run_dir"]:
        config = json.loads((Path(run_dir) / "config.json").read_text())
        assert config["quantile_scope"] == Path(run_dir).name.split("=")[1]
