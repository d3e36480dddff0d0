"""Rendering: Plan + edits -> text. Only windows of lines around the edited entries are split
and rendered, with line edits where the keys sit on plain lines; every other byte (and
each kept line's line ending) stays as it was. Layouts the line edits do not handle go to
the tomlkit fallback (render_tomlkit).
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from typing import Any

from ttsyncd.model import Record
from ttsyncd.plan.entry_text import (
    body_indent,
    changed_table,
    edit_segment,
    field_changes,
    new_entry,
    value_text,
)
from ttsyncd.plan.grammar import (
    TomlData,
    _load_toml,
    _same,
    _tasks_headers,
)
from ttsyncd.plan.model import (
    AddEntry,
    AssignId,
    FileEdit,
    Layout,
    Plan,
    RemoveEntry,
    UpdateEntry,
    _Outcome,
)

# What a missing key means (every other field: None).


def render_plan(plan: Plan, edits: Sequence[FileEdit]) -> str:
    return render_edits(plan, edits).text


@dataclass(frozen=True)
class Rendered:
    """A render's text, and `kept`: (h, t) when its first h and last t characters are the
    plan's own text, as they were (what the re-read of a big plan need not compare: 12 MB at
    100,000 entries); None when not known."""

    text: str
    kept: tuple[int, int] | None = None


def render_edits(plan: Plan, edits: Sequence[FileEdit]) -> Rendered:
    outcome = _resolve(plan, edits)
    if not (outcome.changes or outcome.removed or outcome.added):
        return Rendered(plan.text)
    expected = {
        index: changed_table(_table(plan, index), changes)
        for index, changes in outcome.changes.items()
    }
    if plan.layout is not None:
        by_segments = _render_by_segments(plan, plan.layout, outcome, expected)
    else:  # a trailing table, a multi-line string: the line-based render may still apply
        lines = _render_all_lines(plan, _load_toml(plan.text), outcome, expected)
        by_segments = None if lines is None else Rendered(lines)
    if by_segments is not None:
        return by_segments
    from ttsyncd.plan.render_tomlkit import _render_whole_document  # tomlkit: only when needed

    return Rendered(_render_whole_document(plan, _load_toml(plan.text), outcome, expected))


def _render_all_lines(
    plan: Plan, data: TomlData, outcome: _Outcome, expected: Mapping[int, TomlData]
) -> str | None:
    if "tasks" in data and not plan.entries:
        return None  # `tasks = []`: the new entry goes into that array
    text = plan.text
    window = _Window(text, range(len(plan.entries)), True, text.endswith("\n"))
    return _render_window(
        window, _Render(data.get("tasks", []), outcome, expected, _line_ending(text))
    )


def _table(plan: Plan, index: int) -> TomlData:
    """Entry `index` as tomllib parsed it."""
    if plan.layout is not None:
        return plan.layout.tables[index]
    table: TomlData = _load_toml(plan.text)["tasks"][index]
    return table


def _resolve(plan: Plan, edits: Sequence[FileEdit]) -> _Outcome:
    edited = _Edited(plan)
    for edit in edits:
        edited.take(edit)
    changes: dict[int, dict[str, Any]] = {}
    for index in sorted((edited.records.keys() | edited.new_ids.keys()) - edited.removed):
        entry_changes: dict[str, Any] = {}
        if index in edited.new_ids:
            entry_changes["id"] = edited.new_ids[index]
        if index in edited.records:
            entry_changes.update(
                field_changes(_table(plan, index), edited.records[index], plan.default_agent)
            )
        if entry_changes:
            changes[index] = entry_changes
    new_entries = tuple(
        new_entry(plan_id, record, plan.default_agent) for plan_id, record in edited.added.items()
    )
    return _Outcome(changes, frozenset(edited.removed), new_entries)


class _Edited:
    """The edits taken one by one against the plan: what each original entry becomes, and
    the entries added. An edit naming an id no entry has (or one already used) is a bug of
    the caller's: ValueError."""

    def __init__(self, plan: Plan) -> None:
        self.plan = plan
        self.index_of = plan.index_of  # the plan's own, copied before the first change to it
        self.index_copied = False
        self.new_ids: dict[int, str] = {}
        self.records: dict[int, Record] = {}
        self.removed: set[int] = set()
        self.added: dict[str, Record] = {}

    def take(self, edit: FileEdit) -> None:
        match edit:
            case UpdateEntry(plan_id, record):
                self.known(plan_id)
                if plan_id in self.added:
                    self.added[plan_id] = record
                else:
                    self.records[self.index_of[plan_id]] = record
            case AddEntry(plan_id, record):
                self.unused(plan_id)
                self.added[plan_id] = record
            case RemoveEntry(plan_id):
                self.known(plan_id)
                if plan_id in self.added:
                    del self.added[plan_id]
                else:
                    self.removed.add(self.writable_index().pop(plan_id))
            case AssignId(index, plan_id):
                entries = self.plan.entries
                has_id = not 0 <= index < len(entries) or entries[index].plan_id
                if has_id or index in self.new_ids or index in self.removed:
                    raise ValueError(f"no id-less plan entry at index {index}")
                self.unused(plan_id)
                self.new_ids[index] = plan_id
                self.writable_index()[plan_id] = index

    def writable_index(self) -> dict[str, int]:
        """index_of, now a copy of the plan's (a pull that only updates never copies it:
        ~1.5 ms at 100,000 entries)."""
        if not self.index_copied:
            self.index_of, self.index_copied = dict(self.index_of), True
        return self.index_of

    def known(self, plan_id: str) -> None:
        if plan_id not in self.index_of and plan_id not in self.added:
            raise ValueError(f"no plan entry has the id {plan_id!r}")

    def unused(self, plan_id: str) -> None:
        if plan_id in self.index_of or plan_id in self.added:
            raise ValueError(f"the id {plan_id!r} is already in the plan")


# --- the fast path: segments


@dataclass(frozen=True)
class _Lines:
    """Line range of one entry: attached comments, header, body (0-based, end exclusive)."""

    start: int
    header: int
    end: int


def _split(lines: list[str]) -> list[_Lines]:
    headers = _tasks_headers(lines)
    segments: list[_Lines] = []
    previous_end = 0
    for position, header in enumerate(headers):
        stop = headers[position + 1] if position + 1 < len(headers) else len(lines)
        end = header + 1
        for n in range(header + 1, stop):
            stripped = lines[n].strip()
            if stripped.startswith("["):
                break  # another table ends the entry's body
            if stripped and not stripped.startswith("#"):
                end = n + 1
        # Trailing comments/blank lines of the body belong to no entry: they stay put.
        start = header
        while start > previous_end and lines[start - 1].lstrip().startswith("#"):
            start -= 1
        segments.append(_Lines(start, header, end))
        previous_end = end
    return segments


def _render_by_segments(
    plan: Plan, layout: Layout, outcome: _Outcome, expected: Mapping[int, TomlData]
) -> Rendered | None:
    """The new text, or None when the file's layout does not split into segments safely.

    Only windows of lines around the edited entries are split and rendered (each from the
    header before the first edited entry to the header after the last one, which the
    blank-line rules look at); the text between windows is copied as it is."""
    text, starts, count = plan.text, layout.starts, len(layout.starts)
    # (new lines follow the file's line endings)
    job = _Render(layout.tables, outcome, expected, _line_ending(text), trusted=True)
    edited = sorted(outcome.changes.keys() | outcome.removed)
    if not count:  # no entries yet: the window is the whole text
        whole = _render_window(_Window(text, range(0), True, text.endswith("\n")), job)
        return None if whole is None else Rendered(whole)
    if outcome.added and (not edited or edited[-1] != count - 1):
        edited.append(count - 1)  # new entries go at the end, after its blank lines
    clusters: list[list[int]] = []
    for index in edited:
        if clusters and index <= clusters[-1][-1] + 2:  # their windows would overlap
            clusters[-1].append(index)
        else:
            clusters.append([index])
    pieces: list[str] = []
    cursor = 0
    for cluster in clusters:
        first = max(0, cluster[0] - 1)
        begin = starts[first] if cluster[0] > 0 else 0
        after = cluster[-1] + 1
        finish = len(text) if after >= count else text.find("\n", starts[after]) + 1 or len(text)
        at_end = finish == len(text)
        window = _Window(
            text[begin:finish],
            range(first, min(after, count - 1) + 1),
            at_end,
            text.endswith("\n") if at_end else True,
        )
        rendered = _render_window(window, job)
        if rendered is None:
            return None
        pieces += [text[cursor:begin], rendered]
        cursor = finish
    pieces.append(text[cursor:])
    # (the text before the first window and after the last one is copied as it was)
    kept = (len(pieces[0]), len(text) - cursor) if clusters else None
    return Rendered("".join(pieces), kept)


@dataclass(frozen=True)
class _Render:
    """What every window of one render shares: the edits, the tables the entries were read
    to, what each edited entry must read back as, and the line ending new lines take."""

    tables: Sequence[TomlData]
    outcome: _Outcome
    expected: Mapping[int, TomlData]
    carriage: str  # "\r" in a CRLF file, else ""
    # The tables come from the plan's layout, whose parse already tied each segment's text to
    # its table (else each is checked).
    trusted: bool = False


@dataclass(frozen=True)
class _Window:
    """A window of lines holding these entries (the last one perhaps only its header)."""

    text: str
    entries: range
    at_end: bool  # the window runs to the end of the file: additions go there
    ends_with_newline: bool


def _render_window(window: _Window, job: _Render) -> str | None:
    """The window rendered; None when it does not split as the parse did."""
    lines = window.text.split("\n")
    if window.ends_with_newline:
        lines.pop()
    elif job.carriage and lines and not lines[-1].endswith("\r"):
        # The last line, which ends the file with no newline, takes the file's line ending
        # for as long as the render works; whatever line ends the result gives it back.
        lines[-1] += job.carriage
    segments = _split(lines)
    if len(segments) != len(window.entries):
        return None
    replacements = _replacements(lines, segments, window.entries.start, job)
    if replacements is None:
        return None
    out = _kept_lines(lines, segments, window.entries.start, replacements, job.outcome.removed)
    ends_with_newline = window.ends_with_newline
    if window.at_end and job.outcome.added:
        _append_entries(out, job.outcome.added, job.carriage)
        ends_with_newline = True
    if not out:
        return ""
    if not ends_with_newline and out[-1].endswith("\r"):
        out[-1] = out[-1][:-1]  # no line ending at the end, as the file had none
    return "\n".join(out) + ("\n" if ends_with_newline else "")


def _replacements(
    lines: list[str], segments: list[_Lines], first: int, job: _Render
) -> dict[int, list[str]] | None:
    """The new lines of each edited entry in the window; None when an entry's text does not
    read as its table, or its edit would not read back as intended."""
    replacements: dict[int, list[str]] = {}
    outcome = job.outcome
    for index in outcome.removed | outcome.changes.keys():
        if not first <= index < first + len(segments):
            continue
        segment = segments[index - first]
        segment_text = "\n".join(lines[segment.start : segment.end]) + "\n"
        if not job.trusted and not _holds(segment_text, job.tables[index]):
            return None
        if index in outcome.changes:
            indent = body_indent(lines[segment.header + 1 : segment.end])
            new_text = edit_segment(segment_text, outcome.changes[index], indent)
            if not _holds(new_text, job.expected[index]):
                return None
            replacements[index] = _with_line_endings(
                new_text.split("\n")[:-1], lines[segment.start : segment.end]
            )
    return replacements


def _kept_lines(
    lines: list[str],
    segments: list[_Lines],
    first: int,
    replacements: Mapping[int, list[str]],
    removed: AbstractSet[int],
) -> list[str]:
    """The window's lines with each edited entry replaced and each removed one gone."""
    out: list[str] = []
    cursor = 0
    for position, segment in enumerate(segments):
        index = first + position
        out.extend(lines[cursor : segment.start])
        cursor = segment.end
        if index in replacements:
            out.extend(replacements[index])
        elif index not in removed:
            out.extend(lines[segment.start : segment.end])
        else:
            cursor = _after_removal(lines, segment.end, out, cursor)
    out.extend(lines[cursor:])
    return out


def _after_removal(lines: list[str], end: int, out: list[str], cursor: int) -> int:
    """Where to go on after an entry removed at `end`: don't leave a double blank line (or
    trailing blank lines) where it was."""
    after = end
    while after < len(lines) and not lines[after].strip():
        after += 1
    if after == len(lines):
        while out and not out[-1].strip():
            out.pop()
        return after
    if not out or not out[-1].strip():
        return after
    return cursor


def _append_entries(out: list[str], added: Sequence[TomlData], carriage: str) -> None:
    """New entries at the end, each after one blank line."""
    for entry in added:
        while out and not out[-1].strip():
            out.pop()
        if out:
            out.append(carriage)
        out.append("[[tasks]]" + carriage)
        out.extend(f"{key} = {value_text(value)}{carriage}" for key, value in entry.items())


def _with_line_endings(new: list[str], old: list[str]) -> list[str]:
    """An edited segment's lines, each with its line ending: a line the segment held keeps
    its own (an LF line of a CRLF file, a line inside a multi-line string); a new line takes
    the ending of the line before it (a key line written by the edit)."""
    kept = set(old)
    out: list[str] = []
    for line in new:
        if line not in kept and not line.endswith("\r") and out and out[-1].endswith("\r"):
            line += "\r"
        out.append(line)
    return out


def _holds(segment_text: str, raw: TomlData) -> bool:
    try:
        return _same(tomllib.loads(segment_text), {"tasks": [raw]})
    except tomllib.TOMLDecodeError:
        return False


def _line_ending(text: str) -> str:
    """The carriage return new lines take: the file's own line ending, by majority (a file of
    LF lines with one CRLF inside a multi-line string is an LF file)."""
    if "\r" not in text:  # (one quick scan: most files have no CR at all)
        return ""
    return "\r" if 2 * text.count("\r\n") > text.count("\n") else ""
