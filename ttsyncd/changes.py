"""What a sync changed, task by task: the data behind a dry run's lines (`describe`), the
daemon's log and `ttsyncd monitor`. Pure; one small object per task written, so every sync
can keep them."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from ttsyncd.base import Side
from ttsyncd.merge import ENTRY, Conflict, Delete, MergeResult, Op
from ttsyncd.model import FIELDS, Record, Value

# What a sync did to a task on the side it wrote ("stop syncing": a removal from the file under
# `deletions = "keep"`, Redis keeps the task).
Action = Literal["create", "update", "delete", "cancel", "stop syncing"]
DELETE_ACTIONS: dict[str, Action] = {"delete": "delete", "cancel": "cancel", "keep": "stop syncing"}


@dataclass(frozen=True, slots=True)
class TaskChange:
    """One task changed on one side (`side`: the side written): its record there before (None:
    new there) and after (None: deleted, cancelled or no longer synced)."""

    side: Side
    plan_id: str
    action: Action
    old: Record | None
    new: Record | None

    def fields(self) -> dict[str, tuple[Value, Value]]:
        """Each field it sets, (old, new): an update's changed fields; a creation's fields
        that hold a value (old None); nothing for a deletion."""
        if self.new is None:
            return {}
        old, new = self.old, self.new
        if old is None:
            return {
                name: (None, value) for name in FIELDS if (value := new.get(name)) not in (None, ())
            }
        return {
            name: (old.get(name), new.get(name))
            for name in FIELDS
            if old.get(name) != new.get(name)
        }

    @property
    def description(self) -> str | None:
        record = self.new or self.old
        return record.description if record is not None else None

    def line(self) -> str:
        """In words, as a dry run lists it: `redis: update api: status "pending" → "running"`."""
        head = f"{self.side}: {self.action} {self.plan_id}"
        if self.action in DELETE_ACTIONS.values():
            return head + (f" ({shown(self.old.description)})" if self.old is not None else "")
        if self.action == "create":
            values = ", ".join(f"{name} {shown(new)}" for name, (_, new) in self.fields().items())
            return f"{head}: {values}"
        changed = ", ".join(
            f"{name} {shown(old)} → {shown(new)}" for name, (old, new) in self.fields().items()
        )
        return head + (f": {changed}" if changed else "")

    def to_json(self) -> dict[str, Any]:
        return {
            "side": self.side,
            "plan_id": self.plan_id,
            "action": self.action,
            "description": self.description,
            "fields": {name: [old, new] for name, (old, new) in self.fields().items()},
        }


def task_changes(
    merged: MergeResult, before: Mapping[Side, Mapping[str, Record]]
) -> list[TaskChange]:
    """Every task `merged` writes, Redis's first. `before`: each side's records as the merge
    read them."""
    changes: list[TaskChange] = []
    sides: tuple[tuple[Side, list[Op]], ...] = (
        ("redis", merged.redis_ops), ("file", merged.file_ops),
    )  # fmt: skip
    for side, ops in sides:
        records = before[side]
        for op in ops:
            old = records.get(op.plan_id)
            if isinstance(op, Delete):
                changes.append(TaskChange(side, op.plan_id, DELETE_ACTIONS[op.mode], old, None))
            else:
                action: Action = "create" if op.created or old is None else "update"
                changes.append(TaskChange(side, op.plan_id, action, old, op.record))
    return changes


def shown(value: Value) -> str:
    """A field's value as the file writes it: "text", ["a", "b"]; (none) for unset."""
    if value is None:
        return "(none)"
    return json.dumps(value if isinstance(value, str) else list(value), ensure_ascii=False)


def describe(merged: MergeResult, before: Mapping[Side, Mapping[str, Record]]) -> list[str]:
    """One line per change, for --dry-run and `check`: the task, and each field it sets with
    its value (an update: old → new). `before`: each side's records as the merge read them."""
    lines = [change.line() for change in task_changes(merged, before)]
    lines.extend(
        f"conflict {c.plan_id}.{c.field}: file={c.file!r} redis={c.redis!r} -> {c.winner}"
        for c in merged.settled
    )
    lines.extend(
        f"conflict {c.plan_id}.{c.field}: file={c.file!r} redis={c.redis!r} -> left for you"
        for conflicts in merged.pending.values()
        for c in conflicts
    )
    lines.extend(set_aside_line(c) for c in [*merged.set_aside, *merged.set_aside_later])
    return lines


def set_aside_line(c: Conflict) -> str:
    """One stale or held write set aside, in words."""
    if c.kind == "held":
        return (
            f"held {c.plan_id}: removed from the file while {c.redis} in Redis; not deleted, "
            f"its entry goes back (`ttsyncd resolve {c.plan_id} --take file` deletes it)"
        )
    if c.field == ENTRY:
        return (
            f"stale {c.plan_id}: removed from the file by a copy older than the task; not "
            f"deleted (`ttsyncd resolve {c.plan_id} --take file` deletes it)"
        )
    stale, kept = (c.file, c.redis) if c.from_side == "file" else (c.redis, c.file)
    return (
        f"stale {c.plan_id}.{c.field}: the {c.from_side}'s {stale!r} undoes the newer "
        f"{kept!r}; kept {kept!r} (`ttsyncd resolve {c.plan_id} --take {c.from_side}` "
        "applies it)"
    )
