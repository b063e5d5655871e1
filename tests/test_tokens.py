"""quarklab.tokens: the one form a token takes in tables, its label, and the quantile tokens in a tokenizer."""

import math

import numpy as np
import pandas as pd
import pytest

from quarklab.errors import QuarkError
from quarklab.tokens import as_token, sorted_tokens, token_label, token_series


@pytest.mark.parametrize("value, token", [(0, 0), (np.int64(3), 3), (2.0, 2), ("1", 1), (" 4 ", 4), ("2.0", 2),
                                          (None, None), (math.nan, None), (pd.NA, None), ("none", None),
                                          ("None", None), ("", None), ("nan", None)])
def test_every_spelling_reads_into_one_form(value, token):
    assert as_token(value) == token


@pytest.mark.parametrize("value", ["best", 1.5, True, [0]])
def test_anything_else_is_one_error(value):
    with pytest.raises(QuarkError, match="a token must be a quantile index"):
        as_token(value)


def test_a_token_column_is_nullable_int64_and_keeps_its_index():
    s = token_series(pd.Series(["none", 0, 2.0, None], index=[5, 6, 7, 8]))
    assert str(s.dtype) == "Int64" and s.index.tolist() == [5, 6, 7, 8]
    assert s.isna().tolist() == [True, False, False, True] and s.dropna().tolist() == [0, 2]


def test_labels_and_order():
    assert [token_label(t) for t in (0, "3", None, "none")] == ["token 0", "token 3", "no token", "no token"]
    assert sorted_tokens(["none", 2, 0, 10, 2.0, None]) == [0, 2, 10, None]
    assert sorted_tokens([1, 0]) == [0, 1]
