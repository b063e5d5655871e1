"""What the notebooks' cells call: one :func:`setup` per notebook, then what it records and shows.

::

    nb = ql.notebooks.setup("01_quantile_distributions", run_dir=run_dir, policy=policy, num_quantiles=num_quantiles)
    model = ql.load_policy(nb.policy)                    # paths resolved, "auto" read from the run
    ...
    nb.record({"num_samples": len(samples)})             # run_dir/results/01_quantile_distributions.json

A run directory is the record of a run: the Quark run itself (config.json, pools, checkpoints,
metrics.jsonl), the executed notebooks, ``figures/*.png`` and ``results/*.json`` (what each notebook
measured, for tests and sweeps). Relative paths are read from the project root (:mod:`quarklab.paths`).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pandas as pd

from ..errors import QuarkError
from ..paths import locate, resolve_path
from ..files import atomic_write_json, atomic_write_text
from ..runs import eval_files, iteration_of, latest_checkpoint, read_metrics
from ..tasks import get_task
from ..tokens import as_token
from .parameters import check_parameters, declared_defaults, notebooks_dir

# Parameters that list other run directories (relative: from the project root); each must exist.
RUN_DIR_LISTS = ("extra_run_dirs", "seed_run_dirs")
_SOURCES = ("reference", "reward", "dataset")  # read by quarklab.paths.locate: a path, a hub id or a name


class Notebook:
    """One notebook's parameters, checked, with their paths resolved; what :func:`setup` returns.

    Each parameter given to :func:`setup` is an attribute (``nb.num_quantiles``), with these resolved:
    ``run_dir`` an absolute :class:`~pathlib.Path` (created); ``policy`` the latest checkpoint of the run
    in ``run_dir`` for ``"auto"``, else as :func:`quarklab.paths.locate` reads it (so are ``reference``,
    ``reward`` and ``dataset``; a None ``reward`` or ``dataset`` is the ``task``'s, :mod:`quarklab.tasks`);
    ``extra_run_dirs`` and ``seed_run_dirs`` lists of existing folders.
    """

    def __init__(self, name: str, run_dir: Path, parameters: dict[str, Any],
                 config_fields: dict[str, Any] | None = None, from_config: dict[str, Any] | None = None):
        self.name, self.run_dir, self.parameters = name, run_dir, parameters
        self.config_fields = dict(config_fields or {})  # every field the config file sets
        self.from_config = dict(from_config or {})  # the parameters that took the file's value, as the file says

    def __getattr__(self, key: str) -> Any:
        parameters = self.__dict__.get("parameters", {})
        if key in parameters:
            return parameters[key]
        raise AttributeError(f"notebook {self.__dict__.get('name')!r} has no parameter {key!r}: setup was "
                             f"given {', '.join(['run_dir', *parameters])}")

    def __repr__(self) -> str:
        given = ", ".join(f"{k}={v!r}" for k, v in self.parameters.items())
        return f"<notebook {self.name}: run_dir {self.run_dir}{'; ' + given if given else ''}>"

    def record(self, result: dict[str, Any]) -> Path:
        """What this notebook measured, to ``run_dir/results/<name>.json`` (see :func:`record`)."""
        return record(self.run_dir, self.name, result)

    def save_text(self, filename: str, text: str) -> Path:
        """``text`` to ``run_dir/<filename>`` (written whole or not at all); return the path."""
        path = self.run_dir / filename
        atomic_write_text(path, text)
        return path

    def config(self, preset: str, **overrides: Any):
        """The :class:`~quarklab.QuarkConfig` of ``preset``, with the config file's fields over it (the ``config``
        parameter, if any), then this notebook's config-named parameters (policy, ..., samples_per_prompt, as
        resolved here), then ``overrides`` (any other field)."""
        from ..config import field_specs
        from ..config import preset as make_preset

        fields = {k: v for k, v in self.parameters.items() if k in field_specs()}
        both = sorted(set(fields) & set(overrides))
        if both:
            raise QuarkError(f"{', '.join(map(repr, both))}: set both as a notebook parameter and among the "
                             "overrides (extra_config); set it in one place")
        return make_preset(preset, **{**self.config_fields, **fields, **overrides})


def setup(name: str, *, run_dir: str | os.PathLike, config: str | os.PathLike | None = None,
          **parameters: Any) -> Notebook:
    """A notebook's first call: check its parameters, resolve its paths, create ``run_dir``.

    ``name`` is the notebook's (``"01_quantile_distributions"``: its results go to
    ``run_dir/results/<name>.json``). ``parameters`` are the notebook's parameters named like a
    :class:`~quarklab.QuarkConfig` field, checked as the config checks that field, and ``extra_run_dirs``
    or ``seed_run_dirs``. A bad value is one QuarkError naming the parameter, raised before anything is
    written or loaded. Relative paths are read from the project root (:func:`quarklab.paths.resolve_path`).

    ``config`` is a run config file (as ``quarklab train --config`` reads it; a bad field or value is one
    QuarkError naming the file and the field). Each parameter it sets that is still at the default the
    notebook declares (:func:`~quarklab.notebooks.declared_defaults` of ``notebooks/<name>.ipynb``) takes the
    file's value; one given otherwise wins, as ``--set`` wins over ``--config`` (a parameter given equal to its
    declared default cannot be told from one not given: the file's value is taken). A ``policy`` declared
    ``"auto"`` (the run's latest checkpoint) stays so: a file's policy is where a run starts. Those values are
    ``nb.from_config`` (the notebook copies them into its variables), and every field of the file is under
    :meth:`Notebook.config`'s parameters. ``reward=None`` or ``dataset=None`` is the task's (``task``, default
    "tldr"; :mod:`quarklab.tasks`).
    """
    from ..config import field_specs, read_config_file

    config_fields, from_config = {}, {}
    if config is not None:
        config_fields = read_config_file(resolve_path(config))
        source = notebooks_dir() / f"{name}.ipynb"
        if not source.is_file():
            raise QuarkError(f"setup: config takes the parameters still at their declared defaults, read from the "
                             f"notebook {source}, which does not exist")
        defaults = declared_defaults(source)
        from_config = {key: config_fields[key] for key, value in parameters.items()
                       if key in config_fields and key in defaults and value == defaults[key]
                       and not (key == "policy" and value == "auto")}
        parameters = {**parameters, **from_config}
    for key, value in parameters.items():
        if key in RUN_DIR_LISTS:
            if not isinstance(value, (list, tuple)) or not all(isinstance(v, (str, os.PathLike)) for v in value):
                raise QuarkError(f"notebook parameter: {key} must be a list of folder paths, got {value!r}")
        elif key not in field_specs():
            raise QuarkError(f"setup: {key!r} is neither run_dir, a QuarkConfig field nor one of "
                             f"{', '.join(RUN_DIR_LISTS)}")
    check_parameters(run_dir=run_dir, **{k: v for k, v in parameters.items() if k not in RUN_DIR_LISTS})
    folder = resolve_path(run_dir)
    resolved = dict(parameters)
    for key in RUN_DIR_LISTS:
        if key in parameters:
            try:
                resolved[key] = [resolve_path(d, must_exist=True) for d in parameters[key]]
            except QuarkError as exc:
                raise QuarkError(f"notebook parameter: {key}: {exc}") from None
    if "policy" in parameters:
        resolved["policy"] = policy_source(parameters["policy"], folder)
    task = get_task(parameters.get("task", "tldr"))
    for key in _SOURCES:
        if key in parameters:
            resolved[key] = locate(getattr(task, key) if key != "reference" and parameters[key] is None
                                   else parameters[key])
    return Notebook(name, prepare(folder), resolved, config_fields, from_config)


def tldr_only(task: str, value, name: str):
    """``value`` (a parameter naming what the ALT model card measured on TL;DR: its quoted rows, its protocol) for
    a task whose runs those figures compare with (``"tldr"``); for another task, nothing ([] for a list, else
    None), with a printed note naming the parameter left out."""
    if get_task(task).alt_card or not value:
        return value
    print(f"task {task!r}: {name} is the ALT model card's (TL;DR), not comparable with this task's runs: left out.")
    return [] if isinstance(value, list) else None


def prepare(run_dir: str | os.PathLike) -> Path:
    """The run directory as an absolute Path (relative: under the project root), created if missing
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
    """``"auto"``: the latest checkpoint of the run in ``run_dir``; anything else as
    :func:`quarklab.paths.locate` reads it (``"tiny-tldr"`` and hub ids as given: :func:`quarklab.load_policy`
    takes them)."""
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
        k = as_token(row["token"])
        key = "none" if k is None else f"token{k}"
        out.update({f"{key}_reward": row["reward"], f"{key}_perplexity": row["perplexity"],
                    f"{key}_length": row["length"]})
    if "order_spearman" in last and last["order_spearman"].notna().any():
        out["order_spearman"] = float(last["order_spearman"].dropna().iloc[0])
        out["controllability"] = float(last["controllability"].dropna().iloc[0])
    return out
