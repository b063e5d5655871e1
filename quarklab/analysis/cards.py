"""Trade-off points (:func:`.tradeoffs.tradeoff_points`) as a model card: one table to save, two to show (the measured
rows and, apart under their caption, the quoted ones); and a run measured under a named protocol
(:func:`quarklab.protocols.run_under_protocol`) as the card's table, with its intervals."""

from __future__ import annotations

import numpy as np
import pandas as pd

from .tradeoffs import QUOTED_CAPTION, check_points


def model_card_table(points: pd.DataFrame) -> pd.DataFrame:
    """A model-card style table: ``model``, ``RM``, ``PPL``, ``Avg. len``, ``source``; 2 decimals, in order."""
    df = check_points(points)
    table = pd.DataFrame({
        "model": df["label"].astype(str),
        "RM": pd.to_numeric(df["reward"], errors="coerce").round(2),
        "PPL": pd.to_numeric(df["perplexity"], errors="coerce").round(2),
        "Avg. len": pd.to_numeric(df["length"], errors="coerce").round(2),
        "source": np.where(df["quoted"].astype(bool), "quoted", "measured"),
    })
    return table.reset_index(drop=True)


def card_tables(points: pd.DataFrame, *, reward_name: str = "tiny-tldr score") -> tuple:
    """The model card split in two captioned tables (pandas Stylers, for a notebook): the measured rows,
    their reward named, and the quoted ones under :data:`QUOTED_CAPTION` (an empty table when none)."""
    card = model_card_table(points)
    styles = []
    for source, caption in (("measured", f"Measured here (greedy evaluation): RM = {reward_name}, PPL = perplexity "
                                         "under the reference model, Avg. len in tokens."),
                            ("quoted", QUOTED_CAPTION)):
        part = card[card["source"] == source].drop(columns="source").reset_index(drop=True)
        styles.append(part.style.format(precision=2, na_rep="–").hide(axis="index").set_caption(caption)
                      .set_properties(subset=["model"], **{"text-align": "left"})
                      .set_table_styles([{"selector": "caption", "props": "caption-side: top; text-align: left"}]))
    return tuple(styles)


def protocol_table(rows: pd.DataFrame, protocol: str, *, reward_name: str = "tiny-tldr score"):
    """:func:`quarklab.protocols.card_table` as a captioned table (a pandas Styler, for a notebook): what was
    measured here under ``protocol``, to read beside the quoted card, never on the same axes."""
    caption = (f"Measured here under the {protocol} protocol (the card's: test split, greedy, 128 new tokens, stripped "
               f"prompts, perplexity under the reference in float32): RM = {reward_name}, Avg. len in tokens, "
               "[95 % bootstrap intervals over prompts].")
    from ..protocols import card_table

    return (card_table(rows).style.hide(axis="index").set_caption(caption)
            .set_properties(subset=["model"], **{"text-align": "left"})
            .set_table_styles([{"selector": "caption", "props": "caption-side: top; text-align: left"}]))
