"""Tokens 0..K-1 side by side: one completion per quantile token (and one without) for each prompt.

:func:`compare_tokens` generates, for every prompt, the completion conditioned on each quantile
token ``_QUANTILE_TOKEN_k_`` (prepended to the prompt with no space; k = 0 asks for the best
reward quantile) and one unconditioned completion from the reference model (or from the policy
without a token when there is no reference), then scores them all: reward, perplexity under the
reference (ALT's per-sample ``exp(mean NLL)``) and length in tokens.
:func:`quarklab.present.html.comparison_html` renders that table as HTML.

A checkpoint whose tokenizer already holds the quantile tokens (a quarklab run checkpoint
``runs/x/checkpoints/iter_003``, the released ``sauc-abadal-lloret/gpt-j-6b-ALT-Quark-tldr``)
works as it is: K is detected from the tokenizer.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from .errors import QuarkError
from .tokens import quantile_token_ids, token_label, token_series
from .rewards import check_rewards
from .sampling import SamplingParams, sample
from .tldr import prompt_table

REFERENCE = "reference"
POLICY_NO_TOKEN = "policy, no token"
COLUMNS = ["prompt_id", "prompt", "column", "token", "source", "completion", "reward", "perplexity", "length",
           "finished"]


def compare_tokens(policy, tokenizer, prompts, reward, *, reference=None, reference_tokenizer=None,
                   num_quantiles: int | None = None, do_sample: bool = False, temperature: float = 1.0,
                   top_p: float = 1.0, max_new_tokens: int = 48, seed: int = 0, perplexity: str = "alt",
                   task: str = "tldr") -> pd.DataFrame:
    """One completion per quantile token (and one without) for every prompt, scored.

    ``prompts`` is a list of str or a DataFrame with ``prompt`` (and optionally ``prompt_id``).
    ``reward(prompts, completions)`` scores the completions. Each prompt gets the policy's
    completion after ``_QUANTILE_TOKEN_k_`` for k = 0..K-1 (K detected from the tokenizer when
    ``num_quantiles`` is None) and one unconditioned completion: from ``reference`` (column
    ``"reference"``) or, without a reference, from the policy itself (column
    ``"policy, no token"``). Perplexity is under ``reference`` (the policy when there is none),
    given the prompt without a token, computed as ``perplexity`` says (see :mod:`quarklab.evaluation`;
    "alt" re-tokenizes each completion's text with the reference's tokenizer). ``do_sample=False`` is greedy decoding; sampling is seeded,
    so the same arguments give the same table. ``task`` says how a prompt is cut to the context
    (:mod:`quarklab.tasks`).

    Returns one row per (prompt, column), prompts in the order given and columns
    ``token 0`` .. ``token K-1`` then the unconditioned one: ``prompt_id``, ``prompt``,
    ``column`` (``token 0`` ..., :func:`quarklab.tokens.token_label`), ``token`` (the quantile index as nullable
    ``Int64``, ``<NA>`` for the unconditioned row), ``source`` (``"policy"`` or
    ``"reference"``), ``completion``, ``reward``, ``perplexity``, ``length`` (tokens),
    ``finished`` (ended with EOS).
    """
    from .evaluation import reference_perplexity

    if not callable(reward):
        raise QuarkError(f"reward must be a callable reward(prompts, completions), got {type(reward).__name__}")
    table = prompt_table(prompts)
    ids = quantile_token_ids(tokenizer, num_quantiles)
    rows_in_model = policy.get_input_embeddings().num_embeddings
    if max(ids) >= rows_in_model:
        raise QuarkError(f"the tokenizer holds quantile tokens up to id {max(ids)}, but the policy's embedding "
                         f"has {rows_in_model} rows: load the model saved with this tokenizer, or call "
                         "quarklab.tokens.add_quantile_tokens(policy, tokenizer, K)")
    params = SamplingParams(n=1, do_sample=bool(do_sample), temperature=float(temperature), top_p=float(top_p),
                            max_new_tokens=int(max_new_tokens), seed=int(seed), task=task)

    ref_model = reference if reference is not None else policy
    ref_tok = (reference_tokenizer if reference_tokenizer is not None else tokenizer) if reference is not None \
        else tokenizer

    parts = []
    for k, token_id in enumerate(ids):
        out = sample(policy, tokenizer, table, params, token=k, prefix_token_id=token_id, suppress=ids)
        parts.append(out.assign(column=token_label(k), source="policy"))
    if reference is not None:
        rows_in_ref = reference.get_input_embeddings().num_embeddings  # quantile ids it can generate: never
        suppress = [i for i in quantile_token_ids(ref_tok, required=False) if i < rows_in_ref]
        out = sample(reference, ref_tok, table, params, token=None, suppress=suppress or None)
        parts.append(out.assign(column=REFERENCE, source="reference"))
    else:
        out = sample(policy, tokenizer, table, params, token=None, suppress=ids)
        parts.append(out.assign(column=POLICY_NO_TOKEN, source="policy"))

    df = pd.concat(parts, ignore_index=True)
    df["reward"] = check_rewards(reward(df["prompt"].tolist(), df["completion"].tolist()), len(df),
                                 getattr(reward, "name", "reward"))

    ppl_input = df[["prompt_ids", "completion", "completion_ids", "finished"]].copy()
    if reference is not None:  # every row scored given the prompt as the reference's own sampling encoded it
        ppl_input["prompt_ids"] = pd.Series(parts[-1]["prompt_ids"].tolist() * len(parts), index=ppl_input.index,
                                            dtype=object)
    if ref_tok is not tokenizer and perplexity == "sampled-ids":  # policy completions in the reference's ids
        policy_rows = (df["source"] == "policy").to_numpy()
        ppl_input.loc[policy_rows, "completion_ids"] = pd.Series(
            [ref_tok(c, add_special_tokens=False)["input_ids"] for c in df.loc[policy_rows, "completion"]],
            index=ppl_input.index[policy_rows], dtype=object)
    df["perplexity"] = np.asarray(reference_perplexity(ref_model, ref_tok, ppl_input, mode=perplexity),
                                  dtype=np.float64)
    df["length"] = df["num_tokens"].astype(np.int64)
    df["finished"] = df["finished"].astype(bool)
    df["token"] = token_series(df["token"])

    # prompts in the order given, then token 0..K-1, then the unconditioned column
    column_rank = {token_label(k): k for k in range(len(ids))}
    df["_p"] = np.arange(len(df)) % len(table)  # each part lists the prompts in the order given
    df["_c"] = df["column"].map(lambda c: column_rank.get(c, len(ids)))
    df = df.sort_values(["_p", "_c"], kind="stable").reset_index(drop=True)
    out = df[COLUMNS].copy()
    out.attrs["settings"] = {"num_quantiles": len(ids), "do_sample": bool(do_sample), "temperature": float(temperature),
                             "top_p": float(top_p), "max_new_tokens": int(max_new_tokens), "seed": int(seed),
                             "perplexity_under": "reference" if reference is not None else "policy"}
    return out

