"""Anti-entropy, the daemon's part `verify`: while idle, every `verify_interval_s`, check that
the file and Redis still hold what was last synced, and have everything synced if not. A safety
net under the watchers: a change they could not see (a notification lost, a write through a
hard link) is synced late, never lost. The schedule says when (`verify_in`); what a pass found
goes to the schedule (`verify_found`) and into `status` (`verified_at`, `found`)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime

import structlog

from ttsyncd.errors import TtsyncdError
from ttsyncd.mirror import TownMirror
from ttsyncd.schedule import Schedule
from ttsyncd.sides import FileSide
from ttsyncd.topology import UNREACHABLE

logger = structlog.get_logger("ttsyncd.daemon")

# What an anti-entropy pass found, by (file differed, Redis differed).
VERIFY_FOUND = {
    (False, False): "in sync",
    (True, False): "file differed",
    (False, True): "redis differed",
    (True, True): "file and redis differed",
}


class AntiEntropy:
    def __init__(
        self, schedule: Schedule, sync_lock: asyncio.Lock, wake: asyncio.Event,
        idle: Callable[[], bool], sides: Callable[[], tuple[FileSide, TownMirror | None]],
    ) -> None:  # fmt: skip
        """`idle`: whether the daemon is connected, synced, and owes nothing; `sides`: the
        daemon's file side and mirror now (a reload or a reconnect replaces them); `wake`:
        set when the schedule has work for the syncer."""
        self.schedule = schedule
        self.sync_lock = sync_lock
        self.wake = wake
        self.idle = idle
        self.sides = sides
        self.verified_at: str | None = None  # the last pass, and what it found
        self.found: str | None = None

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.schedule.verify_in())
            self.schedule.verify_started()
            if self.idle() and not self.sync_lock.locked():
                async with self.sync_lock:
                    if self.idle():  # still, now that no sync can start
                        await self.verify_once()

    async def verify_once(self) -> None:
        """One pass; the caller holds the sync lock. The file: its text against the last text
        read or written. Redis: every hash of the town against the mirror (`TownMirror.verify`
        takes in what differs from what notifications had kept it at)."""
        file_side, mirror = self.sides()
        assert mirror is not None

        def check() -> tuple[bool, bool]:
            try:
                file_differed = file_side.differs()
            except TtsyncdError:
                file_differed = True  # not UTF-8: let the sync report it
            return file_differed, mirror.verify()

        try:
            file_differed, redis_differed = await asyncio.to_thread(check)
        except UNREACHABLE:
            return  # the Redis session notices and reconnects (and then syncs in full)
        self.verified_at = datetime.now(UTC).isoformat(timespec="milliseconds")
        self.found = VERIFY_FOUND[file_differed, redis_differed]
        if file_differed or redis_differed:
            logger.warning("verify: out of sync", found=self.found)
            # A sync of everything (the mirror holds what differed already): whatever slipped
            # past the change detection is merged, not only what this pass saw.
            self.schedule.verify_found(file_differed=file_differed, redis_differed=redis_differed)
            self.wake.set()
