"""Local stand-ins for the real checkpoints of ALT's TL;DR run, built from the tiny world in seconds.

:func:`carper_reward_model` writes a tiny value-head reward model in the layout of CarperAI's
``summarize_rlhf`` ``rm_checkpoint/pytorch_model.bin``: one ``torch.save`` state dict holding
``transformer.*`` (a GPT-J backbone, the tiny world's SFT model by default) and ``v_head.weight``
(1 x hidden, no bias). Load it as the real one is loaded::

    reward = ql.load_reward(path, base_model=world.policy)   # base_model: config and tokenizer

Its v_head is not random: a ridge regression (closed form) fits the hidden state that the reward
reads (the summary's last token in :data:`~quarklab.reward_models.CARPER_TEMPLATE`) to the offline
``tiny-tldr`` score, over reference summaries of train posts and worse variants of them
(:func:`tldr_pairs`). So the stand-in prefers what tiny-tldr prefers, roughly, through the same
code path as CarperAI's model.

:func:`gptj_standin` writes a tiny GPT-J with GPT-J 6B's shape where it matters to the code: 28
blocks (so ``trainable_fraction=0.3`` trains the same top 8), GPT-J 6B's vocabulary layout
(:func:`gptj_tokenizer`: 50,257 GPT-2-style entries with ``<|endoftext|>`` at 50256, then 143
``<|extratoken_N|>`` at 50257-50399, so ``len(tokenizer) == vocab_size == 50400`` and the quantile
tokens get ids 50400-50404 in a resized 50,405-row embedding, as in ALT's run), a head with a bias,
2,048 positions; random weights. The tiny world's ``sft/`` folder is the trained (3-block) stand-in.
"""

from __future__ import annotations

import io
import json
import os
import random
import tempfile
from pathlib import Path

import numpy as np
import torch

from ..errors import QuarkError
from ..files import atomic_dir, atomic_write_bytes, atomic_write_json
from ..world import World, tiny_world

RIDGE = 1e-2
"""Ridge strength, relative to the mean eigenvalue of the features' Gram matrix."""
VARIANTS = ("label", "shuffled", "cut", "other", "repeated", "copied", "empty")


def tldr_pairs(rows: list[dict], seed: int = 0) -> tuple[list[str], list[str]]:
    """``(prompts, completions)``: for each ``{prompt, label}`` row, its reference summary and worse
    variants of it (:data:`VARIANTS`): words shuffled, cut to a third, another row's summary, repeated,
    the post's first words copied, empty. Completions start with a space, as sampled ones do."""
    rng = random.Random(seed)
    prompts, completions = [], []
    for i, row in enumerate(rows):
        words = row["label"].split()
        shuffled = rng.sample(words, len(words))
        other = rows[(i + 1 + rng.randrange(len(rows) - 1)) % len(rows)]["label"] if len(rows) > 1 else ""
        body = row["prompt"].split("POST:", 1)[-1].split()
        variants = {"label": words, "shuffled": shuffled, "cut": words[:max(1, len(words) // 3)],
                    "other": other.split(), "repeated": words + words, "copied": body[:len(words) + 8],
                    "empty": []}
        for name in VARIANTS:
            prompts.append(row["prompt"])
            completions.append(" " + " ".join(variants[name]))
    return prompts, completions


def read_rows(world: World, split: str, n: int, seed: int = 0) -> list[dict]:
    """``n`` rows of the tiny world's ``split``, drawn with ``seed``."""
    with open(world.data_file(split), encoding="utf-8") as f:
        rows = [json.loads(line) for line in f]
    if n > len(rows):
        raise QuarkError(f"asked for {n} rows of the tiny world's {split!r} split, which has {len(rows)}")
    return random.Random(seed).sample(rows, n)


def carper_reward_model(path: str | os.PathLike | None = None, *, base_model: str | os.PathLike | None = None,
                        world: World | None = None, seed: int = 0, n_rows: int = 64) -> Path:
    """Write a tiny value-head reward model in CarperAI's single-file layout; return its path.

    ``path=None`` caches it as ``<tiny world>/standins/carper-rm-seed<seed>-n<n_rows>/pytorch_model.bin``
    (written once, then reused; only with the default ``base_model``); an explicit ``path`` is always
    written anew. Either way the file appears whole or not at all (temp file, then rename), with a
    ``standin.json`` beside it recording the fit: correlation with tiny-tldr on the ``n_rows`` train
    posts' pairs (fit) and on as many valid posts' pairs (held out). Deterministic from ``seed``.
    """
    from ..models import load_policy
    from ..reward_models import ValueHeadReward
    from ..value_head_files import BACKBONE_PREFIX, V_HEAD_KEY
    from ..world.reward import TinyTLDRReward

    world = world or tiny_world(progress=False)
    if path is None:
        if base_model is not None:
            raise QuarkError("carper_reward_model caches only stand-ins of the tiny world's SFT backbone; "
                             "with another base_model pass path= too")
        path = world.root / "standins" / f"carper-rm-seed{seed}-n{n_rows}" / "pytorch_model.bin"
        if path.is_file():
            return path
    path = Path(path)
    base_model = str(base_model or world.policy)
    lm = load_policy(base_model, dtype="float32", device="cpu")
    if not hasattr(lm, "transformer"):
        raise QuarkError(f"base model {base_model!r} ({type(lm).__name__}) has no .transformer backbone, "
                         "which CarperAI's layout stores (GPT-J, GPT-2 and kin have one)")
    state = {BACKBONE_PREFIX + k: v.detach().clone().contiguous() for k, v in lm.transformer.state_dict().items()}
    hidden = lm.config.hidden_size
    del lm

    with tempfile.TemporaryDirectory() as tmp:  # the real loader, with a zero head, gives the features
        unfitted = Path(tmp) / "pytorch_model.bin"
        torch.save({**state, V_HEAD_KEY: torch.zeros(1, hidden)}, unfitted)
        reward = ValueHeadReward(unfitted, base_model=base_model, device="cpu", dtype="float32", batch_size=64)
    truth = TinyTLDRReward()
    fit, held = (tldr_pairs(read_rows(world, split, n_rows, seed), seed) for split in ("train", "valid"))
    x, x_held = reward.features(*fit), reward.features(*held)
    y = torch.from_numpy(truth(*fit)).float()
    gram = x.T.double() @ x.double()
    lam = RIDGE * gram.diagonal().mean()
    weight = torch.linalg.solve(gram + lam * torch.eye(hidden, dtype=gram.dtype), x.T.double() @ y.double()).float()
    r_fit = float(np.corrcoef((x @ weight).numpy(), y.numpy())[0, 1])  # the scores the reward will give
    r_held = float(np.corrcoef((x_held @ weight).numpy(), truth(*held))[0, 1])

    buf = io.BytesIO()
    torch.save({**state, V_HEAD_KEY: weight[None, :].clone()}, buf)
    atomic_write_json(path.parent / "standin.json", {
        "layout": "CarperAI summarize_rlhf rm_checkpoint: transformer.* + v_head.weight (torch.save)",
        "base_model": base_model, "seed": seed, "n_rows": n_rows, "variants": list(VARIANTS), "ridge": RIDGE,
        "pairs_fit": len(fit[0]), "pearson_r_fit": round(r_fit, 4),
        "pairs_held_out": len(held[0]), "pearson_r_held_out": round(r_held, 4)})
    atomic_write_bytes(path, buf.getvalue())  # last: its presence marks a complete stand-in
    return path


GPT2_VOCAB = 50257
"""Entries of GPT-2's byte-level BPE, which GPT-J 6B's tokenizer keeps: ``<|endoftext|>`` is the last, id 50256."""
GPTJ_EXTRA_TOKENS = 143
"""``<|extratoken_1|>`` ... ``<|extratoken_143|>``: the added tokens (not special) that GPT-J 6B's tokenizer puts at
ids 50257-50399, so that its length matches the model's 50,400 embedding rows."""
GPTJ_VOCAB = GPT2_VOCAB + GPTJ_EXTRA_TOKENS


def gptj_tokenizer(world: World | None = None):
    """The tiny world's tokenizer laid out as GPT-J 6B's (``EleutherAI/gpt-j-6B``, which
    ``CarperAI/openai_summarize_tldr_sft`` ships): the tiny byte-level BPE pieces at ids 0..n-2, in their
    order; filler entries that no merge and no pre-token can reach up to 50255; ``<|endoftext|>`` at 50256
    (bos = eos = unk, no pad); the 143 ``<|extratoken_N|>`` added at 50257-50399, normalized and not
    special, as GPT-J's are; ``model_max_length`` 2048. Text encodes to the same pieces as with the tiny
    tokenizer (only the ids move), so the tiny world's data and rewards read the same. Deterministic."""
    from tokenizers import Tokenizer
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    world = world or tiny_world(progress=False)
    tiny = AutoTokenizer.from_pretrained(world.policy)
    eos = tiny.eos_token
    spec = json.loads(tiny.backend_tokenizer.to_str())
    if spec["model"]["type"] != "BPE" or [t["content"] for t in spec["added_tokens"]] != [eos]:
        raise QuarkError("gptj_tokenizer expects the tiny world's byte-level BPE with <|endoftext|> as its only "
                         f"added token, got a {spec['model']['type']} with {len(spec['added_tokens'])} added")
    pieces = [p for p, _ in sorted(spec["model"]["vocab"].items(), key=lambda kv: kv[1]) if p != eos]
    if len(pieces) > GPT2_VOCAB - 1:
        raise QuarkError(f"the tiny tokenizer has {len(pieces)} pieces, more than GPT-2's {GPT2_VOCAB - 1}")
    # "<|unused_N|>" splits into several pre-tokens ("<|", "unused", "_", "N", "|>") and no merge builds it:
    # these entries only fill ids, as the real GPT-2 pieces that the tiny text never needs would.
    vocab = {p: i for i, p in enumerate(pieces)}
    vocab.update({f"<|unused_{i}|>": i for i in range(len(pieces), GPT2_VOCAB - 1)})
    vocab[eos] = GPT2_VOCAB - 1
    spec["model"]["vocab"] = vocab
    [eos_entry] = spec["added_tokens"]
    spec["added_tokens"] = [{**eos_entry, "id": GPT2_VOCAB - 1}] + [
        {"id": GPT2_VOCAB - 1 + n, "content": f"<|extratoken_{n}|>", "single_word": False, "lstrip": False,
         "rstrip": False, "normalized": True, "special": False} for n in range(1, GPTJ_EXTRA_TOKENS + 1)]
    tok = PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(json.dumps(spec)), bos_token=eos,
                                  eos_token=eos, unk_token=eos, model_max_length=2048)
    if len(tok) != GPTJ_VOCAB or tok.eos_token_id != GPT2_VOCAB - 1:
        raise QuarkError(f"gptj_tokenizer built {len(tok)} entries with eos at {tok.eos_token_id}, "
                         f"not {GPTJ_VOCAB} with eos at {GPT2_VOCAB - 1}")
    return tok


def gptj_standin(folder: str | os.PathLike, *, n_layer: int = 28, n_embd: int = 64, n_head: int = 4,
                 seed: int = 0, world: World | None = None) -> Path:
    """Write a randomly initialised GPT-J ``save_pretrained`` folder (model + :func:`gptj_tokenizer`) shaped like
    GPT-J 6B's in layer count, vocabulary layout (50,400 rows = 50,400 tokenizer entries) and context;
    atomically. Returns it."""
    from transformers import GPTJConfig, GPTJForCausalLM

    tokenizer = gptj_tokenizer(world)
    config = GPTJConfig(vocab_size=len(tokenizer), n_positions=2048, n_embd=n_embd,
                        n_layer=n_layer, n_head=n_head, rotary_dim=n_embd // n_head // 2,
                        bos_token_id=tokenizer.eos_token_id, eos_token_id=tokenizer.eos_token_id)
    torch.manual_seed(seed)
    model = GPTJForCausalLM(config)
    with atomic_dir(Path(folder)) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    return Path(folder)


TLDR_GPTJ_IDS = ("CarperAI/openai_summarize_tldr_sft", "CarperAI/openai_summarize_tldr_rm_checkpoint")
"""The hub repositories of the ``tldr-gptj`` preset's policy and value-head reward model."""


def cache_repo(cache: str | os.PathLike, repo_id: str, files: dict[str, Path], *, repo_type: str = "model",
               commit: str = "0" * 40) -> None:
    """Put ``files`` (name: source path) into the hub cache ``cache`` as huggingface_hub lays out a downloaded
    snapshot of repository ``repo_id`` (``repo_type`` "model" or "dataset") at ``commit``, which ``refs/main``
    names; more files may be added to the same snapshot by another call."""
    import shutil

    repo = Path(cache) / f"{repo_type}s--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True, exist_ok=True)
    for name, src in files.items():
        shutil.copy(src, snapshot / name)
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / "main").write_text(commit)


def tldr_gptj_hub_cache(root: str | os.PathLike, *, n_embd: int = 64, n_rows: int = 64,
                        world: World | None = None) -> Path:
    """A hub cache under ``root`` that answers the ``tldr-gptj`` preset's model ids offline with stand-ins: a
    :func:`gptj_standin` of width ``n_embd`` as the SFT policy and a :func:`carper_reward_model` on it, fitted on
    ``n_rows`` posts, as the reward. Run with ``HF_HUB_CACHE`` set to the returned folder and ``HF_HUB_OFFLINE=1``."""
    root = Path(root)
    sft = gptj_standin(root / "sft", n_embd=n_embd, world=world)
    rm = carper_reward_model(root / "rm" / "pytorch_model.bin", base_model=sft, world=world, n_rows=n_rows)
    cache = root / "hub"
    cache_repo(cache, TLDR_GPTJ_IDS[0], {f.name: f for f in sft.iterdir()})
    cache_repo(cache, TLDR_GPTJ_IDS[1], {"pytorch_model.bin": rm})
    return cache
