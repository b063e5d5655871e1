"""Argument checks shared by every layer: one wording for one kind of mistake."""

from __future__ import annotations

import numbers

from .errors import QuarkError


def check_int(value, name: str, minimum: int | None = None, maximum: int | None = None) -> int:
    """``value`` as an int (a bool is not one), within ``[minimum, maximum]`` where given; else one QuarkError
    naming ``name`` and the rule."""
    ok = isinstance(value, numbers.Integral) and not isinstance(value, bool)
    if ok and (minimum is None or value >= minimum) and (maximum is None or value <= maximum):
        return int(value)
    if minimum is not None and maximum is not None:
        rule = f"an integer from {minimum} to {maximum}"
    elif minimum is not None:
        rule = f"an integer >= {minimum}"
    elif maximum is not None:
        rule = f"an integer <= {maximum}"
    else:
        rule = "an integer"
    raise QuarkError(f"{name} must be {rule}, got {value!r}")


def check_num_quantiles(num_quantiles) -> int:
    """The number of quantile tokens K: an int >= 1."""
    return check_int(num_quantiles, "num_quantiles", 1)


def check_int_list(values, what: str, minimum: int) -> list[int]:
    """``values`` as a sorted list of distinct ints >= ``minimum`` (at least one)."""
    try:
        items = list(values)
    except TypeError:
        raise QuarkError(f"{what} must be a sequence of ints, got {values!r}") from None
    if not items:
        raise QuarkError(f"{what} must hold at least one value")
    for v in items:
        if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < minimum:
            raise QuarkError(f"{what} must hold ints >= {minimum}, got {v!r}")
    return sorted(set(int(v) for v in items))
