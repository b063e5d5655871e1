"""Loading policies and tokenizers; left padding needs explicit position ids for GPT-2 and GPT-J."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel, GPTJConfig, GPTJForCausalLM

import quarklab as ql
from quarklab.models import context_length


def test_local_folder_loads_with_dtype_and_device(world):
    model = ql.load_policy(world.policy, dtype="bfloat16", device="cpu")
    assert model.dtype == torch.bfloat16 and model.device.type == "cpu" and not model.training
    assert ql.load_policy(world.policy).dtype == torch.float32  # auto on CPU
    with pytest.raises(ql.QuarkError, match="unknown dtype"):
        ql.load_policy(world.policy, dtype="float8")


def test_tiny_tldr_names_the_offline_worlds_sft_model(world, sft):
    model, tokenizer = ql.load_policy("tiny-tldr"), ql.load_tokenizer("tiny-tldr")
    assert tokenizer.get_vocab() == sft[1].get_vocab()
    for (name, a), (_, b) in zip(model.state_dict().items(), sft[0].state_dict().items()):
        assert torch.equal(a, b), name
    assert ql.resolve_model("tiny-tldr") == world.policy and ql.resolve_model("org/model") == "org/model"


def test_context_length_is_the_smaller_of_model_and_tokenizer_limits(sft):
    model, tokenizer = sft
    assert context_length(model) == context_length(model.config) == model.config.n_positions == 512
    assert context_length(model, tokenizer) == min(512, tokenizer.model_max_length)
    short = GPT2Config(n_positions=1024)
    tokenizer_limit = tokenizer.model_max_length
    try:
        tokenizer.model_max_length = 300
        assert context_length(short, tokenizer) == 300
    finally:
        tokenizer.model_max_length = tokenizer_limit
    assert context_length(short) == 1024
    assert context_length(GPTJConfig(n_positions=0)) == 2048  # nothing says: the fallback


@pytest.mark.parametrize("name", ["./no/such/model", "/abs/missing", "a/b/c"])
def test_missing_local_model_is_a_clear_error(name):
    with pytest.raises(ql.QuarkError, match="does not exist"):
        ql.load_policy(name)
    with pytest.raises(ql.QuarkError, match="does not exist"):
        ql.load_tokenizer(name)


def test_hub_id_offline_and_folder_without_weights_are_clear_errors(tmp_path):
    with pytest.raises(ql.QuarkError, match="neither a local folder nor in the local hub cache"):
        ql.load_policy("EleutherAI/gpt-j-6b")
    with pytest.raises(ql.QuarkError, match="local folder .*save_pretrained"):
        ql.load_policy(tmp_path)


def _tiny(kind: str, vocab: int):
    torch.manual_seed(0)
    if kind == "gpt2":
        return GPT2LMHeadModel(GPT2Config(vocab_size=vocab, n_embd=32, n_layer=2, n_head=2, n_positions=64)).eval()
    return GPTJForCausalLM(GPTJConfig(vocab_size=vocab, n_embd=32, n_layer=2, n_head=4, rotary_dim=4,
                                      n_positions=64)).eval()


@pytest.mark.parametrize("kind", ["gpt2", "gptj"])
def test_left_padded_batch_needs_position_ids(kind, sft):
    _, tokenizer = sft
    model = _tiny(kind, len(tokenizer))
    texts = ["a short one", "a much longer prompt that needs no padding at all here"]
    batch = tokenizer(texts, return_tensors="pt", padding=True)
    assert batch["attention_mask"][0, 0] == 0  # left-padded
    alone = model(**tokenizer(texts[0], return_tensors="pt")).logits[0]
    n = alone.shape[0]
    with torch.no_grad():
        right = model(**batch, position_ids=ql.position_ids_from_mask(batch["attention_mask"])).logits[0, -n:]
        wrong = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[0, -n:]
    assert torch.allclose(right, alone, atol=1e-5)
    if kind == "gpt2":  # GPT-2 numbers pad tokens too unless told otherwise
        assert not torch.allclose(wrong, alone, atol=1e-3)


# ---------------------------------------------------------------------------- the hub, offline
# Each case runs in a fresh interpreter: huggingface_hub reads HF_HUB_OFFLINE, HF_HUB_CACHE and HF_ENDPOINT
# once, at import. HF_ENDPOINT points at a closed local port, so "the hub cannot be reached" holds on any
# machine, networked or not.
UNREACHABLE = "http://127.0.0.1:9"
COMMIT = "0123456789abcdef0123456789abcdef01234567"


def _hub_cache(root: Path, repo_id: str, repo_type: str, files: dict[str, Path]) -> Path:
    """A local hub cache holding ``repo_id`` at COMMIT, laid out as huggingface_hub writes it."""
    repo = root / f"{repo_type}s--{repo_id.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(COMMIT)
    snapshot = repo / "snapshots" / COMMIT
    snapshot.mkdir(parents=True, exist_ok=True)
    for name, src in files.items():
        shutil.copy(src, snapshot / name)
    return root


def _python(code: str, cache: Path, offline: bool) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")}
    env.update(HF_HUB_CACHE=str(cache), HF_ENDPOINT=UNREACHABLE, PYTHONPATH=str(Path(__file__).parents[1]))
    if offline:
        env["HF_HUB_OFFLINE"] = "1"
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("offline", [True, False], ids=["HF_HUB_OFFLINE", "unreachable"])
def test_hub_ids_not_cached_fail_at_once_with_one_error(offline, tmp_path):
    code = """
import quarklab as ql
from quarklab.reward_models import SequenceClassifierReward
for what, load in [("model", ql.load_policy), ("tokenizer", ql.load_tokenizer),
                   ("reward model", SequenceClassifierReward), ("dataset", ql.load_prompts)]:
    try:
        load("EleutherAI/gpt-j-6b" if what != "dataset" else "CarperAI/openai_summarize_tldr")
    except ql.QuarkError as exc:
        print(exc)
"""
    out = _python(code, tmp_path, offline)
    assert out.returncode == 0, out.stderr[-2000:]
    lines = out.stdout.splitlines()
    assert len(lines) == 4
    for line, what in zip(lines, ["model", "tokenizer", "reward model", "dataset"]):
        local = "file" if what == "dataset" else "folder"
        assert line.startswith(f"{what} '") and f"is neither a local {local} nor in the local hub cache" in line
        assert ("HF_HUB_OFFLINE=1" if offline else f"{UNREACHABLE} cannot be reached") in line
    assert "Retrying" not in out.stderr  # huggingface_hub's back-off (about 25 s) never started


@pytest.mark.parametrize("offline", [True, False], ids=["HF_HUB_OFFLINE", "unreachable"])
def test_hub_ids_in_the_local_cache_load_offline(offline, world, tmp_path):
    policy = Path(world.policy)
    _hub_cache(tmp_path, "quarklab-test/tiny-sft", "model", {p.name: p for p in policy.iterdir() if p.is_file()})
    _hub_cache(tmp_path, "quarklab-test/prompts", "dataset", {"test.jsonl": Path(world.data_file("test"))})
    code = """
import quarklab as ql
model, tok = ql.load_policy("quarklab-test/tiny-sft"), ql.load_tokenizer("quarklab-test/tiny-sft")
print(model.num_parameters(), tok.pad_token is not None, len(ql.load_prompts("quarklab-test/prompts", "test")))
"""
    out = _python(code, tmp_path, offline)
    assert out.returncode == 0, out.stderr[-2000:]
    model, tok = ql.load_policy(policy), ql.load_tokenizer(policy)
    want = len(ql.load_prompts(world.data_file("test")))
    assert out.stdout.split() == [str(model.num_parameters()), "True", str(want)]
