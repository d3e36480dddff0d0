"""`ttsyncd monitor` and what the daemon says about its work: the real CLI in subprocesses, a
real daemon on a redis-server of the test's own. Asserts on what is said, never on timings."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.daemon_harness import Daemon, RedisServer, rewrite_in_place, wait_until
from tests.helpers import make_town

TOWN = "watched"
PLAN = """\
[[tasks]]
id = "api"
description = "Build the API"

[[tasks]]
id = "docs"
description = "Write the docs"
"""

Event = dict[str, Any]


@pytest.fixture
def town(tmp_path: Path) -> Path:
    return make_town(tmp_path / "town", TOWN, PLAN)


def log_lines(daemon: Daemon) -> list[Event]:
    return [json.loads(line) for line in daemon.log().splitlines() if line.startswith("{")]


def logged(daemon: Daemon, match: Callable[[Event], bool], what: str) -> Event:
    return wait_until(lambda: next((e for e in log_lines(daemon) if match(e)), None), 10.0, what)


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
