"""One owner for the daemon's long-lived tasks ("parts"): an `asyncio.TaskGroup` with a policy
per part, so that no part can end silently.

A part that raises is logged with its traceback and then, by its policy:

- `RESTART`: run again after a jittered backoff (redis-py's `EqualJitterBackoff`, so several
  daemons do not retry in lockstep). A part that keeps failing (`max_restarts` times in a row,
  none of those runs lasting `healthy_after` seconds) is given up on, as `FATAL`.
- `FATAL`: the part's failure takes the daemon down: the group cancels every other part and
  `PartFailed` comes out of `async with`, for the daemon to exit non-zero and let systemd's
  `Restart=on-failure` start it afresh.

A part that returns is done, and not restarted. Cancelling a part (to replace it, or at
shutdown) is not a failure.

Parts also report progress here (`progress(name)`), and `silent_for(name)` says how long a part
has not, so the systemd watchdog can ping only while the part doing the work makes progress.
"""

from __future__ import annotations

import asyncio
import enum
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from types import TracebackType

import structlog
from redis.backoff import AbstractBackoff, EqualJitterBackoff

from ttsyncd import systemd

logger = structlog.get_logger("ttsyncd.supervisor")

MAX_RESTARTS = 5  # failures in a row before a RESTART part is given up on
HEALTHY_AFTER_S = 60.0  # a run this long resets the count of failures in a row


class Policy(enum.Enum):
    RESTART = "restart"
    FATAL = "fatal"


class PartFailed(Exception):
    """A part failed and its policy (or its restarts running out) takes the daemon down."""

    def __init__(self, part: str, error: BaseException) -> None:
        super().__init__(f"{part} failed: {type(error).__name__}: {error}")
        self.part = part
        self.error = error


Work = Callable[[], Awaitable[None]]


class Supervisor:
    """`async with Supervisor() as parts: parts.start("name", work, Policy.RESTART)`."""

    def __init__(
        self,
        backoff: AbstractBackoff | None = None,
        max_restarts: int = MAX_RESTARTS,
        healthy_after: float = HEALTHY_AFTER_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.backoff = backoff or EqualJitterBackoff(cap=10.0, base=0.5)
        self.max_restarts = max_restarts
        self.healthy_after = healthy_after
        self.clock = clock
        self.failures: Counter[str] = Counter()  # per part, since the daemon started
        self.tasks: dict[str, asyncio.Task[None]] = {}
        self.last_progress: dict[str, float] = {}
        self.group: asyncio.TaskGroup | None = None

    async def __aenter__(self) -> Supervisor:
        self.group = asyncio.TaskGroup()
        await self.group.__aenter__()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        assert self.group is not None
        try:
            await self.group.__aexit__(exc_type, exc, tb)
        finally:
            self.group = None

    def start(self, name: str, work: Work, policy: Policy) -> None:
        """Run `work()` as the part `name`, in place of the one running under that name (which
        is cancelled). Ignored once the group is closing: nothing new starts at shutdown."""
        if self.group is None:
            return
        old = self.tasks.get(name)
        if old is not None and not old.done():
            old.cancel()
        self.failures.setdefault(name, 0)
        supervised = self.supervise(name, work, policy)
        try:
            task = self.group.create_task(supervised, name=name)
        except RuntimeError:  # the group is shutting down (a part failed, or we are stopping)
            supervised.close()
            return
        self.tasks[name] = task

    def cancel_all(self) -> None:
        for task in self.tasks.values():
            task.cancel()

    def progress(self, name: str) -> None:
        """The part `name` made progress (an iteration, an idle wait that ended)."""
        self.last_progress[name] = self.clock()

    def silent_for(self, name: str) -> float:
        """Seconds since the part `name` last reported progress (infinite if it never did)."""
        last = self.last_progress.get(name)
        return float("inf") if last is None else self.clock() - last

    async def watchdog(self, name: str, interval: float | None) -> None:
        """WATCHDOG=1 every `interval` (half WatchdogSec), while the part `name` makes progress:
        silent for a whole WatchdogSec (dead, or stuck in work that never returns), it gets no
        more pings, and systemd restarts the daemon. None: systemd asked for no pings."""
        if interval is None:
            return
        stalled = False
        while True:
            silent = self.silent_for(name)
            if silent <= 2 * interval:
                systemd.notify("WATCHDOG=1")
                if stalled:
                    logger.warning(f"the {name} makes progress again: watchdog pings resumed")
                stalled = False
            elif not stalled:
                stalled = True
                logger.error(
                    f"the {name} has made no progress: no more watchdog pings, so systemd "
                    "restarts the daemon", silent_s=round(silent, 1),
                )  # fmt: skip
            await asyncio.sleep(interval)

    async def supervise(self, name: str, work: Work, policy: Policy) -> None:
        failures = 0  # in a row
        while True:
            started = self.clock()
            try:
                await work()
                return
            except Exception as error:  # CancelledError is a BaseException: it goes through
                self.failures[name] += 1
                if self.clock() - started >= self.healthy_after:
                    failures = 0
                failures += 1
                if policy is Policy.FATAL or failures > self.max_restarts:
                    logger.critical(
                        "part failed, stopping the daemon", part=name, policy=policy.value,
                        failures=failures, exc_info=error,
                    )  # fmt: skip
                    raise PartFailed(name, error) from error
                delay = self.backoff.compute(failures)
                logger.error(
                    "part failed, restarting", part=name, failures=failures,
                    restart_in_s=round(delay, 2), exc_info=error,
                )  # fmt: skip
            await asyncio.sleep(delay)
