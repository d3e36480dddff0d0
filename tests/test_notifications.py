"""Keyspace notifications where ttsyncd may not use CONFIG (managed Redis, a restricted ACL
user): turned on by someone else, the daemon finds them with a probe and uses them; turned off,
it polls. And on a database other than 0, the daemon listens on that database's channels.

The poll interval is a minute here, so a change that reaches the file in seconds came by a
notification, not by polling."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import redis
import redis.asyncio

from tests.daemon_harness import Daemon, redis_server, wait_until
from tests.helpers import make_town
from ttsyncd.codec import task_key
from ttsyncd.identity import task_uuid_for
from ttsyncd.notifications import notifications_arrive, probe_key
from ttsyncd.tinytown import register_agent, start_task

TOWN = "managed"
PLAN = '[[tasks]]\nid = "api"\ndescription = "Build the API"\n'
NO_POLLING = "[sync]\npoll_interval_ms = 60000\n"


def follow_an_agent(server_client: redis.Redis, town: Path) -> None:
    """An agent starts the task in Redis; the file must follow within seconds."""
    agent = register_agent(server_client, TOWN, "backend")
    start_task(server_client, TOWN, task_uuid_for(TOWN, "api"), agent)
    wait_until(lambda: 'status = "running"' in (town / "tasks.toml").read_text(), 10.0,
               "the agent's update in the file")  # fmt: skip


@pytest.mark.parametrize(("flags", "expected"), [("Khgx", True), ("KA", True), ("Kg", False),
                                                 ("Eh", False), ("", False)])  # fmt: skip
def test_the_probe_reads_the_flags_without_config(flags: str, expected: bool) -> None:
    with redis_server("--rename-command", "CONFIG", "", "--notify-keyspace-events", flags) as s:

        async def probe() -> bool:
            aclient = redis.asyncio.Redis(unix_socket_path=str(s.socket), decode_responses=True)
            try:
                return await notifications_arrive(aclient, s.client(), TOWN, 0)
            finally:
                await aclient.aclose()

        assert asyncio.run(probe()) is expected
        assert s.client().exists(probe_key(TOWN)) == 0  # the probe leaves nothing behind


def test_notifications_turned_on_elsewhere_are_used(tmp_path: Path) -> None:
    # As on ElastiCache or Memorystore: CONFIG refused, notify-keyspace-events set for us.
    with redis_server("--rename-command", "CONFIG", "", "--notify-keyspace-events", "Khgx") as s:
        town = make_town(tmp_path / "town", TOWN, PLAN)
        (town / "ttsyncd.toml").write_text(NO_POLLING)
        daemon = Daemon(town, s.url)
        try:
            assert daemon.wait_ready()["notifications"] == "keyspace"
            follow_an_agent(s.client(), town)
        finally:
            assert daemon.terminate() == 0


def test_notifications_off_and_config_refused_means_polling(tmp_path: Path) -> None:
    with redis_server("--rename-command", "CONFIG", "", "--notify-keyspace-events", "Kg") as s:
        town = make_town(tmp_path / "town", TOWN, PLAN)
        (town / "ttsyncd.toml").write_text("[sync]\npoll_interval_ms = 200\n")
        daemon = Daemon(town, s.url)
        try:
            assert daemon.wait_ready()["notifications"] == "polling"
            follow_an_agent(s.client(), town)
            assert "docs/managed-redis.md" in daemon.log()
        finally:
            assert daemon.terminate() == 0


def test_a_database_other_than_0_gets_its_own_notifications(tmp_path: Path) -> None:
    with redis_server() as s:
        town = make_town(tmp_path / "town", TOWN, PLAN)
        (town / "ttsyncd.toml").write_text(NO_POLLING)
        daemon = Daemon(town, f"unix://{s.socket}?db=3")
        try:
            assert daemon.wait_ready()["notifications"] == "keyspace"
            db3 = redis.Redis(unix_socket_path=str(s.socket), db=3, decode_responses=True)
            assert db3.exists(task_key(TOWN, task_uuid_for(TOWN, "api")))
            follow_an_agent(db3, town)
        finally:
            assert daemon.terminate() == 0
