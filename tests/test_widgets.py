"""quarklab.present.widgets: the token comparer and the quantile explorer, driven headless (no browser)."""

from __future__ import annotations

import html
import io
import re

import matplotlib

matplotlib.use("Agg")

import matplotlib.image  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
from bs4 import BeautifulSoup  # noqa: E402  (beautifulsoup4 comes with jupyterlab, through nbconvert)
from matplotlib.figure import Figure  # noqa: E402

import quarklab as ql  # noqa: E402
from quarklab.tokens import add_quantile_tokens  # noqa: E402
from quarklab.present.html import comparison_html, fmt_number  # noqa: E402
from quarklab.present.widgets import QuantileExplorer, TokenComparer  # noqa: E402
from quarklab.quantiles import assign_quantiles  # noqa: E402
from quarklab.tldr import as_prompt as as_tldr_prompt  # noqa: E402

K = 3


@pytest.fixture(scope="module")
def quark(world):
    policy, tokenizer = ql.load_policy(world.policy), ql.load_tokenizer(world.policy)
    add_quantile_tokens(policy, tokenizer, K)
    return policy, tokenizer


@pytest.fixture(scope="module")
def prompts(world):
    return ql.load_prompts("tiny-tldr", "test", limit=3)


@pytest.fixture()
def comparer(quark, sft, prompts):
    policy, tokenizer = quark
    return TokenComparer(policy, tokenizer, ql.load_reward("tiny-tldr"), prompts, reference=sft[0],
                         max_new_tokens=16)


def _title(prompt: str) -> str:
    return next(l[len("TITLE:"):].strip() for l in prompt.splitlines() if l.startswith("TITLE:"))


def test_controls_built(comparer, prompts):
    assert comparer.num_quantiles == K
    assert [v for _, v in comparer.picker.options] == [0, 1, 2]
    assert _title(prompts["prompt"][1])[:20] in comparer.picker.options[1][0]
    assert comparer.greedy.value is False
    assert (comparer.temperature.min, comparer.temperature.max) == (0.1, 2.0)
    assert (comparer.top_p.min, comparer.top_p.max) == (0.05, 1.0)
    assert (comparer.max_new_tokens.min, comparer.max_new_tokens.max) == (8, 128)
    assert comparer.button.description == "Regenerate"
    assert comparer.widget.children


def test_click_regenerates_for_the_picked_prompt(comparer, prompts):
    comparer.greedy.value = True
    comparer.max_new_tokens.value = 16
    comparer.picker.value = 1
    comparer.button.click()
    df = comparer.last
    assert df is not None and len(df) == K + 1
    assert (df["prompt"] == prompts["prompt"][1]).all()
    assert (df["length"] <= 16).all()
    page = comparer.output.value
    for completion in df["completion"]:
        assert html.escape(completion) in page
    assert html.escape(_title(prompts["prompt"][1])) in page
    assert "error" not in comparer.status.value
    # greedy: the seed does not matter
    comparer.seed.value = 7
    again = comparer.regenerate()
    pd.testing.assert_frame_equal(again, df)


def test_free_text_is_used_with_tldr_appended(comparer):
    comparer.greedy.value = True
    comparer.free_text.value = "SUBREDDIT: r/test\nTITLE: My cat ignores me\nPOST: My cat (3) never comes when called."
    df = comparer.regenerate()
    assert df is not None
    assert df["prompt"].iloc[0].endswith("\nTL;DR:")
    assert df["prompt"].iloc[0].startswith("SUBREDDIT: r/test")
    assert "My cat ignores me" in comparer.output.value
    assert as_tldr_prompt("x\nTL;DR:") == "x\nTL;DR:" and as_tldr_prompt(" y ") == "y\nTL;DR:"
    # whitespace-only free text counts as empty: the picked prompt is used
    comparer.free_text.value = "  \n "
    comparer.picker.value = 2
    assert comparer.current_prompt()[1] == comparer.prompts[2]


def test_errors_go_to_the_status_line(quark, prompts):
    policy, tokenizer = quark
    broken = TokenComparer(policy, tokenizer, lambda p, c: [float("nan")] * len(c), prompts, max_new_tokens=8)
    before = broken.output.value
    broken.button.click()  # must not raise
    assert broken.status.value.startswith("error:") and "non-finite" in broken.status.value
    assert broken.last is None and broken.output.value == before
    assert isinstance(broken.error, ql.QuarkError)
    assert broken.button.disabled is False


def test_checkpoint_without_tokens_fails_early(sft, prompts):
    model, tokenizer = sft
    with pytest.raises(ql.QuarkError, match="no quantile tokens"):
        TokenComparer(model, tokenizer, ql.load_reward("tiny-tldr"), prompts)


@pytest.fixture()
def samples():
    rng = np.random.default_rng(0)
    n_prompts, per = 12, 8
    pid = np.repeat(np.arange(n_prompts), per)
    reward = rng.normal(size=n_prompts * per) + pid * 0.3
    return pd.DataFrame({"prompt_id": pid, "prompt": [f"prompt {p}\nTL;DR:" for p in pid],
                         "completion": [f"completion {i}" for i in range(len(pid))],
                         "reward": reward, "num_tokens": rng.integers(3, 40, size=len(pid))})


def _quantile_rows(summary_html: str) -> list[str]:
    return re.findall(r'<tr data-quantile="(\d+)">', summary_html)


def test_explorer_assignment_and_summary(samples):
    explorer = QuantileExplorer(samples, num_quantiles=5, scope="local")
    r = samples["reward"].to_numpy()
    np.testing.assert_array_equal(explorer.assignment, assign_quantiles(r, 5, samples["prompt_id"].to_numpy()))
    assert _quantile_rows(explorer.summary.value) == ["0", "1", "2", "3", "4"]
    explorer.k.value = 3
    explorer.scope.value = "global"
    assert explorer.assignment.max() == 2
    np.testing.assert_array_equal(explorer.assignment, assign_quantiles(r, 3))
    assert _quantile_rows(explorer.summary.value) == ["0", "1", "2"]
    table = explorer.summary_table(3, "global")
    assert table["count"].sum() == len(samples)
    cells = [[td.get_text() for td in tr.find_all("td")]
             for tr in BeautifulSoup(explorer.summary.value, "html.parser").select("tr[data-quantile]")]
    assert [c[2] for c in cells] == [fmt_number(v) for v in table["reward"]]  # mean reward, 3 significant digits
    assert all(len(c[2].lstrip("-").replace(".", "").lstrip("0")) <= 3 for c in cells)
    assert table["reward"].is_monotonic_decreasing
    assert np.isclose(table["threshold"][2], r.min())


def test_explorer_draws_the_figure(samples):
    explorer = QuantileExplorer(samples, num_quantiles=4)
    assert explorer.error is None, explorer.error
    assert isinstance(explorer.figure, Figure)
    assert "K = 4" in explorer.figure.get_suptitle()
    first, first_png = explorer.figure, explorer.image.value
    explorer.scope.value = "global"
    explorer.k.value = 3
    assert isinstance(explorer.figure, Figure) and explorer.figure is not first
    assert "K = 3" in explorer.figure.get_suptitle()
    heatmap = [ax for ax in explorer.figure.axes if ax.get_gid() == "global/heatmap"][0]
    assert heatmap.images[0].get_array().shape[0] == 3  # one row per quantile
    # what the user sees is the Image widget's picture: the last figure as a PNG, at the figure's size
    png = explorer.image.value
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and png != first_png and explorer.message.value == ""
    assert explorer.image.layout.display is None and explorer.image in explorer.widget.children
    height, width = matplotlib.image.imread(io.BytesIO(png)).shape[:2]
    fig_width, fig_height = explorer.figure.get_size_inches() * 96  # drawn at 96 dpi, tight box
    assert 0.8 * fig_width < width <= 1.05 * fig_width and 0.8 * fig_height < height <= 1.05 * fig_height


def test_explorer_assigns_once_per_move(samples, monkeypatch):
    """One assignment per slider move or scope switch, handed to the summary and the figure (was four)."""
    from tables import count_assignments

    explorer = QuantileExplorer(samples, num_quantiles=5, scope="local")
    calls = count_assignments(monkeypatch)
    explorer.k.value = 3
    assert calls == [3] and explorer.error is None
    explorer.scope.value = "global"
    assert calls == [3, 3] and explorer.error is None
    heat = [ax for ax in explorer.figure.axes if ax.get_gid() == "global/heatmap"][0]
    assert np.asarray(heat.images[0].get_array()).sum() == len(samples)
    pd.testing.assert_frame_equal(explorer.summary_table(3, "global", explorer.assignment),
                                  explorer.summary_table(3, "global"))


def test_explorer_rejects_bad_input(samples):
    with pytest.raises(ql.QuarkError, match="no 'score' column"):
        QuantileExplorer(samples, reward_name="score")
    with pytest.raises(ql.QuarkError, match="scope"):
        QuantileExplorer(samples, scope="pool")


def test_explorer_with_another_reward_column(samples):
    other = samples.rename(columns={"reward": "score"})
    explorer = QuantileExplorer(other, num_quantiles=4, scope="global", reward_name="score")
    np.testing.assert_array_equal(explorer.assignment, assign_quantiles(other["score"].to_numpy(), 4))
    assert _quantile_rows(explorer.summary.value) == ["0", "1", "2", "3"]
    assert explorer.figure is not None, explorer.error
    reward_axes = [ax for ax in explorer.figure.axes if ax.get_gid() == "global/reward"][0]
    assert reward_axes.get_ylabel() == "reward (score)"  # the figure names the reward column


# ---------------------------------------------------------------------------- what a person sees

# JupyterLab 4's rendermime rules for tables (packages/rendermime/style/base.css), as a page holds them before
# any output: an output's own style must win over these for its prose cells.
JUPYTERLAB_CSS = """
.jp-RenderedHTMLCommon td, .jp-RenderedHTMLCommon th, .jp-RenderedHTMLCommon tr {
  vertical-align: middle; padding: 0.5em; line-height: normal; white-space: normal; max-width: none; border: none; }
:not(.jp-RenderedMarkdown).jp-RenderedHTMLCommon td, :not(.jp-RenderedMarkdown).jp-RenderedHTMLCommon th,
:not(.jp-RenderedMarkdown).jp-RenderedHTMLCommon tr { text-align: right; }
"""


def _specificity(selector: str) -> tuple[int, int, int]:
    """CSS specificity of a simple selector (ids, classes/attributes/pseudo-classes, types); :not(x) counts x."""
    sel = re.sub(r":not\(([^)]*)\)", r" \1", selector)
    ids = len(re.findall(r"#[\w-]+", sel))
    classes = len(re.findall(r"\.[\w-]+|\[[^\]]*\]|(?<!:):(?!:)[\w-]+", sel))
    types = len(re.findall(r"(?:^|[\s>+~])([a-zA-Z][\w-]*)", sel))
    return ids, classes, types


def _computed(page: str, wrapper_classes: str, prop: str) -> dict:
    """{element: value of ``prop``} for every td/th of ``page`` shown inside ``<div class=wrapper_classes>`` after
    JupyterLab's rules: the CSS cascade by !important, specificity, then order (inline styles first)."""
    soup = BeautifulSoup(f'<style>{JUPYTERLAB_CSS}</style><div class="{wrapper_classes}">{page}</div>', "html.parser")
    rules = []
    for order, (selectors, body) in enumerate(
            (m.group(1), m.group(2)) for style in soup.find_all("style")
            for m in re.finditer(r"([^{}]+)\{([^{}]*)\}", style.get_text())):
        for decl in body.split(";"):
            name, _, value = decl.partition(":")
            if name.strip() == prop:
                important = "!important" in value
                for sel in selectors.split(","):
                    rules.append((important, _specificity(sel.strip()), order, sel.strip(),
                                  value.replace("!important", "").strip()))
    out = {}
    for el in soup.find_all(["td", "th"]):
        inline = re.search(rf"(?:^|;)\s*{prop}\s*:\s*([^;]+)", el.get("style", ""))
        matching = [r for r in rules if el in soup.select(r[3])]
        best = max(matching, key=lambda r: (r[0], r[1], r[2]), default=None)
        out[el] = inline.group(1).strip() if inline and not (best and best[0]) else (best[4] if best else None)
    return out


def _table(page: str) -> dict:
    """What a reader finds in a comparison table: caption, column headings, and per body row its cells' texts."""
    soup = BeautifulSoup(page, "html.parser")
    table = soup.find("table", class_="quarklab-compare")
    heads = [th.find(string=True, recursive=False).strip() for th in table.select("thead th")]
    rows = [[(td.get("class", []), td) for td in tr.find_all("td", recursive=False)] for tr in table.select("tbody tr")]
    return {"caption": table.caption.get_text(), "heads": heads, "rows": rows, "soup": soup, "table": table}


def _numbers(text: str) -> list[str]:
    return re.findall(r"-?\d+(?:\.\d+)?(?:e[-+]?\d+)?", text)


def test_fmt_number_for_people():
    assert [fmt_number(x) for x in (0.9000000000000001, 3.5201, -0.01234, 12.345, 1234.5, 48, np.int64(7), 0.0)] == \
        ["0.9", "3.52", "-0.0123", "12.3", "1234", "48", "7", "0"]
    assert fmt_number(float("nan")) == fmt_number(None) == fmt_number("x") == "–"


@pytest.mark.parametrize("greedy", [True, False])
def test_comparer_starts_from_the_notebook_parameters(quark, sft, prompts, greedy):
    policy, tokenizer = quark
    params = dict(greedy=greedy, temperature=0.7, top_p=0.1 * 9, max_new_tokens=12, seed=5)  # 0.9000000000000001
    comparer = TokenComparer(policy, tokenizer, ql.load_reward("tiny-tldr"), prompts, reference=sft[0], **params)
    assert comparer.greedy.value is greedy
    assert (comparer.temperature.value, comparer.top_p.value, comparer.max_new_tokens.value, comparer.seed.value) == \
        pytest.approx((0.7, 0.9, 12, 5))
    assert comparer.temperature.disabled is greedy and comparer.seed.disabled is greedy  # greedy: knobs greyed out
    table = comparer.regenerate()  # the button, untouched controls: the notebook's decoding
    expected = ql.compare_tokens(policy, tokenizer, prompts.head(1), ql.load_reward("tiny-tldr"), reference=sft[0],
                                 num_quantiles=K, do_sample=not greedy, temperature=0.7, top_p=0.9,
                                 max_new_tokens=12, seed=5)
    pd.testing.assert_frame_equal(table.drop(columns="prompt_id"), expected.drop(columns="prompt_id"))
    caption = _table(comparer.output.value)["caption"]
    assert ("Greedy decoding" in caption) is greedy
    if not greedy:
        assert "temperature 0.7, top-p 0.9, seed 5" in caption and "0.9000" not in caption
        assert "T=0.7, top-p=0.9, seed 5" in comparer.status.value
    else:
        assert "(greedy)" in comparer.status.value
    # a value outside a slider's usual range widens the range instead of being clipped
    wide = TokenComparer(policy, tokenizer, ql.load_reward("tiny-tldr"), prompts, max_new_tokens=300, temperature=2.5)
    assert (wide.max_new_tokens.value, wide.temperature.value) == (300, 2.5)
    with pytest.raises(ql.QuarkError, match="greedy"):
        TokenComparer(policy, tokenizer, ql.load_reward("tiny-tldr"), prompts, greedy="yes")


def test_comparison_table_reads_well_in_jupyterlab(comparer):
    comparer.greedy.value = False
    comparer.top_p.value = 0.1 * 9
    df = comparer.regenerate()
    long_word = "x" * 300  # one unbreakable word: it must wrap inside its cell, not widen the table
    df = df.assign(completion=[long_word] + df["completion"].tolist()[1:])
    df.attrs = comparer.last.attrs
    for page in (comparer.output.value, comparison_html(df)):
        t = _table(page)
        # K token columns plus the reference, after the prompt
        assert t["heads"] == ["prompt"] + [f"token {k}" for k in range(K)] + ["reference"]
        assert len(t["rows"]) == 1 and [c for c, _ in t["rows"][0]] == [["prompt"]] + [["completion"]] * (K + 1)
        # the table fits the output area: fixed layout, 100% wide, one <col> per column summing to 100%
        rule = re.search(r"\.quarklab-compare-wrap \.quarklab-compare \{([^}]*)\}", page).group(1)
        assert "table-layout: fixed" in rule and "width: 100%" in rule
        widths = [float(re.search(r"width:([\d.]+)%", c["style"]).group(1)) for c in t["table"].select("colgroup col")]
        assert len(widths) == K + 2 and sum(widths) == pytest.approx(100, abs=0.1)
        # prose is left-aligned and wraps, even under JupyterLab's right-aligning table rules
        for classes in ("jp-OutputArea-output jp-RenderedHTMLCommon jp-RenderedHTML", "jupyter-widget-html-content"):
            align = _computed(page, classes, "text-align")
            wrap = _computed(page, classes, "white-space")
            breaks = _computed(page, classes, "overflow-wrap")
            for el in t["soup"].find_all("td"):
                el = next(e for e in align if e.get_text() == el.get_text() and e.get("class") == el.get("class"))
                assert align[el] == "left", (classes, el.get("class"))
                assert wrap[el] == "pre-wrap" and breaks[el] == "anywhere"
        # the reward · ppl · tokens line wraps between its parts, never inside one
        for _, td in t["rows"][0][1:]:
            meta = td.find(class_="meta")
            parts = [p.get_text() for p in meta.find_all(class_="part")]
            assert parts[0].startswith("reward\u00a0") and parts[1].startswith("ppl\u00a0") and parts[2].endswith("\u00a0tok")
            assert meta.get_text().replace("\u00a0· ", " | ") == " | ".join(parts)  # the only breakable spaces
            assert " " not in "".join(parts)
        assert re.search(r"\.meta \{[^}]*white-space: normal", page)
        # numbers for people: at most 3 significant digits in cells and caption
        shown = _numbers(t["caption"]) + [n for _, td in t["rows"][0][1:] for n in _numbers(td.find(class_="meta").get_text())]
        assert shown and all(len(n.lstrip("-").replace(".", "").lstrip("0")) <= 3 for n in shown), shown
        assert "top-p 0.9," in t["caption"]
    assert long_word in comparison_html(df)
    assert comparer.output.layout.width == "100%" and comparer.widget.layout.width == "100%"


# ---------------------------------------------------------------------------- the explorer follows its controls

@pytest.fixture()
def pool():
    """32 prompts x 16 samples, as notebook 01 draws them."""
    rng = np.random.default_rng(3)
    pid = np.repeat(np.arange(32), 16)
    return pd.DataFrame({"prompt_id": pid, "reward": rng.normal(size=32)[pid] + rng.normal(size=len(pid)),
                         "num_tokens": rng.integers(3, 48, size=len(pid))})


def _png_size(png: bytes) -> tuple[int, int]:
    height, width = matplotlib.image.imread(io.BytesIO(png)).shape[:2]
    return height, width


def test_explorer_figure_follows_scope_and_k(pool):
    explorer = QuantileExplorer(pool, num_quantiles=5, scope="local", reward_label="tiny-tldr")
    scopes = lambda: {ax.get_gid().split("/")[0] for ax in explorer.figure.axes if ax.get_gid()}  # noqa: E731
    assert scopes() == {"local"} and explorer.figure.get_suptitle().startswith("Local quantiles, K = 5")
    local_png = explorer.image.value
    explorer.scope.value = "global"  # same K, other scope: another figure
    assert scopes() == {"global"} and explorer.figure.get_suptitle().startswith("Global quantiles, K = 5")
    assert explorer.image.value != local_png
    heat = [ax for ax in explorer.figure.axes if ax.get_gid() == "global/heatmap"][0]
    counts = np.asarray(heat.images[0].get_array())
    prompts = [int(t.get_text()) for t in heat.get_xticklabels()]
    assert counts.shape == (5, 32) and sorted(prompts) == list(range(32))  # every prompt shown
    q = assign_quantiles(pool["reward"].to_numpy(), 5)
    assert [list(counts[:, i]) for i in range(32)] == \
        [[int(((pool["prompt_id"] == p) & (q == j)).sum()) for j in range(5)] for p in prompts]
    explorer.k.value = 3
    assert explorer.figure.get_suptitle().startswith("Global quantiles, K = 3")
    # the axes name the reward actually used, as does the summary
    reward_axes = [ax for ax in explorer.figure.axes if ax.get_gid() == "global/reward"][0]
    assert reward_axes.get_ylabel() == "reward (tiny-tldr)"
    assert "mean reward (tiny-tldr)" in explorer.summary.value
    # it fits a laptop screen at the notebook's dpi (96 in the Image widget)
    height, width = _png_size(explorer.image.value)
    assert height <= 900 and width <= 1300, (height, width)


def test_explorer_local_title_says_how_prompts_split(pool):
    explorer = QuantileExplorer(pool, num_quantiles=5, scope="local")
    heat = [ax for ax in explorer.figure.axes if ax.get_gid() == "local/heatmap"][0]
    counts = np.asarray(heat.images[0].get_array())
    assert (counts[:4] == 3).all() and (counts[4] == 4).all()  # 16 = 4 x 3 + 4: the last takes the remainder
    assert "3 per quantile, quantile 4 takes the remainder: 4" in heat.get_title()
    assert "evenly" not in heat.get_title()
    explorer.k.value = 4  # 16 = 4 x 4
    heat = [ax for ax in explorer.figure.axes if ax.get_gid() == "local/heatmap"][0]
    assert (np.asarray(heat.images[0].get_array()) == 4).all() and "split evenly: 4 per quantile" in heat.get_title()


def test_explorer_says_when_not_every_prompt_is_shown():
    rng = np.random.default_rng(0)
    pid = np.repeat(np.arange(70), 4)
    many = pd.DataFrame({"prompt_id": pid, "reward": rng.normal(size=len(pid)), "num_tokens": 10})
    explorer = QuantileExplorer(many, num_quantiles=2, scope="global")
    heat = [ax for ax in explorer.figure.axes if ax.get_gid() == "global/heatmap"][0]
    assert len(heat.get_xticklabels()) == 64 and "64 of 70 prompts shown" in heat.get_title()
    assert _png_size(explorer.image.value)[0] <= 900
