"""quarklab.present.html: the side-by-side table of completions per token, escaped, coloured, 3 significant digits."""

from __future__ import annotations

import re

import pandas as pd
import pytest
from matplotlib import colormaps
from matplotlib.colors import to_hex

import quarklab as ql
from quarklab.present.html import comparison_html, fmt_number


def test_comparison_html(quark, greedy_table):
    k, _, _ = quark
    df = greedy_table.copy()
    evil = "SUBREDDIT: r/test\nTITLE: <script>alert('x')</script> & co\nPOST: " + "word " * 400 + "\nTL;DR:"
    df.loc[df["prompt_id"] == df["prompt_id"].iloc[0], "prompt"] = evil
    df.loc[0, "completion"] = " <b>bold</b> <script>bad()</script>"
    page = comparison_html(df)
    assert "<script>" not in page and "&lt;script&gt;" in page
    assert "&lt;b&gt;bold&lt;/b&gt;" in page
    assert '<style>' in page and "quarklab-compare" in page and "<caption>" in page
    headers = re.findall(r"<th scope=\"col\"[^>]*>(.*?)</th>", page)
    assert len(headers) == k + 2  # the prompt column, K tokens, the reference
    assert headers[0] == "prompt"
    assert [h.split("<span")[0] for h in headers[1:]] == [f"token {i}" for i in range(k)] + ["reference"]
    # one row per prompt; the long post shortened in the middle, TITLE and TL;DR: kept
    assert page.count("<tr>") == 1 + df["prompt_id"].nunique()
    assert "TITLE: &lt;script&gt;" in page and "…" in page and "TL;DR:</td>" in page
    # the reward, perplexity and length shown are the table's, to 3 significant digits
    for _, row in greedy_table.iterrows():
        assert f"reward\u00a0{fmt_number(row['reward'])}" in page
        assert f'ppl\u00a0{fmt_number(row["perplexity"])}</span>\u00a0· <span class="part">{row["length"]}\u00a0tok' in page
    # rewards coloured on matplotlib's viridis over the table (dark = lowest, yellow = highest), readable text
    lo, hi = greedy_table["reward"].min(), greedy_table["reward"].max()
    for _, row in greedy_table.iterrows():
        x = 0.5 if hi <= lo else (row["reward"] - lo) / (hi - lo)
        assert f'style="background:{to_hex(colormaps["viridis"](x))};color:' in page
    if hi > lo:
        assert f'background:#fde725;color:#000">reward\u00a0{fmt_number(hi)}' in page  # yellow, black text
        assert f'background:#440154;color:#fff">reward\u00a0{fmt_number(lo)}' in page  # dark purple, white text


def test_comparison_html_rejects_other_tables():
    with pytest.raises(ql.QuarkError, match="lacks the columns"):
        comparison_html(pd.DataFrame({"prompt": ["x"]}))
