"""Loading policies, reference models and tokenizers from a hub id or a local folder (found by :mod:`.hub`).

The same code path serves the offline tiny world (a local folder written with
``save_pretrained``) and hub checkpoints such as ``CarperAI/openai_summarize_tldr_sft``
(GPT-J 6B) or ``sauc-abadal-lloret/gpt-j-6b-ALT-Quark-tldr``.
"""

from __future__ import annotations

import os

import torch

from .errors import QuarkError
from .hub import load_error, resolve_source

def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """``"auto"``/``None`` picks CUDA when available, else CPU."""
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def resolve_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """``"auto"``/``None``: bfloat16 on a GPU that supports it, float16 on other GPUs, float32 on CPU."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype in (None, "auto"):
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    names = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16,
             "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}
    if dtype not in names:
        raise QuarkError(f"unknown dtype {dtype!r}: use one of {sorted(names)} or 'auto'")
    return names[dtype]


def load_tokenizer(name_or_path: str | os.PathLike, *, trust_remote_code: bool = False,
                   padding_side: str = "left"):
    """Load a tokenizer (``AutoTokenizer``), left-padding by default, with a pad token.

    A tokenizer without a pad token (GPT-2, GPT-J) gets ``pad_token = eos_token``;
    quarklab always uses attention masks, never pad ids, to tell padding apart.
    """
    from transformers import AutoTokenizer

    source = resolve_source(name_or_path, "tokenizer")
    try:
        tok = AutoTokenizer.from_pretrained(source, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as exc:
        raise load_error(source, "tokenizer", exc) from exc
    if tok.pad_token is None:
        if tok.eos_token is None:
            raise QuarkError(f"tokenizer {source!r} has neither a pad nor an eos token")
        tok.pad_token = tok.eos_token
    tok.padding_side = padding_side
    return tok


def load_policy(name_or_path: str | os.PathLike, *, dtype: str | torch.dtype | None = "auto",
                device: str | torch.device | None = "auto", trust_remote_code: bool = False,
                attn_implementation: str | None = None):
    """Load a causal LM (``AutoModelForCausalLM``) from a hub id or a local folder, in eval mode.

    ``dtype="auto"`` is float32 on CPU and bfloat16 on a GPU; ``device="auto"`` picks
    CUDA when present. ``trust_remote_code`` stays off unless asked for.
    """
    from transformers import AutoModelForCausalLM

    source = resolve_source(name_or_path, "model")
    dev = resolve_device(device)
    kwargs = dict(dtype=resolve_dtype(dtype, dev), trust_remote_code=trust_remote_code)
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    try:
        model = AutoModelForCausalLM.from_pretrained(source, **kwargs)
    except (OSError, ValueError) as exc:
        raise load_error(source, "model", exc) from exc
    return model.to(dev).eval()


def context_length(model, tokenizer=None) -> int:
    """Tokens ``model`` reads at once, from its config (``model`` may be a model or a config; vLLM's
    engine config gives ``max_model_len``), lowered to ``tokenizer.model_max_length`` when that is a
    real limit; 2048 when nothing says."""
    cfg = getattr(model, "config", model)
    keys = ("max_model_len", "n_positions", "max_position_embeddings", "n_ctx")
    limits = [next((int(v) for v in (getattr(cfg, k, None) for k in keys) if isinstance(v, int) and v > 0), 0)]
    if tokenizer is not None and 0 < tokenizer.model_max_length < 1_000_000:
        limits.append(int(tokenizer.model_max_length))
    return min([n for n in limits if n] or [2048])


def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions that count only real tokens: 0 at each row's first non-pad token.

    Left-padded batches need these explicitly: GPT-2 and GPT-J otherwise number the
    pad tokens too, and every real token gets a shifted position.
    """
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
