"""One sync of a town: read both sides, merge, write what changed, remember the new base.

The imperative shell around the pure merge. push, pull and the daemon's two-way sync all run
`sync` with different directions. What a sync holds back (the deletion guard, the writes set
aside) is decided in ttsyncd/guard.py; what the merge's operations become (guarded task writes,
plan edits) in ttsyncd/writes.py; the base it starts from and the one it leaves in
ttsyncd/base_state.py; a dry run's lines are worded in ttsyncd/changes.py.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TypeVar

import structlog

from ttsyncd.base import Side
from ttsyncd.base_state import (
    BaseAfter,
    advance,
    keep_what_landed,
    markers_lost,
    save_advanced,
    within,
    without_slots,
)
from ttsyncd.changes import TaskChange, describe, task_changes
from ttsyncd.codec import task_key
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
from ttsyncd.merge import Conflict, Delete, MergeResult, Options, Pins, merge
from ttsyncd.model import Record
from ttsyncd.plan import (
    FileEdit,
    Plan,
    PlanReader,
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
from ttsyncd.views import file_view, redis_view
from ttsyncd.writes import file_edits, redis_writes

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
    options = merge_options(settings, request)
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
        # the losing value.
        record_conflicts(settings, decided.merged, recorded, clock())
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
        report.refused, set_aside = what_stands(settings, request, decided, plan, report.plan)
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


def what_stands(
    settings: Settings, request: SyncRequest, decided: Decision, read: Plan, left: Plan
) -> tuple[RefusedDeletions | None, dict[str, list[Conflict]]]:
    """The refusal and the set-aside writes that stand once this sync, which read the plan
    `read` and leaves `left`, is done: settled before the state changes (a failover check
    after them must leave the state as it was)."""
    old, only = decided.state, request.only
    base_after = BaseAfter(old.base, decided.merged.base, decided.touched)
    refused = refusal(settings, old, decided.refused, read, left, base_after)
    resolved = only if request.resolving and only is not None else frozenset()
    return refused, still_set_aside(old.set_aside, decided.merged.set_aside, base_after, resolved)


def merge_options(settings: Settings, request: SyncRequest) -> Options:
    return Options(
        policy=settings.sync.policy, deletions=settings.sync.deletions,
        push=request.push, pull=request.pull, force=request.force,
        stale=settings.sync.stale_writes == "keep-newer", pins=request.pins or {},
    )  # fmt: skip


def record_conflicts(
    settings: Settings, merged: MergeResult, recorded: list[Conflict], now: datetime
) -> None:
    """Append the conflicts this attempt found to the log, and to `recorded`: a retry that
    settles them again does not record them twice."""
    found = [*merged.settled, *merged.new_pending, *merged.set_aside]
    fresh = [c for c in found if c not in recorded]
    append_conflicts(settings.state_dir, fresh, policy=settings.sync.policy, now=now)
    recorded.extend(fresh)


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
