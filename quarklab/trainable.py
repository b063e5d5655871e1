"""Which parameters train: the top ``trainable_fraction`` of the transformer blocks (ALT's rule), plus
everything outside the blocks; or LoRA adapters on those blocks (peft), with the quantile tokens' rows."""

from __future__ import annotations

import torch

from .config import QuarkConfig
from .errors import QuarkError


def set_trainable(model, fraction: float) -> int:
    """Train only the top ``int(fraction * n_layers)`` transformer blocks (ALT's floor rule: 0.3 of GPT-J's 28
    is 8; at least one), plus everything outside the blocks (embeddings, final norm, head). Returns the number
    of trainable parameters."""
    for p in model.parameters():
        p.requires_grad_(True)
    if fraction >= 1.0:
        return sum(p.numel() for p in model.parameters())
    _, blocks = transformer_blocks(model)
    for block in list(blocks)[: len(blocks) - trained_blocks(len(blocks), fraction)]:
        for p in block.parameters():
            p.requires_grad_(False)
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def trained_blocks(n_layers: int, fraction: float) -> int:
    return n_layers if fraction >= 1.0 else max(1, int(fraction * n_layers))


def transformer_blocks(model) -> tuple[str, torch.nn.ModuleList]:
    """``(attribute name, module list)`` of the model's transformer blocks (``h`` in GPT-J)."""
    n_layers = getattr(model.config, "num_hidden_layers", None) or getattr(model.config, "n_layer")
    found = next(((name, m) for name, m in model.named_modules()
                  if isinstance(m, torch.nn.ModuleList) and len(m) == n_layers), None)
    if found is None:
        raise QuarkError("trainable_fraction < 1 and LoRA need a model with one list of transformer blocks")
    return found[0].rsplit(".", 1)[-1], found[1]


def with_lora(policy, config: QuarkConfig, control_ids: list[int]):
    """``policy`` with peft LoRA adapters on every linear layer of its top ``trainable_fraction`` blocks, and the
    quantile tokens' input and output rows trainable (peft's trainable tokens); ``merge_and_unload()`` folds
    them back into ``policy``'s own weights."""
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError as exc:
        raise QuarkError("lora_rank > 0 needs peft: pip install peft") from exc
    name, blocks = transformer_blocks(policy)
    linear = sorted({n.rsplit(".", 1)[-1] for n, m in blocks.named_modules() if isinstance(m, torch.nn.Linear)})
    k = trained_blocks(len(blocks), config.trainable_fraction)
    modules = {m: n for n, m in policy.named_modules()}
    rows = {modules[policy.get_input_embeddings()]: control_ids, modules[policy.get_output_embeddings()]: control_ids}
    return get_peft_model(policy, LoraConfig(
        r=config.lora_rank, lora_alpha=config.lora_alpha, lora_dropout=0.0, target_modules=linear,
        layers_to_transform=list(range(len(blocks) - k, len(blocks))), layers_pattern=name,
        trainable_token_indices=rows))
