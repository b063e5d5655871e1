"""Model rewards on tiny, locally built models: sequence classifiers and value-head reward models."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from tokenizers import Tokenizer, decoders, pre_tokenizers, trainers
from tokenizers.models import BPE
from transformers import (GPT2Config, GPT2ForSequenceClassification, GPT2LMHeadModel, GPTJConfig,
                          GPTJForCausalLM, PreTrainedTokenizerFast)

from quarklab.errors import QuarkError
from quarklab.reward_models import ValueHeadReward, guess_kind, save_value_head_model
from quarklab.rewards import CheckedReward, load_reward

EOS = "<|endoftext|>"
CORPUS = [
    "my cat sat on the mat all day and would not move for anyone",
    "the movie was great, I loved every minute of it",
    "the food was terrible and the service was slow",
    "SUBREDDIT: r/relationships TITLE: my friend never calls back POST: what should I do",
    "TL;DR: friend ignores me, not sure why",
]
PROMPTS = [
    "SUBREDDIT: r/cats\nPOST: my cat sat on the mat all day and would not move\nTL;DR:",
    "POST: the food was terrible\nTL;DR:",
    "POST: I loved the movie, the movie was great, every minute of it was great\nTL;DR:",
]
COMPLETIONS = [" cat sat on the mat", "  bad food and slow service, would not go back", "great movie"]
LONG_PROMPT = "POST: " + " ".join(CORPUS * 3) + "\nTL;DR:"


class Evil:
    """A custom class: a pickled instance must not be loaded."""


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory) -> PreTrainedTokenizerFast:
    """A byte-level BPE trained on a few sentences, with an eos but no pad token."""
    tok = Tokenizer(BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(CORPUS + PROMPTS + COMPLETIONS, trainers.BpeTrainer(
        vocab_size=400, special_tokens=[EOS], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS, bos_token=EOS)


def _ids(tokenizer, text: str) -> torch.Tensor:
    return torch.tensor([tokenizer(text)["input_ids"]])


# ---------------------------------------------------------------- sequence classifier

@pytest.fixture(scope="module")
def classifier(tokenizer, tmp_path_factory) -> tuple[Path, GPT2ForSequenceClassification]:
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=len(tokenizer), n_embd=32, n_layer=2, n_head=2, n_positions=64,
                        num_labels=2, id2label={0: "NEGATIVE", 1: "POSITIVE"},
                        label2id={"NEGATIVE": 0, "POSITIVE": 1})
    model = GPT2ForSequenceClassification(config).eval()
    folder = tmp_path_factory.mktemp("classifier")
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder, model


def _logits_alone(model, tokenizer, texts: list[str]) -> np.ndarray:
    with torch.no_grad():
        return np.stack([model(_ids(tokenizer, t)).logits[0].double().numpy() for t in texts])


def test_classifier_autodetected_and_matches_model_row_by_row(classifier, tokenizer):
    folder, model = classifier
    assert guess_kind(folder) == "seq-classification"
    reward = load_reward(folder, device="cpu")
    assert isinstance(reward, CheckedReward)
    scores = reward(PROMPTS, COMPLETIONS)
    assert scores.shape == (3,) and scores.dtype == np.float64 and np.isfinite(scores).all()
    expected = _logits_alone(model, tokenizer, COMPLETIONS)[:, 1]  # the template is "{completion}"
    np.testing.assert_allclose(scores, expected, rtol=1e-5, atol=1e-5)
    alone = np.concatenate([reward([p], [c]) for p, c in zip(PROMPTS, COMPLETIONS)])
    np.testing.assert_allclose(scores, alone, rtol=1e-5, atol=1e-5)
    small_batches = load_reward(folder, device="cpu", batch_size=2)(PROMPTS, COMPLETIONS)
    np.testing.assert_allclose(small_batches, scores, rtol=1e-5, atol=1e-5)


def test_classifier_labels_scores_and_template(classifier, tokenizer):
    folder, model = classifier
    logits = _logits_alone(model, tokenizer, COMPLETIONS)
    by_name = load_reward(folder, label="negative", device="cpu")(PROMPTS, COMPLETIONS)
    by_index = load_reward(folder, label=0, device="cpu")(PROMPTS, COMPLETIONS)
    np.testing.assert_allclose(by_name, logits[:, 0], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(by_index, logits[:, 0], rtol=1e-5, atol=1e-5)

    prob = load_reward(folder, score="prob", device="cpu")(PROMPTS, COMPLETIONS)
    softmax = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    assert ((prob > 0) & (prob < 1)).all()
    np.testing.assert_allclose(prob, softmax[:, 1], rtol=1e-5, atol=1e-6)
    logprob = load_reward(folder, score="logprob", device="cpu")(PROMPTS, COMPLETIONS)
    np.testing.assert_allclose(logprob, np.log(softmax[:, 1]), rtol=1e-5, atol=1e-5)

    templated = load_reward(folder, template="{prompt} {completion}", device="cpu")(PROMPTS, COMPLETIONS)
    texts = [f"{p} {c}" for p, c in zip(PROMPTS, COMPLETIONS)]
    np.testing.assert_allclose(templated, _logits_alone(model, tokenizer, texts)[:, 1], rtol=1e-5, atol=1e-5)


def test_classifier_empty_completion_scores_a_lone_eos(classifier, tokenizer):
    folder, model = classifier
    scores = load_reward(folder, device="cpu")(PROMPTS[:2], ["", COMPLETIONS[1]])
    with torch.no_grad():
        eos_logit = model(torch.tensor([[tokenizer.eos_token_id]])).logits[0, 1].item()
    assert scores[0] == pytest.approx(eos_logit, abs=1e-5)
    assert scores[1] == pytest.approx(_logits_alone(model, tokenizer, COMPLETIONS[1:2])[0, 1], abs=1e-5)


@pytest.mark.parametrize("kwargs, match", [
    (dict(label="neutral"), r"NEGATIVE.*POSITIVE"),
    (dict(label=2), "out of range"),
    (dict(score="bogus"), "unknown score"),
    (dict(template="{post} {completion}"), "bad reward template"),
])
def test_classifier_bad_options(classifier, kwargs, match):
    with pytest.raises(QuarkError, match=match):
        load_reward(classifier[0], device="cpu", **kwargs)


# ---------------------------------------------------------------- value-head reward models

def _backbone(kind: str, vocab_size: int):
    torch.manual_seed(1 if kind == "gpt2" else 2)
    if kind == "gpt2":
        return GPT2LMHeadModel(GPT2Config(vocab_size=vocab_size, n_embd=32, n_layer=2, n_head=2,
                                          n_positions=64)).eval()
    return GPTJForCausalLM(GPTJConfig(vocab_size=vocab_size, n_embd=32, n_layer=2, n_head=4, rotary_dim=8,
                                      n_positions=128)).eval()


@pytest.fixture(scope="module", params=["gpt2", "gptj"])
def value_head(request, tokenizer, tmp_path_factory) -> tuple[Path, torch.nn.Module, torch.Tensor]:
    """``(folder, causal LM, v_head weight)`` saved in quarklab's layout."""
    lm = _backbone(request.param, len(tokenizer))
    weight = torch.randn(1, 32)
    folder = save_value_head_model(lm, tokenizer, weight, tmp_path_factory.mktemp(f"rm-{request.param}"))
    return folder, lm, weight


def _values_alone(lm, weight, tokenizer, texts: list[str]) -> np.ndarray:
    with torch.no_grad():
        return np.array([(lm.base_model(_ids(tokenizer, t)).last_hidden_state[0, -1] @ weight[0]).item()
                         for t in texts])


def test_value_head_folder_autodetected_and_matches_by_hand(value_head, tokenizer):
    folder, lm, weight = value_head
    assert guess_kind(folder) == "value-head"
    reward = load_reward(folder, device="cpu")
    scores = reward(PROMPTS, COMPLETIONS)
    assert scores.shape == (3,) and scores.dtype == np.float64 and np.isfinite(scores).all()
    texts = [f"{p} {c.lstrip()}" for p, c in zip(PROMPTS, COMPLETIONS)]
    np.testing.assert_allclose(scores, _values_alone(lm, weight, tokenizer, texts), rtol=1e-5, atol=1e-5)
    alone = np.concatenate([reward([p], [c]) for p, c in zip(PROMPTS, COMPLETIONS)])
    np.testing.assert_allclose(scores, alone, rtol=1e-5, atol=1e-5)


def test_value_head_truncates_from_the_left(value_head, tokenizer):
    folder, lm, weight = value_head
    reward = ValueHeadReward(folder, device="cpu")
    ids = tokenizer(f"{LONG_PROMPT} {COMPLETIONS[0].lstrip()}")["input_ids"]
    assert len(ids) > reward.max_length == lm.config.n_positions
    kept = tokenizer.decode(ids[-reward.max_length:])
    score = reward([LONG_PROMPT, PROMPTS[1]], [COMPLETIONS[0], COMPLETIONS[1]])[0]
    with torch.no_grad():
        expected = (lm.base_model(torch.tensor([ids[-reward.max_length:]])).last_hidden_state[0, -1]
                    @ weight[0]).item()
    assert kept.endswith(COMPLETIONS[0].lstrip())
    assert score == pytest.approx(expected, abs=1e-5)


@pytest.fixture(scope="module")
def gpt2_parts(tokenizer, tmp_path_factory) -> tuple[Path, Path, GPT2LMHeadModel, torch.Tensor]:
    """``(value-head folder, plain causal-LM folder, LM, v_head weight)`` for one GPT-2 backbone."""
    lm = _backbone("gpt2", len(tokenizer))
    head = torch.nn.Linear(32, 1, bias=False)
    weight = head.weight.detach().clone()
    rm_dir = save_value_head_model(lm, tokenizer, head, tmp_path_factory.mktemp("rm"))
    lm_dir = tmp_path_factory.mktemp("sft")
    lm.save_pretrained(lm_dir)
    tokenizer.save_pretrained(lm_dir)
    return rm_dir, lm_dir, lm, weight


def _carper_state(lm) -> dict[str, torch.Tensor]:
    return {f"transformer.{k}": v.clone() for k, v in lm.transformer.state_dict().items()}


@pytest.mark.parametrize("suffix", [".bin", ".safetensors"])
def test_carperai_state_dict_matches_folder_layout(gpt2_parts, tmp_path, suffix):
    rm_dir, lm_dir, lm, weight = gpt2_parts
    path = tmp_path / f"pytorch_model{suffix}"
    state = {**_carper_state(lm), "v_head.weight": weight.clone()}
    if suffix == ".bin":
        torch.save(state, path)
    else:
        save_file(state, str(path))
    assert guess_kind(path) == "value-head"
    from_file = load_reward(path, base_model=lm_dir, device="cpu")(PROMPTS, COMPLETIONS)
    from_folder = load_reward(rm_dir, device="cpu")(PROMPTS, COMPLETIONS)
    np.testing.assert_allclose(from_file, from_folder, rtol=1e-6, atol=1e-6)


def test_carperai_state_dict_errors(gpt2_parts, tmp_path):
    _, lm_dir, lm, weight = gpt2_parts
    evil = tmp_path / "evil.bin"
    torch.save({"v_head.weight": weight, "evil": Evil()}, evil)
    with pytest.raises(QuarkError, match="only files holding nothing but tensors"):
        load_reward(evil, base_model=lm_dir, device="cpu")

    no_head = tmp_path / "no_head.pt"
    torch.save(_carper_state(lm), no_head)
    with pytest.raises(QuarkError, match="has no 'v_head.weight'"):
        load_reward(no_head, base_model=lm_dir, device="cpu")

    state = _carper_state(lm)
    del state["transformer.wpe.weight"]
    state["transformer.extra.weight"] = torch.zeros(2)
    wrong_keys = tmp_path / "wrong_keys.pth"
    torch.save({**state, "v_head.weight": weight}, wrong_keys)
    with pytest.raises(QuarkError, match=r"1 missing keys \['wpe.weight'\], 1 unexpected keys \['extra.weight'\]"):
        load_reward(wrong_keys, base_model=lm_dir, device="cpu")

    good = tmp_path / "good.bin"
    torch.save({**_carper_state(lm), "v_head.weight": weight}, good)
    with pytest.raises(QuarkError, match="needs base_model"):
        load_reward(good, device="cpu")
    torch.save({**_carper_state(lm), "v_head.weight": torch.zeros(2, 32)}, good)
    with pytest.raises(QuarkError, match=r"expected \(1, 32\)"):
        load_reward(good, base_model=lm_dir, device="cpu")


# ---------------------------------------------------------------- guess_kind

def test_guess_kind_needs_a_known_layout(gpt2_parts, tmp_path):
    lm_dir = gpt2_parts[1]
    assert guess_kind("carper/rm_checkpoint.bin") == "value-head"
    with pytest.raises(QuarkError, match="pass kind="):
        guess_kind(lm_dir)
    with pytest.raises(QuarkError, match="pass kind="):
        load_reward(lm_dir)
    with pytest.raises(QuarkError, match="does not exist"):
        guess_kind("./nope")
    with pytest.raises(QuarkError, match="local folder"):
        guess_kind(tmp_path)
    with pytest.raises(QuarkError, match="no v_head.safetensors"):
        load_reward(lm_dir, kind="value-head", device="cpu")
