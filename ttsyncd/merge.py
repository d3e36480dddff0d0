"""The three-way merge: a pure function of (base, file view, Redis view, options).

Modelled on Mutagen's reconcile: per task and per field, compare each side with the base (the
last state both sides agreed on). A change on one side is copied to the other; the same change
on both is already agreed; different changes are a conflict the policy settles, recorded with
both values. A sync may run in one direction only (push or pull): a change that belongs to the
other direction waits, and the base keeps the old value for it, so nothing is lost or recorded
twice.

Stale writes (a write from an old copy that would undo the other side's newer change) are
recognised by ttsyncd/stale.py, whose invariants S1-S3 this merge relies on: their fields are
set aside, recorded, and the newer values kept.

Tasks an agent holds. A task assigned or running in Redis whose entry left the file is not
deleted (H1): its entry comes back and the refusal is recorded (kind "held"). `--force` or
`resolve --take file` deletes it.
"""

from __future__ import annotations

from collections.abc import Mapping
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field, replace
from typing import Final

from ttsyncd.base import (
    EMPTY_BASE,
    SIDES,
    BaseTask,
    Change,
    OldCopy,
    Side,
    other_side,
)
from ttsyncd.model import FIELDS, Record, Value
from ttsyncd.stale import created_by_redis_only, stale_fields

# Under the default `owner` policy the file owns the planning fields and Redis the execution ones.
FILE_OWNED: Final = frozenset({"description", "tags", "parent", "agent"})
# States in which an agent holds a task: its entry leaving the file does not delete it (H1).
HELD_STATES: Final = frozenset({"assigned", "running"})
ENTRY: Final = "entry"  # the `field` of a record about the whole task (held, stale deletion)


@dataclass(frozen=True)
class Conflict:
    """Two sides' values for one field, and what became of them. `kind`: "conflict" (both
    sides changed it), "stale" (a write from an old copy, set aside) or "held" (an entry
    removed from the file while an agent holds its task); for the last two, `from_side` is
    the side whose write was set aside."""

    plan_id: str
    field: str
    base: Value
    file: Value
    redis: Value
    winner: Side | None  # None: left for the user (`manual` policy)
    kind: str = "conflict"
    from_side: Side | None = None


# plan id -> (the side whose write it was, field -> value both sides must take): `resolve`
# applying a set-aside write on purpose.
Pins = Mapping[str, tuple[Side, Mapping[str, Value]]]


@dataclass(frozen=True)
class Options:
    """How to merge."""

    policy: str = "owner"  # owner | file | redis | manual
    deletions: str = "delete"  # delete | cancel | keep: what a removal from the file does in Redis
    push: bool = True  # apply file-side changes to Redis
    pull: bool = True  # apply Redis-side changes to the file
    force: bool = False  # make the target equal the source (one direction only)
    stale: bool = True  # set stale writes aside (S1); False applies them like any change
    pins: Pins = field(default_factory=dict)  # `resolve`: values chosen on purpose


@dataclass(frozen=True, slots=True)  # one per task a sync writes
class Upsert:
    plan_id: str
    record: Record
    created: bool


@dataclass(frozen=True, slots=True)  # one per task a sync writes
class Delete:
    plan_id: str
    mode: str = "delete"  # for Redis: delete | cancel | keep


Op = Upsert | Delete


@dataclass
class MergeResult:
    file_ops: list[Op] = field(default_factory=list)
    redis_ops: list[Op] = field(default_factory=list)
    base: dict[str, BaseTask] = field(default_factory=dict)
    settled: list[Conflict] = field(default_factory=list)  # conflicts the policy settled now
    pending: dict[str, list[Conflict]] = field(default_factory=dict)  # left for the user
    new_pending: list[Conflict] = field(default_factory=list)  # pending ones not known before
    # Stale and held writes set aside, whose newer values this sync restores (recorded once,
    # by the sync that restores them) ...
    set_aside: list[Conflict] = field(default_factory=list)
    # ... and those a one-way sync saw but leaves for the other direction to restore.
    set_aside_later: list[Conflict] = field(default_factory=list)
    # Tasks with changes this sync's direction left for the other one, owed to it (as
    # SyncReport.owed_push / owed_pull): a one-way sync that saw them tells its caller, so the
    # other direction is not forgotten.
    owed_push: set[str] = field(default_factory=set)
    owed_pull: set[str] = field(default_factory=set)

    def wait_for(self, direction: Side, plan_id: str) -> None:
        """`direction` names the side whose change waits: "file" waits for a push (owed_push)."""
        (self.owed_push if direction == "file" else self.owed_pull).add(plan_id)

    def can_write(self, options: Options, side: Side) -> bool:
        return options.pull if side == "file" else options.push


def winner_for(policy: str, field_name: str) -> Side | None:
    if policy == "owner":
        return "file" if field_name in FILE_OWNED else "redis"
    if policy == "file":
        return "file"
    if policy == "redis":
        return "redis"
    return None


def merge(
    base: Mapping[str, BaseTask],
    file: Mapping[str, Record],
    redis: Mapping[str, Record],
    options: Options,
    known_pending: Mapping[str, list[Conflict]] | None = None,
) -> MergeResult:
    result = MergeResult()
    known_pending = known_pending or {}
    for plan_id in sorted(set(base) | set(file) | set(redis)):
        merge_task(
            plan_id, base.get(plan_id), file.get(plan_id), redis.get(plan_id), options, result
        )
    for plan_id, conflicts in result.pending.items():
        already = known_pending.get(plan_id, [])
        result.new_pending.extend(c for c in conflicts if c not in already)
    return result


def merge_task(
    plan_id: str,
    base: BaseTask | None,
    file: Record | None,
    redis: Record | None,
    options: Options,
    result: MergeResult,
) -> None:
    if base is not None and base.tombstone:
        if redis is None:
            return  # the task left Redis too: forget the tombstone
        if file is None:
            result.base[plan_id] = base  # still tombstoned: the Redis task stays out of the file
            return
        base = None  # re-added to the file: start over as a task both sides hold
    if options.force:
        force_task(plan_id, base, file, redis, options, result)
    elif file is None and redis is None:
        return
    elif file is not None and redis is not None:
        merge_fields(plan_id, base, file, redis, options, result)
    elif base is None:
        copy_new(plan_id, file, redis, options, result)
    else:
        merge_deletion(plan_id, base, file, redis, options, result)


def copy_new(
    plan_id: str, file: Record | None, redis: Record | None, options: Options, result: MergeResult
) -> None:
    """A task on one side only, never agreed on: copy it to the other side."""
    source: Side = "file" if file is not None else "redis"
    record = file if file is not None else redis
    assert record is not None
    target = other_side(source)
    if not result.can_write(options, target):
        result.wait_for(source, plan_id)
        return
    ops = result.redis_ops if target == "redis" else result.file_ops
    ops.append(Upsert(plan_id, record, created=True))
    # Only a task Redis created needs its creation remembered (a stale file without it is
    # older than the task); the file's own tasks keep no history until they change.
    creation = [Change(source, {}, created=True)] if source == "redis" else []
    result.base[plan_id] = EMPTY_BASE.after(record, creation)


def merge_deletion(
    plan_id: str, base: BaseTask, file: Record | None, redis: Record | None, options: Options,
    result: MergeResult,
) -> None:  # fmt: skip
    """Deleted on one side: delete on the other, unless the other side modified it (then it
    comes back), an agent holds it (H1), or the deletion is stale (S1)."""
    result.base[plan_id] = base  # unless settled below, it waits for the other direction
    remaining: Side = "redis" if file is None else "file"
    record = redis if file is None else file
    assert record is not None
    if not unchanged(base, record):  # modified on the side that has it: it comes back
        if not result.can_write(options, other_side(remaining)):
            result.wait_for(remaining, plan_id)
            return
        ops = result.file_ops if remaining == "redis" else result.redis_ops
        ops.append(Upsert(plan_id, record, created=True))
        agreed = base.fields
        changed = {f: agreed.get(f) for f in FIELDS if agreed.get(f) != record.get(f)}
        result.base[plan_id] = base.after(record, [Change(remaining, changed)])
        return
    if remaining == "redis":
        refusal = deletion_refused(plan_id, base, record, options)
        if refusal is not None:  # the entry goes back into the file; Redis is left as it is
            if options.pull:
                result.set_aside.append(refusal)
                result.file_ops.append(Upsert(plan_id, record, created=True))
            else:
                result.set_aside_later.append(refusal)
                result.wait_for("redis", plan_id)
            return
    if not result.can_write(options, remaining):
        result.wait_for(other_side(remaining), plan_id)
    elif remaining == "file":
        result.file_ops.append(Delete(plan_id))
        del result.base[plan_id]
    else:
        result.redis_ops.append(Delete(plan_id, options.deletions))
        if options.deletions == "delete":
            del result.base[plan_id]
        else:
            result.base[plan_id] = replace(base, tombstone=True)


def deletion_refused(
    plan_id: str, base: BaseTask, redis: Record, options: Options
) -> Conflict | None:
    """Why the removal of an entry from the file must not reach Redis (H1, S1), if it must not."""
    if options.deletions == "keep":
        return None  # Redis is left alone anyway
    if redis.status in HELD_STATES:
        kind = "held"
    elif options.stale and created_by_redis_only(base):
        kind = "stale"  # the file's copy is older than the task
    else:
        return None
    return Conflict(plan_id, ENTRY, base=None, file=None, redis=redis.status, winner="redis",
                    kind=kind, from_side="file")  # fmt: skip


def unchanged(base: BaseTask, record: Record) -> bool:
    return not base.unknown and base.agreed == record


def merge_fields(
    plan_id: str, base: BaseTask | None, file: Record, redis: Record, options: Options,
    result: MergeResult,
) -> None:  # fmt: skip
    pin_side, pins = options.pins.get(plan_id, ("file", {}))
    base_fields: Mapping[str, Value] = base.fields if base else {}
    records: dict[Side, Record] = {"file": file, "redis": redis}
    stale: dict[Side, frozenset[str]] = {"file": frozenset(), "redis": frozenset()}
    if options.stale and base is not None:
        stale = {side: stale_fields(base, records[side], side) for side in SIDES}
    set_aside = stale_records(plan_id, base_fields, records, stale)
    if any(not result.can_write(options, c.from_side or "file") for c in set_aside):
        # This direction cannot put the newer values back on the stale side: the whole task
        # waits for the direction that can (S3), and meanwhile nothing of the stale write is
        # taken, its new values either, which would make it look like a later copy.
        result.set_aside_later.extend(set_aside)
        for c in set_aside:
            result.wait_for(other_side(c.from_side or "file"), plan_id)
        if base is not None:
            result.base[plan_id] = base
        return
    fields = FieldMerge(plan_id, options, result)
    for name in FIELDS:
        base_value = base_fields.get(name)
        if name in pins:
            fields.pinned(name, pins[name], base_value, pin_side)
            continue
        # A stale value counts as unchanged: the newer one stands (S1).
        file_value = base_value if name in stale["file"] else file.get(name)
        redis_value = base_value if name in stale["redis"] else redis.get(name)
        fields.merge(
            name, name in base_fields, base_value, {"file": file_value, "redis": redis_value}
        )
    if fields.open_conflicts:
        # `manual`: the whole task stays unsynced until the user resolves it.
        result.pending[plan_id] = fields.open_conflicts
        if base is not None:
            result.base[plan_id] = base
        return
    result.set_aside.extend(set_aside)
    result.settled.extend(fields.settled)
    result.base[plan_id] = agreed_base(
        base, fields.agreed, records, stale, fields.came_from, fields.waiting
    )
    # Each side gets every agreed value it does not hold; a field whose change waits for the
    # other direction stays as it is on both sides.
    decided = {n: v for n, v in fields.agreed.items() if n not in fields.waiting}
    to_file = {n: v for n, v in decided.items() if file.get(n) != v} if options.pull else {}
    to_redis = {n: v for n, v in decided.items() if redis.get(n) != v} if options.push else {}
    if to_file:
        result.file_ops.append(Upsert(plan_id, file.with_fields(to_file), created=False))
    if to_redis:
        result.redis_ops.append(Upsert(plan_id, redis.with_fields(to_redis), created=False))


class FieldMerge:
    """One task's fields merged one at a time (merge_fields): the values both sides take, which
    side each change came from, the conflicts, and the fields whose change waits for the other
    direction."""

    def __init__(self, plan_id: str, options: Options, result: MergeResult) -> None:
        self.plan_id, self.options, self.result = plan_id, options, result
        self.agreed: dict[str, Value] = {}
        self.came_from: dict[Side, dict[str, Value]] = {"file": {}, "redis": {}}  # -> before
        self.settled: list[Conflict] = []
        self.open_conflicts: list[Conflict] = []
        self.waiting: set[str] = set()

    def pinned(self, name: str, value: Value, base_value: Value, side: Side) -> None:
        """`resolve` chose `value`, from `side`'s write."""
        self.agreed[name] = value
        if value != base_value:
            self.came_from[side][name] = base_value

    def merge(self, name: str, known: bool, base_value: Value, values: dict[Side, Value]) -> None:
        """`known`: the base has the field (a task both sides agreed on before)."""
        if values["file"] == values["redis"]:
            self.agreed[name] = values["file"]
        elif known and values["file"] == base_value:
            self.changed_on("redis", name, base_value, values["redis"])
        elif known and values["redis"] == base_value:
            self.changed_on("file", name, base_value, values["file"])
        else:
            self.conflict(name, known, base_value, values)

    def changed_on(self, side: Side, name: str, base_value: Value, value: Value) -> None:
        """Changed on `side` only: copied to the other, if this sync goes that way."""
        if self.options.pull if side == "redis" else self.options.push:
            self.agreed[name] = value
            self.came_from[side][name] = base_value
        else:
            self.agreed[name] = base_value
            self.waiting.add(name)
            self.result.wait_for(side, self.plan_id)

    def conflict(self, name: str, known: bool, base_value: Value, values: dict[Side, Value]
                 ) -> None:  # fmt: skip
        """Changed on both sides to different values: settled by the policy, or left open."""
        winner = winner_for(self.options.policy, name)
        conflict = Conflict(self.plan_id, name, base_value, values["file"], values["redis"], winner)
        if winner is None:
            self.open_conflicts.append(conflict)
        elif self.result.can_write(self.options, other_side(winner)):
            self.agreed[name] = values[winner]
            self.came_from[winner][name] = base_value
            self.settled.append(conflict)
        else:
            self.result.wait_for(winner, self.plan_id)  # settled by the other direction, later
            self.waiting.add(name)
            if known:
                self.agreed[name] = base_value


def stale_records(
    plan_id: str,
    base_fields: Mapping[str, Value],
    records: Mapping[Side, Record],
    stale: Mapping[Side, frozenset[str]],
) -> list[Conflict]:
    """One record per field of a stale write set aside, with the stale and the kept value."""
    return [
        Conflict(
            plan_id,
            name,
            base_fields.get(name),
            records["file"].get(name) if side == "file" else base_fields.get(name),
            records["redis"].get(name) if side == "redis" else base_fields.get(name),
            winner=other_side(side),
            kind="stale",
            from_side=side,
        )
        for side in SIDES
        for name in FIELDS
        if name in stale[side]
    ]


def agreed_base(
    base: BaseTask | None,
    agreed: Mapping[str, Value],
    records: Mapping[Side, Record],
    stale: Mapping[Side, frozenset[str]],
    came_from: Mapping[Side, Mapping[str, Value]],
    waiting: AbstractSet[str],
) -> BaseTask:
    """The task's new base: the agreed values, and in its history what each side changed
    (`came_from`: field -> value before), which of the other side's fields each change
    overtook, and the old copy a partly stale write came from (S1)."""
    base_fields = base.fields if base else {}
    moved = {side: moved_fields(base_fields, records[side], stale[side]) for side in SIDES}
    # Which side's changes come from a writer of an old copy: this write's, if partly stale;
    # or an earlier one's whose changes waited for this direction.
    earlier = base.old_copy if base is not None else None
    old_copy = {
        side: OldCopy(side, {f: records[side].get(f) for f in stale[side]})
        if stale[side]
        else (earlier if earlier is not None and earlier.side == side else None)
        for side in SIDES
    }
    changes = [
        Change(side, came_from[side], overtaken=moved[other_side(side)], old_copy=old_copy[side])
        for side in SIDES
        if came_from[side]  # (a change of no field is not kept anyway: BaseTask.after)
    ]
    # An old copy whose other changes still wait for the other direction is remembered.
    waiting_copy = next(
        (old_copy[side] for side in SIDES if old_copy[side] and moved[side] & waiting), None
    )
    return (base or EMPTY_BASE).after(agreed, changes, waiting_copy, like=records.values())


def moved_fields(
    base_fields: Mapping[str, Value], record: Record, stale: frozenset[str]
) -> frozenset[str]:
    """The fields a side changed since the base, stale ones left out."""
    return frozenset(f for f in FIELDS if f not in stale and record.get(f) != base_fields.get(f))


def force_task(
    plan_id: str, base: BaseTask | None, file: Record | None, redis: Record | None,
    options: Options, result: MergeResult,
) -> None:  # fmt: skip
    """`--force`: the target becomes equal to the source, deletions included."""
    source, target = (file, redis) if options.push else (redis, file)
    source_side: Side = "file" if options.push else "redis"
    ops = result.redis_ops if options.push else result.file_ops
    if source is None:
        if target is not None:
            mode = options.deletions if options.push else "delete"
            ops.append(Delete(plan_id, mode))
            if mode != "delete":
                result.base[plan_id] = BaseTask(target, tombstone=True)
        return
    if source != target:
        ops.append(Upsert(plan_id, source, created=target is None))
    before: Mapping[str, Value] = base.fields if base else {}
    changed = {f: before.get(f) for f in FIELDS if f in before and before[f] != source.get(f)}
    created = base is None and source_side == "redis"  # as in copy_new
    result.base[plan_id] = (base or EMPTY_BASE).after(
        source, [Change(source_side, changed, created=created)]
    )
