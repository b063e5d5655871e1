"""quarklab.notebooks.runner: papermill runs and sweeps, their errors, and which parameters reach which notebook."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import nbformat
import pandas as pd
import pytest

import quarklab as ql
from quarklab.notebooks import NOTEBOOKS, notebook_parameters, notebooks_dir, run_notebooks

CELL_TIMEOUT = 300  # seconds; the slowest cell here (training in 02) takes well under a minute
SMALL = {"num_quantiles": 3, "prompts_per_iteration": 6, "samples_per_prompt": 6, "iterations": 1,
         "extra_config": {"eval_prompts": 6, "eval_max_new_tokens": 24, "max_new_tokens": 24}}
KERNEL = {"kernelspec": {"name": "python3", "language": "python", "display_name": "Python 3"}}


def _notebook(folder: Path, name: str, parameters: str, *cells: str) -> None:
    params = nbformat.v4.new_code_cell(parameters)
    params.metadata["tags"] = ["parameters"]
    book = nbformat.v4.new_notebook(cells=[params, *map(nbformat.v4.new_code_cell, cells)], metadata=KERNEL)
    folder.mkdir(exist_ok=True)
    nbformat.write(book, folder / name)


SEEN = ("import json, pathlib\n"  # what the notebook was given, written beside it
        "names = ('run_dir', 'num_quantiles', 'seed', 'alpha', 'beta')\n"
        "pathlib.Path(run_dir, '{name}.json').write_text(json.dumps({{n: globals()[n] for n in names if n in globals()}}))")


def test_each_notebook_gets_only_the_parameters_it_declares(tmp_path):
    src = tmp_path / "src"
    _notebook(src, "a.ipynb", 'run_dir: str = "x"  # where\nnum_quantiles: int = 5  # K\nalpha: int = 1  # a',
              SEEN.format(name="a"))
    _notebook(src, "b.ipynb", 'run_dir: str = "x"  # where\nbeta: str = "b"  # b', SEEN.format(name="b"))
    run = tmp_path / "run"
    done = run_notebooks(run, {"num_quantiles": 3, "alpha": 2, "beta": "z", "seed": 4}, notebooks=["a.ipynb", "b.ipynb"],
                         source_dir=src, progress=False)
    assert [p.name for p in done] == ["a.ipynb", "b.ipynb"]
    # seed is shared: accepted though neither declares it, and given to neither
    assert json.loads((run / "a.json").read_text()) == {"run_dir": str(run), "num_quantiles": 3, "alpha": 2}
    assert json.loads((run / "b.json").read_text()) == {"run_dir": str(run), "beta": "z"}
    for name, injected in (("a.ipynb", {"run_dir", "num_quantiles", "alpha"}), ("b.ipynb", {"run_dir", "beta"})):
        (cell,) = [c for c in nbformat.read(run / name, as_version=4).cells
                   if "injected-parameters" in c.metadata.get("tags", [])]
        assert {line.split(" = ")[0] for line in cell.source.splitlines() if " = " in line} == injected


def test_a_shared_parameter_no_notebook_takes_is_still_checked_before_anything_runs(tmp_path):
    with pytest.raises(ql.QuarkError, match=r"^notebook parameter: seed must be an integer >= 0, got -1$"):
        run_notebooks(tmp_path / "run", {"seed": -1}, notebooks=["04_tradeoffs.ipynb"], progress=False)
    with pytest.raises(ql.QuarkError, match=r"^notebook parameter: quantile_scope must be one of"):
        ql.notebooks.sweep(tmp_path / "sweep", {"quantile_scope": ["local", "both"]}, notebooks=["04_tradeoffs.ipynb"],
                           progress=False)
    assert not (tmp_path / "run").exists() and not (tmp_path / "sweep").exists()


def test_a_parameter_no_notebook_takes_stops_before_anything_runs(tmp_path):
    with pytest.raises(ql.QuarkError, match=r"'num_quantile': not a parameter of 01_quantile_distributions.ipynb "
                                            r"\(they take: .*num_quantiles"):
        run_notebooks(tmp_path / "run", {"num_quantile": 3}, notebooks=[NOTEBOOKS[0]], progress=False)
    with pytest.raises(ql.QuarkError, match=r"'ks': not a parameter of 02_training_iterations.ipynb"):
        ql.notebooks.sweep(tmp_path / "sweep", {"ks": [[2], [3]]}, notebooks=[NOTEBOOKS[1]], progress=False)
    assert not (tmp_path / "run").exists() and not (tmp_path / "sweep").exists()


def test_a_failing_notebook_names_the_cell_and_exits_non_zero(world, tmp_path):
    with pytest.raises(ql.QuarkError, match=r"01_quantile_distributions.ipynb failed in cell .*does not exist"):
        run_notebooks(tmp_path, {"dataset": str(tmp_path / "missing.jsonl")}, progress=False)
    proc = subprocess.run([sys.executable, "-m", "quarklab.cli", "notebooks", "run", "--run-dir", str(tmp_path),
                           "-p", "dataset", str(tmp_path / "missing.jsonl"), "--only", NOTEBOOKS[0]],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and "failed in cell" in proc.stderr and "Traceback" not in proc.stderr


def test_sweep_runs_the_grid_and_writes_one_summary(world, tmp_path):
    """``--set NAME=VALUE`` holds a parameter fixed; ``--set kl_coef=0.1``, a config field no notebook declares,
    reaches notebook 02's extra_config: the runs train with KL 0.1."""
    args = [sys.executable, "-m", "quarklab.cli", "notebooks", "sweep", "-p", "quantile_scope", "local", "global",
            "--out", str(tmp_path), "--only", NOTEBOOKS[1], "--cell-timeout", str(CELL_TIMEOUT), "--set", "kl_coef=0.1"]
    takes = notebook_parameters(notebooks_dir() / NOTEBOOKS[1])
    for name, value in SMALL.items():
        assert name in takes
        args += ["--set", f"{name}={json.dumps(value)}"]
    proc = subprocess.run(args, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    summary = pd.read_csv(tmp_path / "summary.csv")
    assert summary["quantile_scope"].tolist() == ["local", "global"]
    assert summary[["sft_reward", "token0_reward", "token2_reward"]].notna().all().all()
    for run_dir in summary["run_dir"]:
        config = json.loads((Path(run_dir) / "config.json").read_text())
        assert config["quantile_scope"] == Path(run_dir).name.split("=")[1]
        assert config["kl_coef"] == 0.1 and config["eval_prompts"] == SMALL["extra_config"]["eval_prompts"]


def test_a_cell_past_its_timeout_stops_the_run_with_one_error(tmp_path):
    book = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("import time\ntime.sleep(60)")], metadata=KERNEL)
    (tmp_path / "src").mkdir()
    nbformat.write(book, tmp_path / "src" / "slow.ipynb")
    with pytest.raises(ql.QuarkError, match=r"slow.ipynb: a cell ran past cell_timeout=2"):
        run_notebooks(tmp_path / "run", notebooks=["slow.ipynb"], source_dir=tmp_path / "src", progress=False,
                      cell_timeout=2)
    assert (tmp_path / "run" / "slow.ipynb").exists()  # the partly executed notebook stays


# ------------------------------------------------------------------ a run config file for the notebooks

def test_a_run_config_file_sets_the_notebooks_parameters_and_a_parameter_given_wins(world, tmp_path):
    """``-p config run.yaml`` (the file that quarklab train --config reads) sets num_quantiles 3, seed 2 and lr in
    notebooks 01 and 02: 01 draws K = 3 quantiles, 02's run config holds all three (lr: a field no notebook
    declares, from the file) beside the parameters given (samples_per_prompt 6) and --set kl_coef=0.1 (to
    extra_config). ``quarklab notebooks run --config run.yaml --set num_quantiles=4``: the parameter wins."""
    (tmp_path / "run.yaml").write_text("num_quantiles: 3\nseed: 2\nlr: 5e-4\n")
    small_01 = {"num_prompts": 4, "samples_per_prompt": 6, "max_new_tokens": 24, "ks": [2, 3]}
    run = tmp_path / "run"
    run_notebooks(run, {**small_01, **{k: v for k, v in SMALL.items() if k != "num_quantiles"}, "kl_coef": 0.1,
                        "config": str(tmp_path / "run.yaml")}, notebooks=NOTEBOOKS[:2], progress=False,
                  cell_timeout=CELL_TIMEOUT)
    recorded = ql.notebooks.results(run)
    assert len(recorded["01_quantile_distributions"]["quantile_mean_reward"]) == 3
    config = json.loads((run / "config.json").read_text())
    assert {k: config[k] for k in ("num_quantiles", "seed", "lr", "samples_per_prompt", "kl_coef", "eval_prompts")} \
        == {"num_quantiles": 3, "seed": 2, "lr": 5e-4, "samples_per_prompt": 6, "kl_coef": 0.1, "eval_prompts": 6}

    args = [sys.executable, "-m", "quarklab.cli", "notebooks", "run", "--run-dir", str(tmp_path / "given"),
            "--config", str(tmp_path / "run.yaml"), "--only", NOTEBOOKS[0], "--set", "num_quantiles=4"]
    for name, value in small_01.items():
        args += ["-p", name, json.dumps(value)]
    proc = subprocess.run(args, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert len(ql.notebooks.results(tmp_path / "given")["01_quantile_distributions"]["quantile_mean_reward"]) == 4


def test_a_bad_run_config_file_is_one_error_naming_the_file_and_the_field_before_anything_runs(tmp_path):
    for text, field in (("num_quantile: 3\n", r"unknown field 'num_quantile' \(did you mean 'num_quantiles'\?\)"),
                        ("num_quantiles: 0\n", r"num_quantiles must be an integer >= 1, got 0")):
        (tmp_path / "bad.yaml").write_text(text)
        path = re.escape(str(tmp_path / "bad.yaml"))
        with pytest.raises(ql.QuarkError, match=rf"^(config file ')?{path}'?: {field}"):
            run_notebooks(tmp_path / "run", {"config": str(tmp_path / "bad.yaml")}, progress=False)
        assert not (tmp_path / "run").exists()
