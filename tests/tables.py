"""What several test files share: a folder laid out as a quarklab project; realistic samples (12 prompts x 16 samples) and a
metrics.jsonl written by the real writer and read back; the figure checks they all apply; a counter of quantile
assignments. Not a test module: imported by the test files."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from quarklab import runs

N_PROMPTS, N_SAMPLES = 12, 16
NEW = 12  # max_new_tokens of the tests that sample from the tiny world: keep them fast
QUOTED = [{"label": "ALT-Quark GPT-J", "reward": 99.0, "perplexity": 0.5, "length": 1.0}]  # dominates everything


def make_samples() -> pd.DataFrame:
    """12 prompts x 16 samples; reward = a per-prompt baseline + a length bonus + noise (as the tiny-tldr RM)."""
    rng = np.random.default_rng(0)
    offsets = rng.permutation(np.linspace(-1.5, 1.5, N_PROMPTS))
    rows = []
    for p in range(N_PROMPTS):
        prompt = f"SUBREDDIT: r/test\nTITLE: post {p}\nPOST: something happened {p}\nTL;DR:"
        for s in range(N_SAMPLES):
            n_tok = int(rng.integers(5, 40))
            finished = bool(n_tok < 38)
            rows.append({"prompt_id": 100 + p, "sample": s, "prompt": prompt, "token": None,
                         "completion": " ".join(["word"] * n_tok), "completion_ids": list(range(n_tok)),
                         "finished": finished, "num_tokens": n_tok,
                         "reward": 3.0 + offsets[p] + 0.03 * n_tok + rng.normal(0, 0.2)})
    return pd.DataFrame(rows)


def make_metrics(run_dir, k: int, iterations: int = 3) -> pd.DataFrame:
    """A run's metrics.jsonl written by the real writer and read back: iteration 0 (reference), then
    ``iterations`` iterations with tokens 0..k-1 + none (greedy), sampled rows (to be ignored), train rows. No token
    is written as older runs wrote it, ``"none"``: read back as ``<NA>``, the one form."""
    runs.record_metrics(run_dir, [{"token": "none", "mode": "greedy", "n": 96, "reward": 3.3, "reward_std": 0.5,
                                   "perplexity": 1.24, "length": 13.0, "finished": 1.0, "dist1": 0.2, "dist2": 0.5,
                                   "dist3": 0.6, "model": "reference"}], 0, "eval")
    for it in range(1, iterations + 1):
        train = [{"step": s, "rows": 480, "nll": 0.3 - 0.01 * s, "entropy": 0.3, "kl": 0.02 * it + 0.001 * s,
                  "loss": 0.3, "lr": 1e-3} for s in range(5)]
        runs.record_metrics(run_dir, train, it, "train")
        evals = []
        for mode in ("greedy", "sampled"):
            for token in [*range(k), "none"]:
                t = k if token == "none" else token
                evals.append({"token": token, "mode": mode, "n": 96,
                              "reward": (3.3 + 0.2 * it - 0.1 * t) if mode == "greedy" else 100.0,
                              "reward_std": 0.4, "perplexity": 1.25 + 0.02 * it + 0.01 * t, "length": 13 + 3 * it - t,
                              "finished": 1.0, "dist1": 0.2, "dist2": 0.4, "dist3": 0.5, "model": "policy",
                              "controllability": -0.3, "order_spearman": -1.0})
        runs.record_metrics(run_dir, evals, it, "eval")
    return runs.read_metrics(run_dir)


def count_assignments(monkeypatch) -> list:
    """Every call of quarklab.quantiles.assign_quantiles from now on, under whatever name a module holds it."""
    import sys

    from quarklab import quantiles

    original, calls = quantiles.assign_quantiles, []

    def counted(*args, **kwargs):
        calls.append(args[1] if len(args) > 1 else kwargs["num_quantiles"])
        return original(*args, **kwargs)

    for name, module in list(sys.modules.items()):
        if name.startswith("quarklab") and getattr(module, "assign_quantiles", None) is original:
            monkeypatch.setattr(module, "assign_quantiles", counted)
    return calls


UNIT = re.compile(r"\(.+\)")


def panels(fig: Figure) -> list:
    """The figure's plotting axes (colour bars left out: only panels carry a gid)."""
    return [ax for ax in fig.axes if ax.get_gid()]


def panel(fig: Figure, gid: str):
    (ax,) = [ax for ax in fig.axes if ax.get_gid() == gid]
    return ax


def check_readable(fig: Figure, n_panels: int) -> None:
    """Title, unit-bearing labels on both axes of every panel, a legend wherever several series are labelled."""
    assert isinstance(fig, Figure)
    assert fig.get_suptitle().strip()
    axes = panels(fig)
    assert len(axes) == n_panels
    for ax in axes:
        assert ax.get_title().strip(), ax.get_gid()
        assert UNIT.search(ax.get_xlabel()), (ax.get_gid(), ax.get_xlabel())
        assert UNIT.search(ax.get_ylabel()), (ax.get_gid(), ax.get_ylabel())
        handles, labels = ax.get_legend_handles_labels()
        if len(handles) > 1:
            assert ax.get_legend() is not None, ax.get_gid()


def legend_texts(ax) -> list[str]:
    return [t.get_text() for t in ax.get_legend().get_texts()]


def project_folder(tmp_path: Path) -> Path:
    """A folder laid out as a quarklab project (``notebooks/`` beside ``pyproject.toml``): its project root."""
    root = tmp_path / "proj"
    (root / "notebooks").mkdir(parents=True)
    (root / "pyproject.toml").write_text("[project]\nname = 'x'\n")
    return root
