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

import quarklab as ql
from quarklab.errors import QuarkError
from quarklab.config import QuarkConfig
from quarklab.reward_models import CARPER_TEMPLATE, ValueHeadReward, format_texts, guess_kind
from quarklab.value_head_files import save_value_head_model
from quarklab.rewards import CheckedReward, load_reward
from quarklab.testing import carper_reward_model

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
LONG_PROMPT = "POST: " + " ".join(CORPUS + [f"x{i}" for i in range(300)]) + "\nTL;DR:"  # over 550 tokens


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
    (dict(template="{title} {completion}"), "bad reward template"),
    (dict(template="{post.upper} {completion}"), "bad reward template"),
    (dict(max_length=65), r"max_length \(at most the model's context\) must be an integer from 1 to 64"),
])
def test_classifier_bad_options(classifier, kwargs, match):
    with pytest.raises(QuarkError, match=match):
        load_reward(classifier[0], device="cpu", **kwargs)


def test_a_run_config_picks_the_classifier_label_by_reward_label(classifier, tokenizer):
    """reward_label (config) reaches the classifier: by name in any case or by index; None keeps the last label;
    a label the model does not have is one error listing its labels; --set reads an integer as an index."""
    from quarklab.rewards import config_reward

    folder, model = classifier
    logits = _logits_alone(model, tokenizer, COMPLETIONS)
    base = QuarkConfig(reward=str(folder), device="cpu", reward_dtype="float32", reward_precision="float64")
    for label, column in [(None, 1), ("negative", 0), ("POSITIVE", 1), (0, 0)]:
        scores = config_reward(base.replace(reward_label=label))(PROMPTS, COMPLETIONS)
        np.testing.assert_allclose(scores, logits[:, column], rtol=1e-5, atol=1e-5)
    assert base.with_overrides(["reward_label=0"]).reward_label == 0
    assert base.with_overrides(["reward_label=negative"]).reward_label == "negative"
    with pytest.raises(QuarkError, match=r"unknown label 'neutral': the classifier's labels are \['NEGATIVE', "
                                         r"'POSITIVE'\] \(by index: 0: 'NEGATIVE', 1: 'POSITIVE'\)"):
        config_reward(base.replace(reward_label="neutral"))
    with pytest.raises(QuarkError, match=r"label index 2 is out of range: the classifier has 2 labels \(0: "
                                         r"'NEGATIVE', 1: 'POSITIVE'\)"):
        config_reward(base.replace(reward_label=2))
    with pytest.raises(QuarkError, match="reward_label must be non-empty text or an integer, or None, got 1.5"):
        base.replace(reward_label=1.5)


# ---------------------------------------------------------------- value-head reward models

def _backbone(kind: str, vocab_size: int):
    torch.manual_seed(1 if kind == "gpt2" else 2)
    if kind == "gpt2":
        return GPT2LMHeadModel(GPT2Config(vocab_size=vocab_size, n_embd=32, n_layer=2, n_head=2,
                                          n_positions=64)).eval()
    return GPTJForCausalLM(GPTJConfig(vocab_size=vocab_size, n_embd=32, n_layer=2, n_head=4, rotary_dim=8,
                                      n_positions=1024)).eval()


@pytest.fixture(scope="module", params=["gpt2", "gptj"])
def value_head(request, tokenizer, tmp_path_factory) -> tuple[Path, torch.nn.Module, torch.Tensor]:
    """``(folder, causal LM, v_head weight)`` saved in quarklab's layout."""
    lm = _backbone(request.param, len(tokenizer))
    weight = torch.randn(1, 32)
    folder = save_value_head_model(lm, tokenizer, weight, tmp_path_factory.mktemp(f"rm-{request.param}"))
    return folder, lm, weight


def _alt_text(prompt: str, completion: str) -> str:
    """The text ALT's reward code builds, written with plain string operations."""
    sample = prompt + completion
    return ("<|startoftext|>" + sample.split("TL;DR:")[0].strip() + "\n" + "TL;DR: "
            + sample.split("TL;DR:")[1].strip() + "<|endoftext|>")


def _alt_scores(lm, weight, folder, texts: list[str], max_length: int = 550) -> np.ndarray:
    """CarperAI's forward by hand: pad to max_length with eos on the right, read before the first eos."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(folder)
    tok.pad_token, tok.padding_side = tok.eos_token, "right"
    enc = tok(texts, truncation=True, max_length=max_length, padding="max_length", return_tensors="pt")
    v_head = torch.nn.Linear(weight.shape[1], 1, bias=False)
    v_head.weight.data = weight.clone()
    with torch.no_grad():
        hidden = lm.transformer(enc["input_ids"], attention_mask=enc["attention_mask"])[0]
        rewards = v_head(hidden).squeeze(-1)
    pad_id = tok(tok.pad_token)["input_ids"][0]
    out = []
    for i in range(len(texts)):
        c_inds = (enc["input_ids"][i] == pad_id).nonzero()
        c_ind = c_inds[0].item() if len(c_inds) > 0 else enc["input_ids"].shape[1]
        out.append(rewards[i, c_ind - 1].item())
    return np.array(out)


def _values_alone(lm, weight, tokenizer, texts: list[str]) -> np.ndarray:
    """Each text alone, no padding: the value at the token before the first eos (or the last token)."""
    out = []
    with torch.no_grad():
        for t in texts:
            ids = tokenizer(t)["input_ids"]
            end = ids.index(tokenizer.eos_token_id) if tokenizer.eos_token_id in ids else len(ids)
            out.append((lm.base_model(torch.tensor([ids])).last_hidden_state[0, end - 1] @ weight[0]).item())
    return np.array(out)


def test_value_head_folder_autodetected_and_matches_by_hand(value_head, tokenizer):
    folder, lm, weight = value_head
    assert guess_kind(folder) == "value-head"
    reward = load_reward(folder, device="cpu")
    scores = reward(PROMPTS, COMPLETIONS)
    assert scores.shape == (3,) and scores.dtype == np.float64 and np.isfinite(scores).all()
    texts = [_alt_text(p, c) for p, c in zip(PROMPTS, COMPLETIONS)]
    np.testing.assert_allclose(scores, _values_alone(lm, weight, tokenizer, texts), rtol=1e-5, atol=1e-5)
    alone = np.concatenate([reward([p], [c]) for p, c in zip(PROMPTS, COMPLETIONS)])
    np.testing.assert_allclose(scores, alone, rtol=1e-5, atol=1e-5)


def test_value_head_template_without_eos_reads_the_last_token(value_head, tokenizer):
    folder, lm, weight = value_head
    scores = load_reward(folder, template="{prompt} {completion}", device="cpu")(PROMPTS, COMPLETIONS)
    texts = [f"{p} {c}" for p, c in zip(PROMPTS, COMPLETIONS)]  # {completion} is raw: its spaces stay
    np.testing.assert_allclose(scores, _values_alone(lm, weight, tokenizer, texts), rtol=1e-5, atol=1e-5)


def test_value_head_truncates_on_the_right(value_head, tokenizer):
    folder, lm, weight = value_head
    reward = ValueHeadReward(folder, device="cpu")
    assert reward.max_length == min(550, lm.config.n_positions)
    ids = tokenizer(_alt_text(LONG_PROMPT, COMPLETIONS[0]))["input_ids"]
    assert len(ids) > reward.max_length
    kept = ids[:reward.max_length]  # the start of the post; the summary and its eos are cut off
    assert tokenizer.eos_token_id not in kept
    score = reward([LONG_PROMPT, PROMPTS[1]], [COMPLETIONS[0], COMPLETIONS[1]])[0]
    with torch.no_grad():
        expected = (lm.base_model(torch.tensor([kept])).last_hidden_state[0, -1] @ weight[0]).item()
    assert score == pytest.approx(expected, abs=1e-5)
    short = ValueHeadReward(folder, device="cpu", max_length=12)([PROMPTS[0]], [COMPLETIONS[0]])[0]
    head = tokenizer(_alt_text(PROMPTS[0], COMPLETIONS[0]))["input_ids"][:12]
    with torch.no_grad():
        expected = (lm.base_model(torch.tensor([head])).last_hidden_state[0, -1] @ weight[0]).item()
    assert short == pytest.approx(expected, abs=1e-5)


def test_value_head_template_split_and_its_errors(value_head):
    folder = value_head[0]
    texts = format_texts(CARPER_TEMPLATE, ["POST: a\nTL;DR:", "x TL;DR: y"], [" b TL;DR: c", ""])
    assert texts == ["<|startoftext|>POST: a\nTL;DR: b<|endoftext|>", "<|startoftext|>x\nTL;DR: y<|endoftext|>"]
    assert format_texts("{prompt}|{completion}", ["no mark"], [" c "]) == ["no mark| c "]
    reward = load_reward(folder, device="cpu")
    with pytest.raises(QuarkError, match=r"row 1 has no 'TL;DR:' in prompt \+ completion"):
        reward([PROMPTS[0], "POST: no mark here"], [COMPLETIONS[0], " summary"])
    with pytest.raises(QuarkError, match=r"max_length \(at most the model.s context\) must be an integer from 1"):
        load_reward(folder, device="cpu", max_length=0)


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


# ---------------------------------------------------------------- CarperAI's TL;DR reward model, as ALT feeds it

@pytest.fixture(scope="module")
def carper_gptj(tokenizer, tmp_path_factory) -> tuple[Path, Path, GPTJForCausalLM, torch.Tensor]:
    """``(state-dict file, base model folder, causal LM, v_head weight)``: a tiny GPT-J reward model
    saved as CarperAI's rm_checkpoint/pytorch_model.bin (``transformer.*`` + ``v_head.weight``)."""
    lm = _backbone("gptj", len(tokenizer))
    torch.manual_seed(3)
    weight = torch.randn(1, 32)
    base = tmp_path_factory.mktemp("carper-sft")
    lm.save_pretrained(base)
    tokenizer.save_pretrained(base)
    path = tmp_path_factory.mktemp("rm_checkpoint") / "pytorch_model.bin"
    torch.save({**_carper_state(lm), "v_head.weight": weight.clone()}, path)
    return path, base, lm, weight


CARPER_PROMPTS = PROMPTS + [LONG_PROMPT, PROMPTS[1]]
CARPER_COMPLETIONS = COMPLETIONS + [COMPLETIONS[0], ""]  # a row cut at 550 tokens; a completion with no text


def test_carperai_reward_model_matches_alts_forward_by_hand(carper_gptj, tokenizer):
    path, base, lm, weight = carper_gptj
    reward = load_reward(path, base_model=base, device="cpu", dtype="float32")
    scores = reward(CARPER_PROMPTS, CARPER_COMPLETIONS)
    assert scores.dtype == np.float64 and scores.shape == (5,)
    texts = [_alt_text(p, c) for p, c in zip(CARPER_PROMPTS, CARPER_COMPLETIONS)]
    lengths = [len(tokenizer(t)["input_ids"]) for t in texts]
    assert len(set(lengths)) == 5 and lengths[3] > 550  # right padding matters; row 3 is cut, its eos lost
    np.testing.assert_allclose(scores, _alt_scores(lm, weight, base, texts), rtol=1e-5, atol=1e-5)
    # the same numbers each text alone, unpadded: padding changes nothing
    np.testing.assert_allclose(scores[[0, 1, 2, 4]], _values_alone(lm, weight, tokenizer, texts[:3] + texts[4:]),
                               rtol=1e-5, atol=1e-5)
    assert texts[4].endswith("TL;DR: <|endoftext|>")  # the empty summary is read at "TL;DR: "
    # another value-head RM fed its own way: a template, a maximum length
    other = load_reward(path, base_model=base, device="cpu", template="{prompt}{completion}<|endoftext|>",
                        max_length=40)(PROMPTS, COMPLETIONS)
    own = [p + c + "<|endoftext|>" for p, c in zip(PROMPTS, COMPLETIONS)]
    np.testing.assert_allclose(other, _alt_scores(lm, weight, base, own, max_length=40), rtol=1e-5, atol=1e-5)
    assert not np.allclose(other, scores[:3], atol=1e-3)


def test_carperai_reward_model_in_bfloat16_is_close_to_float32(carper_gptj):
    path, base, _, _ = carper_gptj
    fp32 = load_reward(path, base_model=base, device="cpu", dtype="float32")
    bf16 = load_reward(path, base_model=base, device="cpu", dtype="bfloat16")
    assert bf16.fn.backbone.dtype == torch.bfloat16 and bf16.fn.v_head_weight.dtype == torch.float32
    a, b = fp32(CARPER_PROMPTS, CARPER_COMPLETIONS), bf16(CARPER_PROMPTS, CARPER_COMPLETIONS)
    assert b.dtype == np.float64
    np.testing.assert_allclose(b, a, atol=0.02 * np.abs(a).max())  # measured: 0.05 of 7.4
    assert not np.array_equal(a, b)  # it did run in another precision


def test_reward_config_fields_round_trip_and_reject_bad_values():
    template = CARPER_TEMPLATE.replace("\n", "\\n")  # as typed on a command line, JSON-quoted
    config = QuarkConfig().with_overrides([f'reward_template="{template}"', "reward_max_length=550",
                                           "reward_dtype=bfloat16"])
    assert (config.reward_template, config.reward_max_length, config.reward_dtype) == (CARPER_TEMPLATE, 550,
                                                                                        "bfloat16")
    assert QuarkConfig.from_dict(config.to_dict()) == config
    defaults = QuarkConfig()
    assert (defaults.reward_template, defaults.reward_max_length, defaults.reward_dtype) == (None, None, "auto")
    assert config.with_overrides(["reward_template=null", "reward_max_length=None"]).reward_template is None
    for bad, match in [("reward_template={title}: {completion}", r"reward_template must be text whose only "
                        r"fields are \{prompt\}, \{completion\}, \{post\} and \{summary\}.*got '\{title\}"),
                       ("reward_template={post", "reward_template must be"),
                       ("reward_max_length=0", "reward_max_length must be an integer >= 1"),
                       ("reward_max_length=5.5", "reward_max_length must be an integer"),
                       ("reward_dtype=int8", "reward_dtype must be one of 'auto', 'float32'")]:
        with pytest.raises(QuarkError, match=match):
            QuarkConfig().with_overrides([bad])


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


# ---------------------------------------------------------------- a score does not depend on its batch (issue 18)

def _scored_every_way(make, prompts: list[str], completions: list[str]) -> dict[str, bytes]:
    """The float64 bytes of the scores of ``prompts``/``completions``: all together in batches of 4 (the last one
    partial), each alone, in reverse order (each text at another position of another batch), and in batches of
    3 (another batch size); ``make(batch_size)`` loads the reward."""
    four, three = make(4), make(3)
    return {"together": four(prompts, completions).tobytes(),
            "alone": np.concatenate([four([p], [c]) for p, c in zip(prompts, completions)]).tobytes(),
            "reversed": four(prompts[::-1], completions[::-1])[::-1].tobytes(),
            "batch of 3": three(prompts, completions).tobytes()}


def _tiny_rows(n: int) -> tuple[list[str], list[str]]:
    """``n`` real tiny-world test posts, each with a summary of a different length (3 to 3 + 4(n-1) words)."""
    prompts = ql.load_prompts("tiny-tldr", "test", limit=n)["prompt"].tolist()
    return prompts, [" " + " ".join(p.split("POST:")[1].split()[:3 + 4 * i]) for i, p in enumerate(prompts)]


def test_value_head_score_is_the_same_bits_alone_in_any_batch_and_position(world):
    # Before every batch had one shape (batch_size x max_length) and the v_head became a sum per row, most of these
    # scores moved by up to 1.4e-6 between "together" and "alone": an ulp that can swap two tied quantiles.
    path = carper_reward_model(world=world)
    prompts, summaries = _tiny_rows(6)
    scores = _scored_every_way(lambda bs: load_reward(path, base_model=world.policy, device="cpu", batch_size=bs,
                                                      max_length=256), prompts, summaries)
    assert len(set(scores.values())) == 1, {k: np.frombuffer(v) for k, v in scores.items()}
    assert len(set(np.frombuffer(scores["alone"]).tolist())) == 6  # six different scores, not six copies of one


def test_classifier_score_is_the_same_bits_alone_in_any_batch_and_position(classifier):
    folder, _ = classifier
    prompts = PROMPTS * 3
    completions = [c + " and" * i for i, c in enumerate(COMPLETIONS * 3)]  # nine lengths
    scores = _scored_every_way(lambda bs: load_reward(folder, device="cpu", batch_size=bs), prompts, completions)
    assert len(set(scores.values())) == 1, {k: np.frombuffer(v) for k, v in scores.items()}



def test_model_rewards_keep_no_kv_cache(classifier, value_head):
    """A scoring forward pass would otherwise keep every block's keys and values until it returns: GPT-J 6B's
    CarperAI reward model, 16 texts of 550 tokens, 3.9 GiB for nothing (quarklab.plan counts it without)."""
    for reward in (load_reward(classifier[0], device="cpu"), load_reward(value_head[0], device="cpu")):
        model = getattr(reward.fn, "model", None) or reward.fn.backbone
        seen = []
        hook = model.register_forward_hook(lambda m, args, out: seen.append(out), with_kwargs=False)
        reward(PROMPTS, COMPLETIONS)
        hook.remove()
        assert seen and all(getattr(out, "past_key_values", None) is None for out in seen)
