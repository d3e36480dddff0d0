"""`ttsyncd monitor`: a live view of the town's daemon, from its control socket's event stream
(`{"cmd": "subscribe"}`, ttsyncd/events.py).

- `--json`: one JSON object per line, as the daemon sends them, the first one
  `{"event": "subscribed", "status": {...}}` (once it is out, every later change is streamed).
- On a terminal: a compact status header (state, syncs, last push and pull, pending, conflicts,
  last error; asked of the daemon every second) above the latest events, each line cut to the
  terminal's width. Drawn with rich (its Live display: redraws in place, measures wide
  characters, follows a resize, leaves the last frame on the screen at the end).
- Piped without `--json`: the same event lines, no header.

It ends with exit 0 on Ctrl-C, and when the daemon stops (it closes the stream)."""

from __future__ import annotations

import contextlib
import json
import os
import queue
import socket
import sys
import threading
from collections import deque
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import IO, Any

from ttsyncd import control
from ttsyncd.errors import EXIT_OK, EXIT_PLAN, TtsyncdError

STATUS_EVERY_S = 1.0  # the header asks the daemon for its status this often
KEPT_LINES = 1000  # event lines the terminal view keeps (it shows those that fit)


def monitor(town_dir: Path, *, as_json: bool) -> int:
    sock = control.socket_path(town_dir)
    try:
        with subscribed(sock) as answered:
            if answered is None:
                print(f"ttsyncd is not running for {town_dir}", file=sys.stderr)
                return EXIT_PLAN
            first, lines = answered
            if as_json:
                return print_json(first, lines)
            if sys.stdout.isatty():
                return LiveView(sock, first["status"]).run(lines)
            return print_lines(lines)
    except KeyboardInterrupt:
        return EXIT_OK


@contextlib.contextmanager
def subscribed(sock: Path) -> Iterator[tuple[dict[str, Any], IO[bytes]] | None]:
    """The subscription's answer and the stream of event lines; None: no daemon listens."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
        try:
            conn.connect(str(sock))
        except (FileNotFoundError, ConnectionRefusedError):
            yield None
            return
        conn.sendall(json.dumps({"cmd": "subscribe"}).encode() + b"\n")
        with conn.makefile("rb") as lines:
            head = lines.readline(control.MAX_REQUEST * 64)
            if not head:
                yield None
                return
            answer = json.loads(head)
            if not answer.get("ok"):
                raise TtsyncdError(str(answer.get("error")))
            yield answer["result"], lines


def events(lines: IO[bytes]) -> Iterator[dict[str, Any]]:
    """Each event until the daemon closes the stream."""
    for line in lines:
        with contextlib.suppress(ValueError):
            event = json.loads(line)
            if isinstance(event, dict):
                yield event


def print_json(first: dict[str, Any], lines: IO[bytes]) -> int:
    try:
        print(json.dumps({"event": "subscribed", **first}, ensure_ascii=False), flush=True)
        for event in events(lines):
            print(json.dumps(event, ensure_ascii=False), flush=True)
    except BrokenPipeError:  # `ttsyncd monitor --json | head`
        reader_gone()
    return EXIT_OK


def print_lines(lines: IO[bytes]) -> int:
    try:
        for event in events(lines):
            for line in event_lines(event):
                print(line, flush=True)
    except BrokenPipeError:
        reader_gone()
    return EXIT_OK


def reader_gone() -> None:
    """Whoever read our output has gone: stdout to /dev/null, so that the flush at exit does
    not fail a second time (the Python docs' recipe for SIGPIPE)."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())


# ---------------------------------------------------------------------------- words


def clock(event: dict[str, Any]) -> str:
    """The event's time, local, to the second."""
    try:
        return datetime.fromisoformat(event["time"]).astimezone().strftime("%H:%M:%S")
    except (KeyError, TypeError, ValueError):
        return "--:--:--"


def shown(value: Any) -> str:
    if value is None:
        return "(none)"
    return json.dumps(value, ensure_ascii=False)


def counted(counts: dict[str, int]) -> str:
    said = [f"{what} {n}" for what in ("created", "updated", "deleted") if (n := counts[what])]
    return ", ".join(said) or "no change"


SIDE = {"redis": "→ redis", "file": "→ file "}


def event_lines(event: dict[str, Any]) -> list[str]:
    """An event in words: one line (a check: one per change found)."""
    at, kind = clock(event), event.get("event")
    if kind == "sync":
        direction = event["direction"]
        by = " (asked)" if event.get("origin") == "command" else ""
        sides = []
        if direction in ("push", "both"):
            sides.append(f"redis: {counted(event['to_redis'])}")
        if direction in ("pull", "both"):
            sides.append(f"file: {counted(event['to_file'])}")
        extra = "".join(
            f", {event[key]} {word}"
            for key, word in (("conflicts", "conflict(s)"), ("set_aside", "set aside"))
            if event.get(key)
        )
        return [f"{at} sync {direction}{by} {event['duration_ms']} ms: {'; '.join(sides)}{extra}"]
    if kind == "change":
        return [f"{at}   {SIDE[event['side']]} {event['action']} {event['plan_id']}{fields(event)}"]
    if kind == "conflict":
        settled = f"{event['winner']} wins" if event.get("winner") else "left for you"
        return [
            f"{at}   conflict {event['plan_id']}.{event['field']}: file {shown(event['file'])}, "
            f"redis {shown(event['redis'])}: {settled}"
        ]
    if kind == "set_aside":
        return [f"{at}   set aside: {event['message']}"]
    if kind == "check":
        head = f"{at} {event['command']} (asked, nothing written) {event['duration_ms']} ms: "
        found = event["changes"]
        return [head + (f"{len(found)} change(s) out of sync" if found else "in sync")] + [
            f"{at}   would {line}" for line in found
        ]
    if kind == "error":
        return [f"{at} ERROR ({event['kind']}): {event['message']}"]
    if kind == "refused":
        return [f"{at} deletions refused: {event['message']}"]
    return [f"{at} {other_words(event)}"]


def other_words(event: dict[str, Any]) -> str:
    kind = event.get("event")
    if kind == "connected":
        return f"connected to Redis {event['redis']} (notifications: {event['notifications']})"
    if kind == "reconnecting":
        return f"lost Redis ({event['error']}): reconnecting"
    if kind == "paused":
        return f"paused since {event['since']}"
    if kind == "resumed":
        return f"resumed (paused since {event['paused_since']})"
    if kind == "stopping":
        return "the daemon stops"
    if kind == "dropped":
        return f"… {event['count']} event(s) dropped (this monitor fell behind)"
    return json.dumps(event, ensure_ascii=False)


def fields(event: dict[str, Any]) -> str:
    """`: status "pending" → "running"`; a creation: the values it sets; a deletion: the
    task's description."""
    changed: dict[str, list[Any]] = event.get("fields") or {}
    if event["action"] == "create":
        return ": " + ", ".join(f"{name} {shown(new)}" for name, (_, new) in changed.items())
    if changed:
        return ": " + ", ".join(
            f"{name} {shown(old)} → {shown(new)}" for name, (old, new) in changed.items()
        )
    description = event.get("description")
    return f" ({shown(description)})" if description else ""


def header_lines(status: dict[str, Any] | None) -> list[str]:
    """The status header: two lines."""
    if status is None:
        return ["ttsyncd: no answer from the daemon", ""]

    def when(stamp: dict[str, Any] | None) -> str:
        return clock(stamp) if stamp else "never"

    paused = status.get("paused")
    state = f"paused since {paused['since']}" if paused else status["state"]
    pending = status["pending_events"]
    waiting = ["file"] if pending["file"] else []
    if pending["redis"]:
        waiting.append(f"{pending['redis']} key(s)")
    error = status.get("last_error")
    return [
        f"ttsyncd {status['town']} · {state} · redis {status['redis']} "
        f"({'connected' if status['redis_connected'] else 'NOT CONNECTED'}, "
        f"{status['notifications']})",
        f"syncs {status['syncs']} · last push {when(status.get('last_push'))} · last pull "
        f"{when(status.get('last_pull'))} · pending {', '.join(waiting) or 'none'} · conflicts "
        f"{status['conflicts']} ({status['conflicts_pending']} for you)"
        + (f" · error: {error}" if error else ""),
    ]


# ---------------------------------------------------------------------------- terminal


class LiveView:
    """The terminal view: the header, then as many of the latest event lines as fit."""

    def __init__(self, sock: Path, status: dict[str, Any]) -> None:
        from rich.console import Console

        self.sock = sock
        self.status: dict[str, Any] | None = status
        self.lines: deque[str] = deque(maxlen=KEPT_LINES)
        self.console = Console()

    def run(self, lines: IO[bytes]) -> int:
        from rich.live import Live

        arrived: queue.Queue[dict[str, Any] | None] = queue.Queue()

        def read() -> None:  # a thread: the socket read blocks; the view asks for status
            with contextlib.suppress(OSError, ValueError):
                for event in events(lines):
                    arrived.put(event)
            arrived.put(None)

        threading.Thread(target=read, daemon=True).start()
        with Live(self.frame(), console=self.console, auto_refresh=False) as live:
            while True:
                try:
                    event = arrived.get(timeout=STATUS_EVERY_S)
                except queue.Empty:
                    self.status = self.ask_status()
                else:
                    if event is None:
                        break  # the daemon stopped
                    self.lines.extend(event_lines(event))
                    while not arrived.empty():  # a burst: drawn once
                        more = arrived.get()
                        if more is None:
                            live.update(self.frame(), refresh=True)
                            return EXIT_OK
                        self.lines.extend(event_lines(more))
                    if event.get("event") in ("sync", "check", "paused", "resumed", "error"):
                        self.status = self.ask_status()
                live.update(self.frame(), refresh=True)
        return EXIT_OK

    def ask_status(self) -> dict[str, Any] | None:
        answer = control.request(self.sock, {"cmd": "status"}, 2.0)
        return answer["result"] if answer and answer.get("ok") else None

    def frame(self) -> Any:
        from rich.console import Group
        from rich.rule import Rule
        from rich.text import Text

        def cut(line: str, style: str = "") -> Text:
            return Text(line, style=style, no_wrap=True, overflow="ellipsis")

        header = [cut(line, "bold") for line in header_lines(self.status)]
        room = max(1, self.console.size.height - len(header) - 2)
        body = [cut(line, style_of(line)) for line in list(self.lines)[-room:]]
        return Group(*header, Rule(style="dim"), *body)


def style_of(line: str) -> str:
    if " ERROR " in line or "deletions refused" in line:
        return "red"
    if "   conflict " in line or "set aside" in line:
        return "yellow"
    return ""
