"""The task as both sides see it, in plan terms (plan ids and agent names, not uuids)."""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Final

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
        return {f.name: getattr(self, f.name) for f in fields(self)}
