"""A run's metrics (:func:`quarklab.runs.read_metrics`) as the rows the figures draw: greedy evaluations, training
steps, and the rows of one token.

Only greedy evaluation rows (``kind == "eval"``, ``mode == "greedy"``) are evaluations here; sampled ones are
ignored. ``token`` is in its one form (:mod:`quarklab.tokens`): the quantile index as nullable ``Int64``, ``<NA>``
for no token (the SFT reference, or the policy without a token).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from ..errors import QuarkError
from ..tokens import as_token, token_series
from .inputs import check_frame


def eval_rows(metrics) -> pd.DataFrame:
    """The greedy evaluation rows of ``metrics``, ``token`` as nullable ``Int64`` and ``iteration`` as int."""
    df = check_frame(metrics, ["kind", "iteration"], "metrics")
    ev = df[df["kind"] == "eval"]
    if ev.empty:
        raise QuarkError("metrics hold no evaluation rows (kind == 'eval'): nothing to plot yet")
    for col in ("token", "mode"):
        if col not in ev.columns:
            raise QuarkError(f"metrics' eval rows lack the column {col!r}")
    ev = ev[ev["mode"] == "greedy"]
    if ev.empty:
        raise QuarkError("metrics hold no greedy evaluation rows (mode == 'greedy')")
    ev = ev.copy()
    ev["token"] = token_series(ev["token"])
    ev["iteration"] = pd.to_numeric(ev["iteration"]).astype(int)
    return ev.reset_index(drop=True)


def train_rows(metrics: pd.DataFrame) -> pd.DataFrame:
    """The training-step rows of ``metrics`` (possibly none), ``iteration`` as int."""
    tr = metrics[metrics["kind"] == "train"].copy()
    if not tr.empty:
        tr["iteration"] = pd.to_numeric(tr["iteration"]).astype(int)
    return tr


def token_mask(tokens: pd.Series, token) -> np.ndarray:
    """Which of ``tokens`` (a token column, any spelling) are ``token``: the quantile index k, or None for no token."""
    k = as_token(token)
    return np.array([as_token(t) == k for t in tokens], dtype=bool)
