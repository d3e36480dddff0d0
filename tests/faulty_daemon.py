"""`python -m tests.faulty_daemon FAULT ARM_FILE TTSYNCD_ARGS...`: the real `ttsyncd` command
line with one fault planted in one part of the daemon, for the supervision tests.

The fault waits until ARM_FILE exists, then fires once, the first time its part passes the
planted spot (and removes ARM_FILE): an `InjectedFault` raised there, or, for `wedge`, a sync
that never returns. The daemon has no hook for this: the driver monkeypatches it in its own
process, before the command line runs.
"""

from __future__ import annotations

import functools
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ttsyncd import antientropy, cli, daemon, engine, schedule, session, supervisor

# Where each fault is planted: a method that part (and, for some, only that part) calls.
SPOTS: dict[str, tuple[object, str]] = {
    "syncer": (schedule.Schedule, "take"),  # every sync, before the engine runs
    "redis": (session.RedisSession, "check_session"),  # its health check, every second
    "file": (daemon.Daemon, "file_changed"),  # the watcher, for each change it sees
    "verify": (antientropy.AntiEntropy, "verify_once"),  # each anti-entropy pass
    "reload": (daemon.Daemon, "reload"),  # SIGHUP
    "watchdog": (supervisor.Supervisor, "silent_for"),  # each ping the watchdog considers
    "wedge": (engine, "run_sync"),  # the engine, in the syncer's worker thread
}


class InjectedFault(RuntimeError):
    pass


def plant(fault: str, arm: Path) -> None:
    owner, name = SPOTS[fault]
    original: Callable[..., Any] = getattr(owner, name)

    def fire() -> bool:
        try:
            arm.unlink()
        except FileNotFoundError:
            return False
        return True

    @functools.wraps(original)
    def planted(*args: Any, **kwargs: Any) -> Any:
        if fire():
            if fault == "wedge":
                threading.Event().wait()  # never set: this sync never returns
            raise InjectedFault(f"a fault injected into the {fault} part")
        return original(*args, **kwargs)

    setattr(owner, name, planted)


if __name__ == "__main__":
    fault, arm_file, *argv = sys.argv[1:]
    plant(fault, Path(arm_file))
    raise SystemExit(cli.main(argv))
