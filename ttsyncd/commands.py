"""What push, pull, check, conflicts and resolve do and print, whoever runs them: the CLI in
its own process, or a running daemon on behalf of the CLI (so the output is the same)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields, replace
from datetime import UTC, datetime
from typing import Any

from ttsyncd.base import Side
from ttsyncd.changes import set_aside_line
from ttsyncd.config import Settings
from ttsyncd.engine import SyncReport, state_store_for, sync
from ttsyncd.errors import EXIT_OK, EXIT_PLAN, TtsyncdError
from ttsyncd.identity import identify
from ttsyncd.merge import ENTRY, Conflict
from ttsyncd.output import Output as Output  # re-exported: the daemon answers with it
from ttsyncd.plan import PlanReader, read_text
from ttsyncd.state import StateStore, SyncState, append_conflicts, conflict, read_conflicts
from ttsyncd.store import LiveRead, RedisSource, TaskWrite, apply_writes, read_snapshot
from ttsyncd.topology import RedisClient

PUSH_LINE = "⬆️  Pushed {n} tasks from {file} to Redis"
PULL_LINE = "⬇️  Pulled {n} tasks from Redis to {file}"

WRITING = ("push", "pull", "resolve", "repair")  # the commands a pause refuses (unless dry runs)


@dataclass
class Town:
    """A town to run a command against; a daemon passes its cached plan and Redis mirror."""

    settings: Settings
    client: RedisClient
    plan_reader: PlanReader | None = None
    redis_source: RedisSource | None = None
    state_store: StateStore | None = None
    # Each sync run, with its direction (push, pull) and whether it was a dry run: a daemon
    # records them as it records its own.
    synced: list[tuple[SyncReport, bool, bool, bool]] = field(default_factory=list)

    def sync(self, **kwargs: Any) -> SyncReport:
        report = sync(
            self.settings, self.client, plan_reader=self.plan_reader,
            redis_source=self.redis_source, state_store=self.state_store, **kwargs,
        )  # fmt: skip
        self.synced.append((report, kwargs["push"], kwargs["pull"], bool(kwargs.get("dry_run"))))
        return report

    def state(self) -> StateStore:
        return self.state_store or state_store_for(self.settings)


# The head of a tasks.toml that `pull` creates (a town with tasks in Redis and no plan yet).
PLAN_HEADER = """\
# The plan of tinytown town {town}: one [[tasks]] entry per task (id, description, agent,
# status, tags, parent). ttsyncd keeps it and the town's Redis in sync, both ways; comments
# and layout are kept. Started by `ttsyncd pull` from the tasks in Redis.
"""


def require_plan(settings: Settings, command: str) -> None:
    """A push needs a plan to push: a town without its tasks file says so (a missing file
    would otherwise read as an empty plan)."""
    if command == "push" and not settings.tasks_file.exists():
        raise TtsyncdError(
            f"no {settings.tasks_file.name} in {settings.tasks_file.parent}: nothing to push "
            "(`ttsyncd pull` creates it from the town's Redis)"
        )


def start_plan(settings: Settings) -> str | None:
    """Create the tasks file holding only PLAN_HEADER, for `pull` to fill in; the text
    written, None when the file exists (or could not be made: the sync says why)."""
    header = PLAN_HEADER.format(town=json.dumps(settings.town_name, ensure_ascii=False))
    try:
        with open(settings.tasks_file, "x", encoding="utf-8") as plan:
            plan.write(header)
    except OSError:
        return None
    return header


def push_or_pull(town: Town, command: str, *, force: bool, dry_run: bool) -> Output:
    pushing = command == "push"
    require_plan(town.settings, command)
    started = None if pushing or dry_run else start_plan(town.settings)
    try:
        report = town.sync(push=pushing, pull=not pushing, force=force, dry_run=dry_run)
    except BaseException:
        if started is not None and read_text(town.settings.tasks_file) == started:
            town.settings.tasks_file.unlink(missing_ok=True)  # not left behind by a failed pull
        raise
    out = Output()
    name = town.settings.tasks_file.name
    if dry_run:
        out.stdout = dry_run_lines(report, pushing, name, town.settings.tasks_file.exists())
    elif pushing:
        out.stdout.append(PUSH_LINE.format(n=report.plan_tasks, file=name))
        out.stdout.append(report.to_redis.summary())
    else:
        out.stdout.append(PULL_LINE.format(n=report.redis_tasks, file=name))
        out.stdout.append(report.to_file.summary())
    out.stderr = warnings(report)
    out.code = EXIT_PLAN if report.pending else EXIT_OK
    if report.refused is not None and pushing:  # the push's own work is refused
        out.stderr.append(f"ttsyncd: {report.refused.message}")
        out.code = EXIT_PLAN
    elif report.refused is not None:
        out.stderr.append(f"warning: {report.refused.message}")
    return out


def dry_run_lines(report: SyncReport, pushing: bool, name: str, file_exists: bool) -> list[str]:
    """What a push or pull would do: every change with its fields and values, then the
    counts; "nothing to push/pull" when it would change nothing."""
    verb = "push" if pushing else "pull"
    if not report.changes:
        return [f"nothing to {verb} (dry run: nothing written)"]
    if pushing:
        head = f"would push {report.plan_tasks} tasks from {name} to Redis"
    else:
        created = "" if file_exists else f", creating {name}"
        head = f"would pull {report.redis_tasks} tasks from Redis to {name}{created}"
    counts = report.to_redis if pushing else report.to_file
    return [
        f"{head} (dry run: nothing written):",
        *(f"  {line}" for line in report.changes),
        f"would create {counts.created}, update {counts.updated}, delete {counts.deleted}; "
        f"{counts.unchanged} unchanged",
    ]


def warnings(report: SyncReport) -> list[str]:
    lines: list[str] = []
    if report.new_redis:
        lines.append("Redis held none of this town's tasks: a new Redis, repopulated from the file")
    if report.emptied_primaries:
        lines.append(f"{report.emptied_primaries} Cluster primary(ies) came back without their "
                     "data: their tasks are repopulated from the file")  # fmt: skip
    for key, why in sorted(report.unreadable.items()):
        lines.append(f"skipped {key}: {why} (left untouched)")
    for plan_id, extras in sorted(report.duplicates.items()):
        lines.append(
            f"{len(extras) + 1} Redis tasks carry plan:{plan_id}; syncing the newest, "
            f"not touching {', '.join(extras)}"
        )
    for plan_id, agent in sorted(report.unresolved_agents.items()):
        lines.append(f"task {plan_id}: no agent is named {agent!r}; Redis gets no assigned_to")
    if report.settled:
        lines.append(
            f"{len(report.settled)} conflict(s) settled by policy; see `ttsyncd conflicts`"
        )
    lines.extend(
        f"conflict on {c.plan_id}.{c.field} left for you: file={c.file!r} redis={c.redis!r}; "
        f"see `ttsyncd conflicts`"
        for c in report.pending
    )
    lines.extend(set_aside_line(c) for c in report.set_aside)
    return [f"warning: {line}" for line in lines]


def check(town: Town) -> Output:
    """Everything a sync would do or complain about, writing nothing."""
    settings = town.settings
    report = town.sync(push=True, pull=True, dry_run=True)
    out = Output()
    if settings.tasks_file.exists():
        out.stdout.append(f"{settings.tasks_file}: {report.plan_tasks} tasks, valid")
    else:
        out.stdout.append(
            f"{settings.tasks_file}: no such file (`ttsyncd pull` creates it from Redis)"
        )
    out.stdout.append(
        f"Redis {settings.endpoint.redacted()}: "
        f"{report.redis_tasks} tasks of town {settings.town_name!r}"
    )
    out.stdout += [f"  out of sync: {line}" for line in report.changes] or ["in sync"]
    out.stderr = warnings(report)
    problems = report.unreadable or report.duplicates or report.pending
    out.code = EXIT_PLAN if problems else EXIT_OK
    return out


def resolve(town: Town, plan_id: str, take: str) -> Output:
    """Settle one task on purpose: make it equal on both sides to the side taken, and record
    the choice. A stale write set aside from that side is applied (its values pinned on both
    sides); a held or refused deletion goes through with --take file."""
    settings = town.settings
    state = town.state().load()
    if not knows(town, state, plan_id):
        raise TtsyncdError(
            f"no task has the id {plan_id!r} (not in {settings.tasks_file.name}, not in Redis, "
            "not in the last sync): nothing to resolve"
        )
    waiting = state.pending.get(plan_id, [])
    set_aside = state.set_aside.get(plan_id, [])
    chosen: Side = "file" if take == "file" else "redis"
    pins = {
        c.field: c.file if chosen == "file" else c.redis
        for c in set_aside
        if c.kind == "stale" and c.field != ENTRY and c.from_side == chosen
    }
    refused = state.refused is not None and plan_id in state.refused.plan_ids
    # A removal from the file set aside (held, or stale): taking the file's side applies it,
    # out of Redis and out of the file its entry came back to.
    removed = any(c.field == ENTRY for c in set_aside) and chosen == "file"
    only = frozenset({plan_id})
    if pins and not (waiting or refused or removed):
        pinned = {plan_id: (chosen, pins)}
        report = town.sync(push=True, pull=True, only=only, pins=pinned, resolving=True)
    else:
        report = town.sync(
            push=chosen == "file", pull=chosen == "redis", force=True, only=only,
            removing=only if removed else frozenset(), resolving=True,
        )  # fmt: skip
    changed = report.to_redis if chosen == "file" else report.to_file
    append_conflicts(
        settings.state_dir, [replace(c, winner=chosen) for c in [*waiting, *set_aside]],
        policy="manual", now=datetime.now(UTC),
    )  # fmt: skip
    return Output([f"{plan_id}: took the {take}'s values ({changed.summary()})"])


def knows(town: Town, state: SyncState, plan_id: str) -> bool:
    """True when `plan_id` names a task of the town: in the base, left for the user, set
    aside, refused, in the plan or in Redis."""
    if plan_id in state.base or plan_id in state.pending or plan_id in state.set_aside:
        return True
    if state.refused is not None and plan_id in state.refused.plan_ids:
        return True
    if plan_id in (town.plan_reader or PlanReader(town.settings.tasks_file)).read().by_id:
        return True
    source = town.redis_source or LiveRead(town.client, town.settings.town_name)
    return plan_id in source.snapshot().identify().by_plan_id


def repair(town: Town, *, dry_run: bool) -> Output:
    """Remove the duplicates `tt sync push` leaves (several tasks with one plan tag): keep the
    most recently updated one of each plan id, delete the others and drop them from the
    backlog. Each delete is guarded: a duplicate that changed meanwhile is left for next time."""
    client, name = town.client, town.settings.town_name
    identified = identify(read_snapshot(client, name).tasks)
    out = Output()
    extras = []
    for plan_id, duplicates in sorted(identified.duplicates.items()):
        kept = identified.by_plan_id[plan_id]
        out.stdout.append(
            f"plan:{plan_id}: keeping {kept.uuid} (updated {kept.updated_at}), "
            f"{'would delete' if dry_run else 'deleting'} {', '.join(t.uuid for t in duplicates)}"
        )
        extras.extend(duplicates)
    if dry_run or not extras:
        out.stdout.append(f"{len(extras)} duplicate task(s){' (dry run)' if dry_run else ''}")
        return out
    writes = [TaskWrite(t.key, t.raw, None, t.uuid, backlog_remove=True) for t in extras]
    changed = apply_writes(client, name, writes)
    out.stdout.append(f"deleted {len(writes) - len(changed)} duplicate task(s)")
    if changed:
        out.stderr.append(
            f"warning: {len(changed)} duplicate(s) changed while repairing and were kept: "
            "run `ttsyncd repair` again"
        )
        out.code = EXIT_PLAN
    return out


def conflict_lists(
    settings: Settings, store: StateStore | None = None
) -> dict[str, list[dict[str, Any]]]:
    recorded = read_conflicts(settings.state_dir)
    state = (store or state_store_for(settings)).load()
    pending = [asdict(c) for conflicts in state.pending.values() for c in conflicts]
    # Stale and held writes set aside that `resolve` can still apply (also in "recorded").
    set_aside = [asdict(c) for records in state.set_aside.values() for c in records]
    return {"recorded": recorded, "pending": pending, "set_aside": set_aside}


def conflicts(settings: Settings, *, as_json: bool, store: StateStore | None = None) -> Output:
    lists = conflict_lists(settings, store)
    if as_json:
        return Output([json.dumps(lists, ensure_ascii=False, indent=2)])
    lines = [format_conflict(entry) for entry in lists["recorded"]]
    lines += [format_conflict({**entry, "time": "pending"}) for entry in lists["pending"]]
    return Output(lines or ["no conflicts"])


def format_conflict(entry: dict[str, Any]) -> str:
    when, plan_id, field = entry.get("time", ""), entry["plan_id"], entry["field"]
    if entry.get("kind", "conflict") != "conflict":  # stale or held: worded as a sync warns
        saved = {f.name: entry[f.name] for f in fields(Conflict) if f.name in entry}
        return f"{when}  {set_aside_line(conflict(saved))}"
    winner = entry.get("winner") or "left for you: ttsyncd resolve ID --take file|redis"
    return (
        f"{when}  {plan_id}.{field}: "
        f"file={entry['file']!r} redis={entry['redis']!r} base={entry['base']!r} -> {winner}"
    )
