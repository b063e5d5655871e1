"""Tables behind the figures: reward quantiles of a scored pool, a run's evaluation rows, trade-off points.

Pure pandas/numpy (no matplotlib): every function takes a DataFrame and returns a DataFrame or a
Series that a notebook can print, test or join; :mod:`quarklab.present` draws them. One module per
concern, every public name also reachable here (``ql.analysis.tradeoff_points``):

* :mod:`.inputs`: the input checks (``check_samples``);
* :mod:`.metric_rows`: a run's metrics (:func:`quarklab.runs.read_metrics`) as greedy evaluation rows and training
  rows (``eval_rows``, ``train_rows``), ``token`` in its one form (nullable ``Int64``, ``<NA>`` for no token);
* :mod:`.pools`: quantiles of a scored pool (``prompt_quantile_counts``, ``quantile_contrast``, ``best_of_n``):
  ``samples`` is a DataFrame from :func:`quarklab.sample` plus a ``reward`` column;
* :mod:`.tradeoffs`: trade-off points and their Pareto front (``tradeoff_points``, ``pareto_front``);
* :mod:`.cards`: the points as a model card (``model_card_table``, ``card_tables``), a run under a protocol as the
  card's table (``protocol_table``);
* :mod:`.reward_names`: how figures name a run's reward (``reward_name``, ``run_reward_name``).
"""

from __future__ import annotations

from .cards import card_tables, model_card_table, protocol_table
from .inputs import check_frame, check_samples
from .metric_rows import eval_rows, token_mask, train_rows
from .pools import SHOWN_SCOPES, best_of_n, counts_by_prompt, default_ns, prompt_quantile_counts, quantile_contrast
from .reward_names import reward_name, run_reward_name
from .tradeoffs import (CARD_SOURCE, POINT_COLUMNS, QUOTED_CAPTION, check_points, pareto_front, quoted_frame, quoted_points,
                        tradeoff_points)

__all__ = [
    "check_frame", "check_samples", "eval_rows", "train_rows", "token_mask", "SHOWN_SCOPES", "prompt_quantile_counts",
    "counts_by_prompt", "quantile_contrast", "default_ns", "best_of_n", "POINT_COLUMNS",
    "CARD_SOURCE", "QUOTED_CAPTION", "protocol_table", "tradeoff_points", "quoted_points", "quoted_frame",
    "check_points", "pareto_front",
    "model_card_table", "card_tables", "reward_name", "run_reward_name",
]
