"""Reading the plan: text -> Plan, no I/O (reader.py reads the file). The fast path splits the text
into `[[tasks]]` segments and parses only those whose text changed since the plan read before
(the incremental re-read); anything it cannot split or that is not valid is parsed whole, which
words every problem with file:line.
"""

from __future__ import annotations

import bisect
import re
import tomllib
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from ttsyncd.errors import PlanError
from ttsyncd.model import Record, new_record, shared_tags, shared_word
from ttsyncd.plan.grammar import TomlData, _load_toml, loads
from ttsyncd.plan.model import Layout, Plan, PlanEntry
from ttsyncd.plan.validate import (
    _field_problems,
    _graph_problems,
    _has_cycle,
    _Locator,
    _toml_type,
    fields_look_valid,
    parent_cycles,
)

_DEFAULT_AGENT_KEY = re.compile(r"""\s*(?:default_agent|"default_agent"|'default_agent')\s*=""")
_ERROR_POSITION = re.compile(r"\s*\(at line (\d+), column (\d+)\)$")
# git's conflict markers: <<<<<<< ours, ||||||| base (diff3), =======, >>>>>>> theirs.
_CONFLICT_MARKER = re.compile(r"^(<{7}|\|{7}|={7}|>{7})(?:[ \t].*)?\r?$", re.MULTILINE)


def forget_parses() -> None:
    """Drop the memoised whole parse, as a new process starts (the benchmark's cold runs)."""
    _load_toml.cache_clear()


def parse_plan(
    path: Path, text: str, previous: Plan | None = None, kept: tuple[int, int] | None = None
) -> Plan:
    """The plan in `text`. `previous`, a plan read before, lets the parse skip every entry
    whose text did not change; `kept` (h, t), when known (a render of `previous`): the first
    h and last t characters of `text` are `previous.text`'s. A plan with any problem is
    parsed whole, for exact messages."""
    fast = _parse_by_segments(path, text, previous, kept)
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

# A segment is the text from one `[[tasks]]` header to the next. Parsing only the segments whose
# text changed is what keeps a daemon's re-read of a 10,000-entry file (1.2 MB) at a few
# milliseconds, where a whole parse takes 15 ms (toml_rs; tomllib 210 ms, tomlkit's ~3 s).
_HEADER_LINE = re.compile(
    r"""^[ \t]*\[\[[ \t]*(?:tasks|"tasks"|'tasks')[ \t]*\]\][ \t\r]*(?:#.*)?$""", re.M
)
# A line opening a table (or an array of tables), found by its newline: a literal the regex
# engine searches for at C speed, ~6x faster than `^` in MULTILINE mode.
_TABLE_LINE_AFTER_NEWLINE = re.compile(r"\n[ \t]*\[")
_TABLE_LINE = re.compile(r"[ \t]*\[")

# Entries parsed in one toml_rs call: few calls for a cold read, each chunk well under
# SAFE_OPENINGS for entries of ordinary size (one that is not goes to tomllib, still correct).
CHUNK_ENTRIES = 256


def _parse_by_segments(
    path: Path, text: str, previous: Plan | None, kept: tuple[int, int] | None
) -> Plan | None:
    """The plan, from segments parsed on their own; None when the text is not a plain list of
    valid segments (the whole parse decides, and words any problem): a multi-line string could
    hide a header, a table after the first `[[tasks]]` (say `[meta]` at the end,
    `[tasks.sub]`) belongs to no single segment."""
    if previous is None or previous.layout is None:
        if _multi_line_strings_in(text, 0, len(text)):
            return None
        starts = _headers_in(text, 0, len(text), after_first=False)
        return None if starts is None else _assemble(path, text, starts, _Reuse())
    # Only the lines between the common prefix and the common suffix of the two texts changed:
    # headers outside them are where they were (shifted by the change in length), and so are
    # the segments wholly before or after them.
    before, old_starts = previous.text, previous.layout.starts
    if kept is not None:  # (a render says what it kept: ~5 ms less at 100,000 entries)
        prefix, suffix = kept
    else:
        prefix = _common_prefix(before, text)
        suffix = _common_suffix(before, text, min(len(before), len(text)) - prefix)
    low = text.rfind("\n", 0, prefix) + 1
    high = text.find("\n", len(text) - suffix)
    high = len(text) if high < 0 else high + 1
    # (The previous text held no multi-line string, as it has a layout: one in the new text
    # holds a changed character, so it lies in the changed lines. ~16 ms less at 100,000
    # entries than a search of the whole text, whose quotes are everywhere.)
    if _multi_line_strings_in(text, low, high):
        return None
    shift = len(text) - len(before)
    first = bisect.bisect_left(old_starts, low)
    last = bisect.bisect_left(old_starts, high - shift)
    rescanned = _headers_in(text, low, high, after_first=first > 0)
    if rescanned is None:
        return None
    shifted = map(shift.__add__, old_starts[last:])  # (C speed: 100,000 starts in ~1 ms)
    starts = [*old_starts[:first], *rescanned, *shifted]
    # The segment just before the changed lines runs up to the next header: read it again.
    reuse = _Reuse(previous, head=max(0, first - 1), tail=len(old_starts) - last)
    return _assemble(path, text, starts, reuse)


def _multi_line_strings_in(text: str, low: int, high: int) -> bool:
    """Whether text[low:high] holds a multi-line string's quotes, which could hide a header."""
    return text.find('"""', low, high) >= 0 or text.find("'''", low, high) >= 0


@dataclass(frozen=True)
class _Reuse:
    """The previous plan's first `head` and last `tail` entries, whose text is unchanged."""

    previous: Plan | None = None
    head: int = 0
    tail: int = 0

    def window(self) -> dict[str, PlanEntry]:
        """The previous plan's other segments, by text: an entry whose text is unchanged keeps
        its PlanEntry object (how a daemon tells it did not change) and needs no parse."""
        previous = self.previous
        if previous is None or previous.layout is None:
            return {}
        layout = previous.layout
        return {
            layout.segment(index): entry
            for index, entry in enumerate(
                previous.entries[self.head : len(layout.starts) - self.tail], self.head
            )
        }


def _headers_in(text: str, low: int, high: int, *, after_first: bool) -> list[int] | None:
    """Offsets of the `[[tasks]]` header lines in text[low:high] (`low` starts a line); None
    when another table header follows the first `[[tasks]]` (`after_first`: the first one is
    before `low`)."""
    lines = [match.start() + 1 for match in _TABLE_LINE_AFTER_NEWLINE.finditer(text, low, high)]
    if low == 0 and _TABLE_LINE.match(text):
        lines.insert(0, 0)
    elif low > 0 and _TABLE_LINE.match(text, low):  # (its newline is before `low`)
        lines.insert(0, low)
    headers: list[int] = []
    for line in lines:
        # (the common spelling first: a third of the time of the regex, 10,000 times)
        if text.startswith(("[[tasks]]\n", "[[tasks]]\r\n"), line) or _HEADER_LINE.match(
            text, line
        ):
            headers.append(line)
        elif headers or after_first:
            return None
    return headers


def _assemble(path: Path, text: str, starts: list[int], reuse: _Reuse) -> Plan | None:
    previous, count = reuse.previous, len(starts)
    default_agent = _preamble(text[: starts[0]] if starts else text, previous)
    if default_agent is None:
        return None
    head, stop = reuse.head, count - reuse.tail
    layout = Layout(text, tuple(starts))
    known = reuse.window()
    if known:
        middle = [known.get(layout.segment(index)) for index in range(head, stop)]
        missing = [head + n for n, entry in enumerate(middle) if entry is None]
        for index, entry in zip(missing, _parse_segments(text, starts, missing), strict=True):
            middle[index - head] = entry
    else:
        middle = _parse_segments(text, starts, range(head, stop))
    if None in middle:
        return None
    fresh = tuple(cast(list[PlanEntry], middle))
    old_entries = previous.entries if previous else ()
    tail = len(old_entries) - reuse.tail
    entries = old_entries[:head] + fresh + old_entries[tail:]
    by_id = _valid_graph(entries, fresh, old_entries[head:tail], previous)
    if by_id is None:
        return None
    derived_from = None
    if previous is not None:
        differ = fresh + old_entries[head:tail]
        ids = frozenset(e.plan_id for e in differ if e.plan_id is not None)
        derived_from = (weakref.ref(previous), ids)
    plan = Plan(path, text, default_agent[0], entries, layout, derived_from)
    vars(plan)["by_id"] = by_id  # seeds the cached property: it was just built
    if previous is not None and "index_of" in vars(previous) and len(entries) == len(old_entries):
        index_of = _taken(previous, "index_of")
        vars(plan)["index_of"] = _index_of(index_of, old_entries[head:tail], fresh, head)
    return plan


def _taken(plan: Plan, name: str) -> dict[str, Any]:
    """The plan's cached map `name` (`by_id`, `index_of`), taken over by the plan read
    after it, which changes it in place: a copy costs ~10-20 ms at 100,000 entries, on every
    sync of a big town. `plan` builds its own again from its entries if it is asked for it
    later (a sync that merges again after a save, a scope that compares every entry): slow
    then, never wrong. (Plans are read and their maps used by one sync at a time.)"""
    value: dict[str, Any] = getattr(plan, name)
    del vars(plan)[name]
    return value


def _index_of(
    index_of: dict[str, int],
    dropped: tuple[PlanEntry, ...],
    added: tuple[PlanEntry, ...],
    at: int,
) -> dict[str, int]:
    """Plan.index_of of a plan whose entries at `at` onwards, `dropped` before, are now
    `added` (as many, so every other entry keeps its index), made from the previous plan's,
    `index_of`, in place (`_taken`): a pull into a big town asks for it on every sync, and
    building it anew costs ~35 ms at 100,000 entries. (Ids are unique in a valid plan: no
    entry outside the window holds a window's id.)"""
    for entry in dropped:
        if entry.plan_id is not None:
            del index_of[entry.plan_id]
    for offset, entry in enumerate(added):
        if entry.plan_id is not None:
            index_of[entry.plan_id] = at + offset
    return index_of


def _preamble(text: str, previous: Plan | None) -> tuple[str | None] | None:
    """(`[meta] default_agent`,) of the text before the first entry; None if it is not valid
    on its own or defines `tasks`."""
    if previous is not None and previous.layout is not None:
        starts = previous.layout.starts
        if previous.text[: starts[0] if starts else len(previous.text)] == text:
            return (previous.default_agent,)
    try:
        data = loads(text)
    except (tomllib.TOMLDecodeError, RecursionError):
        return None
    meta = data.get("meta", {})
    agent = meta.get("default_agent") if isinstance(meta, dict) else 0
    if "tasks" not in data and (agent is None or isinstance(agent, str)):
        return (agent,)
    return None


def _parse_segments(text: str, starts: list[int], indexes: Sequence[int]) -> list[PlanEntry | None]:
    """The entries of the segments at `indexes` (ascending), or None where a segment is not one
    valid entry on its own. Runs of neighbouring segments are parsed together,
    CHUNK_ENTRIES at a time: a chunk holding anything but exactly its entries fails whole."""
    parsed: list[PlanEntry | None] = []
    position = 0
    while position < len(indexes):
        run = 1
        while (
            run < CHUNK_ENTRIES
            and position + run < len(indexes)
            and indexes[position + run] == indexes[position] + run
        ):
            run += 1
        first, last = indexes[position], indexes[position] + run - 1
        end = starts[last + 1] if last + 1 < len(starts) else len(text)
        try:
            data = loads(text[starts[first] : end])
        except (tomllib.TOMLDecodeError, RecursionError):
            data = {}
        tables = data.get("tasks")
        if list(data) == ["tasks"] and isinstance(tables, list) and len(tables) == run:
            parsed.extend(map(_entry_of, tables))
        else:
            parsed.extend([None] * run)
        position += run
    return parsed


def _entry_of(table: object) -> PlanEntry | None:
    if not isinstance(table, dict):
        return None
    if fields_look_valid(table) or not _field_problems(table, 0, None):
        return PlanEntry(table.get("id"), _record(table))
    return None


def _valid_graph(
    entries: tuple[PlanEntry, ...],
    added: tuple[PlanEntry, ...],
    dropped: tuple[PlanEntry, ...],
    previous: Plan | None,
) -> dict[str, PlanEntry] | None:
    """The entries by id when ids are unique, parents name entries and no parents form a
    cycle; else None. Given the previous (valid) plan, only what changed needs checking."""
    if previous is None or previous.layout is None:
        return _valid_graph_of_all(entries)
    by_id: dict[str, PlanEntry] = _taken(previous, "by_id")  # (changed in place from here)
    for entry in dropped:
        if entry.plan_id is not None:
            del by_id[entry.plan_id]
    for entry in added:
        if entry.plan_id is not None:
            if entry.plan_id in by_id:
                return None
            by_id[entry.plan_id] = entry
    if any(e.record.parent is not None and e.record.parent not in by_id for e in added):
        return None
    # (not `set - by_id.keys()`, which builds a set of every id: ~5 ms at 100,000 entries)
    gone = {e.plan_id for e in dropped if e.plan_id is not None and e.plan_id not in by_id}
    if gone and any(e.record.parent in gone for e in entries):
        return None
    # A new cycle runs through an entry whose text changed: the previous plan had none.
    return by_id if not _has_cycle(by_id, added) else None


def _valid_graph_of_all(entries: tuple[PlanEntry, ...]) -> dict[str, PlanEntry] | None:
    """_valid_graph with nothing known before (a cold read): every entry is checked."""
    by_id: dict[str, PlanEntry] = {}
    for entry in entries:
        if entry.plan_id is not None:
            if entry.plan_id in by_id:
                return None
            by_id[entry.plan_id] = entry
    parent_of = {
        entry.plan_id: entry.record.parent
        for entry in entries
        if entry.record.parent is not None and entry.plan_id is not None
    }
    if any(entry.record.parent not in by_id for entry in entries if entry.record.parent):
        return None
    return by_id if next(parent_cycles(parent_of.get, parent_of), None) is None else None


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
    get = raw.get  # (positional arguments: a cold read builds 10,000 of these)
    tags = get("tags")
    # What many entries repeat (a status, an agent, tags) is one object each: the base and
    # the mirror share the same ones (model.shared_*), ~140 bytes per entry in a big town.
    return new_record(
        raw["description"],
        shared_word(get("status", "pending")),  # type: ignore[arg-type]
        shared_word(get("agent")),
        shared_tags(tags) if tags else (),
        get("parent"),
        get("result"),
    )
