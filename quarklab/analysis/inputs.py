"""Input checks of the tables the analysis reads: one QuarkError naming what is wrong, before anything is computed."""

from __future__ import annotations

from typing import Iterable

import numpy as np
import pandas as pd

from ..errors import QuarkError


def check_frame(df, columns: Iterable[str], what: str) -> pd.DataFrame:
    """``df`` itself, once it is a non-empty DataFrame holding ``columns``; else a QuarkError naming ``what``."""
    if not isinstance(df, pd.DataFrame):
        raise QuarkError(f"{what} must be a pandas DataFrame, got {type(df).__name__}")
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise QuarkError(f"{what} lacks the column(s) {missing}; it has {list(df.columns)}")
    if df.empty:
        raise QuarkError(f"{what} is empty: nothing to plot")
    return df


def check_samples(samples, *, need_length: bool = False) -> pd.DataFrame:
    """A copy of ``samples`` with a float ``reward`` (all finite), ids present and, if asked, numeric ``num_tokens``."""
    cols = ["prompt_id", "reward"] + (["num_tokens"] if need_length else [])
    df = check_frame(samples, cols, "samples")
    r = pd.to_numeric(df["reward"], errors="coerce").to_numpy(dtype=float)
    if not np.isfinite(r).all():
        raise QuarkError(f"samples['reward'] holds {int((~np.isfinite(r)).sum())} missing or non-finite values; "
                         "score every sample before plotting")
    if df["prompt_id"].isna().any():
        raise QuarkError("samples['prompt_id'] holds missing ids")
    out = df.assign(reward=r).reset_index(drop=True)
    if need_length:
        lengths = pd.to_numeric(out["num_tokens"], errors="coerce")
        if lengths.isna().any():
            raise QuarkError("samples['num_tokens'] holds missing values")
        out["num_tokens"] = lengths
    return out
