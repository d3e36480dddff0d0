"""The three-way merge: a pure function of (base, file view, Redis view, options).

Modelled on Mutagen's reconcile: per task and per field, compare each side with the base (the
last state both sides agreed on). A change on one side is copied to the other; the same change
on both is already agreed; different changes are a conflict the policy settles, recorded with
both values. A sync may run in one direction only (push or pull): a change that belongs to the
other direction waits, and the base keeps the old value for it, so nothing is lost or recorded
twice.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Final, Literal

from ttsyncd.model import FIELDS, Record, Value

Side = Literal["file", "redis"]

# Under the default `owner` policy the file owns the planning fields and Redis the execution ones.
FILE_OWNED: Final = frozenset({"description", "tags", "parent", "agent"})


@dataclass(frozen=True)
class BaseTask:
    """What both sides last agreed on for one task. A field missing from `fields` was never
    agreed (a first sync that left a conflict waiting), and counts as changed on both sides."""

    fields: Mapping[str, Value]
    tombstone: bool = False  # removed from the file under `cancel`/`keep`: ignore it in Redis


@dataclass(frozen=True)
class Conflict:
    plan_id: str
    field: str
    base: Value
    file: Value
    redis: Value
    winner: Side | None  # None: left for the user (`manual` policy)


@dataclass(frozen=True)
class Options:
    policy: str = "owner"  # owner | file | redis | manual
    deletions: str = "delete"  # delete | cancel | keep: what a removal from the file does in Redis
    push: bool = True  # apply file-side changes to Redis
    pull: bool = True  # apply Redis-side changes to the file
    force: bool = False  # make the target equal the source (one direction only)


@dataclass(frozen=True)
class Upsert:
    plan_id: str
    record: Record
    created: bool


@dataclass(frozen=True)
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
    # Tasks with changes this sync's direction left for the other one: a one-way sync that
    # saw them tells its caller, so the other direction is not forgotten.
    waiting_push: set[str] = field(default_factory=set)
    waiting_pull: set[str] = field(default_factory=set)

    def wait_for(self, direction: Side, plan_id: str) -> None:
        """`direction` names the side whose change waits: "file" waits for a push."""
        (self.waiting_push if direction == "file" else self.waiting_pull).add(plan_id)


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
    if file is not None:
        if options.push:
            result.redis_ops.append(Upsert(plan_id, file, created=True))
            result.base[plan_id] = BaseTask(file.as_fields())
        else:
            result.wait_for("file", plan_id)
    elif redis is not None:
        if options.pull:
            result.file_ops.append(Upsert(plan_id, redis, created=True))
            result.base[plan_id] = BaseTask(redis.as_fields())
        else:
            result.wait_for("redis", plan_id)


def merge_deletion(
    plan_id: str, base: BaseTask, file: Record | None, redis: Record | None, options: Options,
    result: MergeResult,
) -> None:  # fmt: skip
    """Deleted on one side: delete on the other, unless the other side modified it."""
    result.base[plan_id] = base  # unless settled below, it waits for the other direction
    if file is None:
        assert redis is not None
        if not unchanged(base, redis):  # modified in Redis: back into the file
            if not options.pull:
                result.wait_for("redis", plan_id)
                return
            result.file_ops.append(Upsert(plan_id, redis, created=True))
            result.base[plan_id] = BaseTask(redis.as_fields())
        elif not options.push:
            result.wait_for("file", plan_id)
        else:
            result.redis_ops.append(Delete(plan_id, options.deletions))
            if options.deletions == "delete":
                del result.base[plan_id]
            else:
                result.base[plan_id] = BaseTask(base.fields, tombstone=True)
    elif not unchanged(base, file):  # modified in the file: back into Redis
        if not options.push:
            result.wait_for("file", plan_id)
            return
        result.redis_ops.append(Upsert(plan_id, file, created=True))
        result.base[plan_id] = BaseTask(file.as_fields())
    elif not options.pull:
        result.wait_for("redis", plan_id)
    else:
        result.file_ops.append(Delete(plan_id))
        del result.base[plan_id]


def unchanged(base: BaseTask, record: Record) -> bool:
    return all(f in base.fields and base.fields[f] == record.get(f) for f in FIELDS)


def merge_fields(
    plan_id: str, base: BaseTask | None, file: Record, redis: Record, options: Options,
    result: MergeResult,
) -> None:  # fmt: skip
    base_fields: Mapping[str, Value] = base.fields if base else {}
    agreed: dict[str, Value] = {}
    to_file: dict[str, Value] = {}
    to_redis: dict[str, Value] = {}
    settled: list[Conflict] = []
    open_conflicts: list[Conflict] = []
    for name in FIELDS:
        file_value, redis_value = file.get(name), redis.get(name)
        known = name in base_fields
        base_value = base_fields.get(name)
        if file_value == redis_value:
            agreed[name] = file_value
        elif known and file_value == base_value:
            if options.pull:
                to_file[name] = agreed[name] = redis_value
            else:
                agreed[name] = base_value
                result.wait_for("redis", plan_id)
        elif known and redis_value == base_value:
            if options.push:
                to_redis[name] = agreed[name] = file_value
            else:
                agreed[name] = base_value
                result.wait_for("file", plan_id)
        else:
            winner = winner_for(options.policy, name)
            conflict = Conflict(plan_id, name, base_value, file_value, redis_value, winner)
            if winner is None:
                open_conflicts.append(conflict)
            elif winner == "file" and options.push:
                to_redis[name] = agreed[name] = file_value
                settled.append(conflict)
            elif winner == "redis" and options.pull:
                to_file[name] = agreed[name] = redis_value
                settled.append(conflict)
            else:
                result.wait_for(winner, plan_id)  # settled by the other direction, later
                if known:
                    agreed[name] = base_value
    if open_conflicts:
        # `manual`: the whole task stays unsynced until the user resolves it.
        result.pending[plan_id] = open_conflicts
        if base is not None:
            result.base[plan_id] = base
        return
    result.settled.extend(settled)
    result.base[plan_id] = BaseTask(agreed)
    if to_file:
        result.file_ops.append(Upsert(plan_id, file.with_fields(to_file), created=False))
    if to_redis:
        result.redis_ops.append(Upsert(plan_id, redis.with_fields(to_redis), created=False))


def force_task(
    plan_id: str, base: BaseTask | None, file: Record | None, redis: Record | None,
    options: Options, result: MergeResult,
) -> None:  # fmt: skip
    """`--force`: the target becomes equal to the source, deletions included."""
    source, target = (file, redis) if options.push else (redis, file)
    ops = result.redis_ops if options.push else result.file_ops
    if source is None:
        if target is not None:
            mode = options.deletions if options.push else "delete"
            ops.append(Delete(plan_id, mode))
            if mode != "delete":
                result.base[plan_id] = BaseTask(target.as_fields(), tombstone=True)
        return
    if source != target:
        ops.append(Upsert(plan_id, source, created=target is None))
    result.base[plan_id] = BaseTask(source.as_fields())


def deletions_of(ops: Iterable[Op]) -> int:
    return sum(1 for op in ops if isinstance(op, Delete))
