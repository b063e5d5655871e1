"""quarklab.checks: one wording for one kind of mistake, wherever an integer is checked."""

import numpy as np
import pytest

from quarklab.checks import check_int, check_int_list, check_num_quantiles
from quarklab.errors import QuarkError


def test_an_integer_in_range_comes_back_as_a_plain_int():
    assert check_int(np.int64(3), "n", 1) == 3 and type(check_int(np.int64(3), "n", 1)) is int
    assert check_int(0, "seed") == 0 and check_int(5, "k", 1, 5) == 5


@pytest.mark.parametrize("value, bounds, message", [
    (True, (1, None), "n must be an integer >= 1, got True"),  # a bool is not a count
    (2.0, (1, None), "n must be an integer >= 1, got 2.0"),
    (0, (1, None), "n must be an integer >= 1, got 0"),
    (7, (1, 5), "n must be an integer from 1 to 5, got 7"),
    (9, (None, 4), "n must be an integer <= 4, got 9"),
    ("3", (None, None), "n must be an integer, got '3'"),
])
def test_anything_else_is_one_error_naming_the_value_and_the_rule(value, bounds, message):
    with pytest.raises(QuarkError) as err:
        check_int(value, "n", *bounds)
    assert str(err.value) == message


def test_num_quantiles_and_int_lists():
    assert check_num_quantiles(5) == 5
    with pytest.raises(QuarkError, match=r"^num_quantiles must be an integer >= 1, got 0$"):
        check_num_quantiles(0)
    assert check_int_list([3, 2, 3], "ks", 1) == [2, 3]
    for bad, message in (([], "ks must hold at least one value"), ([0], "ks must hold ints >= 1, got 0"),
                         (5, "ks must be a sequence of ints")):
        with pytest.raises(QuarkError, match=message):
            check_int_list(bad, "ks", 1)
