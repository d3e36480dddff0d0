"""What the merge remembers of each task: the values both sides last agreed on and the recent
history of changes the stale-write rules read (ttsyncd/stale.py, S1-S3), kept small (a daemon
holds the whole town's): a Record rather than a dict per task, and the small values and field
sets that histories repeat shared, one object each.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Final, Literal

from ttsyncd.model import FIELDS, SHORT_VALUE, Record, Value, new_record, shared

Side = Literal["file", "redis"]
SIDES: Final[tuple[Side, Side]] = ("file", "redis")
# Changes a task's history keeps, newest last: enough for an editor buffer or a branch several
# agent steps behind (assign, start, complete, ...).
HISTORY_LIMIT: Final = 32


def other_side(side: Side) -> Side:
    return "redis" if side == "file" else "file"


@dataclass(frozen=True, slots=True)
class OldCopy:
    """A write found partly stale: its side, and the stale values set aside. The same writer
    writing again from the same copy still holds them (an agent's next step, an editor
    buffer saved again)."""

    side: Side
    values: Mapping[str, Value]


@dataclass(frozen=True, slots=True)  # one per task and change: kept small
class Change:
    """One side's change to a task, as a sync carried it to the other side: the fields it
    changed and the values they held before. `before` is empty for the task's creation."""

    side: Side
    before: Mapping[str, Value]
    created: bool = False
    # The other side's fields that had changed too when this change was taken (in the same
    # sync, or waiting for the other direction): on that side they came first, though the
    # history lists them later (S1 allows either order for them).
    overtaken: frozenset[str] = frozenset()
    # Taken from a write that was partly stale: its writer works from an old copy, and its
    # next write from that copy (known by the stale values) holds this change too (S1).
    old_copy: OldCopy | None = None

    def __post_init__(self) -> None:
        # A task's history keeps up to HISTORY_LIMIT of these, and most say the same few
        # things (a status, an agent; which fields were overtaken): equal ones share one
        # object (a dict of one field and a frozenset cost ~220 bytes each).
        object.__setattr__(self, "before", shared_values(self.before))
        object.__setattr__(self, "overtaken", shared_fields(self.overtaken))


# Sets of field names and small field values, one object each (bounded).
_FIELD_SETS: dict[frozenset[str], frozenset[str]] = {}
_VALUES: dict[tuple[tuple[str, Value], ...], Mapping[str, Value]] = {}
SHARED_VALUES_LIMIT: Final = 4096


def shared_fields(names: frozenset[str]) -> frozenset[str]:
    """One frozenset for equal sets of field names (while the table has room)."""
    return shared(_FIELD_SETS, names)


def shared_values(values: Mapping[str, Value]) -> Mapping[str, Value]:
    """One mapping for equal small `values` (none longer than SHORT_VALUE, none a tuple), while
    the table has room; else `values` itself. The callers never change what they pass."""
    if len(values) > 2 or not all(
        v is None or (isinstance(v, str) and len(v) <= SHORT_VALUE) for v in values.values()
    ):
        return values
    key = tuple(values.items())
    kept = _VALUES.get(key)
    if kept is None:
        kept = values
        if len(_VALUES) < SHARED_VALUES_LIMIT:
            _VALUES[key] = values
    return kept


ALL_AGREED: Final[frozenset[str]] = frozenset()  # no field unknown (one set for every task)


@dataclass(frozen=True, slots=True)  # one per task: kept small (a daemon holds the whole town's)
class BaseTask:
    """What both sides last agreed on for one task: `agreed`, the values, and `unknown`, the
    fields never agreed (a first sync that left a conflict waiting), which count as changed on
    both sides. `fields` says the same as a mapping, without the unknown fields.

    The values are a Record, not a dict per task: a sync that agrees on a side's values keeps
    that side's Record itself (the plan entry's, mostly), which costs nothing more. Build one
    from a mapping with `BaseTask.of`."""

    agreed: Record
    unknown: frozenset[str] = ALL_AGREED  # an unknown field's value in `agreed` is a default
    tombstone: bool = False  # removed from the file under `cancel`/`keep`: ignore it in Redis
    history: tuple[Change, ...] = ()  # the latest changes, oldest first (S1)
    # The partly stale write whose other changes still wait for the other direction: they
    # are taken as from its old copy when they are.
    old_copy: OldCopy | None = None

    @classmethod
    def of(
        cls,
        fields: Mapping[str, Value],
        tombstone: bool = False,
        history: tuple[Change, ...] = (),
        old_copy: OldCopy | None = None,
    ) -> BaseTask:
        """The base of a task whose agreed values are `fields` (a field missing: never agreed)."""
        agreed, unknown = agreed_record(fields)
        return cls(agreed, unknown, tombstone, history, old_copy)

    @property
    def fields(self) -> dict[str, Value]:
        """The agreed values by field, the unknown ones left out. A new dict each time: read
        it once per use."""
        fields = self.agreed.as_fields()
        for name in self.unknown:
            del fields[name]
        return fields

    def after(
        self,
        agreed: Mapping[str, Value] | Record,
        changes: Iterable[Change],
        old_copy: OldCopy | None = None,
        like: Iterable[Record] = (),
    ) -> BaseTask:
        """The base once `changes` (already in `agreed`) are agreed on. `like`: records that
        may hold the agreed values, to keep instead of a record of their own."""
        new = tuple(c for c in changes if c.before or c.created)
        if isinstance(agreed, Record):
            record, unknown = agreed, ALL_AGREED
        else:
            record, unknown = agreed_record(agreed, like)
        same = record == self.agreed and unknown == self.unknown
        if not new and old_copy == self.old_copy and same:
            return self  # (a full sync of a big town keeps the base it loaded, not a copy)
        history = (*self.history, *new)
        return BaseTask(record, unknown, self.tombstone, history[-HISTORY_LIMIT:], old_copy)


# new_record's order of the fields
_RECORD_ORDER: Final = ("description", "status", "agent", "tags", "parent", "result")


def agreed_record(
    fields: Mapping[str, Value], like: Iterable[Record] = ()
) -> tuple[Record, frozenset[str]]:
    """`fields` as a Record (one of `like`, when it holds the same values) and the fields it
    does not hold, whose values in the Record are Record's defaults."""
    unknown = frozenset(name for name in FIELDS if name not in fields)
    if unknown:  # (rare: a first sync that left a conflict waiting)
        return Record("").with_fields({n: fields[n] for n in FIELDS if n in fields}), unknown
    record = new_record(*(fields[name] for name in _RECORD_ORDER))  # type: ignore[arg-type]
    return next((r for r in like if r == record), record), ALL_AGREED


EMPTY_BASE: Final = BaseTask.of({})  # a task never agreed on
