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


def add_quantile_tokens(model, tokenizer, num_quantiles: int, seed: int = 0) -> list[int]:
    """Make sure ``tokenizer`` and ``model`` hold the K quantile tokens; return their ids (index = k).

    A tokenizer that already has them (a released Quark checkpoint) is reused as is: no
    duplicates, no resize, its trained rows untouched. Missing tokens are added as special
    tokens; their input and output embedding rows are drawn per dimension from the mean and
    std of the existing rows (Quark's initialisation), with ``seed``.
    """
    check_num_quantiles(num_quantiles)
    vocab = tokenizer.get_vocab()
    missing = [quantile_token(k) for k in range(num_quantiles) if quantile_token(k) not in vocab]
    if missing:
        tokenizer.add_tokens(missing, special_tokens=True)
    ids = quantile_token_ids(tokenizer, num_quantiles)
    new_ids = [i for k, i in enumerate(ids) if quantile_token(k) in missing]
    emb = model.get_input_embeddings()
    if max(ids) >= emb.num_embeddings:
        model.resize_token_embeddings(max(len(tokenizer), max(ids) + 1), mean_resizing=False)
    if new_ids:
        import torch

        gen = torch.Generator().manual_seed(seed)
        old = [i for i in range(model.get_input_embeddings().num_embeddings) if i not in set(new_ids)]
        with torch.no_grad():
            layers = [model.get_input_embeddings(), model.get_output_embeddings()]
            for layer in [l for i, l in enumerate(layers) if l is not None and l not in layers[:i]]:  # fixed order
                w = layer.weight
                base = w[old].float()
                mean, std = base.mean(0), base.std(0)
                rows = torch.normal(mean.expand(len(new_ids), -1), std.expand(len(new_ids), -1), generator=gen)
                w[new_ids] = rows.to(w.dtype)
                if getattr(layer, "bias", None) is not None:
                    layer.bias[new_ids] = layer.bias[old].mean().to(layer.bias.dtype)
    return ids
