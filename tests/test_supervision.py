"""Supervision end to end: a fault injected into one part of a running daemon
(tests/faulty_daemon.py) is logged with its traceback and then, as the table in
ttsyncd/daemon.py says, either the part is restarted and the daemon goes on syncing both ways,
or the daemon exits 1 (for systemd's Restart=on-failure) and the next one picks up what was
left. A wedged syncer stops the systemd watchdog pings. Real redis-server, the real CLI in a
subprocess; asserts on what happens and how often, never on milliseconds."""

from __future__ import annotations

import json
import re
import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.daemon_harness import Daemon, RedisServer, wait_until, write_temp_and_rename
from tests.helpers import TWO_TASKS, make_town
from ttsyncd.codec import task_key
from ttsyncd.identity import task_uuid_for
from ttsyncd.tinytown import set_task

TOWN = "supervised"
PLAN = TWO_TASKS
ROOT = Path(__file__).parents[1]


def key(plan_id: str) -> str:
    return task_key(TOWN, task_uuid_for(TOWN, plan_id))


@pytest.fixture
def town(tmp_path: Path) -> Path:
    return make_town(tmp_path / "town", TOWN, PLAN)


def faulty(town: Path, server: RedisServer, fault: str, env: dict[str, str] | None = None
           ) -> tuple[Daemon, Path]:  # fmt: skip
    """A daemon with `fault` planted, and the file that arms it."""
    arm = town.parent / f"{fault}.arm"
    program = ("-m", "tests.faulty_daemon", fault, str(arm))
    running = Daemon(town, server.url, env={"PYTHONPATH": str(ROOT), **(env or {})},
                     program=program)  # fmt: skip
    return running, arm


def events(running: Daemon, event: str) -> list[dict[str, Any]]:
    found = []
    for line in running.log().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict) and record.get("event") == event:
            found.append(record)
    return found


def failures(running: Daemon) -> dict[str, int]:
    status = running.status() or {}
    return dict(status.get("part_failures", {}))


def edit_file(town: Path, plan_id: str, description: str) -> None:
    """Save the plan with the entry `plan_id`'s description changed, as an editor does."""
    path = town / "tasks.toml"
    entry = re.compile(f'(id = "{plan_id}"\ndescription = )"[^"]*"')
    text, found = entry.subn(f'\\1"{description}"', path.read_text())
    assert found == 1
    write_temp_and_rename(path, text)


def assert_syncs_both_ways(running: Daemon, town: Path, server: RedisServer, tag: str) -> None:
    client = server.client()
    try:
        edit_file(town, "api", f"Build the API {tag}")
        wait_until(lambda: client.hget(key("api"), "description") == f"Build the API {tag}",
                   what="a save reaching Redis")  # fmt: skip
        docs = client.hgetall(key("docs"))
        set_task(client, TOWN, {**docs, "description": f"Docs {tag}"})
        wait_until(lambda: f"Docs {tag}" in (town / "tasks.toml").read_text(),
                   what="a Redis write reaching the file")  # fmt: skip
    finally:
        client.close()
    assert running.process.poll() is None, running.log()


@pytest.mark.parametrize("fault", ["redis", "file", "verify", "reload"])
def test_a_part_that_fails_is_restarted_and_the_daemon_goes_on_syncing(
    town: Path, server: RedisServer, fault: str
) -> None:
    if fault == "verify":  # anti-entropy often; else hourly, so it recovers nothing here
        (town / "ttsyncd.toml").write_text("[sync]\nverify_interval_s = 0.3\n")
    else:
        (town / "ttsyncd.toml").write_text("[sync]\nverify_interval_s = 3600\n")
    running, arm = faulty(town, server, fault)
    try:
        running.wait_ready()
        assert_syncs_both_ways(running, town, server, "before")
        assert failures(running) == {p: 0 for p in failures(running)}
        arm.touch()
        if fault == "file":  # the save the failing watcher saw must still reach Redis
            edit_file(town, "docs", "Write the docs, saved as the watcher failed")
        if fault == "reload":
            running.process.send_signal(signal.SIGHUP)
        wait_until(lambda: failures(running).get(fault) == 1, what=f"the {fault} part failing")
        assert not arm.exists()
        restarted = events(running, "part failed, restarting")
        assert [e["part"] for e in restarted] == [fault]
        assert "InjectedFault: a fault injected" in restarted[0]["exception"]  # the traceback
        assert "Traceback" in restarted[0]["exception"]
        if fault == "file":
            client = server.client()
            wait_until(lambda: "saved as the watcher failed" in str(client.hget(key("docs"),
                       "description")), what="the save made as the watcher failed")  # fmt: skip
            client.close()
        if fault == "verify":
            before = (running.status() or {})["verify"]["last"]
            wait_until(lambda: (running.status() or {})["verify"]["last"] != before,
                       what="anti-entropy passes again")  # fmt: skip
        if fault == "reload":  # the restarted reload did it
            wait_until(lambda: events(running, "configuration reloaded"), what="the reload")
        assert_syncs_both_ways(running, town, server, "after")
        assert failures(running)[fault] == 1
        assert sum(failures(running).values()) == 1
        assert not events(running, "part failed, stopping the daemon")
    finally:
        assert running.terminate() == 0


@pytest.mark.parametrize("fault", ["syncer", "watchdog"])
def test_a_part_whose_failure_is_fatal_takes_the_daemon_down_with_exit_1(
    town: Path, server: RedisServer, fault: str
) -> None:
    # The watchdog runs only under systemd's watchdog (no socket needed: pings just go nowhere).
    env = {"WATCHDOG_USEC": "1000000"} if fault == "watchdog" else None
    running, arm = faulty(town, server, fault, env)
    try:
        running.wait_ready()
        arm.touch()
        edit_file(town, "api", "Build the API, saved as the part failed")
        assert running.process.wait(timeout=20) == 1
    finally:
        if running.process.poll() is None:
            running.process.kill()
    fatal = events(running, "part failed, stopping the daemon")
    assert [e["part"] for e in fatal] == [fault]
    assert "InjectedFault: a fault injected" in fatal[0]["exception"]
    assert [e["part"] for e in events(running, "ttsyncd stopped: a part failed")] == [fault]
    # What systemd's Restart=on-failure does next: a new daemon, which syncs what was left.
    client = server.client()
    again = Daemon(town, server.url)
    try:
        again.wait_ready()
        wait_until(lambda: "saved as the part failed" in str(client.hget(key("api"),
                   "description")), what="the save made as the part failed")  # fmt: skip
    finally:
        assert again.terminate() == 0
        client.close()


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[tuple[Path, socket.socket]]:
    """A stand-in for systemd's notify socket: a unix datagram socket the test reads."""
    path = tmp_path / "notify.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener.bind(str(path))
    listener.settimeout(20)
    yield path, listener
    listener.close()


def receive(listener: socket.socket) -> list[str]:
    """Every datagram waiting, without blocking."""
    messages = []
    listener.setblocking(False)
    try:
        while True:
            messages.append(listener.recv(4096).decode())
    except BlockingIOError:
        pass
    finally:
        listener.settimeout(20)
    return messages


def test_a_wedged_syncer_stops_the_watchdog_pings(
    town: Path, server: RedisServer, notify_socket: tuple[Path, socket.socket]
) -> None:
    path, listener = notify_socket
    # WatchdogSec=1s: a ping every half second while the syncer makes progress.
    env = {"NOTIFY_SOCKET": str(path), "WATCHDOG_USEC": "1000000"}
    running, arm = faulty(town, server, "wedge", env)
    try:
        messages: list[str] = []
        while not any("READY=1" in m for m in messages):
            messages.append(listener.recv(4096).decode())
        pings = 0
        while pings < 3:  # idle, the syncer still reports progress: the pings go on
            pings += listener.recv(4096).decode().split("\n").count("WATCHDOG=1")
        arm.touch()
        edit_file(town, "api", "Build the API, which wedges the sync")
        wait_until(lambda: not arm.exists(), what="the sync to wedge")
        wait_until(lambda: events(running, "the syncer has made no progress: no more "
                                  "watchdog pings, so systemd restarts the daemon"),
                   what="the watchdog to stop pinging")  # fmt: skip
        receive(listener)  # what was sent before it stopped
        time.sleep(2.0)  # four ping intervals, two whole WatchdogSec windows
        late = [m for m in receive(listener) if "WATCHDOG=1" in m.split("\n")]
        assert late == []
        assert running.process.poll() is None  # alive but stuck: systemd's watchdog kills it
        assert (running.status() or {}).get("state") == "syncing"  # the socket still answers
    finally:
        running.process.kill()  # SIGTERM would wait for the wedged worker thread
        running.process.wait(timeout=10)
