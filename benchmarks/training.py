"""Training-step throughput: :func:`quarklab.train.train_on_rows` with NLL only and with NLL + KL +
entropy (reference = the untouched sampling model), and TRL's ``SFTTrainer`` when ``trl`` imports.

Completion tokens/s of steady-state optimizer steps: steps are timed between consecutive step ends
(a public ``torch.optim`` step hook), the first step of each call left out, for quarklab and TRL alike.
Each quarklab call also runs inside :func:`quarklab.stages.clock`, so the report says how its time
splits between the loop's own marks (``train.policy``, ``train.reference``, ``train.optimizer``).
"""

from __future__ import annotations

import copy
import gc
from pathlib import Path

import numpy as np
import torch

from quarklab import stages

from .common import StepClock, case_section, interleaved, ratio
from .prompts import training_rows
from .settings import BenchSettings


def bench_training(model, source: str, samples, s: BenchSettings, device, tmp: Path) -> dict:
    from quarklab.models import load_tokenizer
    from quarklab.precision import compute_dtype
    from quarklab.tokens import add_quantile_tokens
    from quarklab.train import train_on_rows

    from .trl_compare import trl_case

    c = s.config
    tokenizer = load_tokenizer(source)
    policy = copy.deepcopy(model)
    control_ids = add_quantile_tokens(policy, tokenizer, c.num_quantiles, seed=c.seed)
    reference = model.requires_grad_(False)  # the sampling model, untouched by training: the frozen copy
    rows = training_rows(samples, c, c.batch_size * c.grad_accum * (s.train_steps + 1))
    pad, eos = tokenizer.pad_token_id, tokenizer.eos_token_id
    configs = {"nll": c.replace(kl_coef=0.0, entropy_coef=0.0, epochs_per_iteration=1),
               "kl": c.replace(epochs_per_iteration=1)}
    marks = {mode: {} for mode in configs}  # mode -> stage -> {"seconds": [...], "calls": [...]} per timed rep

    def quark_case(mode: str):
        def run(rep: int, warm: bool):
            with StepClock(device, c.grad_accum) as clock, stages.clock() as marked:
                clock.count_policy(policy)
                train_on_rows(policy, reference, rows, configs[mode], control_ids, pad, eos, seed=c.seed * 1000 + rep)
            if not warm:
                for name in marked.seconds:
                    entry = marks[mode].setdefault(name, {"seconds": [], "calls": []})
                    entry["seconds"].append(marked.seconds[name])
                    entry["calls"].append(marked.calls[name])
            return clock.steady()
        return run

    cases = {"nll": quark_case("nll"), "kl": quark_case("kl")}
    trl_section = trl_case(policy, tokenizer, rows, control_ids, s, device, tmp, cases)
    rec = interleaved(cases, s.warmup, s.reps, "training")
    out = {"rows_per_call": len(rows), "batch_size": c.batch_size, "grad_accum": c.grad_accum,
           "timed_steps_per_rep": s.train_steps,
           "completion_tokens_per_row_mean": float(np.mean([len(r["completion_ids"]) + r["finished"] for r in rows])),
           "prompt_tokens_per_row_mean": float(np.mean([len(r["prompt_ids"]) + 1 for r in rows])),
           "how": ("quarklab.train.train_on_rows over batch_size x grad_accum x (steps + 1) rows sampled above; time "
                   "from the end of its first optimizer step to the end of its last (fresh AdamW per call, as per "
                   "iteration); stages: the loop's marks over the whole call, first step included"),
           "compute_dtype": str(compute_dtype(next(policy.parameters()).dtype, c.precision) or torch.float32)}
    for mode, cfg in configs.items():
        out[mode] = {**case_section(rec[mode], "tokens"), "kl_coef": cfg.kl_coef, "entropy_coef": cfg.entropy_coef,
                     "stages": marks[mode]}
    out["trl"] = trl_section if "trl" not in cases else {**trl_section, **case_section(rec["trl"], "tokens")}
    out["ratios"] = {"kl_step_cost": ratio(out["nll"]["tokens_per_s"], out["kl"]["tokens_per_s"]),
                     "nll_vs_trl": ratio(out["nll"]["tokens_per_s"], out["trl"].get("tokens_per_s"))}
    cases.clear()  # the TRL trainer holds a copy of the policy
    del policy
    gc.collect()
    return out
