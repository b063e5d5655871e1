"""Model-based rewards: sequence classifiers and trlx/ALT-style value-head reward models.

* :class:`SequenceClassifierReward` reads one label's logit (or probability) from an
  ``AutoModelForSequenceClassification`` checkpoint, e.g. a sentiment classifier as in
  the Quark paper.
* :class:`ValueHeadReward` is the reward model of CarperAI's ``summarize_rlhf`` (used by
  the ALT paper for TL;DR), fed exactly as ALT's ``alt/models/reward.py`` feeds it:

  1. text: :data:`CARPER_TEMPLATE`, i.e. with ``sample = prompt + completion``,
     ``"<|startoftext|>" + sample.split("TL;DR:")[0].strip() + "\\nTL;DR: "
     + sample.split("TL;DR:")[1].strip() + "<|endoftext|>"`` (``<|startoftext|>`` is plain
     text to the GPT-J tokenizer; ``<|endoftext|>`` is its eos token);
  2. tokens: the base model's tokenizer with ``pad_token = eos_token``, right truncation to
     ``max_length`` (:data:`CARPER_MAX_LENGTH` = 550 by default), right padding;
  3. score: ``v_head(last_hidden_state)`` (hidden -> 1, no bias, computed in float32, a sum per row) at the
     token before the first pad-id (= eos) token, or at the last token when the row has none
     (it was cut). With the template's trailing eos that is the summary's last token.

A template may use ``{prompt}`` and ``{completion}`` as given, and ``{post}`` and
``{summary}``: ALT's split of ``prompt + completion`` at the first two ``"TL;DR:"`` marks
(see :func:`format_texts`). Scores are float64 whatever the model's dtype.

A text's score does not depend on the batch it is scored in: every forward pass has the same shape,
``batch_size`` rows of ``max_length`` tokens (each text padded on the right to ``max_length``, as ALT
pads CarperAI's model, and the last, partial batch filled up with empty rows that are thrown away), so
a text scored alone, among others of other lengths, or at another position of its batch goes through
the same arithmetic and gets the same bits. (A forward's shape changes how the kernels split their
sums, which moves a score by an ulp or so; with ties in quantiles that ulp can decide a quantile.)
Tested on CPU; a GPU kernel may still choose its split by other things than the shape.

Value-head weights are read without unpickling arbitrary objects, from either layout
(:mod:`quarklab.value_head_files`).
"""

from __future__ import annotations

import os
import string
from pathlib import Path

import numpy as np
import torch

from .checks import check_int
from .errors import QuarkError
from .hub import load_error, resolve_file, resolve_source
from .models import context_length, load_tokenizer, resolve_device, resolve_dtype
from .tldr import TLDR_MARK
from .value_head_files import STATE_DICT_SUFFIXES, V_HEAD_FILE, V_HEAD_KEY, load_folder, load_state_dict_file

CARPER_TEMPLATE = "<|startoftext|>{post}\nTL;DR: {summary}<|endoftext|>"
"""The text CarperAI's TL;DR reward model was trained on and ALT scores with; the value-head default."""
CARPER_MAX_LENGTH = 550
"""Tokens the CarperAI reward model reads in ALT (right truncation); the value-head default."""
REWARD_BATCH_SIZE = 16
"""Texts per forward pass of a model reward (every pass is this many rows of ``max_length`` tokens)."""
TEMPLATE_FIELDS = ("prompt", "completion", "post", "summary")


def guess_kind(spec: str | os.PathLike) -> str:
    """``"value-head"`` or ``"seq-classification"`` for a hub id, local folder or state-dict file."""
    from transformers import AutoConfig

    s = os.fspath(spec)
    if s.lower().endswith(STATE_DICT_SUFFIXES):
        return "value-head"
    source = resolve_source(s, "reward model")
    if (Path(source) / V_HEAD_FILE).is_file():
        return "value-head"
    try:
        config = AutoConfig.from_pretrained(source)
    except (OSError, ValueError) as exc:
        raise load_error(source, "reward model config", exc) from exc
    if any(a.endswith("ForSequenceClassification") for a in config.architectures or ()):
        return "seq-classification"
    raise QuarkError(f"cannot tell what kind of reward model {source!r} is (architectures: "
                     f"{config.architectures}); pass kind='seq-classification' or kind='value-head'")


class SequenceClassifierReward:
    """Reward = one label's logit, probability or log-probability from a sequence classifier.

    Every forward pass reads ``batch_size`` texts of ``max_length`` tokens (right padding, the last batch filled up
    with empty rows), so a text's score is the same bits whatever batch it is scored in (module docstring)."""

    SCORES = ("logit", "prob", "logprob")

    def __init__(self, name_or_path: str | os.PathLike, *, label: str | int | None = None,
                 score: str = "logit", template: str | None = None, max_length: int | None = None,
                 device: str | None = "auto", dtype: str | torch.dtype | None = "auto",
                 batch_size: int = REWARD_BATCH_SIZE,
                 trust_remote_code: bool = False):
        from transformers import AutoModelForSequenceClassification

        if score not in self.SCORES:
            raise QuarkError(f"unknown score {score!r}: use one of {list(self.SCORES)}")
        self.template = _check_template(template or "{completion}")
        self.batch_size = _check_batch_size(batch_size)
        self.score = score
        source = resolve_source(name_or_path, "reward model")
        dev = resolve_device(device)
        try:
            model = AutoModelForSequenceClassification.from_pretrained(
                source, dtype=resolve_dtype(dtype, dev), trust_remote_code=trust_remote_code)
        except (OSError, ValueError) as exc:
            raise load_error(source, "reward model", exc) from exc
        self.tokenizer = load_tokenizer(source, trust_remote_code=trust_remote_code, padding_side="right")
        model.config.pad_token_id = self.tokenizer.pad_token_id
        self.model = model.to(dev).eval()
        no_cache(model)
        self.label_index = _resolve_label(model.config, label)
        if score != "logit" and model.config.num_labels == 1:
            raise QuarkError(f"score={score!r} needs a classifier with several labels; {source!r} has "
                             "one output, use score='logit'")
        self.max_length = _check_max_length(max_length, context_length(model.config, self.tokenizer), None)

    def to(self, device) -> "SequenceClassifierReward":
        """Move the model to ``device`` (:mod:`quarklab.residency` parks it there between phases)."""
        self.model.to(device)
        return self

    def __call__(self, prompts: list[str], completions: list[str]) -> np.ndarray:
        texts = format_texts(self.template, prompts, completions)
        out = []
        with torch.inference_mode():
            for rows, ids, mask in _fixed_batches(self.tokenizer, texts, self.batch_size, self.max_length,
                                                  self.model.device):
                logits = self.model(input_ids=ids, attention_mask=mask).logits[:rows].float()
                if self.score == "prob":
                    logits = logits.softmax(-1)
                elif self.score == "logprob":
                    logits = logits.log_softmax(-1)
                out.append(logits[:, self.label_index].double().cpu().numpy())
        return np.concatenate(out) if out else np.zeros(0, dtype=np.float64)


class ValueHeadReward:
    """Reward = ``v_head(last hidden state)`` at the token before the first pad (= eos) token.

    ``name_or_path`` is a folder written by :func:`save_value_head_model`, or a bare
    CarperAI-style state-dict file (``.bin``/``.pt``/``.pth``/``.safetensors``) whose
    backbone config and tokenizer come from ``base_model``. ``template`` defaults to
    :data:`CARPER_TEMPLATE`; ``max_length`` to :data:`CARPER_MAX_LENGTH` (550), or the
    model's context when that is shorter. Texts are truncated on the right and padded on
    the right with the eos token, as ALT does; see the module docstring for the exact rule.

    A text's score does not depend on its batch: every forward pass is ``batch_size`` rows of
    ``max_length`` tokens (each text padded to ``max_length``, as ALT's ``padding="max_length"``; the
    last, partial batch filled up with empty rows whose outputs are dropped), so scoring a text alone,
    among texts of other lengths or at another position gives the same bits. ``batch_size`` and
    ``max_length`` set that shape; on CPU batch sizes 3, 4 and 16 gave the same bits too, which no
    kernel promises.
    """

    def __init__(self, name_or_path: str | os.PathLike, *, base_model: str | os.PathLike | None = None,
                 template: str | None = None, max_length: int | None = None, device: str | None = "auto",
                 dtype: str | torch.dtype | None = "auto", batch_size: int = REWARD_BATCH_SIZE,
                 trust_remote_code: bool = False):
        self.template = _check_template(template or CARPER_TEMPLATE)
        self.batch_size = _check_batch_size(batch_size)
        spec = os.fspath(name_or_path)
        source = Path(resolve_file(spec, "value-head reward model") if spec.lower().endswith(STATE_DICT_SUFFIXES)
                      else resolve_source(spec, "value-head reward model"))
        if not source.exists():
            raise QuarkError(f"value-head reward model {str(source)!r} must be a local folder or "
                             "state-dict file; download it first")
        dev = resolve_device(device)
        torch_dtype = resolve_dtype(dtype, dev)
        if source.is_dir():
            if base_model is not None:
                raise QuarkError("base_model is only for a bare state-dict file; the folder "
                                 f"{str(source)!r} holds its own backbone")
            if not (source / V_HEAD_FILE).is_file():
                raise QuarkError(f"{str(source)!r} is not a value-head reward model: it has no "
                                 f"{V_HEAD_FILE} (write one with save_value_head_model)")
            backbone, weight = load_folder(source, torch_dtype, trust_remote_code)
            tok_source = str(source)
        elif source.name.lower().endswith(STATE_DICT_SUFFIXES):
            if base_model is None:
                raise QuarkError(f"the bare state dict {str(source)!r} needs base_model= (hub id or "
                                 "folder of its backbone, e.g. CarperAI/openai_summarize_tldr_sft) "
                                 "for the config and tokenizer")
            backbone, weight = load_state_dict_file(source, base_model, torch_dtype, trust_remote_code)
            tok_source = base_model
        else:
            raise QuarkError(f"{str(source)!r} is not a value-head reward model: expected a folder with "
                             f"{V_HEAD_FILE} or a state-dict file ({', '.join(STATE_DICT_SUFFIXES)})")
        hidden = backbone.config.hidden_size
        if weight.dim() != 2 or tuple(weight.shape) != (1, hidden):
            raise QuarkError(f"{V_HEAD_KEY} has shape {tuple(weight.shape)}, expected (1, {hidden}) "
                             "for this backbone")
        self.backbone = backbone.to(dev).eval()
        no_cache(backbone)
        self.v_head_weight = weight.to(dev, torch.float32)
        self.tokenizer = load_tokenizer(tok_source, trust_remote_code=trust_remote_code, padding_side="right")
        if self.tokenizer.eos_token is None:
            raise QuarkError(f"the tokenizer of {str(tok_source)!r} has no eos token, which a value-head "
                             "reward model pads with and reads its score before")
        self.tokenizer.pad_token = self.tokenizer.eos_token  # as ALT: the first eos ends the text
        self.tokenizer.truncation_side = "right"
        self.max_length = _check_max_length(max_length, context_length(backbone.config, self.tokenizer),
                                            CARPER_MAX_LENGTH)

    def to(self, device) -> "ValueHeadReward":
        """Move the backbone and the head to ``device`` (:mod:`quarklab.residency` parks them there between phases)."""
        self.backbone.to(device)
        self.v_head_weight = self.v_head_weight.to(device)
        return self

    def features(self, prompts: list[str], completions: list[str]) -> torch.Tensor:
        """The float32 last hidden states ``(rows, hidden)`` that the v_head reads, one row per text, for fitting a
        head (:func:`quarklab.testing.carper_reward_model`).

        Quicker than a score: texts are batched by length and padded to the longest of their batch, so a row can
        differ by an ulp from the hidden state a score reads (which has one shape for every batch)."""
        texts = format_texts(self.template, prompts, completions)
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        out = torch.zeros(len(texts), self.v_head_weight.shape[1], device=self.backbone.device)
        with torch.inference_mode():
            for i in range(0, len(texts), self.batch_size):
                rows = order[i:i + self.batch_size]
                ids, mask = _encode(self.tokenizer, [texts[r] for r in rows], self.max_length, self.backbone.device)
                hidden = self.backbone(input_ids=ids, attention_mask=mask).last_hidden_state
                at = score_positions(ids, self.tokenizer.pad_token_id)
                out[rows] = hidden[torch.arange(len(ids), device=ids.device), at].float()
        return out

    def __call__(self, prompts: list[str], completions: list[str]) -> np.ndarray:
        # The v_head is a product and a sum along each row, over whole batches: a matrix product's row (h @ w.T) is
        # not always the same bits at another row count or position (the kernel splits its sums by shape).
        out = [(h * self.v_head_weight).sum(-1)[:rows] for rows, h in self._batch_features(prompts, completions)]
        return torch.cat(out).double().cpu().numpy() if out else np.zeros(0, dtype=np.float64)

    def _batch_features(self, prompts: list[str], completions: list[str]):
        """``(rows, features)`` per batch: the float32 ``(batch_size, hidden)`` features of a whole batch, of which
        the first ``rows`` are texts'."""
        texts = format_texts(self.template, prompts, completions)
        with torch.inference_mode():
            for rows, ids, mask in _fixed_batches(self.tokenizer, texts, self.batch_size, self.max_length,
                                                  self.backbone.device):
                hidden = self.backbone(input_ids=ids, attention_mask=mask).last_hidden_state
                at = score_positions(ids, self.tokenizer.pad_token_id)
                yield rows, hidden[torch.arange(len(ids), device=ids.device), at].float()


def score_positions(ids: torch.Tensor, pad_id: int) -> torch.Tensor:
    """Per row, the index before the first ``pad_id`` token, or the last index when there is none
    (CarperAI's ``c_ind - 1``). A row that starts with a pad (an empty text) is read at 0, where
    CarperAI's code would wrap around to the last padded position."""
    is_pad = ids == pad_id
    first = torch.where(is_pad.any(1), is_pad.int().argmax(1), ids.shape[1])
    return (first - 1).clamp(min=0)


def _resolve_label(config, label: str | int | None) -> int:
    """Index of ``label`` (name, case-insensitive, or index); default: the last label."""
    n = config.num_labels
    if label is None:
        return n - 1
    labels = {int(i): name for i, name in (config.id2label or {}).items()}
    listed = ", ".join(f"{i}: {labels.get(i, f'LABEL_{i}')!r}" for i in range(n))
    if isinstance(label, int) and not isinstance(label, bool):
        if not 0 <= label < n:
            raise QuarkError(f"label index {label} is out of range: the classifier has {n} labels ({listed})")
        return label
    if not isinstance(label, str):
        raise QuarkError(f"label must be a label name or index, got {label!r}; the classifier's labels: {listed}")
    names = {str(name).lower(): i for i, name in labels.items()}
    if label.lower() not in names:
        raise QuarkError(f"unknown label {label!r}: the classifier's labels are "
                         f"{[labels[i] for i in sorted(labels)]} (by index: {listed})")
    return names[label.lower()]


def format_texts(template: str, prompts: list[str], completions: list[str]) -> list[str]:
    """The texts a model reward reads: ``template`` filled per row.

    ``{prompt}`` and ``{completion}`` are the row's as given; ``{post}`` and ``{summary}`` are
    ALT's ``(prompt + completion).split("TL;DR:")[0].strip()`` and ``[1].strip()``: the text
    before the first mark and between the first and second (a completion that writes another
    "TL;DR:" loses what follows, as in ALT). A row with no "TL;DR:" is an error naming it.
    """
    split = any(name in ("post", "summary") for _, name, _, _ in string.Formatter().parse(template))
    texts = []
    for i, (p, c) in enumerate(zip(prompts, completions)):
        parts = {}
        if split:
            pieces = (p + c).split(TLDR_MARK)
            if len(pieces) < 2:
                raise QuarkError(f"row {i} has no {TLDR_MARK!r} in prompt + completion ({(p + c)[:60]!r}), "
                                 f"so the reward template {template!r} has no {{post}}/{{summary}} to split "
                                 "off: give prompts in the TL;DR layout (quarklab.tldr.as_prompt) or use a "
                                 "template of {prompt} and {completion}")
            parts = dict(post=pieces[0].strip(), summary=pieces[1].strip())
        texts.append(template.format(prompt=p, completion=c, **parts))
    return texts


def _check_template(template: str) -> str:
    try:
        bad = sorted({repr(name) for _, name, _, _ in string.Formatter().parse(template)
                      if name is not None and name not in TEMPLATE_FIELDS})
        if not bad:
            template.format(**dict.fromkeys(TEMPLATE_FIELDS, ""))
    except ValueError as exc:  # unbalanced braces, a bad format spec
        bad = [f"{type(exc).__name__}: {exc}"]
    if bad:
        raise QuarkError(f"bad reward template {template!r}: use only {{prompt}}, {{completion}}, {{post}} "
                         f"and {{summary}}, with a literal brace doubled ({', '.join(bad)})")
    return template


def _check_max_length(max_length: int | None, limit: int, default: int | None) -> int:
    """``max_length``, or ``default`` capped at the model's context ``limit`` (``limit`` itself when None)."""
    if max_length is None:
        return min(default, limit) if default else limit
    return check_int(max_length, "reward max_length (at most the model's context)", 1, limit)


def _check_batch_size(batch_size: int) -> int:
    if batch_size < 1:
        raise QuarkError(f"batch_size must be at least 1, got {batch_size}")
    return batch_size


def no_cache(model) -> None:
    """A scoring model keeps no KV cache: a forward pass that caches holds every block's keys and values until it
    returns (GPT-J 6B, 16 texts of 550 tokens: 3.9 GiB kept for nothing)."""
    if hasattr(model.config, "use_cache"):
        model.config.use_cache = False


def _fixed_batches(tokenizer, texts: list[str], batch_size: int, max_length: int, device: torch.device):
    """``(rows, ids, mask)`` per batch of ``texts``, every one ``batch_size`` x ``max_length``: the texts padded on
    the right to ``max_length``, a last batch of fewer texts filled up with empty texts; ``rows`` is how many of
    the batch's rows are texts (the first ones)."""
    for i in range(0, len(texts), batch_size):
        chunk = texts[i:i + batch_size]
        ids, mask = _encode(tokenizer, chunk + [""] * (batch_size - len(chunk)), max_length, device,
                            padding="max_length")
        yield len(chunk), ids, mask


def _encode(tokenizer, texts: list[str], max_length: int, device: torch.device, padding: bool | str = True):
    """Right-padded (to the longest text, or with ``padding="max_length"`` to ``max_length``), truncated ids and
    mask; a text with no tokens becomes a lone pad (= eos) token."""
    enc = tokenizer(texts, return_tensors="pt", padding=padding, truncation=True, max_length=max_length)
    ids, mask = enc["input_ids"], enc["attention_mask"]
    if ids.shape[1] == 0:
        ids, mask = ids.new_zeros((len(texts), 1)), mask.new_zeros((len(texts), 1))
    empty = mask.sum(1) == 0
    ids[empty, 0] = tokenizer.pad_token_id
    mask[empty, 0] = 1
    return ids.to(device), mask.to(device)
