"""The token comparison as static, self-contained HTML (headless and papermill runs, the widget's output)."""

from __future__ import annotations

import html
import math

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.colors import to_hex, to_rgb

from ..compare import REFERENCE
from ..errors import QuarkError
from ..tokens import as_token, quantile_token, token_label
from ..tasks import get_task

_VIRIDIS = colormaps["viridis"]  # colour-blind safe, perceptually uniform, sequential

# Every rule is scoped under the wrapper and the table (specificity (0,2,1) and up), so it outranks JupyterLab's
# ``:not(.jp-RenderedMarkdown).jp-RenderedHTMLCommon td {text-align: right}`` (0,2,1, earlier in the page) and
# ipywidgets' HTML-widget styles: prose cells are left-aligned and wrap, the table fits the output area
# (fixed layout, 100% wide, words broken anywhere rather than overflowing), and the reward · ppl · length
# line wraps between its parts.
TABLE_STYLE = """
<style>
.quarklab-compare-wrap { max-width: 100%; overflow-x: auto; min-width: 0; }
.quarklab-compare-wrap .quarklab-compare { border-collapse: collapse; width: 100%; max-width: 100%;
  table-layout: fixed; margin: 0; font-family: system-ui, -apple-system, "Segoe UI", sans-serif;
  font-size: 13px; line-height: 1.35; }
.quarklab-compare-wrap .quarklab-compare caption { caption-side: top; text-align: left; padding: 4px 0 8px;
  color: #444; font-size: 12px; white-space: normal; overflow-wrap: anywhere; }
.quarklab-compare-wrap .quarklab-compare th { background: #f3f3f3; text-align: left; padding: 6px 8px;
  border-bottom: 2px solid #bbb; font-weight: 600; vertical-align: bottom; white-space: normal;
  overflow-wrap: anywhere; }
.quarklab-compare-wrap .quarklab-compare td.prompt,
.quarklab-compare-wrap .quarklab-compare td.completion { text-align: left; padding: 6px 8px;
  border-bottom: 1px solid #ddd; vertical-align: top; white-space: pre-wrap; overflow-wrap: anywhere;
  max-width: none; }
.quarklab-compare-wrap .quarklab-compare td.prompt { color: #333; background: #fafafa; font-size: 12px; }
.quarklab-compare-wrap .quarklab-compare td.completion { border-left: 4px solid var(--qc-reward, #ccc); }
.quarklab-compare-wrap .quarklab-compare .meta { display: block; margin-top: 4px; white-space: normal;
  font-size: 11px; color: #555; }
.quarklab-compare-wrap .quarklab-compare .reward { padding: 0 4px; border-radius: 3px;
  font-variant-numeric: tabular-nums; }
.quarklab-compare-wrap .quarklab-compare .cut { color: #a33; }
.quarklab-compare-wrap .quarklab-compare th .hint { display: block; font-weight: 400; font-size: 11px; color: #666; }
</style>
"""


def _viridis(x: float) -> str:
    """Hex colour at ``x`` in [0, 1] on matplotlib's viridis (clipped to the ends)."""
    return to_hex(_VIRIDIS(min(max(float(x), 0.0), 1.0)))


def _text_colour(colour: str) -> str:
    """Black on a light background, white on a dark one (Rec. 709 luma of the sRGB values above 0.45:
    near where both reach the same WCAG contrast)."""
    r, g, b = to_rgb(colour)
    return "#000" if 0.2126 * r + 0.7152 * g + 0.0722 * b > 0.45 else "#fff"


def fmt_number(x, digits: int = 3, missing: str = "–") -> str:
    """``x`` for people: integers as they are, other numbers to ``digits`` significant digits without float
    noise (``0.9000000000000001`` → ``"0.9"``, ``3.5201`` → ``"3.52"``, ``12.345`` → ``"12.3"``, ``1234.5`` →
    ``"1234"``); ``missing`` for None, NaN, infinities and what is not a number."""
    if isinstance(x, (bool, np.bool_)):
        return str(bool(x))
    if isinstance(x, (int, np.integer)):
        return str(int(x))
    try:
        x = float(x)
    except (TypeError, ValueError):
        return missing
    if not math.isfinite(x):
        return missing
    if x == 0:
        return "0"
    if abs(x) >= 10 ** digits:
        return f"{x:.0f}"
    return format(x, f".{digits}g")


def comparison_html(df: pd.DataFrame, *, max_prompt_chars: int = 600, caption: str | None = None,
                    task: str = "tldr") -> str:
    """A static HTML table of :func:`compare_tokens` output: one row per prompt, the prompt first
    (shortened in the middle as ``task`` shortens it: TL;DR, of its post), then one cell per column (token
    0..K-1, then the reference or the unconditioned policy): the completion and ``reward · ppl · tokens``.

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
        if as_token(tok) is not None:
            tokens.setdefault(col, as_token(tok))
        elif col not in others:
            others.append(col)
    columns = sorted(tokens, key=lambda c: tokens[c]) + [c for c in others if c not in tokens]

    rewards = pd.to_numeric(df["reward"], errors="coerce").to_numpy(dtype=np.float64)
    finite = rewards[np.isfinite(rewards)]
    lo, hi = (float(finite.min()), float(finite.max())) if len(finite) else (0.0, 0.0)

    def cell(row) -> str:
        r = float(row["reward"]) if np.isfinite(pd.to_numeric(row["reward"], errors="coerce")) else math.nan
        colour = _viridis(0.5 if hi <= lo or not math.isfinite(r) else (r - lo) / (hi - lo))
        parts = [f'<span class="part reward" style="background:{colour};color:{_text_colour(colour)}">'
                 f"reward\u00a0{fmt_number(r)}</span>"]
        if "perplexity" in row.index:
            parts.append(f'<span class="part">ppl\u00a0{fmt_number(row["perplexity"])}</span>')
        if "length" in row.index:
            parts.append(f'<span class="part">{fmt_number(row["length"])}\u00a0tok</span>')
        if "finished" in row.index and not bool(row["finished"]):
            parts.append('<span class="part cut" title="hit max_new_tokens before EOS">cut</span>')
        meta = "\u00a0· ".join(parts)  # no-break spaces inside a part: a line breaks after a "·" (or, in a
        # column too narrow for one part, anywhere: overflow-wrap)
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
            hint = f'<span class="hint">{token_label(None)}</span>'
        head_cells.append(f'<th scope="col">{html.escape(str(col))}{hint}</th>')

    body = []
    for (pid, prompt), by_col in groups.items():
        cells = [f'<td class="prompt" title="prompt {html.escape(str(pid))}">'
                 f"{html.escape(get_task(task).shorten(str(prompt), max_prompt_chars))}</td>"]
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
                        f" Sampled (temperature {fmt_number(settings.get('temperature'))}, "
                        f"top-p {fmt_number(settings.get('top_p'))}, seed {fmt_number(settings.get('seed'))})")
            decoding += f", at most {fmt_number(settings.get('max_new_tokens'))} new tokens."
        under = "the policy" if settings.get("perplexity_under") == "policy" else "the reference"
        caption = (f"Completions for {len(groups)} prompt(s), conditioned on each quantile token "
                   f"(token 0 = highest-reward quantile) and without a token.{decoding} "
                   f"reward: higher is better (colour: viridis over this table, {fmt_number(lo)} to {fmt_number(hi)}); "
                   f"ppl: perplexity under {under}; tok: length in tokens; cut: no EOS before the limit.")
    prompt_width = max(16, 100 // (len(columns) + 2))  # the prompt a little wider; the rest share what is left
    col_width = (100 - prompt_width) / len(columns)
    widths = f'<col class="prompt-col" style="width:{prompt_width}%">' + "".join(
        f'<col style="width:{col_width:.2f}%">' for _ in columns)
    return (TABLE_STYLE + '<div class="quarklab-compare-wrap">'
            f'<table class="quarklab-compare"><caption>{html.escape(caption)}</caption>'
            f"<colgroup>{widths}</colgroup>"
            f"<thead><tr>{''.join(head_cells)}</tr></thead><tbody>{''.join(body)}</tbody></table></div>")
