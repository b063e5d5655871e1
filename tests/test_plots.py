"""Figures: built from realistic samples and a real metrics.jsonl, checked by reading back what was drawn."""

from __future__ import annotations

import re

import matplotlib

matplotlib.use("Agg")

import matplotlib.image  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from quarklab import runs
from quarklab.present import plots  # noqa: E402
from quarklab.errors import QuarkError  # noqa: E402
from quarklab.metrics import pareto_mask  # noqa: E402
from quarklab.quantiles import assign_quantiles, quantile_thresholds  # noqa: E402

UNIT = re.compile(r"\(.+\)")
N_PROMPTS, N_SAMPLES = 12, 16


# ---------------------------------------------------------------------------- data

@pytest.fixture(scope="module")
def samples() -> pd.DataFrame:
    """12 prompts x 16 samples; reward = a per-prompt baseline + a length bonus + noise (as the tiny-tldr RM)."""
    rng = np.random.default_rng(0)
    offsets = rng.permutation(np.linspace(-1.5, 1.5, N_PROMPTS))
    rows = []
    for p in range(N_PROMPTS):
        prompt = f"SUBREDDIT: r/test\nTITLE: post {p}\nPOST: something happened {p}\nTL;DR:"
        for s in range(N_SAMPLES):
            n_tok = int(rng.integers(5, 40))
            finished = bool(n_tok < 38)
            rows.append({"prompt_id": 100 + p, "sample": s, "prompt": prompt, "token": None,
                         "completion": " ".join(["word"] * n_tok), "completion_ids": list(range(n_tok)),
                         "finished": finished, "num_tokens": n_tok,
                         "reward": 3.0 + offsets[p] + 0.03 * n_tok + rng.normal(0, 0.2)})
    return pd.DataFrame(rows)


def make_metrics(run_dir, k: int, iterations: int = 3) -> pd.DataFrame:
    """A run's metrics.jsonl written by the real writer and read back: iteration 0 (reference), then
    ``iterations`` iterations with tokens 0..k-1 + none (greedy), sampled rows (to be ignored), train rows."""
    runs.record_metrics(run_dir, [{"token": "none", "mode": "greedy", "n": 96, "reward": 3.3, "reward_std": 0.5,
                                   "perplexity": 1.24, "length": 13.0, "finished": 1.0, "dist1": 0.2, "dist2": 0.5,
                                   "dist3": 0.6, "model": "reference"}], 0, "eval")
    for it in range(1, iterations + 1):
        train = [{"step": s, "rows": 480, "nll": 0.3 - 0.01 * s, "entropy": 0.3, "kl": 0.02 * it + 0.001 * s,
                  "loss": 0.3, "lr": 1e-3} for s in range(5)]
        runs.record_metrics(run_dir, train, it, "train")
        evals = []
        for mode in ("greedy", "sampled"):
            for token in [*range(k), "none"]:
                t = k if token == "none" else token
                evals.append({"token": token, "mode": mode, "n": 96,
                              "reward": (3.3 + 0.2 * it - 0.1 * t) if mode == "greedy" else 100.0,
                              "reward_std": 0.4, "perplexity": 1.25 + 0.02 * it + 0.01 * t, "length": 13 + 3 * it - t,
                              "finished": 1.0, "dist1": 0.2, "dist2": 0.4, "dist3": 0.5, "model": "policy",
                              "controllability": -0.3, "order_spearman": -1.0})
        runs.record_metrics(run_dir, evals, it, "eval")
    return runs.read_metrics(run_dir)


@pytest.fixture(scope="module")
def metrics5(tmp_path_factory) -> pd.DataFrame:
    return make_metrics(tmp_path_factory.mktemp("run5"), 5)


# ---------------------------------------------------------------------------- helpers

def panels(fig: Figure) -> list:
    """The figure's plotting axes (colour bars left out: only panels carry a gid)."""
    return [ax for ax in fig.axes if ax.get_gid()]


def panel(fig: Figure, gid: str):
    (ax,) = [ax for ax in fig.axes if ax.get_gid() == gid]
    return ax


def check_readable(fig: Figure, n_panels: int) -> None:
    """Title, unit-bearing labels on both axes of every panel, a legend wherever several series are labelled."""
    assert isinstance(fig, Figure)
    assert fig.get_suptitle().strip()
    axes = panels(fig)
    assert len(axes) == n_panels
    for ax in axes:
        assert ax.get_title().strip(), ax.get_gid()
        assert UNIT.search(ax.get_xlabel()), (ax.get_gid(), ax.get_xlabel())
        assert UNIT.search(ax.get_ylabel()), (ax.get_gid(), ax.get_ylabel())
        handles, labels = ax.get_legend_handles_labels()
        if len(handles) > 1:
            assert ax.get_legend() is not None, ax.get_gid()


def legend_texts(ax) -> list[str]:
    return [t.get_text() for t in ax.get_legend().get_texts()]


# ---------------------------------------------------------------------------- basics

def test_palette_is_the_colorblind_palette():
    import seaborn as sns

    assert plots.palette(5) == list(sns.color_palette("colorblind", 5))
    assert plots.palette(0) == []
    with pytest.raises(QuarkError):
        plots.palette(-1)


def test_save_figure_writes_a_png_atomically_and_overwrites(tmp_path, samples):
    path = plots.save_figure(plots.reward_distribution(samples), tmp_path, "rewards")
    assert path == tmp_path / "figures" / "rewards.png"
    first = path.read_bytes()
    assert first[:8] == b"\x89PNG\r\n\x1a\n"
    assert matplotlib.image.imread(path).ndim == 3  # decodes as an image

    again = plots.save_figure(plots.k_and_n_effect(samples, ks=(2, 3)), tmp_path, "rewards.png")
    assert again == path
    assert path.read_bytes() != first and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in (tmp_path / "figures").iterdir()) == ["rewards.png"]  # no temp file left

    for bad in ("", "../escape", "sub/name", ".hidden"):
        with pytest.raises(QuarkError):
            plots.save_figure(Figure(), tmp_path, bad)


def test_reward_label_units():
    assert plots.reward_label() == "reward (tiny-tldr score)"
    assert plots.reward_label("OpenAssistant RM") == "reward (OpenAssistant RM)"
    assert plots.reward_label("RM score (logit)") == "RM score (logit)"


# ---------------------------------------------------------------------------- samples figures

def test_reward_distribution(samples):
    fig = plots.reward_distribution(samples, reward_name="toy RM")
    check_readable(fig, 2)
    hist = panel(fig, "histogram")
    assert sum(p.get_height() for p in hist.patches) == len(samples)  # every sample counted once
    assert hist.get_xlabel() == "reward (toy RM)"
    per_prompt = panel(fig, "per_prompt")
    shown = [int(t.get_text()) for t in per_prompt.get_xticklabels()]
    medians = samples.groupby("prompt_id")["reward"].median()
    assert sorted(shown) == sorted(medians.index)
    assert list(medians[shown]) == sorted(medians)  # sorted by median


def test_reward_distribution_caps_prompts_at_30():
    rng = np.random.default_rng(1)
    many = pd.DataFrame({"prompt_id": np.repeat(np.arange(50), 3), "reward": rng.normal(size=150)})
    shown = panel(plots.reward_distribution(many), "per_prompt").get_xticklabels()
    assert len(shown) == 30


def test_quantile_comparison_global_vs_local(samples):
    k = 4
    fig = plots.quantile_comparison(samples, k)
    check_readable(fig, 6)
    r, pid = samples["reward"].to_numpy(), samples["prompt_id"].to_numpy()

    local = panel(fig, "local/heatmap").images[0].get_array()
    glob = panel(fig, "global/heatmap").images[0].get_array()
    assert local.shape == glob.shape == (N_PROMPTS, k)
    assert (local == N_SAMPLES // k).all()  # every prompt spreads its samples evenly: uniform by construction
    assert (glob.sum(axis=1) == N_SAMPLES).all()
    assert len({tuple(row) for row in np.asarray(glob)}) > 1  # global: prompts differ
    # the heatmap holds the real assignment: rows follow the y tick labels
    prompts = [int(t.get_text()) for t in panel(fig, "global/heatmap").get_yticklabels()]
    q = assign_quantiles(r, k)
    for row, p in zip(np.asarray(glob), prompts):
        assert list(row) == [int(((pid == p) & (q == j)).sum()) for j in range(k)]
    # and the annotated numbers are those counts
    texts = [int(t.get_text()) for t in panel(fig, "global/heatmap").texts]
    assert texts == [int(v) for v in np.asarray(glob).ravel()]

    thresholds = [ln.get_ydata()[0] for ln in panel(fig, "global/reward").lines if ln.get_gid() == "threshold"]
    assert thresholds == pytest.approx(quantile_thresholds(r, q, k)[: k - 1])
    assert not [ln for ln in panel(fig, "local/reward").lines if ln.get_gid() == "threshold"]
    assert "threshold (min reward of quantile)" in legend_texts(panel(fig, "global/reward"))
    assert panel(fig, "global/length").get_ylabel() == "length (tokens)"


def test_quantile_comparison_rejects_bad_input(samples):
    with pytest.raises(QuarkError):
        plots.quantile_comparison(samples, 0)
    with pytest.raises(QuarkError, match="num_tokens"):
        plots.quantile_comparison(samples.drop(columns="num_tokens"), 3)
    with pytest.raises(QuarkError, match="non-finite"):
        plots.quantile_comparison(samples.assign(reward=np.nan), 3)


def test_k_and_n_effect(samples):
    ks = (2, 3, 5, 7)
    fig = plots.k_and_n_effect(samples, ks=ks, seed=3)
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

    again = panel(plots.k_and_n_effect(samples, ks=ks, seed=3), "best_of_n")
    assert [list(ln.get_ydata()) for ln in again.lines] == [list(ln.get_ydata()) for ln in best.lines]
    with pytest.raises(QuarkError, match="only 16"):
        plots.k_and_n_effect(samples, ns=[4, 32])


# ---------------------------------------------------------------------------- iteration curves

@pytest.mark.parametrize("k", [3, 5])
def test_iteration_curves_any_k(tmp_path, k):
    metrics = make_metrics(tmp_path, k)
    assert metrics["token"].dtype == object  # mixed "none" / ints, as read from JSON
    fig = plots.iteration_curves(metrics)
    check_readable(fig, 6)
    reward = panel(fig, "reward")
    labels = legend_texts(reward)
    assert labels == ["reference (SFT)", *[f"token {j}" for j in range(k)], "no token"]
    for line in reward.lines:
        if line.get_label().startswith("token"):
            j = int(line.get_label().split()[1])
            assert list(line.get_xdata()) == [1, 2, 3]
            assert list(line.get_ydata()) == pytest.approx([3.3 + 0.2 * it - 0.1 * j for it in (1, 2, 3)])
    ys = np.concatenate([np.asarray(ln.get_ydata(), float) for ln in reward.lines])
    assert ys.max() < 50  # sampled-mode rows (reward 100) are ignored
    assert [t.get_text() for t in reward.get_xticklabels() if t.get_text()] and all(
        float(x).is_integer() for x in reward.get_xticks())
    (kl,) = [ln for ln in panel(fig, "kl").lines if ln.get_label() == "mean over steps"]
    assert list(kl.get_ydata()) == pytest.approx([0.02 * it + 0.002 for it in (1, 2, 3)])
    assert panel(fig, "kl").get_ylabel() == "KL(policy||ref) (nats/token)"
    assert {"nll", "kl", "entropy"} <= set(legend_texts(panel(fig, "loss")))
    control = panel(fig, "control")
    assert control.get_ylim() == pytest.approx((-1.05, 1.05))
    assert any(ln.get_label().startswith("order_spearman") for ln in control.lines)


def test_iteration_curves_before_training(tmp_path, metrics5):
    only_ref = metrics5[metrics5["iteration"] == 0].dropna(axis=1, how="all")
    fig = plots.iteration_curves(only_ref)
    check_readable(fig, 6)
    for gid in ("kl", "loss", "control", "reward"):
        assert "no training yet" in [t.get_text() for t in panel(fig, gid).texts]
    ref = [ln for ln in panel(fig, "reward").lines if ln.get_label() == "reference (SFT)"]
    assert ref and ref[0].get_ydata()[0] == pytest.approx(3.3)
    with pytest.raises(QuarkError):
        plots.iteration_curves(pd.DataFrame())


# ---------------------------------------------------------------------------- trade-offs

QUOTED = [{"label": "ALT-Quark GPT-J", "reward": 99.0, "perplexity": 0.5, "length": 1.0}]  # dominates everything


def test_tradeoff_points(metrics5):
    pts = plots.tradeoff_points(metrics5, quoted=QUOTED, label_prefix="run A: ")
    assert list(pts.columns) == ["label", "group", "iteration", "token", "reward", "perplexity", "length", "quoted"]
    measured = pts[~pts["quoted"]]
    assert len(measured) == 1 + 3 * 6  # reference + 3 iterations x (5 tokens + none); sampled rows ignored
    assert measured["reward"].max() < 50
    assert measured.iloc[0]["label"] == "run A: SFT (reference)" and measured.iloc[0]["group"] == "reference"
    assert "run A: iter 3 · token 0" in set(pts["label"]) and "run A: iter 3 · no token" in set(pts["label"])
    assert set(measured["group"]) == {"reference", "no token", *[f"token {j}" for j in range(5)]}
    quoted = pts[pts["quoted"]]
    assert len(quoted) == 1 and quoted.iloc[0]["group"] == "quoted"
    assert pd.isna(quoted.iloc[0]["iteration"]) and pd.isna(quoted.iloc[0]["token"])

    # the Pareto front is over measured points only: the dominating quoted point removes none of them
    for x in ("perplexity", "length"):
        front = plots.pareto_front(pts, x)
        expected = pareto_mask(measured[["reward", x]].to_numpy(), [True, False])
        assert list(front[~pts["quoted"]]) == list(expected)
        assert not front[pts["quoted"]].any()
        assert front.sum() >= 1


def test_tradeoff_points_rejects_bad_quoted(metrics5):
    with pytest.raises(QuarkError, match="reward"):
        plots.tradeoff_points(metrics5, quoted=[{"label": "x", "perplexity": 1.0}])
    with pytest.raises(QuarkError):
        plots.tradeoff_points(metrics5, quoted=[{"label": "x", "reward": "high"}])


def test_tradeoff_scatter(metrics5, tmp_path):
    other = plots.tradeoff_points(make_metrics(tmp_path, 3, iterations=1), label_prefix="K=3: ")
    pts = pd.concat([plots.tradeoff_points(metrics5, quoted=QUOTED), other], ignore_index=True)
    fig = plots.tradeoff_scatter(pts)
    check_readable(fig, 2)
    assert "another" in fig.get_suptitle()  # the note about quoted figures
    for x in ("perplexity", "length"):
        ax = panel(fig, x)
        (quoted,) = [c for c in ax.collections if c.get_gid() == "quoted"]
        fc = quoted.get_facecolors()
        assert len(fc) == 0 or (np.asarray(fc)[:, 3] == 0).all()  # hollow
        assert quoted.get_offsets().tolist() == [[QUOTED[0][x], QUOTED[0]["reward"]]]
        assert "ALT-Quark GPT-J (quoted)" in [t.get_text() for t in ax.texts]
        assert {"quoted from model card", "Pareto front"} <= set(legend_texts(ax))
        (line,) = [ln for ln in ax.lines if ln.get_gid() == "pareto_front"]
        front = plots.pareto_front(pts, x)
        assert sorted(line.get_xdata()) == list(line.get_xdata())
        assert sorted(line.get_xdata()) == sorted(pts.loc[front, x])
    assert panel(fig, "perplexity").get_xlabel() == "perplexity (exp mean NLL, reference model)"


def test_model_card_table(metrics5):
    pts = plots.tradeoff_points(metrics5, quoted=[{"label": "card", "reward": 3.14159, "perplexity": 1.23456,
                                                   "length": 25.5551}])
    table = plots.model_card_table(pts)
    assert list(table.columns) == ["model", "RM", "PPL", "Avg. len", "source"]
    assert list(table["model"]) == list(pts["label"])
    last = table.iloc[-1]
    assert (last["RM"], last["PPL"], last["Avg. len"], last["source"]) == (3.14, 1.23, 25.56, "quoted")
    assert set(table["source"].iloc[:-1]) == {"measured"}
    assert (table[["RM", "PPL", "Avg. len"]].round(2) == table[["RM", "PPL", "Avg. len"]]).all().all()


def test_tradeoff_scatter_reward_only_quote(metrics5):
    pts = plots.tradeoff_points(metrics5, quoted=[{"label": "card", "reward": 3.8}])
    assert pts["quoted"].sum() == 1 and pd.isna(pts["perplexity"].iloc[-1])
    fig = plots.tradeoff_scatter(pts)
    for x in ("perplexity", "length"):
        ax = panel(fig, x)
        (level,) = [ln for ln in ax.lines if ln.get_gid() == "quoted_reward_only"]
        assert level.get_ydata()[0] == pytest.approx(3.8)
        assert f"card (quoted, no {x})" in [t.get_text() for t in ax.texts]
