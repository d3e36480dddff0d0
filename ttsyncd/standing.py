"""What the daemon has done and what is wrong: the facts its `status` answer, systemd's STATUS=
line and `DaemonState` are made of, kept as the parts report them (a sync recorded, a problem
reported or cleared, a refusal shown). The events (`ttsyncd monitor`, ttsyncd/activity.py) and
the metrics (ttsyncd/metrics.py) are fed at the same places, so all of them say the same."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

import structlog

from ttsyncd import activity, metrics
from ttsyncd.engine import SyncReport
from ttsyncd.events import EventBus
from ttsyncd.state import RefusedDeletions

logger = structlog.get_logger("ttsyncd.daemon")


@dataclass
class SyncStamp:
    """One sync, as `status` reports it."""

    time: str
    duration_ms: float
    created: int
    updated: int
    deleted: int
    unchanged: int


# What an error is about, which says what clears it: `redis`, the session (a connection made
# again); `sync`, a sync that failed (the next one that completes); `watch`, the file watcher
# (watching again); `reload`, a SIGHUP whose configuration was refused (a reload that works);
# `refused`, deletions the guard holds back (a sync that finds the refusal lifted).
ErrorKind = Literal["redis", "sync", "refused", "watch", "reload"]


class DaemonState(enum.StrEnum):
    """What the daemon is doing, as `status` (`state`) and systemd's STATUS= line say. The
    facts behind it are independent (a pause, the connection, a sync under way, the last
    error), so `decide_state` decides it from them in one place, first match wins:"""

    PAUSED = "paused"  # `ttsyncd pause`: both sides watched, nothing written
    SYNCING = "syncing"  # a sync, or a push/pull/resolve/repair sent through the socket
    STARTING = "starting"  # not yet connected to Redis, or the first sync not yet done
    RECONNECTING = "reconnecting"  # Redis was lost (or failed a sync): waiting to connect again
    ERROR = "error"  # the last sync failed, deletions are refused, the watch or a reload failed
    IDLE = "idle"  # synced; watching both sides


@dataclass(frozen=True)
class Problem:
    """The daemon's last error, as `status` shows it, with its kind."""

    kind: ErrorKind
    message: str


@dataclass(frozen=True)
class Facts:
    """What the daemon's state is decided from (`Daemon.state` gathers them)."""

    paused: bool
    syncing: bool
    connected: bool
    ever_connected: bool  # STARTING until the first connection, RECONNECTING after
    problem: Problem | None
    first_sync_done: bool


def decide_state(facts: Facts) -> DaemonState:
    """The one place the daemon's state is decided (DaemonState lists the order)."""
    problem = facts.problem.kind if facts.problem else None
    if facts.paused:
        return DaemonState.PAUSED
    if facts.syncing:
        return DaemonState.SYNCING
    if not facts.connected or problem == "redis":
        return DaemonState.RECONNECTING if facts.ever_connected else DaemonState.STARTING
    if problem is not None:
        return DaemonState.ERROR
    if not facts.first_sync_done:
        return DaemonState.STARTING
    return DaemonState.IDLE


def direction_of(push: bool, pull: bool) -> str:
    return "both" if push and pull else ("push" if push else "pull")


class Standing:
    """The syncs done and the last error, with the event bus and the metrics they feed."""

    def __init__(self) -> None:
        self.started_at = datetime.now(UTC).isoformat()
        self.syncs = 0
        self.last_sync: SyncStamp | None = None
        self.last_push: SyncStamp | None = None
        self.last_pull: SyncStamp | None = None
        self.problem: Problem | None = None
        self.last_report: SyncReport | None = None  # duplicates, unreadable hashes, agents
        self.events = EventBus()  # what `ttsyncd monitor` shows (ttsyncd/activity.py says it)
        self.metrics = metrics.Metrics()  # counts nothing until `run` serves [metrics] listen

    @property
    def last_error(self) -> str | None:
        return self.problem.message if self.problem else None

    def report_problem(self, kind: ErrorKind, message: str) -> None:
        if self.problem != Problem(kind, message):  # (a retry failing again is no news)
            activity.problem(self.events, kind, message)
        self.problem = Problem(kind, message)

    def clear_problem(self, *kinds: ErrorKind) -> None:
        """The cause of these kinds of error is gone: forget the last error if it is one."""
        if self.problem is not None and self.problem.kind in kinds:
            self.problem = None

    def show_refusal(self, refused: RefusedDeletions | None) -> None:
        """A refused deletion stands until the file is saved again (or --force, resolve): it
        stays the last error till then, and is logged when it starts or changes."""
        before = self.problem.message if self.problem and self.problem.kind == "refused" else None
        self.clear_problem("refused")
        self.metrics.deletions_held(len(refused.plan_ids) if refused else 0)
        if refused is None:
            return
        self.report_problem("refused", refused.message)
        if refused.message != before:
            self.metrics.deletions_refused()
            logger.warning("deletions refused", plan_ids=sorted(refused.plan_ids))
            self.events.publish("refused", plan_ids=sorted(refused.plan_ids),
                                message=refused.message)  # fmt: skip

    def record(
        self, report: SyncReport, *, push: bool, pull: bool, origin: activity.Origin = "daemon",
        waited: dict[str, float] | None = None,
    ) -> None:  # fmt: skip
        """A sync completed: `status`, the log, the events and the metrics say so. `waited`:
        seconds since the first event of each side's changes it applied."""
        self.syncs += 1
        self.clear_problem("sync", "redis")  # a completed sync reached Redis too
        self.show_refusal(report.refused)
        self.last_report = report
        now = datetime.now(UTC).isoformat(timespec="milliseconds")

        def stamp(counts: Any) -> SyncStamp:
            return SyncStamp(now, report.duration_ms, counts.created, counts.updated,
                             counts.deleted, counts.unchanged)  # fmt: skip

        if push:
            self.last_push = self.last_sync = stamp(report.to_redis)
        if pull:
            self.last_pull = self.last_sync = stamp(report.to_file)
        direction = direction_of(push, pull)
        activity.sync_done(self.events, report, direction=direction, origin=origin)
        self.metrics.sync_done(report, direction=direction, origin=origin, waited=waited or {})
        report.changed = []  # named in the log and the events: not kept with last_report

    def status_line(self, state: DaemonState, *, paused_since: str | None,
                    notifications: str) -> str:  # fmt: skip
        """systemd's STATUS= line: the state, and what goes with it."""
        if state is DaemonState.PAUSED:
            return f"paused since {paused_since}"
        if self.last_error and state in (DaemonState.ERROR, DaemonState.RECONNECTING):
            return f"{state}: {self.last_error.splitlines()[0]}"
        last = self.last_sync.time if self.last_sync else "never"
        return f"{state}: {self.syncs} syncs, last {last}; notifications: {notifications}"
