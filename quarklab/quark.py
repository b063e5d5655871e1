"""The Quark loop: sample, score, assign quantiles, pool, train, evaluate; resumable at any point.

Iteration 0 evaluates the starting (SFT) model, recorded as "reference". Iteration ``i >= 1``:

1. sample ``prompts_per_iteration x samples_per_prompt`` completions: iteration 1 from the
   starting model without a token (the reference, or the untrained policy when the reference is the
   same model in another dtype: :func:`~quarklab.residency.generator`), later ones from the policy
   conditioned on token 0;
2. score them, assign quantiles (local per prompt or global) and write the pool file;
3. train on the pool (ALT: this iteration's rows, ``per_quantile_per_prompt`` drawn per quantile
   per prompt, finished completions first, with a fresh optimizer; Quark: every pool so far,
   quantiles re-assigned over all of it, ``steps_per_iteration`` steps of one optimizer and
   schedule that span the run), then checkpoint (in the dtype the policy was loaded in);
4. evaluate every token and the unconditioned policy on the evaluation prompts.

Under ``accelerate launch`` (:mod:`quarklab.distributed`) each process samples, scores and evaluates
its share of the prompts and trains data-parallel; the main process alone writes the run directory.

Each stage's output is written atomically and is its own marker of completion (see
:mod:`quarklab.runs`); everything random is seeded from ``(seed, iteration)``, so a run killed
and resumed ends with the same metrics as one that was never interrupted.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import transformers

from . import files, runs, tracking
from .config import QuarkConfig
from .data import config_prompts
from .distributed import Dist
from .errors import QuarkError
from .evaluation import every_token, scored_samples, summary_table
from .hub import resolve_model
from .models import load_policy, load_tokenizer, resolve_device, resolve_dtype
from .quantiles import assign_by_scope, select_per_quantile
from .residency import Residency, generator
from .rewards import config_reward
from .stages import stage
from .tokens import add_quantile_tokens, quantile_token_ids
from .sampling import SamplingParams, encode_prompts, sample
from .names import lookup
from .paths import located, resolve_path
from .train import TrainerState, table_rows, train_on_rows


@dataclass
class Session:
    """Everything a run holds in memory: models, tokenizer, reward, prompts."""

    config: QuarkConfig
    run_dir: Path
    policy: object
    reference: object
    tokenizer: object
    control_ids: list[int]
    reward: object
    train_prompts: pd.DataFrame
    eval_prompts: pd.DataFrame
    done: int  # iterations whose checkpoint exists
    trainer_state: TrainerState | None = None  # optimizer and schedule spanning iterations (pool_strategy "quark")
    dist: Dist = field(default_factory=Dist)  # this process among the run's processes
    tracker: tracking.Tracking | None = None  # the main process's trackers (config.report_to), mirroring metrics
    residency: Residency | None = None  # which models each phase holds on the device (config.idle_models)

    @classmethod
    def open(cls, config: QuarkConfig, run_dir: Path, dist: Dist | None = None) -> "Session":
        dist = dist or Dist()
        check_processes(config, dist)
        if config.sampler == "vllm":  # before any model loads: say now, not after an hour, that vLLM is missing
            from .vllm_backend import require_vllm
            require_vllm()
        device = dist.device or resolve_device(config.device)
        loaders = {"reference": lambda: load_policy(config.reference or config.policy, device=device,
                                                    dtype=config.reference_dtype or config.dtype).requires_grad_(False),
                   "reward": lambda: config_reward(config, device)}
        reference = loaders["reference"]()
        latest = runs.latest_checkpoint(run_dir)
        if latest:
            done, folder = latest
            policy, tokenizer = load_policy(folder, dtype=config.dtype, device=device), load_tokenizer(folder)
            control_ids = quantile_token_ids(tokenizer, config.num_quantiles)
            state = (TrainerState.from_saved(runs.read_trainer_state(run_dir, done))
                     if config.pool_strategy == "quark" else None)
        else:
            done, source, state = 0, config.policy, None
            policy, tokenizer = load_policy(source, dtype=config.dtype, device=device), load_tokenizer(source)
            control_ids = add_quantile_tokens(policy, tokenizer, config.num_quantiles, seed=config.seed,
                                              init=config.token_init)
        return cls(config, run_dir, policy, reference, tokenizer, control_ids, loaders["reward"](),
                   config_prompts(config, config.train_split),
                   config_prompts(config, config.eval_split, limit=config.eval_prompts), done, state, dist,
                   residency=Residency(config, device, loaders, engine=dist.has_engine))

    def holding(self, phase: str, iteration: int):
        """Enter ``phase`` with the models it uses on the device, the others parked (:mod:`quarklab.residency`)."""
        return self.residency.phase(self, phase, iteration)


def check_processes(config: QuarkConfig, dist: Dist) -> None:
    """One clear error for a setting that several processes, or a sharding engine, cannot run."""
    if dist.world > 1 and config.sampler == "vllm":
        raise QuarkError("sampler='vllm' runs in one process (each vLLM engine would take the first GPU): drop "
                         "accelerate launch for it, or sample with sampler='hf'")
    if dist.has_engine and (config.lora_rank or config.pool_strategy == "quark"):
        what = "LoRA" if config.lora_rank else "pool_strategy='quark' (an optimizer kept across iterations)"
        raise QuarkError(f"{what} is not supported under a {dist.engine} engine: run it with DDP "
                         "(configs/accelerate/ddp.yaml)")
    if not dist.has_engine:
        return
    dtype = resolve_dtype(config.dtype, dist.device)  # the policy's: the engine trains and saves in it
    mixed = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(dist.accelerator.mixed_precision) \
        if dist.engine == "deepspeed" else None
    if mixed is not None and dtype != mixed:
        raise QuarkError(f"the accelerate config's mixed_precision {dist.accelerator.mixed_precision!r} would make "
                         f"DeepSpeed cast the {dtype} policy in place: quarklab "
                         "trains in the policy's dtype (DeepSpeed keeps fp32 masters of half-precision weights), so set "
                         "mixed_precision: 'no' (as configs/accelerate/zero2.yaml and zero3.yaml do) or "
                         f"--set dtype={dist.accelerator.mixed_precision}")
    if dist.engine == "fsdp" and dtype != torch.float32:
        raise QuarkError("under FSDP load the policy in float32 (--set dtype=float32): FSDP keeps the float32 shards "
                         "as master weights and computes in bf16 (mixed_precision in configs/accelerate/fsdp.yaml); "
                         "half-precision weights would train with no fp32 masters")


def prepare_run_dir(run_dir: str | Path, config: QuarkConfig | None, resume: bool) -> QuarkConfig:
    """Write (or, on resume, read back) the run's config.json."""
    run_dir = Path(run_dir)
    path = run_dir / runs.CONFIG
    if resume:
        if not path.exists():
            raise QuarkError(f"nothing to resume in {str(run_dir)!r}: it has no config.json")
        stored = located(runs.read_config(run_dir))  # a run stored before paths were: read by today's rule
        if config is not None and config != stored:
            raise QuarkError("--resume continues a run with its own config.json; drop --preset/--set")
        return stored
    if config is None:
        raise QuarkError("a new run needs a config (a preset)")
    if path.exists():
        if located(runs.read_config(run_dir)) != config:
            raise QuarkError(f"{str(run_dir)!r} holds another run (its config.json differs): pick a new --run-dir, "
                             "or continue it with --resume")
    else:
        runs.write_config(run_dir, config)
    return config


def check_resumable(config: QuarkConfig, run_dir: Path) -> None:
    """Before any model loads: drop a torn last line of metrics.jsonl, and fail with one error naming the
    file when metrics.jsonl, the latest checkpoint or a pool file this run will read is damaged."""
    runs.repair_metrics(run_dir)
    latest = runs.latest_checkpoint(run_dir)
    done = latest[0] if latest else 0
    if latest:
        runs.check_checkpoint(run_dir, done, trainer_state=config.pool_strategy == "quark")
    if done < config.iterations:
        for it in [done + 1] if config.pool_strategy == "alt" else range(1, done + 2):
            if runs.pool_path(run_dir, it).exists():
                runs.read_pool(run_dir, it)


def run(config: QuarkConfig | None, run_dir: str | Path, *, resume: bool = False, progress: bool = True) -> pd.DataFrame:
    """Run (or resume) a Quark training run in ``run_dir``; returns its metrics table.

    Relative paths, ``run_dir`` and the config's model, reward and dataset folders and files, are read from the
    project root (:mod:`quarklab.paths`), and config.json stores them absolute (:func:`quarklab.paths.located`).
    The run holds a lock on ``run_dir`` throughout: a second process on the same folder fails at once.
    """
    run_dir = resolve_path(run_dir)
    config = located(config) if config is not None else None
    if resume and not run_dir.is_dir():
        raise QuarkError(f"nothing to resume in {str(run_dir)!r}: no such folder")
    dist = Dist.from_env()
    progress = progress and dist.is_main
    if config is not None and dist.is_main:  # an unknown or missing tracker: before the run folder is made
        tracking.check_trackers(config.report_to)
    with runs.run_lock(run_dir) if dist.is_main else contextlib.nullcontext():
        if dist.is_main:
            config = prepare_run_dir(run_dir, config, resume)
            check_resumable(config, run_dir)
            tracking.check_trackers(config.report_to)  # a resumed run's trackers, before any model loads
        config = dist.decide(lambda: config)
        with (tracking.Tracking(run_dir, config.report_to, config.to_dict()) if dist.is_main
              else contextlib.nullcontext()) as tracker:
            return _run(config, run_dir, dist, tracker, progress)


def _run(config: QuarkConfig, run_dir: Path, dist: Dist, tracker: tracking.Tracking | None,
         progress: bool) -> pd.DataFrame:
    from .progress import tqdm

    with stage("load"):
        if dist.is_main:  # a named setup ("tiny-tldr") is built by one process, before any process reads it
            for spec in (config.policy, config.reference, config.reward, config.dataset):
                lookup(spec, progress=progress)
        dist.barrier()
        s = Session.open(config, run_dir, dist)
        s.tracker = tracker
        if dist.is_main:
            _add_prompt_ids(s)
        dist.barrier()
    start = time.perf_counter()
    if not dist.decide(lambda: runs.has_metrics(run_dir, 0, "eval")):
        with stage("evaluate"):
            _evaluate(s, 0, progress)
        _summary(s, 0, start, progress)
    for it in tqdm(range(1, config.iterations + 1), desc="Quark iterations", disable=not progress):
        start = time.perf_counter()
        if it > s.done:
            if not dist.decide(lambda: runs.pool_path(run_dir, it).exists()):
                _sample_pool(s, it, progress)
            _train(s, it, progress)
        if not dist.decide(lambda: runs.has_metrics(run_dir, it, "eval")):
            with stage("evaluate"):
                _evaluate(s, it, progress)
            _summary(s, it, start, progress)
    if config.final_protocol:
        device = s.dist.device or resolve_device(config.device)
        del s  # the run's models leave memory before the protocol loads its own
        with stage("evaluate"):
            final_evaluation(config, run_dir, device, dist, progress)
    return runs.read_metrics(run_dir)


def final_evaluation(config: QuarkConfig, run_dir: Path, device, dist: Dist, progress: bool) -> None:
    """The last iteration's checkpoint and the reference under ``config.final_protocol``, into ``RUN/evals/``
    (on the main process; each written once, so a resumed run does not redo them)."""
    from .protocols import run_under_protocol

    if dist.is_main:
        run_under_protocol(run_dir, config.final_protocol, device=str(device), progress=progress)
    dist.barrier()


def _seed(config: QuarkConfig, iteration: int, stage: int) -> int:
    return (config.seed * 1_000 + iteration) * 10 + stage


def _sample_pool(s: Session, it: int, progress: bool) -> None:
    c = s.config
    rng = np.random.default_rng(_seed(c, it, 0))
    n = min(c.prompts_per_iteration, len(s.train_prompts))
    prompts = s.train_prompts.iloc[np.sort(rng.choice(len(s.train_prompts), size=n, replace=False))]
    params = SamplingParams.from_config(c, "explore", seed=s.dist.seed(_seed(c, it, 1)))
    mine = s.dist.shard(prompts)  # all samples of a prompt on one process: local quantiles hold
    # the first pass explores with the reference, without a token (and never generates one); later ones, the policy
    # on token 0; quantile tokens are never generated
    on = dict(suppress=s.control_ids) | ({} if it == 1 else dict(token=0, prefix_token_id=s.control_ids[0]))
    with stage("sample"), s.holding("sample", it):
        if c.sampler == "vllm":
            pool, engine = _sample_vllm(s, it, mine, params, on)
        else:
            pool, engine = _sample_hf(s, getattr(s, generator(c, "sample", it)), mine, params, on, progress)
    with stage("score"), s.holding("score", it):
        pool["reward"] = s.reward(pool["prompt"].tolist(), pool["completion"].tolist())
    with stage("pool"):
        pool = s.dist.gather_rows(pool, prompts)
        if s.dist.is_main:
            pool.insert(0, "iteration", it)
            pool["quantile"] = pool_quantiles(c, pool)  # over the whole pool, gathered
            pool["sampler"] = engine  # who sampled it: "transformers 5.19.0 (cpu)", "vllm 0.32.0 (cuda)"
            files.write_parquet(runs.pool_path(s.run_dir, it), pool)
        s.dist.barrier()


def _sample_hf(s: Session, model, prompts: pd.DataFrame, params: SamplingParams, on: dict, progress: bool
               ) -> tuple[pd.DataFrame, str]:
    """The pool from ``model`` through transformers, and which engine (no reference to the model outlives the
    sampling phase: the scoring phase may release it)."""
    engine = f"transformers {transformers.__version__} ({model.device.type})"
    return sample(model, s.tokenizer, prompts, params, progress=progress, **on), engine


def _sample_vllm(s: Session, it: int, prompts: pd.DataFrame, params: SamplingParams, on: dict
                 ) -> tuple[pd.DataFrame, str]:
    """The pool from a vLLM engine, and which engine: iteration 1 from the starting model, later ones from the previous
    iteration's checkpoint (``on``: the token and the suppressed ids); one engine per iteration, stopped as soon
    as it has sampled (training and evaluation get its memory back)."""
    from .vllm_backend import VLLMSampler

    c = s.config
    source = resolve_model(c.reference or c.policy) if it == 1 else runs.checkpoint_path(s.run_dir, it - 1)
    with VLLMSampler(source, tokenizer=runs.checkpoint_path(s.run_dir, it - 1) if it > 1 else None,
                     dtype=str(s.policy.dtype).removeprefix("torch."), seed=params.seed,
                     gpu_memory_utilization=c.vllm_gpu_memory_utilization) as sampler:
        return sampler.sample(prompts, params, **on), sampler.engine


def _add_prompt_ids(s: Session) -> None:
    """Give pools written before they stored ``prompt_ids`` the ids sampling would have stored (once, in place)."""
    import pyarrow.parquet as pq

    for path in runs.pool_files(s.run_dir):
        if "prompt_ids" not in pq.read_schema(path).names:
            pool = runs.read_pool(s.run_dir, runs.iteration_of(path))
            enc = encode_prompts(s.tokenizer, list(pool["prompt"].unique()), s.policy, s.config.max_new_tokens,
                                 s.config.task)
            ids = {text: encoded[0] for text, encoded in zip(enc.texts, enc.encoded)}
            files.write_parquet(path, pool.assign(prompt_ids=pool["prompt"].map(ids.get)))


def pool_quantiles(c: QuarkConfig, pool: pd.DataFrame) -> np.ndarray:
    """Each pool row's quantile, by the run's ``quantile_scope``."""
    return assign_by_scope(pool["reward"].to_numpy(), pool["prompt_id"].to_numpy(), c.num_quantiles,
                           c.quantile_scope)


def training_rows(config: QuarkConfig, run_dir: str | Path, it: int) -> pd.DataFrame:
    """The rows iteration ``it`` trains on, from the pool files (a pure function of them and the seed)."""
    if config.pool_strategy == "alt":
        pool = runs.read_pool(run_dir, it)
        prefer = pool["finished"].to_numpy(dtype=bool) if config.per_quantile_draw == "finished-first" else None
        keep = select_per_quantile(pool["quantile"].to_numpy(), pool["prompt_id"].to_numpy(),
                                   config.per_quantile_per_prompt, _seed(config, it, 2), prefer=prefer)
        return pool.iloc[keep].reset_index(drop=True)
    pool = pd.concat([runs.read_pool(run_dir, i) for i in range(1, it + 1)], ignore_index=True)
    pool["quantile"] = pool_quantiles(config, pool)  # re-sorted over everything so far, as Quark does
    if config.max_train_rows and len(pool) > config.max_train_rows:
        rng = np.random.default_rng(_seed(config, it, 2))
        pool = pool.iloc[np.sort(rng.choice(len(pool), config.max_train_rows, replace=False))]
    return pool.reset_index(drop=True)


def _train(s: Session, it: int, progress: bool) -> None:
    c, tok = s.config, s.tokenizer
    with stage("pool"):
        rows = training_rows(c, s.run_dir, it)
    records = table_rows(rows, c.train_targets, tok, c.max_new_tokens)
    with s.holding("train", it):
        log, state = train_on_rows(s.policy, s.reference, records, c, s.control_ids, tok.pad_token_id,
                                   tok.eos_token_id, seed=_seed(c, it, 3), progress=progress, state=s.trainer_state,
                                   dist=s.dist)
    if c.pool_strategy == "quark":  # the optimizer and schedule go on into the next iteration, parked while idle
        s.trainer_state = replace(state, optimizer=s.residency.idle_state(state.optimizer))
    folder = runs.checkpoint_path(s.run_dir, it)
    if s.dist.is_main:
        eos_rows = sum(r["finished"] for r in records)  # rows trained with EOS after the completion
        runs.record_metrics(s.run_dir, [{"step": i, "rows": len(records), "eos_rows": eos_rows, **entry}
                                        for i, entry in enumerate(log)], it, "train")
        if s.tracker:
            s.tracker.sync()  # the trackers mirror the rows just recorded
        with stage("checkpoint"), files.atomic_dir(folder) as tmp:
            s.policy.save_pretrained(tmp, state_dict=state.weights)  # an engine's gathered weights, or the policy's
            tok.save_pretrained(tmp)
            files.atomic_write_json(tmp / runs.TRAINED_BY, state.trained_by)
            if c.pool_strategy == "quark":
                torch.save(state.saved(), tmp / runs.TRAINER_STATE)
        for old in runs.checkpoints(s.run_dir)[: -c.keep_checkpoints]:
            shutil.rmtree(old)
    s.dist.barrier()
    if state.by_engine:  # the engine sharded the policy it trained: every process reloads it whole
        s.policy = load_policy(folder, dtype=c.dtype, device=s.dist.device)
    s.done = it


def _evaluate(s: Session, it: int, progress: bool) -> None:
    """Evaluate iteration ``it``: at 0 the starting model without a token (recorded as "reference"), after it the
    policy on every token and none."""
    with s.holding("evaluate", it):
        _evaluate_held(s, it, progress)


def _evaluate_held(s: Session, it: int, progress: bool) -> None:
    c = s.config
    # iteration 0 is evaluated before any training (the policy is the starting model while nothing is trained)
    model = getattr(s, generator(c, "evaluate", it) if it > 0 or not s.done else "reference")
    name, tokens = ("reference", [None]) if it == 0 else ("policy", every_token(s.control_ids))
    modes = [SamplingParams.from_config(c, "greedy")]
    if c.eval_sampled_n:
        modes.append(SamplingParams.from_config(c, "sampled", seed=_seed(c, it, 4)))
    control_ids = s.control_ids if model is s.policy else []  # the policy's quantile tokens: suppressed
    summaries, samples = [], []
    for params in modes:  # each process scores its share of the prompts; the main process summarizes them all
        mode = "sampled" if params.do_sample else "greedy"
        params = replace(params, seed=s.dist.seed(params.seed))
        scored = scored_samples(model, s.tokenizer, s.dist.shard(s.eval_prompts), s.reward, reference=s.reference,
                                control_ids=control_ids, tokens=tokens, params=params, perplexity=c.perplexity,
                                progress=progress)
        scored = s.dist.gather_rows(scored, s.eval_prompts, tokens)
        summaries.append(summary_table(scored, tokens, mode))
        samples.append(scored.assign(mode=mode))
    if s.dist.is_main:
        files.write_parquet(runs.eval_path(s.run_dir, it), pd.concat(samples, ignore_index=True))
        rows = pd.concat(summaries, ignore_index=True).assign(model=name)
        runs.record_metrics(s.run_dir, json.loads(rows.to_json(orient="records")), it, "eval")
        if s.tracker:
            s.tracker.sync()
    s.dist.barrier()


def _summary(s: Session, it: int, start: float, progress: bool) -> None:
    """Under ``progress``, one line on the terminal after iteration ``it``'s evaluation (the main process's)."""
    if progress and s.dist.is_main:
        from .progress import tqdm

        line = tracking.summary_line(runs.read_metrics(s.run_dir), it, s.config.iterations, time.perf_counter() - start)
        tqdm.write(line)


def final_table(metrics: pd.DataFrame) -> pd.DataFrame:
    """The reference (iteration 0) and the last iteration's greedy evaluation, one row per token."""
    ev = metrics[(metrics["kind"] == "eval") & (metrics["mode"] == "greedy")]
    last = ev["iteration"].max()
    table = ev[ev["iteration"].isin([0, last])]
    return table[["iteration", "model", "token", "reward", "perplexity", "length", "dist1", "dist2", "dist3",
                  "finished"]].reset_index(drop=True)

