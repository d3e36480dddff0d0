"""The plan file's watcher: watchfiles on the plan's directory, so every way of saving is seen
(rewrite in place, write-temp-and-rename, delete-and-recreate).

A plan that is a symlink is watched in the link's directory and in its target's (plans kept in
another folder or repo); when the link is pointed elsewhere the watch moves with it.
watchfiles hands changes over within a few ms; the debounce is the schedule's, so `status` can
show a change as pending and SIGTERM can flush it. The watcher only reports: what a change
means (an echo of the daemon's own write, or a save to sync) is its owner's to decide.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import structlog
import watchfiles

logger = structlog.get_logger("ttsyncd.watcher")

# How long watchfiles waits for more changes before handing them over; it also wakes this
# often when idle, so not less.
WATCHFILES_STEP_MS = 10

# The plan's directory changed at this time (monotonic); None: watching (again) after a gap.
Changed = Callable[[float | None], Awaitable[None]]


class PlanWatcher:
    def __init__(
        self,
        link: Path,
        stopping: asyncio.Event,
        max_wait_ms: Callable[[], int],
        changed: Changed,
        problem: Callable[[str | None], None],
    ) -> None:
        """`link`: the plan's path (a symlink or not); `changed` hears of every change;
        `problem` of a directory that cannot be watched (None: watching again)."""
        self.link = link
        self.stopping = stopping
        self.max_wait_ms = max_wait_ms
        self.changed = changed
        self.problem = problem

    async def run(self) -> None:
        """Watch until the daemon stops; a directory that went away is waited for."""
        link = self.link
        while not self.stopping.is_set():
            try:
                await self.watch_until_moved()
            except OSError as error:  # the directory went away: wait for it to come back
                self.problem(f"cannot watch {link.parent}: {error}")
                logger.error("file watcher failed, retrying", error=str(error))
                await asyncio.sleep(1.0)

    async def watch_until_moved(self) -> None:
        """Watch the plan until the link is pointed elsewhere (or the daemon stops)."""
        link = self.link
        target = Path(os.path.realpath(link))
        wanted = {Path(os.path.realpath(link.parent)), target.parent}
        directories = sorted(d for d in wanted if d.is_dir())
        names = {link.name, target.name}

        def is_plan(_change: watchfiles.Change, changed: str) -> bool:
            return Path(changed).name in names

        if not directories:
            raise FileNotFoundError(f"no such directory: {link.parent}")
        changes = watchfiles.awatch(
            *directories, watch_filter=is_plan, recursive=False,
            stop_event=self.stopping, step=WATCHFILES_STEP_MS,
            debounce=self.max_wait_ms(),
        )  # fmt: skip
        self.problem(None)
        # Watching again (the watch moved, failed, or the watcher was restarted): a save made
        # while nothing watched is synced all the same.
        await self.changed(None)
        async with contextlib.aclosing(changes):
            async for _changes in changes:
                # watchfiles hands changes over once the directory has been quiet for a step:
                # the quiet period the debounce waits for began that long ago.
                await self.changed(time.monotonic() - WATCHFILES_STEP_MS / 1000)
                if Path(os.path.realpath(link)) != target:
                    return  # the link points elsewhere now: watch its new target
