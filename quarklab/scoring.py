"""Scoring completions given their prompts: one batch layout and its forward pass, shared by training,
evaluation (perplexity) and the LM judge.

A row is ``[quantile token; prompt] -> completion``. A :class:`Batch` puts each prompt left-padded and each
completion right-padded, so the completion block starts at the same column in every row and only its
logits are computed (``logits_to_keep``). The reference sees the same tensor with the quantile token
masked out (attention mask 0, positions recounted): exactly the prompt without the token, in one layout.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from .errors import QuarkError
from .models import position_ids_from_mask


@dataclass
class Batch:
    input_ids: torch.Tensor       # (B, P + C): [pad..., token, prompt | completion, eos, pad...]
    attention_mask: torch.Tensor  # (B, P + C)
    labels: torch.Tensor          # (B, C): completion ids (+ eos when finished), -100 on padding
    token_col: torch.Tensor       # (B,) column of each row's first real token (its quantile token, if any)
    has_token: bool

    def to(self, device) -> "Batch":
        return Batch(self.input_ids.to(device), self.attention_mask.to(device), self.labels.to(device),
                     self.token_col.to(device), self.has_token)


def build_batch(prompts: list[list[int]], completions: list[list[int]], finished: list[bool],
                prefix_ids: list[int] | None, pad_id: int, eos_id: int) -> Batch:
    """Lay out rows for a forward pass; ``prefix_ids`` gives each row's quantile token id (or None)."""
    heads = [([t] if prefix_ids is not None else []) + p for p, t in
             zip(prompts, prefix_ids if prefix_ids is not None else [None] * len(prompts))]
    tails = [c + ([eos_id] if f else []) for c, f in zip(completions, finished)]
    if any(not t for t in tails):
        raise QuarkError("a completion with no tokens and no EOS cannot be scored")
    P, C = max(map(len, heads)), max(map(len, tails))
    ids = torch.full((len(heads), P + C), pad_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    labels = torch.full((len(heads), C), -100, dtype=torch.long)
    for r, (h, t) in enumerate(zip(heads, tails)):
        ids[r, P - len(h):P] = torch.tensor(h)
        ids[r, P:P + len(t)] = torch.tensor(t)
        mask[r, P - len(h):P + len(t)] = 1
        labels[r, :len(t)] = torch.tensor(t)
    token_col = torch.tensor([P - len(h) for h in heads])  # column of each row's first real token
    return Batch(ids, mask, labels, token_col, prefix_ids is not None)


def completion_logits(model, batch: Batch, *, without_token: bool = False, pad_id: int = 0) -> torch.Tensor:
    """Logits predicting each completion position, (B, C, V). ``without_token`` hides the prefix token."""
    ids, mask = batch.input_ids, batch.attention_mask
    if without_token and batch.has_token:
        rows = torch.arange(ids.shape[0], device=ids.device)
        ids, mask = ids.clone(), mask.clone()
        ids[rows, batch.token_col] = pad_id
        mask[rows, batch.token_col] = 0
    C = batch.labels.shape[1]
    out = model(input_ids=ids, attention_mask=mask, position_ids=position_ids_from_mask(mask),
                logits_to_keep=C + 1, use_cache=False)
    return out.logits[:, :-1]


def completion_nll(model, prompts: list[list[int]], completions: list[list[int]], finished: list[bool],
                   pad_id: int, eos_id: int, batch_size: int = 32, prefix_ids: list[int] | None = None
                   ) -> np.ndarray:
    """Per-row mean token NLL of the completion (+ EOS when finished) given the prompt."""
    device = next(model.parameters()).device
    out = np.zeros(len(prompts))
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]) + len(completions[i]))
    with torch.inference_mode():
        for b in range(0, len(order), batch_size):
            idx = order[b:b + batch_size]
            batch = build_batch([prompts[i] for i in idx], [completions[i] for i in idx],
                                [finished[i] for i in idx],
                                None if prefix_ids is None else [prefix_ids[i] for i in idx], pad_id, eos_id).to(device)
            logp = F.log_softmax(completion_logits(model, batch).float(), dim=-1)
            mask = batch.labels != -100
            tok = -logp.gather(-1, batch.labels.clamp(min=0).unsqueeze(-1)).squeeze(-1) * mask
            out[idx] = (tok.sum(1) / mask.sum(1)).cpu().numpy()
    return out
