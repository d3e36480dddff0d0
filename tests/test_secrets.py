"""No password reaches a log line, a status answer, an error message, an exception trace or
a state file: every command, the daemon and its failures, with one distinctive password."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.daemon_harness import Daemon, RedisServer, redis_server, wait_until
from tests.helpers import make_town, run_cli

PASSWORD = "Zq9-unmistakable-S3CRET"
PLAN = '[[tasks]]\nid = "one"\ndescription = "One"\n\n[[tasks]]\nid = "two"\ndescription = "Two"\n'


@pytest.fixture
def locked() -> Iterator[RedisServer]:
    with redis_server("--requirepass", PASSWORD) as server:
        yield server


def every_output_and_file(town: Path, outputs: list[str]) -> str:
    texts = list(outputs)
    for path in town.parent.rglob("*"):
        if path.is_file() and not path.name.endswith((".sock", ".rdb")):
            texts.append(path.read_text(errors="replace"))
    return "\n".join(texts)


def test_the_password_is_never_shown(tmp_path: Path, locked: RedisServer) -> None:
    town = make_town(tmp_path / "town", "secret", PLAN)
    url = f"unix://:{PASSWORD}@{locked.socket}"
    env = {"REDIS_URL": url}
    outputs: list[str] = []

    def cli(*args: str, **kw: dict[str, str]) -> None:
        done = run_cli(town, *args, redis_url=None, env=kw.get("env", env))
        outputs.extend([done.stdout, done.stderr])

    for args in (
        ["push"],
        ["-v", "pull"],
        ["check"],
        ["conflicts", "--json"],
        ["push", "--dry-run"],
    ):
        cli(*args)
    cli("push", env={"REDIS_URL": f"unix://:wrong-{PASSWORD}@{locked.socket}"})  # refused
    cli("push", env={"REDIS_URL": f"redis://:{PASSWORD}@127.0.0.1:1/0"})  # unreachable
    cli("push", env={"REDIS_URL": f"bogus://:{PASSWORD}@x"})  # invalid URL
    daemon = Daemon(town, url, env={"REDIS_URL": url})
    try:
        daemon.wait_ready()
        cli("status")
        cli("status", "--json")
        cli("push")
        (town / "tasks.toml").write_text(PLAN + "[[tasks]\n")  # a broken save: an error path
        wait_until(lambda: (s := daemon.status()) and s["last_error"], what="the error")
        outputs.append(json.dumps(daemon.status()))
        locked.stop()  # an outage: more error paths
        wait_until(lambda: (s := daemon.status()) and not s["redis_connected"], what="outage")
        outputs.append(json.dumps(daemon.status()))
    finally:
        assert daemon.terminate() == 0
    failing = Daemon(town, f"unix://:{PASSWORD}@{tmp_path}/nothing.sock")
    failing.process.wait(timeout=30)
    everything = every_output_and_file(town, outputs)
    assert "***" in everything  # the redacted form does show up
    assert PASSWORD not in everything
    assert os.stat(town / ".tt" / "ttsyncd").st_mode & 0o777 == 0o700
    for state in (town / ".tt" / "ttsyncd").iterdir():
        assert state.stat().st_mode & 0o777 == 0o600, state
