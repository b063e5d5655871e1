"""One Quark iteration's training: completion-only NLL + beta * KL(to the frozen reference) - alpha * entropy.

:func:`train_on_rows` reads top to bottom as the algorithm: the rows dealt into micro-batches
(:mod:`quarklab.schedule`), each laid out as ``[quantile token; prompt] -> completion``
(:mod:`quarklab.scoring`); for each, the reference's logits (no gradient), the policy's, :func:`quark_loss`,
backward; every ``grad_accum`` micro-batches one AdamW step on the fp32 master weights
(:mod:`quarklab.precision`) and one step of the learning-rate schedule. NLL and entropy take the softmax
over the whole vocabulary, quantile tokens included (Quark, ALT; ``loss_vocab`` can drop them); KL compares
the models without the quantile tokens, as Quark does. The reference sees the prompt without the token.

Under a DeepSpeed or FSDP engine, :func:`train_with_engine` runs the same loop beside it, the engine owning
the optimizer step and the master weights. Both return the log and a :class:`TrainerState`.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from .config import QuarkConfig
from .distributed import ENGINES, Dist
from .errors import QuarkError
from .precision import MasterWeights, autocast_context, compute_dtype
from .progress import tqdm
from .schedule import dealt_evenly, lr_schedule, micro_batches, schedule_steps
from .scoring import Batch, build_batch, completion_logits
from .stages import stage
from .trainable import set_trainable, with_lora


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


TRAIN_TARGETS = ("sampled", "alt")
SENTENCE_ENDS = (".", "?", "!")


def table_rows(table, targets: str = "sampled", tokenizer=None, limit: int | None = None) -> list[dict]:
    """Training rows from a pool-like table (``prompt_ids``, ``completion_ids``, ``finished``, ``quantile``; and
    ``completion``, the text, for ALT's targets). A row's ``completion_ids`` are the ids it is trained on and its
    ``finished`` whether EOS is trained after them; both loops (:func:`train_on_rows`, :func:`train_with_engine`)
    train on exactly these rows.

    ``targets`` is the config's ``train_targets``: ``"sampled"``, the sampled ids, with EOS when one was sampled;
    ``"alt"``, :func:`alt_target` of each completion's text, re-tokenized with ``tokenizer``, ``limit`` being the
    run's ``max_new_tokens``. The table is read, never changed: the pool keeps what was sampled.
    """
    if targets not in TRAIN_TARGETS:
        raise QuarkError(f"train_targets must be one of {TRAIN_TARGETS}, got {targets!r}")
    heads = [(list(p), int(q)) for p, q in zip(table["prompt_ids"], table["quantile"])]
    if targets == "sampled":
        tails = [(list(c), bool(f)) for c, f in zip(table["completion_ids"], table["finished"])]
    else:
        if tokenizer is None or limit is None:
            raise QuarkError("train_targets='alt' re-tokenizes each completion's text: pass the tokenizer and the "
                             "token limit (max_new_tokens)")
        if "completion" not in table:
            raise QuarkError("train_targets='alt' re-tokenizes each completion's text, and this table has no "
                             "'completion' column")
        tails = [alt_target(tokenizer, text, limit) for text in table["completion"]]
    return [{"prompt_ids": p, "completion_ids": c, "finished": f, "quantile": q} for (p, q), (c, f) in zip(heads, tails)]


def alt_target(tokenizer, completion: str, limit: int) -> tuple[list[int], bool]:
    """ALT's training target for a completion's text: the ids of ``" " + completion.strip()``, and whether EOS is
    trained after them (``ALT:alt/training_dataset_and_collator.py:50-63,74-95``).

    EOS is left out only when the completion looks cut at the token limit: its stripped text (without the leading
    space) is exactly ``limit`` tokens *and* does not end in ".", "?" or "!". ALT asks spaCy for the text's last
    token and tests that token's last character; spaCy's tokens cover the text up to its last character (a doc's
    tokens with their trailing spaces are the text, and a stripped text has no trailing space), so the test on
    the stripped text's last character gives the same answer, an empty text included (no last token: no
    sentence end). ALT's tokenizer (GPT-J's) adds no special tokens, so both counts here are without them.
    """
    text = completion.strip()
    ids = tokenizer(" " + text, add_special_tokens=False)["input_ids"]
    cut = not text.endswith(SENTENCE_ENDS) and len(tokenizer(text, add_special_tokens=False)["input_ids"]) == limit
    return ids, not cut


def check_rows(rows: list[dict], control_ids: list[int]) -> None:
    """One clear error for a completion holding a quantile token: sampling must suppress them."""
    control = set(control_ids)
    for i, r in enumerate(rows):
        found = control.intersection(r["completion_ids"])
        if found:
            raise QuarkError(f"training row {i} has quantile token id {min(found)} in its completion: a sampler "
                             "generated a quantile token (sampling must suppress them: pass suppress=control_ids)")


@dataclass
class TrainerState:
    """What one iteration's training hands on.

    ``optimizer``, ``scheduler`` and ``scaler`` are the state dicts of AdamW, the learning-rate schedule and the
    GradScaler: passed back to :func:`train_on_rows`, they continue a schedule that spans iterations
    (pool_strategy "quark"), and a checkpoint's ``trainer_state.pt`` holds them (:meth:`saved`). An engine owns
    its optimizer: after :func:`train_with_engine` they are None and ``weights`` holds the trained weights,
    gathered (on the main process; the engine sharded the policy, so every process reloads it from the
    checkpoint saved from them). ``trained_by`` says what trained (:meth:`quarklab.distributed.Dist.describe`).
    """

    optimizer: dict | None = None
    scheduler: dict | None = None
    scaler: dict | None = None
    weights: dict | None = None
    trained_by: dict = field(default_factory=dict)

    @property
    def by_engine(self) -> bool:
        """Whether a DeepSpeed or FSDP engine trained (and left the policy sharded: reload it)."""
        return self.trained_by.get("engine") in ENGINES

    def saved(self) -> dict:
        """What a checkpoint's ``trainer_state.pt`` holds: the optimizer, schedule and scaler state dicts."""
        return {"optimizer": self.optimizer, "scheduler": self.scheduler, "scaler": self.scaler}

    @classmethod
    def from_saved(cls, saved: dict) -> "TrainerState":
        """The state :meth:`saved` wrote, read back (``quarklab.runs.read_trainer_state``)."""
        return cls(saved["optimizer"], saved["scheduler"], saved["scaler"])


def train_on_rows(policy, reference, rows: list[dict], config: QuarkConfig, control_ids: list[int], pad_id: int,
                  eos_id: int, seed: int, progress: bool = False, state: TrainerState | None = None,
                  dist: Dist | None = None) -> tuple[list[dict], TrainerState]:
    """One Quark iteration's optimisation over ``rows`` (prompt_ids, completion_ids, finished, quantile).

    AdamW (``lr``, betas, ``weight_decay``) on fp32 master weights (:class:`~quarklab.precision.MasterWeights`),
    compute in the dtype of :func:`~quarklab.precision.compute_dtype` (fp16 with a GradScaler), gradient
    clipping and accumulation, and the warmup and linear decay of :func:`~quarklab.schedule.lr_schedule` over
    the steps of :func:`~quarklab.schedule.schedule_steps` (lr is 0 on the first step, which only primes AdamW's
    moments; a single step trains at full lr). ``state`` continues a schedule that spans iterations; None
    starts one. ``dist`` (:class:`~quarklab.distributed.Dist`) trains data-parallel: each process takes its
    share of the micro-batches through accelerate's DDP wrapper, which averages the gradients before they
    reach the masters; under a DeepSpeed or FSDP engine :func:`train_with_engine` trains instead.

    Returns one stats dict per optimizer step (loss, nll, entropy, kl, and the lr that step used; the mean
    over processes) and the :class:`TrainerState` to continue from. The policy keeps its dtype.
    """
    dist = dist or Dist()
    check_rows(rows, control_ids)
    if dist.has_engine:
        return train_with_engine(policy, reference, rows, config, control_ids, pad_id, eos_id, seed, progress,
                                 state, dist)
    device = dist.device or next(policy.parameters()).device
    amp = compute_dtype(policy.get_input_embeddings().weight.dtype, config.precision)  # None: float32
    torch.manual_seed(seed)  # dropout, and LoRA's initial adapters
    model = trainable_model(policy, config, control_ids)  # the policy, or its LoRA adapters
    steps, total = schedule_steps(config, len(rows), dist.world)
    batches = micro_batches(rows, config, steps, random.Random(seed), dist.world, dist.rank)
    master = MasterWeights([p for p in model.parameters() if p.requires_grad])
    reference, keep = kl_reference(policy, reference, config, control_ids, device)
    opt = adamw(master.masters, config)
    sched = lr_schedule(opt, config, total)
    scaler = torch.amp.GradScaler(device.type, enabled=amp == torch.float16)
    if state is not None:  # one optimizer and schedule for the whole run (pool_strategy "quark")
        opt.load_state_dict(state.optimizer)
        sched.load_state_dict(state.scheduler)
        scaler.load_state_dict(state.scaler)
    start_training(policy, config)
    trained = dist.accelerator.prepare_model(model) if dist.world > 1 else model  # DDP: gradients averaged
    trained_by = dist.describe(trained)
    log, acc = [], []
    bar = tqdm(total=steps, desc="training", disable=not progress, leave=False)
    for m, chunk in enumerate(batches):
        batch = rows_batch(chunk, control_ids, pad_id, eos_id).to(device)
        boundary = len(acc) + 1 == config.grad_accum or m == len(batches) - 1  # a last partial one still counts
        ref_logits = reference_logits(reference, batch, device, amp, pad_id)
        with stage("train.policy"), dist.accumulating(trained, sync=boundary or master.copies):
            with autocast_context(device, amp):
                logits = completion_logits(trained, batch)
            loss, stats = quark_loss(logits, batch.labels, keep, ref_logits=ref_logits, **loss_terms(config))
            scaler.scale(loss / config.grad_accum).backward()
            master.collect()  # the half-precision gradients into the fp32 masters'
        acc.append(stats)
        if boundary:
            with stage("train.optimizer"):
                scaler.unscale_(opt)
                torch.nn.utils.clip_grad_norm_(master.masters, config.grad_clip)
                scaler.step(opt)
                scaler.update()
                opt.zero_grad(set_to_none=True)
                master.publish()  # the stepped masters, rounded, into the model
            close_step(log, acc, sched, bar)
    bar.close()
    log = mean_over_processes(log, dist)
    new = TrainerState(opt.state_dict(), sched.state_dict(), scaler.state_dict(), trained_by=trained_by)
    end_training(policy, model, config, dist)
    return log, new


def train_with_engine(policy, reference, rows: list[dict], config: QuarkConfig, control_ids: list[int], pad_id: int,
                      eos_id: int, seed: int, progress: bool, state: TrainerState | None, dist: Dist
                      ) -> tuple[list[dict], TrainerState]:
    """:func:`train_on_rows` under a DeepSpeed or FSDP engine (accelerate's ``accumulate`` / ``backward`` idiom):
    the engine owns the optimizer step, the gradient accumulation and clipping, and the fp32 masters of
    half-precision weights. The trained weights come back gathered, as the state's ``weights`` (on the main
    process), and ``policy`` is left to the engine: reload it from the checkpoint they are saved to."""
    if state is not None:
        raise QuarkError("an optimizer kept across iterations (pool_strategy='quark') is not supported under a "
                         f"{dist.engine} engine: run it with DDP (configs/accelerate/ddp.yaml)")
    device = dist.device or next(policy.parameters()).device
    torch.manual_seed(seed)
    model = trainable_model(policy, config, control_ids)
    steps, total = schedule_steps(config, len(rows), dist.world)
    batches = micro_batches(rows, config, steps, random.Random(seed), dist.world, dist.rank)
    batches = dealt_evenly(batches, config.grad_accum)  # accelerate's accumulate() counts whole accumulations
    reference, keep = kl_reference(policy, reference, config, control_ids, device)
    opt = adamw([p for p in model.parameters() if p.requires_grad], config)
    sched = lr_schedule(opt, config, total)
    start_training(policy, config)
    trained, opt = dist.prepare_engine(model, opt, config)
    trained_by = dist.describe(trained)
    log, acc = [], []
    bar = tqdm(total=steps, desc="training", disable=not progress, leave=False)
    for m, chunk in enumerate(batches):
        batch = rows_batch(chunk, control_ids, pad_id, eos_id).to(device)
        boundary = len(acc) + 1 == config.grad_accum or m == len(batches) - 1
        ref_logits = reference_logits(reference, batch, device, None, pad_id)
        with stage("train.policy"), dist.accelerator.accumulate(trained):
            with autocast_context(device, None):
                logits = completion_logits(trained, batch)
            loss, stats = quark_loss(logits, batch.labels, keep, ref_logits=ref_logits, **loss_terms(config))
            dist.accelerator.backward(loss)
        acc.append(stats)
        if boundary:
            with stage("train.optimizer"):
                dist.accelerator.clip_grad_norm_(trained.parameters(), config.grad_clip)
                opt.step()
                opt.zero_grad(set_to_none=True)
            close_step(log, acc, sched, bar)
    bar.close()
    log = mean_over_processes(log, dist)
    new = TrainerState(weights=dist.accelerator.get_state_dict(trained), trained_by=trained_by)
    end_training(policy, model, config, dist)
    return log, new


# ------------------------------------------------------------------ the loops' parts

def trainable_model(policy, config: QuarkConfig, control_ids: list[int]):
    """What trains: LoRA adapters on ``policy`` (returned, a peft model) when ``lora_rank``, else the top
    ``trainable_fraction`` of its blocks (``policy`` returned)."""
    if config.lora_rank:
        return with_lora(policy, config, control_ids)
    set_trainable(policy, config.trainable_fraction)
    return policy


def kl_reference(policy, reference, config: QuarkConfig, control_ids: list[int], device
                 ) -> tuple[object | None, torch.Tensor]:
    """``(reference, keep)``: the reference when the KL term needs it (else None), and :func:`kept_vocab`."""
    if reference is None or config.kl_coef <= 0:
        reference = None
    ref_vocab = reference.get_output_embeddings().weight.shape[0] if reference is not None else None
    return reference, kept_vocab(policy.get_output_embeddings().weight.shape[0], ref_vocab, control_ids, device)


def adamw(params, config: QuarkConfig) -> torch.optim.AdamW:
    return torch.optim.AdamW(params, lr=config.lr, betas=(config.adam_beta1, config.adam_beta2),
                             weight_decay=config.weight_decay)


def rows_batch(rows: list[dict], control_ids: list[int], pad_id: int, eos_id: int) -> Batch:
    """Training rows as one :class:`~quarklab.scoring.Batch`, each prompt after its quantile's token."""
    return build_batch([r["prompt_ids"] for r in rows], [r["completion_ids"] for r in rows],
                       [r["finished"] for r in rows], [control_ids[r["quantile"]] for r in rows], pad_id, eos_id)


def reference_logits(reference, batch: Batch, device, amp, pad_id: int) -> torch.Tensor | None:
    """The reference's completion logits, without the quantile token and without gradient (None: no reference)."""
    if reference is None:
        return None
    with stage("train.reference"), autocast_context(device, amp), torch.no_grad():
        # no_grad, not inference_mode: its tensors could not enter the loss's graph uncopied
        return completion_logits(reference, batch, without_token=True, pad_id=pad_id)


def loss_terms(config: QuarkConfig) -> dict:
    """:func:`quark_loss`'s settings from the config."""
    return dict(kl_coef=config.kl_coef, kl_direction=config.kl_direction, entropy_coef=config.entropy_coef,
                loss_vocab=config.loss_vocab)


def step_stats(micro: list[dict], sched) -> dict:
    """One optimizer step's log entry: the mean of its micro-batches' stats, and the lr the step used."""
    return {k: float(np.mean([a[k] for a in micro])) for k in micro[0]} | {"lr": sched.get_last_lr()[0]}


def close_step(log: list[dict], micro: list[dict], sched, bar) -> None:
    """After an optimizer step, in both loops: its log entry, the schedule moved on, its micro-batches' stats
    cleared, the bar advanced."""
    log.append(step_stats(micro, sched))
    sched.step()
    micro.clear()
    bar.update(1)


def mean_over_processes(log: list[dict], dist: Dist) -> list[dict]:
    logs = dist.gather(log)
    return [{k: float(np.mean([entry[i][k] for entry in logs])) for k in log[i]} for i in range(len(log))]


def start_training(policy, config: QuarkConfig) -> None:
    if config.gradient_checkpointing:
        policy.activation_checkpointing_enable()
    policy.train()


def end_training(policy, model, config: QuarkConfig, dist: Dist) -> None:
    """Merge LoRA adapters into ``policy``, let go of accelerate's wrappers, and leave ``policy`` for sampling."""
    if config.lora_rank:
        model.merge_and_unload()
    dist.release()
    policy.eval()
    if config.gradient_checkpointing:
        policy.activation_checkpointing_disable()
