"""``quarklab plan``: memory per GPU and tokens per iteration of a run, before anything is downloaded.

The models are built from their configs on the meta device (no weights), so parameter counts are exact;
the rest is arithmetic over the config, per GPU:

* each phase holds the models :mod:`quarklab.residency` puts on the device for it (``idle_models``; "auto" is
  "offload" on a GPU): sampling the sampler's model, scoring the reward model, training the policy (and the
  reference when ``kl_coef > 0``), evaluation all three; under "keep" every phase holds all three. Each model
  in its dtype (the reference in ``reference_dtype``);
* training adds fp32 master weights (for half-precision weights), gradients (the model's, plus fp32 in
  the masters), AdamW's two fp32 moments, and the activations of one micro-batch;
* sampling adds, in the sampling model's dtype (at iteration 1 the starting model's:
  :func:`~quarklab.residency.generator`), the KV cache of one ``generate`` call (``sample_batch_size``
  sequences), the forward pass that fills it, and a sampling step's work on the next token's logits
  (:data:`SAMPLING_BYTES_PER_LOGIT` per vocabulary entry of each sequence: float32 logits, top-p's sort with
  int64 indices, softmax, cumulative sum; measured at 39 with transformers 5 on CPU). With ``sampler="vllm"``
  it adds the engine's share of the GPU instead (``vllm_gpu_memory_utilization``: its weights and KV cache; the
  engine is started for each iteration's sampling and stopped after it);
* scoring adds the reward model's forward pass over one batch (:data:`~quarklab.reward_models.REWARD_BATCH_SIZE`
  texts of ``reward_max_length`` tokens, or the model's context);
* evaluation adds the largest of one ``eval_batch_size`` generation, the perplexity's completion logits and a
  reward batch;
* models moved between phases cross PCIe at :data:`PCIE_BYTES_PER_S` (per iteration: bytes and seconds).

A forward pass without gradient holds about ``5 * B * S * F`` values at its peak, F the blocks' MLP width (the
MLP's input and its activation function's temporaries; measured on GPT-J blocks under SDPA attention on CPU: 5.0
to 5.3 at widths 256 and 512, in fp16 and fp32, over 275 and 550 tokens), whatever the depth: no block keeps its
keys and values (the reward models run without a KV cache). In training, activations per transformer block are
``27 * B * S * H`` values (measured with autograd's saved-tensor
hooks on GPT-J under SDPA attention, which keeps no S x S matrix), or one ``B * S * H`` input per block
plus one block recomputed with ``gradient_checkpointing``; the loss keeps about 12 bytes per completion
logit (float32 log-softmax, its exponent, the kept-vocabulary copy). S is ``prompt_tokens`` plus the
completion (``max_new_tokens``), the quantile token and EOS.

Sharding per strategy, over ``gpus`` data-parallel ranks: DDP replicates everything; ZeRO-2 shards the
masters, fp32 gradients and optimizer states; ZeRO-3 / FSDP also shards the policy's weights while it
trains (the reference and reward model stay replicated, and sampling and evaluation hold the whole policy
on every GPU, as quarklab reloads each checkpoint whole); LoRA trains only the adapters and the
quantile-token rows.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import pandas as pd

from .config import QuarkConfig
from .errors import QuarkError
from .reward_models import REWARD_BATCH_SIZE
from .residency import CPU, DEVICE, MODELS, generator, idle_rule, placement
from .schedule import schedule_steps

GB = 1024 ** 3
ACTIVATION_VALUES_PER_BLOCK = 27  # x B * S * H, see the module docstring
FORWARD_VALUES = 5  # x B * S * F (the MLP width) at the peak of a forward pass without gradient, see the docstring
SAMPLING_BYTES_PER_LOGIT = 40  # per vocabulary entry of each sequence a sampling step draws for, see the docstring
LOSS_BYTES_PER_LOGIT = 12
PERPLEXITY_BATCH = 32  # rows per reference forward of evaluation's perplexity (quarklab.evaluation)
HEADROOM = 0.9  # of a GPU's memory usable: CUDA context, allocator fragmentation
STRATEGIES = ("1 GPU", "DDP", "ZeRO-2", "ZeRO-3 / FSDP", "LoRA")
ENGINES = ("ZeRO-2", "ZeRO-3 / FSDP")  # the policy is the engine's: it stays on the device
PCIE_BYTES_PER_S = 25e9
"""Host-device copy rate assumed for offloaded models: PCIe 4.0 x16 carries 32 GB/s per direction in theory, and
about 25 GB/s in practice from pinned host memory (PCIe 5.0 doubles both); copies from pageable memory, which
``.to("cpu")`` gives, can be slower, so the time is a lower bound. A released model is read again from its files
(page cache or disk), counted in the bytes at the same rate."""
PHASE_COLUMNS = {"sample": "sample_peak_gib", "score": "score_peak_gib", "train": "train_peak_gib",
                 "evaluate": "eval_peak_gib"}


@dataclass
class Model:
    """Parameter counts of a model built on the meta device."""
    name: str
    params: int
    trainable: int
    blocks: int
    hidden: int
    ffn: int  # the width of a block's MLP
    context: int  # tokens it reads at once
    vocab: int
    block_params: int  # parameters of one transformer block
    lora_params: int   # rank-1 LoRA parameters over the trained blocks' linear layers (scale by the rank)
    row_params: int = 0     # parameters of one vocabulary row: its input row, output row and head bias
    row_trainable: int = 0  # of those, trained at this trainable_fraction

    def with_rows(self, n: int) -> "Model":
        """This model with ``n`` more vocabulary rows (the quantile tokens that :func:`quantile_rows` adds)."""
        return replace(self, params=self.params + n * self.row_params, vocab=self.vocab + n,
                       trainable=self.trainable + n * self.row_trainable)


def model_config(name: str):
    """The transformers config of ``name`` (a folder, "tiny-tldr" or a hub id); GPT-J 6B's for the known
    GPT-J 6B ids when the hub cannot be reached (transformers' ``GPTJConfig`` defaults are GPT-J 6B's)."""
    from transformers import AutoConfig, GPTJConfig

    from .hub import resolve_source

    try:
        return AutoConfig.from_pretrained(resolve_source(name, "model"))
    except (QuarkError, OSError, ValueError) as exc:
        if name in GPTJ_6B_IDS:
            return GPTJConfig()
        if name in KNOWN_CONFIGS:
            return KNOWN_CONFIGS[name]()
        raise QuarkError(f"cannot read the config of {name!r} to plan for it ({exc}); pass a local folder") from exc


GPTJ_6B_IDS = ("CarperAI/openai_summarize_tldr_sft", "EleutherAI/gpt-j-6b", "EleutherAI/gpt-j-6B",
               "sauc-abadal-lloret/gpt-j-6b-ALT-Quark-tldr")
GPTJ_6B_TOKENS = 50400
"""Entries of GPT-J 6B's tokenizer: GPT-2's 50,257 and 143 ``<|extratoken_N|>``, one per embedding row."""
ALT_QUARK_ID = "sauc-abadal-lloret/gpt-j-6b-ALT-Quark-tldr"
GPT2_IDS = ("gpt2", "openai-community/gpt2")
GPT2_TOKENS = 50257
"""Entries of GPT-2's tokenizer, one per embedding row (``<|endoftext|>`` the last)."""


def _gpt2_config():
    from transformers import GPT2Config

    return GPT2Config()  # transformers' defaults are GPT-2 124M's (12 x 768, 1,024 positions, 50,257 rows)


def _deberta_v3_large_config():
    from transformers import DebertaV2Config

    # microsoft/deberta-v3-large's config, which OpenAssistant's reward model keeps (one label): 24 x 1024, 128,100
    # SentencePiece rows, relative attention over 256 buckets, no absolute positions or token types.
    return DebertaV2Config(vocab_size=128100, hidden_size=1024, num_hidden_layers=24, num_attention_heads=16,
                           intermediate_size=4096, max_position_embeddings=512, relative_attention=True,
                           position_buckets=256, norm_rel_ebd="layer_norm", share_att_key=True,
                           pos_att_type=["p2c", "c2p"], layer_norm_eps=1e-7, max_relative_positions=-1,
                           position_biased_input=False, type_vocab_size=0, pooler_hidden_size=1024, num_labels=1)


KNOWN_CONFIGS = {**{name: _gpt2_config for name in GPT2_IDS},
                 "OpenAssistant/reward-model-deberta-v3-large-v2": _deberta_v3_large_config}
"""Configs :func:`model_config` falls back on offline for the ``tldr-gpt2`` preset's models (besides GPT-J 6B's)."""


def quantile_rows(name: str, rows: int, num_quantiles: int) -> int:
    """Vocabulary rows that :func:`~quarklab.tokens.add_quantile_tokens` adds to ``name``'s ``rows``: the quantile
    tokens its tokenizer lacks take ids from ``len(tokenizer)`` on, and the matrices grow to hold them (GPT-J 6B:
    50,400 entries in 50,400 rows, so 5 tokens add 5 rows, 50,405 as in ALT's run; a Quark checkpoint adds none).
    Read from the tokenizer (a few small files); offline, GPT-J 6B's known ids use its known layout; a model with
    no tokenizer to read counts none."""
    from .models import load_tokenizer
    from .tokens import quantile_token_ids

    try:
        tok = load_tokenizer(name)
        size, present = len(tok), len(quantile_token_ids(tok, required=False))
    except QuarkError:
        if name in GPT2_IDS:
            size, present = GPT2_TOKENS, 0
        elif name in GPTJ_6B_IDS:
            present = 5 if name == ALT_QUARK_ID else 0
            size = GPTJ_6B_TOKENS + present
        else:
            return 0
    missing = max(0, num_quantiles - present)
    return max(0, size + missing - rows) if missing else 0


def meta_model(name: str, trainable_fraction: float = 1.0, *, head: bool = True) -> Model:
    """Build ``name`` on the meta device and count its parameters (``head=False``: the backbone only)."""
    import torch
    from transformers import AutoModel, AutoModelForCausalLM

    from .models import context_length
    from .trainable import set_trainable, trained_blocks, transformer_blocks

    config = model_config(name)
    with torch.device("meta"):
        model = (AutoModelForCausalLM if head else AutoModel).from_config(config)
    _, blocks = transformer_blocks(model)
    n_layers = len(blocks)
    trainable = set_trainable(model, trainable_fraction) if head else 0
    adapted = list(blocks)[n_layers - trained_blocks(n_layers, trainable_fraction):]  # with_lora's blocks
    lora = sum(m.in_features + m.out_features for b in adapted for m in b.modules() if isinstance(m, torch.nn.Linear))
    vocab = model.get_input_embeddings().num_embeddings
    ends = {id(p): p for m in (model.get_input_embeddings(), model.get_output_embeddings() if head else None)
            if m is not None for p in m.parameters()}.values()  # a tied head shares the input rows
    ffn = getattr(config, "n_inner", None) or getattr(config, "intermediate_size", None) or 4 * config.hidden_size
    return Model(name, sum(p.numel() for p in model.parameters()), trainable, n_layers, config.hidden_size, ffn,
                 context_length(config), vocab, sum(p.numel() for p in blocks[0].parameters()), lora,
                 sum(p.numel() for p in ends) // vocab, sum(p.numel() for p in ends if p.requires_grad) // vocab)


def reward_model(spec: str) -> Model | None:
    """A sequence-classification reward's backbone counted on the meta device; None for the tiny-tldr or repetition
    reward, a Python callable, or a model whose config cannot be read (offline and not in :data:`KNOWN_CONFIGS`)."""
    from .names import is_named
    from .rewards import REPETITION, callable_spec

    if is_named(spec) or spec == REPETITION or callable_spec(spec) is not None:
        return None
    try:
        return meta_model(spec, head=False)
    except QuarkError:
        return None


def dtype_bytes(dtype: str) -> int:
    """Bytes per weight of a config ``dtype`` on a GPU ("auto" is bf16 there)."""
    import torch

    from .models import resolve_dtype

    return resolve_dtype(dtype, torch.device("cuda")).itemsize if dtype != "auto" else 2


def plan(config: QuarkConfig, *, gpus: int = 1, gpu_memory_gb: float = 80.0, prompt_tokens: int = 512,
         lora_rank: int = 16, sample_tokens_per_s: float | None = None,
         train_tokens_per_s: float | None = None, device: str = "cuda") -> tuple[pd.DataFrame, dict]:
    """``(table, totals)``: GB per GPU by strategy (the training phase's weights and state, each phase's peak,
    whether every phase fits), and per iteration the tokens generated and trained (with hours when throughputs
    are given) and the bytes moved between phases (with seconds over PCIe). ``device="cpu"`` plans a CPU run's
    memory, where a model offloaded to the CPU is still in it (a released one is not)."""
    if gpus < 1 or gpu_memory_gb <= 0 or prompt_tokens < 1:
        raise QuarkError("plan needs gpus >= 1, gpu_memory_gb > 0 and prompt_tokens >= 1")
    bare = meta_model(config.policy, config.trainable_fraction)
    reference = bare if (config.reference or config.policy) == config.policy else meta_model(config.reference)
    policy = bare.with_rows(quantile_rows(config.policy, bare.vocab, config.num_quantiles))
    reward = (meta_model(config.reward_base_model, head=False) if config.reward_base_model
              else reward_model(config.reward))
    wb, rb = dtype_bytes(config.dtype), dtype_bytes(config.reward_dtype)
    fb = dtype_bytes(config.reference_dtype or config.dtype)
    half = wb < 4
    B, C = config.batch_size, config.max_new_tokens
    S = prompt_tokens + C + 2
    block_act = ACTIVATION_VALUES_PER_BLOCK * B * S * policy.hidden * wb
    activations = (policy.blocks * B * S * policy.hidden * wb + block_act if config.gradient_checkpointing
                   else policy.blocks * block_act) + LOSS_BYTES_PER_LOGIT * B * (C + 1) * policy.vocab
    # sampling: the KV cache of one generate call and the forward pass filling it (one prompt per n samples), from
    # the starting model at iteration 1 and the policy after; vLLM: the engine's reservation (its weights and KV cache)
    samplers = {it: (reference, fb) if generator(config, "sample", it) == "reference" else (policy, wb) for it in (1, 2)}
    prompts_per_call = max(1, config.sample_batch_size // config.samples_per_prompt)
    kv_cache = {it: _kv_cache(m, config.sample_batch_size, prompt_tokens + C + 1, b) for it, (m, b) in samplers.items()}
    sampling = {it: kv_cache[it] + _forward(m, prompts_per_call, prompt_tokens, b)
                + SAMPLING_BYTES_PER_LOGIT * config.sample_batch_size * m.vocab for it, (m, b) in samplers.items()}
    if config.sampler == "vllm":
        kv_cache = sampling = dict.fromkeys(sampling, config.vllm_gpu_memory_utilization * gpu_memory_gb * GB)
    scoring = _forward(reward, REWARD_BATCH_SIZE, config.reward_max_length or reward.context, rb) if reward else 0
    evaluating = max(_kv_cache(policy, config.eval_batch_size, prompt_tokens + config.eval_max_new_tokens + 1, wb)
                     + _forward(policy, config.eval_batch_size, prompt_tokens, wb),
                     PERPLEXITY_BATCH * (config.eval_max_new_tokens + 1) * reference.vocab * LOSS_BYTES_PER_LOGIT,
                     scoring)
    weights = {"policy": policy.params * wb, "reference": reference.params * fb,
               "reward": reward.params * rb if reward else 0}
    rule = idle_rule(config, device)
    token_rows = 2 * config.num_quantiles * policy.hidden  # the quantile tokens' input and output rows
    rows = []
    for strategy in STRATEGIES:
        n = 1 if strategy == "1 GPU" else gpus
        trained = (config.lora_rank or lora_rank) * policy.lora_params + token_rows if strategy == "LoRA" \
            else policy.trainable
        shard = n if strategy in ("ZeRO-2", "ZeRO-3 / FSDP") else 1
        engine = strategy in ENGINES
        held = {(p, it): _held(config, p, it, device, engine) for p, it in PHASE_ITERATIONS}
        training = {**weights, "policy": weights["policy"] / (n if strategy == "ZeRO-3 / FSDP" else 1)}
        resident = sum(training[m] for m in held["train", 2])
        masters = trained * 4 / shard if half else 0
        grads = trained * wb + (trained * 4 / shard if half else 0)
        optimizer = trained * 8 / shard
        # pool_strategy "quark" keeps AdamW's moments between iterations: on the device unless parked
        idle = optimizer if config.pool_strategy == "quark" and (rule == "keep" or device == "cpu") else 0
        extra = {("sample", 1): sampling[1], ("sample", 2): sampling[2], ("score", 2): scoring,
                 ("train", 2): masters + grads + optimizer + activations - idle,
                 ("evaluate", 2): evaluating}  # every strategy samples and evaluates with the whole policy
        peaks = {p: max(sum((training if p == "train" else weights)[m] for m in held[p, it]) + extra[p, it]
                        for q, it in PHASE_ITERATIONS if q == p) + idle for p in PHASE_COLUMNS}
        rows.append({"strategy": strategy, "gpus": n, "weights_gib": resident / GB, "masters_gib": masters / GB,
                     "grads_gib": grads / GB, "optimizer_gib": optimizer / GB, "activations_gib": activations / GB,
                     "kv_cache_gib": max(kv_cache.values()) / GB,
                     **{PHASE_COLUMNS[p]: v / GB for p, v in peaks.items()},
                     "fits": max(peaks.values()) <= HEADROOM * gpu_memory_gb * GB})
    table = pd.DataFrame(rows)
    prompts = config.prompts_per_iteration
    train_rows = prompts * config.num_quantiles * config.per_quantile_per_prompt \
        if config.pool_strategy == "alt" else prompts * config.samples_per_prompt
    totals = {"policy_params": policy.params, "trainable_params": policy.trainable, "blocks": policy.blocks,
              "policy_vocab": policy.vocab,
              "reward_params": reward.params if reward else 0, "sequence_tokens": S,
              "generated_tokens": prompts * config.samples_per_prompt * C,
              "trained_tokens": train_rows * config.epochs_per_iteration * S,
              "optimizer_steps": schedule_steps(config, train_rows, gpus)[0], "idle_models": rule,
              "holds": {(p, it): _held(config, p, it, device) for p, it in PHASE_ITERATIONS},
              "moved_bytes": moved_per_iteration(config, weights, device,
                                                 optimizer=policy.trainable * 8 if config.pool_strategy == "quark"
                                                 else 0)}
    totals["move_seconds"] = totals["moved_bytes"] / PCIE_BYTES_PER_S
    if sample_tokens_per_s:
        totals["sample_hours"] = totals["generated_tokens"] / sample_tokens_per_s / 3600
    if train_tokens_per_s:
        totals["train_hours"] = totals["trained_tokens"] / train_tokens_per_s / 3600
    return table, totals


def _kv_cache(model: Model, rows: int, tokens: int, nbytes: int) -> float:
    """Bytes of the keys and values of ``rows`` sequences of ``tokens`` in every block of ``model``."""
    return rows * tokens * model.blocks * 2 * model.hidden * nbytes


def _forward(model: Model, rows: int, tokens: int, nbytes: int) -> float:
    """Bytes at the peak of a forward pass of ``model`` without gradient over ``rows`` x ``tokens``."""
    return FORWARD_VALUES * rows * tokens * model.ffn * nbytes


PHASE_ITERATIONS = (("sample", 1), ("sample", 2), ("score", 2), ("train", 2), ("evaluate", 2))
"""The phases a plan looks at: iteration 1 samples from the starting model, later ones from the policy."""


def _held(config: QuarkConfig, phase: str, iteration: int, device: str, engine: bool = False) -> tuple[str, ...]:
    """The models in the device's memory during ``phase``: on the device, or on a CPU run anywhere but released."""
    where = placement(config, phase, iteration, device, engine)
    return tuple(m for m in MODELS if where[m] == DEVICE or device == "cpu" and where[m] == CPU)


def moved_per_iteration(config: QuarkConfig, weights: dict[str, float], device: str = "cuda",
                        optimizer: float = 0) -> float:
    """Bytes moved between the device and the host (or reloaded) in one iteration after the first: each model
    whose place changes from one phase to the next, over evaluate, sample, score, train, evaluate; a vLLM engine's
    load of the checkpoint; and a kept optimizer state parked and brought back."""
    cycle = [placement(config, p, it, device) for p, it in (("evaluate", 1), ("sample", 2), ("score", 2),
                                                             ("train", 2), ("evaluate", 2))]
    moved = sum(weights[m] for a, b in zip(cycle, cycle[1:]) for m in MODELS if a[m] != b[m])
    if config.sampler == "vllm":
        moved += weights["policy"]
    return moved + (2 * optimizer if idle_rule(config, device) != "keep" else 0)


def _holds_text(holds: dict) -> str:
    """What each phase holds, in words: "sample reference (iteration 1), then policy; score reward; ..."."""
    parts = []
    for phase in PHASE_COLUMNS:
        seen = [", ".join(holds[p, it]) or "none" for p, it in PHASE_ITERATIONS if p == phase]
        parts.append(f"{phase} " + (f"{seen[0]} (iteration 1), then {seen[-1]}" if seen[0] != seen[-1] else seen[0]))
    return "; ".join(parts)


def report(table: pd.DataFrame, totals: dict, config: QuarkConfig, gpus: int, gpu_memory_gb: float) -> str:
    """The plan as text: the per-GPU table, the tokens per iteration, and what fits."""
    lines = [f"policy {config.policy}: {totals['policy_params'] / 1e9:.2f} B parameters, {totals['blocks']} blocks, "
             f"{totals['trainable_params'] / 1e9:.2f} B trained (trainable_fraction {config.trainable_fraction}); "
             f"reward backbone {totals['reward_params'] / 1e9:.2f} B; dtype {config.dtype}; micro-batch "
             f"{config.batch_size} x {totals['sequence_tokens']} tokens; {gpus} x {gpu_memory_gb:g} GiB",
             "", "GiB per GPU:"]
    shown = table.assign(fits=table["fits"].map({True: "yes", False: "no"}))
    with pd.option_context("display.width", 200, "display.max_columns", 20, "display.precision", 1):
        lines.append(shown.to_string(index=False, float_format=lambda v: f"{v:.2f}" if 0 < v < 0.1 else f"{v:.1f}"))
    lines += ["", f"per iteration: {totals['generated_tokens']:,} tokens generated, {totals['trained_tokens']:,} "
                  f"trained, {totals['optimizer_steps']:,} optimizer steps over {gpus} GPU(s)"]
    lines.append(f"models on the GPU by phase (idle_models {config.idle_models!r}: {totals['idle_models']}): "
                 f"{_holds_text(totals['holds'])}; "
                 f"moved per iteration {totals['moved_bytes'] / GB:.1f} GiB, {totals['move_seconds']:.1f} s at "
                 f"{PCIE_BYTES_PER_S / 1e9:g} GB/s (PCIe 4.0 x16)")
    if "sample_hours" in totals or "train_hours" in totals:
        lines.append("time per iteration: " + ", ".join(f"{k.split('_')[0]} {v:.1f} h" for k, v in totals.items()
                                                        if k.endswith("_hours")))
    lines.append("run a strategy: 1 GPU, quarklab train; DDP, ZeRO-2, ZeRO-3, FSDP, accelerate launch --config_file "
                 "configs/accelerate/{ddp,zero2,zero3,fsdp}.yaml -m quarklab.cli train; LoRA, --set lora_rank=16 "
                 "(one GPU or DDP)")
    fitting = table.loc[table["fits"], "strategy"].tolist()
    limit = HEADROOM * gpu_memory_gb
    checkpointing = "" if config.gradient_checkpointing else "--set gradient_checkpointing=true, "
    hints = ([f"for training: {checkpointing}a smaller batch_size with a larger grad_accum, or more GPUs"]
             * bool(table["train_peak_gib"].min() > limit)
             + ["for sampling: a smaller sample_batch_size (the KV cache), or a larger GPU"]
             * bool(table["sample_peak_gib"].min() > limit)
             + ["for evaluation: a smaller eval_batch_size, a reference_dtype in half precision, or a larger GPU"]
             * bool(table["eval_peak_gib"].min() > limit)
             + ["idle_models='offload' (each phase holds only the models it uses)"] * (totals["idle_models"] == "keep"))
    lines.append(f"fits in {HEADROOM:.0%} of {gpu_memory_gb:g} GiB: " + (", ".join(fitting) if fitting else
                 "none; try " + "; ".join(hints)))
    return "\n".join(lines)
