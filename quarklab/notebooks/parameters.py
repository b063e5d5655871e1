"""Notebook parameters: the names the notebooks share, checking values, reading them from a command line,
and reading which parameters a notebook declares.

Each notebook declares only the parameters it uses, in its ``parameters`` cell (papermill's convention:
``name: type = default  # meaning``). A name in :data:`SHARED_PARAMETERS` means the same in every notebook
that declares it, so ``quarklab notebooks run -p num_quantiles 3`` reaches each notebook that takes
``num_quantiles`` and no other.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from ..errors import QuarkError

# The parameters that describe a run, and mean the same wherever a notebook declares them. A run or sweep
# accepts them whichever notebooks it runs (a notebook that does not use one does not declare it).
SHARED_PARAMETERS = ["run_dir", "task", "policy", "reference", "reward", "dataset", "num_quantiles",
                     "quantile_scope", "seed", "device"]


def check_parameters(**parameters: Any) -> None:
    """Check notebook parameters before anything loads: one QuarkError naming the first bad one.

    ``run_dir`` must be a path; a parameter named like a :class:`~quarklab.QuarkConfig` field
    (num_quantiles, quantile_scope, seed, device, policy, ..., samples_per_prompt, top_p) must suit that
    field's type, choices and range.
    """
    from ..config import check_field, field_specs

    for name, value in parameters.items():
        if name == "run_dir":
            if not isinstance(value, (str, os.PathLike)) or not str(value).strip():
                raise QuarkError(f"notebook parameter: run_dir must be a folder path, got {value!r}")
        elif name in field_specs():
            check_field(name, value, where="notebook parameter")
        else:
            raise QuarkError(f"check_parameters: {name!r} is neither run_dir nor a QuarkConfig field")


def parse_value(raw: str, name: str | None = None, where: str = "-p") -> Any:
    """A command-line parameter value. For a parameter named like a QuarkConfig field, read by the field's
    type and checked (:func:`quarklab.config.parse_field`); otherwise JSON when it parses (numbers, lists,
    null), else the text."""
    from ..config import field_specs, parse_field

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


def declared_defaults(path: str | os.PathLike) -> dict[str, Any]:
    """The default each parameter of a notebook declares in its ``parameters`` cell, as a Python value (one whose
    default is not a literal is left out)."""
    import ast

    import papermill as pm

    defaults = {}
    for name, declared in pm.inspect_notebook(str(path)).items():
        try:
            defaults[name] = ast.literal_eval(declared["default"])
        except (ValueError, SyntaxError):
            pass
    return defaults


def notebooks_dir() -> Path:
    """The project's ``notebooks/`` folder (beside the package in a source checkout)."""
    folder = Path(__file__).resolve().parents[2] / "notebooks"
    if not folder.is_dir():
        raise QuarkError(f"no notebooks folder at {folder}: the notebooks ship with a source checkout of quarklab; "
                         "run from one, or call quarklab.notebooks.run_notebooks(..., source_dir=DIR)")
    return folder
