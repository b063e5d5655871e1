"""Running the notebooks headless with papermill, one at a time or as a parameter sweep.

Each notebook runs in a fresh kernel working in the project root, with the parameters it declares
(:func:`quarklab.notebooks.notebook_parameters`); the executed notebook, its figures and results land in the
run directory. Relative paths (``run_dir``, ``out_dir`` and those among the parameters) are read from the
project root (:mod:`quarklab.paths`).
"""

from __future__ import annotations

import contextlib
import itertools
import os
from pathlib import Path
from typing import Any

import pandas as pd

from ..errors import QuarkError
from ..paths import project_root, resolve_path
from ..files import atomic_write_text
from .cells import prepare, run_summary
from .parameters import SHARED_PARAMETERS, check_parameters, notebook_parameters, notebooks_dir

NOTEBOOKS = ["01_quantile_distributions.ipynb", "02_training_iterations.ipynb", "03_compare_tokens.ipynb",
             "04_tradeoffs.ipynb", "05_win_rates.ipynb"]


def _sources(notebooks: list[str] | None, source_dir: str | os.PathLike | None,
             parameters: dict[str, Any], grid: dict[str, list[Any]] | None = None) -> dict[Path, list[str]]:
    """Each notebook to run with the parameters it declares; one QuarkError for a missing notebook, for a
    parameter that none of them declares, is not shared and is not a QuarkConfig field that goes to
    ``extra_config`` (:func:`_routed`; papermill would warn "Passed unknown parameter" and ignore it), for a bad
    value of a shared one or such a field (no notebook would check it), or for a bad ``config`` file."""
    from ..config import field_specs, read_config_file

    source = Path(source_dir) if source_dir else notebooks_dir()
    declared = {}
    for name in notebooks or NOTEBOOKS:
        src = source / name
        if not src.exists():
            raise QuarkError(f"notebook not found: {src}")
        declared[src] = notebook_parameters(src)
    known = {p for names in declared.values() for p in names}
    values = {**{k: [v] for k, v in parameters.items()}, **(grid or {})}  # each name's value(s)
    routed = set(field_specs()) - known - set(SHARED_PARAMETERS) if "extra_config" in known else set()
    unknown = sorted(set(values) - set(SHARED_PARAMETERS) - known - routed)
    if unknown:
        listed = ", ".join(sorted(known))
        fields = ("any other QuarkConfig field goes to extra_config" if routed else
                  "a QuarkConfig field goes to 02_training_iterations's extra_config, not among these")
        raise QuarkError(f"{', '.join(map(repr, unknown))}: not a parameter of "
                         f"{', '.join(p.name for p in declared)} (they take: {listed}; {fields})")
    for name in sorted(set(values) & (set(SHARED_PARAMETERS) | routed) - known - {"run_dir"}):
        for value in values[name]:
            check_parameters(**{name: value})
    _routed({name: listed[0] for name, listed in values.items()}, known)  # set twice: an error, before any run
    for path in values.get("config", []):
        if path is not None:
            read_config_file(resolve_path(path))
    return declared


def _routed(params: dict[str, Any], known: set[str]) -> dict[str, Any]:
    """``params`` with each QuarkConfig field that no notebook declares (nor shares) moved into ``extra_config``
    (notebook 02's: the run's config), so ``--set kl_coef=0.1`` trains with KL 0.1."""
    from ..config import field_specs

    moved = {k: v for k, v in params.items() if k in field_specs() and k not in known | set(SHARED_PARAMETERS)}
    if not moved:
        return params
    extra = dict(params.get("extra_config") or {})
    both = sorted(set(moved) & set(extra))
    if both:
        raise QuarkError(f"{', '.join(map(repr, both))}: set both on its own and in extra_config; set it in one place")
    return {**{k: v for k, v in params.items() if k not in moved}, "extra_config": {**extra, **moved}}


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
    kernels work there, as a notebook opened in JupyterLab reads them). Each notebook gets only the
    parameters its ``parameters`` cell declares; a :data:`SHARED_PARAMETERS` name is accepted whichever
    notebooks run (checked here when none of them declares it); a QuarkConfig field that none of them declares
    goes into notebook 02's ``extra_config`` (``{"kl_coef": 0.1}`` trains with KL 0.1); any other name that
    none of them declares is a QuarkError before anything runs. ``config`` (a run config file, which every
    notebook declares) is read here first, so a bad file stops before any notebook runs. A failing cell stops
    the sequence with one :class:`QuarkError` naming the notebook, the cell and the error; the partly executed notebook stays in ``run_dir`` for
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
    params = {**_routed(params, {p for names in declared.values() for p in names}), "run_dir": str(run_dir)}
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
    declared = _sources(notebooks, None, parameters or {}, grid)  # checked once, for every combination
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
