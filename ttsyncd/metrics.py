"""Prometheus metrics (`[metrics] listen = "host:port"`, the `metrics` extra): what the daemon
did, counted, on an HTTP endpoint of their own (prometheus_client's server, in its own thread,
on a registry of its own: nothing from the process-wide default registry is served).

The daemon calls a `Metrics` at the few places where something happens (a sync done or failed,
a refusal, a connection made or lost); `Metrics` itself counts nothing, so without
`[metrics] listen` nothing is imported or kept. `serve` imports prometheus_client only then,
and says which setting needs the extra when it is missing.

| metric                                     | type      | labels                         |
|--------------------------------------------|-----------|--------------------------------|
| ttsyncd_syncs_total                        | counter   | direction, outcome, origin     |
| ttsyncd_sync_duration_seconds              | histogram | direction                      |
| ttsyncd_change_latency_seconds             | histogram | source (file, redis)           |
| ttsyncd_conflicts_total                    | counter   |                                |
| ttsyncd_stale_writes_total                 | counter   |                                |
| ttsyncd_held_writes_total                  | counter   |                                |
| ttsyncd_refused_deletions_total            | counter   |                                |
| ttsyncd_refused_deletion_tasks             | gauge     |                                |
| ttsyncd_redis_reconnects_total             | counter   |                                |
| ttsyncd_redis_connected                    | gauge     |                                |
| ttsyncd_last_sync_success_timestamp_seconds| gauge     |                                |
| ttsyncd_tasks                              | gauge     | side (file, redis)             |

`direction`: push, pull or both; `outcome`: ok, failed (nothing written; the next event tries
again) or deferred (Redis out of reach: retried); `origin`: daemon (a change seen, a resume,
anti-entropy) or command (push, pull, resolve through the socket). The change latency runs
from a change's first event (the file watcher seeing a save, a keyspace notification) to the
end of the sync that applied it, so it includes the debounce; syncs with no such event (the
first one, after a reconnect, a poll, anti-entropy, a command) add none.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Literal

from ttsyncd.config import Settings
from ttsyncd.errors import ConfigError

if TYPE_CHECKING:
    from wsgiref.simple_server import WSGIServer

    from prometheus_client import CollectorRegistry

    from ttsyncd.engine import SyncReport

Outcome = Literal["ok", "failed", "deferred"]

# Seconds. A sync of a few tasks takes milliseconds, of 10,000 tasks about a second; a change
# waits at least its side's debounce (100 ms for the file by default) before it is applied.
DURATION_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
LATENCY_BUCKETS = (0.05, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1, 1.5, 2.5, 5, 10, 30, 60)
EXTRA = "ttsyncd[metrics]"


class Metrics:
    """What the daemon reports; this base counts nothing (no `[metrics] listen`)."""

    def sync_done(
        self, report: SyncReport, *, direction: str, origin: str, waited: Mapping[str, float]
    ) -> None:
        """A sync completed; `waited`: per source side, seconds since its change's first
        event."""

    def sync_failed(self, *, direction: str, outcome: Outcome) -> None:
        """A sync of the daemon's own raised: nothing it owed is forgotten."""

    def deletions_refused(self) -> None:
        """The deletion guard refused: deletions from Redis held back (a refusal that starts
        or changes), or a sync that would delete many tasks from the file."""

    def deletions_held(self, tasks: int) -> None:
        """Deletions of `tasks` tasks from Redis are held back now (0: none)."""

    def connection(self, *, connected: bool, again: bool = False) -> None:
        """Connected to Redis (`again`: after the first time), or lost it."""

    def close(self) -> None:
        """Stop serving."""


class Prometheus(Metrics):
    """The metrics, in a registry of their own, served on `listen` until `close`."""

    def __init__(self, listen: tuple[str, int], source: str) -> None:
        """`source`: where `listen` was set, for the errors (the config file and key)."""
        try:
            import prometheus_client as prom
        except ImportError:
            raise ConfigError(
                f"{source}: metrics.listen is set, but prometheus_client is not installed: "
                f"pip install '{EXTRA}' (or remove [metrics] listen)"
            ) from None
        self.registry = prom.CollectorRegistry(auto_describe=True)
        self.declare(self.registry)
        self.server: WSGIServer | None = None
        self.thread: threading.Thread | None = None
        host, port = listen
        try:
            self.server, self.thread = prom.start_http_server(port, host, self.registry)
        except OSError as error:
            raise ConfigError(
                f"{source}: metrics.listen: cannot serve on {host}:{port}: {error.strerror}"
            ) from None

    def declare(self, registry: CollectorRegistry) -> None:
        """Every metric the module's table lists, in `registry`."""
        import prometheus_client as prom

        self.syncs = prom.Counter(
            "ttsyncd_syncs", "Syncs, by direction, outcome and origin.",
            ["direction", "outcome", "origin"], registry=registry,
        )  # fmt: skip
        self.duration = prom.Histogram(
            "ttsyncd_sync_duration_seconds", "How long each completed sync took.",
            ["direction"], buckets=DURATION_BUCKETS, registry=registry,
        )  # fmt: skip
        self.latency = prom.Histogram(
            "ttsyncd_change_latency_seconds",
            "From a change's first event (a file save, a keyspace notification) to the end of "
            "the sync that applied it.",
            ["source"], buckets=LATENCY_BUCKETS, registry=registry,
        )  # fmt: skip
        self.conflicts = prom.Counter(
            "ttsyncd_conflicts", "Fields both sides changed (settled by the policy or left "
            "for you).", registry=registry,
        )  # fmt: skip
        self.stale = prom.Counter(
            "ttsyncd_stale_writes", "Writes made from an old copy, set aside.", registry=registry
        )
        self.held = prom.Counter(
            "ttsyncd_held_writes", "Entries removed from the file while an agent holds their "
            "task, set aside.", registry=registry,
        )  # fmt: skip
        self.refusals = prom.Counter(
            "ttsyncd_refused_deletions", "Times the deletion guard refused deletions: from "
            "Redis (a new or changed refusal), or a sync deleting many from the file.",
            registry=registry,
        )  # fmt: skip
        self.refused = prom.Gauge(
            "ttsyncd_refused_deletion_tasks", "Tasks whose deletion is held back now.",
            registry=registry,
        )  # fmt: skip
        self.reconnects = prom.Counter(
            "ttsyncd_redis_reconnects", "Connections to Redis made again after the first.",
            registry=registry,
        )  # fmt: skip
        self.connected = prom.Gauge(
            "ttsyncd_redis_connected", "1 while connected to Redis.", registry=registry
        )
        self.last_success = prom.Gauge(
            "ttsyncd_last_sync_success_timestamp_seconds",
            "When the last sync completed (Unix time; 0: none yet).", registry=registry,
        )  # fmt: skip
        self.tasks = prom.Gauge(
            "ttsyncd_tasks", "Tasks on each side, as the last sync left them.", ["side"],
            registry=registry,
        )  # fmt: skip

    def sync_done(
        self, report: SyncReport, *, direction: str, origin: str, waited: Mapping[str, float]
    ) -> None:
        self.syncs.labels(direction, "ok", origin).inc()
        self.duration.labels(direction).observe(report.duration_ms / 1000)
        for source, seconds in waited.items():
            self.latency.labels(source).observe(max(0.0, seconds))
        kinds = [c.kind for c in report.recorded]
        self.conflicts.inc(kinds.count("conflict"))
        self.stale.inc(kinds.count("stale"))
        self.held.inc(kinds.count("held"))
        self.last_success.set(time.time())
        self.tasks.labels("file").set(tasks_left(report)[0])
        self.tasks.labels("redis").set(tasks_left(report)[1])

    def sync_failed(self, *, direction: str, outcome: Outcome) -> None:
        self.syncs.labels(direction, outcome, "daemon").inc()

    def deletions_refused(self) -> None:
        self.refusals.inc()

    def deletions_held(self, tasks: int) -> None:
        self.refused.set(tasks)

    def connection(self, *, connected: bool, again: bool = False) -> None:
        self.connected.set(1 if connected else 0)
        if connected and again:
            self.reconnects.inc()

    def close(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
        if self.thread is not None:
            self.thread.join(timeout=5)


def tasks_left(report: SyncReport) -> tuple[int, int]:
    """The tasks in the file and in Redis as a sync left them (its report counts those it
    read, and what it wrote)."""
    plan = len(report.plan.entries) if report.plan is not None else report.plan_tasks
    written = report.to_redis
    return plan, report.redis_tasks + written.created - written.deleted


def serve(settings: Settings) -> Metrics:
    """Metrics served where `[metrics] listen` says, or a `Metrics` that counts nothing."""
    listen = settings.metrics.listen
    if listen is None:
        return Metrics()
    return Prometheus(listen, str(settings.config_path or "the configuration"))
