"""The TOML both reading and rendering use: the TOML parser (`loads`), the line grammar of
plain entries (the regexes the line edits write by), where `[[tasks]]` headers are, and TOML
data equality.
"""

from __future__ import annotations

import functools
import math
import re
import tomllib
from typing import Any

import toml_rs

# A value as tomllib returns it; None in a change means "remove the key".
TomlData = dict[str, Any]

_TASKS_HEADER = re.compile(r"""\s*\[\[\s*(?:tasks|"tasks"|'tasks')\s*\]\]\s*(?:#.*)?$""")

# The plainest TOML, the lines the renderer edits in place: a basic string with the short
# escapes only, an array of them on one line, a comment free of control characters.
_STRING = r'"(?:[^"\\\x00-\x08\x0a-\x1f\x7f]|\\["\\btnfr])*"'
_ARRAY = rf"\[[ \t]*(?:{_STRING}[ \t]*(?:,[ \t]*{_STRING}[ \t]*)*(?:,[ \t]*)?)?\]"
_COMMENT = r"#[^\x00-\x08\x0a-\x1f\x7f]*"
# `key = "string"` or `key = ["strings", ...]` on one line, with an optional comment.
_SIMPLE_LINE = re.compile(
    rf"(?P<lead>[ \t]*(?P<key>[A-Za-z0-9_-]+)[ \t]*=[ \t]*)"
    rf"(?P<value>{_STRING}|{_ARRAY})(?P<rest>[ \t]*(?:{_COMMENT})?\r?)"
)
_KEY_LINE = re.compile(r"""[ \t]*(?P<key>[A-Za-z0-9_-]+|"[^"]*"|'[^']*')[ \t]*[=.]""")


def _tasks_headers(lines: list[str]) -> list[int]:
    """0-based indexes of the `[[tasks]]` header lines."""
    return [n for n, line in enumerate(lines) if "[[" in line and _TASKS_HEADER.match(line)]


# toml_rs recurses on the machine stack once per level of nesting and, past ~6,000 levels on an
# 8 MiB stack, kills the process (SIGSEGV) instead of raising. A document cannot nest deeper
# than it holds `[` and `{`, so one holding more than this goes to tomllib, which refuses
# anything nested deeper than ~450 levels with a RecursionError. The reader parses a big plan
# in chunks of entries that each stay under it.
SAFE_OPENINGS = 3_000


def openings(text: str) -> int:
    """How many `[` and `{` the text holds: a bound on how deep its values can nest."""
    return text.count("[") + text.count("{")


def loads(text: str) -> TomlData:
    """TOML 1.0, read exactly as tomllib reads it, ~14x faster (10,000 entries: 15 ms, not
    210 ms). toml_rs is Rust's `toml` crate, held to TOML 1.0 as tomllib is (by default it
    reads TOML 1.1, whose additions tomllib refuses). A document it refuses goes to tomllib,
    which raises the error users see (its words, its line and column) or, were the two ever to
    disagree, reads it. A byte-order mark, which toml_rs skips and tomllib refuses, goes to
    tomllib too, and so does a document that might nest too deeply for toml_rs (above).
    tests/test_plan_conformance.py holds the two to the same answers.

    Raises tomllib.TOMLDecodeError or RecursionError (values nested too deeply)."""
    if not text.startswith("\ufeff") and openings(text) <= SAFE_OPENINGS:
        try:
            data: TomlData = toml_rs.loads(text, toml_version="1.0.0")
            return data
        except toml_rs.TOMLDecodeError:
            pass
    return tomllib.loads(text)


@functools.lru_cache(maxsize=2)
def _load_toml(text: str) -> TomlData:
    """`loads`, memoised: rendering a plan without a layout needs the parse reading made.

    Callers must not mutate the result."""
    return loads(text)


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
