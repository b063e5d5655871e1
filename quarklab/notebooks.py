"""Running the notebooks headless with papermill, one at a time or as a parameter sweep,
and the small helpers the notebooks share (run-dir set-up, recorded results, example tables).

A run directory is the record of a run: the Quark run itself (config.json, pools,
checkpoints, metrics.jsonl), the executed notebooks, ``figures/*.png`` and
``results/*.json`` (what each notebook measured, for tests and sweeps).

Relative paths in notebook parameters are read from the project root (:mod:`quarklab.paths`).
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
from pathlib import Path
from typing import Any

import pandas as pd

from .errors import QuarkError
from .paths import locate, project_root, resolve_path
from .files import atomic_write_json, atomic_write_text
from .runs import eval_files, iteration_of, latest_checkpoint, read_metrics

NOTEBOOKS = ["01_quantile_distributions.ipynb", "02_training_iterations.ipynb", "03_compare_tokens.ipynb",
             "04_tradeoffs.ipynb", "05_win_rates.ipynb"]
SHARED_PARAMETERS = ["run_dir", "policy", "reference", "reward", "dataset", "num_quantiles", "quantile_scope",
                     "seed", "device"]


def notebooks_dir() -> Path:
    """The project's ``notebooks/`` folder (beside the package in a source checkout)."""
    folder = Path(__file__).resolve().parents[1] / "notebooks"
    if not folder.is_dir():
        raise QuarkError(f"no notebooks folder at {folder}: the notebooks ship with a source checkout of quarklab; "
                         "run from one, or call quarklab.notebooks.run_notebooks(..., source_dir=DIR)")
    return folder


# ------------------------------------------------------------------ helpers the notebooks call

def check_parameters(**parameters: Any) -> None:
    """Check notebook parameters before anything loads: one QuarkError naming the first bad one.

    ``run_dir`` must be a path; a parameter named like a :class:`~quarklab.QuarkConfig` field
    (num_quantiles, quantile_scope, seed, device, policy, ..., samples_per_prompt, top_p) must suit that
    field's type, choices and range.
    """
    from .config import check_field, field_specs

    for name, value in parameters.items():
        if name == "run_dir":
            if not isinstance(value, (str, os.PathLike)) or not str(value).strip():
                raise QuarkError(f"notebook parameter: run_dir must be a folder path, got {value!r}")
        elif name in field_specs():
            check_field(name, value, where="notebook parameter")
        else:
            raise QuarkError(f"check_parameters: {name!r} is neither run_dir nor a QuarkConfig field")


def prepare(run_dir: str | os.PathLike) -> Path:
    """The run directory as an absolute Path (relative: under :func:`project_root`), created if missing
    (figures and results go inside)."""
    path = resolve_path(run_dir)
    path.mkdir(parents=True, exist_ok=True)
    return path


def record(run_dir: str | os.PathLike, name: str, result: dict[str, Any]) -> Path:
    """Write what a notebook measured to ``run_dir/results/<name>.json`` (atomically)."""
    path = Path(run_dir) / "results" / f"{name}.json"
    atomic_write_json(path, json.loads(pd.Series(result).to_json()))
    return path


def results(run_dir: str | os.PathLike) -> dict[str, dict]:
    """Every recorded notebook result of a run directory, by notebook name."""
    return {p.stem: json.loads(p.read_text()) for p in sorted(Path(run_dir, "results").glob("*.json"))}


def policy_source(policy: str, run_dir: str | os.PathLike) -> str:
    """``"auto"``: the latest checkpoint of the run in ``run_dir``; anything else as :func:`locate` reads it
    (``"tiny-tldr"`` and hub ids as given: :func:`quarklab.load_policy` takes them)."""
    if policy != "auto":
        return locate(policy)
    run_dir = resolve_path(run_dir)
    latest = latest_checkpoint(run_dir)
    if latest is None:
        raise QuarkError(f"policy='auto' takes the latest checkpoint of {str(run_dir)!r}, and it has none: run "
                         "02_training_iterations first, or set policy to a Quark checkpoint folder or hub id")
    return str(latest[1])


def example_completions(run_dir: str | os.PathLike, *, prompts: int = 2, tokens=(0, None)) -> pd.DataFrame:
    """A few greedy evaluation completions per iteration, side by side by token (from ``eval/``)."""
    frames = []
    for path in eval_files(run_dir):
        ev = pd.read_parquet(path)
        ev = ev[(ev["mode"] == "greedy") & ev["prompt_id"].isin(sorted(ev["prompt_id"].unique())[:prompts])]
        ev = ev.assign(iteration=iteration_of(path),
                       column=ev["token"].map(lambda t: "no token" if pd.isna(t) else f"token {int(t)}"))
        wanted = {"no token" if t is None else f"token {t}" for t in tokens}
        frames.append(ev[ev["column"].isin(wanted)])
    if not frames:
        return pd.DataFrame()
    table = pd.concat(frames).pivot_table(index=["iteration", "prompt_id"], columns="column", values="completion",
                                          aggfunc="first")
    return table.reset_index()


# ------------------------------------------------------------------ papermill

def parse_value(raw: str, name: str | None = None, where: str = "-p") -> Any:
    """A command-line parameter value. For a parameter named like a QuarkConfig field, read by the field's
    type and checked (:func:`quarklab.config.parse_field`); otherwise JSON when it parses (numbers, lists,
    null), else the text."""
    from .config import field_specs, parse_field

    if name in field_specs():
        return parse_field(name, raw, where=where)
    try:
        return json.loads(raw)
    except json.JSONDecodeError:
        return raw


def notebook_parameters(path: str | os.PathLike) -> list[str]:
    """The parameters of a notebook, as papermill reads its ``parameters`` cell (``papermill --help-notebook``)."""
    import papermill as pm

    return list(pm.inspect_notebook(str(path)))


def _sources(notebooks: list[str] | None, source_dir: str | os.PathLike | None,
             parameters: dict[str, Any]) -> dict[Path, list[str]]:
    """Each notebook to run with the parameters it declares; one QuarkError for a missing notebook or for a
    parameter that none of them declares (papermill would warn "Passed unknown parameter" and ignore it)."""
    source = Path(source_dir) if source_dir else notebooks_dir()
    declared = {}
    for name in notebooks or NOTEBOOKS:
        src = source / name
        if not src.exists():
            raise QuarkError(f"notebook not found: {src}")
        declared[src] = notebook_parameters(src)
    known = {p for names in declared.values() for p in names}
    unknown = sorted(set(parameters) - {"run_dir"} - known)
    if unknown:
        listed = ", ".join(sorted(known))
        raise QuarkError(f"{', '.join(map(repr, unknown))}: not a parameter of "
                         f"{', '.join(p.name for p in declared)} (they take: {listed})")
    return declared


# Set for the kernels run_notebooks starts (unless already set): transformers' and huggingface_hub's own
# progress bars ("Loading weights", downloads) are ipywidgets in a kernel, and an executed notebook
# keeps only a widget's first state, a bar stuck at 0%.
KERNEL_ENV = {"HF_HUB_DISABLE_PROGRESS_BARS": "1"}


@contextlib.contextmanager
def _kernel_env():
    added = {k: v for k, v in KERNEL_ENV.items() if k not in os.environ}
    os.environ.update(added)
    try:
        yield
    finally:
        for k in added:
            os.environ.pop(k, None)


def run_notebooks(run_dir: str | os.PathLike, parameters: dict[str, Any] | None = None, *,
                  notebooks: list[str] | None = None, source_dir: str | os.PathLike | None = None,
                  progress: bool = True, cell_timeout: float | None = None) -> list[Path]:
    """Execute the notebooks in order into ``run_dir`` with papermill; return the executed paths.

    ``run_dir`` and relative paths among the parameters are read from :func:`project_root` (the
    kernels work there, as a notebook opened in JupyterLab reads them). Each notebook gets the
    parameters its ``parameters`` cell declares; one that no notebook declares is a QuarkError before
    anything runs. A failing cell stops the sequence with one :class:`QuarkError` naming the
    notebook, the cell and the error; the partly executed notebook stays in ``run_dir`` for
    inspection. ``cell_timeout`` (seconds, None = no limit: training cells may run for hours) stops a
    cell that runs longer, with the same kind of error. Progress bars printed by a cell are kept in
    the executed notebook as their last state (one line each); transformers' and the hub's widget bars
    are off in these kernels (:data:`KERNEL_ENV`).
    """
    params = dict(parameters or {})
    return _execute(_sources(notebooks, source_dir, params), run_dir, params, progress, cell_timeout)


def _execute(declared: dict[Path, list[str]], run_dir, params: dict[str, Any], progress: bool,
             cell_timeout: float | None) -> list[Path]:
    """Run each of :func:`_sources`' notebooks into ``run_dir`` with the parameters it declares."""
    import papermill as pm

    run_dir = prepare(run_dir)
    params = {**params, "run_dir": str(run_dir)}
    done = []
    for src, names in declared.items():
        out = run_dir / src.name
        try:
            with _kernel_env():
                pm.execute_notebook(str(src), str(out), parameters={k: v for k, v in params.items() if k in names},
                                    progress_bar=progress, cwd=str(project_root()), kernel_name="python3",
                                    execution_timeout=cell_timeout, coalesce_streams=True)
        except pm.PapermillExecutionError as exc:
            raise QuarkError(f"{src.name} failed in cell {exc.exec_count}: {exc.ename}: {exc.evalue} "
                             f"(the executed notebook is at {out})") from None
        except TimeoutError as exc:  # nbclient's CellTimeoutError
            raise QuarkError(f"{src.name}: a cell ran past cell_timeout={cell_timeout} s ({exc}); "
                             f"the partly executed notebook is at {out}") from None
        done.append(out)
    return done


def sweep(out_dir: str | os.PathLike, grid: dict[str, list[Any]], parameters: dict[str, Any] | None = None, *,
          notebooks: list[str] | None = None, progress: bool = True,
          cell_timeout: float | None = None) -> pd.DataFrame:
    """Run the notebooks once per combination of ``grid``, one run dir each, and write ``summary.csv``.

    Run dirs are named ``name=value,name=value`` under ``out_dir`` (relative: under :func:`project_root`);
    a combination whose notebooks all ran before (every executed notebook present) is not run again.
    """
    declared = _sources(notebooks, None, {**(parameters or {}), **grid})  # checked once, for every combination
    out_dir = prepare(out_dir)
    names = list(grid)
    rows = []
    for values in itertools.product(*(grid[n] for n in names)):
        combo = dict(zip(names, values))
        run_dir = out_dir / ",".join(f"{k}={v}" for k, v in combo.items())
        if not all((run_dir / src.name).exists() for src in declared) or not (run_dir / "results").exists():
            _execute(declared, run_dir, {**(parameters or {}), **combo}, progress, cell_timeout)
        rows.append({**combo, "run_dir": str(run_dir), **run_summary(run_dir)})
    table = pd.DataFrame(rows)
    atomic_write_text(out_dir / "summary.csv", table.to_csv(index=False))
    return table


def run_summary(run_dir: str | os.PathLike) -> dict[str, Any]:
    """The headline figures of one run dir: SFT and final per-token greedy reward, perplexity, length."""
    metrics = read_metrics(run_dir)
    if metrics.empty:
        return {}
    ev = metrics[(metrics["kind"] == "eval") & (metrics["mode"] == "greedy")]
    last = ev[ev["iteration"] == ev["iteration"].max()]
    out: dict[str, Any] = {"iterations": int(ev["iteration"].max())}
    sft = ev[ev["iteration"] == 0]
    if len(sft):
        out.update(sft_reward=float(sft["reward"].iloc[0]), sft_perplexity=float(sft["perplexity"].iloc[0]),
                   sft_length=float(sft["length"].iloc[0]))
    for _, row in last.iterrows():
        key = "none" if str(row["token"]) == "none" else f"token{row['token']}"
        out.update({f"{key}_reward": row["reward"], f"{key}_perplexity": row["perplexity"],
                    f"{key}_length": row["length"]})
    if "order_spearman" in last and last["order_spearman"].notna().any():
        out["order_spearman"] = float(last["order_spearman"].dropna().iloc[0])
        out["controllability"] = float(last["controllability"].dropna().iloc[0])
    return out
