"""`ttsyncd monitor` and what the daemon says about its work: the real CLI in subprocesses, a
real daemon on a redis-server of the test's own. Asserts on what is said, never on timings."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.daemon_harness import Daemon, RedisServer, rewrite_in_place, started, wait_until
from tests.helpers import TWO_TASKS, clean_env, make_town, run_cli
from ttsyncd.codec import task_key
from ttsyncd.identity import task_uuid_for
from ttsyncd.tinytown import register_agent, start_task

TOWN = "watched"
PLAN = TWO_TASKS

Event = dict[str, Any]


class Monitor:
    """`ttsyncd monitor --json` in a subprocess; its events collected as they come."""

    def __init__(self, town: Path) -> None:
        clean = clean_env()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "ttsyncd", "monitor", "--town", str(town), "--json"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=clean,
        )  # fmt: skip
        self.events: list[Event] = []
        self.reader = threading.Thread(target=self.read, daemon=True)
        self.reader.start()
        wait_until(lambda: self.find(event="subscribed"), what="the monitor's subscription")

    def read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.events.append(json.loads(line))  # one JSON object per line, or this fails

    def find(self, **wanted: Any) -> list[Event]:
        return [e for e in list(self.events) if wanted.items() <= e.items()]

    def wait_for(self, what: str, **wanted: Any) -> Event:
        return wait_until(lambda: (self.find(**wanted) or [None])[-1], 15.0, what)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(timeout=10)


@pytest.fixture
def town(tmp_path: Path) -> Path:
    return make_town(tmp_path / "town", TOWN, PLAN)


@pytest.fixture
def watching(town: Path, server: RedisServer) -> Iterator[tuple[Daemon, Monitor]]:
    for daemon in started(town, server.url):
        monitor = Monitor(town)
        try:
            yield daemon, monitor
        finally:
            monitor.stop()


def key(plan_id: str) -> str:
    return task_key(TOWN, task_uuid_for(TOWN, plan_id))


def log_lines(daemon: Daemon) -> list[Event]:
    return [json.loads(line) for line in daemon.log().splitlines() if line.startswith("{")]


def logged(daemon: Daemon, match: Callable[[Event], bool], what: str) -> Event:
    return wait_until(lambda: next((e for e in log_lines(daemon) if match(e)), None), 10.0, what)


def test_monitor_streams_each_sync_task_and_field_and_ends_when_the_daemon_stops(
    watching: tuple[Daemon, Monitor], server: RedisServer, town: Path
) -> None:
    daemon, monitor = watching
    subscribed = monitor.find(event="subscribed")[0]
    assert subscribed["status"]["town"] == TOWN and subscribed["status"]["syncs"] >= 1

    # A save: pushed, with the field old -> new.
    rewrite_in_place(town / "tasks.toml", PLAN.replace("Write the docs", "Write the user docs"))
    pushed = monitor.wait_for("the save's change", event="change", side="redis", plan_id="docs")
    assert pushed["action"] == "update"
    assert pushed["fields"] == {"description": ["Write the docs", "Write the user docs"]}
    sync = monitor.wait_for("the push", event="sync", direction="push")
    assert sync["to_redis"]["updated"] == 1 and sync["origin"] == "daemon"
    assert isinstance(sync["duration_ms"], float | int)

    # An agent picks a task up (tinytown's own HDEL + HSET): pulled into the file.
    client = server.client()
    agent = register_agent(client, TOWN, "backend")
    start_task(client, TOWN, task_uuid_for(TOWN, "api"), agent)
    pulled = monitor.wait_for("the agent's change", event="change", side="file", plan_id="api")
    assert pulled["fields"]["status"] == ["pending", "running"]
    assert pulled["fields"]["agent"] == [None, "backend"]
    monitor.wait_for("the pull", event="sync", direction="pull")

    # A deletion is named.
    rewrite_in_place(town / "tasks.toml", (town / "tasks.toml").read_text().split("\n\n")[0])
    deleted = monitor.wait_for("the deletion", event="change", action="delete", plan_id="docs")
    assert deleted["side"] == "redis" and deleted["description"] == "Write the user docs"
    wait_until(lambda: not client.exists(key("docs")), what="the task deleted")

    # The log names them too.
    assert logged(daemon, lambda e: e.get("pushed") == ["update docs"], "the push named")
    assert logged(daemon, lambda e: e.get("pulled") == ["update api"], "the pull named")
    assert logged(daemon, lambda e: e.get("pushed") == ["delete docs"], "the deletion named")
    assert not [e for e in log_lines(daemon) if e["event"] == "task changed"]  # only at -v

    assert daemon.terminate() == 0
    assert monitor.process.wait(timeout=10) == 0  # the daemon stopped: the monitor ends, 0
    monitor.reader.join(timeout=5)
    assert monitor.events[-1]["event"] == "stopping"
    sequence = [e["seq"] for e in monitor.events[1:]]
    assert sequence == sorted(sequence) and len(set(sequence)) == len(sequence)


def test_pause_resume_and_a_conflict_are_streamed_and_logged(
    watching: tuple[Daemon, Monitor], server: RedisServer, town: Path
) -> None:
    daemon, monitor = watching
    assert run_cli(town, "pause", redis_url=None).returncode == 0
    monitor.wait_for("the pause", event="paused")
    # Both sides change the same field meanwhile: a conflict the owner policy settles (the
    # file owns descriptions), recorded with both values.
    rewrite_in_place(town / "tasks.toml", PLAN.replace("Build the API", "Build the file API"))
    server.client().hset(key("api"), "description", "Build the redis API")
    assert run_cli(town, "resume", redis_url=None).returncode == 0
    monitor.wait_for("the resume", event="resumed")
    conflict = monitor.wait_for("the conflict", event="conflict", plan_id="api")
    assert conflict["field"] == "description" and conflict["winner"] == "file"
    assert (conflict["file"], conflict["redis"]) == ("Build the file API", "Build the redis API")
    warned = logged(daemon, lambda e: e["event"] == "conflict", "the conflict in the log")
    assert warned["task"] == "api" and warned["settled"] == "file wins"


def test_push_pull_and_check_through_the_socket_are_recorded(
    watching: tuple[Daemon, Monitor], town: Path
) -> None:
    daemon, monitor = watching
    before = daemon.status()
    assert before is not None
    for command in ("push", "pull"):
        done = run_cli(town, command, redis_url=None)
        assert done.returncode == 0, done.stderr
        monitor.wait_for(f"the {command}", event="sync", direction=command, origin="command")
        logged(
            daemon, lambda e, c=command: e.get("origin") == "command" and e.get("direction") == c,
            f"the {command} in the log",
        )  # fmt: skip
    after = daemon.status()
    assert after is not None and after["syncs"] >= before["syncs"] + 2
    assert after["last_push"]["time"] > before["last_push"]["time"]
    assert after["last_pull"]["time"] > before["last_pull"]["time"]

    assert run_cli(town, "check", redis_url=None).returncode == 0
    check = monitor.wait_for("the check", event="check", command="check")
    assert check["out_of_sync"] == 0 and check["origin"] == "command"
    logged(daemon, lambda e: e["event"] == "check: nothing written", "the check in the log")


def test_verbose_daemon_logs_each_field_old_to_new(town: Path, server: RedisServer) -> None:
    daemon = Daemon(town, server.url, options=("-v",))
    try:
        daemon.wait_ready()
        rewrite_in_place(town / "tasks.toml", PLAN.replace("Write the docs", "Write the user docs"))
        created = logged(daemon, lambda e: e["event"] == "task changed", "-v's first line")
        assert created["action"] == "create" and created["level"] == "debug"
        line = logged(
            daemon, lambda e: e["event"] == "task changed" and e["action"] == "update", "-v's line"
        )
        assert line["task"] == "docs" and line["side"] == "redis"
        assert line["fields"] == 'description "Write the docs" → "Write the user docs"'
    finally:
        assert daemon.terminate() == 0


def test_ctrl_c_ends_the_monitor_with_0(watching: tuple[Daemon, Monitor]) -> None:
    _daemon, monitor = watching
    monitor.process.send_signal(signal.SIGINT)
    assert monitor.process.wait(timeout=10) == 0
    assert monitor.process.stderr is not None
    assert b"Traceback" not in monitor.process.stderr.read()


def test_monitor_without_a_daemon_says_so(town: Path) -> None:
    done = run_cli(town, "monitor", "--json", redis_url=None)
    assert done.returncode == 1
    assert "not running" in done.stderr


class Terminal:
    """A pseudo-terminal of `columns` x `rows`; what is shown on it, collected."""

    def __init__(self, columns: int, rows: int) -> None:
        import fcntl
        import pty
        import struct
        import termios

        self.primary, self.secondary = pty.openpty()
        size = struct.pack("HHHH", rows, columns, 0, 0)
        fcntl.ioctl(self.secondary, termios.TIOCSWINSZ, size)
        self.chunks: list[bytes] = []
        self.reader = threading.Thread(target=self.read, daemon=True)

    def start(self) -> None:
        os.close(self.secondary)  # the child holds it now
        self.reader.start()

    def read(self) -> None:
        while True:
            try:
                chunk = os.read(self.primary, 4096)
            except OSError:  # the child exited: the terminal closed
                return
            if not chunk:
                return
            self.chunks.append(chunk)

    def text(self) -> str:
        return b"".join(self.chunks).decode(errors="replace")

    def close(self) -> None:
        self.reader.join(timeout=5)
        os.close(self.primary)


def test_on_a_terminal_a_status_header_stands_above_lines_cut_to_its_width(
    town: Path, server: RedisServer
) -> None:
    daemon = Daemon(town, server.url)
    terminal = Terminal(columns=60, rows=24)
    try:
        daemon.wait_ready()
        clean = clean_env()
        clean.update(TERM="xterm-256color", COLUMNS="", LINES="")
        monitor = subprocess.Popen(
            [sys.executable, "-m", "ttsyncd", "monitor", "--town", str(town)],
            stdin=terminal.secondary, stdout=terminal.secondary, stderr=terminal.secondary,
            env=clean,
        )  # fmt: skip
        terminal.start()
        wait_until(lambda: "syncs " in terminal.text(), what="the header")
        long = "Write the docs, every page of them, with examples and a glossary"
        rewrite_in_place(town / "tasks.toml", PLAN.replace("Write the docs", long))
        wait_until(lambda: "update docs" in terminal.text(), what="the change on screen")
        assert daemon.terminate() == 0
        assert monitor.wait(timeout=10) == 0  # the daemon stopped: so does the monitor
    finally:
        daemon.terminate()
        terminal.close()
    screen = terminal.text()
    assert f"ttsyncd {TOWN} · " in screen  # the header
    assert "…" in screen and long not in screen  # the change's line, cut to 60 columns
    assert "the daemon stops" in screen


def test_piped_without_json_it_prints_the_event_lines(town: Path, server: RedisServer) -> None:
    daemon = Daemon(town, server.url)
    clean = clean_env()
    monitor: subprocess.Popen[str] | None = None
    try:
        daemon.wait_ready()
        monitor = subprocess.Popen(
            [sys.executable, "-m", "ttsyncd", "monitor", "--town", str(town)],
            stdout=subprocess.PIPE, text=True, env=clean,
        )  # fmt: skip
        wait_until(lambda: (daemon.status() or {}).get("monitors") == 1, what="the subscription")
        rewrite_in_place(town / "tasks.toml", PLAN.replace("the docs", "the user docs"))
        wait_until(lambda: (daemon.status() or {}).get("syncs") == 2, what="the push")
        assert daemon.terminate() == 0
        out, _ = monitor.communicate(timeout=10)
    finally:
        daemon.terminate()
        if monitor is not None and monitor.poll() is None:
            monitor.kill()
    assert monitor.returncode == 0
    assert " sync push " in out and "→ redis update docs: description " in out
    assert out.rstrip().endswith("the daemon stops")
