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


def first_line(text: str) -> str:
    """The first non-empty line of ``text``, stripped ("" when it has none)."""
    return next((line.strip() for line in str(text).splitlines() if line.strip()), "")


def describe(exc: BaseException) -> str:
    """``"TypeName: first line"`` of an exception, the first line being its message's first non-empty one (a
    message that opens with a newline, as some of vLLM's do, would otherwise read ``(RuntimeError: )``);
    just ``"TypeName"`` when the message has no text at all."""
    first = first_line(str(exc))
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__
