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
from matplotlib.figure import Figure  # noqa: E402

import quarklab as ql  # noqa: E402
from quarklab.models import add_quantile_tokens  # noqa: E402
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
    assert f"{table['reward'][0]:.3f}" in explorer.summary.value
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
    assert heatmap.images[0].get_array().shape[1] == 3  # one column per quantile
    # what the user sees is the Image widget's picture: the last figure as a PNG, at the figure's size
    png = explorer.image.value
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and png != first_png and explorer.message.value == ""
    assert explorer.image.layout.display is None and explorer.image in explorer.widget.children
    height, width = matplotlib.image.imread(io.BytesIO(png)).shape[:2]
    fig_width, fig_height = explorer.figure.get_size_inches() * 96  # drawn at 96 dpi, tight box
    assert 0.8 * fig_width < width <= 1.05 * fig_width and 0.8 * fig_height < height <= 1.05 * fig_height


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
