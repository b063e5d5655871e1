"""The one error type quarklab raises for bad input."""


class QuarkError(ValueError):
    """Bad input or state: the message names the problem and what to do about it."""
