"""Both sides in the merge's terms: one Record per plan id. Pure."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from collections.abc import Set as AbstractSet
from dataclasses import dataclass

from ttsyncd.codec import RedisTask
from ttsyncd.identity import Identified
from ttsyncd.model import Record
from ttsyncd.plan import AssignId, Plan, PlanEntry, new_entry_id, parent_cycles
from ttsyncd.scope import with_parent_cycles


@dataclass(frozen=True)
class FileView:
    records: dict[str, Record]
    new_ids: list[AssignId]  # entries that had no id: the ids to write back into the file


def file_view(plan: Plan, only: AbstractSet[str] | None = None) -> FileView:
    """The plan's entries by id (those in `only`, if given, and every entry with no id yet);
    an entry with no `agent` takes `[meta] default_agent`."""
    if only is None:
        chosen: Iterable[tuple[int, PlanEntry]] = enumerate(plan.entries)
    else:  # (only an entry with no id needs its index)
        by_id = plan.by_id
        chosen = [
            *((-1, by_id[plan_id]) for plan_id in only if plan_id in by_id),
            *((index, plan.entries[index]) for index in plan.without_id),
        ]
    taken = set(plan.by_id) if plan.without_id else set()
    records: dict[str, Record] = {}
    new_ids: list[AssignId] = []
    for index, entry in chosen:
        plan_id = entry.plan_id
        if plan_id is None:
            plan_id = new_entry_id(entry.record.description, taken)
            taken.add(plan_id)
            new_ids.append(AssignId(index, plan_id))
        record = entry.record
        if record.agent is None and plan.default_agent:
            record = record.with_fields({"agent": plan.default_agent})
        records[plan_id] = record
    return FileView(records, new_ids)


def redis_record(
    task: RedisTask,
    agent_names: Mapping[str, str],
    plan_id_of_uuid: Callable[[str], str | None],
    unresolved_agent: str | None,
) -> Record:
    """One task hash in plan terms.

    No `assigned_to` where the last sync pushed an agent name that no agent hash carries reads
    as that name: Redis could not hold it, so it did not change it.
    """
    if task.assigned_to is not None:
        agent: str | None = agent_names.get(task.assigned_to, task.assigned_to)
    else:
        agent = unresolved_agent
    parent = plan_id_of_uuid(task.parent_id) if task.parent_id else None
    return Record(
        description=task.description,
        status=task.state,
        agent=agent,
        tags=task.tags,
        parent=parent,
        result=task.result,
    )


def redis_view(
    identified: Identified,
    agent_names: Mapping[str, str],
    unresolved_agents: Mapping[str, str],
    hidden_parents: Mapping[str, str] | None = None,
    only: AbstractSet[str] | None = None,
) -> dict[str, Record]:
    """Every task in plan terms (those in `only`, if given, and any parent cycle they are in).
    `hidden_parents` (uuid -> plan id) names tasks whose hash cannot be read right now, so
    that their children keep their parent."""
    hidden = hidden_parents or {}
    plan_id_of_uuid = identified.plan_id_of_uuid
    by_plan_id = identified.by_plan_id

    def parent_of(task_uuid: str) -> str | None:
        plan_id = plan_id_of_uuid.get(task_uuid)
        return plan_id if plan_id is not None else hidden.get(task_uuid)

    def record_of(plan_id: str) -> Record:
        task = by_plan_id[plan_id]
        return redis_record(task, agent_names, parent_of, unresolved_agents.get(plan_id))

    if only is None:
        return without_parent_cycles({plan_id: record_of(plan_id) for plan_id in by_plan_id})
    records = {plan_id: record_of(plan_id) for plan_id in only if plan_id in by_plan_id}

    def parent_in_redis(plan_id: str) -> str | None:
        if plan_id not in by_plan_id:
            return None
        return (records.get(plan_id) or record_of(plan_id)).parent

    # A cycle through a chosen task is cut as a whole view would cut it: take it in whole.
    for plan_id in with_parent_cycles(list(records), parent_in_redis):
        if plan_id not in records:
            records[plan_id] = record_of(plan_id)
    return without_parent_cycles(records)


def without_parent_cycles(records: dict[str, Record]) -> dict[str, Record]:
    """Redis does not stop `parent_id` links from going round in a circle; the file may not
    hold one. Each cycle is cut at its smallest plan id, the same way on every run."""

    def parent_of(plan_id: str) -> str | None:
        record = records.get(plan_id)
        return record.parent if record is not None else None

    for cycle in parent_cycles(parent_of, sorted(records)):  # (lazy: sees each cut)
        cut = min(cycle)
        records[cut] = records[cut].with_fields({"parent": None})
    return records


def agent_uuids(agent_names: Mapping[str, str]) -> dict[str, str]:
    """Agent name -> uuid; where two agents share a name the first uuid in order wins, stably."""
    by_name: dict[str, str] = {}
    for agent_uuid, name in sorted(agent_names.items()):
        by_name.setdefault(name, agent_uuid)
    return by_name
