"""quarklab.present.run_plots: 02's iteration curves for any K, and 04's trade-off figure from a real tiny-world Quark
run: measured points only on axes scaled to them, labels that do not collide, the model card's quoted rows in a table
of their own, axes named after the run's reward."""

from __future__ import annotations

import ast
import itertools
import json
import shutil

import matplotlib

matplotlib.use("Agg")

import matplotlib.image  # noqa: E402
import nbformat  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: E402
from matplotlib.text import Text  # noqa: E402

from quarklab import analysis, files, runs  # noqa: E402
from quarklab.errors import QuarkError  # noqa: E402
from quarklab.notebooks import notebooks_dir  # noqa: E402
from quarklab.present import figures, run_plots  # noqa: E402
from tables import check_readable, legend_texts, make_metrics, panel  # noqa: E402


def quoted_rows() -> list[dict]:
    """The model card's figures where quarklab keeps them: notebook 04's ``quoted_rows`` parameter."""
    book = nbformat.read(notebooks_dir() / "04_tradeoffs.ipynb", as_version=4)
    (cell,) = [c for c in book.cells if "parameters" in c.metadata.get("tags", [])]
    (node,) = [n for n in ast.parse(cell.source).body
               if isinstance(n, ast.AnnAssign) and n.target.id == "quoted_rows"]  # papermill-typed: name: type = value
    return ast.literal_eval(node.value)


@pytest.fixture(scope="module")
def drawn(tiny_run):
    points = analysis.tradeoff_points(runs.read_metrics(tiny_run), quoted=quoted_rows())
    fig = run_plots.tradeoff_scatter(points, reward_name=analysis.run_reward_name(tiny_run))
    return points, fig


def label_boxes(fig, dpi):
    """The window extents of every point label's text (its leader line left out), from the Agg renderer after a
    real draw at ``dpi``."""
    fig.set_dpi(dpi)
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    renderer = canvas.get_renderer()
    return {gid: [Text.get_window_extent(t, renderer) for t in panel(fig, gid).texts if t.get_gid() == "point_label"]
            for gid in ("perplexity", "length")}


def test_the_quoted_card_holds_the_alt_figures():
    card = {r["label"]: (r["reward"], r["perplexity"], r["length"]) for r in quoted_rows()}
    assert card["SFT (ALT card)"] == (2.89, 1.96, 31.25)
    assert card["PPO (ALT card)"] == (3.38, 2.29, 67.52)
    assert card["Quark (ALT card)"] == (3.52, 1.82, 49.42)


def test_measured_axes_hold_measured_points_only(drawn):
    points, fig = drawn
    measured, quoted = points[~points["quoted"]], points[points["quoted"]]
    assert len(measured) == 1 + 2 * 4 and len(quoted) == 5  # SFT + 2 iterations x (3 tokens + none)
    for x in ("perplexity", "length"):
        ax = panel(fig, x)
        offsets = np.concatenate([c.get_offsets() for c in ax.collections if c.get_gid() != "pareto_ring"])
        assert sorted(map(tuple, offsets.round(9))) == sorted(map(tuple, measured[[x, "reward"]].to_numpy().round(9)))
        (x0, x1), (y0, y1) = ax.get_xlim(), ax.get_ylim()
        assert x0 <= measured[x].min() and measured[x].max() <= x1 and y0 <= measured["reward"].min()
        assert measured["reward"].max() <= y1
        for _, q in quoted.iterrows():  # no quoted point falls inside the measured axes' box
            assert not (x0 <= q[x] <= x1 and y0 <= q["reward"] <= y1), (x, q["label"])
        span = measured[x].max() - measured[x].min()
        assert x1 - x0 < 1.5 * span + 1e-9  # scaled to the measured points, not stretched towards the quoted
        front = analysis.pareto_front(points, x)
        (line,) = [ln for ln in ax.lines if ln.get_gid() == "pareto_front"]
        assert sorted(line.get_xdata()) == list(line.get_xdata()) == sorted(points.loc[front, x])
        (ring,) = [c for c in ax.collections if c.get_gid() == "pareto_ring"]
        assert len(ring.get_offsets()) == front.sum() >= 1
        assert not any(q["label"] in t.get_text() for t in ax.texts for _, q in quoted.iterrows())


def test_quoted_numbers_sit_in_a_captioned_table_of_their_own(drawn):
    points, fig = drawn
    ax = panel(fig, "quoted_table")
    (table,) = ax.tables
    cells = {(r, c): cell.get_text().get_text() for (r, c), cell in table.get_celld().items()}
    rows = [[cells[(r, c)] for c in range(4)] for r in range(1, 1 + len(quoted_rows()))]
    assert [cells[(0, c)] for c in range(4)] == ["model (quoted)", "RM", "PPL", "Avg. len"]
    assert ["SFT (ALT card)", "2.89", "1.96", "31.25"] in rows
    assert ["PPO (ALT card)", "3.38", "2.29", "67.52"] in rows
    assert ["Quark (ALT card)", "3.52", "1.82", "49.42"] in rows
    caption = " ".join(ax.get_title().split())
    assert "CarperAI's reward model" in caption and "real TL;DR" in caption and "ALT-Quark model card" in caption
    assert "not comparable" in caption


def test_no_two_point_labels_overlap(drawn):
    points, fig = drawn
    for dpi in (100, 120):  # on screen and as saved
        for gid, boxes in label_boxes(fig, dpi).items():
            assert len(boxes) == (~points["quoted"]).sum(), gid  # every measured point labelled
            frame = panel(fig, gid).get_window_extent()
            for a, b in itertools.combinations(boxes, 2):
                assert not a.overlaps(b), (gid, dpi, a, b)
            for box in boxes:
                assert frame.x0 <= box.x0 and box.x1 <= frame.x1 and frame.y0 <= box.y0 and box.y1 <= frame.y1


def test_labels_stay_apart_in_a_crowded_figure(tmp_path):
    """7 tokens x 6 iterations (49 points a panel), then the same points piled into a tiny cluster: no label
    overlaps another; the grid keeps every label, the pile as many as fit around it."""
    points = analysis.tradeoff_points(make_metrics(tmp_path, 7, iterations=6))
    rng = np.random.default_rng(0)
    n = len(points)
    pile = points.assign(reward=3.3 + rng.normal(0, 1e-3, n), perplexity=1.3 + rng.normal(0, 1e-4, n),
                         length=20 + rng.normal(0, 1e-2, n))
    pile.loc[0, ["reward", "perplexity", "length"]] = [2.0, 1.0, 5.0]  # one far point, so the pile is small
    for pts, least in ((points, len(points)), (pile, 5)):
        for gid, boxes in label_boxes(run_plots.tradeoff_scatter(pts), 100).items():
            assert least <= len(boxes) <= len(pts), gid
            for a, b in itertools.combinations(boxes, 2):
                assert not a.overlaps(b), (gid, a, b)


def test_axes_are_named_after_the_runs_reward(tiny_run, tmp_path):
    points = analysis.tradeoff_points(runs.read_metrics(tiny_run))
    assert json.loads((tiny_run / "config.json").read_text())["reward"] == "tiny-tldr"
    fig = run_plots.tradeoff_scatter(points, reward_name=analysis.run_reward_name(tiny_run))
    for gid in ("perplexity", "length"):
        assert panel(fig, gid).get_ylabel() == "reward (tiny-tldr score)"
    assert panel(fig, "perplexity").get_xlabel() == figures.PERPLEXITY_LABEL
    assert panel(fig, "length").get_xlabel() == "length (tokens)"
    # the same run's files, its config naming another reward: the axes follow config.json
    other = tmp_path / "other"
    shutil.copytree(tiny_run, other, ignore=shutil.ignore_patterns("checkpoints", "pool"))
    config = json.loads((other / "config.json").read_text())
    files.atomic_write_json(other / "config.json",
                           {**config, "reward": "CarperAI/openai_summarize_tldr_rm_checkpoint/pytorch_model.bin"})
    fig = run_plots.tradeoff_scatter(points, reward_name=analysis.run_reward_name(other))
    assert panel(fig, "length").get_ylabel() == "reward (CarperAI/openai_summarize_tldr_rm_checkpoint score)"
    assert "tiny-tldr" not in fig.get_suptitle()
    with pytest.raises(QuarkError, match="different rewards"):
        analysis.run_reward_name(tiny_run, other)


def test_several_runs_share_the_axes_with_a_marker_each(tiny_run, tmp_path):
    other = analysis.tradeoff_points(make_metrics(tmp_path, 3, iterations=1), label_prefix="K=3: ")
    points = pd.concat([analysis.tradeoff_points(runs.read_metrics(tiny_run)), other], ignore_index=True)
    fig = run_plots.tradeoff_scatter(points)
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    assert {"run: this run", "run: K=3", "Pareto front", "SFT reference", "token 0", "no token"} <= set(legend)
    ax = panel(fig, "perplexity")
    shapes = {c.get_paths()[0].vertices.shape for c in ax.collections if c.get_gid() != "pareto_ring"}
    assert len(shapes) == 2  # one marker per run
    assert "quoted_table" not in [a.get_gid() for a in fig.axes]  # nothing quoted: no table
    with pytest.raises(QuarkError, match="no measured point"):
        run_plots.tradeoff_scatter(analysis.tradeoff_points(runs.read_metrics(tiny_run), quoted=quoted_rows())
                                   .query("quoted"))


def test_the_figure_saves_into_the_run_dir(drawn, tiny_run):
    _, fig = drawn
    path = figures.save_figure(fig, tiny_run, "04_tradeoffs")
    assert path == tiny_run / "figures" / "04_tradeoffs.png"
    image = matplotlib.image.imread(path)
    assert image.ndim == 3 and image.shape[1] > image.shape[0] > 600  # wider than tall, paper size at dpi 120
    assert fig.get_suptitle().startswith("Reward trade-offs of 9 measured points")


# ---------------------------------------------------------------------------- iteration curves

@pytest.mark.parametrize("k", [3, 5])
def test_iteration_curves_any_k(tmp_path, k):
    metrics = make_metrics(tmp_path, k)
    assert metrics["token"].dtype == "Int64"  # the one form: "none" (as older runs wrote it) read as <NA>
    fig = run_plots.iteration_curves(metrics)
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
    only_ref = metrics5[metrics5["iteration"] == 0]
    only_ref = only_ref.loc[:, only_ref.notna().any() | (only_ref.columns == "token")]  # its token: all <NA>
    fig = run_plots.iteration_curves(only_ref)
    check_readable(fig, 6)
    for gid in ("kl", "loss", "control", "reward"):
        assert "no training yet" in [t.get_text() for t in panel(fig, gid).texts]
    ref = [ln for ln in panel(fig, "reward").lines if ln.get_label() == "reference (SFT)"]
    assert ref and ref[0].get_ydata()[0] == pytest.approx(3.3)
    with pytest.raises(QuarkError):
        run_plots.iteration_curves(pd.DataFrame())


# trade-offs: tests/test_run_plots.py
