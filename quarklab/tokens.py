"""Quantile tokens: their names, their ids in a tokenizer, adding them to a model, and the one form a token takes
in every table quarklab writes or reads.

In pools, evaluation samples and metrics a row's ``token`` is the quantile index k it was conditioned on
(0 = the highest-reward quantile, as in the ALT-Quark checkpoint) or missing for an unconditioned row (the SFT
reference, or a policy sampled without a token): pandas' nullable ``Int64``, written as a JSON null in
metrics.jsonl. :func:`as_token` reads every older spelling (``"none"``, NaN, a float from JSON) into that form;
:func:`token_label` is how figures and tables name a token.
"""

from __future__ import annotations

import math
import numbers

import pandas as pd

from .checks import check_int, check_num_quantiles
from .errors import QuarkError


def as_token(value) -> int | None:
    """A ``token`` value in its one form: the int k, or None for no token (None, NaN, pd.NA, ``"none"``, ``""``)."""
    if value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value)):
        return None
    if isinstance(value, str):
        s = value.strip().lower()
        if s in ("none", "", "nan", "<na>"):
            return None
        try:
            value = float(s)
        except ValueError:
            raise QuarkError(f"a token must be a quantile index (0, 1, ...) or none, got {value!r}") from None
    if isinstance(value, numbers.Real) and not isinstance(value, bool) and float(value).is_integer():
        return int(value)
    raise QuarkError(f"a token must be a quantile index (0, 1, ...) or none, got {value!r}")


def token_series(values) -> pd.Series:
    """``values`` (any spellings :func:`as_token` reads) as a nullable ``Int64`` Series, keeping its index."""
    index = values.index if isinstance(values, pd.Series) else None
    return pd.Series([as_token(v) for v in values], index=index, dtype="Int64")


def token_label(token) -> str:
    """How figures and tables name a token: ``"token 0"``, ..., ``"no token"``."""
    k = as_token(token)
    return "no token" if k is None else f"token {k}"


def sorted_tokens(values) -> list[int | None]:
    """The distinct tokens of ``values``, quantile indices ascending, no token (None) last."""
    found = {as_token(v) for v in values}
    return sorted(k for k in found if k is not None) + ([None] if None in found else [])


def quantile_token(k: int) -> str:
    """The name of quantile token ``k`` (0 = highest-reward quantile), as in the ALT-Quark checkpoint."""
    return f"_QUANTILE_TOKEN_{k}_"


_NO_TOKENS = ("this checkpoint has no quantile tokens (no {name!r} in its tokenizer): train one with "
              "`quarklab train`, or pass a Quark checkpoint such as the released "
              "sauc-abadal-lloret/gpt-j-6b-ALT-Quark-tldr (or add untrained tokens with "
              "quarklab.tokens.add_quantile_tokens)")


def quantile_token_ids(tokenizer, num_quantiles: int | None = None, *, required: bool = True) -> list[int]:
    """Ids of ``_QUANTILE_TOKEN_0_`` .. ``_QUANTILE_TOKEN_{K-1}_`` in ``tokenizer`` (index = k).

    With ``num_quantiles=None``, K is the number of consecutive tokens ``_0_``, ``_1_``, ... the
    tokenizer holds. A tokenizer with none of them (unless ``required=False``: then ``[]``), or
    without all ``num_quantiles`` asked for, is a :class:`QuarkError`.
    """
    vocab = tokenizer.get_vocab()
    if quantile_token(0) not in vocab:
        if not required:
            return []
        raise QuarkError(_NO_TOKENS.format(name=quantile_token(0)))
    if num_quantiles is None:
        k = 0
        while quantile_token(k) in vocab:
            k += 1
        return [int(vocab[quantile_token(i)]) for i in range(k)]
    check_int(num_quantiles, "num_quantiles (or None to detect it)", 1)
    missing = [quantile_token(k) for k in range(int(num_quantiles)) if quantile_token(k) not in vocab]
    if missing:
        present = len(quantile_token_ids(tokenizer))
        raise QuarkError(f"num_quantiles={num_quantiles}, but this tokenizer holds only {present} quantile "
                         f"token(s) (missing {missing[0]!r}{' ...' if len(missing) > 1 else ''}): pass "
                         f"num_quantiles={present} or None to use the tokens the checkpoint was trained with")
    return [int(vocab[quantile_token(k)]) for k in range(int(num_quantiles))]


TOKEN_INITS = ("quark", "alt")


def add_quantile_tokens(model, tokenizer, num_quantiles: int, seed: int = 0, init: str = "quark") -> list[int]:
    """Make sure ``tokenizer`` and ``model`` hold the K quantile tokens; return their ids (index = k).

    A tokenizer that already has them (a released Quark checkpoint) is reused as is: no
    duplicates, no resize, its trained rows untouched. Missing tokens are added as special
    tokens at ids ``len(tokenizer)`` onwards (50400-50404 on GPT-J 6B's tokenizer, whose 143
    ``<|extratoken_N|>`` fill its 50,400 rows); the embedding and head grow when those ids do
    not fit (to 50,405 rows on GPT-J). The new rows, with ``seed``:

    - ``init="quark"`` (Quark's initialisation, applied to both ends): the input rows and the
      output rows are each drawn per dimension from N(mean, std) of that matrix's other rows
      (torch, sample std); a head bias gets the mean of the other rows' biases.
    - ``init="alt"`` (ALT's ``QUARK_train_noKL.py:173-189``): the input rows are drawn with NumPy
      (``RandomState(seed).normal``, one row per token in token order) from the per-dimension mean
      and population std (``np.std``) of the rows below the tokenizer's original length, computed
      in float32; the output rows are what transformers' resize gives GPT-J's untied head,
      N(0, ``config.initializer_range``) (0.02), with a bias of 0. A tied head shares the input
      rows. ALT first resizes the matrix to the tokenizer's length (a shrink only for a model
      padded past its tokenizer, not GPT-J 6B); quarklab keeps such rows, over the same statistics.
    """
    check_num_quantiles(num_quantiles)
    if init not in TOKEN_INITS:
        raise QuarkError(f"token init must be one of {list(TOKEN_INITS)} (how the quantile tokens' new embedding "
                         f"rows are drawn), got {init!r}")
    vocab = tokenizer.get_vocab()
    original = len(tokenizer)
    missing = [quantile_token(k) for k in range(num_quantiles) if quantile_token(k) not in vocab]
    if missing:
        tokenizer.add_tokens(missing, special_tokens=True)
    ids = quantile_token_ids(tokenizer, num_quantiles)
    new_ids = [i for k, i in enumerate(ids) if quantile_token(k) in missing]
    emb = model.get_input_embeddings()
    if max(ids) >= emb.num_embeddings:
        model.resize_token_embeddings(max(len(tokenizer), max(ids) + 1), mean_resizing=False)
    if not new_ids:
        return ids
    import torch

    if init == "alt":
        _alt_init(model, new_ids, min(original, model.get_input_embeddings().num_embeddings), seed)
        return ids
    gen = torch.Generator().manual_seed(seed)
    old = [i for i in range(model.get_input_embeddings().num_embeddings) if i not in set(new_ids)]
    with torch.no_grad():
        layers = [model.get_input_embeddings(), model.get_output_embeddings()]
        for layer in [l for i, l in enumerate(layers) if l is not None and l not in layers[:i]]:  # fixed order
            w = layer.weight
            base = w[old].float()
            mean, std = base.mean(0), base.std(0)
            rows = torch.normal(mean.expand(len(new_ids), -1), std.expand(len(new_ids), -1), generator=gen)
            w[new_ids] = rows.to(w.device, w.dtype)  # drawn on the CPU (a seeded generator), moved to the weights
            if getattr(layer, "bias", None) is not None:
                layer.bias[new_ids] = layer.bias[old].mean().to(layer.bias.dtype)
    return ids


def _alt_init(model, new_ids: list[int], below: int, seed: int) -> None:
    """ALT's rows for ``new_ids``: see :func:`add_quantile_tokens` (``init="alt"``)."""
    import numpy as np
    import torch

    emb, head = model.get_input_embeddings(), model.get_output_embeddings()
    with torch.no_grad():
        weights = emb.weight[:below].detach().float().cpu().numpy()
        mean, std = np.mean(weights, axis=0), np.std(weights, axis=0)
        rng = np.random.RandomState(seed)
        rows = np.vstack([rng.normal(loc=mean, scale=std) for _ in new_ids])
        emb.weight[new_ids] = torch.from_numpy(rows).to(emb.weight.dtype).to(emb.weight.device)
        if head is None or head.weight is emb.weight:
            return
        gen = torch.Generator().manual_seed(seed)
        scale = float(getattr(model.config, "initializer_range", 0.02))
        rows = torch.normal(0.0, scale, (len(new_ids), head.weight.shape[1]), generator=gen)
        head.weight[new_ids] = rows.to(head.weight.dtype).to(head.weight.device)
        if getattr(head, "bias", None) is not None:
            head.bias[new_ids] = 0
