"""quarklab.compare: tokens 0..K-1 side by side on the tiny world's SFT GPT-J with quantile tokens added."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest
from matplotlib import colormaps
from matplotlib.colors import to_hex

import quarklab as ql
from quarklab.compare import compare_tokens
from quarklab.present.html import comparison_html, fmt_number
from quarklab.tldr import shorten as shorten_prompt
from quarklab.tokens import add_quantile_tokens, quantile_token, quantile_token_ids

NEW = 12  # max_new_tokens: keep the tests fast


@pytest.fixture(scope="module")
def prompts(world):
    return ql.load_prompts("tiny-tldr", "test", limit=3)


@pytest.fixture(scope="module")
def reward():
    return ql.load_reward("tiny-tldr")


@pytest.fixture(scope="module", params=[3, 5])
def quark(request, world):
    """(K, policy, tokenizer): a fresh copy of the SFT model with K quantile tokens (the shared sft stays untouched)."""
    k = request.param
    policy, tokenizer = ql.load_policy(world.policy), ql.load_tokenizer(world.policy)
    add_quantile_tokens(policy, tokenizer, k)
    return k, policy, tokenizer


@pytest.fixture(scope="module")
def greedy_table(quark, sft, prompts, reward):
    k, policy, tokenizer = quark
    return compare_tokens(policy, tokenizer, prompts, reward, reference=sft[0], max_new_tokens=NEW)


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


def test_comparison_html(quark, greedy_table):
    k, _, _ = quark
    df = greedy_table.copy()
    evil = "SUBREDDIT: r/test\nTITLE: <script>alert('x')</script> & co\nPOST: " + "word " * 400 + "\nTL;DR:"
    df.loc[df["prompt_id"] == df["prompt_id"].iloc[0], "prompt"] = evil
    df.loc[0, "completion"] = " <b>bold</b> <script>bad()</script>"
    page = comparison_html(df)
    assert "<script>" not in page and "&lt;script&gt;" in page
    assert "&lt;b&gt;bold&lt;/b&gt;" in page
    assert '<style>' in page and "quarklab-compare" in page and "<caption>" in page
    headers = re.findall(r"<th scope=\"col\"[^>]*>(.*?)</th>", page)
    assert len(headers) == k + 2  # the prompt column, K tokens, the reference
    assert headers[0] == "prompt"
    assert [h.split("<span")[0] for h in headers[1:]] == [f"token {i}" for i in range(k)] + ["reference"]
    # one row per prompt; the long post shortened in the middle, TITLE and TL;DR: kept
    assert page.count("<tr>") == 1 + df["prompt_id"].nunique()
    assert "TITLE: &lt;script&gt;" in page and "…" in page and "TL;DR:</td>" in page
    # the reward, perplexity and length shown are the table's, to 3 significant digits
    for _, row in greedy_table.iterrows():
        assert f"reward\u00a0{fmt_number(row['reward'])}" in page
        assert f'ppl\u00a0{fmt_number(row["perplexity"])}</span>\u00a0· <span class="part">{row["length"]}\u00a0tok' in page
    # rewards coloured on matplotlib's viridis over the table (dark = lowest, yellow = highest), readable text
    lo, hi = greedy_table["reward"].min(), greedy_table["reward"].max()
    for _, row in greedy_table.iterrows():
        x = 0.5 if hi <= lo else (row["reward"] - lo) / (hi - lo)
        assert f'style="background:{to_hex(colormaps["viridis"](x))};color:' in page
    if hi > lo:
        assert f'background:#fde725;color:#000">reward\u00a0{fmt_number(hi)}' in page  # yellow, black text
        assert f'background:#440154;color:#fff">reward\u00a0{fmt_number(lo)}' in page  # dark purple, white text


def test_shorten_prompt_keeps_head_and_tail():
    post = "SUBREDDIT: r/a\nTITLE: A title\nPOST: " + " ".join(f"w{i}" for i in range(500)) + "\nTL;DR:"
    short = shorten_prompt(post, 200)
    assert short.startswith("SUBREDDIT: r/a\nTITLE: A title\nPOST:") and short.endswith("\nTL;DR:")
    assert "…" in short and "w0" in short and "w499" in short and len(short) < 260
    assert shorten_prompt("short\nTL;DR:", 200) == "short\nTL;DR:"


def test_comparison_html_rejects_other_tables():
    with pytest.raises(ql.QuarkError, match="lacks the columns"):
        comparison_html(pd.DataFrame({"prompt": ["x"]}))


def test_separate_reference_tokenizer(quark, sft, prompts, reward, greedy_table, world):
    k, policy, tokenizer = quark
    ref_tokenizer = ql.load_tokenizer(world.policy)  # the SFT tokenizer, without the quantile tokens
    df = compare_tokens(policy, tokenizer, prompts, reward, reference=sft[0], reference_tokenizer=ref_tokenizer,
                        max_new_tokens=NEW)
    pd.testing.assert_frame_equal(df, greedy_table)


def test_perplexity_is_scored_given_the_samples_prompt_ids(sft, prompts):
    from quarklab.evaluate import reference_perplexity

    model, tokenizer = sft
    samples = ql.sample(model, tokenizer, prompts, do_sample=False, max_new_tokens=NEW)
    ppl = reference_perplexity(model, tokenizer, samples)
    assert (ppl >= 1).all()
    np.testing.assert_array_equal(reference_perplexity(model, tokenizer, samples.assign(prompt="x\nTL;DR:")), ppl)
    tail_only = samples.assign(prompt_ids=[ids[-3:] for ids in samples["prompt_ids"]])
    assert not np.allclose(reference_perplexity(model, tokenizer, tail_only), ppl)
    with pytest.raises(ql.QuarkError, match="prompt_ids"):
        reference_perplexity(model, tokenizer, samples.drop(columns="prompt_ids"))


def test_perplexity_as_alt_scores_the_retokenized_text_without_eos(sft, prompts):
    """ALT's alt/perplexity.py: the completion's text tokenized again, no EOS, exp(mean NLL) per sample."""
    import torch

    from quarklab.evaluate import reference_perplexity

    model, tokenizer = sft
    samples = ql.sample(model, tokenizer, prompts, do_sample=False, max_new_tokens=NEW)
    assert samples["finished"].any()
    alt = reference_perplexity(model, tokenizer, samples)
    with_eos = reference_perplexity(model, tokenizer, samples, mode="sampled-ids")
    for i, row in samples.iterrows():
        target = tokenizer(row["completion"], add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            logits = model(torch.tensor([list(row["prompt_ids"]) + target])).logits[0, -len(target) - 1:-1]
        nll = torch.nn.functional.cross_entropy(logits, torch.tensor(target))
        assert alt[i] == pytest.approx(nll.exp().item(), rel=1e-4)
    assert not np.allclose(alt[samples["finished"]], with_eos[samples["finished"]])  # EOS counted or not
    empty = samples.assign(completion="", completion_ids=[[]] * len(samples), finished=False)
    assert np.isnan(reference_perplexity(model, tokenizer, empty)).all()  # nothing to score: left out of means
