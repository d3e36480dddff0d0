"""The TOML both reading and rendering use: the line grammar of plain entries (the regexes
the fast reader reads and the line edits write by), where `[[tasks]]` headers are, one
memoised tomllib parse, and TOML data equality.
"""

from __future__ import annotations

import functools
import math
import re
import tomllib
from typing import Any

# A value as tomllib returns it; None in a change means "remove the key".
TomlData = dict[str, Any]

_TASKS_HEADER = re.compile(r"""\s*\[\[\s*(?:tasks|"tasks"|'tasks')\s*\]\]\s*(?:#.*)?$""")

# The plainest TOML: a basic string with the short escapes only, an array of them on one line,
# a comment free of control characters.
_STRING = r'"(?:[^"\\\x00-\x08\x0a-\x1f\x7f]|\\["\\btnfr])*"'
_ARRAY = rf"\[[ \t]*(?:{_STRING}[ \t]*(?:,[ \t]*{_STRING}[ \t]*)*(?:,[ \t]*)?)?\]"
_COMMENT = r"#[^\x00-\x08\x0a-\x1f\x7f]*"
# `key = "string"` or `key = ["strings", ...]` on one line, with an optional comment.
_SIMPLE_LINE = re.compile(
    rf"(?P<lead>[ \t]*(?P<key>[A-Za-z0-9_-]+)[ \t]*=[ \t]*)"
    rf"(?P<value>{_STRING}|{_ARRAY})(?P<rest>[ \t]*(?:{_COMMENT})?\r?)"
)
_PLAIN_HEADER = re.compile(rf"[ \t]*\[\[[ \t]*tasks[ \t]*\]\][ \t]*(?:{_COMMENT})?\r?")
_BLANK_OR_COMMENT = re.compile(rf"[ \t]*(?:{_COMMENT})?\r?")
_STRINGS = re.compile(_STRING)
_ESCAPED = re.compile(r'\\(["\\btnfr])')
_UNESCAPE = {'"': '"', "\\": "\\", "b": "\b", "t": "\t", "n": "\n", "f": "\f", "r": "\r"}
_KEY_LINE = re.compile(r"""[ \t]*(?P<key>[A-Za-z0-9_-]+|"[^"]*"|'[^']*')[ \t]*[=.]""")


def _unquoted(literal: str) -> str:
    body = literal[1:-1]
    return _ESCAPED.sub(lambda m: _UNESCAPE[m.group(1)], body) if "\\" in body else body


def _tasks_headers(lines: list[str]) -> list[int]:
    """0-based indexes of the `[[tasks]]` header lines."""
    return [n for n, line in enumerate(lines) if "[[" in line and _TASKS_HEADER.match(line)]


@functools.lru_cache(maxsize=2)
def _load_toml(text: str) -> TomlData:
    """tomllib, memoised: rendering a plan that could not be split needs the same parse.

    Callers must not mutate the result."""
    return tomllib.loads(text)


def _same(a: object, b: object) -> bool:
    """Equal TOML data, where `nan` equals `nan` (a value TOML allows, which `==` says is not
    even equal to itself)."""
    if isinstance(a, float) and isinstance(b, float):
        return a == b or (math.isnan(a) and math.isnan(b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return type(a) is type(b) and a == b
