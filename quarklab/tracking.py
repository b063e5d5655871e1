"""Experiment tracking: accelerate's trackers (TensorBoard, W&B, Trackio, MLflow, ...) mirror ``metrics.jsonl``.

``report_to`` names the trackers ("tensorboard", "tensorboard,wandb"; "none" = no tracking). metrics.jsonl stays
the run's record: after each ``runs.record_metrics`` the loop calls :meth:`Tracking.sync`, which logs every
``(iteration, kind)`` group of rows that metrics.jsonl holds and the tracker has not logged yet (a ledger,
``RUN/tracking/logged.json``, says which), so a resumed run logs only what is new and a stage redone after a kill
is not logged twice. Each number of a row is one scalar:

- a ``train`` row (one optimizer step) as ``train/<key>`` (loss terms, lr, ...) at the run's global step: the
  optimizer steps of every earlier iteration plus this one's (1, 2, ... across iterations);
- an ``eval`` row as ``eval/<mode>/token_<k>/<key>`` (``token_none`` unconditioned) at the global step the
  iteration's training ended on (0 for iteration 0's reference), so every tracker sees one increasing step.

TensorBoard's event files and W&B's local files go under ``RUN/tracking/``; MLflow keeps its own store (its
``MLFLOW_TRACKING_URI``, ``./mlruns`` by default) and Trackio its own (a local database or a Space). The config goes
in as hyperparameters once per process start. Only the main process tracks (the caller opens a
:class:`Tracking` there alone). The tracker classes of ``accelerate.tracking`` are used directly, as
``Accelerator.init_trackers`` would build them, not through an ``Accelerator``: a single-process run has none
(:mod:`quarklab.distributed` makes one only under ``accelerate launch``, and a second one there would set up
accelerate's state again beside the launch's); the trackers need only accelerate's shared ``PartialState``,
which under a launch is the launch's own.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from . import files
from .errors import QuarkError

TRACKING = "tracking"
"""The trackers' folder inside the run directory (TensorBoard's event files, W&B's and MLflow's local files)."""
LEDGER = "logged.json"
PROJECT = "quarklab"


def tracker_names(report_to: str) -> list[str]:
    """``report_to``'s trackers, in order: ``"none"`` is none."""
    names = [n.strip() for n in report_to.split(",") if n.strip()]
    return [] if names == ["none"] else list(dict.fromkeys(names))


def check_trackers(report_to: str) -> list[str]:
    """The trackers, or one QuarkError naming an unknown one (with the valid names) or one not installed."""
    names = tracker_names(report_to)
    if not names:
        return []
    import accelerate.utils
    from accelerate.tracking import LOGGER_TYPE_TO_CLASS

    valid = sorted(LOGGER_TYPE_TO_CLASS)
    for name in names:
        if name not in LOGGER_TYPE_TO_CLASS:
            raise QuarkError(f"report_to: unknown tracker {name!r}: choose from {', '.join(valid)} "
                             "(comma-separated), or 'none'")
        available = getattr(accelerate.utils, f"is_{name}_available", lambda: True)
        if not available():
            raise QuarkError(f"report_to: the {name!r} tracker is not installed: pip install {name} "
                             f"(or drop it from report_to={report_to!r})")
    return names


class Tracking:
    """The run's trackers (none when ``report_to`` is "none"); a context manager that ends them."""

    def __init__(self, run_dir: str | os.PathLike, report_to: str = "none", config: dict | None = None):
        self.run_dir = Path(run_dir)
        self.names = check_trackers(report_to)
        self.trackers = []
        if not self.names:
            return
        from accelerate import PartialState
        from accelerate.tracking import LOGGER_TYPE_TO_CLASS

        PartialState()  # accelerate's trackers log through its logger, which needs the (shared) process state
        folder = self.run_dir / TRACKING
        folder.mkdir(parents=True, exist_ok=True)
        kwargs = {"wandb": {"name": self.run_dir.name, "dir": str(folder)},
                  "trackio": {"name": self.run_dir.name},
                  "mlflow": {"run_name": self.run_dir.name}}
        for name in self.names:
            cls = LOGGER_TYPE_TO_CLASS[name]
            kw = kwargs.get(name, {})
            tracker = cls(PROJECT, str(folder), **kw) if cls.requires_logging_directory else cls(PROJECT, **kw)
            tracker.start()
            if config is not None:
                tracker.store_init_configuration(hyperparameters(config))
            self.trackers.append(tracker)
        self.sync()

    def __enter__(self) -> "Tracking":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        for tracker in self.trackers:
            tracker.finish()
        self.trackers = []

    def sync(self) -> None:
        """Log every group of metrics.jsonl rows not logged yet, in step order, then note them in the ledger."""
        if not self.trackers:
            return
        ledger_path = self.run_dir / TRACKING / LEDGER
        logged = {tuple(g) for g in json.loads(ledger_path.read_text())} if ledger_path.exists() else set()
        path = self.run_dir / "metrics.jsonl"
        rows = files.read_jsonl(path, "see quarklab train --resume").rows if path.exists() else []
        new = [entry for entry in scalars(rows) if (entry[0], entry[1]) not in logged]
        for it, kind, step, values in new:
            for tracker in self.trackers:
                tracker.log(values, step=step)
        if new:
            logged |= {(it, kind) for it, kind, _, _ in new}
            files.atomic_write_json(ledger_path, sorted([list(g) for g in logged]))


def hyperparameters(config: dict) -> dict:
    """The config as trackers take hyperparameters: numbers, text, booleans (None left out)."""
    return {k: v for k, v in config.items() if v is not None}


def scalars(rows: list[dict]) -> list[tuple[int, str, int, dict]]:
    """``(iteration, kind, global step, {tag: number})`` for each logged unit of metrics.jsonl's ``rows``: each train
    row (one optimizer step), and each iteration's eval rows together; in step order, train before eval."""
    import math

    steps: dict[int, int] = {}
    for r in rows:
        if r["kind"] == "train":
            steps[r["iteration"]] = steps.get(r["iteration"], 0) + 1
    before = lambda it: sum(n for i, n in steps.items() if i < it)  # noqa: E731
    out = []
    evals: dict[int, dict] = {}
    for r in rows:
        it, kind = r["iteration"], r["kind"]
        numbers = {k: v for k, v in r.items() if k not in ("iteration", "kind", "step", "token", "mode", "model")
                   and isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)}
        if kind == "train":
            out.append((it, kind, before(it) + r["step"] + 1, {f"train/{k}": v for k, v in numbers.items()}))
        elif kind == "eval":
            token = "none" if r.get("token") in (None, "none") else r["token"]
            evals.setdefault(it, {}).update({f"eval/{r['mode']}/token_{token}/{k}": v for k, v in numbers.items()})
    out += [(it, "eval", before(it + 1), values) for it, values in evals.items()]
    return sorted(out, key=lambda e: (e[2], e[1] == "eval"))


def summary_line(metrics, iteration: int, iterations: int, seconds: float) -> str:
    """One line for the terminal after iteration ``iteration``'s evaluation (greedy): token 0's reward beside the
    SFT model's (iteration 0), perplexity, length and controllability; for iteration 0, the SFT model's own."""
    ev = metrics[(metrics["kind"] == "eval") & (metrics["mode"] == "greedy")]
    sft = ev[(ev["iteration"] == 0) & ev["token"].isna()]
    sft_reward = float(sft["reward"].iloc[0]) if len(sft) else float("nan")
    here = ev[ev["iteration"] == iteration]
    if iteration == 0:
        row = here[here["token"].isna()].iloc[0]
        return (f"iteration 0/{iterations} (SFT): reward {row['reward']:.3f}, ppl {row['perplexity']:.2f}, "
                f"len {row['length']:.1f}, {seconds:.0f} s")
    row = here[here["token"] == 0].iloc[0]
    ctrl = row.get("controllability")
    ctrl = "" if ctrl is None or ctrl != ctrl else f", controllability {ctrl:.2f}"
    return (f"iteration {iteration}/{iterations}: token 0 reward {row['reward']:.3f} (SFT {sft_reward:.3f}), "
            f"ppl {row['perplexity']:.2f}, len {row['length']:.1f}{ctrl}, {seconds:.0f} s")
