"""`ttsyncd run` end to end, in the workflows users reported: undoing a save, plans kept behind
a symlink, fixing a broken save, changes the watchers cannot see, and git under a running
daemon (pause/resume). The real CLI and daemon in subprocesses, a redis-server of the test's
own; asserts on what is written and on counts, never on milliseconds."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.daemon_harness import Daemon, RedisServer, redis_server, wait_until
from tests.helpers import make_town
from ttsyncd.codec import task_key
from ttsyncd.identity import task_uuid_for
from ttsyncd.tinytown import set_task

TOWN = "flow"
PLAN = """\
# Workflow plan
[[tasks]]
id = "api"
description = "Build the API"

[[tasks]]
id = "docs"
description = "Write the docs"
"""


def key(plan_id: str) -> str:
    return task_key(TOWN, task_uuid_for(TOWN, plan_id))


@pytest.fixture
def server() -> Iterator[RedisServer]:
    with redis_server() as running:
        yield running


@pytest.fixture
def town(tmp_path: Path) -> Path:
    return make_town(tmp_path / "town", TOWN, PLAN)


@pytest.fixture
def daemon(town: Path, server: RedisServer) -> Iterator[Daemon]:
    running = Daemon(town, server.url)
    running.wait_ready()
    yield running
    assert running.terminate() == 0


def write_temp_and_rename(path: Path, text: str) -> None:
    temp = path.with_name(f".{path.name}.swp")
    temp.write_text(text, encoding="utf-8")
    os.replace(temp, path)


def rewrite_in_place(path: Path, text: str) -> None:
    with open(path, "r+", encoding="utf-8") as out:
        out.truncate(0)
        out.write(text)


def redis_edit(server: RedisServer, plan_id: str, **fields: str) -> None:
    """An agent's update, written the way tinytown writes it."""
    client = server.client()
    set_task(client, TOWN, {**client.hgetall(key(plan_id)), **fields})


# --- 1. a real save is never ignored


def test_undoing_a_save_back_to_the_daemons_own_write_is_synced(
    daemon: Daemon, server: RedisServer, town: Path
) -> None:
    """The daemon pulls and writes V2; the user saves V3 (synced); the user undoes back to V2.
    V2 is what the daemon wrote once, not what both sides agree on now: it must be pushed."""
    path = town / "tasks.toml"
    client = server.client()
    redis_edit(server, "api", state="completed", result="shipped")
    wait_until(lambda: 'result = "shipped"' in path.read_text(), what="the pull (V2)")
    daemon.wait_idle()
    v2 = path.read_text()
    write_temp_and_rename(path, v2.replace("Write the docs", "Write the user docs"))  # V3
    wait_until(lambda: client.hget(key("docs"), "description") == "Write the user docs",
               what="V3 in Redis")  # fmt: skip
    daemon.wait_idle()
    write_temp_and_rename(path, v2)  # the undo
    wait_until(lambda: client.hget(key("docs"), "description") == "Write the docs",
               what="the undo in Redis")  # fmt: skip
    daemon.wait_idle()
    assert path.read_text() == v2
    assert daemon.status()["last_error"] is None  # type: ignore[index]


# --- 3. last_error clears with its cause


def test_fixing_a_broken_save_back_to_the_last_text_clears_the_error(
    daemon: Daemon, server: RedisServer, town: Path
) -> None:
    """The fix restores exactly the text last synced: it is a save after a failed read, so it
    syncs, and the sync clears the error (no line number past the end of the file)."""
    path = town / "tasks.toml"
    syncs = daemon.status()["syncs"]  # type: ignore[index]
    write_temp_and_rename(path, PLAN.replace('id = "docs"', 'id = "docs') + "\n" * 5)
    status = wait_until(lambda: (s := daemon.status()) and s["last_error"] and s,
                        what="the error in status")  # fmt: skip
    assert f"{path}:" in status["last_error"]
    write_temp_and_rename(path, PLAN)
    status = wait_until(lambda: (s := daemon.status()) and s["last_error"] is None and s,
                        what="the error cleared")  # fmt: skip
    assert status["syncs"] == syncs + 1  # the fix was synced (and found nothing to change)
    assert server.client().hget(key("docs"), "description") == "Write the docs"


def test_redis_coming_back_clears_a_redis_error(tmp_path: Path) -> None:
    with redis_server() as server:
        server.extra = ["--save", "3600 1", "--appendonly", "yes"]  # keep data across restarts
        server.kill()
        server.start()
        town = make_town(tmp_path / "town", TOWN, PLAN)
        running = Daemon(town, server.url)
        try:
            running.wait_ready()
            server.stop()
            wait_until(lambda: (s := running.status()) and s["last_error"],
                       what="the outage in status")  # fmt: skip
            server.start()
            status = wait_until(
                lambda: (s := running.status()) and s["redis_connected"] and s, what="reconnect"
            )
            status = wait_until(lambda: (s := running.status()) and s["last_error"] is None and s,
                                what="the Redis error cleared")  # fmt: skip
            assert status["redis_connected"]
        finally:
            assert running.terminate() == 0
