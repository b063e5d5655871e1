"""Evaluation: for each conditioning token (and none), reward, perplexity under the reference,
length, dist-1/2/3, and controllability (Spearman between token index and realized reward).

Perplexity: per sample ``exp(mean token NLL)`` of the completion under the reference model given
the prompt without a token, then the mean over samples (NaN, and left out of the mean, for a
sample with nothing to score). ``"alt"`` scores the completion's text re-tokenized, without EOS,
as ALT's ``alt/perplexity.py`` does; ``"sampled-ids"`` scores the sampled ids plus EOS when the
completion finished.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from .errors import QuarkError
from .metrics import distinct_n, distinct_n_per_group, spearman
from .models import context_length
from .sampling import SamplingParams, sample
from .scoring import completion_nll
from .tokens import token_series

PERPLEXITY_MODES = ("alt", "sampled-ids")


def reference_perplexity(reference, tokenizer, samples: pd.DataFrame, batch_size: int = 32,
                         mode: str = "alt") -> np.ndarray:
    """Per-row ``exp(mean NLL)`` of each completion under ``reference``, given the samples' own ``prompt_ids``
    (as :func:`quarklab.sample` encoded them, in ``tokenizer``'s ids); ``mode`` as in the module docstring."""
    if mode not in PERPLEXITY_MODES:
        raise QuarkError(f"perplexity mode must be one of {PERPLEXITY_MODES}, got {mode!r}")
    if "prompt_ids" not in samples.columns:
        raise QuarkError("reference_perplexity scores the samples given their 'prompt_ids' (the column "
                         "quarklab.sample writes); this table has none")
    prompts = [list(p) for p in samples["prompt_ids"]]
    if mode == "alt":
        room = context_length(reference)
        completions = [tokenizer(t, add_special_tokens=False)["input_ids"][: room - len(p)]
                       for t, p in zip(samples["completion"], prompts)]
        finished = [False] * len(prompts)
    else:
        completions, finished = [list(c) for c in samples["completion_ids"]], samples["finished"].tolist()
    scored = [i for i, (c, f) in enumerate(zip(completions, finished)) if c or f]
    nll = np.full(len(prompts), np.nan)
    nll[scored] = completion_nll(reference, [prompts[i] for i in scored], [completions[i] for i in scored],
                                 [finished[i] for i in scored], tokenizer.pad_token_id, tokenizer.eos_token_id,
                                 batch_size)
    return np.exp(nll)


def summarize(samples: pd.DataFrame) -> dict:
    """One evaluation row from the samples of one conditioning token."""
    texts = samples["completion"].tolist()
    per_prompt = samples.groupby("prompt_id").size().max() > 1
    dist = (lambda n: distinct_n_per_group(texts, samples["prompt_id"].tolist(), n)) if per_prompt \
        else (lambda n: distinct_n(texts, n))
    return {"n": len(samples), "reward": float(samples["reward"].mean()), "reward_std": float(samples["reward"].std(ddof=0)),
            "perplexity": float(samples["perplexity"].mean()), "length": float(samples["num_tokens"].mean()),
            "finished": float(samples["finished"].mean()),
            "dist1": dist(1), "dist2": dist(2), "dist3": dist(3)}


def evaluate(policy, tokenizer, prompts: pd.DataFrame, reward, *, reference=None, control_ids: list[int] | None = None,
             tokens: list[int | None] | None = None, params: SamplingParams | None = None,
             perplexity: str = "alt", progress: bool = False) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Generate for every token in ``tokens`` (``None`` = unconditioned) and score.

    ``tokens`` defaults to every quantile token (``0 .. len(control_ids)-1``) plus ``None``.
    Returns ``(summary, samples)``: one summary row per token (with ``mode`` greedy/sampled and the
    run-wide ``controllability`` and ``order_spearman``), and every scored sample.
    """
    params = params or SamplingParams(do_sample=False)
    tokens = tokens if tokens is not None else every_token(control_ids)
    samples = scored_samples(policy, tokenizer, prompts, reward, reference=reference, control_ids=control_ids,
                             tokens=tokens, params=params, perplexity=perplexity, progress=progress)
    return summary_table(samples, tokens, "sampled" if params.do_sample else "greedy"), samples


def every_token(control_ids: list[int] | None) -> list[int | None]:
    """Every quantile token's index, then None (unconditioned): what :func:`evaluate` evaluates by default."""
    return [*range(len(control_ids or [])), None]


def scored_samples(policy, tokenizer, prompts: pd.DataFrame, reward, *, reference, control_ids: list[int] | None,
                   tokens: list[int | None], params: SamplingParams, perplexity: str = "alt",
                   progress: bool = False) -> pd.DataFrame:
    """Every sample of :func:`evaluate`, token by token in ``tokens``' order, with its reward and perplexity."""
    from .progress import tqdm

    control_ids = control_ids or []
    parts = []
    for k in tqdm(tokens, desc="evaluating", disable=not progress, leave=False):
        out = sample(policy, tokenizer, prompts, params, token=k, suppress=control_ids,
                     prefix_token_id=None if k is None else control_ids[k])
        out["reward"] = reward(out["prompt"].tolist(), out["completion"].tolist())
        out["perplexity"] = (reference_perplexity(reference, tokenizer, out, mode=perplexity)
                             if reference is not None else np.nan)
        parts.append(out)
    return pd.concat(parts, ignore_index=True)


def summary_table(samples: pd.DataFrame, tokens: list[int | None], mode: str) -> pd.DataFrame:
    """One :func:`summarize` row per token of ``tokens`` (None = the unconditioned rows), with the run-wide
    ``controllability`` (Spearman of token index and reward over the conditioned samples) and
    ``order_spearman`` (of token index and mean reward) when more than one token is conditioned."""
    parts = [samples[samples["token"].isna() if k is None else samples["token"] == k] for k in tokens]
    rows = [{"token": k, "mode": mode, **summarize(part)} for k, part in zip(tokens, parts)]
    summary = pd.DataFrame(rows).assign(token=lambda d: token_series(d["token"]))
    conditioned = samples[samples["token"].notna()]
    if conditioned["token"].nunique() > 1:
        means = summary[summary["token"].notna()]
        summary["controllability"] = spearman(conditioned["token"].astype(float), conditioned["reward"])
        summary["order_spearman"] = spearman(means["token"].astype(float), means["reward"])
    return summary
