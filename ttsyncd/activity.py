"""What the daemon says about its work: each sync in its log (the tasks it changed; at debug,
`-v`, each field old → new; every conflict) and as events for `ttsyncd monitor`. The daemon
calls these at the few places where something happens; the wording lives here."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict
from typing import Any, Literal

import structlog

from ttsyncd.changes import TaskChange, set_aside_line, shown
from ttsyncd.engine import Counts, SyncReport
from ttsyncd.events import EventBus

logger = structlog.get_logger("ttsyncd.daemon")

NAMED_IN_LOG = 20  # tasks the info line names per side; the rest are counted
# Who asked for a sync: the daemon itself (a change seen, a resume, anti-entropy), or a
# command sent through the control socket (push, pull, resolve; check and dry runs).
Origin = Literal["daemon", "command"]


def sync_done(
    bus: EventBus, report: SyncReport, *, direction: str, origin: Origin = "daemon"
) -> None:
    """A sync completed (it may have written nothing: its counts say so)."""
    changed = report.changed
    logger.info(
        "sync", direction=direction, origin=origin, **named(changed),
        to_redis=report.to_redis.summary(), to_file=report.to_file.summary(),
        redis_writes=report.redis_writes, file_written=report.file_written,
        conflicts=len(report.settled), set_aside=len(report.set_aside),
        duration_ms=report.duration_ms,
    )  # fmt: skip
    for change in changed:
        logger.debug(
            "task changed", side=change.side, action=change.action, task=change.plan_id,
            fields=fields_text(change),
        )  # fmt: skip
    for conflict in report.recorded:
        if conflict.kind == "conflict":
            logger.warning(
                "conflict", task=conflict.plan_id, field=conflict.field,
                file=conflict.file, redis=conflict.redis,
                settled=f"{conflict.winner} wins" if conflict.winner else "left for you",
            )  # fmt: skip
    bus.publish(
        "sync", origin=origin, direction=direction, duration_ms=report.duration_ms,
        to_redis=counts(report.to_redis), to_file=counts(report.to_file),
        redis_writes=report.redis_writes, file_written=report.file_written,
        conflicts=len(report.settled), set_aside=len(report.set_aside),
        plan_tasks=report.plan_tasks, redis_tasks=report.redis_tasks,
    )  # fmt: skip
    publish_details(bus, changed, report)


def check_done(bus: EventBus, report: SyncReport, *, command: str) -> None:
    """A check or a dry run through the socket: what it found out of sync, nothing written."""
    logger.info(
        f"{command}: nothing written", origin="command", out_of_sync=len(report.changed),
        **named(report.changed), duration_ms=report.duration_ms,
    )  # fmt: skip
    bus.publish(
        "check", origin="command", command=command, duration_ms=report.duration_ms,
        out_of_sync=len(report.changed), changes=[c.line() for c in report.changed],
        plan_tasks=report.plan_tasks, redis_tasks=report.redis_tasks,
    )  # fmt: skip


def publish_details(bus: EventBus, changed: Iterable[TaskChange], report: SyncReport) -> None:
    if not bus.subscribers:
        return
    for change in changed:
        bus.publish("change", **change.to_json())
    for conflict in report.recorded:
        details = asdict(conflict)
        if conflict.kind == "conflict":
            bus.publish("conflict", **details)
        else:
            bus.publish("set_aside", **details, message=set_aside_line(conflict))


def named(changed: list[TaskChange]) -> dict[str, list[str]]:
    """The log's `pushed` (written to Redis) and `pulled` (written to the file): "update api",
    "delete old", ..., at most NAMED_IN_LOG each; only the sides written."""
    lists: dict[str, list[str]] = {}
    for side, key in (("redis", "pushed"), ("file", "pulled")):
        on_side = [f"{c.action} {c.plan_id}" for c in changed if c.side == side]
        if len(on_side) > NAMED_IN_LOG:
            on_side[NAMED_IN_LOG:] = [f"… {len(on_side) - NAMED_IN_LOG} more"]
        if on_side:
            lists[key] = on_side
    return lists


def fields_text(change: TaskChange) -> str:
    """`status "pending" → "running", result (none) → "ok"`; a creation: the values it sets."""
    if change.action == "create":
        return ", ".join(f"{name} {shown(new)}" for name, (_, new) in change.fields().items())
    return ", ".join(
        f"{name} {shown(old)} → {shown(new)}" for name, (old, new) in change.fields().items()
    )


def counts(of: Counts) -> dict[str, Any]:
    return asdict(of)


def problem(bus: EventBus, kind: str, message: str) -> None:
    bus.publish("error", kind=kind, message=message)
