"""`ttsyncd run`: live two-way sync of one town on one asyncio loop: lifecycle and wiring.

The path of a change, top-down: the file watcher (`watch_file`) or the Redis session
(`connect_and_listen`) feeds an event to the schedule (ttsyncd/schedule.py: debounce, the work
owed, retries, the verify interval); the syncer (`syncer`, `sync_due`) takes what is due,
fetches what it names into the mirror, adds the tasks it touched to the scope
(ttsyncd/scope.py) and runs the engine (`engine.run_sync`) in a worker thread, which reads and
writes both sides through ttsyncd/sides.py; the outcome goes back to the schedule.

The daemon's long-lived tasks ("parts") share the loop under one owner, a `Supervisor`
(ttsyncd/supervisor.py, an `asyncio.TaskGroup`), beside the control socket. Echoes of the
daemon's own writes are recognised by content: a file event whose text is what the daemon
wrote, a notification whose hash is what the mirror already holds, starts no sync.

A part that raises is logged with its traceback, then, by its policy (`POLICY`):

| part     | what it does                               | on an unexpected exception         |
|----------|--------------------------------------------|------------------------------------|
| redis    | the Redis session: connect, notifications  | restarted (jittered backoff): it   |
|          | on, subscribe, load the mirror, then listen| connects again and syncs in full, |
|          | or poll; it reconnects by itself (jittered | as after an outage                 |
|          | backoff) after a lost connection           |                                    |
| file     | watchfiles on the plan's directory         | restarted: watching again, it      |
|          |                                            | checks the file, so a save made    |
|          |                                            | meanwhile is synced                |
| syncer   | syncs what the schedule says is due, in a  | exit 1: what it holds (the work    |
|          | worker thread, one sync at a time;         | owed, the scope of the next sync)  |
|          | the only part that writes                  | can no longer be trusted; the next |
|          |                                            | daemon starts from the persisted   |
|          |                                            | base (systemd: Restart=on-failure) |
| verify   | anti-entropy, every `verify_interval_s`    | restarted                          |
| watchdog | WATCHDOG=1, only while the syncer makes    | exit 1: without its pings systemd  |
|          | progress                                   | would kill the daemon anyway       |
| reload   | SIGHUP: read the configuration again       | restarted: reading it again is     |
|          | (one-shot)                                 | harmless                           |

A restarted part that fails `supervisor.MAX_RESTARTS` times in a row exits 1 as well.
The metrics (`[metrics] listen`, ttsyncd/metrics.py) are no part: prometheus_client serves them
from a thread of its own, started before the parts and stopped after them; the daemon feeds
them where it records a sync, a failure, a refusal and a connection. The
syncer reports progress on every pass of its loop (at least every `beat_s` while idle); the
watchdog pings systemd only while that is fresh, so a syncer that died or is stuck in a sync
that never returns stops the pings and systemd restarts the daemon.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import enum
import gc
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal, TypeVar

import redis
import redis.asyncio
import redis.asyncio.cluster
import redis.cluster
import structlog
from redis.backoff import EqualJitterBackoff

from ttsyncd import activity, background, commands, control, engine, log, metrics, systemd
from ttsyncd.commands import Town
from ttsyncd.config import Settings
from ttsyncd.connection import connect, refused_by_acl
from ttsyncd.engine import SyncReport, SyncRequest, state_store_for
from ttsyncd.errors import DeletionsRefused, RedisUnavailable, TtsyncdError
from ttsyncd.events import EventBus
from ttsyncd.memory import release_free_memory
from ttsyncd.mirror import TownMirror
from ttsyncd.notifications import (
    FollowingClusterNotifications,
    Notifications,
    enable_notifications,
    notifications_arrive,
    subscribe,
)
from ttsyncd.plan import PlanReader, read_text
from ttsyncd.schedule import Batch, Owed, Schedule, Timing
from ttsyncd.scope import OwedTasks
from ttsyncd.sides import FileSide, RedisSide, Sides
from ttsyncd.state import RefusedDeletions
from ttsyncd.store import NotReplicated
from ttsyncd.supervisor import PartFailed, Policy, Supervisor, Work
from ttsyncd.topology import (
    UNREACHABLE,
    AsyncRedisClient,
    RedisClient,
    current_primaries,
    current_topology,
    open_async_client,
    topology_of,
)
from ttsyncd.watcher import PlanWatcher

logger = structlog.get_logger("ttsyncd.daemon")
T = TypeVar("T")

# The wait before the n-th reconnect in a row (n from 0): between half and all of
# min(5, 0.1 * 2**n) seconds, at random, so daemons sharing a Redis do not retry in lockstep.
RECONNECT_BACKOFF = EqualJitterBackoff(cap=5.0, base=0.1)
SHUTDOWN_FLUSH_S = 4.0  # SIGTERM: flush pending work, and exit within 5 s
HEALTH_CHECK_S = 1.0  # how often the session checks Redis is there and its primaries the same
HEARTBEAT_S = 1.0  # the syncer reports progress at least this often while idle
RELEASE_AFTER_IDLE_S = 2.0  # idle this long after syncs, the daemon releases free memory

# What a part's failure does (the table above).
POLICY: dict[str, Policy] = {
    "redis": Policy.RESTART,
    "file": Policy.RESTART,
    "syncer": Policy.FATAL,
    "verify": Policy.RESTART,
    "watchdog": Policy.FATAL,
    "reload": Policy.RESTART,
}


class Paused(TtsyncdError):
    """A command that would write, sent to a paused daemon."""


class TopologyChanged(redis.ConnectionError):
    """The primary the session listens to is no longer the one (a Sentinel failover, a
    Cluster's primaries changing): reconnect, resubscribe and sync in full, as after a loss."""


# What an anti-entropy pass found, by (file differed, Redis differed).
VERIFY_FOUND = {
    (False, False): "in sync",
    (True, False): "file differed",
    (False, True): "redis differed",
    (True, True): "file and redis differed",
}


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
    error), so `Daemon.state` decides it from them in one place, first match wins:"""

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


class Daemon:
    def __init__(self, settings: Settings, reload_settings: Callable[[], Settings], mode: str):
        self.settings = settings
        self.reload_settings = reload_settings
        self.mode = mode  # foreground | background | systemd
        self.file_side = FileSide(PlanReader(settings.tasks_file))
        self.state_store = state_store_for(settings)
        self.client: RedisClient | None = None
        self.mirror: TownMirror | None = None
        self.connected = False
        self.ever_connected = False  # STARTING until the first connection, RECONNECTING after
        self.syncing = False  # a sync (or a command that syncs) is under way
        self.notifications = "keyspace"
        self.topology = topology_of(settings.endpoint)
        self.schedule = Schedule(Timing.of(settings.sync))  # what to sync, when
        self.owed_tasks = OwedTasks()  # which tasks it must sync
        self.wake = asyncio.Event()
        self.stopping = asyncio.Event()
        self.first_sync_done = asyncio.Event()
        self.sync_lock = asyncio.Lock()
        self.started_at = datetime.now(UTC).isoformat()
        self.syncs = 0
        self.last_synced: float | None = None  # monotonic; None: memory released since
        self.last_sync: SyncStamp | None = None
        self.last_push: SyncStamp | None = None
        self.last_pull: SyncStamp | None = None
        self.problem: Problem | None = None
        self.last_report: SyncReport | None = None  # duplicates, unreadable hashes, agents
        self.parts = Supervisor()
        self.watchdog_interval = systemd.watchdog_interval()
        # How long the syncer may wait idle before it reports progress again: well within the
        # watchdog's window, so an idle syncer never reads as a stuck one.
        interval = self.watchdog_interval
        self.beat_s = min(HEARTBEAT_S, interval / 2) if interval else HEARTBEAT_S
        # `ttsyncd pause`: when it began; None when syncing. Kept in a marker file, so a daemon
        # restarted in the middle of a checkout starts paused.
        self.paused_since = background.paused_since(settings)
        self.verified_at: str | None = None  # the last anti-entropy pass, and what it found
        self.verify_found: str | None = None
        self.events = EventBus()  # what `ttsyncd monitor` shows (ttsyncd/activity.py says it)
        self.metrics = metrics.Metrics()  # counts nothing until `run` serves [metrics] listen

    # ------------------------------------------------------------------------ lifecycle

    async def run(self, on_ready: Callable[[], None] | None = None) -> int:
        """Serve until SIGTERM/SIGINT or a `stop` request; flush pending work; return 0."""
        # [metrics] listen: a missing extra or a port in use stops the daemon before it starts.
        self.metrics = await asyncio.to_thread(metrics.serve, self.settings)
        try:
            sock = control.socket_path(self.settings.town_dir)
            server = await control.serve(sock, self.handle)
            try:
                return await self.serve(on_ready)
            finally:
                await self.events.close()  # monitors end here, as the daemon does
                server.close()
                with contextlib.suppress(FileNotFoundError):
                    sock.unlink()
        finally:
            await asyncio.to_thread(self.metrics.close)

    async def serve(self, on_ready: Callable[[], None] | None) -> int:
        """0 after a stop; 1 when a part's failure took the daemon down."""
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self.stopping.set)
        loop.add_signal_handler(signal.SIGHUP, self.start_part, "reload", self.reload)
        # Fail fast (and say why) when Redis is wrong from the start; later outages are waited out.
        self.client = await asyncio.to_thread(connect, self.settings)
        failed: list[PartFailed] = []
        try:
            async with self.parts:
                self.start_part("redis", self.redis_session)
                self.start_part("file", self.watch_file)
                self.start_part("syncer", self.syncer)
                self.start_part("watchdog", self.watchdog)
                self.start_part("verify", self.verify)
                await self.serve_until_stopped(on_ready)
                self.parts.cancel_all()
        except* PartFailed as group:
            failed = [e for e in group.exceptions if isinstance(e, PartFailed)]
        finally:
            loop.remove_signal_handler(signal.SIGHUP)
        if failed:
            systemd.notify(f"STATUS=failed: {failed[0]}", "STOPPING=1")
            logger.critical("ttsyncd stopped: a part failed", part=failed[0].part,
                            error=str(failed[0].error))  # fmt: skip
            return 1
        logger.info("ttsyncd stopped")
        return 0

    async def serve_until_stopped(self, on_ready: Callable[[], None] | None) -> None:
        """Ready once the first sync is done; then serve until asked to stop, and flush."""
        logger.info(
            "ttsyncd started", town=self.settings.town_name, pid=os.getpid(),
            tasks_file=str(self.settings.tasks_file), redis=self.settings.endpoint.redacted(),
        )  # fmt: skip
        if self.paused_since:
            logger.warning("started paused: nothing is synced until `ttsyncd resume`",
                           since=self.paused_since)  # fmt: skip
            self.first_sync_done.set()  # ready: serving, watching, and holding everything
        ready = asyncio.ensure_future(self.first_sync_done.wait())
        stop = asyncio.ensure_future(self.stopping.wait())
        try:
            await asyncio.wait([ready, stop], return_when=asyncio.FIRST_COMPLETED)
        finally:
            ready.cancel()
            stop.cancel()
        if self.first_sync_done.is_set():
            systemd.notify("READY=1", f"STATUS={self.status_line()}")
            if on_ready:
                on_ready()
        await self.stopping.wait()
        systemd.notify("STOPPING=1")
        logger.info("stopping: flushing pending work")
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(SHUTDOWN_FLUSH_S):
                await self.flush()

    def start_part(self, name: str, work: Work) -> None:
        """Run `work` as the part `name` under the supervisor, with the part's policy; a part
        of that name already running is cancelled first (a reload moving the watch)."""
        self.parts.start(name, work, POLICY[name])

    def stop(self) -> None:
        self.stopping.set()

    async def flush(self) -> None:
        """Sync once more if anything is waiting (SIGTERM must not drop a debounced edit);
        paused, nothing: what waits is synced after `resume`, by this daemon or the next."""
        async with self.sync_lock:
            pass  # let a sync under way finish
        if self.paused_since:
            return
        if await self.file_differs():  # a save the watcher has not even reported yet
            self.schedule.file_changed()
        if self.connected and (self.schedule.file or self.schedule.keys):
            await self.sync_due(all_owed=True)

    async def file_differs(self) -> bool:
        try:
            text = await asyncio.to_thread(read_text, self.settings.tasks_file)
        except TtsyncdError:
            return True  # not UTF-8: let the sync report it
        return not self.file_side.knows(text)

    async def reload(self) -> None:
        """SIGHUP: read the configuration again; reconnect if it names another Redis."""
        systemd.notify("RELOADING=1")
        try:
            settings = await asyncio.to_thread(self.reload_settings)
        except TtsyncdError as error:
            self.report_problem("reload", f"reload failed: {error}")
            logger.error("reload failed, keeping the old configuration", error=str(error))
            systemd.notify("READY=1")
            return
        async with self.sync_lock:
            old, self.settings = self.settings, settings
            log.configure(settings.log.level, settings.log.format)
            self.schedule.retime(Timing.of(settings.sync))
            self.state_store = state_store_for(settings)
            if settings.tasks_file != old.tasks_file:
                self.file_side = FileSide(PlanReader(settings.tasks_file))
                self.start_part("file", self.watch_file)
            redis_changed = (settings.endpoint, settings.town_name) != (
                old.endpoint, old.town_name,
            )  # fmt: skip
            self.schedule.file_changed()  # the policy or the file may differ: sync once
            self.owed_tasks = OwedTasks()
        if redis_changed:
            self.connected = False
            self.start_part("redis", self.redis_session)
        self.clear_problem("reload")
        self.wake.set()
        logger.info("configuration reloaded", redis=settings.endpoint.redacted())
        systemd.notify("READY=1", f"STATUS={self.status_line()}")

    async def watchdog(self) -> None:
        """WATCHDOG=1 every half WatchdogSec, while the syncer makes progress: silent for a
        whole WatchdogSec (dead, or stuck in a sync that never returns), it gets no more pings,
        and systemd restarts the daemon. Paused or idle, the syncer still reports progress."""
        interval = self.watchdog_interval
        if interval is None:
            return
        stalled = False
        while True:
            silent = self.parts.silent_for("syncer")
            if silent <= 2 * interval:
                systemd.notify("WATCHDOG=1")
                if stalled:
                    logger.warning("the syncer makes progress again: watchdog pings resumed")
                stalled = False
            elif not stalled:
                stalled = True
                logger.error(
                    "the syncer has made no progress: no more watchdog pings, so systemd "
                    "restarts the daemon", silent_s=round(silent, 1),
                )  # fmt: skip
            await asyncio.sleep(interval)

    # ------------------------------------------------------------------------ Redis side

    async def redis_session(self) -> None:
        """Stay connected: notifications on, subscribed, mirror loaded; after any loss, back
        off, reconnect and sync in full, so edits made during the outage arrive. A failover
        takes the same path: the new primary gets notifications turned on and a full sync.
        A failure none of that expects ends the session (the supervisor restarts it)."""
        try:
            await self.stay_connected()
        except Exception:
            self.connected = False
            self.metrics.connection(connected=False)
            raise

    async def stay_connected(self) -> None:
        failures = 0  # reconnects in a row that failed, for the backoff
        while True:
            aclient: AsyncRedisClient | None = None
            try:
                client = await asyncio.to_thread(connect, self.settings)
                cluster = isinstance(client, redis.cluster.RedisCluster)
                aclient = open_async_client(self.settings.endpoint, cluster)
                if isinstance(aclient, redis.asyncio.cluster.RedisCluster):
                    await aclient.initialize()  # its slot map, before anyone asks for nodes
                await self.connect_and_listen(client, aclient)
            except TopologyChanged as change:
                logger.warning("Redis topology changed, reconnecting", change=str(change))
                self.connected = False
                failures = 0
            except (*UNREACHABLE, RedisUnavailable) as e:
                if self.connected:
                    logger.warning("lost Redis, reconnecting", error=type(e).__name__)
                    self.events.publish("reconnecting", error=type(e).__name__)
                    failures = 0  # it was up: a blip, not a long outage
                self.connected = False
                self.report_problem(
                    "redis", f"Redis unreachable at {self.settings.endpoint.redacted()}"
                )
            except redis.RedisError as error:  # e.g. a refused SUBSCRIBE: keep trying, say why
                self.connected = False
                self.report_problem("redis", f"Redis session failed: {error}")
                logger.error("Redis session failed, retrying", error=str(error))
            finally:
                if aclient is not None:
                    await aclient.aclose()
            self.metrics.connection(connected=False)
            await asyncio.sleep(RECONNECT_BACKOFF.compute(failures))
            failures += 1

    async def connect_and_listen(self, client: RedisClient, aclient: AsyncRedisClient) -> None:
        keyspace = await asyncio.to_thread(enable_notifications, client)
        topology = await asyncio.to_thread(current_topology, client)
        town, db = self.settings.town_name, self.settings.endpoint.db
        if not keyspace and isinstance(client, redis.Redis):
            # CONFIG refused: a managed service may have them on all the same. (Not probed on a
            # Cluster: one key's events come from one node only; it polls.)
            assert isinstance(aclient, redis.asyncio.Redis)
            keyspace = await notifications_arrive(aclient, client, town, db)
        async with self.sync_lock:
            if self.client is not None and self.client is not client:
                self.client.close()
            self.client = client
            self.mirror = TownMirror(client, town)
            self.topology = topology
        notifications: Notifications | None = None
        if keyspace:
            self.notifications = "keyspace"
            notifications = await subscribe(aclient, town, db)
        elif self.notifications != "polling":
            self.notifications = "polling"
            logger.warning(
                "Redis refused CONFIG and its keyspace notifications are off: polling for "
                "changes instead (docs/managed-redis.md says how to turn them on)",
                poll_interval_ms=self.settings.sync.poll_interval_ms,
            )
        self.schedule.reconnected()
        self.wake.set()
        self.metrics.connection(connected=True, again=self.ever_connected)
        self.connected = self.ever_connected = True
        self.clear_problem("redis")
        logger.info("connected to Redis", notifications=self.notifications,
                    topology=topology.describe())  # fmt: skip
        self.events.publish("connected", notifications=self.notifications,
                            redis=self.settings.endpoint.redacted())  # fmt: skip
        if notifications is None:
            await self.poll(client, aclient)
            return
        next_check = time.monotonic() + HEALTH_CHECK_S
        while True:
            # get_message raises ConnectionError when the connection goes (a Cluster's
            # notifications resubscribe by themselves instead: see FollowingClusterNotifications).
            message = await notifications.get_message(timeout=1.0)
            if message is not None:
                key = message.key if isinstance(message.key, str) else message.key.decode()
                self.schedule.keys_changed({key})
                self.wake.set()
            if message is None or time.monotonic() >= next_check:
                await self.check_session(aclient, notifications)
                next_check = time.monotonic() + HEALTH_CHECK_S

    async def check_session(
        self, aclient: AsyncRedisClient, notifications: Notifications | None = None
    ) -> None:
        """Notice a silent loss within a second or so, and a primary that is no longer ours."""
        await aclient.ping()
        if isinstance(notifications, FollowingClusterNotifications) and notifications.refreshed:
            raise TopologyChanged("the cluster's notifications were resubscribed")
        now = await current_primaries(aclient)
        if now != self.topology.primaries:
            raise TopologyChanged(f"primaries were {self.topology.primaries}, now {now}")

    async def poll(self, client: RedisClient, aclient: AsyncRedisClient) -> None:
        while True:
            await asyncio.sleep(self.settings.sync.poll_interval_ms / 1000)
            await asyncio.to_thread(client.ping)  # raise here, in the session, when Redis goes
            await self.check_session(aclient)
            self.schedule.reread()
            self.wake.set()

    # ------------------------------------------------------------------------ file side

    async def watch_file(self) -> None:
        """The plan file's watcher (ttsyncd/watcher.py); what it sees goes to `file_changed`."""
        await PlanWatcher(
            self.settings.tasks_file, self.stopping,
            lambda: self.settings.sync.file_max_wait_ms, self.file_changed, self.watch_problem,
        ).run()  # fmt: skip

    async def file_changed(self, at: float | None) -> None:
        """The watcher saw the plan's directory change at `at` (monotonic); None: it watches
        again after a gap (moved, failed, restarted), and a save made while nothing watched
        is synced all the same (before the first sync: that sync reads it all)."""
        if at is None and not self.first_sync_done.is_set():
            return
        if await self.file_differs():  # else: the echo of our own write
            self.schedule.file_changed(at)
            self.wake.set()

    def watch_problem(self, message: str | None) -> None:
        """The watcher cannot watch the plan's directory (None: it watches again)."""
        if message is None:
            self.clear_problem("watch")
        else:
            self.report_problem("watch", message)

    # ------------------------------------------------------------------------ syncing

    async def syncer(self) -> None:
        """Sync what is due, one sync at a time; otherwise wait for work (or its deadline),
        reporting progress on every pass, at least every `beat_s`: the watchdog's evidence."""
        while True:
            self.parts.progress("syncer")
            timeout = self.seconds_until_due()
            if timeout is None and self.idle_since_sync() >= RELEASE_AFTER_IDLE_S:
                # Nothing owed for a while after syncs: hand back the heap they freed (a big
                # plan's buffers, megabytes each), which glibc keeps otherwise. Not at once:
                # the next sync would fault those pages in again (~1 ms at 10,000 tasks).
                self.last_synced = None
                release_free_memory()
            if timeout is None or timeout > 0:
                timeout = self.beat_s if timeout is None else min(timeout, self.beat_s)
                # asyncio.timeout, not wait_for: on 3.11 a cancel racing wait_for's timeout
                # could leave this task stuck "cancelling", and SIGTERM never finishing.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(timeout):
                        await self.wake.wait()
                self.wake.clear()
                continue
            await self.sync_due()
            self.last_synced = time.monotonic()

    def idle_since_sync(self) -> float:
        """Seconds since the last sync ended; 0 when memory was released since (or no sync)."""
        return 0.0 if self.last_synced is None else time.monotonic() - self.last_synced

    def seconds_until_due(self) -> float | None:
        if not self.connected or self.paused_since:
            return None  # the Redis session (or `resume`) wakes us
        return self.schedule.seconds_until_due()

    async def sync_due(self, all_owed: bool = False) -> None:
        """One sync of the work the schedule says is due (`all_owed`: all that is owed,
        settled or not): fetch what it names from Redis, sync the directions owed, report
        the outcome to the schedule."""
        async with self.sync_lock:
            if self.paused_since:
                return  # the work stays owed until `resume`
            batch = self.schedule.take(all_owed)
            mirror, client = self.mirror, self.client
            assert mirror is not None and client is not None
            sides = Sides(self.file_side, RedisSide(client, self.settings.town_name, mirror))

            def fetch() -> bool:
                if batch.reread:
                    return mirror.reload()
                return bool(batch.keys) and mirror.refresh(batch.keys)

            try:
                redis_changed = await asyncio.to_thread(fetch)
                owed = self.schedule.owed_by(batch, redis_changed=redis_changed)
                self.owed_tasks.note(mirror.take_changes(), full=batch.full)
                if not (owed.push or owed.pull):
                    return  # an echo of our own write, or an agent's heartbeat
                scope = self.owed_tasks.scope()
                request = SyncRequest(push=owed.push, pull=owed.pull, scope=scope)
                report = await self.under_way(
                    engine.run_sync, self.settings, sides, request, self.state_store
                )
                if scope is None:  # the mirror's new tasks too, before synced() freezes the town
                    await asyncio.to_thread(mirror.flush)
            except Exception as error:
                self.sync_failed(batch, error, self.schedule.intended(batch))
                return
            finally:
                self.first_sync_done.set()
            self.synced(report, owed, whole_town=scope is None)

    def sync_failed(self, batch: Batch, error: Exception, intended: Owed) -> None:
        """A sync raised: nothing it owed is forgotten, and the daemon goes on. `intended`:
        the directions it was to sync, for the metrics."""
        retry = isinstance(error, UNREACHABLE)
        self.metrics.sync_failed(direction=direction_of(intended.push, intended.pull),
                                 outcome="deferred" if retry else "failed")  # fmt: skip
        if isinstance(error, DeletionsRefused):
            self.metrics.deletions_refused()
        if retry:
            why = f"Redis unreachable during sync ({type(error).__name__})"
            if isinstance(error, NotReplicated):  # behind Sentinel, mid-failover
                why = str(error)
            self.retry_later(batch, why)
        elif isinstance(error, TtsyncdError):
            # A broken save, a refused deletion: nothing was written; report and wait.
            self.fail(str(error))
        elif isinstance(error, redis.ResponseError):
            # An ACL refusal is the operator's to fix: the same line a one-shot command
            # prints. Any other reply error is a bug, reported as one.
            refused = refused_by_acl(error, self.settings.endpoint)
            self.fail(str(refused) if refused else internal_error(error))
        else:  # a bug in the engine must not stop the daemon: report it, go on
            self.fail(internal_error(error))

    def synced(self, report: SyncReport, owed: Owed, *, whole_town: bool) -> None:
        """A sync completed: what it owed is paid; what it left for a direction is owed."""
        self.schedule.synced(owed_push=bool(report.owed_push), owed_pull=bool(report.owed_pull))
        self.owed_tasks.synced(report.plan, report.owed_push | report.owed_pull)
        if whole_town:
            # A whole town now lives in memory (hundreds of thousands of objects at
            # 10,000 tasks): leave it out of the cyclic GC, whose full passes over it
            # would stall a later sync for tens of milliseconds. Collect first: garbage
            # frozen with it would never be freed.
            gc.collect()
            gc.freeze()
            release_free_memory()
        self.wake.set()
        waited = owed.waited(self.schedule.clock())
        self.record(report, push=owed.push, pull=owed.pull, waited=waited)

    async def under_way(self, work: Callable[..., T], *args: Any) -> T:
        """Run a sync (or a command that syncs) in a worker thread, SYNCING meanwhile."""
        self.syncing = True
        try:
            return await asyncio.to_thread(work, *args)
        finally:
            self.syncing = False

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

    def fail(self, error: str) -> None:
        self.report_problem("sync", error)
        logger.error("sync failed", error=error)
        systemd.notify(f"STATUS={self.status_line()}")
        self.first_sync_done.set()

    def retry_later(self, batch: Batch, why: str) -> None:
        self.report_problem("redis", why)
        logger.warning("sync deferred", error=why)
        self.schedule.failed(batch, retry=True)
        self.wake.set()

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
        systemd.notify(f"STATUS={self.status_line()}")

    # ------------------------------------------------------------------------ anti-entropy

    async def verify(self) -> None:
        """While idle, every `verify_interval_s`: check that the file and Redis still hold what
        was last synced, and sync in full if not. A safety net under the watchers: a change
        they could not see (a notification lost, a write through a hard link) is synced late,
        never lost."""
        while True:
            await asyncio.sleep(self.schedule.verify_in())
            self.schedule.verify_started()
            if self.idle() and not self.sync_lock.locked():
                async with self.sync_lock:
                    if self.idle():  # still, now that no sync can start
                        await self.verify_once()

    def idle(self) -> bool:
        """Connected, first sync done, and no sync settling or owed."""
        return (
            self.connected and self.first_sync_done.is_set() and not self.paused_since
            and self.schedule.settled()
        )  # fmt: skip

    async def verify_once(self) -> None:
        """One pass; the caller holds the sync lock. The file: its text against the last text
        read or written. Redis: every hash of the town against the mirror (`TownMirror.verify`
        takes in what differs from what notifications had kept it at)."""
        mirror, file_side = self.mirror, self.file_side
        assert mirror is not None

        def check() -> tuple[bool, bool]:
            try:
                file_differed = not file_side.knows(read_text(file_side.path))
            except TtsyncdError:
                file_differed = True  # not UTF-8: let the sync report it
            return file_differed, mirror.verify()

        try:
            file_differed, redis_differed = await asyncio.to_thread(check)
        except UNREACHABLE:
            return  # the Redis session notices and reconnects (and then syncs in full)
        self.verified_at = datetime.now(UTC).isoformat(timespec="milliseconds")
        self.verify_found = VERIFY_FOUND[file_differed, redis_differed]
        if file_differed or redis_differed:
            logger.warning("verify: out of sync", found=self.verify_found)
            # A sync of everything (the mirror holds what differed already): whatever slipped
            # past the change detection is merged, not only what this pass saw.
            self.schedule.verify_found(file_differed=file_differed, redis_differed=redis_differed)
            self.wake.set()

    # ------------------------------------------------------------------------ control

    async def handle(self, message: dict[str, Any]) -> Any:
        command = message["cmd"]
        if command == "status":
            return self.status()
        if command == "subscribe":  # `ttsyncd monitor`
            subscription = self.events.subscribe()
            return control.Stream(
                {"status": self.status()}, subscription.events(),
                lambda: self.events.unsubscribe(subscription),
            )  # fmt: skip
        if command == "stop":
            self.stop()
            return {"stopping": True, "pid": os.getpid()}
        if command == "reload":
            await self.reload()
            return self.status()
        if command == "pause":
            return await self.pause()
        if command == "resume":
            return await self.resume()
        if command == "conflicts":
            as_json = bool(message.get("json"))
            return commands.conflicts(
                self.settings, as_json=as_json, store=self.state_store
            ).to_json()
        if command in ("push", "pull", "check", "resolve", "repair"):
            return (await self.run_command(command, message)).to_json()
        raise ValueError(f"unknown command {command!r}")

    async def pause(self) -> dict[str, Any]:
        """Stop syncing and writing either side (for git): both are still watched, and what
        changes waits. Once this answers, nothing more is written (a sync under way ends
        first)."""
        async with self.sync_lock:
            already = self.paused_since is not None
            self.paused_since = await asyncio.to_thread(background.mark_paused, self.settings)
        if not already:
            logger.info("paused", since=self.paused_since)
            self.events.publish("paused", since=self.paused_since)
            systemd.notify(f"STATUS={self.status_line()}")
        return {"paused": {"since": self.paused_since}, "already": already}

    async def resume(self) -> dict[str, Any]:
        """Sync again: one sync right away, of everything that changed meanwhile (the merge
        rules as ever), before answering."""
        async with self.sync_lock:
            since = self.paused_since
            await asyncio.to_thread(background.clear_pause, self.settings)
            self.paused_since = None
            if since is None:
                return {"resumed": False}
            # Read both sides afresh: a long pause (a rebase) may hold more than the events say.
            self.schedule.resumed(file_differed=await self.file_differs())
            self.wake.set()
        logger.info("resumed", paused_since=since)
        self.events.publish("resumed", paused_since=since)
        if self.connected:
            await self.sync_due(all_owed=True)
        systemd.notify(f"STATUS={self.status_line()}")
        return {"resumed": True, "paused_since": since, "synced": self.connected,
                "last_error": self.last_error}  # fmt: skip

    async def run_command(self, command: str, message: dict[str, Any]) -> commands.Output:
        """push/pull/check/resolve for the CLI, through the daemon's own caches, between
        its syncs. Paused, the commands that write are refused (a dry run writes nothing)."""
        writes = command in ("push", "pull", "resolve", "repair") and not message.get("dry_run")
        if self.paused_since and writes:
            raise Paused(f"paused since {self.paused_since}; `ttsyncd resume` first")
        if not self.connected or self.mirror is None or self.client is None:
            raise RedisUnavailable(f"Redis unreachable at {self.settings.endpoint.redacted()}")
        async with self.sync_lock:
            town = Town(
                self.settings, self.client, self.file_side.reader, self.mirror, self.state_store
            )
            force, dry_run = bool(message.get("force")), bool(message.get("dry_run"))

            def run() -> commands.Output:
                assert self.mirror is not None
                self.mirror.reload()  # an explicit command reads Redis afresh
                if command == "check":
                    return commands.check(town)
                if command == "resolve":
                    return commands.resolve(town, str(message["plan_id"]), str(message["take"]))
                if command == "repair":
                    return commands.repair(town, dry_run=dry_run)
                return commands.push_or_pull(town, command, force=force, dry_run=dry_run)

            output = await self.under_way(run)
            for report, push, pull, wrote_nothing in town.synced:  # recorded as its own are
                if wrote_nothing:
                    said = command if command == "check" else f"{command} --dry-run"
                    activity.check_done(self.events, report, command=said)
                else:
                    self.record(report, push=push, pull=pull, origin="command")
            if writes:  # a forced push or a resolve may have lifted (or made) a refusal
                self.show_refusal(self.state_store.load().refused)
            return output

    def status(self) -> dict[str, Any]:
        settings = self.settings
        lists = commands.conflict_lists(settings, self.state_store)
        refused = self.state_store.load().refused
        return {
            "pid": os.getpid(),
            "town": settings.town_name,
            "town_dir": str(settings.town_dir),
            "tasks_file": str(settings.tasks_file),
            "redis": settings.endpoint.redacted(),
            "topology": self.topology.to_json(),
            "mode": self.mode,
            "state": self.state.value,
            "notifications": self.notifications,
            "redis_connected": self.connected,
            "started_at": self.started_at,
            "syncs": self.syncs,
            "last_push": vars(self.last_push) if self.last_push else None,
            "last_pull": vars(self.last_pull) if self.last_pull else None,
            "pending_events": {"file": self.schedule.file, "redis": len(self.schedule.keys)},
            "duplicates": self.last_report.duplicates if self.last_report else {},
            "unreadable": self.last_report.unreadable if self.last_report else {},
            "unknown_agents": self.last_report.unresolved_agents if self.last_report else {},
            "conflicts": len(lists["recorded"]),
            "conflicts_pending": len(lists["pending"]),
            "refused_deletions": sorted(refused.plan_ids) if refused else [],
            "paused": {"since": self.paused_since} if self.paused_since else None,
            "last_error": self.last_error,
            "last_error_kind": self.problem.kind if self.problem else None,
            "part_failures": dict(self.parts.failures),  # per part, restarted or not
            "monitors": len(self.events.subscribers),  # `ttsyncd monitor`s watching
            "verify": {
                "last": self.verified_at,
                "found": self.verify_found,
                "interval_s": settings.sync.verify_interval_s,
            },
        }

    @property
    def state(self) -> DaemonState:
        """The one place the daemon's state is decided (DaemonState lists the order)."""
        problem = self.problem.kind if self.problem else None
        if self.paused_since:
            return DaemonState.PAUSED
        if self.syncing:
            return DaemonState.SYNCING
        if not self.connected or problem == "redis":
            return DaemonState.RECONNECTING if self.ever_connected else DaemonState.STARTING
        if problem is not None:
            return DaemonState.ERROR
        if not self.first_sync_done.is_set():
            return DaemonState.STARTING
        return DaemonState.IDLE

    def status_line(self) -> str:
        """systemd's STATUS= line: the state, and what goes with it."""
        state = self.state
        if state is DaemonState.PAUSED:
            return f"paused since {self.paused_since}"
        if self.last_error and state in (DaemonState.ERROR, DaemonState.RECONNECTING):
            return f"{state}: {self.last_error.splitlines()[0]}"
        last = self.last_sync.time if self.last_sync else "never"
        return f"{state}: {self.syncs} syncs, last {last}; notifications: {self.notifications}"


def direction_of(push: bool, pull: bool) -> str:
    return "both" if push and pull else ("push" if push else "pull")


def internal_error(error: Exception) -> str:
    logger.error("sync crashed", exc_info=error)
    return f"internal error: {type(error).__name__}: {error}"


def run_foreground(settings: Settings, reload_settings: Callable[[], Settings], mode: str,
                   on_ready: Callable[[], None] | None = None) -> int:  # fmt: skip
    one_malloc_arena()
    return asyncio.run(Daemon(settings, reload_settings, mode).run(on_ready))


M_ARENA_MAX = -8  # glibc's mallopt parameter


def one_malloc_arena() -> None:
    """glibc gives every thread that allocates an arena of its own, and syncs run in worker
    threads: a big town's large buffers (the plan's text and its copies, megabytes each) end
    up spread over arenas that never shrink, ~5 MB of RSS more at 10,000 tasks. One arena
    is plenty: Python code holds the GIL anyway. (No-op where libc is not glibc.)"""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallopt(M_ARENA_MAX, 1)
