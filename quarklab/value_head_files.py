"""Value-head reward model files, in either layout, read without unpickling arbitrary objects: quarklab's folder
(:func:`save_value_head_model`: backbone and tokenizer by ``save_pretrained``, plus ``v_head.safetensors``) and
CarperAI's single state-dict file (``transformer.*`` + ``v_head.weight``) beside a ``base_model`` that names the
backbone's config and tokenizer."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import torch

from .errors import QuarkError, describe
from .hub import load_error, resolve_source

STATE_DICT_SUFFIXES = (".bin", ".pt", ".pth", ".safetensors")
V_HEAD_FILE = "v_head.safetensors"
V_HEAD_KEY = "v_head.weight"
BACKBONE_PREFIX = "transformer."


def save_value_head_model(backbone_model, tokenizer, v_head: torch.Tensor | torch.nn.Linear,
                          folder: str | os.PathLike) -> Path:
    """Write quarklab's value-head layout: backbone + tokenizer (``save_pretrained``) + ``v_head.safetensors``.

    ``backbone_model`` may be a causal LM or its base model; only the base model is saved.
    ``v_head`` is an ``nn.Linear(hidden, 1, bias=False)`` or its weight of shape ``(1, hidden)``.
    """
    from safetensors.torch import save_file

    base = backbone_model.base_model
    weight = v_head.weight if isinstance(v_head, torch.nn.Linear) else v_head
    if isinstance(v_head, torch.nn.Linear) and v_head.bias is not None:
        raise QuarkError("v_head must have no bias (nn.Linear(hidden, 1, bias=False))")
    hidden = base.config.hidden_size
    if tuple(weight.shape) != (1, hidden):
        raise QuarkError(f"v_head weight has shape {tuple(weight.shape)}, expected (1, {hidden})")
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    base.save_pretrained(out)
    tokenizer.save_pretrained(out)
    save_file({V_HEAD_KEY: weight.detach().to("cpu").contiguous()}, str(out / V_HEAD_FILE))
    return out


def load_folder(folder: Path, dtype: torch.dtype, trust_remote_code: bool):
    """Backbone (``AutoModel``) and v_head weight from quarklab's folder layout."""
    from safetensors.torch import load_file
    from transformers import AutoModel

    try:
        backbone = AutoModel.from_pretrained(str(folder), dtype=dtype, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as exc:
        raise QuarkError(f"could not load the backbone of {str(folder)!r}: {exc}") from exc
    tensors = load_file(str(folder / V_HEAD_FILE))
    if V_HEAD_KEY not in tensors:
        raise QuarkError(f"{str(folder / V_HEAD_FILE)!r} has no {V_HEAD_KEY!r} (keys: {sorted(tensors)})")
    return backbone, tensors[V_HEAD_KEY]


def load_state_dict_file(path: Path, base_model: str | os.PathLike, dtype: torch.dtype,
                          trust_remote_code: bool):
    """Backbone and v_head weight from a CarperAI-style ``transformer.*`` + ``v_head.weight`` file."""
    from transformers import MODEL_MAPPING, AutoConfig

    state = read_state_dict(path)
    if V_HEAD_KEY not in state:
        raise QuarkError(f"{str(path)!r} has no {V_HEAD_KEY!r}: not a value-head reward model "
                         f"({len(state)} keys, e.g. {sorted(state)[:3]})")
    weight = state.pop(V_HEAD_KEY)
    state = {k.removeprefix(BACKBONE_PREFIX): v for k, v in state.items()}
    base_source = resolve_source(base_model, "base model")
    try:
        config = AutoConfig.from_pretrained(base_source, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as exc:
        raise load_error(base_source, "base model config", exc) from exc
    if type(config) not in MODEL_MAPPING:
        raise QuarkError(f"base model {base_source!r} has a config of type {type(config).__name__}, "
                         "which transformers has no base model class for")
    try:
        backbone, info = MODEL_MAPPING[type(config)].from_pretrained(
            None, config=config, state_dict=state, dtype=dtype, output_loading_info=True)
    except (RuntimeError, ValueError) as exc:
        raise QuarkError(f"the backbone weights in {str(path)!r} do not fit base model "
                         f"{base_source!r}: {exc}") from exc
    missing, unexpected = sorted(info["missing_keys"]), sorted(info["unexpected_keys"])
    mismatched = sorted(str(k) for k in info["mismatched_keys"])
    if missing or unexpected or mismatched:
        raise QuarkError(
            f"the backbone weights in {str(path)!r} do not match base model {base_source!r}: "
            f"{len(missing)} missing keys {missing[:3]}, {len(unexpected)} unexpected keys "
            f"{unexpected[:3]}, {len(mismatched)} of the wrong shape {mismatched[:3]} (expected "
            f"'{BACKBONE_PREFIX}<base model key>' and {V_HEAD_KEY!r})")
    return backbone, weight


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """A flat ``{name: tensor}`` dict from a safetensors file or a weights-only torch file."""
    if path.name.lower().endswith(".safetensors"):
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except (SafetensorError, OSError) as exc:
            raise QuarkError(f"could not read the safetensors file {str(path)!r}: {exc}") from exc
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError) as exc:
        raise QuarkError(f"could not load {str(path)!r} as a plain tensor state dict: only files "
                         "holding nothing but tensors are accepted (no pickled Python objects); "
                         f"{describe(exc)}") from exc
    if not isinstance(state, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                              for k, v in state.items()):
        raise QuarkError(f"{str(path)!r} is not a flat state dict of tensors ({{name: tensor}}); only "
                         "plain tensor state dicts are accepted")
    return state
