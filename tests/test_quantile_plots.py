"""quarklab.present.quantile_plots: reward distributions, quantiles global vs local, the effect of K and n."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.image  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402

from quarklab import analysis  # noqa: E402
from quarklab.errors import QuarkError  # noqa: E402
from quarklab.present import quantile_plots  # noqa: E402
from quarklab.quantiles import assign_quantiles, quantile_thresholds  # noqa: E402
from tables import N_PROMPTS, N_SAMPLES, check_readable, count_assignments, legend_texts, panel, panels  # noqa: E402


def test_reward_distribution(samples):
    fig = quantile_plots.reward_distribution(samples, reward_name="toy RM")
    check_readable(fig, 2)
    hist = panel(fig, "histogram")
    assert sum(p.get_height() for p in hist.patches) == len(samples)  # every sample counted once
    assert hist.get_xlabel() == "reward (toy RM)"
    per_prompt = panel(fig, "per_prompt")
    shown = [int(t.get_text()) for t in per_prompt.get_xticklabels()]
    medians = samples.groupby("prompt_id")["reward"].median()
    assert sorted(shown) == sorted(medians.index)
    assert list(medians[shown]) == sorted(medians)  # sorted by median


def test_reward_distribution_shows_every_prompt_up_to_64():
    rng = np.random.default_rng(1)
    some = pd.DataFrame({"prompt_id": np.repeat(np.arange(50), 3), "reward": rng.normal(size=150)})
    ax = panel(quantile_plots.reward_distribution(some), "per_prompt")
    assert len(ax.get_xticklabels()) == 50 and "shown" not in ax.get_xlabel()
    many = pd.DataFrame({"prompt_id": np.repeat(np.arange(80), 3), "reward": rng.normal(size=240)})
    ax = panel(quantile_plots.reward_distribution(many), "per_prompt")
    assert len(ax.get_xticklabels()) == 64 and "64 of 80 shown" in ax.get_xlabel()


def test_quantile_comparison_global_vs_local(samples):
    k = 4
    fig = quantile_plots.quantile_comparison(samples, k)
    check_readable(fig, 6)
    r, pid = samples["reward"].to_numpy(), samples["prompt_id"].to_numpy()

    # heatmaps: rows = quantiles, columns = every prompt (12 here)
    local = np.asarray(panel(fig, "local/heatmap").images[0].get_array())
    glob = np.asarray(panel(fig, "global/heatmap").images[0].get_array())
    assert local.shape == glob.shape == (k, N_PROMPTS)
    assert (local == N_SAMPLES // k).all()  # every prompt spreads its samples evenly: uniform by construction
    assert "split evenly: 4 per quantile" in panel(fig, "local/heatmap").get_title()
    assert (glob.sum(axis=0) == N_SAMPLES).all()
    assert len({tuple(col) for col in glob.T}) > 1  # global: prompts differ
    # the heatmap holds the real assignment: columns follow the x tick labels
    prompts = [int(t.get_text()) for t in panel(fig, "global/heatmap").get_xticklabels()]
    q = assign_quantiles(r, k)
    for col, p in zip(glob.T, prompts):
        assert list(col) == [int(((pid == p) & (q == j)).sum()) for j in range(k)]
    # it draws analysis.prompt_quantile_counts, in its order (best prompt on the left)
    for scope, drawn in (("global", glob), ("local", local)):
        table = analysis.prompt_quantile_counts(samples, k, scope)
        assert prompts == list(table.index)
        assert (drawn.T == table.to_numpy()).all()
    # and the annotated numbers are those counts
    texts = [int(t.get_text()) for t in panel(fig, "global/heatmap").texts]
    assert texts == [int(v) for v in glob.ravel()]

    thresholds = [ln.get_ydata()[0] for ln in panel(fig, "global/reward").lines if ln.get_gid() == "threshold"]
    assert thresholds == pytest.approx(quantile_thresholds(r, q, k)[: k - 1])
    assert not [ln for ln in panel(fig, "local/reward").lines if ln.get_gid() == "threshold"]
    assert "threshold (min reward of quantile)" in legend_texts(panel(fig, "global/reward"))
    assert panel(fig, "global/length").get_ylabel() == "length (tokens)"


def test_quantile_comparison_one_scope_fits_a_screen(samples):
    for scope in ("global", "local"):
        fig = quantile_plots.quantile_comparison(samples, 5, scope=scope, reward_name="toy RM")
        check_readable(fig, 3)
        assert {ax.get_gid() for ax in panels(fig)} == {f"{scope}/reward", f"{scope}/length", f"{scope}/heatmap"}
        assert fig.get_suptitle().startswith(f"{scope.capitalize()} quantiles, K = 5")
        assert panel(fig, f"{scope}/reward").get_ylabel() == "reward (toy RM)"
    # 16 samples in 5 local quantiles: 3 each, the last takes the remainder, and the title says so
    local = np.asarray(panel(fig, "local/heatmap").images[0].get_array())
    assert (local[:4] == 3).all() and (local[4] == 4).all()
    assert "3 per quantile, quantile 4 takes the remainder: 4" in panel(fig, "local/heatmap").get_title()
    # every size of pool: at most 9 inches tall (about 900 px at 100 dpi)
    for k in (2, 5, 10):
        for scope in (None, "local"):
            assert quantile_plots.quantile_comparison(samples, k, scope=scope).get_size_inches()[1] <= 9.0


def test_quantile_comparison_assigns_once_per_scope(samples, monkeypatch):
    calls = count_assignments(monkeypatch)
    quantile_plots.quantile_comparison(samples, 4)
    assert calls == [4, 4]  # global, local: once each
    calls.clear()
    fig = quantile_plots.quantile_comparison(samples, 4, scope="local")
    assert calls == [4]
    calls.clear()
    q = assign_quantiles(samples["reward"].to_numpy(), 4, samples["prompt_id"].to_numpy())
    calls.clear()
    given = quantile_plots.quantile_comparison(samples, 4, scope="local", quantiles=q)
    assert calls == []  # an assignment made elsewhere is drawn as it is
    assert given.png() == fig.png()
    with pytest.raises(QuarkError, match="pass that scope"):
        quantile_plots.quantile_comparison(samples, 4, quantiles=q)
    with pytest.raises(QuarkError, match="quantiles must be"):
        quantile_plots.quantile_comparison(samples, 4, scope="local", quantiles=q[:-1])


def test_quantile_comparison_rejects_bad_input(samples):
    with pytest.raises(QuarkError):
        quantile_plots.quantile_comparison(samples, 0)
    with pytest.raises(QuarkError, match="scope"):
        quantile_plots.quantile_comparison(samples, 3, scope="pool")
    with pytest.raises(QuarkError, match="num_tokens"):
        quantile_plots.quantile_comparison(samples.drop(columns="num_tokens"), 3)
    with pytest.raises(QuarkError, match="non-finite"):
        quantile_plots.quantile_comparison(samples.assign(reward=np.nan), 3)


def test_k_and_n_effect(samples):
    ks = (2, 3, 5, 7)
    fig = quantile_plots.k_and_n_effect(samples, ks=ks, seed=3)
    check_readable(fig, 2)
    contrast = panel(fig, "contrast")
    for scope in ("global", "local"):
        (line,) = [ln for ln in contrast.lines if ln.get_gid() == f"contrast/{scope}"]
        assert list(line.get_xdata()) == list(ks)
        assert (np.asarray(line.get_ydata()) > 0).all()  # the top quantile beats the bottom one
    # the global contrast for K=2 is the real top-half minus bottom-half mean
    r = samples["reward"].to_numpy()
    q = assign_quantiles(r, 2)
    (glob,) = [ln for ln in contrast.lines if ln.get_gid() == "contrast/global"]
    assert glob.get_ydata()[0] == pytest.approx(r[q == 0].mean() - r[q == 1].mean())

    best = panel(fig, "best_of_n")
    (top,) = [ln for ln in best.lines if ln.get_gid() == "n/top"]
    (bottom,) = [ln for ln in best.lines if ln.get_gid() == "n/bottom"]
    assert list(top.get_xdata()) == [2, 4, 8, 16]  # default ns: powers of two up to the 16 available
    assert (np.asarray(top.get_ydata()) > np.asarray(bottom.get_ydata())).all()
    assert len(best.get_legend().get_texts()) == 3

    # the lines are analysis' tables
    table = analysis.quantile_contrast(samples, ks).set_index(["scope", "K"])["contrast"]
    for scope in ("global", "local"):
        (line,) = [ln for ln in contrast.lines if ln.get_gid() == f"contrast/{scope}"]
        assert list(line.get_ydata()) == pytest.approx(list(table[scope]))
    table = analysis.best_of_n(samples, seed=3)
    assert list(top.get_ydata()) == pytest.approx(list(table["top"]))
    assert list(bottom.get_ydata()) == pytest.approx(list(table["bottom"]))

    again = panel(quantile_plots.k_and_n_effect(samples, ks=ks, seed=3), "best_of_n")
    assert [list(ln.get_ydata()) for ln in again.lines] == [list(ln.get_ydata()) for ln in best.lines]
    with pytest.raises(QuarkError, match="only 16"):
        quantile_plots.k_and_n_effect(samples, ns=[4, 32])


