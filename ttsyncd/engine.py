"""One sync of a town: read both sides, merge, write what changed, remember the new base.

The imperative shell around the pure merge. push, pull and the daemon's two-way sync all run
`sync` with different directions. What a sync holds back (the deletion guard, the writes set
aside) is decided in ttsyncd/guard.py; a dry run's lines are worded in ttsyncd/changes.py.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import TypeVar

import structlog
from redis.crc import key_slot

from ttsyncd.changes import TaskChange, describe, task_changes
from ttsyncd.codec import RedisTask, encode_task, is_uuid, task_key
from ttsyncd.config import Settings
from ttsyncd.errors import PlanError, SyncRefused
from ttsyncd.guard import (
    check_file_deletions,
    hold_back_deletions,
    live_tasks,
    refusal,
    still_set_aside,
)
from ttsyncd.identity import Identified, task_uuid_for
from ttsyncd.markers import epoch_key
from ttsyncd.merge import (
    Conflict,
    Delete,
    MergeResult,
    Op,
    Options,
    Pins,
    Side,
    Upsert,
    merge,
)
from ttsyncd.model import Record
from ttsyncd.plan import (
    AddEntry,
    FileEdit,
    Plan,
    PlanReader,
    RemoveEntry,
    UpdateEntry,
    parse_plan,
    render_edits,
)
from ttsyncd.scope import Scope, merge_limit, touched_ids
from ttsyncd.sides import FileSide, RedisSide, Sides
from ttsyncd.state import (
    RefusedDeletions,
    StateStore,
    SyncState,
    append_conflicts,
)
from ttsyncd.store import RedisSource, Snapshot, TaskWrite
from ttsyncd.topology import RedisClient
from ttsyncd.views import agent_uuids, file_view, redis_view

log = structlog.get_logger("ttsyncd.engine")
T = TypeVar("T")

MAX_ATTEMPTS = 5  # re-merges after a concurrent change on either side, before giving up


@dataclass
class Counts:
    created: int = 0
    updated: int = 0
    deleted: int = 0
    unchanged: int = 0

    def summary(self) -> str:
        return (
            f"created {self.created}, updated {self.updated}, "
            f"deleted {self.deleted}, unchanged {self.unchanged}"
        )


@dataclass
class SyncReport:
    plan_tasks: int = 0  # entries in tasks.toml
    redis_tasks: int = 0  # the town's tasks in Redis
    to_redis: Counts = field(default_factory=Counts)
    to_file: Counts = field(default_factory=Counts)
    settled: list[Conflict] = field(default_factory=list)
    pending: list[Conflict] = field(default_factory=list)
    set_aside: list[Conflict] = field(default_factory=list)  # stale and held writes seen
    refused: RefusedDeletions | None = None  # deletions the guard holds back
    unreadable: dict[str, str] = field(default_factory=dict)
    duplicates: dict[str, list[str]] = field(default_factory=dict)  # plan id -> extra uuids
    unresolved_agents: dict[str, str] = field(default_factory=dict)
    changes: list[str] = field(default_factory=list)  # one line per change (dry runs only)
    changed: list[TaskChange] = field(default_factory=list)  # each task written (or it would)
    # The conflicts this sync recorded (settled, left for you, stale and held writes set aside).
    recorded: list[Conflict] = field(default_factory=list)
    redis_writes: int = 0
    file_written: bool = False
    new_redis: bool = False  # Redis held none of the town's tasks: repopulated from the file
    # Cluster primaries that came back without their data: their tasks repopulated from the file.
    emptied_primaries: int = 0
    # Work owed: changes a one-way sync saw and left for the other direction (owed_push:
    # file-side changes a pull saw; owed_pull: Redis-side changes a push saw).
    owed_push: frozenset[str] = frozenset()
    owed_pull: frozenset[str] = frozenset()
    plan: Plan | None = None  # the plan as this sync left it: the next Scope's starting point
    duration_ms: float = 0.0


@dataclass(frozen=True)
class Decision:
    """Everything one attempt decided to do."""

    merged: MergeResult
    writes: list[TaskWrite]
    edits: list[FileEdit]
    unresolved_agents: dict[str, str]
    uuids: dict[str, str]  # plan id -> task uuid of every task in the new base
    touched: frozenset[str]  # plan ids this sync merged; every other one's state carries over
    state: SyncState  # the state it merged from (empty when Redis is not the one agreed with)
    refused: frozenset[str]  # deletions held back now (the guard), besides any carried over


@dataclass(frozen=True)
class SyncRequest:
    """What one sync is asked to do.

    `only` limits it to those plan ids (`resolve`): every other task keeps its base as it is.
    `scope` (the daemon) names the plan ids that may have changed since the last sync: only
    they, and what they drag along (scope.py), are merged.
    `resolving` (with `only`): the user settled those tasks; `pins` gives values both sides
    must take (a set-aside write applied on purpose); `removing`, entries to take out of the
    file as well (a removal set aside, applied on purpose: with `force` and `push`)."""

    push: bool
    pull: bool
    force: bool = False
    dry_run: bool = False
    only: frozenset[str] | None = None
    scope: Scope | None = None
    pins: Pins | None = None
    removing: frozenset[str] = frozenset()
    resolving: bool = False


def sync(  # noqa: PLR0913 — the one-shot commands' keywords (commands.py, bench): a SyncRequest
    settings: Settings,
    client: RedisClient,
    *,
    push: bool,
    pull: bool,
    force: bool = False,
    dry_run: bool = False,
    only: frozenset[str] | None = None,
    scope: Scope | None = None,
    pins: Pins | None = None,
    removing: frozenset[str] = frozenset(),
    resolving: bool = False,
    plan_reader: PlanReader | None = None,
    redis_source: RedisSource | None = None,
    state_store: StateStore | None = None,
    clock: Callable[[], datetime] = lambda: datetime.now(UTC),
) -> SyncReport:
    """`run_sync` with the sides made of a plan reader and a Redis source (by default, both
    read afresh: a one-shot command)."""
    sides = Sides(
        FileSide(plan_reader or PlanReader(settings.tasks_file)),
        RedisSide(client, settings.town_name, redis_source),
    )
    request = SyncRequest(push, pull, force, dry_run, only, scope, pins, removing, resolving)
    return run_sync(settings, sides, request, state_store or state_store_for(settings), clock)


def run_sync(
    settings: Settings,
    sides: Sides,
    request: SyncRequest,
    state_store: StateStore,
    clock: Callable[[], datetime] = lambda: datetime.now(UTC),
) -> SyncReport:
    """Run one sync; retries the whole read-merge-write when either side changed under it."""
    started = time.perf_counter()
    only, force = request.only, request.force
    options = Options(
        policy=settings.sync.policy, deletions=settings.sync.deletions,
        push=request.push, pull=request.pull, force=force,
        stale=settings.sync.stale_writes == "keep-newer", pins=request.pins or {},
    )  # fmt: skip
    recorded: list[Conflict] = []
    for _attempt in range(MAX_ATTEMPTS):
        report = SyncReport()
        plan = sides.file.read()
        snapshot = sides.redis.read()
        state = state_store.load()
        scope = request.scope
        may_differ = scope.with_file_changes(plan) if scope is not None else None
        decided = decide(
            settings, plan, snapshot, state, options, report, only, may_differ, request.removing,
            describe_changes=request.dry_run,
        )  # fmt: skip
        check_file_deletions(settings, state, decided.merged, force)
        new_plan = render_checked(plan, decided.edits)
        if request.dry_run:
            report.settled = decided.merged.settled
            report.refused = refusal(
                settings, decided.state, decided.refused, plan, plan, decided.merged.base
            )
            break
        # Record conflicts before writing their winners: a crash in between must not lose
        # the losing value. (A retry that settles them again does not record them twice.)
        found = [*decided.merged.settled, *decided.merged.new_pending, *decided.merged.set_aside]
        fresh = [c for c in found if c not in recorded]
        append_conflicts(settings.state_dir, fresh, policy=settings.sync.policy, now=clock())
        recorded.extend(fresh)
        epoch = sides.redis.epoch(snapshot)
        markers = sides.redis.markers(snapshot)
        changed = sides.redis.apply(decided.writes)
        report.redis_writes = len(decided.writes) - len(changed)
        if changed:
            log.info("redis changed during sync, merging again", keys=len(changed))
            keep_what_landed(state_store, decided, changed, epoch, markers)
            continue
        if new_plan is not None:
            if not sides.file.apply(new_plan, over=plan):
                log.info("tasks file changed during sync, merging again")
                keep_what_landed(state_store, decided, [], epoch, markers)
                continue
            report.file_written = True
        report.plan = new_plan or plan
        touched, old = decided.touched, decided.state
        base_after = BaseAfter(old.base, decided.merged.base, touched)
        report.refused = refusal(settings, old, decided.refused, plan, report.plan, base_after)
        set_aside = still_set_aside(
            old.set_aside,
            decided.merged.set_aside,
            base_after,
            only if request.resolving and only is not None else frozenset(),
        )
        log_changes(decided.merged)
        sides.redis.confirm(epoch, markers)  # behind Sentinel, on a Cluster
        before = advance(old, decided, touched, epoch, markers)
        old.refused, old.set_aside = report.refused, set_aside
        save_advanced(state_store, old, touched, before, cached=old is state)
        # Every agent name Redis cannot hold, not only those of the tasks this sync merged.
        report.unresolved_agents = dict(old.unresolved_agents)
        report.settled = [c for c in recorded if c.winner is not None and c.kind == "conflict"]
        report.recorded = recorded
        break
    else:
        raise SyncRefused(f"both sides kept changing during {MAX_ATTEMPTS} attempts; try again")
    report.duration_ms = round((time.perf_counter() - started) * 1000, 1)
    return report


def advanced(
    old: SyncState, decided: Decision, ids: AbstractSet[str], epoch: str, markers: dict[str, str]
) -> SyncState:
    """`old` with what `decided` agreed on for these tasks (the rest carries over), agreed with
    the Redis whose markers are `epoch` and `markers`: a new state, `old` as it was (its maps
    copied; `advance` is the in-place form a sync uses)."""
    merged = decided.merged
    return SyncState(
        base=replaced(old.base, ids, within(merged.base, ids)),
        unresolved_agents=replaced(
            old.unresolved_agents, ids, within(decided.unresolved_agents, ids)
        ),
        pending=replaced(old.pending, ids, within(merged.pending, ids)),
        uuids=replaced(old.uuids, ids, within(decided.uuids, ids)),
        redis_epoch=epoch,
        set_aside=old.set_aside,
        refused=old.refused,
        redis_markers=markers,
    )


def advance(
    state: SyncState, decided: Decision, ids: AbstractSet[str], epoch: str, markers: dict[str, str]
) -> SyncState:
    """`advanced`, in place: `state` takes what `decided` agreed on for these tasks, agreed
    with the Redis whose markers are `epoch` and `markers`. A big town's base and uuids are
    not copied (~10 ms each at 100,000 tasks). Returns what it replaced: `state` as it was
    for these ids (with its epoch, markers, refusal and set-aside), for the journal
    (`StateStore.save`) and for `undo`.

    Ownership: a state is changed only by the sync that loaded it (under the daemon's sync
    lock, one at a time); `pending`, which `status` reads from another thread, is replaced,
    never changed in place."""
    merged = decided.merged
    before = SyncState(
        base=within(state.base, ids),
        unresolved_agents=within(state.unresolved_agents, ids),
        pending=within(state.pending, ids),
        uuids=within(state.uuids, ids),
        redis_epoch=state.redis_epoch,
        set_aside=state.set_aside,
        refused=state.refused,
        redis_markers=state.redis_markers,
    )
    update(state.base, ids, within(merged.base, ids))
    update(state.unresolved_agents, ids, within(decided.unresolved_agents, ids))
    update(state.uuids, ids, within(decided.uuids, ids))
    state.pending = replaced(state.pending, ids, within(merged.pending, ids))
    state.redis_epoch, state.redis_markers = epoch, markers
    return before


def undo(state: SyncState, before: SyncState, ids: AbstractSet[str]) -> None:
    """`state` back to what it was before `advance` (ids: the ones it advanced)."""
    update(state.base, ids, before.base)
    update(state.unresolved_agents, ids, before.unresolved_agents)
    update(state.uuids, ids, before.uuids)
    state.pending = replaced(state.pending, ids, before.pending)
    state.redis_epoch, state.redis_markers = before.redis_epoch, before.redis_markers
    state.set_aside, state.refused = before.set_aside, before.refused


def save_advanced(
    state_store: StateStore,
    state: SyncState,
    ids: AbstractSet[str],
    before: SyncState,
    *,
    cached: bool,
) -> None:
    """Persist `state`, which `advance` took from `before` for these ids; `cached`: it is the
    store's own (else: a new base, saved whole). A save that fails leaves `state` as it was,
    as if this sync had not run: the next one merges from there."""
    try:
        if cached:
            state_store.save(state, ids, before)
        else:
            state_store.save(state)
    except BaseException:
        undo(state, before, ids)
        raise


class BaseAfter:
    """Which plan ids the base holds once `advance` has given the touched ids the merge's
    base: asked before the state changes (a refusal and the set-aside writes are settled
    before a failover check that must leave the state as it was)."""

    def __init__(
        self, base: Mapping[str, object], merged: Mapping[str, object], touched: AbstractSet[str]
    ) -> None:
        self.base, self.merged, self.touched = base, merged, touched

    def __contains__(self, plan_id: object) -> bool:
        return plan_id in (self.merged if plan_id in self.touched else self.base)


def keep_what_landed(
    state_store: StateStore,
    decided: Decision,
    failed: list[TaskWrite],
    epoch: str,
    markers: dict[str, str],
) -> None:
    """An attempt that merges again (a side changed under it) keeps in the base the tasks it
    finished all the same: their Redis writes landed and the file needed nothing. Else the
    base would miss those changes, and the history the stale rule reads would too."""
    old = decided.state
    if old is not state_store.load():
        return  # another Redis than the base's: the retry starts over anyway
    failed_uuids = {w.task_uuid for w in failed}
    in_file = {op.plan_id for op in decided.merged.file_ops}
    written = {op.plan_id for op in decided.merged.redis_ops}
    done = frozenset(
        plan_id
        for plan_id in written - in_file
        if decided.uuids.get(plan_id) not in failed_uuids and plan_id in decided.merged.base
    )
    if done:
        before = advance(old, decided, done, epoch, markers)
        save_advanced(state_store, old, done, before, cached=True)


def decide(  # noqa: PLR0913 — sync()'s inputs, passed on; to split with sync(): issue 12
    settings: Settings,
    plan: Plan,
    snapshot: Snapshot,
    state: SyncState,
    options: Options,
    report: SyncReport,
    only: frozenset[str] | None = None,
    scope: frozenset[str] | None = None,
    removing: frozenset[str] = frozenset(),
    *,
    describe_changes: bool = False,
) -> Decision:
    town = settings.town_name
    identified = snapshot.identify()
    report.plan_tasks = len(plan.entries)
    report.redis_tasks = len(identified.by_plan_id)
    report.unreadable = dict(snapshot.unreadable)
    report.duplicates = {k: [t.uuid for t in v] for k, v in identified.duplicates.items()}
    reset = base_for_this_redis(state, snapshot, identified, town, report)
    if reset is not None:
        state, scope = reset, None  # every task: the base no longer says what changed
    unreadable = unreadable_ids(state, plan, snapshot, town)
    # A child of such a task keeps its parent link.
    hidden_parents = {known_uuid(state, town, plan_id): plan_id for plan_id in unreadable}
    # What this sync merges: the scope widened by scope.py's rules (None: every task).
    refused_ids = state.refused.plan_ids if state.refused is not None else frozenset()
    limit = merge_limit(scope, refused_ids, only, plan, identified.by_plan_id)
    redis_records = redis_view(
        identified, snapshot.agent_names, state.unresolved_agents, hidden_parents, limit
    )
    view = file_view(plan, None if limit is None else limit | redis_records.keys())
    ids = touched_ids(only, limit, state.base, view.records, redis_records, unreadable)
    base = within(state.base, ids)
    file_records = within(view.records, ids.difference(removing))
    redis_records = within(redis_records, ids)
    merged = merge(base, file_records, redis_records, options, state.pending)
    merged.file_ops += [Delete(plan_id) for plan_id in sorted(removing) if plan_id in plan.by_id]
    refused = hold_back_deletions(settings, plan, state, merged, options.force)
    writes, unresolved = redis_writes(
        town, merged, identified, redis_records, snapshot.agent_names, state.unresolved_agents
    )
    edits: list[FileEdit] = [*view.new_ids, *file_edits(merged.file_ops)]
    before: dict[Side, Mapping[str, Record]] = {"file": view.records, "redis": redis_records}
    report_merge(report, merged, before, unresolved, describe_changes=describe_changes)
    uuids = {
        plan_id: identified.by_plan_id[plan_id].uuid
        if plan_id in identified.by_plan_id
        else known_uuid(state, town, plan_id)
        for plan_id in merged.base
    }
    return Decision(merged, writes, edits, unresolved, uuids, ids, state, refused)


def base_for_this_redis(
    state: SyncState, snapshot: Snapshot, identified: Identified, town: str, report: SyncReport
) -> SyncState | None:
    """The base to merge against when Redis is not the one `state` was agreed with (the report
    says so); None: it is. A fresh or reset Redis gets no base at all: it is repopulated from
    the file, never "everything was deleted". A Cluster primary that came back empty: the base
    without its tasks, which are new to Redis, not deleted."""
    another_redis, emptied_slots = markers_lost(state, snapshot, town)
    emptied = not identified.by_plan_id and not snapshot.unreadable and live_tasks(state)
    if another_redis or emptied:
        log.warning("not the Redis the base agreed with: repopulating it from the file")
        report.new_redis = True
        return SyncState()
    if emptied_slots:
        primaries = sum(1 for m in snapshot.markers.values() if m.slots <= emptied_slots)
        log.warning("a Cluster primary came back without its data: repopulating its tasks "
                    "from the file", primaries=primaries, slots=len(emptied_slots))  # fmt: skip
        report.emptied_primaries = primaries
        return without_slots(state, town, emptied_slots)
    return None


def known_uuid(state: SyncState, town: str, plan_id: str) -> str:
    """The task uuid of `plan_id` as the base remembers it (an agent-made task has a random
    one), else the entry's own."""
    return state.uuids.get(plan_id) or task_uuid_for(town, plan_id)


def unreadable_ids(state: SyncState, plan: Plan, snapshot: Snapshot, town: str) -> set[str]:
    """The tasks whose hash cannot be read: left alone on both sides until it can be."""
    if not snapshot.unreadable:
        return set()
    return {
        plan_id
        for plan_id in set(state.base) | set(plan.by_id)
        if task_key(town, known_uuid(state, town, plan_id)) in snapshot.unreadable
    }


def report_merge(
    report: SyncReport,
    merged: MergeResult,
    before: Mapping[Side, Mapping[str, Record]],
    unresolved: dict[str, str],
    *,
    describe_changes: bool,
) -> None:
    """What the merge decided, in the report: conflicts left for you, writes set aside, the
    directions still owed, the counts and the changes (`describe_changes`: a dry run, each
    change in words). `before`: each side's records as the merge read them."""
    report.pending = [c for conflicts in merged.pending.values() for c in conflicts]
    report.set_aside = [*merged.set_aside, *merged.set_aside_later]
    report.owed_push = frozenset(merged.owed_push)
    report.owed_pull = frozenset(merged.owed_pull)
    report.unresolved_agents = unresolved
    count_changes(report, merged)
    report.changed = task_changes(merged, before)
    if describe_changes:
        report.changes = describe(merged, before)


def state_store_for(settings: Settings) -> StateStore:
    endpoint = settings.endpoint
    return StateStore(
        settings.state_dir, settings.town_name, endpoint.identity(), endpoint.redacted()
    )


def render_checked(plan: Plan, edits: list[FileEdit]) -> Plan | None:
    """The plan after `edits`, parsed back: ttsyncd never writes a file it could not read
    (say, a Redis `parent_id` naming a task the file does not hold). None: no edits."""
    if not edits:
        return None
    rendered = render_edits(plan, edits)
    try:
        return parse_plan(plan.path, rendered.text, previous=plan, kept=rendered.kept)
    except PlanError as error:
        raise SyncRefused(
            f"not writing {plan.path}: the merged plan would not be valid:\n{error}"
        ) from None


def within(values: Mapping[str, T], only: AbstractSet[str]) -> dict[str, T]:
    if len(only) < len(values):  # a daemon's sync of a few tasks in a big town
        return {k: values[k] for k in only if k in values}
    return {k: v for k, v in values.items() if k in only}


def replaced(
    values: Mapping[str, T], touched: AbstractSet[str], new: Mapping[str, T]
) -> dict[str, T]:
    """`values` with the entries of the touched ids replaced by `new`'s."""
    result = dict(values)
    for key in touched:
        result.pop(key, None)
    result.update(new)
    return result


def update(values: dict[str, T], touched: AbstractSet[str], new: Mapping[str, T]) -> None:
    """`replaced`, in place."""
    for key in touched:
        values.pop(key, None)
    values.update(new)


def markers_lost(state: SyncState, snapshot: Snapshot, town: str) -> tuple[bool, frozenset[int]]:
    """(another Redis than the base's, the slots of the Cluster primaries that came back without
    their data). A marker whose token is not the one the base was agreed with lost its keys with
    it; all of them: the whole Redis is another one (or one that restarted empty). Markers the
    base or the snapshot does not have (a slot map that changed) are not compared."""
    if state.redis_epoch is None:
        return False, frozenset()
    agreed = {epoch_key(town): state.redis_epoch, **state.redis_markers}
    now = {epoch_key(town): snapshot.epoch, **{k: m.token for k, m in snapshot.markers.items()}}
    compared = [key for key in agreed if key in now]
    differ = [key for key in compared if now[key] != agreed[key]]
    if len(differ) == len(compared):
        return bool(differ), frozenset()
    return False, frozenset().union(*(snapshot.markers[key].slots for key in differ))


def without_slots(state: SyncState, town: str, slots: frozenset[int]) -> SyncState:
    """`state` without the tasks whose hash is in these slots: a first sync for them, where a
    task on one side only is copied to the other."""

    def gone(plan_id: str) -> bool:
        uuid = state.uuids.get(plan_id) or task_uuid_for(town, plan_id)
        return key_slot(task_key(town, uuid).encode()) in slots

    def kept(items: dict[str, T]) -> dict[str, T]:
        return {plan_id: item for plan_id, item in items.items() if not gone(plan_id)}

    refused = state.refused
    if refused is not None:
        refused_ids = frozenset(i for i in refused.plan_ids if not gone(i))
        refused = replace(refused, plan_ids=refused_ids) if refused_ids else None
    return SyncState(
        base=kept(state.base),
        unresolved_agents=kept(state.unresolved_agents),
        pending=kept(state.pending),
        uuids=kept(state.uuids),
        redis_epoch=state.redis_epoch,
        set_aside=kept(state.set_aside),
        refused=refused,
        redis_markers=state.redis_markers,
    )


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
            writes.append(TaskWrite(task.key, dict(task.raw), None, task.uuid, backlog_remove=True))
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
            expected=dict(task.raw) if task else {},
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


def count_changes(report: SyncReport, merged: MergeResult) -> None:
    """Per target side: created, updated, deleted, and the source's tasks left unchanged."""
    for ops, counts, source_size in (
        (merged.redis_ops, report.to_redis, report.plan_tasks),
        (merged.file_ops, report.to_file, report.redis_tasks),
    ):
        for op in ops:
            if isinstance(op, Delete):
                counts.deleted += op.mode == "delete"
                counts.updated += op.mode == "cancel"
            elif op.created:
                counts.created += 1
            else:
                counts.updated += 1
        counts.unchanged = max(0, source_size - counts.created - counts.updated)


def log_changes(merged: MergeResult) -> None:
    """Name every deletion and every write set aside (they are the ones people ask about). At
    info: a one-shot command prints them as warnings of its own already."""
    for side, ops in (("redis", merged.redis_ops), ("file", merged.file_ops)):
        deleted = sorted(op.plan_id for op in ops if isinstance(op, Delete))
        if deleted:
            log.info("deleted tasks", side=side, plan_ids=deleted)
    for c in merged.set_aside:
        if c.kind == "held":
            log.info(
                "held task not deleted: its entry goes back into the file",
                plan_id=c.plan_id, status=c.redis,
            )  # fmt: skip
        else:
            log.info(
                "stale write set aside", plan_id=c.plan_id, field=c.field,
                from_side=c.from_side, stale=c.file if c.from_side == "file" else c.redis,
                kept=c.redis if c.from_side == "file" else c.file,
            )  # fmt: skip
