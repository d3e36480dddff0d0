"""The task as both sides see it, in plan terms (plan ids and agent names, not uuids)."""

from __future__ import annotations

from collections.abc import Hashable, Iterable
from dataclasses import dataclass, fields, replace
from typing import Final, TypeVar

# Every state tinytown's Redis can hold; the file accepts all of them.
STATES: Final = ("pending", "assigned", "running", "completed", "failed", "cancelled")
TERMINAL_STATES: Final = frozenset({"completed", "failed", "cancelled"})

# The synced fields of a task, in the order a new tasks.toml entry lists them.
FIELDS: Final = ("description", "agent", "status", "tags", "parent", "result")

# A field's value: a string, a tuple of tags, or None for "unset".
Value = str | tuple[str, ...] | None


@dataclass(frozen=True, slots=True)
class Record:
    """The synced content of one task. `agent` is an agent name, `parent` a plan id."""

    description: str
    status: str = "pending"
    agent: str | None = None
    tags: tuple[str, ...] = ()
    parent: str | None = None
    result: str | None = None

    def get(self, field: str) -> Value:
        value: Value = getattr(self, field)
        return value

    def with_fields(self, changes: dict[str, Value]) -> Record:
        return replace(self, **changes)  # type: ignore[arg-type]

    def as_fields(self) -> dict[str, Value]:
        # (spelled out, not through dataclasses.fields: a cold push calls it once per task)
        return {
            "description": self.description,
            "status": self.status,
            "agent": self.agent,
            "tags": self.tags,
            "parent": self.parent,
            "result": self.result,
        }


# Each slot's own setter, in the order Record declares its fields.
_SET_DESCRIPTION, _SET_STATUS, _SET_AGENT, _SET_TAGS, _SET_PARENT, _SET_RESULT = (
    getattr(Record, field.name).__set__ for field in fields(Record)
)


def new_record(
    description: str,
    status: str,
    agent: str | None,
    tags: tuple[str, ...],
    parent: str | None,
    result: str | None,
) -> Record:
    """Record(...) in a third of the time: the frozen dataclass's __init__ sets each slot
    through object.__setattr__, this through the slot itself. For the cold read, which builds
    one per entry (10,000 entries: 5 ms instead of 12 ms); the values are as Record takes them."""
    record: Record = object.__new__(Record)
    _SET_DESCRIPTION(record, description)
    _SET_STATUS(record, status)
    _SET_AGENT(record, agent)
    _SET_TAGS(record, tags)
    _SET_PARENT(record, parent)
    _SET_RESULT(record, result)
    return record


T = TypeVar("T", bound=Hashable)
# What a town's tasks repeat, one object each for the life of the process (each table is
# bounded), for the plan's entries and the mirror's hashes alike: tags and the tuples of them
# ("backend", "api"), statuses and agent names.
SHARED_LIMIT: Final = 10_000
_TAGS: dict[str, str] = {}
_TAG_TUPLES: dict[tuple[str, ...], tuple[str, ...]] = {}
_WORDS: dict[str, str] = {}
SHORT_VALUE: Final = (
    40  # characters: longer values (a description), and tuples with one, are not kept for sharing
)


def shared(table: dict[T, T], value: T) -> T:
    """The one object of `table` equal to `value` (added while the table has room)."""
    kept = table.get(value)
    if kept is not None:
        return kept
    if len(table) < SHARED_LIMIT:
        table[value] = value
    return value


def shared_tags(tags: Iterable[str]) -> tuple[str, ...]:
    kept = tuple(shared(_TAGS, tag) if len(tag) <= SHORT_VALUE else tag for tag in tags)
    if len(kept) <= 8 and all(len(tag) <= SHORT_VALUE for tag in kept):
        return shared(_TAG_TUPLES, kept)
    return kept


def shared_word(word: str | None) -> str | None:
    """A short value many tasks hold (a status, an agent name) as one object."""
    if word is None or len(word) > SHORT_VALUE:
        return word
    return shared(_WORDS, word)
