"""The four notebooks: committed clean, parametrized alike, and executed for real by papermill."""

from __future__ import annotations

import ast
import json
import logging
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pandas as pd
import pytest

import quarklab as ql
from quarklab.config import field_specs
from quarklab.notebooks import (NOTEBOOKS, SHARED_PARAMETERS, check_parameters, locate, notebook_parameters,
                                notebooks_dir, parse_value, prepare, project_root, resolve_path, results, run_notebooks)

SMALL = {"num_quantiles": 3, "num_prompts": 4, "samples_per_prompt": 6, "max_new_tokens": 24, "iterations": 1,
         "prompts_per_iteration": 6, "ks": [2, 3], "extra_config": {"eval_prompts": 6, "eval_max_new_tokens": 24, "max_new_tokens": 24}}


def _parameters_cell(path: Path):
    book = nbformat.read(path, as_version=4)
    cells = [c for c in book.cells if "parameters" in c.metadata.get("tags", [])]
    return book, cells


def _assigned(source: str) -> dict[str, str | None]:
    """The names a parameters cell assigns, each with its annotation (None where it has none)."""
    out = {}
    for node in ast.parse(source).body:
        if isinstance(node, ast.AnnAssign):
            out[node.target.id] = ast.unparse(node.annotation)
        elif isinstance(node, ast.Assign):
            out.update({t.id: None for t in node.targets})
    return out


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
    assigned = _assigned(params[0].source)
    assert set(SHARED_PARAMETERS) <= set(assigned)
    assert all(assigned.values()), assigned  # every parameter is type-annotated
    for line in params[0].source.splitlines():  # every knob has a comment
        if line and not line.startswith((" ", "#", "]", "}")) and "=" in line:
            assert "#" in line, line


CELL_TIMEOUT = 300  # seconds; the slowest cell here (training in 02) takes well under a minute


class _Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record):
        self.messages.append(record.getMessage())


@pytest.fixture(scope="module")
def executed(world, tmp_path_factory):
    """The four notebooks executed by papermill; also papermill's warnings while they ran."""
    run_dir = tmp_path_factory.mktemp("nb") / "demo"
    warnings = _Records()
    logging.getLogger("papermill").addHandler(warnings)
    try:
        try:
            paths = run_notebooks(run_dir, SMALL, progress=False, cell_timeout=CELL_TIMEOUT)
        except ql.QuarkError as exc:  # papermill/nbclient can, rarely, lose a kernel's reply and wait forever
            if "cell_timeout" not in str(exc):
                raise
            paths = run_notebooks(run_dir, SMALL, progress=False, cell_timeout=CELL_TIMEOUT)  # a cell error fails here
    finally:
        logging.getLogger("papermill").removeHandler(warnings)
    return run_dir, paths, warnings.messages


def test_all_four_notebooks_run_headless_and_record_their_results(executed):
    run_dir, paths, _ = executed
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
    w = got["05_win_rates"]  # token 0 after iteration 1 against the reference, on the 6 eval prompts, RM judge
    assert (w["system_a"], w["system_b"], w["judge"]) == ("demo-it1-token0", "demo-reference", "rm:tiny-tldr")
    assert w["prompts"] == 6 == w["wins"] + w["losses"] + w["ties"] + w["malformed"] and w["malformed"] == 0
    assert w["ci_low"] <= w["win_rate"] <= w["ci_high"] and w["quoted"] == 0
    figures = sorted(p.name for p in (run_dir / "figures").glob("*.png"))
    assert figures == ["01_effect_of_k_and_n.png", "01_quantiles_global_vs_local.png", "01_reward_distribution.png",
                       "02_iterations.png", "04_tradeoffs.png", "05_win_rates.png"]
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
    takes = notebook_parameters(notebooks_dir() / NOTEBOOKS[1])
    for name, value in SMALL.items():
        if name in takes:  # a parameter the notebook does not take is an error
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
    assigned = set(_assigned(params[0].source))
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


# ------------------------------------------------------------------ what a person sees in the executed notebooks

def _outputs(path: Path):
    """(cell, output) for every output of every code cell of an executed notebook."""
    book = nbformat.read(path, as_version=4)
    return [(c, o) for c in book.cells if c.cell_type == "code" for o in c.outputs]


def _texts(output) -> list[str]:
    if output.get("output_type") == "stream":
        return [output["text"]]
    return [output.get("data", {}).get("text/plain", "")]


def test_every_figure_is_drawn_inline_as_an_image(executed):
    run_dir, paths, _ = executed
    drawn = 0
    for path in paths:
        book = nbformat.read(path, as_version=4)
        for cell in book.cells:
            if cell.cell_type == "code" and "save_figure(" in cell.source:
                images = [o for o in cell.outputs if "image/png" in o.get("data", {})]
                assert len(images) == 1, (path.name, cell.source)
                assert images[0]["data"]["image/png"].startswith("iVBORw0KGgo")  # a base64 PNG
                assert images[0]["data"]["text/plain"].startswith("figure: ")  # and its title, not a repr
                drawn += 1
        for cell, output in _outputs(path):
            for text in _texts(output):
                assert not re.search(r"<(Quark)?Figure size [^>]*>", text), (path.name, cell.source, text)
    assert drawn == len(list((run_dir / "figures").glob("*.png")))


def test_the_last_cells_say_where_things_were_written_and_no_bare_path_is_shown(executed):
    run_dir, paths, _ = executed
    for path in paths:
        for cell, output in _outputs(path):
            for text in _texts(output):
                assert "PosixPath(" not in text and "WindowsPath(" not in text, (path.name, cell.source)
    for name in ("02_training_iterations.ipynb", "04_tradeoffs.ipynb"):
        last = [c for c in nbformat.read(run_dir / name, as_version=4).cells if c.cell_type == "code"][-1]
        said = "".join(o["text"] for o in last.outputs if o.get("output_type") == "stream" and o["name"] == "stdout")
        assert said.startswith(f"Figures in {run_dir / 'figures'}") and said.rstrip().endswith("."), said


def test_progress_is_text_that_survives_a_reopen_and_reads_as_one_line(executed):
    run_dir, paths, _ = executed
    for path in paths:
        for cell, output in _outputs(path):
            if "application/vnd.jupyter.widget-view+json" in output.get("data", {}):  # only the two widgets
                assert cell.source.rstrip().endswith(("explorer.widget", "comparer.widget")), cell.source
    sampling = [c for c, _ in _outputs(run_dir / NOTEBOOKS[0]) if "ql.sample(" in c.source][0]
    errors = "".join(o["text"] for o in sampling.outputs if o.get("output_type") == "stream" and o["name"] == "stderr")
    bars = [line for line in errors.splitlines() if line.startswith("sampling:")]
    assert len(bars) == 1 and "100%" in bars[0] and "\r" not in errors, errors


def test_papermill_got_no_parameter_it_calls_unknown(executed):
    assert executed[2] is not None
    assert not [m for m in executed[2] if "unknown parameter" in m.lower()], executed[2]


# ------------------------------------------------------------------ papermill parameters

PAPERMILL = Path(sys.executable).with_name("papermill")


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_papermill_help_lists_every_parameter_with_its_type(name):
    path = notebooks_dir() / name
    _, params = _parameters_cell(path)
    assigned = _assigned(params[0].source)
    proc = subprocess.run([str(PAPERMILL), "--help-notebook", str(path)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "Unknown type" not in proc.stdout and "Unable to parse" not in proc.stderr, proc.stdout + proc.stderr
    listed = dict(re.findall(r"^  (\w+): (.+?) \(default ", proc.stdout, flags=re.M))
    assert listed == assigned  # every parameter, with the cell's own annotation as its type
    assert notebook_parameters(path) == list(assigned)
    lines = proc.stdout.splitlines()
    for i, line in enumerate(lines):  # and each with its comment as help, beside it or on the next line
        if re.match(r"^  \w+: ", line):
            below = lines[i + 1].strip() if i + 1 < len(lines) and lines[i + 1].startswith(" " * 34) else ""
            assert len(below or line[34:].strip()) > 10, line  # papermill puts help at column 34


def test_a_parameter_no_notebook_takes_stops_before_anything_runs(tmp_path):
    with pytest.raises(ql.QuarkError, match=r"'num_quantile': not a parameter of 01_quantile_distributions.ipynb "
                                            r"\(they take: .*num_quantiles"):
        run_notebooks(tmp_path / "run", {"num_quantile": 3}, notebooks=[NOTEBOOKS[0]], progress=False)
    with pytest.raises(ql.QuarkError, match=r"'ks': not a parameter of 02_training_iterations.ipynb"):
        ql.notebooks.sweep(tmp_path / "sweep", {"ks": [[2], [3]]}, notebooks=[NOTEBOOKS[1]], progress=False)
    assert not (tmp_path / "run").exists() and not (tmp_path / "sweep").exists()


# ------------------------------------------------------------------ relative paths: from the project root

def _project(tmp_path: Path) -> Path:
    root = tmp_path / "proj"
    (root / "notebooks").mkdir(parents=True)
    (root / "pyproject.toml").write_text("[project]\nname = 'x'\n")
    return root


def test_relative_paths_mean_the_project_root_from_any_folder_inside_it(tmp_path, monkeypatch):
    root = _project(tmp_path)
    (root / "data").mkdir()
    (root / "data" / "posts.jsonl").write_text('{"prompt": "p"}\n')
    (root / "runs" / "old" / "checkpoints").mkdir(parents=True)
    for where in (root, root / "notebooks", root / "runs" / "old" / "checkpoints"):
        monkeypatch.chdir(where)
        assert project_root() == root.resolve()
        assert resolve_path("runs/demo") == root.resolve() / "runs" / "demo"
        assert resolve_path(tmp_path / "elsewhere") == tmp_path / "elsewhere"  # absolute: as given
        assert locate("data/posts.jsonl") == str(root.resolve() / "data" / "posts.jsonl")
        assert locate("runs/old") == str(root.resolve() / "runs" / "old")
        assert locate("data/missing.csv") == str(root.resolve() / "data" / "missing.csv")  # named where looked for
        for as_given in ("tiny-tldr", "auto", "EleutherAI/gpt-j-6b", None):  # names and hub ids stay
            assert locate(as_given) == as_given
    monkeypatch.chdir(root / "notebooks")
    assert prepare("runs/new") == root.resolve() / "runs" / "new" and (root / "runs" / "new").is_dir()
    assert not (root / "notebooks" / "runs").exists()
    with pytest.raises(ql.QuarkError, match=re.escape(f"'runs/gone' resolves to {root.resolve() / 'runs' / 'gone'}, "
                                                      "which does not exist")):
        resolve_path("runs/gone", must_exist=True)
    with pytest.raises(ql.QuarkError, match=re.escape(f"of {str(root.resolve() / 'runs' / 'new')!r}, and it has none")):
        ql.notebooks.policy_source("auto", "runs/new")
    outside = tmp_path / "outside"
    outside.mkdir()
    monkeypatch.chdir(outside)
    assert project_root() == outside.resolve() and resolve_path("runs/demo") == outside.resolve() / "runs" / "demo"


def test_notebook_03_opened_from_notebooks_folder_finds_the_projects_run(executed, tmp_path):
    """As JupyterLab runs it: the kernel in notebooks/, run_dir left at its default "runs/demo"."""
    import papermill as pm

    run_dir, _, _ = executed
    root = _project(tmp_path)
    shutil.copytree(run_dir, root / "runs" / "demo")
    shutil.copy(notebooks_dir() / NOTEBOOKS[2], root / "notebooks")
    out = tmp_path / "out.ipynb"
    pm.execute_notebook(str(root / "notebooks" / NOTEBOOKS[2]), str(out), cwd=str(root / "notebooks"),
                        parameters={"num_quantiles": 3, "num_prompts": 1, "max_new_tokens": 8},
                        kernel_name="python3", progress_bar=False, execution_timeout=CELL_TIMEOUT)
    got = json.loads((root / "runs" / "demo" / "results" / "03_compare_tokens.json").read_text())
    assert got["policy"] == str(root.resolve() / "runs" / "demo" / "checkpoints" / "iter_001") and got["prompts"] == 1
    assert not (root / "notebooks" / "runs").exists()


def test_a_figure_shows_itself_as_its_png_and_is_freed_like_any_object(tmp_path):
    import gc
    import weakref

    from IPython.core.formatters import DisplayFormatter
    from matplotlib import _pylab_helpers
    from PIL import Image

    managers = _pylab_helpers.Gcf.get_num_fig_managers()
    fig = ql.figures.new_figure(4, 3)
    ax = fig.add_subplot()
    ax.plot([0, 1], [1, 0])
    ax.set_title("reward\nby token")
    data, _ = DisplayFormatter().format(fig)
    assert set(data) == {"image/png", "text/plain"} and data["text/plain"] == "figure: reward by token"
    saved = ql.figures.save_figure(fig, tmp_path, "f")
    assert data["image/png"] == saved.read_bytes()  # what Jupyter shows is what the run dir keeps
    with Image.open(saved) as image:
        assert image.size[0] > 300
    fig.suptitle("Both")
    assert DisplayFormatter().format(fig)[0]["text/plain"] == "figure: Both" and repr(fig) == "<QuarkFigure 'Both'>"
    assert _pylab_helpers.Gcf.get_num_fig_managers() == managers  # nothing registered with pyplot
    ref = weakref.ref(fig)
    del fig, ax
    gc.collect()
    assert ref() is None  # nothing else holds it
