"""The sampler: batching and padding change nothing, prompts too long are cut, never dropped."""

from __future__ import annotations

import pytest

import quarklab as ql
from quarklab.tldr import encode_prompt, prompt_budget


def test_batched_greedy_equals_one_at_a_time(sft):
    model, tokenizer = sft
    prompts = ql.load_prompts("tiny-tldr", "test", limit=6)
    batched = ql.sample(model, tokenizer, prompts, do_sample=False, batch_size=6)
    alone = [ql.sample(model, tokenizer, [p], do_sample=False)["completion"][0] for p in prompts["prompt"]]
    assert batched["completion"].tolist() == alone
    assert batched["prompt_id"].tolist() == prompts["prompt_id"].tolist()


def test_n_samples_per_prompt_are_seeded_and_keep_duplicates(sft):
    model, tokenizer = sft
    prompts = ql.load_prompts("tiny-tldr", "test", limit=2)
    dup = [prompts["prompt"][0], prompts["prompt"][1], prompts["prompt"][0]]
    a = ql.sample(model, tokenizer, dup, n=4, seed=1, max_new_tokens=24)
    b = ql.sample(model, tokenizer, dup, n=4, seed=1, max_new_tokens=24)
    c = ql.sample(model, tokenizer, dup, n=4, seed=2, max_new_tokens=24)
    assert len(a) == 12 and a["prompt_id"].tolist() == [0] * 4 + [1] * 4 + [2] * 4
    assert a["completion"].tolist() == b["completion"].tolist()
    assert a["completion"].tolist() != c["completion"].tolist()
    assert a["completion"].nunique() > 3
    unfinished = a[~a["finished"]]
    assert (unfinished["num_tokens"] == 24).all()
    assert (a["num_tokens"] == a["completion_ids"].map(len)).all()


def test_long_real_prompts_are_cut_from_the_post_keeping_head_and_tail(sft, real_tldr):
    model, tokenizer = sft
    longest = real_tldr.loc[real_tldr["prompt"].str.len().idxmax(), "prompt"]
    ids, cut = encode_prompt(tokenizer, longest, 120)
    text = tokenizer.decode(ids)
    assert cut and len(ids) <= 120
    assert text.startswith(longest.split("\nPOST:")[0]) and text.endswith("\nTL;DR:")
    assert longest.split("\nTL;DR:")[0].endswith(text.split("POST:")[1].split("\nTL;DR:")[0])
    head_only, cut = encode_prompt(tokenizer, longest, 12)
    assert cut and len(head_only) <= 12 and tokenizer.decode(head_only).endswith("TL;DR:")
    out = ql.sample(model, tokenizer, real_tldr.head(8), do_sample=False, max_new_tokens=16)
    assert len(out) == 8 and out["prompt_truncated"].any()


def test_samples_carry_the_prompt_as_encoded_and_cut_without_the_token(sft, real_tldr):
    model, tokenizer = sft
    rows = real_tldr.loc[real_tldr["prompt"].str.len().nlargest(2).index.tolist() + [0]]
    out = ql.sample(model, tokenizer, rows, n=2, max_new_tokens=16)
    budget = prompt_budget(model, 16)
    assert budget == model.config.n_positions - 16 - 1
    for prompt, ids, cut in zip(out["prompt"], out["prompt_ids"], out["prompt_truncated"]):
        assert list(ids) == encode_prompt(tokenizer, prompt, budget)[0]
        assert cut == (len(tokenizer(prompt)["input_ids"]) > budget)
    assert out["prompt_truncated"].sum() == 4 and not out["prompt_truncated"].all()
    assert tokenizer.decode(out["prompt_ids"][0]).endswith("\nTL;DR:")
    eos = tokenizer.eos_token_id  # any id as the prefix: the stored prompt never includes it
    prefixed = ql.sample(model, tokenizer, rows, n=2, max_new_tokens=16, prefix_token_id=eos, token=0)
    assert prefixed["prompt_ids"].tolist() == out["prompt_ids"].tolist()


def test_bad_sampling_parameters_are_clear_errors(sft):
    model, tokenizer = sft
    with pytest.raises(ql.QuarkError, match="n .samples per prompt"):
        ql.sample(model, tokenizer, ["x"], n=0)
    with pytest.raises(ql.QuarkError, match="top_p"):
        ql.sample(model, tokenizer, ["x"], top_p=0)
    with pytest.raises(ql.QuarkError, match="lower max_new_tokens"):
        ql.sample(model, tokenizer, ["x" * 3000 + "\nTL;DR:"], max_new_tokens=510)


def test_sampling_params_from_config_and_checked_as_the_config_fields_they_come_from():
    from quarklab.config import preset
    from quarklab.sampling import SamplingParams

    c = preset("tiny", top_k=5, eval_sampled_n=3)
    assert SamplingParams.from_config(c, seed=7) == SamplingParams(
        n=16, do_sample=True, temperature=0.9, top_p=0.9, top_k=5, max_new_tokens=48, batch_size=128, seed=7)
    assert SamplingParams.from_config(c, "greedy") == SamplingParams(do_sample=False, max_new_tokens=48,
                                                                     batch_size=96)
    assert SamplingParams.from_config(c, "sampled", seed=4) == SamplingParams(
        n=3, temperature=0.9, top_p=0.9, top_k=5, max_new_tokens=48, batch_size=96, seed=4)
    with pytest.raises(ql.QuarkError, match="purpose must be one of 'explore', 'greedy', 'sampled'"):
        SamplingParams.from_config(c, "train")
    # the config's rules and wording, under the name the value has here
    with pytest.raises(ql.QuarkError, match=r"^sampling: top_p must be a number in \(0, 1\], got 1.5$"):
        SamplingParams(top_p=1.5)
    with pytest.raises(ql.QuarkError, match=r"^sampling: temperature must be a number > 0, got 0$"):
        SamplingParams(temperature=0)
    assert SamplingParams(do_sample=False, temperature=0).temperature == 0  # greedy decoding has none
    with pytest.raises(ql.QuarkError, match=r"batch_size \(sequences per generate call\) must be an integer >= 1"):
        SamplingParams(batch_size=0)
    with pytest.raises(ql.QuarkError, match="max_new_tokens must be an integer >= 1"):
        SamplingParams(max_new_tokens=2.5)


def test_the_samples_table_is_assembled_from_encoded_prompts_and_completions(sft):
    """The one table path both samplers (transformers and vLLM) share: rows in prompt order, then sample."""
    from quarklab.sampling import COLUMNS, before_eos, encode_prompts, samples_table

    model, tokenizer = sft
    prompts = ql.load_prompts("tiny-tldr", "test", limit=2)
    enc = encode_prompts(tokenizer, prompts, model, 16)
    assert enc.texts == prompts["prompt"].tolist() and enc.ids == prompts["prompt_id"].tolist()
    assert enc.encoded == [encode_prompt(tokenizer, t, prompt_budget(model, 16)) for t in enc.texts]
    eos = tokenizer.eos_token_id
    assert before_eos([5, 6, eos, 7], eos) == [5, 6] and before_eos([5, 6], eos) == [5, 6]
    table = samples_table(enc, [[([5, 6], True)], [([7], False)]], 2, tokenizer)
    assert list(table.columns) == COLUMNS
    assert table["prompt_id"].tolist() == enc.ids and table["sample"].tolist() == [0, 0]
    assert table["token"].tolist() == [2, 2] and table["finished"].tolist() == [True, False]
    assert table["num_tokens"].tolist() == [2, 1] and table["completion"][1] == tokenizer.decode([7])
    assert table["prompt_ids"].tolist() == [e[0] for e in enc.encoded]
