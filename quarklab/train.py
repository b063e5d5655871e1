"""The Quark training step: completion-only NLL + beta * KL(to the frozen reference) - alpha * entropy.

A training row is ``[quantile token; prompt] -> completion``. Batches put each prompt
left-padded and each completion right-padded, so the completion block starts at the same
column in every row and only its logits are computed (``logits_to_keep``). The reference
sees the same tensor with the quantile token masked out (attention mask 0, positions
recounted): exactly the prompt without the token, in one layout. NLL and entropy take the
softmax over the whole vocabulary, quantile tokens included (Quark, ALT; ``loss_vocab``
can drop them); KL compares the models without the quantile tokens, as Quark does.

Half-precision weights train on fp32 master copies of the trainable parameters and compute in
their own dtype (bf16, or fp16 with a GradScaler); float32 weights may compute under autocast:
see :func:`train_on_rows`.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from transformers import get_linear_schedule_with_warmup

from .config import QuarkConfig
from .errors import QuarkError
from .models import position_ids_from_mask
from .stages import stage
from .trainable import set_trainable, with_lora


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


def table_rows(table) -> list[dict]:
    """Training rows from a pool-like table (``prompt_ids``, ``completion_ids``, ``finished``, ``quantile``)."""
    return [{"prompt_ids": list(p), "completion_ids": list(c), "finished": bool(f), "quantile": int(q)}
            for p, c, f, q in zip(table["prompt_ids"], table["completion_ids"], table["finished"], table["quantile"])]


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


def kept_vocab(policy_vocab: int, ref_vocab: int | None, control_ids: list[int], device) -> torch.Tensor:
    """Boolean mask over the vocabulary both models share, with the quantile tokens left out."""
    size = min(policy_vocab, ref_vocab) if ref_vocab else policy_vocab
    keep = torch.ones(size, dtype=torch.bool, device=device)
    keep[[i for i in control_ids if i < size]] = False
    return keep


def quark_loss(policy_logits: torch.Tensor, labels: torch.Tensor, keep: torch.Tensor, *,
               ref_logits: torch.Tensor | None = None, kl_coef: float = 0.0, kl_direction: str = "policy||ref",
               entropy_coef: float = 0.0, loss_vocab: str = "full") -> tuple[torch.Tensor, dict[str, float]]:
    """``NLL + kl_coef * KL - entropy_coef * entropy``, each a mean over completion tokens.

    ``loss_vocab="full"`` (Quark, ALT): NLL and entropy use the softmax over the whole vocabulary,
    quantile tokens included; ``"no-quantile-tokens"``: over ``keep`` only. KL always compares the two
    models over ``keep`` (their shared vocabulary without the quantile tokens), as Quark does.
    """
    mask = labels != -100
    n = mask.sum().clamp(min=1)
    kept_logp = None  # the softmax over ``keep``: computed only where a term needs it (not on the NLL-only path)
    if loss_vocab == "full":
        logp, target = F.log_softmax(policy_logits.float(), dim=-1), labels.clamp(min=0)
    else:
        kept_logp = F.log_softmax(policy_logits[..., : keep.numel()][..., keep].float(), dim=-1)
        logp, target = kept_logp, (keep.long().cumsum(0) - 1)[labels.clamp(min=0)]  # ids after the drop
    nll = -(logp.gather(-1, target.unsqueeze(-1)).squeeze(-1) * mask).sum() / n
    entropy = (-(logp.exp() * logp).sum(-1) * mask).sum() / n  # logged always, in the loss when entropy_coef > 0
    loss = nll - entropy_coef * entropy
    stats = {"nll": nll.item(), "entropy": entropy.item()}
    if ref_logits is not None:
        if kept_logp is None:
            kept_logp = F.log_softmax(policy_logits[..., : keep.numel()][..., keep].float(), dim=-1)
        ref_logp = F.log_softmax(ref_logits[..., : keep.numel()][..., keep].float(), dim=-1)
        if kl_direction == "policy||ref":
            kl_tok = (kept_logp.exp() * (kept_logp - ref_logp)).sum(-1)
        else:
            kl_tok = (ref_logp.exp() * (ref_logp - kept_logp)).sum(-1)
        kl = (kl_tok * mask).sum() / n
        stats["kl"] = kl.item()
        loss = loss + kl_coef * kl
    stats["loss"] = loss.item()
    return loss, stats


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


HALF = (torch.bfloat16, torch.float16)


def compute_dtype(weights: torch.dtype, precision: str) -> torch.dtype | None:
    """The dtype training computes in (None = float32). Half-precision weights compute in their own dtype
    (``precision`` "auto" or that dtype); float32 weights compute under autocast when ``precision`` names
    "bf16" or "fp16", in float32 for "auto" and "fp32"."""
    named = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None, "auto": None}[precision]
    if weights in HALF:
        if precision != "auto" and named != weights:
            raise QuarkError(f"precision={precision!r} does not fit a policy loaded in {weights}: half-precision "
                             "weights compute in their own dtype; set precision='auto' (or dtype='float32' to "
                             "compute under autocast)")
        return weights
    return named


def autocast_context(device: torch.device, dtype: torch.dtype | None):
    return torch.autocast(device.type, dtype=dtype, enabled=dtype is not None)


class MasterWeights:
    """fp32 master copies of half-precision trainable parameters, as DeepSpeed and mixed-precision training keep.

    The model computes in its own dtype; after each backward :meth:`collect` moves the half-precision gradients
    into the masters' fp32 gradients (accumulating there), the optimizer steps the masters, and :meth:`publish`
    writes them back, rounded, into the model. Updates far below bf16's resolution (lr 2e-5 on weights near
    0.02) accumulate in the masters instead of rounding away at every step. Float32 parameters are their own
    masters.
    """

    def __init__(self, params: list[torch.nn.Parameter], copy: bool = True):
        self.params = params
        self.copies = copy and any(p.dtype in HALF for p in params)
        self.masters = [torch.nn.Parameter(p.detach().float()) for p in params] if self.copies else params

    def collect(self) -> None:
        if self.copies:
            for m, p in zip(self.masters, self.params):
                if p.grad is not None:
                    m.grad = p.grad.float() if m.grad is None else m.grad.add_(p.grad)
                    p.grad = None

    @torch.no_grad()
    def publish(self) -> None:
        if self.copies:
            for m, p in zip(self.masters, self.params):
                p.copy_(m)


def schedule_steps(config: QuarkConfig, num_rows: int, world: int = 1) -> tuple[int, int]:
    """``(steps, total)``: optimizer steps this iteration takes and steps in the whole learning-rate schedule.

    Without ``steps_per_iteration``, ``epochs_per_iteration`` passes over the rows, in a schedule of their
    own (ALT: a fresh optimizer each iteration); with it, that many steps, in one schedule over the run
    (``iterations * steps_per_iteration``, Quark) when the pool strategy is "quark". One step takes
    ``grad_accum`` micro-batches of ``batch_size`` rows on each of ``world`` processes."""
    if config.steps_per_iteration is None:
        steps = max(1, math.ceil(math.ceil(num_rows / config.batch_size) * config.epochs_per_iteration
                                 / (config.grad_accum * world)))
        return steps, steps
    steps = config.steps_per_iteration
    return steps, steps * config.iterations if config.pool_strategy == "quark" else steps


def lr_schedule(opt, config: QuarkConfig, total: int):
    """Warmup over ``warmup = max(1, int(warmup_ratio * total))`` steps from lr 0, then linear decay to 0 at
    ``total``: "linear" warmup is transformers' ``get_linear_schedule_with_warmup``; "log" is DeepSpeed's
    ``WarmupDecayLR`` default (ALT's run): ``lr * ln(t + 1) / ln(warmup)`` at step ``t < warmup``."""
    warmup = min(max(1, int(config.warmup_ratio * total)), total - 1)  # one step alone trains at full lr
    if config.warmup_shape == "linear" or warmup < 2:
        return get_linear_schedule_with_warmup(opt, warmup, total)

    def factor(t: int) -> float:
        return math.log(t + 1) / math.log(warmup) if t < warmup else max(0.0, (total - t) / (total - warmup))

    return torch.optim.lr_scheduler.LambdaLR(opt, factor)


def micro_batches(rows: list[dict], config: QuarkConfig, steps: int, rng: random.Random, world: int = 1,
                  rank: int = 0) -> list[list[dict]]:
    """Process ``rank``'s micro-batches for ``steps`` optimizer steps: the rows reshuffled on every pass and
    dealt to the ``world`` processes in turn; when they do not divide evenly, the first are dealt again, so
    that every process takes as many (as a DistributedSampler does)."""
    per_step = config.grad_accum * world
    if config.steps_per_iteration is None:
        passes = config.epochs_per_iteration
    else:
        passes = math.ceil(steps * per_step * config.batch_size / len(rows))
    out = []
    for _ in range(passes):
        order = list(range(len(rows)))
        rng.shuffle(order)
        out += [[rows[i] for i in order[b:b + config.batch_size]] for b in range(0, len(order), config.batch_size)]
    out = out if config.steps_per_iteration is None else out[: steps * per_step]
    return dealt_evenly(out, world)[rank::world]


def dealt_evenly(items: list, n: int) -> list:
    """``items`` followed by its first items again (cyclically) up to a multiple of ``n``."""
    return items + [items[i % len(items)] for i in range(-len(items) % n)]


def check_rows(rows: list[dict], control_ids: list[int]) -> None:
    """One clear error for a completion holding a quantile token: sampling must suppress them."""
    control = set(control_ids)
    for i, r in enumerate(rows):
        found = control.intersection(r["completion_ids"])
        if found:
            raise QuarkError(f"training row {i} has quantile token id {min(found)} in its completion: a sampler "
                             "generated a quantile token (sampling must suppress them: pass suppress=control_ids)")


def train_on_rows(policy, reference, rows: list[dict], config: QuarkConfig, control_ids: list[int], pad_id: int,
                  eos_id: int, seed: int, progress: bool = False, state: dict | None = None, dist=None
                  ) -> tuple[list[dict], dict]:
    """One Quark iteration's optimisation over ``rows`` (prompt_ids, completion_ids, finished, quantile).

    AdamW (``lr``, betas, ``weight_decay``) on fp32 master weights (:class:`MasterWeights`), compute in the
    dtype of :func:`compute_dtype` (fp16 with a GradScaler), gradient clipping and accumulation, and
    the warmup and linear decay of :func:`lr_schedule` over the steps of :func:`schedule_steps` (the
    learning rate is 0 on the first optimizer step, which only primes AdamW's moments; a single step trains
    at full lr). ``state`` (optimizer, schedule and scaler, as returned) continues a schedule that spans
    iterations; None starts one.

    ``dist`` (:class:`quarklab.distributed.Dist`) trains data-parallel: each process takes its share of the
    micro-batches (:func:`micro_batches`) through accelerate's DDP wrapper, which averages the gradients
    before they reach the masters, so every process takes the same steps. Under a DeepSpeed or FSDP
    engine the engine owns the optimizer step and the fp32 masters (accelerate's ``accumulate`` /
    ``backward`` idiom); the trained weights are then returned, gathered, as ``state["weights"]`` (on the
    main process) and ``policy`` is left to the engine: reload it from the checkpoint they are saved to.
    ``state["trained_by"]`` says what trained (:meth:`quarklab.distributed.Dist.describe`).

    Returns one stats dict per optimizer step (loss, nll, entropy, kl, and the lr that step used; the mean
    over processes) and the state to continue from. The policy keeps the dtype it came in (checkpoints
    are saved in it).
    """
    from .distributed import Dist
    from .progress import tqdm

    dist = dist or Dist()
    engine = dist.engine in ("deepspeed", "fsdp")
    check_rows(rows, control_ids)
    device = dist.device or next(policy.parameters()).device
    amp = None if engine else compute_dtype(policy.get_input_embeddings().weight.dtype, config.precision)
    torch.manual_seed(seed)
    rng = random.Random(seed)
    if config.lora_rank:
        model = with_lora(policy, config, control_ids)
    else:
        model = policy
        set_trainable(policy, config.trainable_fraction)
    master = MasterWeights([p for p in model.parameters() if p.requires_grad], copy=not engine)
    steps, total = schedule_steps(config, len(rows), dist.world)
    batches = micro_batches(rows, config, steps, rng, dist.world, dist.rank)
    if engine:  # accelerate's accumulate() counts micro-batches: whole accumulations only
        batches = dealt_evenly(batches, config.grad_accum)
    use_ref = reference is not None and config.kl_coef > 0
    keep = kept_vocab(policy.get_output_embeddings().weight.shape[0],
                      reference.get_output_embeddings().weight.shape[0] if use_ref else None, control_ids, device)
    opt = torch.optim.AdamW(master.masters, lr=config.lr, betas=(config.adam_beta1, config.adam_beta2),
                            weight_decay=config.weight_decay)
    sched = lr_schedule(opt, config, total)
    scaler = torch.amp.GradScaler(device.type, enabled=amp == torch.float16)
    if state is not None:
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
    if config.gradient_checkpointing:
        policy.activation_checkpointing_enable()
    policy.train()
    trained = model  # what the forward runs through: the model, or accelerate's wrapper of it
    if engine:
        trained, opt = dist.prepare_engine(model, opt, config)
    elif dist.world > 1:
        trained = dist.accelerator.prepare_model(model)  # DDP
    trained_by = dist.describe(trained)
    log, acc = [], []
    bar = tqdm(total=steps, desc="training", disable=not progress, leave=False)
    for m, chunk in enumerate(batches):
        batch = build_batch([r["prompt_ids"] for r in chunk], [r["completion_ids"] for r in chunk],
                            [r["finished"] for r in chunk], [control_ids[r["quantile"]] for r in chunk],
                            pad_id, eos_id).to(device)
        boundary = len(acc) + 1 == config.grad_accum or m == len(batches) - 1  # a last partial one still counts
        ref_logits = None
        if use_ref:
            with stage("train.reference"), autocast_context(device, amp), torch.no_grad():
                # no_grad, not inference_mode: its tensors could not enter the loss's graph uncopied
                ref_logits = completion_logits(reference, batch, without_token=True, pad_id=pad_id)
        with stage("train.policy"), dist.accumulating(trained, engine, sync=boundary or master.copies):
            with autocast_context(device, amp):
                logits = completion_logits(trained, batch)
            loss, stats = quark_loss(logits, batch.labels, keep, ref_logits=ref_logits, kl_coef=config.kl_coef,
                                     kl_direction=config.kl_direction, entropy_coef=config.entropy_coef,
                                     loss_vocab=config.loss_vocab)
            if engine:
                dist.accelerator.backward(loss)
            else:
                scaler.scale(loss / config.grad_accum).backward()
                master.collect()
        acc.append(stats)
        if boundary:
            with stage("train.optimizer"):
                if engine:
                    dist.accelerator.clip_grad_norm_(trained.parameters(), config.grad_clip)
                    opt.step()
                else:
                    scaler.unscale_(opt)
                    torch.nn.utils.clip_grad_norm_(master.masters, config.grad_clip)
                    scaler.step(opt)
                    scaler.update()
                opt.zero_grad(set_to_none=True)
                master.publish()
            log.append({k: float(np.mean([a[k] for a in acc])) for k in acc[0]} | {"lr": sched.get_last_lr()[0]})
            sched.step()
            acc = []
            bar.update(1)
    bar.close()
    logs = dist.gather(log)
    log = [{k: float(np.mean([entry[i][k] for entry in logs])) for k in log[i]} for i in range(len(log))]
    if engine:
        new_state = {"weights": dist.accelerator.get_state_dict(trained)}
    else:
        new_state = {"optimizer": opt.state_dict(), "scheduler": sched.state_dict(), "scaler": scaler.state_dict()}
    new_state["trained_by"] = trained_by
    if config.lora_rank:
        model.merge_and_unload()
    dist.release()
    policy.eval()
    if config.gradient_checkpointing:
        policy.activation_checkpointing_disable()
    return log, new_state
