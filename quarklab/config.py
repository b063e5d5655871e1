"""One dataclass with every knob of a Quark run, documented field by field, and its presets.

Where the reference codebases disagree (see the README's algorithm table) the choice is a
field; defaults follow ALT's Quark baseline for TL;DR unless a preset says otherwise.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import asdict, dataclass, fields
from typing import Any

from .errors import QuarkError


@dataclass
class QuarkConfig:
    # --- models and data ---------------------------------------------------------------
    policy: str = "tiny-tldr"
    """Starting policy: a hub id, a local folder, or "tiny-tldr" (the offline world's SFT GPT-J)."""
    reference: str | None = None
    """Frozen reference for the KL term, perplexity and iteration 1's samples; None = same as policy."""
    reward: str = "tiny-tldr"
    """Reward spec for quarklab.load_reward: "tiny-tldr", a classifier or value-head RM folder/hub id,
    or a value-head state-dict file (e.g. CarperAI's summarize_rlhf rm_checkpoint/pytorch_model.bin)."""
    reward_base_model: str | None = None
    """Backbone (hub id or folder) of a bare value-head state-dict reward, e.g. CarperAI/openai_summarize_tldr_sft."""
    dataset: str = "tiny-tldr"
    """Prompt source for quarklab.load_prompts: "tiny-tldr", a local file or a hub dataset id."""
    train_split: str = "train"
    """Split of ``dataset`` that training prompts come from."""
    eval_split: str = "test"
    """Split of ``dataset`` that evaluation prompts come from."""
    seed: int = 0
    """Seeds everything: prompt choice, sampling, token init, selection, training order."""
    device: str = "auto"
    """"auto" (CUDA when present), "cpu", "cuda", "cuda:1", ..."""
    dtype: str = "auto"
    """Weights and compute dtype: "auto" = bfloat16 on a GPU with it, float32 on CPU."""

    # --- quantiles and pool ------------------------------------------------------------
    num_quantiles: int = 5
    """K, the number of reward quantiles and quantile tokens (_QUANTILE_TOKEN_0_ = best)."""
    quantile_scope: str = "local"
    """"local": quantiles within each prompt's own samples (ALT); "global": over the whole pool (Quark)."""
    pool_strategy: str = "alt"
    """"alt": the pool is flushed each iteration and ``per_quantile_per_prompt`` rows are drawn per
    quantile per prompt; "quark": the pool accumulates over iterations and all of it is trained on
    (up to ``max_train_rows``)."""
    per_quantile_per_prompt: int = 2
    """ALT pool: rows drawn per quantile per prompt for training."""
    max_train_rows: int | None = None
    """Quark pool: cap on rows trained on per iteration (drawn at random); None = all."""

    # --- exploration -------------------------------------------------------------------
    iterations: int = 5
    """Quark iterations: sample, score, quantize, train. Iteration 1 samples from the reference
    without a token, later ones from the policy conditioned on token 0."""
    prompts_per_iteration: int = 128
    """Training prompts sampled each iteration (drawn from ``train_split``)."""
    samples_per_prompt: int = 96
    """Completions per prompt (ALT: 96)."""
    temperature: float = 0.9
    top_p: float = 0.9
    top_k: int = 0
    """0 = no top-k filter."""
    max_new_tokens: int = 64
    sample_batch_size: int = 64
    """Sequences per generate call."""

    # --- training ----------------------------------------------------------------------
    lr: float = 2e-5
    warmup_ratio: float = 0.05
    weight_decay: float = 0.0
    batch_size: int = 8
    grad_accum: int = 1
    """Micro-batches per optimizer step."""
    epochs_per_iteration: int = 1
    grad_clip: float = 1.0
    kl_coef: float = 0.0
    """beta; 0 reproduces the no-KL run ALT actually used, Quark used 0.05."""
    kl_direction: str = "policy||ref"
    """"policy||ref" (Quark, AlpacaFarm) or "ref||policy" (ALT's KL script)."""
    entropy_coef: float = 0.06
    """alpha: the loss subtracts alpha * entropy of the policy over completion positions."""
    trainable_fraction: float = 1.0
    """Share of transformer blocks trained, from the top (ALT: 0.3); embeddings are always trained
    so new quantile tokens can learn."""
    precision: str = "auto"
    """Autocast on GPU: "auto" (bf16 where supported, else fp16), "bf16", "fp16", "fp32"."""

    # --- evaluation and run ------------------------------------------------------------
    eval_prompts: int = 64
    """Evaluation prompts from ``eval_split`` (the first ones, the same every iteration)."""
    eval_max_new_tokens: int = 64
    eval_sampled_n: int = 0
    """Also evaluate sampled generations (n per prompt, at the exploration temperature/top-p); 0 = greedy only."""
    eval_batch_size: int = 64
    keep_checkpoints: int = 1
    """How many iteration checkpoints to keep (the latest ones)."""

    def __post_init__(self):
        self.validate()

    def validate(self) -> None:
        def need(ok: bool, msg: str):
            if not ok:
                raise QuarkError(f"config: {msg}")
        need(isinstance(self.num_quantiles, int) and self.num_quantiles >= 1, f"num_quantiles must be >= 1, got {self.num_quantiles}")
        need(self.quantile_scope in ("local", "global"), f"quantile_scope must be 'local' or 'global', got {self.quantile_scope!r}")
        need(self.pool_strategy in ("alt", "quark"), f"pool_strategy must be 'alt' or 'quark', got {self.pool_strategy!r}")
        need(self.kl_direction in ("policy||ref", "ref||policy"), f"kl_direction must be 'policy||ref' or 'ref||policy', got {self.kl_direction!r}")
        need(self.precision in ("auto", "bf16", "fp16", "fp32"), f"precision must be auto, bf16, fp16 or fp32, got {self.precision!r}")
        need(self.iterations >= 1, "iterations must be >= 1")
        need(self.samples_per_prompt >= 1 and self.prompts_per_iteration >= 1, "prompts_per_iteration and samples_per_prompt must be >= 1")
        need(self.per_quantile_per_prompt >= 1, "per_quantile_per_prompt must be >= 1")
        need(0 < self.trainable_fraction <= 1, "trainable_fraction must be in (0, 1]")
        need(self.lr > 0 and self.batch_size >= 1 and self.grad_accum >= 1, "lr, batch_size and grad_accum must be positive")
        need(self.kl_coef >= 0 and self.entropy_coef >= 0, "kl_coef and entropy_coef must be >= 0")
        need(self.keep_checkpoints >= 1, "keep_checkpoints must be >= 1")

    # --- (de)serialisation ---------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "QuarkConfig":
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise QuarkError(f"config: unknown field(s) {unknown}")
        return cls(**d)

    def replace(self, **changes) -> "QuarkConfig":
        return self.from_dict({**self.to_dict(), **changes})

    def with_overrides(self, assignments: list[str]) -> "QuarkConfig":
        """Apply ``key=value`` strings (values parsed as JSON when they parse, else as text)."""
        types = {f.name: f.type for f in fields(self)}
        changes = {}
        for item in assignments:
            key, sep, raw = item.partition("=")
            if not sep or key not in types:
                raise QuarkError(f"--set {item!r}: expected key=value with key one of {sorted(types)}")
            try:
                value = json.loads(raw)
            except json.JSONDecodeError:
                value = raw
            current = getattr(self, key)
            if isinstance(current, float) and isinstance(value, int):
                value = float(value)
            if current is not None and value is not None and type(value) is not type(current):
                raise QuarkError(f"--set {key}: expected {type(current).__name__}, got {raw!r}")
            changes[key] = value
        return self.replace(**changes)


PRESETS: dict[str, dict[str, Any]] = {
    # The offline tiny world on a 2-core CPU, a few minutes end to end.
    "tiny": dict(policy="tiny-tldr", reward="tiny-tldr", dataset="tiny-tldr", iterations=3,
                 prompts_per_iteration=96, samples_per_prompt=16, max_new_tokens=48, sample_batch_size=128,
                 lr=1e-3, batch_size=32, epochs_per_iteration=2, kl_coef=0.05, entropy_coef=0.0,
                 eval_prompts=96, eval_max_new_tokens=48, eval_batch_size=96),
    # The ALT paper's Quark TL;DR setting (GPU): CarperAI SFT GPT-J, 5 tokens, local quantiles,
    # 96 samples per prompt at temperature 0.9 / top-p 0.9, 64 new tokens, lr 2e-5, 2 per quantile per prompt.
    "tldr-gptj": dict(policy="CarperAI/openai_summarize_tldr_sft", reference=None,
                      reward="tiny-tldr", dataset="CarperAI/openai_summarize_tldr", eval_split="test",
                      num_quantiles=5, quantile_scope="local", pool_strategy="alt", per_quantile_per_prompt=2,
                      samples_per_prompt=96, temperature=0.9, top_p=0.9, max_new_tokens=64, lr=2e-5,
                      warmup_ratio=0.05, kl_coef=0.0, entropy_coef=0.06, trainable_fraction=0.3,
                      batch_size=8, grad_accum=8, eval_prompts=1000, sample_batch_size=96),
}


def preset(name: str, **changes) -> QuarkConfig:
    if name not in PRESETS:
        raise QuarkError(f"unknown preset {name!r}: choose from {sorted(PRESETS)}")
    return QuarkConfig(**{**PRESETS[name], **changes})


def describe() -> str:
    """Every field with its default and documentation, for ``quarklab train --help-config``."""
    import ast
    import inspect

    src = inspect.getsource(QuarkConfig)
    docs, last = {}, None
    for node in ast.parse(src).body[0].body:
        if isinstance(node, ast.AnnAssign):
            last = node.target.id
        elif isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant) and last:
            docs[last], last = " ".join(node.value.value.split()), None
    return "\n".join(f"{f.name} = {f.default!r}\n    {docs.get(f.name, '')}" for f in dataclasses.fields(QuarkConfig))
