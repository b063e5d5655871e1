"""The one error type quarklab raises for bad input."""


class QuarkError(ValueError):
    """Bad input or state: the message names the problem and what to do about it."""


def finite_1d(values, what: str):
    """``values`` as a finite 1-D float64 numpy array, or one QuarkError naming what is wrong with ``what``."""
    import numpy as np

    try:
        a = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise QuarkError(f"{what} is not a list of numbers: {exc}") from exc
    if a.ndim != 1:
        raise QuarkError(f"{what} must be 1-D (one value per row), got shape {a.shape}")
    bad = ~np.isfinite(a)
    if bad.any():
        first = int(np.flatnonzero(bad)[0])
        raise QuarkError(f"{what} holds {int(bad.sum())} non-finite values (NaN or inf); "
                         f"the first at row {first}: {a[first]}")
    return a
