"""quarklab.errors: the one-line description of an exception that quarklab's errors quote."""

from __future__ import annotations

import pytest

from quarklab.errors import describe


def _raised(exc: BaseException) -> BaseException:
    try:
        raise exc
    except BaseException as caught:  # a real raised exception, with its traceback
        return caught


def test_the_first_non_empty_line_of_the_message_is_quoted():
    # vLLM's failed engine start: a message that opens with a newline read "(RuntimeError: )"
    exc = _raised(RuntimeError("\n\n  Engine core initialization failed. See root cause above.\nmore detail"))
    assert describe(exc) == "RuntimeError: Engine core initialization failed. See root cause above."


def test_a_one_line_message_is_quoted_whole():
    assert describe(_raised(ValueError("bad value 3"))) == "ValueError: bad value 3"


def test_a_message_with_no_text_gives_the_type_alone():
    assert describe(_raised(RuntimeError())) == "RuntimeError"
    assert describe(_raised(RuntimeError("\n  \n"))) == "RuntimeError"


def test_a_real_decoding_error_names_its_type_and_place():
    import json

    with pytest.raises(ValueError) as info:
        json.loads("{not json")
    assert describe(info.value) == ("JSONDecodeError: Expecting property name enclosed in double quotes: "
                                    "line 1 column 2 (char 1)")
