"""The plan file (tasks.toml): read fast with tomllib, edited in place keeping its style.

Reading parses the whole file with tomllib and finds line numbers by a line scan. Writing
splits the text into a preamble and one segment per `[[tasks]]` entry and edits only the
segments that change (each one a tiny tomlkit document), so every other byte stays as it was.
Layouts the split cannot describe (inline `tasks = [...]`, `[tasks.sub]` tables, multi-line
strings holding `[[tasks]]`) fall back to one whole-document tomlkit edit.
"""

from __future__ import annotations

import bisect
import contextlib
import functools
import json
import math
import os
import re
import tempfile
import tomllib
import unicodedata
import weakref
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomlkit
from tomlkit.container import Container
from tomlkit.items import AoT, Array, Comment, InlineTable, Item, Table, Whitespace

from ttsyncd.codec import PLAN_TAG_PREFIX
from ttsyncd.errors import PlanError
from ttsyncd.model import FIELDS, STATES, Record


@dataclass(frozen=True)
class PlanEntry:
    """One `[[tasks]]` entry. It holds no position, so an entry whose text did not change is
    the same object in every parse of the plan (a daemon tells what changed by identity)."""

    plan_id: str | None  # the entry's `id`, None when missing
    record: Record  # `agent` is the entry's own key, not the [meta] default


@dataclass(frozen=True)
class Layout:
    """Where the entries are in the text, for plans that split into `[[tasks]]` segments:
    what lets a re-read parse, and a pull rewrite, only the entries that changed."""

    starts: tuple[int, ...]  # offset of each entry's `[[tasks]]` header line
    tables: tuple[TomlData, ...]  # each entry as tomllib parsed it


@dataclass(frozen=True)
class Plan:
    path: Path
    text: str  # the exact text read
    default_agent: str | None  # [meta] default_agent
    entries: tuple[PlanEntry, ...]
    layout: Layout | None = field(default=None, compare=False, repr=False)
    # The plan this one was read against, weakly, and the ids of the entries that differ.
    derived_from: tuple[weakref.ref[Plan], frozenset[str]] | None = field(
        default=None, compare=False, repr=False
    )

    def edited_since(self, earlier: Plan, limit: int = 64) -> frozenset[str] | None:
        """The ids of the entries edited, added or removed since `earlier`; None when that
        is not known cheaply (the caller compares all entries)."""
        edited: set[str] = set()
        plan: Plan | None = self
        for _ in range(limit):
            if plan is earlier:
                return frozenset(edited)
            link = plan.derived_from if plan is not None else None
            if link is None:
                return None
            plan = link[0]()
            edited |= link[1]
        return None

    @functools.cached_property
    def by_id(self) -> dict[str, PlanEntry]:
        return {entry.plan_id: entry for entry in self.entries if entry.plan_id is not None}

    @functools.cached_property
    def index_of(self) -> dict[str, int]:
        return {e.plan_id: n for n, e in enumerate(self.entries) if e.plan_id is not None}

    @functools.cached_property
    def without_id(self) -> tuple[int, ...]:
        """Indexes of the entries that have no id yet."""
        if len(self.by_id) == len(self.entries):
            return ()  # (ids are unique)
        return tuple(n for n, entry in enumerate(self.entries) if entry.plan_id is None)

    def entry_line(self, index: int) -> int:
        """The 1-based line of entry `index`'s header (for messages)."""
        if self.layout is not None:
            return self.text.count("\n", 0, self.layout.starts[index]) + 1
        return _Locator(self.text.split("\n")).entry_line(index)


@dataclass(frozen=True)
class UpdateEntry:
    """Make the entry with this id hold `record`."""

    plan_id: str
    record: Record


@dataclass(frozen=True)
class AddEntry:
    """Append a new entry at the end of the file."""

    plan_id: str
    record: Record


@dataclass(frozen=True)
class RemoveEntry:
    plan_id: str


@dataclass(frozen=True)
class AssignId:
    """Give the id-less entry at `index` an `id`."""

    index: int
    plan_id: str


FileEdit = UpdateEntry | AddEntry | RemoveEntry | AssignId

# A value as tomllib returns it; None in a change means "remove the key".
TomlData = dict[str, Any]

_TASKS_HEADER = re.compile(r"""\s*\[\[\s*(?:tasks|"tasks"|'tasks')\s*\]\]\s*(?:#.*)?$""")
_TASKS_KEY = re.compile(r"""\s*\[*\s*(?:tasks|"tasks"|'tasks')\s*[\]=.]""")
_META_KEY = re.compile(r"""\s*\[*\s*(?:meta|"meta"|'meta')\s*[\]=.]""")
_DEFAULT_AGENT_KEY = re.compile(r"""\s*(?:default_agent|"default_agent"|'default_agent')\s*=""")
_ERROR_POSITION = re.compile(r"\s*\(at line (\d+), column (\d+)\)$")
# What a missing key means (every other field: None).
_ABSENT_MEANS: dict[str, Any] = {"status": "pending", "tags": ()}
_TOML_TYPES = {bool: "a boolean", int: "an integer", float: "a float", list: "an array"}


# ---------------------------------------------------------------------------- reading


def read_plan(path: Path) -> Plan:
    return parse_plan(path, read_text(path))


def read_text(path: Path) -> str:
    """The file's exact text; "" for a missing file."""
    try:
        # Bytes, not read_text: universal newlines would turn CRLF into LF and break byte
        # equality with what write_atomic compares against.
        raw = path.read_bytes()
    except FileNotFoundError:
        return ""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as error:
        line = raw[: error.start].count(b"\n") + 1
        raise PlanError([f"{path}:{line}: not UTF-8 text"]) from None


class PlanReader:
    """Reads the plan, parsing it again only when its text changed, and then only the entries
    whose text changed (a daemon reads it on every sync, and most syncs come from Redis).

    `seen` is the text last read or written, whichever came last, whether it parsed or not:
    the one text a file event may carry and still be no news. An older text (the daemon's
    write before the user's last save, an undo, a checkout back) is a change like any other."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.last: Plan | None = None  # the last plan that parsed
        self.seen: str | None = None

    def read(self) -> Plan:
        text = read_text(self.path)
        self.seen = text  # before parsing: a save that fails to parse was seen all the same
        if self.last is None or self.last.text != text:
            self.last = parse_plan(self.path, text, previous=self.last)
        return self.last

    def wrote(self, plan: Plan) -> None:
        """The daemon wrote this plan: its echo is no change, and it needs no parse."""
        self.seen = plan.text
        self.last = plan

    def is_known(self, text: str) -> bool:
        """True when `text` is what was last read or written (the latest of the two): a file
        event with this content is the echo of our own write, or no change at all."""
        return text == self.seen


def parse_plan(path: Path, text: str, previous: Plan | None = None) -> Plan:
    """The plan in `text`. `previous`, a plan read before, lets the parse skip every entry
    whose text did not change. A plan with any problem is parsed whole, for exact messages."""
    fast = _parse_by_segments(path, text, previous)
    return fast if fast is not None else _parse_whole(path, text)


def _parse_whole(path: Path, text: str) -> Plan:
    where = str(path)
    try:
        data = _load_toml(text)
    except tomllib.TOMLDecodeError as error:
        raise PlanError([_syntax_problem(where, text, error)]) from None
    except RecursionError:
        line = next((n for n, row in enumerate(text.split("\n"), 1) if "[[[[[[" in row), 1)
        raise PlanError([f"{where}:{line}: invalid TOML: values nested too deeply"]) from None
    locate = _Locator(text.split("\n"))
    problems: list[str] = []

    default_agent: str | None = None
    meta = data.get("meta", {})
    if not isinstance(meta, dict):
        problems.append(f"{where}:{locate.meta_line()}: [meta] must be a table")
    elif "default_agent" in meta:
        if isinstance(meta["default_agent"], str):
            default_agent = meta["default_agent"]
        else:
            problems.append(
                f"{where}:{locate.first_line(_DEFAULT_AGENT_KEY)}: default_agent must be a string"
                f" (got {_toml_type(meta['default_agent'])})"
            )

    raw_entries = data.get("tasks", [])
    if not isinstance(raw_entries, list):
        problems.append(
            f"{where}:{locate.tasks_line()}: `tasks` must be an array of tables ([[tasks]]),"
            f" got {_toml_type(raw_entries)}"
        )
        raise PlanError(problems)
    locate.expect_entries(len(raw_entries))
    for index, raw in enumerate(raw_entries):
        if not isinstance(raw, dict):
            problems.append(
                f"{where}:{locate.entry_line(index)}: task {index + 1} must be a table,"
                f" got {_toml_type(raw)}"
            )
    tables = [(index, raw) for index, raw in enumerate(raw_entries) if isinstance(raw, dict)]
    for index, raw in tables:
        problems.extend(
            f"{where}:{line}: {message}" for line, message in _field_problems(raw, index, locate)
        )
    problems.extend(
        f"{where}:{line}: {message}" for line, message in _graph_problems(tables, locate)
    )
    if problems:
        raise PlanError(problems)
    entries = tuple(PlanEntry(raw.get("id"), _record(raw)) for _, raw in tables)
    return Plan(path, text, default_agent, entries)


@functools.lru_cache(maxsize=2)
def _load_toml(text: str) -> TomlData:
    """tomllib, memoised: rendering a plan that could not be split needs the same parse.

    Callers must not mutate the result."""
    return tomllib.loads(text)


# --- the fast path: `[[tasks]]` segments

# A segment is the text from one `[[tasks]]` header to the next. Parsing only the segments not
# seen before is what keeps a daemon's re-read of a 10,000-entry file (1.5 MB) at a few
# milliseconds, where a whole tomllib parse takes ~0.25 s and tomlkit's ~3 s.
_HEADER_LINE = re.compile(
    r"""^[ \t]*\[\[[ \t]*(?:tasks|"tasks"|'tasks')[ \t]*\]\][ \t\r]*(?:#.*)?$""", re.M
)
_TABLE_LINE = re.compile(r"^[ \t]*\[", re.M)


@dataclass(frozen=True)
class _Segment:
    table: TomlData
    entry: PlanEntry


# Parsed segments and preambles by their exact text (bounded: cleared when it grows past this).
_SEGMENTS: dict[str, _Segment | None] = {}
_PREAMBLES: dict[str, tuple[str | None] | None] = {}
# A valid parse prunes the cache to its own plan (_keep_only_segments_of); this bounds it
# when saves keep failing to parse, which never reach that prune.
_CACHE_LIMIT = 50_000


def forget_parses() -> None:
    """Drop every memoised parse, as a new process starts (the benchmark's cold runs)."""
    _SEGMENTS.clear()
    _PREAMBLES.clear()
    _load_toml.cache_clear()


def _parse_by_segments(path: Path, text: str, previous: Plan | None) -> Plan | None:
    """The plan, from segments parsed on their own; None when the text is not a plain list of
    valid segments (the whole parse decides, and words any problem): a multi-line string could
    hide a header, a table after the first `[[tasks]]` (say `[meta]` at the end,
    `[tasks.sub]`) belongs to no single segment."""
    if '"""' in text or "'''" in text:
        return None
    if len(_SEGMENTS) > _CACHE_LIMIT:
        forget_parses()
    if previous is None or previous.layout is None:
        starts = _headers_in(text, 0, len(text), after_first=False)
        return None if starts is None else _assemble(path, text, starts, _Reuse())
    # Only the lines between the common prefix and the common suffix of the two texts changed:
    # headers outside them are where they were (shifted by the change in length), and so are
    # the segments wholly before or after them.
    before, old_starts = previous.text, previous.layout.starts
    prefix = _common_prefix(before, text)
    suffix = _common_suffix(before, text, min(len(before), len(text)) - prefix)
    low = text.rfind("\n", 0, prefix) + 1
    high = text.find("\n", len(text) - suffix)
    high = len(text) if high < 0 else high + 1
    shift = len(text) - len(before)
    first = bisect.bisect_left(old_starts, low)
    last = bisect.bisect_left(old_starts, high - shift)
    rescanned = _headers_in(text, low, high, after_first=first > 0)
    if rescanned is None:
        return None
    starts = [*old_starts[:first], *rescanned, *[start + shift for start in old_starts[last:]]]
    # The segment just before the changed lines runs up to the next header: parse it again.
    reuse = _Reuse(previous, head=max(0, first - 1), tail=len(old_starts) - last)
    return _assemble(path, text, starts, reuse)


@dataclass(frozen=True)
class _Reuse:
    """The previous plan's first `head` and last `tail` entries, whose text is unchanged."""

    previous: Plan | None = None
    head: int = 0
    tail: int = 0


def _headers_in(text: str, low: int, high: int, *, after_first: bool) -> list[int] | None:
    """Offsets of the `[[tasks]]` header lines in text[low:high]; None when another table
    header follows the first `[[tasks]]` (`after_first`: the first one is before `low`)."""
    headers = [match.start() for match in _HEADER_LINE.finditer(text, low, high)]
    first = low if after_first else (headers[0] if headers else high)
    tables = sum(1 for _ in _TABLE_LINE.finditer(text, first, high))  # headers are tables too
    return headers if tables == len(headers) else None


def _assemble(path: Path, text: str, starts: list[int], reuse: _Reuse) -> Plan | None:
    default_agent = _preamble(text[: starts[0]] if starts else text)
    if default_agent is None:
        return None
    previous, count = reuse.previous, len(starts)
    old_entries = previous.entries if previous else ()
    old_tables = previous.layout.tables if previous and previous.layout else ()
    texts = [
        text[starts[index] : starts[index + 1] if index + 1 < count else len(text)]
        for index in range(reuse.head, count - reuse.tail)
    ]
    fresh = [t for t in texts if t not in _SEGMENTS]
    for segment_text in fresh:
        plain = _plain_table(segment_text)
        if plain is not None:
            _SEGMENTS[segment_text] = _segment_of(plain)
    hard = sum(1 for t in fresh if t not in _SEGMENTS)  # left for tomllib
    if hard > max(WHOLE_PARSE_FROM, count // 2) and not _seed_segments(text, starts):
        return None
    middle: list[_Segment] = []
    for segment_text in texts:
        segment = _segment(segment_text)
        if segment is None:
            return None
        middle.append(segment)
    tail = len(old_entries) - reuse.tail
    entries = (
        *old_entries[: reuse.head],
        *(segment.entry for segment in middle),
        *old_entries[tail:],
    )
    by_id = _valid_graph(entries, middle, old_entries[reuse.head : tail], previous)
    if by_id is None:
        return None
    tables = (*old_tables[: reuse.head], *(s.table for s in middle), *old_tables[tail:])
    derived_from = None
    if previous is not None:
        differ = [*(s.entry for s in middle), *old_entries[reuse.head : tail]]
        ids = frozenset(e.plan_id for e in differ if e.plan_id is not None)
        derived_from = (weakref.ref(previous), ids)
    plan = Plan(path, text, default_agent[0], entries, Layout(tuple(starts), tables), derived_from)
    vars(plan)["by_id"] = by_id  # seeds the cached property: it was just built
    if len(_SEGMENTS) > 2 * count + 1_000:
        _keep_only_segments_of(text, starts)
    return plan


def _keep_only_segments_of(text: str, starts: Sequence[int]) -> None:
    """Forget the parses of segments this plan no longer holds: every save of a long-running
    daemon's plan leaves one behind, so the cache would grow without end."""
    ends = [*starts[1:], len(text)] if starts else []  # a plan with no entries holds none
    current = {text[start:end] for start, end in zip(starts, ends, strict=True)}
    for segment_text in [t for t in _SEGMENTS if t not in current]:
        del _SEGMENTS[segment_text]
    _PREAMBLES.clear()


def _preamble(text: str) -> tuple[str | None] | None:
    """(`[meta] default_agent`,) of the text before the first entry; None if it is not valid
    on its own or defines `tasks`."""
    if text in _PREAMBLES:
        return _PREAMBLES[text]
    result: tuple[str | None] | None = None
    try:
        data = tomllib.loads(text)
    except (tomllib.TOMLDecodeError, RecursionError):
        data = {"tasks": None}
    meta = data.get("meta", {})
    agent = meta.get("default_agent") if isinstance(meta, dict) else 0
    if "tasks" not in data and (agent is None or isinstance(agent, str)):
        result = (agent,)
    _PREAMBLES[text] = result
    return result


# When most segments are new and not plain (and more than this many), one tomllib parse of the
# whole text is faster than one per segment (10,000 entries: ~0.25 s instead of ~0.5 s).
WHOLE_PARSE_FROM = 200


def _seed_segments(text: str, starts: list[int]) -> bool:
    """Parse the whole text once and file each entry under its segment's text; False when
    it does not parse (the whole parse will say why)."""
    try:
        tables = _load_toml(text).get("tasks")
    except (tomllib.TOMLDecodeError, RecursionError):
        return False
    if not isinstance(tables, list) or len(tables) != len(starts):
        return False
    for index, table in enumerate(tables):
        end = starts[index + 1] if index + 1 < len(starts) else len(text)
        segment_text = text[starts[index] : end]
        if segment_text not in _SEGMENTS:
            _SEGMENTS[segment_text] = _segment_of(table)
    return True


def _plain_table(text: str) -> TomlData | None:
    """The table of a segment written in the plainest TOML (a header, then `key = "string"`
    and `key = ["strings"]` lines, comments, blank lines), read without tomllib: ~5x faster,
    which is most of a cold read of 10,000 entries. None for anything else, which tomllib
    reads (a property test holds the two to the same answer)."""
    lines = text.split("\n")
    if not _PLAIN_HEADER.fullmatch(lines[0]) or lines[-1].endswith("\r"):
        return None  # (a CR not followed by LF ends no line: tomllib rejects it)
    table: TomlData = {}
    for line in lines[1:]:
        match = _SIMPLE_LINE.fullmatch(line)
        if match is None:
            if _BLANK_OR_COMMENT.fullmatch(line):
                continue
            return None
        key, value = match.group("key"), match.group("value")
        if key in table:
            return None  # a duplicate: tomllib words the error
        if value[0] == '"':
            table[key] = _unquoted(value)
        else:
            table[key] = [_unquoted(item) for item in _STRINGS.findall(value)]
    return table


def _unquoted(literal: str) -> str:
    body = literal[1:-1]
    return _ESCAPED.sub(lambda m: _UNESCAPE[m.group(1)], body) if "\\" in body else body


def _segment_of(table: object) -> _Segment | None:
    if isinstance(table, dict) and not _field_problems(table, 0, None):
        return _Segment(table, PlanEntry(table.get("id"), _record(table)))
    return None


def _segment(text: str) -> _Segment | None:
    """One entry's segment parsed; None if it is not exactly one valid entry on its own."""
    if text in _SEGMENTS:
        return _SEGMENTS[text]
    result: _Segment | None = None
    plain = _plain_table(text)
    if plain is not None:
        _SEGMENTS[text] = result = _segment_of(plain)
        return result
    try:
        data = tomllib.loads(text)
    except (tomllib.TOMLDecodeError, RecursionError):
        data = {}
    tasks = data.get("tasks")
    if list(data) == ["tasks"] and isinstance(tasks, list) and len(tasks) == 1:
        result = _segment_of(tasks[0])
    _SEGMENTS[text] = result
    return result


def _valid_graph(
    entries: tuple[PlanEntry, ...],
    changed: list[_Segment],
    dropped: tuple[PlanEntry, ...],
    previous: Plan | None,
) -> dict[str, PlanEntry] | None:
    """The entries by id when ids are unique, parents name entries and no parents form a
    cycle; else None. Given the previous (valid) plan, only what changed needs checking."""
    if previous is None or previous.layout is None:
        by_id = {e.plan_id: e for e in entries if e.plan_id is not None}
        if len(by_id) != sum(1 for e in entries if e.plan_id is not None):
            return None
        if any(e.record.parent is not None and e.record.parent not in by_id for e in entries):
            return None
        return by_id if not _has_cycle(by_id, by_id.values()) else None
    by_id = dict(previous.by_id)
    for entry in dropped:
        if entry.plan_id is not None:
            del by_id[entry.plan_id]
    added = [segment.entry for segment in changed]
    for entry in added:
        if entry.plan_id is not None:
            if entry.plan_id in by_id:
                return None
            by_id[entry.plan_id] = entry
    if any(e.record.parent is not None and e.record.parent not in by_id for e in added):
        return None
    gone = {e.plan_id for e in dropped if e.plan_id is not None} - by_id.keys()
    if gone and any(e.record.parent in gone for e in entries):
        return None
    # A new cycle runs through an entry whose text changed: the previous plan had none.
    return by_id if not _has_cycle(by_id, added) else None


def _has_cycle(by_id: Mapping[str, PlanEntry], starts: Iterable[PlanEntry]) -> bool:
    """True when following parents from one of `starts` comes round again."""
    finished: set[str] = set()
    for entry in starts:
        path: set[str] = set()
        node = entry.plan_id
        while node is not None and node not in finished:
            if node in path:
                return True
            path.add(node)
            parent = by_id.get(node)
            node = parent.record.parent if parent is not None else None
        finished |= path
    return False


def _common_prefix(a: str, b: str) -> int:
    """Length of the longest common prefix: slices compared a block at a time, shrinking the
    block near the first difference (C-speed compares, a few dozen of them for 1.5 MB)."""
    size, length, block = min(len(a), len(b)), 0, 4096
    while block >= 1:
        while length + block <= size and a[length : length + block] == b[length : length + block]:
            length += block
        block //= 4
    return length


def _common_suffix(a: str, b: str, limit: int) -> int:
    """Length of the longest common suffix, at most `limit`."""
    length, block = 0, 4096
    while block >= 1:
        while length + block <= limit and (
            a[len(a) - length - block : len(a) - length]
            == b[len(b) - length - block : len(b) - length]
        ):
            length += block
        block //= 4
    return length


def _syntax_problem(where: str, text: str, error: tomllib.TOMLDecodeError) -> str:
    message = str(error)
    position = _ERROR_POSITION.search(message)
    if position:
        line = int(position.group(1))
        message = f"{message[: position.start()]} (column {position.group(2)})"
    else:  # "(at end of document)": the last line
        line = max(1, len(text.rstrip("\n").split("\n")))
    return f"{where}:{line}: invalid TOML: {message}"


def quoted(value: str, limit: int = 80) -> str:
    """A value for a one-line message: quoted, control characters escaped, long ones cut."""
    shown = value if len(value) <= limit else value[:limit] + "…"
    return json.dumps(shown, ensure_ascii=False)


def _toml_type(value: object) -> str:
    if isinstance(value, str):
        return "a string"
    if isinstance(value, dict):
        return "a table"
    return _TOML_TYPES.get(type(value), "a date/time")


class _Locator:
    """Line numbers (1-based) of headers and keys, found by scanning lines, only as needed."""

    def __init__(self, lines: list[str]) -> None:
        self.lines = lines
        self.headers = _tasks_headers(lines)
        self.trusted = True

    def expect_entries(self, count: int) -> None:
        # More or fewer headers than entries (inline arrays, headers inside multi-line
        # strings): the scan cannot be trusted, so point at the `tasks` key instead.
        self.trusted = len(self.headers) == count

    def first_line(self, pattern: re.Pattern[str]) -> int:
        return next((n + 1 for n, line in enumerate(self.lines) if pattern.match(line)), 1)

    def tasks_line(self) -> int:
        return self.first_line(_TASKS_KEY)

    def meta_line(self) -> int:
        return self.first_line(_META_KEY)

    def entry_line(self, index: int) -> int:
        return self.headers[index] + 1 if self.trusted else self.tasks_line()

    def key_line(self, index: int, key: str) -> int:
        if not self.trusted:
            return self.tasks_line()
        start = self.headers[index]
        stop = self.headers[index + 1] if index + 1 < len(self.headers) else len(self.lines)
        pattern = re.compile(rf"""\s*(?:{key}|"{key}"|'{key}')\s*=""")
        return next(
            (n + 1 for n in range(start + 1, stop) if pattern.match(self.lines[n])), start + 1
        )


def _tasks_headers(lines: list[str]) -> list[int]:
    """0-based indexes of the `[[tasks]]` header lines."""
    return [n for n, line in enumerate(lines) if "[[" in line and _TASKS_HEADER.match(line)]


def _field_problems(raw: TomlData, index: int, locate: _Locator | None) -> list[tuple[int, str]]:
    """Wrong fields of entry `index`, with their lines (0 without a locator: only asking)."""
    problems: list[tuple[int, str]] = []

    def wrong(key: str, message: str) -> None:
        problems.append((locate.key_line(index, key) if locate else 0, message))

    description = raw.get("description")
    if description is None:
        problems.append((locate.entry_line(index) if locate else 0, "task has no description"))
    elif not isinstance(description, str):
        wrong("description", f"description must be a string (got {_toml_type(description)})")
    for key in ("id", "agent", "parent", "result"):
        if key in raw and not isinstance(raw[key], str):
            wrong(key, f"{key} must be a string (got {_toml_type(raw[key])})")
    if raw.get("id") == "":
        wrong("id", "id is empty")
    status = raw.get("status", "pending")
    if not isinstance(status, str):
        wrong("status", f"status must be a string (got {_toml_type(status)})")
    elif status not in STATES:
        wrong("status", f"invalid status {quoted(status)} (expected one of: {', '.join(STATES)})")
    tags = raw.get("tags", [])
    if not isinstance(tags, list) or not all(isinstance(tag, str) for tag in tags):
        wrong("tags", "tags must be an array of strings")
    elif plan_tags := [tag for tag in tags if tag.startswith(PLAN_TAG_PREFIX)]:
        # The plan tag is the entry's identity in Redis; ttsyncd writes it from `id`.
        wrong("tags", f"tag {quoted(plan_tags[0])} is reserved: ttsyncd tags tasks with plan:<id>")
    return problems


def _graph_problems(tables: list[tuple[int, TomlData]], locate: _Locator) -> list[tuple[int, str]]:
    """Duplicate ids, parents naming no entry, parent cycles."""
    problems: list[tuple[int, str]] = []
    first_index: dict[str, int] = {}
    for index, raw in tables:
        plan_id = raw.get("id")
        if not isinstance(plan_id, str):
            continue
        if plan_id in first_index:
            first_line = locate.key_line(first_index[plan_id], "id")
            problems.append(
                (
                    locate.key_line(index, "id"),
                    f"duplicate id {quoted(plan_id)} (first defined at line {first_line})",
                )
            )
        else:
            first_index[plan_id] = index

    parent_of: dict[str, str] = {}
    for index, raw in tables:
        parent = raw.get("parent")
        if not isinstance(parent, str):
            continue
        if parent not in first_index:
            problems.append(
                (
                    locate.key_line(index, "parent"),
                    f"parent {quoted(parent)} is not the id of any task",
                )
            )
        elif isinstance(raw.get("id"), str) and first_index[raw["id"]] == index:
            parent_of[raw["id"]] = parent

    finished: set[str] = set()
    for start in first_index:  # file order, so each cycle is reported at its first entry
        path: list[str] = []
        node: str | None = start
        while node is not None and node not in finished:
            if node in path:
                cycle = path[path.index(node) :]
                first = min(range(len(cycle)), key=lambda n: first_index[cycle[n]])
                cycle = cycle[first:] + cycle[:first]  # start at its first entry in the file
                line = locate.key_line(first_index[cycle[0]], "parent")
                if len(cycle) == 1:
                    problems.append((line, f"task {quoted(node)} is its own parent"))
                else:
                    chain = " -> ".join(quoted(n) for n in [*cycle, cycle[0]])
                    problems.append((line, f"parent cycle: {chain}"))
                break
            path.append(node)
            node = parent_of.get(node)
        finished.update(path)
    return problems


def _record(raw: TomlData) -> Record:
    return Record(
        description=raw["description"],
        status=raw.get("status", "pending"),
        agent=raw.get("agent"),
        tags=tuple(raw.get("tags", ())),
        parent=raw.get("parent"),
        result=raw.get("result"),
    )


# ---------------------------------------------------------------------------- ids


def new_entry_id(description: str, taken: set[str]) -> str:
    ascii_text = unicodedata.normalize("NFKD", description).encode("ascii", "ignore").decode()
    slug = re.sub(r"[^a-z0-9]+", "-", ascii_text.lower()).strip("-")[:40].rstrip("-") or "task"
    candidate, suffix = slug, 1
    while candidate in taken:
        suffix += 1
        candidate = f"{slug}-{suffix}"
    return candidate


# ---------------------------------------------------------------------------- rendering


@dataclass(frozen=True)
class _Outcome:
    """The edits resolved against the plan: what happens to each original entry."""

    changes: dict[int, dict[str, Any]]  # index -> key -> new value (None: remove the key)
    removed: frozenset[int]
    added: tuple[TomlData, ...]  # new entries' data, keys in writing order


def render_plan(plan: Plan, edits: Sequence[FileEdit]) -> str:
    outcome = _resolve(plan, edits)
    if not (outcome.changes or outcome.removed or outcome.added):
        return plan.text
    expected = {
        index: _changed(_table(plan, index), changes) for index, changes in outcome.changes.items()
    }
    if plan.layout is not None:
        by_segments = _render_by_segments(plan, plan.layout, outcome, expected)
    else:  # a trailing table, a multi-line string: the line-based render may still apply
        by_segments = _render_all_lines(plan, _load_toml(plan.text), outcome, expected)
    if by_segments is not None:
        return by_segments
    return _render_whole_document(plan, _load_toml(plan.text), outcome, expected)


def _render_all_lines(
    plan: Plan, data: TomlData, outcome: _Outcome, expected: Mapping[int, TomlData]
) -> str | None:
    if "tasks" in data and not plan.entries:
        return None  # `tasks = []`: the new entry goes into that array
    text = plan.text
    return _render_window(
        text, range(len(plan.entries)), data.get("tasks", []), outcome, expected,
        _line_ending(text), at_end=True, ends_with_newline=text.endswith("\n"),
    )  # fmt: skip


def _table(plan: Plan, index: int) -> TomlData:
    """Entry `index` as tomllib parsed it."""
    if plan.layout is not None:
        return plan.layout.tables[index]
    table: TomlData = _load_toml(plan.text)["tasks"][index]
    return table


def _resolve(plan: Plan, edits: Sequence[FileEdit]) -> _Outcome:
    index_of = dict(plan.index_of)
    new_ids: dict[int, str] = {}
    records: dict[int, Record] = {}
    removed: set[int] = set()
    added: dict[str, Record] = {}

    def known(plan_id: str) -> None:
        if plan_id not in index_of and plan_id not in added:
            raise ValueError(f"no plan entry has the id {plan_id!r}")

    def unused(plan_id: str) -> None:
        if plan_id in index_of or plan_id in added:
            raise ValueError(f"the id {plan_id!r} is already in the plan")

    for edit in edits:
        match edit:
            case UpdateEntry(plan_id, record):
                known(plan_id)
                if plan_id in added:
                    added[plan_id] = record
                else:
                    records[index_of[plan_id]] = record
            case AddEntry(plan_id, record):
                unused(plan_id)
                added[plan_id] = record
            case RemoveEntry(plan_id):
                known(plan_id)
                if plan_id in added:
                    del added[plan_id]
                else:
                    removed.add(index_of.pop(plan_id))
            case AssignId(index, plan_id):
                has_id = not 0 <= index < len(plan.entries) or plan.entries[index].plan_id
                if has_id or index in new_ids or index in removed:
                    raise ValueError(f"no id-less plan entry at index {index}")
                unused(plan_id)
                new_ids[index] = plan_id
                index_of[plan_id] = index

    changes: dict[int, dict[str, Any]] = {}
    for index in sorted((records.keys() | new_ids.keys()) - removed):
        entry_changes: dict[str, Any] = {}
        if index in new_ids:
            entry_changes["id"] = new_ids[index]
        if index in records:
            entry_changes.update(
                _field_changes(_table(plan, index), records[index], plan.default_agent)
            )
        if entry_changes:
            changes[index] = entry_changes
    new_entries = tuple(
        _new_entry(plan_id, record, plan.default_agent) for plan_id, record in added.items()
    )
    return _Outcome(changes, frozenset(removed), new_entries)


def _field_changes(raw: TomlData, record: Record, default_agent: str | None) -> dict[str, Any]:
    """The keys to set or remove so that the entry holds `record`; unchanged keys untouched."""
    changes: dict[str, Any] = {}
    for key in FIELDS:
        desired = record.get(key)
        current = raw.get(key, _ABSENT_MEANS.get(key))
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


def _changed(raw: TomlData, changes: Mapping[str, Any]) -> TomlData:
    updated = {**raw, **changes}
    return {key: value for key, value in updated.items() if value is not None}


def _new_entry(plan_id: str, record: Record, default_agent: str | None) -> TomlData:
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


def _value_text(value: Any) -> str:
    """A string or a list of strings as TOML text. Written here, not with tomlkit.item():
    a pulled plan of 10,000 entries made 50,000 tomlkit items (~1 s) for a few quotes."""
    if isinstance(value, str):
        return _basic_string(value)
    if isinstance(value, list) and all(isinstance(item, str) for item in value):
        return "[" + ", ".join(_basic_string(item) for item in value) + "]"
    text: str = tomlkit.item(value).as_string()
    return text


_ESCAPES = {
    '"': '\\"',
    "\\": "\\\\",
    "\b": "\\b",
    "\t": "\\t",
    "\n": "\\n",
    "\f": "\\f",
    "\r": "\\r",
}
_NEEDS_ESCAPE = re.compile(r'["\\\x00-\x1f\x7f]')


def _basic_string(text: str) -> str:
    """A TOML basic string: quotes, backslashes and control characters escaped."""

    def escape(match: re.Match[str]) -> str:
        char = match.group()
        return _ESCAPES.get(char) or f"\\u{ord(char):04x}"

    return '"' + _NEEDS_ESCAPE.sub(escape, text) + '"'


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
) -> str | None:
    """The new text, or None when the file's layout does not split into segments safely.

    Only windows of lines around the edited entries are split and rendered (each from the
    header before the first edited entry to the header after the last one, which the
    blank-line rules look at); the text between windows is copied as it is."""
    text, starts, count = plan.text, layout.starts, len(layout.starts)
    carriage = _line_ending(text)  # new lines follow the file's line endings
    edited = sorted(outcome.changes.keys() | outcome.removed)
    if not count:  # no entries yet: the window is the whole text
        return _render_window(text, range(0), layout.tables, outcome, expected, carriage,
                              at_end=True, ends_with_newline=text.endswith("\n"),
                              trusted=True)  # fmt: skip
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
        rendered = _render_window(
            text[begin:finish],
            range(first, min(after, count - 1) + 1),
            layout.tables,
            outcome,
            expected,
            carriage,
            at_end=at_end,
            ends_with_newline=text.endswith("\n") if at_end else True,
            trusted=True,
        )
        if rendered is None:
            return None
        pieces += [text[cursor:begin], rendered]
        cursor = finish
    pieces.append(text[cursor:])
    return "".join(pieces)


def _render_window(
    text: str,
    entries: range,
    tables: Sequence[TomlData],
    outcome: _Outcome,
    expected: Mapping[int, TomlData],
    carriage: str,
    *,
    at_end: bool,
    ends_with_newline: bool,
    trusted: bool = False,
) -> str | None:
    """Render a window of lines holding these entries (the last one perhaps only its
    header); additions only at the end of the file. None when the window does not split as
    the parse did. `trusted`: the tables come from the plan's layout, whose parse already
    tied each segment's text to its table (else each is checked)."""
    lines = text.split("\n")
    if ends_with_newline:
        lines.pop()
    elif carriage and lines and not lines[-1].endswith("\r"):
        # The last line, which ends the file with no newline, takes the file's line ending
        # for as long as the render works; whatever line ends the result gives it back.
        lines[-1] += carriage
    segments = _split(lines)
    if len(segments) != len(entries):
        return None
    first = entries.start

    replacements: dict[int, list[str]] = {}
    for index in outcome.removed | outcome.changes.keys():
        if not first <= index < first + len(segments):
            continue
        segment = segments[index - first]
        segment_text = "\n".join(lines[segment.start : segment.end]) + "\n"
        if not trusted and not _holds(segment_text, tables[index]):
            return None
        if index in outcome.changes:
            indent = _body_indent(lines[segment.header + 1 : segment.end])
            new_text = _edit_segment(segment_text, outcome.changes[index], indent)
            if not _holds(new_text, expected[index]):
                return None
            replacements[index] = _with_line_endings(
                new_text.split("\n")[:-1], lines[segment.start : segment.end]
            )

    out: list[str] = []
    cursor = 0
    for position, segment in enumerate(segments):
        index = first + position
        out.extend(lines[cursor : segment.start])
        cursor = segment.end
        if index in replacements:
            out.extend(replacements[index])
        elif index not in outcome.removed:
            out.extend(lines[segment.start : segment.end])
        else:
            # Don't leave a double blank line (or trailing blank lines) where it was.
            after = segment.end
            while after < len(lines) and not lines[after].strip():
                after += 1
            if after == len(lines):
                while out and not out[-1].strip():
                    out.pop()
                cursor = after
            elif not out or not out[-1].strip():
                cursor = after
    out.extend(lines[cursor:])

    added = outcome.added if at_end else ()
    for entry in added:
        while out and not out[-1].strip():
            out.pop()
        if out:
            out.append(carriage)
        lines = ["[[tasks]]" + carriage]
        lines += [f"{key} = {_value_text(value)}{carriage}" for key, value in entry.items()]
        out.extend(lines)
        ends_with_newline = True
    if not out:
        return ""
    if not ends_with_newline and out[-1].endswith("\r"):
        out[-1] = out[-1][:-1]  # no line ending at the end, as the file had none
    return "\n".join(out) + ("\n" if ends_with_newline else "")


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


def _line_ending(text: str) -> str:
    """The carriage return new lines take: the file's own line ending, by majority (a file of
    LF lines with one CRLF inside a multi-line string is an LF file)."""
    return "\r" if 2 * text.count("\r\n") > text.count("\n") else ""


def _body_indent(body: list[str]) -> str:
    for line in body:
        stripped = line.lstrip()
        if stripped and not stripped.startswith("#"):
            return line[: len(line) - len(stripped)]
    return ""


def _edit_segment(segment_text: str, changes: Mapping[str, Any], indent: str) -> str:
    fields = {key: value for key, value in changes.items() if key != "id"}
    new_text = _edit_simple_lines(segment_text, fields, indent)
    if new_text is None:
        new_text = _edit_with_tomlkit(segment_text, fields, indent)
    if "id" not in changes:
        return new_text
    lines = new_text.split("\n")  # the id goes first
    header = next(n for n, line in enumerate(lines) if _TASKS_HEADER.match(line))
    lines.insert(header + 1, f"{indent}id = {_value_text(changes['id'])}")
    return "\n".join(lines)


def _edit_with_tomlkit(segment_text: str, changes: Mapping[str, Any], indent: str) -> str:
    document = tomlkit.parse(segment_text)
    table = document["tasks"][0]
    for key, value in changes.items():
        if value is None:
            del table[key]
        elif key in table:
            table[key] = value  # tomlkit keeps the key's place and inline comment
        else:
            item = tomlkit.item(value)
            item.trivia.indent = indent
            table.append(key, item)
    return tomlkit.dumps(document)


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


def _edit_simple_lines(segment_text: str, changes: Mapping[str, Any], indent: str) -> str | None:
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
            appended.append(f"{indent}{key} = {_value_text(value)}")
            continue
        simple = _SIMPLE_LINE.fullmatch(lines[at])
        if simple is None:
            return None
        if value is None:
            removed.add(at)
        else:
            lines[at] = simple.group("lead") + _value_text(value) + simple.group("rest")
    kept = [line for number, line in enumerate(lines[:-1]) if number not in removed]
    return "\n".join([*kept, *appended, lines[-1]])


# --- the slow path: the whole document through tomlkit


def _render_whole_document(
    plan: Plan, data: TomlData, outcome: _Outcome, expected: Mapping[int, TomlData]
) -> str:
    # tomlkit glues an appended table onto a last line that lacks its newline.
    document = tomlkit.parse(plan.text if plan.text.endswith("\n") else plan.text + "\n")
    tasks: Any = document.get("tasks")  # an AoT, or an Array of inline tables
    for index, changes in outcome.changes.items():
        _edit_table(tasks[index], changes)
    for index in sorted(outcome.removed, reverse=True):
        _remove_table(document, tasks, index)
    if outcome.removed and tasks is not None and not len(tasks) and not outcome.added:
        del document["tasks"]  # the last entry went: no `tasks = []` in its place
        tasks = None
    for entry in outcome.added:
        if tasks is None:
            tasks = tomlkit.aot()
            document.append("tasks", tasks)
        new_table = tomlkit.inline_table() if isinstance(tasks, Array) else tomlkit.table()
        new_table.update(entry)
        if isinstance(new_table, Table) and document.body:
            new_table.trivia.indent = "\n"  # one blank line before it, as on the fast path
        tasks.append(new_table)
    new_text = tomlkit.dumps(document)
    if outcome.removed:
        new_text = _blank_lines_as_in(plan.text, new_text)

    raw_entries: list[TomlData] = data.get("tasks", [])
    intended = {
        **data,
        "tasks": [
            expected.get(index, raw)
            for index, raw in enumerate(raw_entries)
            if index not in outcome.removed
        ]
        + list(outcome.added),
    }
    try:
        produced = tomllib.loads(new_text)
    except tomllib.TOMLDecodeError:
        produced = {}
    if not _same({"tasks": [], **produced}, {"tasks": [], **intended}):
        raise PlanError([f"{plan.path}:1: cannot apply the edits to this file's layout"])
    return new_text


def _blank_lines_as_in(original: str, text: str) -> str:
    """`text` (tomlkit's, after removing entries) with no run of blank lines longer than the
    original's longest, and no more at its start or end than the original had: a removed
    entry leaves no double blank line behind. (The check after it holds every value.)"""
    old = original.split("\n")
    longest = max([1, *_blank_runs(old)])
    old_lead, old_tail = _edge_blanks(old)
    out: list[str] = []
    run = 0
    for line in text.split("\n"):
        run = run + 1 if not line.strip() else 0
        if run <= longest:
            out.append(line)
    lead, tail = _edge_blanks(out)
    del out[: max(0, lead - old_lead)]
    del out[len(out) - max(0, tail - old_tail) :]
    return "\n".join(out)


def _blank_runs(lines: list[str]) -> list[int]:
    """At each line, how many blank lines end there (0 on a line that is not blank)."""
    runs = [0]
    for line in lines:
        runs.append(runs[-1] + 1 if not line.strip() else 0)
    return runs


def _edge_blanks(lines: list[str]) -> tuple[int, int]:
    """How many blank lines (a final "" for the last newline included) start and end them."""
    lead = next((n for n, line in enumerate(lines) if line.strip()), len(lines))
    tail = next((n for n, line in enumerate(reversed(lines)) if line.strip()), len(lines))
    return lead, tail


def _edit_table(table: Table | InlineTable, changes: Mapping[str, Any]) -> None:
    body = table.value.body
    for key, value in changes.items():
        if value is None:
            del table[key]
        elif key in table or not body:
            table[key] = value
        elif key == "id":
            _insert_first(table, key, value)
        elif isinstance(table, InlineTable):
            table[key] = value
        else:
            # Plain assignment would land after trailing comments that visually belong to
            # the next [[tasks]] (a tomlkit pitfall): insert after the last key instead.
            last_key = max(
                (n for n, (k, item) in enumerate(body) if k and _is_value(item)),
                default=len(body) - 1,
            )
            if last_key + 1 < len(body):
                table.value._insert_at(last_key + 1, key, value)
            else:
                table[key] = value


def _insert_first(table: Table | InlineTable, key: str, value: Any) -> None:
    body = table.value.body
    position, first = next((n, item) for n, (k, item) in enumerate(body) if k is not None)
    table.value._insert_at(position, key, value)
    body[position][1].trivia.indent = first.trivia.indent
    if isinstance(table, InlineTable):
        first.trivia.indent = " "  # after the comma tomlkit puts between them


def _is_value(item: Item) -> bool:
    return not isinstance(item, (Table, AoT, Comment, Whitespace))


def _remove_table(document: tomlkit.TOMLDocument, tasks: AoT | Array, index: int) -> None:
    if not isinstance(tasks, AoT):
        del tasks[index]
        return
    # tomlkit keeps the comments above a [[tasks]] header at the end of the previous table,
    # so deleting a table would take the next entry's comments with it: carry them over.
    carried = _trailing_trivia(_last_container(tasks[index]))
    carried_text = "".join(item.as_string() for _, item in carried)
    if index > 0:
        previous = _last_container(tasks[index - 1])
        own_comments = _trailing_trivia(previous)
        while own_comments and isinstance(own_comments.pop()[1], Comment):
            previous.body.pop()  # the removed entry's own comments go with it
    del tasks[index]
    if index < len(tasks):
        # A table's indent is rendered right before its `[[tasks]]`: where its comments were.
        tasks[index].trivia.indent = carried_text + tasks[index].trivia.indent
    elif index > 0:
        _last_container(tasks[index - 1]).body.extend(carried)
    elif carried_text:
        document.add(Whitespace(carried_text))  # verbatim text; Whitespace renders as is


def _last_container(table: Table) -> Container:
    """The container whose end is rendered last for this table (its last sub-table's)."""
    container = table.value
    while container.body and isinstance(container.body[-1][1], Table):
        container = container.body[-1][1].value
    return container


def _trailing_trivia(container: Container) -> list[tuple[Any, Item]]:
    body = container.body
    start = len(body)
    while start > 0 and isinstance(body[start - 1][1], (Comment, Whitespace)):
        start -= 1
    return body[start:]


# ---------------------------------------------------------------------------- writing


def current_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return b""


def write_atomic(path: Path, text: str, expected_current: str | None) -> bool:
    # Follow a symlink: replace its target, not the link.
    target = Path(os.path.realpath(path))
    try:
        status: os.stat_result | None = target.stat()
    except FileNotFoundError:
        status = None
    descriptor, temp_name = tempfile.mkstemp(
        dir=target.parent, prefix=f".{target.name}.", suffix=".tmp"
    )
    try:
        with os.fdopen(descriptor, "wb") as temp:
            temp.write(text.encode("utf-8"))
            temp.flush()
            os.fchmod(temp.fileno(), status.st_mode & 0o7777 if status else 0o644)
            if status and (status.st_uid, status.st_gid) != (os.geteuid(), os.getegid()):
                # A daemon running as root must not leave the user a root-owned file.
                with contextlib.suppress(PermissionError):
                    os.fchown(temp.fileno(), status.st_uid, status.st_gid)
            os.fsync(temp.fileno())
        # Compare as late as possible, with the new text already on disk: the window in
        # which someone's save could land between the check and the rename is a read long.
        if expected_current is not None and current_bytes(target) != expected_current.encode():
            Path(temp_name).unlink(missing_ok=True)
            return False  # changed since it was read: the caller re-merges
        os.replace(temp_name, target)
    except BaseException:
        Path(temp_name).unlink(missing_ok=True)
        raise
    directory = os.open(target.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)
    return True
