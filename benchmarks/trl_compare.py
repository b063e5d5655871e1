"""The optional TRL comparison: ``trl.SFTTrainer`` on the very rows quarklab trains on (completion-only
loss, same model, batch size, accumulation, lr and clipping). Skipped, with the reason, when ``trl``
does not import or cannot be set up; quarklab never imports ``trl`` itself."""

from __future__ import annotations

import copy
import dataclasses
import time
from pathlib import Path

from quarklab.errors import describe

from .common import StepClock, quiet_hf
from .settings import BenchSettings


def trl_case(policy, tokenizer, rows, control_ids, s: BenchSettings, device, tmp: Path, cases: dict) -> dict:
    """Add TRL's SFTTrainer to ``cases``, or return why not."""
    try:
        import trl
        from datasets import Dataset
        from trl import SFTConfig, SFTTrainer
    except Exception as exc:  # not installed, or broken against these transformers
        return {"skipped": f"trl cannot be imported ({describe(exc)})"}

    c = s.config
    cuda = device.type == "cuda"
    eos = tokenizer.eos_token_id
    # the very token sequences quarklab trains on: [quantile token, prompt] -> completion (+ EOS), loss on completions
    seqs = [[control_ids[r["quantile"]]] + r["prompt_ids"] + r["completion_ids"] + ([eos] if r["finished"] else [])
            for r in rows]
    masks = [[0] * (1 + len(r["prompt_ids"])) + [1] * (len(r["completion_ids"]) + r["finished"]) for r in rows]
    dataset = Dataset.from_dict({"input_ids": seqs, "completion_mask": masks})
    counts: list = []

    class CountingSFTTrainer(SFTTrainer):  # a subclass through TRL's own extension point, nothing patched
        def training_step(self, *args, **kwargs):
            inputs = args[1] if len(args) > 1 else kwargs["inputs"]
            counts.append((inputs["labels"][:, 1:] != -100).sum())
            return super().training_step(*args, **kwargs)

    # SFTConfig turns activation (gradient) checkpointing on by default; quarklab does not checkpoint
    names = {f.name for f in dataclasses.fields(SFTConfig)}
    no_ckpt = "activation_checkpointing" if "activation_checkpointing" in names else "gradient_checkpointing"
    try:
        args = SFTConfig(output_dir=str(tmp / "trl"), per_device_train_batch_size=c.batch_size,
                         gradient_accumulation_steps=c.grad_accum, max_steps=s.train_steps + 1, learning_rate=c.lr,
                         lr_scheduler_type="linear", warmup_steps=0, weight_decay=c.weight_decay,
                         max_grad_norm=c.grad_clip, completion_only_loss=True, max_length=None,
                         logging_strategy="no", save_strategy="no", report_to="none", disable_tqdm=True,
                         use_cpu=not cuda, bf16=cuda, seed=c.seed, dataloader_num_workers=0, **{no_ckpt: False})
        t0 = time.perf_counter()
        with quiet_hf():
            trainer = CountingSFTTrainer(model=copy.deepcopy(policy), args=args, train_dataset=dataset,
                                         processing_class=tokenizer)
        setup = time.perf_counter() - t0
    except Exception as exc:  # an incompatible trl/transformers pair must not sink the whole bench
        return {"skipped": f"SFTTrainer could not be set up ({describe(exc)})"}
    from transformers.trainer_callback import PrinterCallback
    trainer.remove_callback(PrinterCallback)  # it prints every log (disable_tqdm=True adds it)

    def run_trl(rep: int, warm: bool):
        counts.clear()
        trainer.optimizer, trainer.lr_scheduler = None, None  # a fresh AdamW per call, as quarklab
        with StepClock(device, c.grad_accum) as clock:
            trainer.train()
        clock.tokens = list(counts)
        return clock.steady()

    cases["trl"] = run_trl
    return {"version": trl.__version__, "setup_seconds_excluded": setup,
            "optim": str(args.optim), "activation_checkpointing": bool(getattr(args, no_ckpt)),
            "how": ("trl.SFTTrainer (completion_only_loss, no gradient checkpointing, AdamW as its default optim) "
                    "on the same token sequences, batch size, accumulation and lr; steps timed like quarklab's, the "
                    "first left out; dataset preparation in the constructor, not timed")}
