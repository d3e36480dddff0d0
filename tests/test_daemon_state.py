"""The daemon's state (`status`'s `state`, DaemonState): decided in one place from independent
facts, in a fixed order; and end to end, what a running daemon reports as it goes through
them."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.daemon_harness import Daemon, RedisServer, started, wait_until, write_temp_and_rename
from tests.helpers import make_town, run_cli
from ttsyncd.config import load_settings
from ttsyncd.daemon import Daemon as LiveDaemon
from ttsyncd.standing import DaemonState, Problem

TOWN = "stately"
PLAN = '[[tasks]]\nid = "api"\ndescription = "Build the API"\n'


@pytest.fixture
def town(tmp_path: Path) -> Path:
    return make_town(tmp_path / "town", TOWN, PLAN)


def test_the_state_is_decided_from_the_facts_in_one_order(town: Path) -> None:
    settings = load_settings(
        town_arg=str(town), config_arg=None, redis_url_arg="unix:///nowhere/redis.sock",
        env={}, cwd=town,
    )  # fmt: skip
    daemon = LiveDaemon(settings, lambda: settings, "foreground")  # nothing connects here
    assert daemon.state is DaemonState.STARTING
    daemon.standing.report_problem("redis", "Redis unreachable")
    assert daemon.state is DaemonState.STARTING  # never connected yet
    daemon.standing.clear_problem("redis")
    daemon.session.connected = daemon.session.ever_connected = True
    assert daemon.state is DaemonState.STARTING  # connected, first sync not done
    daemon.first_sync_done.set()
    assert daemon.state is DaemonState.IDLE
    daemon.syncing = True
    assert daemon.state is DaemonState.SYNCING
    daemon.syncing = False
    daemon.standing.problem = Problem("sync", "tasks.toml:3: broken")
    assert daemon.state is DaemonState.ERROR
    assert daemon.status_line() == "error: tasks.toml:3: broken"
    daemon.standing.problem = Problem("redis", "Redis unreachable during sync (ConnectionError)")
    assert daemon.state is DaemonState.RECONNECTING  # a sync lost Redis: retried once back
    daemon.standing.problem = None
    daemon.session.connected = False
    assert daemon.state is DaemonState.RECONNECTING
    daemon.paused_since = "2026-01-01T00:00:00+00:00"
    assert daemon.state is DaemonState.PAUSED  # first of all
    assert daemon.status_line() == "paused since 2026-01-01T00:00:00+00:00"


@pytest.fixture
def daemon(town: Path, server: RedisServer) -> Iterator[Daemon]:
    yield from started(town, server.url)


def state_of(daemon: Daemon) -> str | None:
    status = daemon.status()
    return status["state"] if status else None


def test_a_running_daemon_reports_its_state(
    daemon: Daemon, town: Path, server: RedisServer
) -> None:
    path = town / "tasks.toml"
    wait_until(lambda: state_of(daemon) == "idle", what="idle after the first sync")
    write_temp_and_rename(path, PLAN + "[[tasks]\n")  # a broken save
    wait_until(lambda: state_of(daemon) == "error", what="error after a broken save")
    write_temp_and_rename(path, PLAN)
    wait_until(lambda: state_of(daemon) == "idle", what="idle once fixed")
    assert run_cli(town, "pause", redis_url=None).returncode == 0
    assert state_of(daemon) == "paused"
    assert run_cli(town, "resume", redis_url=None).returncode == 0
    assert state_of(daemon) == "idle"
    server.kill()
    wait_until(lambda: state_of(daemon) == "reconnecting", what="reconnecting after a loss")
    server.start()
    wait_until(lambda: state_of(daemon) == "idle", what="idle once reconnected")
