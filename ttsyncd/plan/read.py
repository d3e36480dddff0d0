"""Reading the plan file: text -> Plan. A whole tomllib parse words every problem with
file:line; the fast path parses one `[[tasks]]` segment at a time, only the segments not
seen before (the incremental re-read), and owns the cache of those parses.
"""

from __future__ import annotations

import bisect
import re
import tomllib
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ttsyncd.errors import PlanError
from ttsyncd.model import Record
from ttsyncd.plan.grammar import (
    _BLANK_OR_COMMENT,
    _PLAIN_HEADER,
    _SIMPLE_LINE,
    _STRINGS,
    TomlData,
    _load_toml,
    _unquoted,
)
from ttsyncd.plan.model import Layout, Plan, PlanEntry
from ttsyncd.plan.validate import _field_problems, _graph_problems, _has_cycle, _Locator, _toml_type

_DEFAULT_AGENT_KEY = re.compile(r"""\s*(?:default_agent|"default_agent"|'default_agent')\s*=""")
_ERROR_POSITION = re.compile(r"\s*\(at line (\d+), column (\d+)\)$")
# git's conflict markers: <<<<<<< ours, ||||||| base (diff3), =======, >>>>>>> theirs.
_CONFLICT_MARKER = re.compile(r"^(<{7}|\|{7}|={7}|>{7})(?:[ \t].*)?\r?$", re.MULTILINE)


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
        problem = _merge_conflict(where, text) or _syntax_problem(where, text, error)
        raise PlanError([problem]) from None
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


# A valid parse prunes the cache to its own plan (keep_only_segments_of); this bounds it
# when saves keep failing to parse, which never reach that prune.
_CACHE_LIMIT = 50_000


class SegmentCache:
    """Parsed segments and preambles by their exact text (bounded: cleared when it grows past
    _CACHE_LIMIT, pruned to the current plan's segments by a valid parse)."""

    def __init__(self) -> None:
        self.segments: dict[str, _Segment | None] = {}
        self.preambles: dict[str, tuple[str | None] | None] = {}

    def clear(self) -> None:
        self.segments.clear()
        self.preambles.clear()

    def keep_only_segments_of(self, text: str, starts: Sequence[int]) -> None:
        """Forget the parses of segments this plan no longer holds: every save of a
        long-running daemon's plan leaves one behind, so the cache would grow without end."""
        ends = [*starts[1:], len(text)] if starts else []  # a plan with no entries holds none
        current = {text[start:end] for start, end in zip(starts, ends, strict=True)}
        for segment_text in [t for t in self.segments if t not in current]:
            del self.segments[segment_text]
        self.preambles.clear()


# The reader's one cache (a process parses one town's plan).
_CACHE = SegmentCache()


def forget_parses() -> None:
    """Drop every memoised parse, as a new process starts (the benchmark's cold runs)."""
    _CACHE.clear()
    _load_toml.cache_clear()


def _parse_by_segments(path: Path, text: str, previous: Plan | None) -> Plan | None:
    """The plan, from segments parsed on their own; None when the text is not a plain list of
    valid segments (the whole parse decides, and words any problem): a multi-line string could
    hide a header, a table after the first `[[tasks]]` (say `[meta]` at the end,
    `[tasks.sub]`) belongs to no single segment."""
    if '"""' in text or "'''" in text:
        return None
    if len(_CACHE.segments) > _CACHE_LIMIT:
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
    fresh = [t for t in texts if t not in _CACHE.segments]
    for segment_text in fresh:
        plain = _plain_table(segment_text)
        if plain is not None:
            _CACHE.segments[segment_text] = _segment_of(plain)
    hard = sum(1 for t in fresh if t not in _CACHE.segments)  # left for tomllib
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
    if len(_CACHE.segments) > 2 * count + 1_000:
        _CACHE.keep_only_segments_of(text, starts)
    return plan


def _preamble(text: str) -> tuple[str | None] | None:
    """(`[meta] default_agent`,) of the text before the first entry; None if it is not valid
    on its own or defines `tasks`."""
    if text in _CACHE.preambles:
        return _CACHE.preambles[text]
    result: tuple[str | None] | None = None
    try:
        data = tomllib.loads(text)
    except (tomllib.TOMLDecodeError, RecursionError):
        data = {"tasks": None}
    meta = data.get("meta", {})
    agent = meta.get("default_agent") if isinstance(meta, dict) else 0
    if "tasks" not in data and (agent is None or isinstance(agent, str)):
        result = (agent,)
    _CACHE.preambles[text] = result
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
        if segment_text not in _CACHE.segments:
            _CACHE.segments[segment_text] = _segment_of(table)
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


def _segment_of(table: object) -> _Segment | None:
    if isinstance(table, dict) and not _field_problems(table, 0, None):
        return _Segment(table, PlanEntry(table.get("id"), _record(table)))
    return None


def _segment(text: str) -> _Segment | None:
    """One entry's segment parsed; None if it is not exactly one valid entry on its own."""
    if text in _CACHE.segments:
        return _CACHE.segments[text]
    result: _Segment | None = None
    plain = _plain_table(text)
    if plain is not None:
        _CACHE.segments[text] = result = _segment_of(plain)
        return result
    try:
        data = tomllib.loads(text)
    except (tomllib.TOMLDecodeError, RecursionError):
        data = {}
    tasks = data.get("tasks")
    if list(data) == ["tasks"] and isinstance(tasks, list) and len(tasks) == 1:
        result = _segment_of(tasks[0])
    _CACHE.segments[text] = result
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


def _merge_conflict(where: str, text: str) -> str | None:
    """The first git conflict marker line of a text that does not parse, in words (a lone
    `=======` is no conflict: it may be a line of a multi-line string)."""
    markers = list(_CONFLICT_MARKER.finditer(text))
    if not any(m.group(1)[0] in "<>" for m in markers):
        return None
    line = text.count("\n", 0, markers[0].start()) + 1
    return f"{where}:{line}: unresolved merge conflict ({markers[0].group(1)})"


def _syntax_problem(where: str, text: str, error: tomllib.TOMLDecodeError) -> str:
    message = str(error)
    position = _ERROR_POSITION.search(message)
    if position:
        line = int(position.group(1))
        message = f"{message[: position.start()]} (column {position.group(2)})"
    else:  # "(at end of document)": the last line
        line = max(1, len(text.rstrip("\n").split("\n")))
    return f"{where}:{line}: invalid TOML: {message}"


def _record(raw: TomlData) -> Record:
    return Record(
        description=raw["description"],
        status=raw.get("status", "pending"),
        agent=raw.get("agent"),
        tags=tuple(raw.get("tags", ())),
        parent=raw.get("parent"),
        result=raw.get("result"),
    )
