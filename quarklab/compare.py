"""Tokens 0..K-1 side by side: one completion per quantile token (and one without) for each prompt.

:func:`compare_tokens` generates, for every prompt, the completion conditioned on each quantile
token ``_QUANTILE_TOKEN_k_`` (prepended to the prompt with no space; k = 0 asks for the best
reward quantile) and one unconditioned completion from the reference model (or from the policy
without a token when there is no reference), then scores them all: reward, perplexity under the
reference (ALT's per-sample ``exp(mean NLL)``) and length in tokens. :func:`comparison_html`
renders that table as static, self-contained HTML (headless/papermill runs, the widget's output).

A checkpoint whose tokenizer already holds the quantile tokens (a quarklab run checkpoint
``runs/x/checkpoints/iter_003``, the released ``sauc-abadal-lloret/gpt-j-6b-ALT-Quark-tldr``)
works as it is: K is detected from the tokenizer.
"""

from __future__ import annotations

import html
import math
from typing import Sequence

import numpy as np
import pandas as pd

from .errors import QuarkError
from .models import quantile_token
from .rewards import check_rewards
from .sampling import TLDR_TAIL, SamplingParams, sample

REFERENCE = "reference"
POLICY_NO_TOKEN = "policy, no token"
COLUMNS = ["prompt_id", "prompt", "column", "token", "source", "completion", "reward", "perplexity", "length",
           "finished"]

_NO_TOKENS = ("this checkpoint has no quantile tokens (no {name!r} in its tokenizer): train one with "
              "`quarklab train`, or pass a Quark checkpoint such as the released "
              "sauc-abadal-lloret/gpt-j-6b-ALT-Quark-tldr (or add untrained tokens with "
              "quarklab.models.add_quantile_tokens)")


def column_name(token: int) -> str:
    """The ``column`` label of quantile token ``token``: ``"token 0"`` ..."""
    return f"token {int(token)}"


def quantile_token_ids(tokenizer, num_quantiles: int | None = None) -> list[int]:
    """Ids of ``_QUANTILE_TOKEN_0_`` .. ``_QUANTILE_TOKEN_{K-1}_`` in ``tokenizer`` (index = k).

    With ``num_quantiles=None``, K is the number of consecutive tokens ``_0_``, ``_1_``, ... the
    tokenizer holds. A tokenizer with none of them, or without all ``num_quantiles`` asked for,
    is a :class:`QuarkError`.
    """
    vocab = tokenizer.get_vocab()
    if quantile_token(0) not in vocab:
        raise QuarkError(_NO_TOKENS.format(name=quantile_token(0)))
    if num_quantiles is None:
        k = 0
        while quantile_token(k) in vocab:
            k += 1
        return [int(vocab[quantile_token(i)]) for i in range(k)]
    if isinstance(num_quantiles, bool) or not isinstance(num_quantiles, (int, np.integer)) or num_quantiles < 1:
        raise QuarkError(f"num_quantiles must be an int >= 1 (or None to detect it), got {num_quantiles!r}")
    missing = [quantile_token(k) for k in range(int(num_quantiles)) if quantile_token(k) not in vocab]
    if missing:
        present = len(quantile_token_ids(tokenizer))
        raise QuarkError(f"num_quantiles={num_quantiles}, but this tokenizer holds only {present} quantile "
                         f"token(s) (missing {missing[0]!r}{' ...' if len(missing) > 1 else ''}): pass "
                         f"num_quantiles={present} or None to use the tokens the checkpoint was trained with")
    return [int(vocab[quantile_token(k)]) for k in range(int(num_quantiles))]


def _prompt_table(prompts) -> pd.DataFrame:
    """``prompts`` (a str, a list of str, a Series, or a DataFrame with ``prompt``) as ``prompt_id``, ``prompt``."""
    if isinstance(prompts, str):
        prompts = [prompts]
    if isinstance(prompts, pd.DataFrame):
        if "prompt" not in prompts.columns:
            raise QuarkError(f"the prompts table has no 'prompt' column (columns: {list(prompts.columns)})")
        table = prompts[["prompt"] + (["prompt_id"] if "prompt_id" in prompts.columns else [])].reset_index(drop=True)
    else:
        table = pd.DataFrame({"prompt": list(prompts)})
    if "prompt_id" not in table.columns:
        table.insert(0, "prompt_id", range(len(table)))
    if len(table) == 0:
        raise QuarkError("no prompts to compare")
    bad = table["prompt"].map(lambda p: not isinstance(p, str) or not p.strip())
    if bad.any():
        raise QuarkError(f"{int(bad.sum())} prompts are empty or not text "
                         f"(first at position {int(np.flatnonzero(bad.to_numpy())[0])})")
    return table[["prompt_id", "prompt"]]


def compare_tokens(policy, tokenizer, prompts, reward, *, reference=None, reference_tokenizer=None,
                   num_quantiles: int | None = None, do_sample: bool = False, temperature: float = 1.0,
                   top_p: float = 1.0, max_new_tokens: int = 48, seed: int = 0) -> pd.DataFrame:
    """One completion per quantile token (and one without) for every prompt, scored.

    ``prompts`` is a list of str or a DataFrame with ``prompt`` (and optionally ``prompt_id``).
    ``reward(prompts, completions)`` scores the completions. Each prompt gets the policy's
    completion after ``_QUANTILE_TOKEN_k_`` for k = 0..K-1 (K detected from the tokenizer when
    ``num_quantiles`` is None) and one unconditioned completion: from ``reference`` (column
    ``"reference"``) or, without a reference, from the policy itself (column
    ``"policy, no token"``). Perplexity is under ``reference`` (the policy when there is none),
    given the prompt without a token. ``do_sample=False`` is greedy decoding; sampling is seeded,
    so the same arguments give the same table.

    Returns one row per (prompt, column), prompts in the order given and columns
    ``token 0`` .. ``token K-1`` then the unconditioned one: ``prompt_id``, ``prompt``,
    ``column``, ``token`` (int, or None for the unconditioned row), ``source`` (``"policy"`` or
    ``"reference"``), ``completion``, ``reward``, ``perplexity``, ``length`` (tokens),
    ``finished`` (ended with EOS).
    """
    from .evaluate import reference_perplexity

    if not callable(reward):
        raise QuarkError(f"reward must be a callable reward(prompts, completions), got {type(reward).__name__}")
    table = _prompt_table(prompts)
    ids = quantile_token_ids(tokenizer, num_quantiles)
    rows_in_model = policy.get_input_embeddings().num_embeddings
    if max(ids) >= rows_in_model:
        raise QuarkError(f"the tokenizer holds quantile tokens up to id {max(ids)}, but the policy's embedding "
                         f"has {rows_in_model} rows: load the model saved with this tokenizer, or call "
                         "quarklab.models.add_quantile_tokens(policy, tokenizer, K)")
    params = SamplingParams(n=1, do_sample=bool(do_sample), temperature=float(temperature), top_p=float(top_p),
                            max_new_tokens=int(max_new_tokens), seed=int(seed))

    ref_model = reference if reference is not None else policy
    ref_tok = (reference_tokenizer if reference_tokenizer is not None else tokenizer) if reference is not None \
        else tokenizer

    parts = []
    for k, token_id in enumerate(ids):
        out = sample(policy, tokenizer, table, params, token=k, prefix_token_id=token_id, suppress=ids)
        parts.append(out.assign(column=column_name(k), source="policy"))
    if reference is not None:
        out = sample(reference, ref_tok, table, params, token=None,
                     suppress=_ids_within(ref_tok, reference, ids) or None)
        parts.append(out.assign(column=REFERENCE, source="reference"))
    else:
        out = sample(policy, tokenizer, table, params, token=None, suppress=ids)
        parts.append(out.assign(column=POLICY_NO_TOKEN, source="policy"))

    df = pd.concat(parts, ignore_index=True)
    df["reward"] = check_rewards(reward(df["prompt"].tolist(), df["completion"].tolist()), len(df),
                                 getattr(reward, "name", "reward"))

    ppl_input = df[["prompt", "completion_ids", "finished"]].copy()
    if ref_tok is not tokenizer:  # policy completions, re-encoded with the reference's tokenizer
        policy_rows = (df["source"] == "policy").to_numpy()
        ppl_input.loc[policy_rows, "completion_ids"] = pd.Series(
            [ref_tok(c, add_special_tokens=False)["input_ids"] for c in df.loc[policy_rows, "completion"]],
            index=ppl_input.index[policy_rows], dtype=object)
    df["perplexity"] = np.asarray(reference_perplexity(ref_model, ref_tok, ppl_input, params.max_new_tokens),
                                  dtype=np.float64)
    df["length"] = df["num_tokens"].astype(np.int64)
    df["finished"] = df["finished"].astype(bool)
    df["token"] = pd.Series([None if t is None or (isinstance(t, float) and math.isnan(t)) else int(t)
                             for t in df["token"]], index=df.index, dtype=object)

    # prompts in the order given, then token 0..K-1, then the unconditioned column
    column_rank = {column_name(k): k for k in range(len(ids))}
    df["_p"] = np.arange(len(df)) % len(table)  # each part lists the prompts in the order given
    df["_c"] = df["column"].map(lambda c: column_rank.get(c, len(ids)))
    df = df.sort_values(["_p", "_c"], kind="stable").reset_index(drop=True)
    out = df[COLUMNS].copy()
    out.attrs["settings"] = {"num_quantiles": len(ids), "do_sample": bool(do_sample), "temperature": float(temperature),
                             "top_p": float(top_p), "max_new_tokens": int(max_new_tokens), "seed": int(seed),
                             "perplexity_under": "reference" if reference is not None else "policy"}
    return out


def _ids_within(tokenizer, model, ids: Sequence[int]) -> list[int]:
    """The quantile ids that exist in ``tokenizer`` and fit ``model``'s vocabulary (never to be generated)."""
    vocab = tokenizer.get_vocab()
    n = model.get_input_embeddings().num_embeddings
    names = [quantile_token(k) for k in range(len(ids))]
    return [int(vocab[name]) for name in names if name in vocab and vocab[name] < n]


# --------------------------------------------------------------------------------------------- HTML

# viridis at 0, 1/8, ..., 1 (colour-blind safe, perceptually uniform, sequential)
_VIRIDIS = ["#440154", "#472d7b", "#3b528b", "#2c728e", "#21918c", "#28ae80", "#5ec962", "#addc30", "#fde725"]

_STYLE = """
<style>
.quarklab-compare { border-collapse: collapse; font-family: system-ui, -apple-system, "Segoe UI", sans-serif;
  font-size: 13px; line-height: 1.35; width: 100%; table-layout: fixed; }
.quarklab-compare caption { caption-side: top; text-align: left; padding: 4px 0 8px; color: #444; font-size: 12px; }
.quarklab-compare th { background: #f3f3f3; text-align: left; padding: 6px 8px; border-bottom: 2px solid #bbb;
  font-weight: 600; vertical-align: bottom; }
.quarklab-compare td { padding: 6px 8px; border-bottom: 1px solid #ddd; vertical-align: top;
  white-space: pre-wrap; overflow-wrap: anywhere; }
.quarklab-compare td.prompt { color: #333; background: #fafafa; font-size: 12px; }
.quarklab-compare td.completion { border-left: 4px solid var(--qc-reward, #ccc); }
.quarklab-compare .meta { display: block; margin-top: 4px; white-space: nowrap; font-size: 11px; color: #555; }
.quarklab-compare .reward { padding: 0 4px; border-radius: 3px; font-variant-numeric: tabular-nums; }
.quarklab-compare .cut { color: #a33; }
.quarklab-compare th .hint { display: block; font-weight: 400; font-size: 11px; color: #666; }
</style>
"""


def _viridis(x: float) -> str:
    """Hex colour at ``x`` in [0, 1] on viridis (linear between the anchors)."""
    x = min(max(float(x), 0.0), 1.0) * (len(_VIRIDIS) - 1)
    i = min(int(x), len(_VIRIDIS) - 2)
    t = x - i
    a, b = (tuple(int(c[j:j + 2], 16) for j in (1, 3, 5)) for c in (_VIRIDIS[i], _VIRIDIS[i + 1]))
    return "#" + "".join(f"{round(p + (q - p) * t):02x}" for p, q in zip(a, b))


def _text_colour(hex_colour: str) -> str:
    r, g, b = (int(hex_colour[j:j + 2], 16) / 255 for j in (1, 3, 5))
    return "#000" if 0.2126 * r + 0.7152 * g + 0.0722 * b > 0.45 else "#fff"


def shorten_prompt(prompt: str, max_chars: int = 600) -> str:
    """``prompt`` in about ``max_chars`` characters: the post body is cut in the middle with an
    ellipsis; the head (``SUBREDDIT``/``TITLE`` up to ``POST:``) and the trailing ``TL;DR:`` stay."""
    if max_chars is None or len(prompt) <= max_chars:
        return prompt
    end = prompt.rfind(TLDR_TAIL)
    end = end if end >= 0 else len(prompt)
    tail = prompt[end:]
    post = prompt.find("\nPOST:")
    head_end = post + len("\nPOST:") if 0 <= post < end else 0
    if head_end == 0:  # no POST: keep the TITLE line whole when there is one
        title = prompt.find("TITLE:")
        if 0 <= title < end:
            nl = prompt.find("\n", title)
            head_end = nl if 0 <= nl < end else end
    head, body = prompt[:head_end], prompt[head_end:end]
    room = max(max_chars - len(head) - len(tail) - 3, 40)
    if len(body) <= room:
        return prompt
    left = room // 2
    right = room - left
    return f"{head}{body[:left].rstrip()} … {body[len(body) - right:].lstrip()}{tail}"


def _fmt(x, spec: str = ".2f", missing: str = "–") -> str:
    try:
        x = float(x)
    except (TypeError, ValueError):
        return missing
    return format(x, spec) if math.isfinite(x) else missing


def comparison_html(df: pd.DataFrame, *, max_prompt_chars: int = 600, caption: str | None = None) -> str:
    """A static HTML table of :func:`compare_tokens` output: one row per prompt, the prompt first
    (shortened in the middle of its post), then one cell per column (token 0..K-1, then the
    reference or the unconditioned policy): the completion and ``reward · ppl · tokens``.

    All text is HTML-escaped. Reward cells carry a viridis colour (dark = low, yellow = high,
    scaled over the whole table). Self-contained: a scoped ``<style>`` block, no scripts.
    """
    if not isinstance(df, pd.DataFrame):
        raise QuarkError(f"comparison_html needs the DataFrame from compare_tokens, got {type(df).__name__}")
    need = ["prompt", "column", "completion", "reward"]
    missing = [c for c in need if c not in df.columns]
    if missing:
        raise QuarkError(f"comparison_html: the table lacks the columns {missing} (use compare_tokens' output)")
    if len(df) == 0:
        raise QuarkError("comparison_html: the table is empty")
    df = df.reset_index(drop=True)
    if "prompt_id" not in df.columns:
        df = df.assign(prompt_id=pd.factorize(df["prompt"])[0])
    if "token" not in df.columns:
        df = df.assign(token=None)

    # columns: the quantile tokens by index, then the others (reference / no token) as they come
    tokens, others = {}, []
    for col, tok in zip(df["column"], df["token"]):
        if tok is not None and not (isinstance(tok, float) and math.isnan(tok)):
            tokens.setdefault(col, int(tok))
        elif col not in others:
            others.append(col)
    columns = sorted(tokens, key=lambda c: tokens[c]) + [c for c in others if c not in tokens]

    rewards = pd.to_numeric(df["reward"], errors="coerce").to_numpy(dtype=np.float64)
    finite = rewards[np.isfinite(rewards)]
    lo, hi = (float(finite.min()), float(finite.max())) if len(finite) else (0.0, 0.0)

    def cell(row) -> str:
        r = float(row["reward"]) if np.isfinite(pd.to_numeric(row["reward"], errors="coerce")) else math.nan
        colour = _viridis(0.5 if hi <= lo or not math.isfinite(r) else (r - lo) / (hi - lo))
        parts = [f'<span class="reward" style="background:{colour};color:{_text_colour(colour)}">'
                 f"reward {_fmt(r)}</span>"]
        if "perplexity" in row.index:
            parts.append(f"ppl {_fmt(row['perplexity'])}")
        if "length" in row.index:
            parts.append(f"{_fmt(row['length'], '.0f')} tok")
        meta = " · ".join(parts)
        if "finished" in row.index and not bool(row["finished"]):
            meta += ' · <span class="cut" title="hit max_new_tokens before EOS">cut</span>'
        return f'{html.escape(str(row["completion"]))}<span class="meta">{meta}</span>'

    groups: dict = {}
    for _, row in df.iterrows():
        groups.setdefault((row["prompt_id"], row["prompt"]), {}).setdefault(row["column"], []).append(row)

    head_cells = ['<th scope="col" class="prompt-head">prompt</th>']
    for col in columns:
        hint = ""
        if col in tokens:
            k = tokens[col]
            hint = "best quantile" if k == 0 else ("worst quantile" if k == max(tokens.values()) and k > 0 else "")
            hint = f'<span class="hint">{html.escape(quantile_token(k))}{" · " + hint if hint else ""}</span>'
        elif col == REFERENCE:
            hint = '<span class="hint">no token</span>'
        head_cells.append(f'<th scope="col">{html.escape(str(col))}{hint}</th>')

    body = []
    for (pid, prompt), by_col in groups.items():
        cells = [f'<td class="prompt" title="prompt {html.escape(str(pid))}">'
                 f"{html.escape(shorten_prompt(str(prompt), max_prompt_chars))}</td>"]
        for col in columns:
            rows = by_col.get(col, [])
            if not rows:
                cells.append('<td class="completion empty">–</td>')
                continue
            mean = np.nanmean([pd.to_numeric(r["reward"], errors="coerce") for r in rows])
            colour = _viridis(0.5 if hi <= lo or not np.isfinite(mean) else (mean - lo) / (hi - lo))
            inner = '<hr style="border:0;border-top:1px dashed #ccc">'.join(cell(r) for r in rows)
            cells.append(f'<td class="completion" style="--qc-reward:{colour}">{inner}</td>')
        body.append("<tr>" + "".join(cells) + "</tr>")

    if caption is None:
        settings = df.attrs.get("settings", {}) if hasattr(df, "attrs") else {}
        decoding = ""
        if settings:
            decoding = (" Greedy decoding" if not settings.get("do_sample") else
                        f" Sampled (temperature {settings.get('temperature')}, top-p {settings.get('top_p')})")
            decoding += f", at most {settings.get('max_new_tokens')} new tokens, seed {settings.get('seed')}."
        under = "the policy" if settings.get("perplexity_under") == "policy" else "the reference"
        caption = (f"Completions for {len(groups)} prompt(s), conditioned on each quantile token "
                   f"(token 0 = highest-reward quantile) and without a token.{decoding} "
                   f"reward: higher is better (colour: viridis over this table, {_fmt(lo)} to {_fmt(hi)}); "
                   f"ppl: perplexity under {under}; tok: length in tokens; cut: no EOS before the limit.")
    widths = f'<col style="width:{max(18, 100 // (len(columns) + 2))}%">'
    return (_STYLE + '<div class="quarklab-compare-wrap" style="overflow-x:auto">'
            f'<table class="quarklab-compare"><caption>{html.escape(caption)}</caption>'
            f"<colgroup>{widths}{'<col>' * len(columns)}</colgroup>"
            f"<thead><tr>{''.join(head_cells)}</tr></thead><tbody>{''.join(body)}</tbody></table></div>")
