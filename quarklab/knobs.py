"""Documented dataclass fields, as :class:`quarklab.config.QuarkConfig` declares its knobs.

Each field is a :func:`knob`: a default, its documentation and (optionally) the rule its value must
follow (a :class:`Range` or a :class:`Pattern`), in the field's ``metadata``. Its type (``int``,
``float``, ``str``, ``bool``, a ``Literal`` of choices, ``str | int``, ``... | None``) drives both validation
(:func:`check`) and reading a value from command-line text (:func:`parse`); :func:`class_doc` writes
the class docstring from the fields' documentation.
"""

from __future__ import annotations

import json
import math
import numbers
import re
import textwrap
import types
import typing
from dataclasses import dataclass, field, fields
from functools import cache
from typing import Any, Literal

from .errors import QuarkError


@dataclass(frozen=True)
class Range:
    """The interval a number must lie in; ``hi=None`` is unbounded above."""
    lo: float
    hi: float | None = None
    lo_open: bool = False
    hi_open: bool = False

    def __contains__(self, v) -> bool:
        above = v > self.lo if self.lo_open else v >= self.lo
        below = self.hi is None or (v < self.hi if self.hi_open else v <= self.hi)
        return above and below

    def __str__(self) -> str:
        if self.hi is None:
            return f"{'>' if self.lo_open else '>='} {self.lo:g}"
        return f"in {'(' if self.lo_open else '['}{self.lo:g}, {self.hi:g}{')' if self.hi_open else ']'}"


@dataclass(frozen=True)
class Pattern:
    """Text that must match ``regex`` in full; ``text`` says what that means to a user."""
    regex: str
    text: str

    def __contains__(self, v) -> bool:
        return re.fullmatch(self.regex, v) is not None

    def __str__(self) -> str:
        return self.text


AT_LEAST_1, NON_NEGATIVE, POSITIVE = Range(1), Range(0), Range(0, lo_open=True)


def knob(default: Any, doc: str, rule: Range | Pattern | None = None):
    """A config field: its default, its documentation and (optionally) the range its value must lie in."""
    return field(default=default, metadata={"doc": " ".join(doc.split()), "rule": rule})


@cache
def specs(cls) -> dict[str, tuple[Any, bool, Range | Pattern | None]]:
    """Each field's ``(type, None allowed, rule)``; the type is int, float, str, bool, a Literal or ``str | int``
    (text or an integer: a union of those types)."""
    hints = typing.get_type_hints(cls)
    out = {}
    for f in fields(cls):
        hint, nullable = hints[f.name], False
        if typing.get_origin(hint) in (typing.Union, types.UnionType):
            members = tuple(a for a in typing.get_args(hint) if a is not type(None))
            nullable = len(members) < len(typing.get_args(hint))
            hint = members[0] if len(members) == 1 else typing.Union[members]
        out[f.name] = (hint, nullable, f.metadata.get("rule"))
    return out


def expected(cls, name: str) -> str:
    """What a field accepts, in words: "an integer >= 1", "one of 'local', 'global'", ..."""
    hint, nullable, rule = specs(cls)[name]
    if typing.get_origin(hint) is Literal:
        words = "one of " + ", ".join(repr(c) for c in typing.get_args(hint))
    else:
        words = " or ".join(_WORDS[h] for h in _members(hint))
        words = str(rule) if isinstance(rule, Pattern) else f"{words} {rule}" if rule else words
    return words + (", or None" if nullable else "")


_WORDS = {int: "an integer", float: "a number", bool: "true or false", str: "non-empty text"}


def _members(hint) -> tuple:
    """The plain types a field's type stands for: ``(str, int)`` for ``str | int``, else ``(hint,)``."""
    return typing.get_args(hint) if typing.get_origin(hint) is typing.Union else (hint,)


def _bad(cls, name: str, value: Any, where: str, called: str | None = None) -> QuarkError:
    return QuarkError(f"{where}: {called or name} must be {expected(cls, name)}, got {value!r}")


def check(cls, name: str, value: Any, where: str = "config", called: str | None = None) -> Any:
    """``value`` if it suits field ``name`` (type, choices, range), else one QuarkError naming the field (or
    ``called``, the name the value goes by where it was given), what it accepts and the value. Numbers come back
    as Python int or float."""
    if name not in specs(cls):
        raise QuarkError(f"{where}: unknown field {name!r}: see quarklab train --help-config")
    hint, nullable, rule = specs(cls)[name]
    given = value
    if value is None:
        if nullable:
            return None
        raise _bad(cls, name, value, where, called)
    if typing.get_origin(hint) is Literal:
        ok = isinstance(value, str) and value in typing.get_args(hint)
    else:
        ok = False
        for member in _members(hint):
            ok, value = _fits(member, given)
            if ok:
                break
    if not ok or (rule is not None and value not in rule):
        raise _bad(cls, name, given, where, called)
    return value


def _fits(hint, value) -> tuple[bool, Any]:
    """Whether ``value`` is of the plain type ``hint``, and the value as that type (numbers as int or float)."""
    if hint is float:
        ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
        return ok, float(value) if ok else value
    if hint is int:
        ok = isinstance(value, numbers.Integral) and not isinstance(value, bool)
        return ok, int(value) if ok else value
    if hint is str:
        return isinstance(value, str) and value.strip() != "", value
    return isinstance(value, hint), value


def parse(cls, name: str, raw: str, where: str = "config") -> Any:
    """Field ``name``'s value from command-line text, read by the field's type, then checked.

    Numbers as numbers (``5``, ``2e-5``), text as is (a JSON-quoted ``"local"`` also works),
    ``null`` or ``None`` for a field that accepts None; for a ``str | int`` field, an integer as an integer
    and any other text as text (a JSON-quoted ``"1"`` is the text 1).
    """
    if name not in specs(cls):
        raise QuarkError(f"{where}: unknown field {name!r}: see quarklab train --help-config")
    hint, nullable, _ = specs(cls)[name]
    text = raw.strip()
    try:
        if nullable and text in ("null", "None"):
            return None
        if hint is int:
            value = int(text)
        elif hint is float:
            value = float(text)
        elif hint is bool:
            value = {"true": True, "false": False}[text.lower()]
        elif int in _members(hint) and re.fullmatch(r"[+-]?\d+", text):
            value = int(text)
        else:  # str or a Literal of str
            value = json.loads(text) if text.startswith('"') else text
        return check(cls, name, value, where)
    except (ValueError, KeyError):  # QuarkError is a ValueError: name the text as typed
        raise _bad(cls, name, raw, where) from None


def sections(cls, starts: dict[str, str]) -> list[tuple[str, list]]:
    """The fields of ``cls`` in sections: ``starts`` maps each section's title to its first field, in order."""
    firsts = {name: title for title, name in starts.items()}
    out: list[tuple[str, list]] = []
    for f in fields(cls):
        if f.name in firsts:
            out.append((firsts[f.name], []))
        out[-1][1].append(f)
    return out


def describe(cls, starts: dict[str, str], indent: str = "") -> str:
    """Every field by section: its name, default and what it accepts, then its documentation, wrapped."""
    out = []
    for title, members in sections(cls, starts):
        out += ["", f"{indent}{title}", f"{indent}{'-' * len(title)}"]
        for f in members:
            out.append(f"{indent}{f.name} = {f.default!r}  ({expected(cls, f.name)})")
            out.append(textwrap.fill(f.metadata["doc"], 100, initial_indent=indent + "    ",
                                     subsequent_indent=indent + "    ", break_on_hyphens=False, break_long_words=False))
    return "\n".join(out[1:])
