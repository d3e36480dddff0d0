"""What the merge's operations become: guarded task writes for Redis (with the identity
repairs and the agent names Redis cannot hold) and line edits for the plan file."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime

from ttsyncd.codec import RedisTask, encode_task, is_uuid, task_key
from ttsyncd.identity import Identified, task_uuid_for
from ttsyncd.merge import Delete, MergeResult, Op, Upsert
from ttsyncd.model import Record
from ttsyncd.plan import AddEntry, FileEdit, RemoveEntry, UpdateEntry
from ttsyncd.store import TaskWrite
from ttsyncd.views import agent_uuids


def redis_writes(
    town: str,
    merged: MergeResult,
    identified: Identified,
    redis_records: dict[str, Record],
    agent_names: dict[str, str],
    previously_unresolved: dict[str, str],
) -> tuple[list[TaskWrite], dict[str, str]]:
    """The task writes for the merge's Redis ops plus identity repairs, and the agent names
    Redis cannot hold (no agent hash carries them) by plan id."""
    writer = TaskWriter(town, identified.by_plan_id, agent_uuids(agent_names), datetime.now(UTC))
    writes: list[TaskWrite] = []
    for op in merged.redis_ops:
        if isinstance(op, Upsert):
            writes.append(writer.write(op.plan_id, op.record))
        elif op.mode == "delete":
            task = writer.current[op.plan_id]
            writes.append(TaskWrite(task.key, task.raw, None, task.uuid, backlog_remove=True))
        elif op.mode == "cancel" and redis_records[op.plan_id].status != "cancelled":
            cancelled = redis_records[op.plan_id].with_fields({"status": "cancelled"})
            writes.append(writer.write(op.plan_id, cancelled, backlog_remove=True))
    writes += repairs(writer, merged, identified, redis_records, previously_unresolved)
    return writes, writer.unresolved


def repairs(
    writer: TaskWriter,
    merged: MergeResult,
    identified: Identified,
    redis_records: dict[str, Record],
    previously_unresolved: dict[str, str],
) -> list[TaskWrite]:
    """Repairs of tasks both sides agree on, which change no synced field: tag a task pulled in
    under a derived id with its plan id (so identity is uniform from then on), and assign an
    agent whose name an agent hash now carries."""
    writes: list[TaskWrite] = []
    touched = {op.plan_id for op in merged.redis_ops}
    for plan_id, base_task in merged.base.items():
        if plan_id in touched or base_task.tombstone or plan_id not in writer.current:
            continue
        record = redis_records[plan_id]
        unresolved_name = previously_unresolved.get(plan_id)
        now_resolvable = unresolved_name is not None and unresolved_name in writer.by_name
        if plan_id in identified.untagged or now_resolvable:
            writes.append(writer.write(plan_id, record))
        elif unresolved_name is not None and record.agent == unresolved_name:
            writer.unresolved[plan_id] = unresolved_name
    return writes


@dataclass
class TaskWriter:
    """Makes one sync's task writes: each record as the hash tinytown would hold, guarded by the
    hash as it was read; notes the agent names Redis cannot hold (`unresolved`, by plan id)."""

    town: str
    current: Mapping[str, RedisTask]  # the task each plan id maps to, as read
    by_name: dict[str, str]  # agent name -> agent uuid
    now: datetime
    unresolved: dict[str, str] = field(default_factory=dict)

    def uuid_of(self, plan_id: str) -> str:
        task = self.current.get(plan_id)
        return task.uuid if task else task_uuid_for(self.town, plan_id)

    def write(self, plan_id: str, record: Record, **flags: bool) -> TaskWrite:
        task = self.current.get(plan_id)
        agent_uuid = resolve_agent(record.agent, self.by_name)
        if record.agent is not None and agent_uuid is None:
            self.unresolved[plan_id] = record.agent
        write = encode_task(
            record,
            task_uuid=self.uuid_of(plan_id),
            plan_id=plan_id,
            current=task,
            assigned_to=agent_uuid,
            parent_id=self.uuid_of(record.parent) if record.parent else None,
            now=self.now,
        )
        # A new pending task nobody is assigned to is one agents may claim.
        claimable = task is None and record.status == "pending" and record.agent is None
        return TaskWrite(
            key=task_key(self.town, self.uuid_of(plan_id)),
            expected=task.raw if task else {},
            write=write,
            task_uuid=self.uuid_of(plan_id),
            backlog_add=claimable,
            **flags,
        )


def resolve_agent(name: str | None, by_name: dict[str, str]) -> str | None:
    """The uuid of the agent called `name`; a uuid written in the file is taken as it is."""
    if name is None:
        return None
    return by_name.get(name) or (name if is_uuid(name) else None)


def file_edits(ops: list[Op]) -> list[FileEdit]:
    edits: list[FileEdit] = []
    for op in ops:
        if isinstance(op, Delete):
            edits.append(RemoveEntry(op.plan_id))
        elif op.created:
            edits.append(AddEntry(op.plan_id, op.record))
        else:
            edits.append(UpdateEntry(op.plan_id, op.record))
    return edits
