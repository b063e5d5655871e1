"""quarklab.compare: tokens 0..K-1 side by side on the tiny world's SFT GPT-J with quantile tokens added."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import quarklab as ql
from quarklab.compare import compare_tokens
from quarklab.tokens import quantile_token, quantile_token_ids

from tables import NEW


def test_quantile_token_ids_detects_k(quark):
    k, _, tokenizer = quark
    ids = quantile_token_ids(tokenizer)
    assert ids == tokenizer.convert_tokens_to_ids([quantile_token(i) for i in range(k)])
    assert quantile_token_ids(tokenizer, 2) == ids[:2]
    with pytest.raises(ql.QuarkError, match="holds only"):
        quantile_token_ids(tokenizer, k + 1)


def test_tokenizer_without_tokens_is_an_error(sft, prompts, reward):
    model, tokenizer = sft
    with pytest.raises(ql.QuarkError, match="no quantile tokens.*quarklab train.*ALT-Quark"):
        quantile_token_ids(tokenizer)
    with pytest.raises(ql.QuarkError, match="no quantile tokens"):
        compare_tokens(model, tokenizer, prompts, reward, max_new_tokens=NEW)


def test_table_shape_and_values(quark, greedy_table, prompts):
    k, _, _ = quark
    df = greedy_table
    assert len(df) == len(prompts) * (k + 1)
    for col in ["prompt_id", "prompt", "column", "token", "completion", "reward", "perplexity", "length", "finished"]:
        assert col in df.columns
    expected_columns = [f"token {i}" for i in range(k)] + ["reference"]
    assert df["column"].tolist() == expected_columns * len(prompts)
    assert df["prompt_id"].tolist() == [p for p in prompts["prompt_id"] for _ in range(k + 1)]
    assert np.isfinite(df["reward"]).all()
    assert (df["perplexity"] >= 1).all() and np.isfinite(df["perplexity"]).all()
    assert (df["length"] >= 0).all() and (df["length"] <= NEW).all()
    assert df["token"].dtype == "Int64"  # the one token form: the quantile index, <NA> for no token
    ref = df[df["column"] == "reference"]
    assert ref["token"].isna().all()
    assert (ref["source"] == "reference").all()
    conditioned = df[df["column"] != "reference"]
    assert conditioned["token"].tolist() == list(range(k)) * len(prompts)


def test_no_reference_uses_the_policy_without_token(quark, prompts, reward):
    k, policy, tokenizer = quark
    df = compare_tokens(policy, tokenizer, prompts.head(1), reward, max_new_tokens=NEW)
    assert df["column"].tolist() == [f"token {i}" for i in range(k)] + ["policy, no token"]
    assert pd.isna(df["token"].iloc[-1])
    assert (df["perplexity"] >= 1).all()


def test_seeded_sampling_is_deterministic_and_greedy_ignores_seed(quark, sft, prompts, reward):
    k, policy, tokenizer = quark
    kw = dict(reference=sft[0], max_new_tokens=NEW)
    a = compare_tokens(policy, tokenizer, prompts, reward, do_sample=True, temperature=1.0, top_p=0.95, seed=3, **kw)
    b = compare_tokens(policy, tokenizer, prompts, reward, do_sample=True, temperature=1.0, top_p=0.95, seed=3, **kw)
    pd.testing.assert_frame_equal(a, b)
    g1 = compare_tokens(policy, tokenizer, prompts, reward, seed=1, **kw)
    g2 = compare_tokens(policy, tokenizer, prompts, reward, seed=2, **kw)
    pd.testing.assert_frame_equal(g1, g2)


def test_saved_checkpoint_works_unchanged(quark, sft, prompts, reward, greedy_table, tmp_path_factory):
    k, policy, tokenizer = quark
    folder = tmp_path_factory.mktemp(f"ckpt_k{k}")
    policy.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    loaded, loaded_tok = ql.load_policy(folder), ql.load_tokenizer(folder)
    assert quantile_token_ids(loaded_tok) == quantile_token_ids(tokenizer)
    df = compare_tokens(loaded, loaded_tok, prompts, reward, reference=sft[0], max_new_tokens=NEW)
    assert df["column"].nunique() == k + 1
    pd.testing.assert_frame_equal(df, greedy_table)


def test_prompts_as_list_of_str(quark, prompts, reward):
    k, policy, tokenizer = quark
    df = compare_tokens(policy, tokenizer, prompts["prompt"].tolist()[:2], reward, num_quantiles=2,
                        max_new_tokens=NEW)
    assert df["prompt_id"].tolist() == [0, 0, 0, 1, 1, 1]
    assert df["column"].tolist()[:3] == ["token 0", "token 1", "policy, no token"]


def test_bad_reward_output_is_a_quark_error(quark, prompts):
    k, policy, tokenizer = quark
    with pytest.raises(ql.QuarkError, match="non-finite"):
        compare_tokens(policy, tokenizer, prompts.head(1), lambda p, c: [float("nan")] * len(c), max_new_tokens=NEW)


def test_separate_reference_tokenizer(quark, sft, prompts, reward, greedy_table, world):
    k, policy, tokenizer = quark
    ref_tokenizer = ql.load_tokenizer(world.policy)  # the SFT tokenizer, without the quantile tokens
    df = compare_tokens(policy, tokenizer, prompts, reward, reference=sft[0], reference_tokenizer=ref_tokenizer,
                        max_new_tokens=NEW)
    pd.testing.assert_frame_equal(df, greedy_table)
