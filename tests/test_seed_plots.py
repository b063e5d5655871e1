"""quarklab.present.seed_plots: 02's curves over seeds, a mean and a t-interval band per token, from real runs under
seeds 0, 1, 2."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

from quarklab import seeds  # noqa: E402
from quarklab.present import seed_plots  # noqa: E402


def test_the_band_figure_draws_a_mean_and_a_band_per_token(tiny_seed_runs):
    fig = seed_plots.seed_iteration_curves(seeds.seed_curves(tiny_seed_runs), reward_name="tiny-tldr score")
    assert "mean of 3 seeds" in fig.title() and "t(0.975, n−1)·s/√n" in fig.title()
    axes = {ax.get_gid(): ax for ax in fig.axes}
    assert set(axes) == {"reward", "kl", "perplexity", "length", "loss", "control"}
    reward = axes["reward"]
    labels = reward.get_legend_handles_labels()[1]
    assert labels == ["reference (SFT)", "token 0", "token 1", "token 2", "no token"]
    bands = [c for c in reward.collections if c.get_gid() == "seed_band"]
    assert len(bands) >= 4  # one per token (and the reference's, where the seeds' references differ)
    assert fig.png()[:8] == b"\x89PNG\r\n\x1a\n"
