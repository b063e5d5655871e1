"""The five notebooks: committed clean, each declaring the parameters it uses and setting up in one call, a note
before each figure, and executed for real by papermill."""

from __future__ import annotations

import ast
import json
import logging
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
from quarklab.notebooks import (NOTEBOOKS, RUN_DIR_LISTS, SHARED_PARAMETERS, notebook_parameters, notebooks_dir,
                                results, run_notebooks)
from tables import project_folder

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


RESOLVED = {"run_dir", "policy", "reference", "reward", "dataset", *RUN_DIR_LISTS}  # read from nb after setup


def _setup_call(cell, tree: ast.AST | None = None) -> ast.Call | None:
    calls = [n for n in ast.walk(tree or ast.parse(cell.source)) if isinstance(n, ast.Call)
             and ast.unparse(n.func) == "ql.notebooks.setup"]
    assert len(calls) <= 1
    return calls[0] if calls else None


def _code(book) -> list:
    return [c for c in book.cells if c.cell_type == "code" and "parameters" not in c.metadata.get("tags", [])]


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_is_clean_thin_and_declares_only_what_it_uses(name):
    book, params = _parameters_cell(notebooks_dir() / name)
    assert len(params) == 1
    assert book.cells[0].cell_type == "markdown" and "Try" in book.cells[0].source
    for cell in book.cells:
        if cell.cell_type == "code":
            assert not cell.outputs and cell.execution_count is None
            if "parameters" not in cell.metadata.get("tags", []):
                assert len(cell.source.splitlines()) <= 12  # thin: logic lives in the library
    assigned = _assigned(params[0].source)
    assert "run_dir" in assigned and "unused" not in params[0].source
    assert all(assigned.values()), assigned  # every parameter is type-annotated
    for line in params[0].source.splitlines():  # every knob has a comment
        if line and not line.startswith((" ", "#", "]", "}")) and "=" in line:
            assert "#" in line, line
    used = set()  # names read outside the setup call, and nb.<name>
    config_built = any("nb.config(" in c.source for c in _code(book))
    for cell in _code(book):
        tree = ast.parse(cell.source)
        call = _setup_call(cell, tree)
        if call is not None:  # run_dir: where nb.record writes; config: setup reads the file; nb.config: built
            used |= {"run_dir", "config"} | {k.arg for k in call.keywords if config_built and k.arg in field_specs()}
        given = {id(n) for k in (call.keywords if call else []) for n in ast.walk(k.value)}
        for node in ast.walk(tree):
            if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Load) and id(node) not in given:
                assert node.id not in RESOLVED, f"{name} reads {node.id} as given, not as setup resolved it: nb.{node.id}"
                used.add(node.id)
            elif isinstance(node, ast.Attribute) and ast.unparse(node.value) == "nb":
                used.add(node.attr)
    assert set(assigned) <= used, f"{name} declares parameters it does not use: {set(assigned) - used}"


def test_a_shared_parameter_is_declared_alike_wherever_it_is_declared():
    annotations: dict[str, set] = {}
    for name in NOTEBOOKS:
        for param, annotation in _assigned(_parameters_cell(notebooks_dir() / name)[1][0].source).items():
            if param in SHARED_PARAMETERS:
                annotations.setdefault(param, set()).add(annotation)
    assert set(annotations) == set(SHARED_PARAMETERS)  # each is some notebook's
    assert all(len(a) == 1 for a in annotations.values()), annotations


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_a_notebook_imports_quarklab_once_and_carries_no_plumbing(name):
    sources = [c.source for c in _code(nbformat.read(notebooks_dir() / name, as_version=4))]
    assert sum(s.count("import quarklab") for s in sources) == 1 and "import quarklab as ql\n" in sources[0]
    for plumbing in ("ql.runs.", "prepare(", "locate(", "resolve_path(", "check_parameters(", "ql.notebooks.record("):
        assert not [s for s in sources if plumbing in s], (name, plumbing)


SHOWN = ("save_figure(", "comparison_html(", ".widget")  # the cells that draw a figure, a table of completions, a widget


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_every_figure_has_a_note_on_what_to_look_for_and_what_the_tiny_world_shows(name):
    book = nbformat.read(notebooks_dir() / name, as_version=4)
    shown = [i for i, c in enumerate(book.cells) if c.cell_type == "code" and any(s in c.source for s in SHOWN)]
    assert shown
    for i in shown:
        note = book.cells[i - 1]
        assert note.cell_type == "markdown" and "*Look for*" in note.source, (name, book.cells[i].source)
        if ".widget" not in book.cells[i].source:  # a figure or a table: what the tiny world can and cannot show
            assert "*On the tiny world*" in note.source, (name, note.source)


CELL_TIMEOUT = 300  # seconds; the slowest cell here (training in 02) takes well under a minute


class _Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record):
        self.messages.append(record.getMessage())


@pytest.fixture(scope="module")
def executed(world, tmp_path_factory):
    """The five notebooks executed by papermill; also papermill's warnings while they ran."""
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


def test_all_five_notebooks_run_headless_and_record_their_results(executed):
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
    assert t["iterations"] == 1 and set(t["token_reward"]) == {"token 0", "token 1", "token 2", "no token"}
    c = got["03_compare_tokens"]
    assert set(c["mean_by_column"]) == {"token 0", "token 1", "token 2", "reference"}
    assert c["policy"].endswith("checkpoints/iter_001")
    assert got["04_tradeoffs"]["points"] == 1 + 4 and got["04_tradeoffs"]["quoted"] == 5
    w = got["05_win_rates"]  # token 0 after iteration 1 against the reference, on the 6 eval prompts, RM judge
    assert (w["system_a"], w["system_b"], w["judge"]) == ("demo-it1-token0", "demo-reference", "rm:tiny-tldr")
    assert w["prompts"] == 6 == w["wins"] + w["losses"] + w["ties"] + w["malformed"] and w["malformed"] == 0
    assert w["ci_low"] <= w["win_rate"] <= w["ci_high"] and w["quoted"] == 4  # the ALT card's four win rates
    figures = sorted(p.name for p in (run_dir / "figures").glob("*.png"))
    assert figures == ["01_effect_of_k_and_n.png", "01_quantiles_global_vs_local.png", "01_reward_distribution.png",
                       "02_iterations.png", "04_tradeoffs.png", "05_win_rates.png"]
    assert all((run_dir / "figures" / f).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for f in figures)
    assert "token 0" in (run_dir / "03_compare_tokens.html").read_text()
    card = pd.read_csv(run_dir / "04_model_card.csv")
    assert list(card.columns[:4]) == ["model", "RM", "PPL", "Avg. len"] and (card["source"] == "quoted").sum() == 5
    protocol = got["04_tradeoffs"]  # the reference and iteration 1 under the card's protocol, on 100 test prompts
    assert protocol["protocol"] == "alt-card" and [r["token"] for r in protocol["protocol_rows"]] == \
        ["none", "_QUANTILE_TOKEN_0_"] and {r["prompts"] for r in protocol["protocol_rows"]} == {100}
    shown = "".join(o.get("data", {}).get("text/html", "") for c in nbformat.read(paths[3], as_version=4).cells
                    if c.cell_type == "code" for o in c.get("outputs", []))
    assert "Measured here under the alt-card protocol" in shown and "Quoted, not measured: the ALT-Quark model card" in shown
    assert shown.index("Measured here under the alt-card protocol") < shown.rindex("Quoted, not measured")
    assert pd.read_csv(run_dir / "04_protocol_card.csv")["prompts"].tolist() == [100, 100]


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_the_cell_after_the_parameters_sets_the_notebook_up(name):
    book, params = _parameters_cell(notebooks_dir() / name)
    cell = book.cells[book.cells.index(params[0]) + 1]
    call = _setup_call(cell)
    assert call is not None and cell.cell_type == "code"
    assert [ast.literal_eval(a) for a in call.args] == [Path(name).stem]  # its results: results/<name>.json
    assert all(ast.unparse(k.value) == k.arg for k in call.keywords)  # each parameter as declared
    setup_takes = set(field_specs()) | {"run_dir", "config", *RUN_DIR_LISTS}
    assert {k.arg for k in call.keywords} == set(_assigned(params[0].source)) & setup_takes  # every one it checks
    assert sum(_setup_call(c) is not None for c in _code(book)) == 1


def test_a_bad_parameter_stops_in_the_setup_cell_before_any_model_loads(tmp_path):
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
    assert "ql.notebooks.setup(" in cell.source and cell.execution_count == cell_number
    assert "papermill" in str(code[failed[0] - 1].metadata)  # right after the (injected) parameters
    assert all(c.execution_count is None and not c.outputs for c in code[failed[0] + 1:])  # nothing loaded
    assert not (tmp_path / "results").exists() and not (tmp_path / "figures").exists()


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


# ------------------------------------------------------------------ relative paths: from the project root

def test_notebook_03_opened_from_notebooks_folder_finds_the_projects_run(executed, tmp_path):
    """As JupyterLab runs it: the kernel in notebooks/, run_dir left at its default "runs/demo"."""
    import papermill as pm

    run_dir, _, _ = executed
    root = project_folder(tmp_path)
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


# ------------------------------------------------------------------ the continuation task

def test_all_five_notebooks_run_the_continuation_task_from_the_command_line(world, tmp_path):
    """``quarklab notebooks run -p task continuation``: the task's prompts, reward and judging prompt throughout;
    the ALT card's TL;DR rows, protocol and win rates left out with a note, not drawn beside this task's runs."""
    run_dir = tmp_path / "continuation"
    params = [a for k, v in {"task": "continuation", **SMALL}.items()
              for a in ("-p", k, v if isinstance(v, str) else json.dumps(v))]
    proc = subprocess.run([sys.executable, "-m", "quarklab.cli", "notebooks", "run", "--run-dir", str(run_dir),
                           *params, "--cell-timeout", str(CELL_TIMEOUT)], capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stderr[-3000:]
    paths = [run_dir / name for name in NOTEBOOKS]
    for path in paths:
        outputs = _outputs(path)
        assert not [o for _, o in outputs if o.get("output_type") == "error"], path.name
        for cell in nbformat.read(path, as_version=4).cells:
            if cell.cell_type == "code" and "save_figure(" in cell.source:
                assert [o for o in cell.outputs if o.get("data", {}).get("image/png", "").startswith("iVBORw0KGgo")]
    config = json.loads((run_dir / "config.json").read_text())
    assert (config["task"], config["reward"], config["dataset"]) == ("continuation", "repetition",
                                                                    "tiny-continuation")
    got = results(run_dir)
    assert got["01_quantile_distributions"]["num_samples"] == 4 * 6
    assert got["04_tradeoffs"]["quoted"] == 0 and got["04_tradeoffs"]["protocol"] is None
    w = got["05_win_rates"]
    assert w["judge"] == "rm:repetition" and w["prompts"] == 6 and w["quoted"] == 0
    said = "".join(t for path in paths[3:] for _, o in _outputs(path) for t in _texts(o))
    for name in ("quoted_rows", "quoted_win_rates"):
        assert f"task 'continuation': {name} is the ALT model card's (TL;DR)" in said
    assert "Quoted, not measured" not in said
    # what the notebooks show are the task's openings, as they are: no TL;DR layout added
    import html

    openings = ql.load_prompts("tiny-continuation", "test", limit=4)["prompt"]
    compared = (run_dir / "03_compare_tokens.html").read_text()
    assert all(html.escape(p) in compared for p in openings[:4]) and "SUBREDDIT" not in compared
    pairs = "".join(o.get("data", {}).get("text/html", "") for _, o in _outputs(paths[4]))
    assert html.escape(openings[0]) in pairs and "SUBREDDIT" not in pairs
