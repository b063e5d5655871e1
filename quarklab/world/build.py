"""The offline tiny TL;DR world: data, tokenizer and an SFT GPT-J, built from a seed.

Nothing may be downloaded at run time, so quarklab builds a small but complete world
itself and caches it under ``$QUARKLAB_HOME`` (default ``~/.cache/quarklab``)::

    <home>/tiny-tldr-v1-seed0/
        data/{train,valid,test}.jsonl   prompt, label (the CarperAI TL;DR layout)
        sft/                            tokenizer + GPTJForCausalLM (save_pretrained, safetensors)
        world.json                      what was built, from what, in how long

``sft/`` is an ordinary ``save_pretrained`` folder: :func:`quarklab.load_policy` loads it
exactly as it loads a hub checkpoint. The build writes into a temporary folder and
renames it at the end, so an interrupted build leaves nothing half-written.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from ..errors import QuarkError
from ..files import atomic_dir, atomic_write_json

WORLD_VERSION = 1
EOS = "<|endoftext|>"


@dataclass(frozen=True)
class WorldSpec:
    """Everything that determines the tiny world; a different spec is a different folder."""

    seed: int = 0
    n_train: int = 6000
    n_valid: int = 400
    n_test: int = 400
    vocab_size: int = 2048
    n_embd: int = 128
    n_layer: int = 3
    n_head: int = 4
    n_positions: int = 512
    sft_steps: int = 600
    sft_batch_size: int = 32
    sft_lr: float = 3e-3


@dataclass(frozen=True)
class World:
    """A built tiny world on disk."""

    root: Path

    @property
    def policy(self) -> str:
        """The SFT model folder: the default policy and reference."""
        return str(self.root / "sft")

    def data_file(self, split: str) -> str:
        path = self.root / "data" / f"{split}.jsonl"
        if not path.exists():
            raise QuarkError(f"the tiny world has no split {split!r}: use train, valid or test")
        return str(path)

    def reward(self):
        """The world's text reward (:class:`~quarklab.world.reward.TinyTLDRReward`)."""
        from .reward import TinyTLDRReward

        return TinyTLDRReward()

    @property
    def info(self) -> dict:
        return json.loads((self.root / "world.json").read_text())


def quarklab_home() -> Path:
    return Path(os.environ.get("QUARKLAB_HOME") or "~/.cache/quarklab").expanduser()


def world_dir(spec: WorldSpec, home: str | os.PathLike | None = None) -> Path:
    default = WorldSpec(seed=spec.seed)
    name = f"tiny-tldr-v{WORLD_VERSION}-seed{spec.seed}"
    if spec != default:  # non-default sizes get their own folder
        name += "-" + hashlib.sha256(json.dumps(asdict(spec), sort_keys=True).encode()).hexdigest()[:8]
    return (Path(home).expanduser() if home else quarklab_home()) / name


def tiny_world(seed: int = 0, *, home: str | os.PathLike | None = None, progress: bool = True,
               spec: WorldSpec | None = None) -> World:
    """The tiny world for ``seed``, built on first need and loaded from the cache after."""
    spec = spec or WorldSpec(seed=seed)
    root = world_dir(spec, home)
    if (root / "world.json").exists():
        return World(root)
    return build_world(spec, home=home, progress=progress)


def build_world(spec: WorldSpec | None = None, *, home: str | os.PathLike | None = None,
                progress: bool = True, force: bool = False) -> World:
    """Build the tiny world (data, tokenizer, SFT model) into the cache; about 2 minutes on 2 cores."""
    spec = spec or WorldSpec()
    root = world_dir(spec, home)
    if (root / "world.json").exists() and not force:
        return World(root)
    with _build_lock(root):  # one builder at a time: a second process waits, then finds the world built
        if (root / "world.json").exists() and not force:
            return World(root)
        return _build(spec, root, progress)


@contextlib.contextmanager
def _build_lock(root: Path):
    """An exclusive ``flock`` on ``.<world>.lock`` beside the world's folder, waited for (the kernel releases it when
    its holder exits, even after ``kill -9``)."""
    import fcntl

    root.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(root.parent / f".{root.name}.lock", os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _build(spec: WorldSpec, root: Path, progress: bool) -> World:
    import torch

    if torch.distributed.is_available() and torch.distributed.is_initialized() and torch.distributed.get_rank():
        # transformers' save_pretrained writes weights on rank 0 only: this rank would leave a world without a model
        raise QuarkError(f"the tiny world {str(root)!r} is not built yet and this is process "
                         f"{torch.distributed.get_rank()} of a distributed launch: build it from the main process "
                         "first (quarklab world build, or ql.tiny_world() on rank 0 before a barrier)")
    start = time.perf_counter()
    with atomic_dir(root) as tmp:
        splits = _write_data(spec, tmp / "data")
        tokenizer = _train_tokenizer(spec, [r["prompt"] + " " + r["label"] for r in splits["train"]])
        model, losses = _train_sft(spec, tokenizer, splits["train"], progress)
        model.save_pretrained(tmp / "sft")
        tokenizer.save_pretrained(tmp / "sft")
        atomic_write_json(tmp / "world.json", {
            "version": WORLD_VERSION, "spec": asdict(spec),
            "sizes": {k: len(v) for k, v in splits.items()},
            "parameters": sum(p.numel() for p in model.parameters()),
            "sft_loss_first_last": [losses[0], losses[-1]],
            "build_seconds": round(time.perf_counter() - start, 1),
            "torch_threads": torch.get_num_threads(),
        })
    return World(root)


def _write_data(spec: WorldSpec, folder: Path) -> dict[str, list[dict]]:
    from .synth import make_splits

    folder.mkdir(parents=True)
    sizes = {"train": spec.n_train, "valid": spec.n_valid, "test": spec.n_test}
    splits = {k: [{"prompt": e.prompt, "label": e.label, "subreddit": e.subreddit} for e in v]
              for k, v in make_splits(spec.seed, sizes).items()}
    for name, rows in splits.items():
        with open(folder / f"{name}.jsonl", "w", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
    return splits


def _train_tokenizer(spec: WorldSpec, texts: list[str]):
    """A byte-level BPE (as GPT-2/GPT-J use) trained on the world's text, as a transformers tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=spec.vocab_size, special_tokens=[EOS], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer)
    # GPT-J's convention: one <|endoftext|> serves as bos, eos, unk and pad.
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=EOS, eos_token=EOS, unk_token=EOS,
                                   pad_token=EOS, model_max_length=spec.n_positions, padding_side="left")


def _train_sft(spec: WorldSpec, tokenizer, rows: list[dict], progress: bool):
    """Supervised fine-tuning from scratch on ``prompt + " " + label + EOS``, loss on every token."""
    import torch

    from ..progress import tqdm
    from transformers import GPTJConfig, GPTJForCausalLM

    torch.manual_seed(spec.seed)
    rng = random.Random(spec.seed)
    eos = tokenizer.eos_token_id
    config = GPTJConfig(vocab_size=len(tokenizer), n_positions=spec.n_positions, n_embd=spec.n_embd,
                        n_layer=spec.n_layer, n_head=spec.n_head, rotary_dim=spec.n_embd // spec.n_head // 2,
                        n_inner=4 * spec.n_embd, bos_token_id=eos, eos_token_id=eos, pad_token_id=eos,
                        tie_word_embeddings=False)
    model = GPTJForCausalLM(config)
    seqs = [ids + [eos] for ids in tokenizer([r["prompt"] + " " + r["label"] for r in rows])["input_ids"]]
    seqs = [s[: spec.n_positions] for s in seqs]
    order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))  # batches of similar length: little padding
    batches = [order[i:i + spec.sft_batch_size] for i in range(0, len(order), spec.sft_batch_size)]
    opt = torch.optim.AdamW(model.parameters(), lr=spec.sft_lr, weight_decay=0.01, betas=(0.9, 0.98))
    warmup = max(1, spec.sft_steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * s / spec.sft_steps)))
    model.train()
    losses = []
    bar = tqdm(range(spec.sft_steps), desc="tiny world: SFT of GPT-J", disable=not progress)
    for _ in bar:
        batch = [seqs[i] for i in batches[rng.randrange(len(batches))]]
        width = max(map(len, batch))
        ids = torch.full((len(batch), width), eos)
        labels = torch.full((len(batch), width), -100)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for r, s in enumerate(batch):  # right padding: positions need no correction
            ids[r, : len(s)] = labels[r, : len(s)] = torch.tensor(s)
            mask[r, : len(s)] = 1
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        losses.append(round(loss.item(), 4))
        bar.set_postfix(loss=losses[-1])
    return model.eval(), losses
