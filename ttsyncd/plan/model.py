"""The plan as data: the file's entries (Plan, PlanEntry, where they are: Layout), the edits a
pull makes to it (UpdateEntry, AddEntry, RemoveEntry, AssignId) as resolved against a plan
(_Outcome), and new entries' ids.
"""

from __future__ import annotations

import functools
import operator
import re
import unicodedata
import weakref
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast, overload

from ttsyncd.model import Record
from ttsyncd.plan.grammar import TomlData, _tasks_headers, loads


@dataclass(frozen=True, slots=True)  # (slots: 40 bytes less for each entry of a big plan)
class PlanEntry:
    """One `[[tasks]]` entry. It holds no position, so an entry whose text did not change is
    the same object in every parse of the plan (a daemon tells what changed by identity)."""

    plan_id: str | None  # the entry's `id`, None when missing
    record: Record  # `agent` is the entry's own key, not the [meta] default


@dataclass(frozen=True)
class Layout:
    """Where the entries are in the text, for plans that split into `[[tasks]]` segments:
    what lets a re-read parse, and a pull rewrite, only the entries that changed."""

    text: str  # the plan's text (the same string)
    starts: tuple[int, ...]  # offset of each entry's `[[tasks]]` header line

    def segment(self, index: int) -> str:
        """Entry `index`'s text, from its header to the next one."""
        return _segment(self.text, self.starts, index)

    @functools.cached_property
    def tables(self) -> SegmentTables:
        return SegmentTables(self.text, self.starts)


def _segment(text: str, starts: tuple[int, ...], index: int) -> str:
    end = starts[index + 1] if index + 1 < len(starts) else len(text)
    return text[starts[index] : end]


class SegmentTables(Sequence[TomlData]):
    """Each entry's table as TOML reads it, parsed from its segment when asked for. A pull
    asks for the few entries it edits; keeping all 10,000 parsed tables of a big plan would
    hold ~0.6 KB per entry for nothing. Every segment parsed on its own when the plan was
    read, so it parses again (the callers must not mutate what they get)."""

    def __init__(self, text: str, starts: tuple[int, ...]) -> None:
        # (not the Layout itself: a cycle would keep each old plan, text and all, alive
        # until a full garbage collection)
        self.text, self.starts = text, starts
        self.parsed: dict[int, TomlData] = {}

    def __len__(self) -> int:
        return len(self.starts)

    @overload
    def __getitem__(self, index: int) -> TomlData: ...
    @overload
    def __getitem__(self, index: slice) -> Sequence[TomlData]: ...
    def __getitem__(self, index: int | slice) -> TomlData | Sequence[TomlData]:
        if isinstance(index, slice):
            return [self[n] for n in range(len(self))[index]]
        index = range(len(self))[index]  # (negative indexes, and IndexError)
        if index not in self.parsed:
            table: TomlData = loads(_segment(self.text, self.starts, index))["tasks"][0]
            self.parsed[index] = table
        return self.parsed[index]


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
        # (built at C speed: a pull into 100,000 entries asks for it once, ~3 ms, not ~10)
        ids = map(operator.attrgetter("plan_id"), self.entries)
        index_of: dict[str | None, int] = dict(zip(ids, range(len(self.entries)), strict=True))
        index_of.pop(None, None)  # entries with no id yet
        return cast(dict[str, int], index_of)

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
        return _tasks_headers(self.text.split("\n"))[index] + 1


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


@dataclass(frozen=True)
class _Outcome:
    """The edits resolved against the plan: what happens to each original entry."""

    changes: dict[int, dict[str, Any]]  # index -> key -> new value (None: remove the key)
    removed: frozenset[int]
    added: tuple[TomlData, ...]  # new entries' data, keys in writing order


def new_entry_id(description: str, taken: set[str]) -> str:
    ascii_text = unicodedata.normalize("NFKD", description).encode("ascii", "ignore").decode()
    slug = re.sub(r"[^a-z0-9]+", "-", ascii_text.lower()).strip("-")[:40].rstrip("-") or "task"
    candidate, suffix = slug, 1
    while candidate in taken:
        suffix += 1
        candidate = f"{slug}-{suffix}"
    return candidate
