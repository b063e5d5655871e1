"""Loading policies, reference models and tokenizers from a hub id or a local folder.

The same code path serves the offline tiny world (a local folder written with
``save_pretrained``) and hub checkpoints such as ``CarperAI/openai_summarize_tldr_sft``
(GPT-J 6B) or ``sauc-abadal-lloret/gpt-j-6b-ALT-Quark-tldr``.
"""

from __future__ import annotations

import functools
import os
import re
from pathlib import Path

import torch

from .checks import check_int
from .errors import QuarkError, describe
from .names import lookup

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """``"auto"``/``None`` picks CUDA when available, else CPU."""
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def resolve_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """``"auto"``/``None``: bfloat16 on a GPU that supports it, float16 on other GPUs, float32 on CPU."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype in (None, "auto"):
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    names = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16,
             "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}
    if dtype not in names:
        raise QuarkError(f"unknown dtype {dtype!r}: use one of {sorted(names)} or 'auto'")
    return names[dtype]


HUB_PROBE_TIMEOUT = 5.0  # seconds for the one connection attempt that tells whether the hub is reachable


def resolve_model(name_or_path: str | os.PathLike | None) -> str | os.PathLike | None:
    """A model name as a folder or hub id: a registered name (:mod:`quarklab.names`; ``"tiny-tldr"``: the
    offline world's SFT folder, built on first need) is its setup's model folder; anything else is as given."""
    named = lookup(name_or_path)
    return named.policy if named is not None else name_or_path


def resolve_source(name_or_path: str | os.PathLike, what: str = "model", *, repo_type: str = "model") -> str:
    """Return a local path as a string, or a hub id; fail clearly on a missing local path.

    A string that exists on disk is local. One that cannot be a hub id (absolute, ``./``,
    ``~``, more than one ``/``) and does not exist is an error here, rather than a confusing
    hub lookup later. When the hub cannot be used (``HF_HUB_OFFLINE=1``, or one connection
    attempt fails) a hub id resolves to its folder in the local hub cache, or fails at once
    with one error, instead of after half a minute of huggingface_hub's retries.
    """
    s = os.fspath(resolve_model(name_or_path) if repo_type == "model" else name_or_path)
    p = Path(s).expanduser()
    if p.exists():
        return str(p)
    if not s or s.startswith((".", "/", "~")) or not _HUB_ID.match(s):
        raise QuarkError(f"{what} path does not exist: {s!r}")
    why = hub_unavailable()
    if why is None:
        return s
    folder = cached_snapshot(s, repo_type)
    if folder is None:
        from huggingface_hub import constants

        local = "file" if repo_type == "dataset" else "folder"
        raise QuarkError(
            f"{what} {s!r} is neither a local {local} nor in the local hub cache ({constants.HF_HUB_CACHE}), "
            f"and the hub is not available ({why}). Download it once with network "
            f"(hf download {'--repo-type dataset ' if repo_type == 'dataset' else ''}{s}). Offline, pass a local "
            + (".jsonl/.csv/.parquet file or 'tiny-tldr'." if repo_type == "dataset"
               else "folder, e.g. the tiny world's (quarklab world build)."))
    return folder


_HUB_FILE = re.compile(r"^([A-Za-z0-9][\w.-]*/[\w.-]+)/([\w.-]+(?:/[\w.-]+)*)$")


def resolve_file(spec: str | os.PathLike, what: str = "file") -> str:
    """A local file's path, or the local copy of a file in a hub repository named ``owner/repo/path/in/repo``
    (e.g. ``CarperAI/openai_summarize_tldr_rm_checkpoint/pytorch_model.bin``): downloaded once, then read
    from the local hub cache, and only from there when the hub is not available."""
    s = os.fspath(spec)
    p = Path(s).expanduser()
    if p.is_file():
        return str(p)
    match = _HUB_FILE.match(s)
    if p.exists() or match is None or s.startswith((".", "/", "~")):
        raise QuarkError(f"{what} {s!r} is not a file" if p.exists() else f"{what} file does not exist: {s!r}")
    from huggingface_hub import hf_hub_download

    repo_id, filename = match.groups()
    why = hub_unavailable()
    try:
        return hf_hub_download(repo_id, filename, local_files_only=why is not None)
    except Exception as exc:  # not in the cache offline, no such repo or file, network failure
        from huggingface_hub import constants

        where = (f"it is not in the local hub cache ({constants.HF_HUB_CACHE}) and the hub is not available "
                 f"({why})") if why else f"the hub refused it ({type(exc).__name__})"
        raise QuarkError(f"{what} {s!r} (file {filename!r} of the hub repository {repo_id!r}): {where}. Download "
                         f"it once with network (hf download {repo_id} {filename}), or pass a local file.") from exc


def hub_unavailable() -> str | None:
    """Why the Hugging Face hub cannot be used now (a phrase for an error message), or None when it can."""
    from huggingface_hub import constants

    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        if os.environ.get(var, "").upper() in ("1", "ON", "YES", "TRUE"):
            return f"{var}={os.environ[var]}"
    if constants.HF_HUB_OFFLINE:
        return "offline mode is on"
    return _probe_hub(constants.ENDPOINT)


@functools.lru_cache(maxsize=None)
def _probe_hub(endpoint: str) -> str | None:
    """One connection attempt to the hub, without retries; remembered for the rest of the process."""
    from huggingface_hub.utils import get_session

    try:
        get_session().head(endpoint, timeout=HUB_PROBE_TIMEOUT, follow_redirects=False)
    except Exception as exc:  # any connection failure (DNS, refused, timeout, proxy) means offline
        return f"{endpoint} cannot be reached: {type(exc).__name__}"
    return None


def cached_snapshot(repo_id: str, repo_type: str = "model") -> str | None:
    """The folder of ``repo_id``'s cached snapshot in the local hub cache, or None when it has none."""
    from huggingface_hub import snapshot_download

    try:
        return snapshot_download(repo_id, repo_type=repo_type, local_files_only=True)
    except Exception:  # LocalEntryNotFoundError, or a cache folder in a state huggingface_hub rejects
        return None


def load_error(source: str, what: str, exc: Exception) -> QuarkError:
    """One clear error for a local folder that is missing files, or a hub id that failed to load."""
    from huggingface_hub import constants

    if Path(source).exists():
        if Path(source).resolve().is_relative_to(Path(constants.HF_HUB_CACHE).resolve()):
            return QuarkError(f"could not load {what} from its copy in the local hub cache {source!r} "
                              f"({describe(exc)}); the cache holds only part of it: "
                              "download it whole once with network (hf download REPO_ID)")
        return QuarkError(f"could not load {what} from the local folder {source!r} "
                          f"({describe(exc)}); is it a save_pretrained folder?")
    return QuarkError(
        f"could not load {what} {source!r}: not a local folder, and the hub copy is not "
        f"available ({describe(exc)}). "
        "Offline, pass a local folder, e.g. the tiny world's (quarklab world build)."
    )


def load_tokenizer(name_or_path: str | os.PathLike, *, trust_remote_code: bool = False,
                   padding_side: str = "left"):
    """Load a tokenizer (``AutoTokenizer``), left-padding by default, with a pad token.

    A tokenizer without a pad token (GPT-2, GPT-J) gets ``pad_token = eos_token``;
    quarklab always uses attention masks, never pad ids, to tell padding apart.
    """
    from transformers import AutoTokenizer

    source = resolve_source(name_or_path, "tokenizer")
    try:
        tok = AutoTokenizer.from_pretrained(source, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as exc:
        raise load_error(source, "tokenizer", exc) from exc
    if tok.pad_token is None:
        if tok.eos_token is None:
            raise QuarkError(f"tokenizer {source!r} has neither a pad nor an eos token")
        tok.pad_token = tok.eos_token
    tok.padding_side = padding_side
    return tok


def load_policy(name_or_path: str | os.PathLike, *, dtype: str | torch.dtype | None = "auto",
                device: str | torch.device | None = "auto", trust_remote_code: bool = False,
                attn_implementation: str | None = None):
    """Load a causal LM (``AutoModelForCausalLM``) from a hub id or a local folder, in eval mode.

    ``dtype="auto"`` is float32 on CPU and bfloat16 on a GPU; ``device="auto"`` picks
    CUDA when present. ``trust_remote_code`` stays off unless asked for.
    """
    from transformers import AutoModelForCausalLM

    source = resolve_source(name_or_path, "model")
    dev = resolve_device(device)
    kwargs = dict(dtype=resolve_dtype(dtype, dev), trust_remote_code=trust_remote_code)
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    try:
        model = AutoModelForCausalLM.from_pretrained(source, **kwargs)
    except (OSError, ValueError) as exc:
        raise load_error(source, "model", exc) from exc
    return model.to(dev).eval()


def context_length(model, tokenizer=None) -> int:
    """Tokens ``model`` reads at once, from its config (``model`` may be a model or a config; vLLM's
    engine config gives ``max_model_len``), lowered to ``tokenizer.model_max_length`` when that is a
    real limit; 2048 when nothing says."""
    cfg = getattr(model, "config", model)
    keys = ("max_model_len", "n_positions", "max_position_embeddings", "n_ctx")
    limits = [next((int(v) for v in (getattr(cfg, k, None) for k in keys) if isinstance(v, int) and v > 0), 0)]
    if tokenizer is not None and 0 < tokenizer.model_max_length < 1_000_000:
        limits.append(int(tokenizer.model_max_length))
    return min([n for n in limits if n] or [2048])


def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions that count only real tokens: 0 at each row's first non-pad token.

    Left-padded batches need these explicitly: GPT-2 and GPT-J otherwise number the
    pad tokens too, and every real token gets a shifted position.
    """
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def quantile_token(k: int) -> str:
    """The name of quantile token ``k`` (0 = highest-reward quantile), as in the ALT-Quark checkpoint."""
    return f"_QUANTILE_TOKEN_{k}_"


_NO_TOKENS = ("this checkpoint has no quantile tokens (no {name!r} in its tokenizer): train one with "
              "`quarklab train`, or pass a Quark checkpoint such as the released "
              "sauc-abadal-lloret/gpt-j-6b-ALT-Quark-tldr (or add untrained tokens with "
              "quarklab.models.add_quantile_tokens)")


def quantile_token_ids(tokenizer, num_quantiles: int | None = None, *, required: bool = True) -> list[int]:
    """Ids of ``_QUANTILE_TOKEN_0_`` .. ``_QUANTILE_TOKEN_{K-1}_`` in ``tokenizer`` (index = k).

    With ``num_quantiles=None``, K is the number of consecutive tokens ``_0_``, ``_1_``, ... the
    tokenizer holds. A tokenizer with none of them (unless ``required=False``: then ``[]``), or
    without all ``num_quantiles`` asked for, is a :class:`QuarkError`.
    """
    vocab = tokenizer.get_vocab()
    if quantile_token(0) not in vocab:
        if not required:
            return []
        raise QuarkError(_NO_TOKENS.format(name=quantile_token(0)))
    if num_quantiles is None:
        k = 0
        while quantile_token(k) in vocab:
            k += 1
        return [int(vocab[quantile_token(i)]) for i in range(k)]
    check_int(num_quantiles, "num_quantiles (or None to detect it)", 1)
    missing = [quantile_token(k) for k in range(int(num_quantiles)) if quantile_token(k) not in vocab]
    if missing:
        present = len(quantile_token_ids(tokenizer))
        raise QuarkError(f"num_quantiles={num_quantiles}, but this tokenizer holds only {present} quantile "
                         f"token(s) (missing {missing[0]!r}{' ...' if len(missing) > 1 else ''}): pass "
                         f"num_quantiles={present} or None to use the tokens the checkpoint was trained with")
    return [int(vocab[quantile_token(k)]) for k in range(int(num_quantiles))]


def add_quantile_tokens(model, tokenizer, num_quantiles: int, seed: int = 0) -> list[int]:
    """Make sure ``tokenizer`` and ``model`` hold the K quantile tokens; return their ids (index = k).

    A tokenizer that already has them (a released Quark checkpoint) is reused as is: no
    duplicates, no resize, its trained rows untouched. Missing tokens are added as special
    tokens; their input and output embedding rows are drawn per dimension from the mean and
    std of the existing rows (Quark's initialisation), with ``seed``.
    """
    if num_quantiles < 1:
        raise QuarkError(f"num_quantiles must be at least 1, got {num_quantiles}")
    vocab = tokenizer.get_vocab()
    missing = [quantile_token(k) for k in range(num_quantiles) if quantile_token(k) not in vocab]
    if missing:
        tokenizer.add_tokens(missing, special_tokens=True)
    ids = quantile_token_ids(tokenizer, num_quantiles)
    new_ids = [i for k, i in enumerate(ids) if quantile_token(k) in missing]
    emb = model.get_input_embeddings()
    if max(ids) >= emb.num_embeddings:
        model.resize_token_embeddings(max(len(tokenizer), max(ids) + 1), mean_resizing=False)
    if new_ids:
        gen = torch.Generator().manual_seed(seed)
        old = [i for i in range(model.get_input_embeddings().num_embeddings) if i not in set(new_ids)]
        with torch.no_grad():
            layers = [model.get_input_embeddings(), model.get_output_embeddings()]
            for layer in [l for i, l in enumerate(layers) if l is not None and l not in layers[:i]]:  # fixed order
                w = layer.weight
                base = w[old].float()
                mean, std = base.mean(0), base.std(0)
                rows = torch.normal(mean.expand(len(new_ids), -1), std.expand(len(new_ids), -1), generator=gen)
                w[new_ids] = rows.to(w.dtype)
                if getattr(layer, "bias", None) is not None:
                    layer.bias[new_ids] = layer.bias[old].mean().to(layer.bias.dtype)
    return ids
