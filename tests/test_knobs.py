"""quarklab.knobs: documented dataclass fields for any settings class (QuarkConfig is one): checked by type, choices
and range, read from command-line text by type, described by section."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import pytest

from quarklab import knobs
from quarklab.errors import QuarkError


@dataclass(frozen=True)
class Settings:
    steps: int = knobs.knob(10, "How many steps.", knobs.AT_LEAST_1)
    lr: float = knobs.knob(1e-3, """The learning
        rate.""", knobs.POSITIVE)
    mode: Literal["fast", "slow"] = knobs.knob("fast", "Which mode.")
    name: str | None = knobs.knob(None, "An optional name.")
    device: str = knobs.knob("cpu", "Where.", knobs.Pattern(r"cpu|cuda(:\d+)?", "'cpu' or 'cuda[:N]'"))


def test_values_are_checked_by_type_choice_and_range_and_numbers_normalised():
    assert knobs.check(Settings, "steps", 3) == 3 and type(knobs.check(Settings, "lr", 1)) is float
    assert knobs.check(Settings, "name", None) is None and knobs.check(Settings, "device", "cuda:1") == "cuda:1"
    for name, bad in (("steps", 0), ("steps", 2.5), ("steps", True), ("lr", 0.0), ("lr", float("nan")),
                      ("mode", "medium"), ("device", "tpu"), ("steps", None), ("name", "")):
        with pytest.raises(QuarkError, match=rf"^here: {name} must be "):
            knobs.check(Settings, name, bad, where="here")
    with pytest.raises(QuarkError, match="unknown field 'stepz'"):
        knobs.check(Settings, "stepz", 1)


def test_command_line_text_is_read_by_the_fields_type():
    assert knobs.parse(Settings, "steps", "5") == 5 and knobs.parse(Settings, "lr", "2e-5") == 2e-5
    assert knobs.parse(Settings, "mode", '"slow"') == "slow" and knobs.parse(Settings, "name", "null") is None
    with pytest.raises(QuarkError, match=r"steps must be .*got 'five'"):
        knobs.parse(Settings, "steps", "five")


def test_fields_are_described_by_section_with_default_rule_and_doc():
    assert knobs.expected(Settings, "mode") == "one of 'fast', 'slow'"
    assert knobs.expected(Settings, "steps") == "an integer >= 1" and knobs.expected(Settings, "device") == "'cpu' or 'cuda[:N]'"
    assert knobs.expected(Settings, "name") == "non-empty text, or None"
    text = knobs.describe(Settings, {"Training": "steps", "Where": "device"})
    assert text.splitlines()[:2] == ["Training", "--------"]
    assert "lr = 0.001" in text and "The learning rate." in text and text.index("Where") > text.index("name =")


@dataclass(frozen=True)
class Picks:
    label: str | int | None = knobs.knob(None, "A label by name or index.")


def test_a_text_or_integer_field_takes_either_and_reads_digits_as_an_integer():
    assert knobs.expected(Picks, "label") == "non-empty text or an integer, or None"
    assert [knobs.check(Picks, "label", v) for v in ("positive", 2, None)] == ["positive", 2, None]
    assert [knobs.parse(Picks, "label", t) for t in ("positive", "2", "-1", '"2"', "None")] == [
        "positive", 2, -1, "2", None]
    for bad in (1.5, True, "", [1]):
        with pytest.raises(QuarkError, match="label must be non-empty text or an integer, or None, got"):
            knobs.check(Picks, "label", bad)
