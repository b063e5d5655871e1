"""quarklab.present.iteration_grid: the one 2x3 grid over Quark iterations that a run's figure (run_plots) and a
group of seed runs' figure (seed_plots) both fill, so that the two read alike panel for panel."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import pytest  # noqa: E402
from matplotlib.colors import to_hex  # noqa: E402
from matplotlib.container import ErrorbarContainer  # noqa: E402

from quarklab import files, seeds  # noqa: E402
from quarklab.config import preset  # noqa: E402
from quarklab.present import figures, iteration_grid, run_plots, seed_plots  # noqa: E402
from tables import make_metrics  # noqa: E402

GIDS = ["reward", "kl", "perplexity", "length", "loss", "control"]


def frame(ax) -> tuple:
    """What the grid sets on a panel: gid, title, axis labels, x range and tick rule."""
    locator = ax.xaxis.get_major_locator()
    return (ax.get_gid(), ax.get_title(), ax.get_xlabel(), ax.get_ylabel(), tuple(ax.get_xlim()),
            type(locator).__name__, locator._integer)


def test_the_grid_frames_six_panels_over_the_iterations():
    fig, axes = iteration_grid.iteration_grid([0, 1, 2, 3], reward_name="toy RM")
    assert isinstance(fig, figures.QuarkFigure) and tuple(fig.get_size_inches()) == (17, 9.5)
    assert list(axes) == GIDS and [ax.get_gid() for ax in fig.axes] == GIDS  # row by row
    assert axes["reward"].get_ylabel() == "greedy reward (toy RM)"
    assert axes["kl"].get_ylabel() == figures.KL_LABEL and axes["length"].get_ylabel() == figures.LENGTH_LABEL
    for ax in axes.values():
        assert ax.get_xlabel() == figures.ITERATION_LABEL and ax.get_xlim() == (-0.25, 3.25)
        assert not ax.lines and not ax.collections  # framed only: the callers draw
    assert axes["control"].get_ylim() == pytest.approx((-1.05, 1.05))
    _, before_training = iteration_grid.iteration_grid([0])
    assert before_training["reward"].get_xlim() == (-0.25, 1.25)  # at least up to iteration 1


def test_token_styles_and_colours():
    colors = iteration_grid.token_colors([2, None, 0, 1, 0])
    assert list(colors) == [0, 1, 2] and list(colors.values()) == figures.palette(3)
    assert iteration_grid.token_style(1, colors) == (colors[1], "token 1", {"marker": "o", "markersize": 4})
    assert iteration_grid.token_style(None, colors) == (figures.NONE_COLOR, "no token",
                                                        {"linestyle": "--", "marker": "x"})


def styles(ax) -> list[tuple]:
    """(colour, line style, marker) of each legend entry's line (an error bar's: its data line)."""
    lines = [h[0] if isinstance(h, ErrorbarContainer) else h for h in ax.get_legend_handles_labels()[0]]
    return [(to_hex(ln.get_color()), ln.get_linestyle(), ln.get_marker()) for ln in lines]


def seed_run(path, seed: int):
    files.atomic_write_json(path / "config.json", preset("tiny").replace(seed=seed, num_quantiles=3).to_dict())
    make_metrics(path, 3, iterations=2)
    return path


def test_a_run_and_its_seeds_fill_the_same_grid(tmp_path):
    dirs = [seed_run(tmp_path / f"seed{s}", s) for s in (0, 1)]
    one = run_plots.iteration_curves(make_metrics(tmp_path / "run", 3, iterations=2), reward_name="toy RM")
    mean = seed_plots.seed_iteration_curves(seeds.seed_curves(dirs), reward_name="toy RM")
    assert [frame(ax) for ax in one.axes] == [frame(ax) for ax in mean.axes]
    for a, b in zip(one.axes, mean.axes):
        assert a.get_ylim() == b.get_ylim() or a.get_gid() != "control"
        if a.get_gid() in ("reward", "perplexity", "length"):  # the same token lines, named and styled alike
            assert a.get_legend_handles_labels()[1] == b.get_legend_handles_labels()[1] == \
                ["reference (SFT)", "token 0", "token 1", "token 2", "no token"]
            assert styles(a) == styles(b)
