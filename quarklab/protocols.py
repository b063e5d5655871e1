"""Evaluation protocols: one policy measured the way a paper measured it, as the table a paper would print.

A :class:`Protocol` fixes *how* a policy is evaluated: the split, the decoding, the prompt form, the reward's
precision, the perplexity rule and the reference's dtype, and which models a bare checkpoint is measured with.
:data:`PROTOCOLS` holds the named ones; ``"alt-card"`` is the evaluation behind the ALT-Quark model card's
TL;DR table (RM / PPL / Avg. len on the whole test split), field by field as ALT's scripts run it
(``docs/alt-parity.md``, "The card's protocol", gives each field beside ALT's file and line).

:func:`evaluate_policy` evaluates one policy, named the way a researcher has it at hand:

* a run directory (its last iteration's checkpoint; ``iteration=N`` another one, ``iteration=0`` its
  reference, the SFT model). The run's own models (reward, reference, dataset) are used;
* a checkpoint folder or a hub id (such as the released ``sauc-abadal-lloret/gpt-j-6b-ALT-Quark-tldr``). The
  protocol's models are used (``alt-card``: CarperAI's TL;DR reward model as ALT feeds it, the CarperAI SFT
  model as the perplexity reference, CarperAI's TL;DR dataset).

Each can be replaced (``reward=``, ``reference=``, ``dataset=``). The prompt is conditioned the way the model
expects, read from its tokenizer: ``_QUANTILE_TOKEN_0_`` in front for a Quark checkpoint, nothing for a model
without quantile tokens. The result holds every sample and one summary row: mean reward, perplexity and length
with their bootstrap 95 % intervals over prompts, and the share of completions cut at the token limit.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd

from . import files, runs
from .checks import check_int
from .config import QuarkConfig, check_field
from .data import load_prompts
from .errors import QuarkError
from .evaluation import scored_samples
from .metrics import LEVEL, bootstrap_interval
from .models import load_policy, load_tokenizer, resolve_device
from .rewards import load_reward
from .sampling import SamplingParams
from .tokens import quantile_token_ids


@dataclass(frozen=True)
class Protocol:
    """How a policy is evaluated: each field as the config field of the same name documents it, except
    ``policy_dtype`` (the evaluated model's dtype on an accelerator; float32 on a CPU, which has no fast
    half-precision path) and ``length`` (``"text"``: tokens of the completion's text re-tokenized, without EOS,
    as ALT counts them; ``"sampled"``: the sampled ids). ``models`` are the reward, reference and dataset a
    checkpoint or hub id is evaluated with (a run brings its own). ``sources`` cites where each value comes
    from."""

    name: str
    description: str
    eval_split: str = "test"
    eval_prompts: int | None = None
    eval_max_new_tokens: int = 128
    eval_batch_size: int = 64
    strip_prompts: bool = True
    perplexity: str = "alt"
    reference_dtype: str = "float32"
    reward_dtype: str = "float16"
    reward_precision: str = "float16"
    policy_dtype: str = "float16"
    length: str = "text"
    models: dict = field(default_factory=dict)
    sources: dict = field(default_factory=dict)

    def __post_init__(self):
        for name in ("eval_split", "eval_prompts", "eval_max_new_tokens", "eval_batch_size", "perplexity",
                     "reference_dtype", "reward_dtype", "reward_precision"):
            check_field(name, getattr(self, name), where=f"protocol {self.name!r}")
        check_field("dtype", self.policy_dtype, where=f"protocol {self.name!r}", called="policy_dtype")
        if self.length not in ("text", "sampled"):
            raise QuarkError(f"protocol {self.name!r}: length must be 'text' or 'sampled', got {self.length!r}")
        unknown = sorted(set(self.models) - set(MODEL_FIELDS))
        if unknown:
            raise QuarkError(f"protocol {self.name!r}: unknown model field(s) {unknown}; use {MODEL_FIELDS}")

    @classmethod
    def of_run(cls, config: QuarkConfig) -> "Protocol":
        """The protocol a run evaluates itself with each iteration (greedy only), from its config."""
        return cls(name="run", description="the run's own greedy evaluation (its config's eval_* fields)",
                   eval_split=config.eval_split, eval_prompts=config.eval_prompts,
                   eval_max_new_tokens=config.eval_max_new_tokens, eval_batch_size=config.eval_batch_size,
                   strip_prompts=False, perplexity=config.perplexity,
                   reference_dtype=config.reference_dtype or config.dtype, reward_dtype=config.reward_dtype,
                   reward_precision=config.reward_precision, policy_dtype=config.dtype,
                   length="sampled", models={k: getattr(config, k) for k in MODEL_FIELDS})


MODEL_FIELDS = ("dataset", "reward", "reward_base_model", "reward_template", "reward_max_length", "reference",
                "reward_label", "dataset_prompt_column", "dataset_subset", "dataset_revision")
"""The config fields that say which models and data a run uses; a protocol's ``models`` may leave out the last
four (their defaults: the classifier's last label, the "prompt" column, the dataset's default subset and
revision)."""
_DATA_FIELDS = ("dataset_prompt_column", "dataset_subset", "dataset_revision")

ALT_CARD = Protocol(
    name="alt-card",
    description="the ALT-Quark model card's TL;DR table: whole test split, greedy, 128 new tokens, stripped "
                "prompts, fp16 reward scores, perplexity of the re-tokenized text under the reference in fp32",
    models=dict(dataset="CarperAI/openai_summarize_tldr", reward="CarperAI/openai_summarize_tldr_rm_checkpoint/"
                "pytorch_model.bin", reward_base_model="CarperAI/openai_summarize_tldr_sft", reward_template=None,
                reward_max_length=550, reference="CarperAI/openai_summarize_tldr_sft"),
    sources={
        "eval_split": "ALT@79bc706:tasks/summarization/training/bash_scripts/quark/"
                      "quark_iter_10_vllm_sampling_gather_runs_test.sh:5,11-16 (test split)",
        "eval_prompts": "model card: 'computed on the whole test set'",
        "eval_max_new_tokens": "quark_iter_10_vllm_sampling_gather_runs_test.sh:11-16 (max_tokens 128)",
        "decoding": "ALT:alt/vllm_sampling.py:39-44 with temperature 0.0, top_p 1.0, n 1 (greedy)",
        "strip_prompts": "ALT@79bc706:tasks/summarization/datasets/sampling_dataset_and_collator.py:73-76",
        "conditioning": "model card: prepend _QUANTILE_TOKEN_0_ to the prompt, no space",
        "reward": "ALT:tasks/summarization/reward.py:111-122,157-171; ALT:alt/models/reward.py:114-167",
        "reward_dtype": "ALT:tasks/summarization/configs/QUARK_TLDR_config.yaml:20-21 (half: true)",
        "reward_precision": "the fp16 RM's scores are fp16 values (QUARK_TLDR_config.yaml:20-21)",
        "perplexity": "ALT:alt/perplexity.py:43-50,58-94 (re-tokenized text, no EOS, nanmean of exp(mean NLL))",
        "reference_dtype": "ALT:alt/perplexity.py:156-160 (from_pretrained without a dtype: float32)",
        "length": "ALT@9c4a431:scratch/hist_reward_ppl_len.py:40-41,55 (tokens of the generation's text)",
    })

PROTOCOLS: dict[str, Protocol] = {"alt-card": ALT_CARD}
"""The named protocols; ``"run"`` (:meth:`Protocol.of_run`) is each run's own."""


def get_protocol(name: str | Protocol, config: QuarkConfig | None = None) -> Protocol:
    """Protocol ``name`` (:data:`PROTOCOLS`, or ``"run"`` with the run's ``config``)."""
    if isinstance(name, Protocol):
        return name
    if name == "run":
        if config is None:
            raise QuarkError("protocol 'run' is a run's own evaluation: evaluate a run directory, or name another "
                             f"protocol ({', '.join(PROTOCOLS)})")
        return Protocol.of_run(config)
    if name not in PROTOCOLS:
        raise QuarkError(f"unknown protocol {name!r}: choose from {', '.join([*PROTOCOLS, 'run'])}")
    return PROTOCOLS[name]


@dataclass(frozen=True)
class Target:
    """What is evaluated: the model folder or hub id, a label for tables, and the run it belongs to."""

    source: str
    label: str
    run: Path | None = None
    iteration: int | None = None
    config: QuarkConfig | None = None


def resolve_target(policy: str | os.PathLike, iteration: int | None = None) -> Target:
    """A run directory (its checkpoint ``iteration``; None = the last; 0 = the run's reference), a checkpoint
    folder, or a hub id / registered name."""
    spec = os.fspath(policy)
    path = Path(spec)
    if runs.is_run_dir(path):
        config = runs.read_config(path)
        if iteration is None:
            latest = runs.latest_checkpoint(path)
            if latest is None:
                raise QuarkError(f"run {spec!r} has no checkpoint yet: train it (quarklab train --resume {spec}) "
                                 "or evaluate its reference with iteration 0")
            iteration = latest[0]
        check_int(iteration, "iteration", 0)
        if iteration == 0:
            return Target(config.reference or config.policy, f"{path.name} reference", path, 0, config)
        folder = runs.checkpoint_path(path, iteration)
        if not folder.is_dir():
            kept = [runs.iteration_of(p) for p in runs.checkpoints(path)]
            raise QuarkError(f"run {spec!r} has no checkpoint of iteration {iteration} (kept: {kept or 'none'}; "
                             "keep_checkpoints says how many a run keeps)")
        return Target(str(folder), f"{path.name} iteration {iteration}", path, iteration, config)
    if iteration is not None:
        raise QuarkError(f"iteration= picks a checkpoint of a run directory; {spec!r} is not one (no run "
                         f"{runs.CONFIG})")
    return Target(spec, path.name if path.is_dir() else spec)


@dataclass
class ProtocolResult:
    """One policy under one protocol: ``summary`` (one row), ``samples`` (one row per prompt) and what was used
    (``used``: the protocol, models, conditioning and dtypes)."""

    summary: pd.DataFrame
    samples: pd.DataFrame
    used: dict

    def table(self) -> pd.DataFrame:
        """The row a paper prints (:func:`card_table`)."""
        return card_table(self.summary)

    def __str__(self) -> str:
        u = self.used
        with pd.option_context("display.width", 200, "display.max_colwidth", 60):
            body = self.table().to_string(index=False)
        return (f"{body}\nprotocol {u['protocol']['name']}: {u['protocol']['description']}\n"
                f"RM = {u['reward']} (scores in {u['protocol']['reward_precision']}); PPL under {u['reference']} "
                f"({u['reference_dtype']}); Avg. len in tokens "
                f"({u['length']}); cut = share stopped at {u['protocol']['eval_max_new_tokens']} tokens; "
                f"[{int(LEVEL * 100)} % bootstrap intervals over prompts]")


def evaluate_policy(policy: str | os.PathLike, protocol: str | Protocol = "alt-card", *,
                    iteration: int | None = None, reward: str | None = None, reference: str | None = None,
                    dataset: str | None = None, prompts: int | None = None, device: str = "auto",
                    seed: int = 0, progress: bool = False) -> ProtocolResult:
    """Evaluate ``policy`` (a run directory, a checkpoint folder or a hub id) under ``protocol``; see the module
    docstring. ``prompts`` keeps the first N prompts of the split (None: the protocol's, ``alt-card``: all);
    ``seed`` seeds the bootstrap."""
    target = resolve_target(policy, iteration)
    proto = get_protocol(protocol, target.config)
    if prompts is not None:
        proto = replace(proto, eval_prompts=check_int(prompts, "prompts", 1))
    models = dict(proto.models)
    if target.config is not None:  # a run brings its own models
        models.update({k: getattr(target.config, k) for k in MODEL_FIELDS})
        models["reference"] = target.config.reference or target.config.policy
    models.update({k: v for k, v in (("reward", reward), ("reference", reference), ("dataset", dataset))
                   if v is not None})
    if reward is not None and target.config is not None and reward != target.config.reward:
        models["reward_base_model"] = models["reward_label"] = None
    if dataset is not None and target.config is not None and dataset != target.config.dataset:
        models.update(dict.fromkeys(_DATA_FIELDS))  # the run's column, subset and revision were its dataset's
    missing = [k for k in ("dataset", "reward", "reference") if not models.get(k)]
    if missing:
        raise QuarkError(f"protocol {proto.name!r} names no {', '.join(missing)} for {target.source!r}: pass "
                         + ", ".join(f"{m}=" for m in missing))

    dev = resolve_device(device)
    half = dev.type != "cpu"
    policy_dtype = proto.policy_dtype if half else "float32"
    reward_dtype = proto.reward_dtype if half else "float32"
    model, tokenizer = load_policy(target.source, dtype=policy_dtype, device=dev), load_tokenizer(target.source)
    control_ids = quantile_token_ids(tokenizer, required=False)
    token = 0 if control_ids else None
    ref = load_policy(models["reference"], dtype=proto.reference_dtype, device=dev)
    reward_fn = load_reward(models["reward"], base_model=models["reward_base_model"],
                            template=models["reward_template"], max_length=models["reward_max_length"],
                            label=models.get("reward_label"), dtype=reward_dtype, device=dev,
                            precision=proto.reward_precision)
    table = load_prompts(models["dataset"], proto.eval_split, limit=proto.eval_prompts, strip=proto.strip_prompts,
                         prompt_column=models.get("dataset_prompt_column") or "prompt",
                         subset=models.get("dataset_subset"), revision=models.get("dataset_revision"))
    params = SamplingParams(do_sample=False, max_new_tokens=proto.eval_max_new_tokens,
                            batch_size=proto.eval_batch_size,  # prompts cut as a run's task cuts them
                            task=target.config.task if target.config is not None else "tldr")
    samples = scored_samples(model, tokenizer, table, reward_fn, reference=ref, control_ids=control_ids,
                             tokens=[token], params=params, perplexity=proto.perplexity, progress=progress)
    if proto.length == "text":
        samples["length"] = [len(ids) for ids in
                             tokenizer(samples["completion"].tolist(), add_special_tokens=False)["input_ids"]]
    else:
        samples["length"] = samples["num_tokens"]
    samples["cut"] = ~samples["finished"] & (samples["num_tokens"] >= proto.eval_max_new_tokens)
    used = {"protocol": asdict(proto), "policy": target.source, "run": str(target.run) if target.run else None,
            "iteration": target.iteration, "conditioning": "none" if token is None else "_QUANTILE_TOKEN_0_",
            "reward": models["reward"], "reference": models["reference"], "dataset": models["dataset"],
            "policy_dtype": policy_dtype, "reward_dtype": reward_dtype, "reference_dtype": proto.reference_dtype,
            "length": proto.length, "device": dev.type, "bootstrap_seed": seed}
    return ProtocolResult(summarize(samples, target.label, used["conditioning"], seed), samples, used)


def summarize(samples: pd.DataFrame, model: str, conditioning: str, seed: int = 0) -> pd.DataFrame:
    """One row: means of reward, perplexity (NaN rows left out, as ALT's ``np.nanmean``) and length, each with
    its percentile bootstrap interval over prompts (:func:`quarklab.metrics.bootstrap_interval`, ``seed``), the
    share of completions cut at the token limit, and the number of prompts."""
    row = {"model": model, "conditioning": conditioning, "prompts": int(samples["prompt_id"].nunique())}
    for name in ("reward", "perplexity", "length"):
        x = samples[name].to_numpy(dtype=np.float64)
        x = x[~np.isnan(x)]
        low, high = bootstrap_interval(x, seed=seed)
        row.update({name: float(x.mean()) if len(x) else float("nan"), f"{name}_low": low, f"{name}_high": high})
    row["cut"] = float(samples["cut"].mean())
    return pd.DataFrame([row])


def write_result(result: ProtocolResult, out: str | os.PathLike) -> Path:
    """Write ``samples.parquet``, ``summary.json`` (the row and what was used) and ``table.md`` into ``out``,
    each whole or not at all; return ``out``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    files.write_parquet(out / "samples.parquet", result.samples)
    files.atomic_write_json(out / "summary.json", {"summary": json.loads(result.summary.to_json(orient="records"))[0],
                                                   "used": result.used})
    files.atomic_write_text(out / "table.md", markdown(result.table()))
    return out


def default_out(target: Target, protocol: str, prompts: int | None = None) -> Path:
    """Where :func:`write_result` goes by default: ``RUN/evals/<protocol>-iter_NNN`` for a run, else
    ``evals/<model slug>-<protocol>`` under the project root (:func:`quarklab.paths.resolve_path`); ``-nN`` after
    the protocol when only the first ``prompts`` were evaluated."""
    from .paths import resolve_path

    name = protocol if prompts is None else f"{protocol}-n{prompts}"
    if target.run is not None:
        return target.run / "evals" / f"{name}-iter_{target.iteration:03d}"
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", target.label).strip("-")
    return resolve_path(Path("evals") / f"{slug}-{name}")


def run_under_protocol(run_dir: str | os.PathLike, protocol: str = "alt-card", *, prompts: int | None = None,
                       device: str = "auto", progress: bool = False) -> pd.DataFrame:
    """The run's reference (iteration 0) and last checkpoint under ``protocol``, one :func:`summarize` row each
    (with ``iteration``): read from ``RUN/evals/`` where an earlier evaluation wrote them (``quarklab eval``, a
    run's ``final_protocol``), else evaluated and written there first."""
    last = resolve_target(run_dir).iteration
    rows = []
    for it in (0, last):
        out = default_out(resolve_target(run_dir, it), protocol, prompts)
        if not (out / "summary.json").is_file():
            write_result(evaluate_policy(run_dir, protocol, iteration=it, prompts=prompts, device=device,
                                         progress=progress), out)
        rows.append({**json.loads((out / "summary.json").read_text())["summary"], "iteration": it})
    return pd.DataFrame(rows)


def markdown(table: pd.DataFrame) -> str:
    """``table`` as a GitHub-flavoured Markdown table (no index)."""
    cells = [list(map(str, table.columns))] + [[str(v) for v in row] for row in table.itertuples(index=False)]
    lines = ["| " + " | ".join(r) + " |" for r in cells]
    return "\n".join([lines[0], "| " + " | ".join("---" for _ in table.columns) + " |", *lines[1:]]) + "\n"


def card_table(rows: pd.DataFrame) -> pd.DataFrame:
    """:func:`summarize` rows as a paper prints them: ``model``, ``token``, ``RM``, ``PPL``, ``Avg. len`` (2 decimals,
    each with its 95 % interval), ``cut`` (share stopped at the token limit), ``prompts``."""
    def cell(r, m):
        return f"{r[m]:.2f} [{r[m + '_low']:.2f}, {r[m + '_high']:.2f}]"

    return pd.DataFrame([{"model": r["model"], "token": r["conditioning"], "RM": cell(r, "reward"),
                          "PPL": cell(r, "perplexity"), "Avg. len": cell(r, "length"), "cut": f"{r['cut']:.2f}",
                          "prompts": int(r["prompts"])} for _, r in rows.iterrows()])
