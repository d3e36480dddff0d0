"""When the daemon syncs, and what: its scheduler. Pure: events in, answers out, on a clock it
is given (no I/O, no asyncio), so it is tested with a fake clock and no Redis.

The daemon's syncer is a loop around it: feed events in (`file_changed`, `keys_changed`,
`reread`, `reconnected`, `verify_found`, `resumed`), ask `seconds_until_due`, and when that
is 0 `take` the work that is due, fetch what it names from Redis, ask `owed_by` which
directions the sync owes, run it, and report the outcome (`synced` or `failed`).

*Owed* is the one name for work the daemon must still do, from an event's arrival until a
sync completes it:

- An event owes work, but a burst of events owes it once: file events settle over the file
  side's debounce (quiet period, longest wait: `debounce.Quiescence`), notified Redis keys
  over the Redis side's. `reread`, `pull` and `full` are owed at once, no debounce (they
  follow a reconnect, a poll, a sync that left a pull waiting, an anti-entropy pass).
- `take` hands the due part of it to one sync (a `Batch`); a side still settling waits, so a
  Redis update never pushes a half-saved file.
- The directions a sync owes (`Owed.push`, `Owed.pull`) stay owed until a sync completes:
  one that fails forgets nothing. A failure that may pass by itself (Redis out of reach) is
  retried `RETRY_S` later with everything the batch held, in full; any other (a broken save,
  a refusal) waits for the next event.
- `full`: every task both ways, even if nothing looks changed (start, reconnect, verify).

Each side's earliest event is remembered with the work it owes (`Owed.file_since`,
`Owed.redis_since`), through a retry, until a sync completes it: the change's latency, event
to applied, that `ttsyncd_change_latency_seconds` measures.

Which tasks a sync owes is the other half of the work owed, kept in `scope.OwedTasks`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from ttsyncd.config import SyncSettings
from ttsyncd.debounce import Quiescence

RETRY_S = 1.0  # a sync that could not reach Redis is tried again this much later


@dataclass
class Owed:
    """Work owed to a side, beyond the settling events (`Schedule.owed_now`), or the
    directions a sync owes (`Schedule.owed`)."""

    push: bool = False  # file-side changes to take to Redis
    pull: bool = False  # Redis-side changes to take to the file
    full: bool = False  # every task, both ways, even if nothing looks changed
    reread: bool = False  # read the whole town from Redis first
    # When the first event of the changes owed arrived (the schedule's clock); None: no event
    # stands behind them (a start, a reconnect, anti-entropy) or none is owed. Not part of
    # what is owed: two Owed that owe the same are equal.
    file_since: float | None = field(default=None, compare=False)
    redis_since: float | None = field(default=None, compare=False)

    def waited(self, now: float) -> dict[str, float]:
        """Seconds since each side's first event owed: {"file": 0.31, "redis": 0.12}."""
        since = {"file": self.file_since, "redis": self.redis_since}
        return {side: now - at for side, at in since.items() if at is not None}


@dataclass(frozen=True)
class Batch:
    """The work one sync takes from the schedule."""

    keys: frozenset[str] = frozenset()  # notified Redis keys to fetch first
    file: bool = False  # the file changed (and settled, or the sync takes all owed)
    reread: bool = False  # read the whole town from Redis first
    pull: bool = False  # a pull is owed whatever the fetch finds
    full: bool = False  # every task, both ways
    file_since: float | None = field(default=None, compare=False)  # its first file event
    keys_since: float | None = field(default=None, compare=False)  # its first notification


@dataclass(frozen=True)
class Timing:
    """The schedule's settings, in seconds."""

    file_quiet: float = 0.1
    file_longest: float = 1.0
    redis_quiet: float = 0.05
    redis_longest: float = 0.5
    verify_interval: float = 60.0

    @classmethod
    def of(cls, sync: SyncSettings) -> Timing:
        return cls(
            sync.file_debounce_ms / 1000, sync.file_max_wait_ms / 1000,
            sync.redis_debounce_ms / 1000, sync.redis_max_wait_ms / 1000,
            sync.verify_interval_s,
        )  # fmt: skip


@dataclass
class Schedule:
    """What to sync and when (the module docstring says how)."""

    timing: Timing = field(default_factory=Timing)
    clock: Callable[[], float] = time.monotonic
    file: bool = False  # a file change is settling
    keys: set[str] = field(default_factory=set)  # notified keys settling
    owed_now: Owed = field(default_factory=lambda: Owed(reread=True, full=True))  # at start
    owed: Owed = field(default_factory=Owed)  # the directions taken and not yet synced
    retry_at: float = 0.0  # no sync before this (a retry's wait)
    verify_at: float | None = None  # the next anti-entropy pass
    file_since: float | None = None  # the first file event settling
    keys_since: float | None = None  # the first notification settling

    def __post_init__(self) -> None:
        timing = self.timing
        self.file_settling = Quiescence(timing.file_quiet, timing.file_longest)
        self.redis_settling = Quiescence(timing.redis_quiet, timing.redis_longest)
        if self.verify_at is None:
            self.verify_at = self.clock() + timing.verify_interval

    def retime(self, timing: Timing) -> None:
        """New settings (a reload); events settling keep their times."""
        self.timing = timing
        self.file_settling.quiet = timing.file_quiet
        self.file_settling.longest = timing.file_longest
        self.redis_settling.quiet = timing.redis_quiet
        self.redis_settling.longest = timing.redis_longest

    # ------------------------------------------------------------------------ events

    def file_changed(self, at: float | None = None) -> None:
        """The plan file changed at `at` (default: now)."""
        at = self.clock() if at is None else at
        self.file = True
        self.file_settling.touch(at)
        self.file_since = earliest(self.file_since, at)

    def keys_changed(self, keys: Iterable[str], at: float | None = None) -> None:
        """Redis notified changes of these keys."""
        new = set(keys)
        if new:
            at = self.clock() if at is None else at
            self.keys |= new
            self.redis_settling.touch(at)
            self.keys_since = earliest(self.keys_since, at)

    def reread(self) -> None:
        """Read the whole town again (a poll: no notifications tell what changed)."""
        self.owed_now.reread = True

    def reconnected(self) -> None:
        """Connected to Redis (again): what happened meanwhile is unknown, sync in full."""
        self.owed_now.reread = self.owed_now.full = True

    def verify_found(self, *, file_differed: bool, redis_differed: bool) -> None:
        """An anti-entropy pass found a side out of sync: sync every task."""
        if file_differed:
            self.file_changed()
        if redis_differed:
            self.owed_now.pull = True
        self.owed_now.full = True

    def resumed(self, *, file_differed: bool) -> None:
        """`resume`: both sides may hold more than the events said (a rebase)."""
        if file_differed:
            self.file_changed()
        self.owed_now.reread = True

    # ------------------------------------------------------------------------ questions

    def seconds_until_due(self) -> float | None:
        """How long until a sync is due (0: now); None when nothing is owed that would
        start one (directions owed after a failed sync wait for an event)."""
        now = self.clock()
        owed_now = self.owed_now
        if owed_now.reread or owed_now.pull or owed_now.full:
            return max(0.0, self.retry_at - now)
        deadlines = [
            d
            for d in (self.file_settling.deadline(), self.redis_settling.deadline())
            if d is not None
        ]
        return max(min(deadlines), self.retry_at) - now if deadlines else None

    def settled(self) -> bool:
        """Nothing settling, nothing owed: what the verify pass waits for."""
        owed_now, owed = self.owed_now, self.owed
        return not (
            self.file or self.keys or owed_now.reread or owed_now.pull or owed_now.full
            or owed.push or owed.pull
        )  # fmt: skip

    def verify_in(self) -> float:
        """Seconds until the next anti-entropy pass is due."""
        assert self.verify_at is not None
        return max(0.0, self.verify_at - self.clock())

    def verify_started(self) -> None:
        """The pass that was due runs now (or is skipped, not idle): the next one is due an
        interval later."""
        self.verify_at = self.clock() + self.timing.verify_interval

    # ------------------------------------------------------------------------ one sync

    def take(self, all_owed: bool = False) -> Batch:
        """The work due now, for one sync: what owes at once, and each side whose events have
        settled (`all_owed`, or a full sync: settled or not)."""
        now = self.clock()
        owed_now = self.owed_now
        take_all = owed_now.full or all_owed
        take_file = self.file and (take_all or self.file_settling.due(now))
        take_keys = take_all or self.redis_settling.due(now)
        batch = Batch(
            keys=frozenset(self.keys) if take_keys else frozenset(),
            file=take_file,
            reread=owed_now.reread,
            pull=owed_now.pull,
            full=owed_now.full,
            file_since=self.file_since if take_file else None,
            keys_since=self.keys_since if take_keys else None,
        )
        if take_keys:
            self.keys = set()
            self.redis_settling.reset()
            self.keys_since = None
        if take_file:
            self.file = False
            self.file_settling.reset()
            self.file_since = None
        self.owed_now = Owed()
        return batch

    def owed_by(self, batch: Batch, *, redis_changed: bool) -> Owed:
        """The directions the sync of `batch` owes, now that the fetch found whether Redis
        really changed (an agent's heartbeat or the echo of our own write does not): with
        whatever earlier syncs left owed."""
        owed = self.owed
        owed.push |= batch.file or batch.full
        owed.pull |= redis_changed or batch.pull or batch.full
        if batch.file:
            owed.file_since = earliest(owed.file_since, batch.file_since)
        if redis_changed:  # (not an echo, not a heartbeat: a change the sync applies)
            owed.redis_since = earliest(owed.redis_since, batch.keys_since)
        return Owed(
            push=owed.push, pull=owed.pull,
            file_since=owed.file_since, redis_since=owed.redis_since,
        )  # fmt: skip

    def intended(self, batch: Batch) -> Owed:
        """The directions a sync of `batch` was to take, before its fetch said (a sync that
        failed): what it owed, or might have, and what earlier syncs left owed."""
        owed = self.owed
        return Owed(
            push=owed.push or batch.file or batch.full,
            pull=owed.pull or bool(batch.keys) or batch.reread or batch.pull or batch.full,
        )

    def synced(self, *, owed_push: bool = False, owed_pull: bool = False) -> None:
        """A sync completed what it owed. `owed_push`/`owed_pull`: changes it saw and left
        for the other direction (a pull reading a save the watcher has not reported yet)."""
        self.owed = Owed()
        if owed_push:
            self.file_changed()
        if owed_pull:
            self.owed_now.pull = True

    def failed(self, batch: Batch, *, retry: bool) -> None:
        """A sync of `batch` failed; its directions stay owed. `retry`: the cause may pass
        by itself (Redis out of reach): take it all again, in full, `RETRY_S` from now."""
        if not retry:
            return
        self.keys_changed(batch.keys, batch.keys_since)
        if batch.file:
            self.file_changed(batch.file_since)
        self.owed_now.reread = self.owed_now.full = True
        self.retry_at = self.clock() + RETRY_S


def earliest(at: float | None, other: float | None) -> float | None:
    """The earlier of two event times, either of which may be unknown (None)."""
    if at is None or other is None:
        return other if at is None else at
    return min(at, other)
