"""quarklab.present.figures: the palette, saving a figure atomically, reward labels with units."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.image  # noqa: E402
import pytest  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from quarklab.errors import QuarkError  # noqa: E402
from quarklab.present import figures, quantile_plots  # noqa: E402


def test_palette_is_the_colorblind_palette():
    import seaborn as sns

    assert figures.palette(5) == list(sns.color_palette("colorblind", 5))
    assert figures.palette(0) == []
    with pytest.raises(QuarkError):
        figures.palette(-1)


def test_save_figure_writes_a_png_atomically_and_overwrites(tmp_path, samples):
    path = figures.save_figure(quantile_plots.reward_distribution(samples), tmp_path, "rewards")
    assert path == tmp_path / "figures" / "rewards.png"
    first = path.read_bytes()
    assert first[:8] == b"\x89PNG\r\n\x1a\n"
    assert matplotlib.image.imread(path).ndim == 3  # decodes as an image

    again = figures.save_figure(quantile_plots.k_and_n_effect(samples, ks=(2, 3)), tmp_path, "rewards.png")
    assert again == path
    assert path.read_bytes() != first and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in (tmp_path / "figures").iterdir()) == ["rewards.png"]  # no temp file left

    for bad in ("", "../escape", "sub/name", ".hidden"):
        with pytest.raises(QuarkError):
            figures.save_figure(Figure(), tmp_path, bad)


def test_reward_label_units():
    assert figures.reward_label() == "reward (tiny-tldr score)"
    assert figures.reward_label("OpenAssistant RM") == "reward (OpenAssistant RM)"
    assert figures.reward_label("RM score (logit)") == "RM score (logit)"


# ---------------------------------------------------------------------------- samples figures

