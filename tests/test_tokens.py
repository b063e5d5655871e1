"""quarklab.tokens: the one form a token takes in tables, its label, and the quantile tokens in a tokenizer."""

import math

import numpy as np
import pandas as pd
import pytest
import torch

from quarklab.errors import QuarkError
from quarklab.tokens import as_token, sorted_tokens, token_label, token_series


@pytest.mark.parametrize("value, token", [(0, 0), (np.int64(3), 3), (2.0, 2), ("1", 1), (" 4 ", 4), ("2.0", 2),
                                          (None, None), (math.nan, None), (pd.NA, None), ("none", None),
                                          ("None", None), ("", None), ("nan", None)])
def test_every_spelling_reads_into_one_form(value, token):
    assert as_token(value) == token


@pytest.mark.parametrize("value", ["best", 1.5, True, [0]])
def test_anything_else_is_one_error(value):
    with pytest.raises(QuarkError, match="a token must be a quantile index"):
        as_token(value)


def test_a_token_column_is_nullable_int64_and_keeps_its_index():
    s = token_series(pd.Series(["none", 0, 2.0, None], index=[5, 6, 7, 8]))
    assert str(s.dtype) == "Int64" and s.index.tolist() == [5, 6, 7, 8]
    assert s.isna().tolist() == [True, False, False, True] and s.dropna().tolist() == [0, 2]


def test_labels_and_order():
    assert [token_label(t) for t in (0, "3", None, "none")] == ["token 0", "token 3", "no token", "no token"]
    assert sorted_tokens(["none", 2, 0, 10, 2.0, None]) == [0, 2, 10, None]
    assert sorted_tokens([1, 0]) == [0, 1]


# --- the quantile tokens' new rows: Quark's rule and ALT's (token_init) ---------------------------------------------

def fresh_policy(world, init, seed=0):
    """The tiny world's SFT GPT-J (untied head with a bias, 1,407 tokens) with 5 quantile tokens added by ``init``."""
    import quarklab as ql
    from quarklab.tokens import add_quantile_tokens

    policy, tok = ql.load_policy(world.policy), ql.load_tokenizer(world.policy)
    before = (policy.get_input_embeddings().weight.detach().clone(),
              policy.get_output_embeddings().weight.detach().clone(), policy.get_output_embeddings().bias.detach().clone())
    ids = add_quantile_tokens(policy, tok, 5, seed=seed, init=init)
    return policy, tok, ids, before


def zscores(rows, mean, std):
    z = ((rows - mean) / std).flatten()
    return float(z.mean()), float(z.std())


def test_quark_init_draws_each_matrix_from_its_own_rows_and_the_mean_bias(world):
    policy, tok, ids, (emb0, head0, bias0) = fresh_policy(world, "quark")
    n = emb0.shape[0]
    assert n == 1407 and ids == [1407, 1408, 1409, 1410, 1411] and len(tok) == 1412  # appended after the tokenizer
    emb, head = policy.get_input_embeddings().weight.detach(), policy.get_output_embeddings()
    assert emb.shape[0] == head.weight.shape[0] == 1412
    assert torch.equal(emb[:n], emb0) and torch.equal(head.weight[:n], head0) and torch.equal(head.bias[:n], bias0)
    # 5 x 128 values each, z-scored by the existing rows' per-dimension mean and (sample) std: about N(0, 1)
    for rows, base in [(emb[ids], emb0), (head.weight.detach()[ids], head0)]:
        mean, spread = zscores(rows, base.mean(0), base.std(0))
        assert abs(mean) < 0.25 and 0.85 < spread < 1.15
    assert torch.allclose(head.bias[ids], bias0.mean().expand(5)) and bias0.mean().abs() > 1e-3  # not zero here


def test_alt_init_is_alts_code_input_rows_and_transformers_head_rows(world):
    import numpy as np

    seed = 43  # ALT: set_seed(42 + iteration) seeds NumPy's global generator before these lines
    policy, tok, ids, (emb0, head0, bias0) = fresh_policy(world, "alt", seed=seed)
    # ALT:tasks/summarization/QUARK_train_noKL.py:177-179,187-189, run as written on the fp32 weights
    np.random.seed(seed)
    weights = emb0.numpy()
    mean_weights, std_weights = np.mean(weights, axis=0), np.std(weights, axis=0)
    new_inits = np.vstack([np.random.normal(loc=mean_weights, scale=std_weights) for _ in range(5)])
    emb, head = policy.get_input_embeddings().weight.detach(), policy.get_output_embeddings()
    assert ids == [1407, 1408, 1409, 1410, 1411] and emb.shape[0] == 1412
    assert torch.equal(emb[-5:], torch.tensor(new_inits).float())  # the last 5 rows, as ALT writes them
    assert torch.equal(emb[:1407], emb0) and torch.equal(head.weight[:1407].detach(), head0)
    # the head's new rows are transformers' resize init for GPT-J: N(0, initializer_range = 0.02), bias 0
    rows = head.weight.detach()[ids]
    assert policy.config.initializer_range == 0.02
    assert abs(float(rows.mean())) < 0.005 and 0.017 < float(rows.std()) < 0.023
    assert torch.equal(head.bias[ids].detach(), torch.zeros(5)) and torch.equal(head.bias[:1407].detach(), bias0)
    # not the existing rows' statistics: those have another spread than 0.02 in this trained model
    assert abs(float(head0.std()) - 0.02) > 0.005


@pytest.mark.parametrize("init", ["quark", "alt"])
def test_token_init_same_seed_same_rows(world, init):
    a, _, ids, _ = fresh_policy(world, init, seed=5)
    b, _, _, _ = fresh_policy(world, init, seed=5)
    c, _, _, _ = fresh_policy(world, init, seed=6)
    for get in (lambda m: m.get_input_embeddings().weight, lambda m: m.get_output_embeddings().weight):
        assert torch.equal(get(a)[ids], get(b)[ids]) and not torch.equal(get(a)[ids], get(c)[ids])


def test_an_unknown_token_init_is_one_error(world):
    with pytest.raises(QuarkError, match="token init must be one of \\['quark', 'alt'\\].*'mean'"):
        fresh_policy(world, "mean")
    import quarklab as ql
    with pytest.raises(QuarkError, match="token_init"):
        ql.QuarkConfig(token_init="mean")
