"""`ttsyncd status`: the daemon's status answer (ttsyncd/handlers.py makes it) as the CLI
prints it, in lines or as one JSON object. Imports nothing heavy: it runs without redis-py."""

from __future__ import annotations

import json
import sys
from typing import TYPE_CHECKING, Any

from ttsyncd.errors import EXIT_OK, EXIT_PLAN, TtsyncdError

if TYPE_CHECKING:
    from ttsyncd.config import Settings


def show_status(settings: Settings, *, as_json: bool) -> int:
    """The daemon's status; exits 1 when none serves the town. `--json` always prints one
    JSON object, `"running"` saying whether a daemon answered."""
    from ttsyncd import control

    sock = control.socket_path(settings.town_dir)
    answer = control.request(sock, {"cmd": "status"}, 10.0)
    if answer is None or not answer.get("ok"):
        error = None if answer is None else str(answer.get("error"))
        if as_json:
            not_serving: dict[str, Any] = {
                "running": answer is not None,
                "town": settings.town_name,
                "town_dir": str(settings.town_dir),
                "socket": str(sock),
            }
            if error is not None:
                not_serving["error"] = error
            print(json.dumps(not_serving, indent=2))
            return EXIT_PLAN
        if error is not None:
            raise TtsyncdError(error)
        print(f"ttsyncd is not running for {settings.town_dir}", file=sys.stderr)
        return EXIT_PLAN
    status: dict[str, Any] = answer["result"]
    if as_json:
        print(json.dumps({"running": True, **status}, indent=2))
        return EXIT_OK
    for line in status_lines(status):
        print(line)
    return EXIT_OK


def verify_lines(verify: dict[str, Any] | None) -> list[str]:
    if not verify:
        return []
    last = f"last {verify['last']}: {verify['found']}" if verify["last"] else "not yet"
    return [f"  verify:        every {verify['interval_s']:g} s; {last}"]


def status_lines(status: dict[str, Any]) -> list[str]:
    from ttsyncd.topology_status import describe

    def stamp(entry: dict[str, Any] | None) -> str:
        if not entry:
            return "never"
        return (
            f"{entry['time']} ({entry['duration_ms']} ms): created {entry['created']}, "
            f"updated {entry['updated']}, deleted {entry['deleted']}, "
            f"unchanged {entry['unchanged']}"
        )

    connected = "connected" if status["redis_connected"] else "NOT CONNECTED"
    pending = status["pending_events"]
    paused: dict[str, Any] | None = status.get("paused")
    return [
        f"ttsyncd {status['mode']} (pid {status['pid']}) for town {status['town']!r}",
        *(
            [f"  paused:        since {paused['since']} (`ttsyncd resume` to sync again)"]
            if paused
            else []
        ),
        f"  tasks file:    {status['tasks_file']}",
        f"  redis:         {status['redis']} ({connected})",
        f"  topology:      {describe(status['topology'])}",
        f"  notifications: {status['notifications']}",
        f"  last push:     {stamp(status['last_push'])}",
        f"  last pull:     {stamp(status['last_pull'])}",
        f"  pending:       file {'changed' if pending['file'] else 'unchanged'}, "
        f"{pending['redis']} Redis key(s)",
        f"  conflicts:     {status['conflicts']} recorded, {status['conflicts_pending']} "
        "left for you",
        f"  last error:    {status['last_error'] or 'none'}",
        *verify_lines(status.get("verify")),
        *(
            [f"  refused:       {', '.join(status['refused_deletions'])} (not deleted)"]
            if status.get("refused_deletions")
            else []
        ),
        *(
            f"  duplicates:    plan:{plan_id} is carried by {len(extra) + 1} tasks "
            "(`ttsyncd repair` keeps the newest)"
            for plan_id, extra in sorted(status.get("duplicates", {}).items())
        ),
        *(
            f"  unreadable:    {key}: {why}"
            for key, why in sorted(status.get("unreadable", {}).items())
        ),
    ]
