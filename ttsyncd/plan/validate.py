"""What is wrong with a plan, with file:line: an entry's fields, the ids and parents across
entries (duplicates, unknown parents, cycles), and the line scan that finds where.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Iterator, Mapping

from ttsyncd.codec import PLAN_TAG_PREFIX
from ttsyncd.model import STATES
from ttsyncd.plan.grammar import TomlData, _tasks_headers
from ttsyncd.plan.model import PlanEntry

_TASKS_KEY = re.compile(r"""\s*\[*\s*(?:tasks|"tasks"|'tasks')\s*[\]=.]""")
_META_KEY = re.compile(r"""\s*\[*\s*(?:meta|"meta"|'meta')\s*[\]=.]""")
_TOML_TYPES = {bool: "a boolean", int: "an integer", float: "a float", list: "an array"}


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


_STATE_SET = frozenset(STATES)
_STRING_KEYS = ("id", "agent", "parent", "result")


def fields_look_valid(raw: TomlData) -> bool:
    """True only for an entry _field_problems finds nothing wrong with; False may be wrong
    (the caller then asks _field_problems). The cold read of 10,000 entries calls it once per
    entry: it is that function's common case in a few operations, with no list to build."""
    get = raw.get
    description, status, tags = get("description"), get("status", "pending"), get("tags")
    if type(description) is not str or type(status) is not str or status not in _STATE_SET:
        return False
    for key in _STRING_KEYS:
        value = get(key)  # (TOML has no null: None is a missing key)
        if value is not None and type(value) is not str:
            return False
    if get("id") == "":
        return False
    if tags is None:
        return True
    if type(tags) is not list:
        return False
    try:
        joined = "\n".join(tags)  # raises on a tag that is not a string
    except TypeError:
        return False
    # A tag holding "\nplan:" only makes this say False, which the exact check corrects.
    return not joined.startswith(PLAN_TAG_PREFIX) and f"\n{PLAN_TAG_PREFIX}" not in joined


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

    # Each cycle is reported at its first entry in the file, starting from it.
    for cycle in parent_cycles(parent_of.get, first_index):
        first = min(range(len(cycle)), key=lambda n: first_index[cycle[n]])
        cycle = cycle[first:] + cycle[:first]
        line = locate.key_line(first_index[cycle[0]], "parent")
        if len(cycle) == 1:
            problems.append((line, f"task {quoted(cycle[0])} is its own parent"))
        else:
            chain = " -> ".join(quoted(n) for n in [*cycle, cycle[0]])
            problems.append((line, f"parent cycle: {chain}"))
    return problems


def parent_cycles(
    parent_of: Callable[[str], str | None], starts: Iterable[str]
) -> Iterator[list[str]]:
    """Every parent cycle reached by following parents from `starts`, each once, as its ids
    in parent order from where the walk came into it. The one cycle finder: the plan's checks
    and the Redis view's cut use it. Lazy, so a caller may cut a cycle before the next walk.

    Each walk stops at an id an earlier walk went through (what lies beyond is known), at an
    id with no parent (`parent_of` gives None, also for an unknown id), or at an id already on
    its own path: a cycle. So every id is walked through once in all."""
    finished: set[str] = set()
    for start in starts:
        path: dict[str, int] = {}  # id -> its place on the path
        node: str | None = start
        while node is not None and node not in finished:
            if node in path:
                yield list(path)[path[node] :]
                break
            path[node] = len(path)
            node = parent_of(node)
        finished.update(path)


def _has_cycle(by_id: Mapping[str, PlanEntry], starts: Iterable[PlanEntry]) -> bool:
    """True when following parents from one of `starts` comes round again."""

    def parent_of(plan_id: str) -> str | None:
        entry = by_id.get(plan_id)
        return entry.record.parent if entry is not None else None

    ids = (entry.plan_id for entry in starts if entry.plan_id is not None)
    return next(parent_cycles(parent_of, ids), None) is not None
