"""`ttsyncd run`: live two-way sync of one town on one asyncio loop: lifecycle, wiring and
the syncer.

The path of a change, top-down: the file watcher (ttsyncd/watcher.py, through `file_changed`)
or the Redis session (ttsyncd/session.py, `RedisSession.listen` or `poll`) feeds an event to
the schedule (ttsyncd/schedule.py: debounce, the work owed, retries, the verify interval); the
syncer (`syncer`, `sync_due`) takes what is due, fetches what it names into the mirror, adds the
tasks it touched to the scope (ttsyncd/scope.py) and runs the engine (`engine.run_sync`) in a
worker thread, which reads and writes both sides through ttsyncd/sides.py; the outcome goes
back to the schedule, and to the standing (ttsyncd/standing.py: the syncs done, the last error,
the state, with the events and metrics they feed), which `status` answers from.

The daemon's long-lived tasks ("parts") share the loop under one owner, a `Supervisor`
(ttsyncd/supervisor.py, an `asyncio.TaskGroup`), beside the control socket (ttsyncd/control.py
serves it; ttsyncd/handlers.py answers each command, `status` included). Echoes of the
daemon's own writes are recognised by content: a file event whose text is what the daemon
wrote, a notification whose hash is what the mirror already holds, starts no sync.

A part that raises is logged with its traceback, then, by its policy (`POLICY`):

| part     | what it does                               | on an unexpected exception         |
|----------|--------------------------------------------|------------------------------------|
| redis    | the Redis session (ttsyncd/session.py):    | restarted (jittered backoff): it   |
|          | connect, notifications on, subscribe, load | connects again and syncs in full,  |
|          | the mirror, then listen or poll; it        | as after an outage                 |
|          | reconnects by itself (jittered backoff)    |                                    |
|          | after a lost connection                    |                                    |
| file     | watchfiles on the plan's directory         | restarted: watching again, it      |
|          | (ttsyncd/watcher.py)                       | checks the file, so a save made    |
|          |                                            | meanwhile is synced                |
| syncer   | syncs what the schedule says is due, in a  | exit 1: what it holds (the work    |
|          | worker thread, one sync at a time;         | owed, the scope of the next sync)  |
|          | the only part that writes                  | can no longer be trusted; the next |
|          |                                            | daemon starts from the persisted   |
|          |                                            | base (systemd: Restart=on-failure) |
| verify   | anti-entropy, every `verify_interval_s`    | restarted                          |
|          | (ttsyncd/antientropy.py)                   |                                    |
| watchdog | WATCHDOG=1, only while the syncer makes    | exit 1: without its pings systemd  |
|          | progress (`Supervisor.watchdog`)           | would kill the daemon anyway       |
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
import gc
import os
import signal
import time
from collections.abc import Callable
from typing import Any, TypeVar

import redis
import structlog

from ttsyncd import activity, background, control, engine, handlers, log, metrics, systemd
from ttsyncd.antientropy import AntiEntropy
from ttsyncd.config import Settings
from ttsyncd.connection import connect, refused_by_acl
from ttsyncd.engine import SyncReport, SyncRequest, state_store_for
from ttsyncd.errors import DeletionsRefused, TtsyncdError
from ttsyncd.memory import release_free_memory
from ttsyncd.plan import PlanReader
from ttsyncd.replication import NotReplicated
from ttsyncd.schedule import Batch, Owed, Schedule, Timing
from ttsyncd.scope import OwedTasks
from ttsyncd.session import RedisSession
from ttsyncd.sides import FileSide, RedisSide, Sides
from ttsyncd.standing import DaemonState, Facts, Standing, decide_state, direction_of
from ttsyncd.supervisor import PartFailed, Policy, Supervisor, Work
from ttsyncd.topology import UNREACHABLE
from ttsyncd.watcher import PlanWatcher

logger = structlog.get_logger("ttsyncd.daemon")
T = TypeVar("T")

SHUTDOWN_FLUSH_S = 4.0  # SIGTERM: flush pending work, and exit within 5 s
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


class Daemon:
    """One town's daemon: its parts (the table above) and what they share: the schedule, the
    sync lock, the event that wakes the syncer, the session and the standing."""

    def __init__(self, settings: Settings, reload_settings: Callable[[], Settings], mode: str):
        self.settings = settings
        self.reload_settings = reload_settings
        self.mode = mode  # foreground | background | systemd
        self.file_side = FileSide(PlanReader(settings.tasks_file))
        self.state_store = state_store_for(settings)
        self.syncing = False  # a sync (or a command that syncs) is under way
        self.schedule = Schedule(Timing.of(settings.sync))  # what to sync, when
        self.owed_tasks = OwedTasks()  # which tasks it must sync
        self.wake = asyncio.Event()
        self.stopping = asyncio.Event()
        self.first_sync_done = asyncio.Event()
        self.sync_lock = asyncio.Lock()
        # The syncs done and the last error, the events and the metrics (ttsyncd/standing.py).
        self.standing = Standing()
        # The Redis connection, kept up by the part `redis` (ttsyncd/session.py).
        self.session = RedisSession(
            lambda: self.settings, self.sync_lock, self.schedule, self.wake, self.standing
        )
        self.last_synced: float | None = None  # monotonic; None: memory released since
        self.parts = Supervisor()
        self.watchdog_interval = systemd.watchdog_interval()
        # How long the syncer may wait idle before it reports progress again: well within the
        # watchdog's window, so an idle syncer never reads as a stuck one.
        interval = self.watchdog_interval
        self.beat_s = min(HEARTBEAT_S, interval / 2) if interval else HEARTBEAT_S
        # `ttsyncd pause`: when it began; None when syncing. Kept in a marker file, so a daemon
        # restarted in the middle of a checkout starts paused.
        self.paused_since = background.paused_since(settings)
        # The part `verify` (ttsyncd/antientropy.py).
        self.anti_entropy = AntiEntropy(
            self.schedule, self.sync_lock, self.wake, self.idle,
            lambda: (self.file_side, self.session.mirror),
        )  # fmt: skip

    # ------------------------------------------------------------------------ lifecycle

    async def run(self, on_ready: Callable[[], None] | None = None) -> int:
        """Serve until SIGTERM/SIGINT or a `stop` request; flush pending work; return 0."""
        # [metrics] listen: a missing extra or a port in use stops the daemon before it starts.
        self.standing.metrics = await asyncio.to_thread(metrics.serve, self.settings)
        try:
            sock = control.socket_path(self.settings.town_dir)
            server = await control.serve(sock, lambda message: handlers.handle(self, message))
            try:
                return await self.serve(on_ready)
            finally:
                await self.standing.events.close()  # monitors end here, as the daemon does
                server.close()
                with contextlib.suppress(FileNotFoundError):
                    sock.unlink()
        finally:
            await asyncio.to_thread(self.standing.metrics.close)

    async def serve(self, on_ready: Callable[[], None] | None) -> int:
        """0 after a stop; 1 when a part's failure took the daemon down."""
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self.stopping.set)
        loop.add_signal_handler(signal.SIGHUP, self.start_part, "reload", self.reload)
        # Fail fast (and say why) when Redis is wrong from the start; later outages are waited out.
        self.session.client = await asyncio.to_thread(connect, self.settings)
        failed: list[PartFailed] = []
        try:
            async with self.parts:
                self.start_part("redis", self.session.run)
                self.start_part("file", self.watch_file)
                self.start_part("syncer", self.syncer)
                self.start_part("watchdog", self.watchdog)
                self.start_part("verify", self.anti_entropy.run)
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

    async def watchdog(self) -> None:
        """systemd's watchdog pings, only while the syncer makes progress (ttsyncd/supervisor.py
        says how); paused or idle, the syncer still reports progress."""
        await self.parts.watchdog("syncer", self.watchdog_interval)

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
        if self.session.connected and (self.schedule.file or self.schedule.keys):
            await self.sync_due(all_owed=True)

    async def file_differs(self) -> bool:
        try:
            return await asyncio.to_thread(self.file_side.differs)
        except TtsyncdError:
            return True  # not UTF-8: let the sync report it

    async def reload(self) -> None:
        """SIGHUP: read the configuration again; reconnect if it names another Redis."""
        systemd.notify("RELOADING=1")
        try:
            settings = await asyncio.to_thread(self.reload_settings)
        except TtsyncdError as error:
            self.standing.report_problem("reload", f"reload failed: {error}")
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
            self.session.connected = False
            self.start_part("redis", self.session.run)
        self.standing.clear_problem("reload")
        self.wake.set()
        logger.info("configuration reloaded", redis=settings.endpoint.redacted())
        systemd.notify("READY=1", f"STATUS={self.status_line()}")

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
            self.standing.clear_problem("watch")
        else:
            self.standing.report_problem("watch", message)

    # ------------------------------------------------------------------------ syncing

    async def syncer(self) -> None:
        """Sync what is due, one sync at a time; otherwise wait for work (or its deadline),
        reporting progress on every pass, at least every `beat_s`: the watchdog's evidence."""
        while True:
            self.parts.progress("syncer")
            timeout = self.seconds_until_due()
            if (
                timeout is None
                and not self.syncing
                and self.idle_since_sync() >= RELEASE_AFTER_IDLE_S
            ):
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

    def idle_since_sync(self) -> float:
        """Seconds since the last sync ended; 0 when memory was released since (or no sync)."""
        return 0.0 if self.last_synced is None else time.monotonic() - self.last_synced

    def seconds_until_due(self) -> float | None:
        if not self.session.connected or self.paused_since:
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
            mirror, client = self.session.mirror, self.session.client
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
        metrics = self.standing.metrics
        metrics.sync_failed(direction=direction_of(intended.push, intended.pull),
                            outcome="deferred" if retry else "failed")  # fmt: skip
        if isinstance(error, DeletionsRefused):
            metrics.deletions_refused()
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
            self.last_synced = time.monotonic()  # (the idle release counts from here)

    def fail(self, error: str) -> None:
        self.standing.report_problem("sync", error)
        logger.error("sync failed", error=error)
        systemd.notify(f"STATUS={self.status_line()}")
        self.first_sync_done.set()

    def retry_later(self, batch: Batch, why: str) -> None:
        self.standing.report_problem("redis", why)
        logger.warning("sync deferred", error=why)
        self.schedule.failed(batch, retry=True)
        self.wake.set()

    def record(
        self, report: SyncReport, *, push: bool, pull: bool, origin: activity.Origin = "daemon",
        waited: dict[str, float] | None = None,
    ) -> None:  # fmt: skip
        """A sync completed: `status`, the log, the events, the metrics and systemd say so."""
        self.standing.record(report, push=push, pull=pull, origin=origin, waited=waited)
        systemd.notify(f"STATUS={self.status_line()}")

    # ------------------------------------------------------------------------ anti-entropy

    def idle(self) -> bool:
        """Connected, first sync done, and no sync settling or owed."""
        return (
            self.session.connected and self.first_sync_done.is_set() and not self.paused_since
            and self.schedule.settled()
        )  # fmt: skip

    # ------------------------------------------------------------------------ status

    @property
    def state(self) -> DaemonState:
        """What the daemon is doing (ttsyncd/standing.py decides it from these facts)."""
        return decide_state(Facts(
            paused=bool(self.paused_since), syncing=self.syncing,
            connected=self.session.connected, ever_connected=self.session.ever_connected,
            problem=self.standing.problem, first_sync_done=self.first_sync_done.is_set(),
        ))  # fmt: skip

    def status_line(self) -> str:
        """systemd's STATUS= line: the state, and what goes with it."""
        return self.standing.status_line(
            self.state, paused_since=self.paused_since, notifications=self.session.notifications
        )


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
