"""One entry's text in a pull: which keys change, their values as TOML text, and the line
edits that change them in place (keys on plain `key = value` lines, written here because
tomlkit takes ~1 ms an entry); other layouts go to render_tomlkit.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from ttsyncd.model import FIELDS, Record
from ttsyncd.plan.grammar import _KEY_LINE, _SIMPLE_LINE, _TASKS_HEADER, TomlData

# What a key missing from an entry means.
ABSENT_MEANS: dict[str, Any] = {"status": "pending", "tags": ()}


def field_changes(raw: TomlData, record: Record, default_agent: str | None) -> dict[str, Any]:
    """The keys to set or remove so that the entry holds `record`; unchanged keys untouched."""
    changes: dict[str, Any] = {}
    for key in FIELDS:
        desired = record.get(key)
        current = raw.get(key, ABSENT_MEANS.get(key))
        if isinstance(current, list):
            current = tuple(current)
        if desired == current:
            continue
        if key == "agent" and "agent" not in raw and desired == default_agent:
            continue  # the [meta] default already says it
        if desired is None or desired == ():
            changes[key] = None
        else:
            changes[key] = list(desired) if isinstance(desired, tuple) else desired
    return changes


def changed_table(raw: TomlData, changes: Mapping[str, Any]) -> TomlData:
    updated = {**raw, **changes}
    return {key: value for key, value in updated.items() if value is not None}


def new_entry(plan_id: str, record: Record, default_agent: str | None) -> TomlData:
    values: dict[str, Any] = {
        "id": plan_id,
        "description": record.description,
        "agent": None if record.agent == default_agent else record.agent,
        "status": record.status,
        "tags": list(record.tags) or None,
        "parent": record.parent,
        "result": record.result,
    }
    return {key: value for key, value in values.items() if value is not None}


def value_text(value: Any) -> str:
    """A string or a list of strings as TOML text. Written here, not with tomlkit.item():
    a pulled plan of 10,000 entries made 50,000 tomlkit items (~1 s) for a few quotes."""
    if isinstance(value, str):
        return basic_string(value)
    if isinstance(value, list) and all(isinstance(item, str) for item in value):
        return "[" + ", ".join(basic_string(item) for item in value) + "]"
    import tomlkit  # imported only when needed: a push renders nothing

    text: str = tomlkit.item(value).as_string()
    return text


ESCAPES = {
    '"': '\\"',
    "\\": "\\\\",
    "\b": "\\b",
    "\t": "\\t",
    "\n": "\\n",
    "\f": "\\f",
    "\r": "\\r",
}
NEEDS_ESCAPE = re.compile(r'["\\\x00-\x1f\x7f]')


def basic_string(text: str) -> str:
    """A TOML basic string: quotes, backslashes and control characters escaped."""

    def escape(match: re.Match[str]) -> str:
        char = match.group()
        return ESCAPES.get(char) or f"\\u{ord(char):04x}"

    return '"' + NEEDS_ESCAPE.sub(escape, text) + '"'


def body_indent(body: list[str]) -> str:
    for line in body:
        stripped = line.lstrip()
        if stripped and not stripped.startswith("#"):
            return line[: len(line) - len(stripped)]
    return ""


def edit_segment(segment_text: str, changes: Mapping[str, Any], indent: str) -> str:
    fields = {key: value for key, value in changes.items() if key != "id"}
    new_text = edit_simple_lines(segment_text, fields, indent)
    if new_text is None:
        from ttsyncd.plan.render_tomlkit import _edit_with_tomlkit

        new_text = _edit_with_tomlkit(segment_text, fields, indent)
    if "id" not in changes:
        return new_text
    lines = new_text.split("\n")  # the id goes first
    header = next(n for n, line in enumerate(lines) if _TASKS_HEADER.match(line))
    lines.insert(header + 1, f"{indent}id = {value_text(changes['id'])}")
    return "\n".join(lines)


def edit_simple_lines(segment_text: str, changes: Mapping[str, Any], indent: str) -> str | None:
    """What `_edit_with_tomlkit` makes of an entry whose changed keys sit on simple lines,
    written directly: tomlkit takes ~1 ms an entry, and a burst pulls hundreds of them.
    None when a changed key is not on such a line (tomlkit edits it)."""
    lines = segment_text.split("\n")
    keys: dict[str, int] = {}
    for number, line in enumerate(lines):
        match = _KEY_LINE.match(line)
        if match:
            if match.group("key") in keys:
                return None
            keys[match.group("key")] = number
    removed: set[int] = set()
    appended: list[str] = []
    for key, value in changes.items():
        at = keys.get(key)
        if at is None:
            if value is None:
                return None
            appended.append(f"{indent}{key} = {value_text(value)}")
            continue
        simple = _SIMPLE_LINE.fullmatch(lines[at])
        if simple is None:
            return None
        if value is None:
            removed.add(at)
        else:
            lines[at] = simple.group("lead") + value_text(value) + simple.group("rest")
    kept = [line for number, line in enumerate(lines[:-1]) if number not in removed]
    return "\n".join([*kept, *appended, lines[-1]])
