"""The notebooks' side of quarklab: what their cells call, their parameters, and running them headless.

::

    nb = ql.notebooks.setup("02_training_iterations", run_dir="runs/demo", policy="tiny-tldr", seed=0)
    ql.notebooks.run_notebooks("runs/demo", {"num_quantiles": 3})       # all five, with papermill
    ql.notebooks.sweep("runs/sweep", {"quantile_scope": ["local", "global"]})

:mod:`.cells` (``setup`` and what a notebook records and shows), :mod:`.parameters` (the shared names,
checks, command-line values, a notebook's declared parameters), :mod:`.runner` (papermill: run, sweep).
"""

from .cells import (RUN_DIR_LISTS, Notebook, example_completions, policy_source, prepare, record, results,
                    run_summary, setup, tldr_only)
from .parameters import (SHARED_PARAMETERS, check_parameters, declared_defaults, notebook_parameters, notebooks_dir,
                         parse_value)
from .runner import KERNEL_ENV, NOTEBOOKS, run_notebooks, sweep

__all__ = ["KERNEL_ENV", "NOTEBOOKS", "RUN_DIR_LISTS", "SHARED_PARAMETERS", "Notebook", "check_parameters",
           "declared_defaults", "example_completions", "notebook_parameters", "notebooks_dir", "parse_value",
           "policy_source", "prepare", "record", "results", "run_notebooks", "run_summary", "setup", "sweep",
           "tldr_only"]
