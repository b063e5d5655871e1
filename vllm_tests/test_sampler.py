"""VLLMSampler against quarklab.sample (transformers) on the tiny world's SFT GPT-J, and its engine's life."""

from __future__ import annotations

from collections import Counter

import pytest

import quarklab as ql
from quarklab import QuarkError
from quarklab.vllm_backend import VLLMSampler

from engines import engine_processes

PROMPTS = 64  # of the tiny world's test split
GREEDY = ql.SamplingParams(do_sample=False, max_new_tokens=32, batch_size=64)


@pytest.fixture(scope="module")
def prompts(world):
    return ql.load_prompts(world.data_file("test")).head(PROMPTS)


@pytest.fixture(scope="module")
def hf(world):
    return ql.load_policy(world.policy, dtype="float32"), ql.load_tokenizer(world.policy)


@pytest.fixture(scope="module")
def engine(world):
    """One fp32 engine on the SFT model for the module, stopped after it."""
    with VLLMSampler(world.policy, dtype="float32", seed=0) as sampler:
        yield sampler


def _ids(table):
    return table.sort_values(["prompt_id", "sample"])["completion_ids"].map(list).tolist()


def test_greedy_completions_equal_the_transformers_samplers_token_for_token(engine, hf, prompts):
    want = ql.sample(*hf, prompts, GREEDY)
    got = engine.sample(prompts, GREEDY)
    assert len(got) == len(want) == PROMPTS
    assert _ids(got) == _ids(want)  # every prompt, every token
    assert got["completion"].tolist() == want["completion"].tolist()
    assert got["finished"].tolist() == want["finished"].tolist()
    assert got["prompt_ids"].map(list).tolist() == want["prompt_ids"].map(list).tolist()  # cut the same way
    assert got["num_tokens"].tolist() == want["num_tokens"].tolist()
    assert got["finished"].any() and got["num_tokens"].sum() > PROMPTS * 8  # real text, ended and unended


def test_suppressed_ids_are_never_generated_and_those_the_model_lacks_are_left_out(engine, hf, prompts):
    # the quantile tokens a run adds lie past the SFT model's vocabulary (iteration 1 samples that model)
    vocab = engine.config.get_vocab_size()
    quantile_ids = [vocab, vocab + 1, vocab + 2]
    common = Counter(t for ids in _ids(engine.sample(prompts, GREEDY)) for t in ids).most_common(1)[0][0]
    want = ql.sample(*hf, prompts, GREEDY, suppress=[common, *quantile_ids])
    got = engine.sample(prompts, GREEDY, suppress=[common, *quantile_ids])
    assert all(common not in ids for ids in _ids(got))
    assert _ids(got) == _ids(want)


def test_the_same_seed_gives_the_same_samples_and_another_seed_others(engine, prompts):
    params = ql.SamplingParams(n=4, temperature=0.9, top_p=0.9, max_new_tokens=24, seed=7)
    first = engine.sample(prompts.head(8), params)
    assert _ids(first) == _ids(engine.sample(prompts.head(8), params))
    assert _ids(first) != _ids(engine.sample(prompts.head(8), params, seed=8))
    assert first.groupby("prompt_id")["sample"].nunique().eq(4).all()


def test_close_stops_the_engine_processes_and_is_idempotent(world, prompts):
    before = {p.pid for p in engine_processes()}  # the module's engine may be running: count this sampler's own
    sampler = VLLMSampler(world.policy, dtype="float32")
    mine = [p for p in engine_processes() if p.pid not in before]
    assert mine, "no vLLM engine process started"
    assert len(sampler.sample(prompts.head(2), GREEDY)) == 2
    sampler.close()
    assert not [p for p in mine if p.is_running() and p.status() != "zombie"]
    assert {p.pid for p in engine_processes()} == before
    sampler.close()  # a second close does nothing
    with pytest.raises(QuarkError, match="closed"):
        sampler.sample(prompts.head(1), GREEDY)


def test_a_folder_vllm_cannot_load_is_one_error_naming_it_with_the_cause_chained(tmp_path):
    folder = tmp_path / "not-a-model"
    folder.mkdir()
    (folder / "config.json").write_text('{"model_type": "no-such-architecture"}')
    before = {p.pid for p in engine_processes()}
    with pytest.raises(QuarkError) as info:
        VLLMSampler(folder, dtype="float32")
    msg = str(info.value)
    # vLLM's own reason in one line, not "(ValidationError: 1 validation error for ModelConfig)"
    assert msg.startswith(f"vLLM could not load {str(folder)!r} (ValidationError: Value error, The checkpoint "
                          "you are trying to load has model type `no-such-architecture`")
    assert "\n" not in msg and msg.endswith(")")
    assert info.value.__cause__ is not None and "validation error for ModelConfig" in str(info.value.__cause__)
    assert {p.pid for p in engine_processes()} == before  # nothing left running
