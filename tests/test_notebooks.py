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
from quarklab.config import field_specs
from quarklab.notebooks import (NOTEBOOKS, SHARED_PARAMETERS, check_parameters, notebooks_dir, parse_value, results,
                                run_notebooks)

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


CELL_TIMEOUT = 300  # seconds; the slowest cell here (training in 02) takes well under a minute


@pytest.fixture(scope="module")
def executed(world, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("nb") / "demo"
    try:
        paths = run_notebooks(run_dir, SMALL, progress=False, cell_timeout=CELL_TIMEOUT)
    except ql.QuarkError as exc:  # papermill/nbclient can, rarely, lose a kernel's reply and wait forever
        if "cell_timeout" not in str(exc):
            raise
        paths = run_notebooks(run_dir, SMALL, progress=False, cell_timeout=CELL_TIMEOUT)  # a cell error fails here
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
            "--out", str(tmp_path), "--only", NOTEBOOKS[1], "--cell-timeout", str(CELL_TIMEOUT)]
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


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_the_cell_after_the_parameters_checks_them(name):
    book, params = _parameters_cell(notebooks_dir() / name)
    cell = book.cells[book.cells.index(params[0]) + 1]
    calls = [n for n in ast.walk(ast.parse(cell.source)) if isinstance(n, ast.Call)
             and ast.unparse(n.func) == "ql.notebooks.check_parameters"]
    assert len(calls) == 1 and cell.cell_type == "code"
    checked = {k.arg for k in calls[0].keywords}
    assigned = {t.id for node in ast.parse(params[0].source).body if isinstance(node, ast.Assign) for t in node.targets}
    assert checked == set(SHARED_PARAMETERS) | (assigned & set(field_specs()))  # every config-named parameter


def test_check_parameters_names_the_bad_one():
    check_parameters(run_dir="runs/x", policy="auto", reference=None, num_quantiles=3, quantile_scope="global",
                     seed=1, device="cpu", top_p=1.0, temperature=0.7)
    for bad, message in [({"num_quantiles": 0}, r"num_quantiles must be an integer >= 1, got 0"),
                         ({"quantile_scope": "per-prompt"}, r"quantile_scope must be one of 'local', 'global'"),
                         ({"top_p": 0}, r"top_p must be a number in \(0, 1\], got 0"),
                         ({"seed": "zero"}, r"seed must be an integer >= 0, got 'zero'"),
                         ({"device": "gpu"}, r"device must be 'auto', 'cpu', 'mps', 'cuda' or 'cuda:N', got 'gpu'"),
                         ({"run_dir": ""}, r"run_dir must be a folder path"),
                         ({"num_quantile": 3}, r"'num_quantile' is neither run_dir nor a QuarkConfig field")]:
        with pytest.raises(ql.QuarkError, match=message):
            check_parameters(**bad)


def test_command_line_values_of_config_fields_are_read_by_the_field_type():
    assert parse_value("3", "num_quantiles") == 3 and parse_value("0.5", "top_p") == 0.5
    assert parse_value("local", "quantile_scope") == "local" and parse_value("null", "reference") is None
    assert parse_value("123", "policy") == "123"  # a folder named 123 stays text
    assert parse_value("[2, 3]", "ks") == [2, 3] and parse_value("train", "split") == "train"  # others: JSON or text
    assert parse_value("3", "num_prompts") == 3
    with pytest.raises(ql.QuarkError, match=r"^-p: num_quantiles must be an integer >= 1, got 'three'$"):
        parse_value("three", "num_quantiles")


def test_a_bad_parameter_stops_in_the_check_cell_before_any_model_loads(tmp_path):
    name = NOTEBOOKS[0]
    with pytest.raises(ql.QuarkError) as info:
        run_notebooks(tmp_path, {"num_quantiles": 0}, notebooks=[name], progress=False)
    message = str(info.value)
    assert "QuarkError: notebook parameter: num_quantiles must be an integer >= 1, got 0" in message
    cell_number = int(message.split(f"{name} failed in cell ")[1].split(":")[0])
    book = nbformat.read(tmp_path / name, as_version=4)
    code = [c for c in book.cells if c.cell_type == "code"]
    failed = [i for i, c in enumerate(code) if any(o.get("output_type") == "error" for o in c.outputs)]
    assert len(failed) == 1
    cell = code[failed[0]]
    assert "check_parameters(" in cell.source and cell.execution_count == cell_number
    assert "papermill" in str(code[failed[0] - 1].metadata)  # right after the (injected) parameters
    assert all(c.execution_count is None and not c.outputs for c in code[failed[0] + 1:])  # nothing loaded
    assert not (tmp_path / "results").exists() and not (tmp_path / "figures").exists()


def test_the_cli_rejects_a_bad_config_parameter_before_running_anything(tmp_path):
    for args in (["run", "--run-dir", str(tmp_path / "run"), "-p", "quantile_scope", "per-prompt"],
                 ["sweep", "--out", str(tmp_path / "sweep"), "-p", "num_quantiles", "3", "zero"]):
        proc = subprocess.run([sys.executable, "-m", "quarklab.cli", "notebooks", *args], capture_output=True,
                              text=True)
        assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
        assert proc.stderr.startswith("quarklab: error: -p: ")
        assert "quantile_scope must be one of 'local', 'global', got 'per-prompt'" in proc.stderr or \
            "num_quantiles must be an integer >= 1, got 'zero'" in proc.stderr
    assert not (tmp_path / "run").exists() and not (tmp_path / "sweep").exists()


def test_a_cell_past_its_timeout_stops_the_run_with_one_error(tmp_path):
    book = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("import time\ntime.sleep(60)")],
                                    metadata={"kernelspec": {"name": "python3", "language": "python",
                                                           "display_name": "Python 3"}})
    (tmp_path / "src").mkdir()
    nbformat.write(book, tmp_path / "src" / "slow.ipynb")
    with pytest.raises(ql.QuarkError, match=r"slow.ipynb: a cell ran past cell_timeout=2"):
        run_notebooks(tmp_path / "run", notebooks=["slow.ipynb"], source_dir=tmp_path / "src", progress=False,
                      cell_timeout=2)
    assert (tmp_path / "run" / "slow.ipynb").exists()  # the partly executed notebook stays
