"""quarklab.progress: text progress bars everywhere, Jupyter included (a widget bar that closes leaves "model not
found" errors in a reopened notebook)."""

from tqdm.std import tqdm as text_tqdm

from quarklab.progress import tqdm


def test_bars_are_tqdms_text_bars_not_widgets():
    assert tqdm is text_tqdm
