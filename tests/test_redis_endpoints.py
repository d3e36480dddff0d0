"""Credentials and the embedded default, end to end."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from tests.helpers import free_port, make_town, run_cli
from ttsyncd.embedded import find_redis_server, spawn_foreground

PASSWORD = "s3cr3t-Pa55-zebra"
PLAN = '[[tasks]]\nid = "one"\ndescription = "One"\n'


@pytest.fixture(scope="module")
def locked_socket() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="ttsp-") as tmp:
        socket_path = Path(tmp) / "redis.sock"
        process = spawn_foreground(
            find_redis_server(), socket_path, Path(tmp), ["--requirepass", PASSWORD, "--save", ""]
        )
        yield socket_path
        process.terminate()
        process.wait(timeout=10)


def test_password_in_redis_url_works_and_never_shows(tmp_path: Path, locked_socket: Path) -> None:
    town = make_town(tmp_path / "t", "locked", PLAN)
    env = {"REDIS_URL": f"unix://:{PASSWORD}@{locked_socket}"}
    outputs = []
    for args in (["push"], ["-v", "--log-format", "json", "pull"], ["check"]):
        done = run_cli(town, *args, redis_url=None, env=env)
        assert done.returncode == 0, done.stderr
        outputs += [done.stdout, done.stderr]
    client = redis.Redis(unix_socket_path=str(locked_socket), password=PASSWORD)
    assert len(client.keys("tt:locked:task:*")) == 1
    wrong = run_cli(
        town,
        "push",
        redis_url=None,
        env={"REDIS_URL": f"unix://:wrong-{PASSWORD}x@{locked_socket}"},
    )
    assert wrong.returncode == 3 and "refused the credentials" in wrong.stderr
    missing = run_cli(town, "push", redis_url=f"unix://{locked_socket}")
    assert missing.returncode == 3 and "password" in missing.stderr
    outputs += [wrong.stdout, wrong.stderr, missing.stdout, missing.stderr]
    state = [p.read_text() for p in (town / ".tt").rglob("*") if p.is_file()]
    assert not any(PASSWORD in text for text in outputs + state)
    assert "***" in run_cli(town, "check", redis_url=None, env=env).stdout


def test_tinytown_central_redis_with_password_env(tmp_path: Path) -> None:
    """A town made with tinytown's central Redis: use_socket = false, a port, a password that
    TINYTOWN_REDIS_PASSWORD overrides. On loopback, on a free port (never 6379)."""
    port = free_port()
    workdir = tmp_path / "central"
    process = spawn_foreground(
        find_redis_server(), workdir / "r.sock", workdir,
        ["--port", str(port), "--bind", "127.0.0.1", "--requirepass", PASSWORD, "--save", ""],
    )  # fmt: skip
    try:
        tinytown = (
            'name = "central"\n[redis]\nuse_socket = false\nhost = "127.0.0.1"\n'
            f'port = {port}\npassword = "stale-password"\n'
        )
        town = make_town(tmp_path / "t", "central", PLAN, tinytown)
        stale = run_cli(town, "push", redis_url=None)
        assert stale.returncode == 3 and "stale-password" not in stale.stderr
        done = run_cli(town, "push", redis_url=None, env={"TINYTOWN_REDIS_PASSWORD": PASSWORD})
        assert done.returncode == 0, done.stderr
        assert PASSWORD not in done.stdout + done.stderr
        client = redis.Redis(host="127.0.0.1", port=port, password=PASSWORD)
        assert len(client.keys("tt:central:task:*")) == 1
    finally:
        process.terminate()
        process.wait(timeout=10)


def redis_pid(town: Path) -> int:
    return int((town / ".tt" / "redis.pid").read_text())


def stop_embedded(town: Path) -> None:
    """Stop the town's managed server before its directory goes: SIGTERM alone makes it save
    on exit, and with the directory removed meanwhile the save fails and it never exits."""
    if not (town / ".tt" / "redis.pid").exists():
        return
    pid = redis_pid(town)
    with contextlib.suppress(redis.RedisError):
        redis.Redis(unix_socket_path=str(town / ".tt" / "redis.sock")).shutdown(nosave=True)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.02)
    os.kill(pid, signal.SIGKILL)


def test_embedded_default_starts_once_and_is_reused(tmp_path: Path) -> None:
    # A town whose tinytown.toml configures no Redis: ttsyncd runs the managed server itself.
    with tempfile.TemporaryDirectory(prefix="ttse-") as tmp:  # short path for the socket
        town = make_town(Path(tmp) / "town", "embedded", PLAN)
        try:
            first = run_cli(town, "push", redis_url=None)
            assert first.returncode == 0, first.stderr
            socket_path = town / ".tt" / "redis.sock"
            assert socket_path.exists()
            pid = redis_pid(town)
            second = run_cli(town, "pull", redis_url=None)
            assert second.returncode == 0, second.stderr
            assert redis_pid(town) == pid  # reused, not restarted
            client = redis.Redis(unix_socket_path=str(socket_path), decode_responses=True)
            assert len(client.keys("tt:embedded:task:*")) == 1
        finally:
            stop_embedded(town)


def test_demo_runs_the_daemon_on_the_embedded_redis() -> None:
    with tempfile.TemporaryDirectory(prefix="ttsd-") as tmp:
        town = Path(tmp) / "demo"
        env = {k: v for k, v in os.environ.items() if k != "REDIS_URL"}
        try:
            done = subprocess.run(
                [sys.executable, "-m", "ttsyncd", "demo", str(town)],
                capture_output=True, text=True, env=env, timeout=60, check=False,
            )  # fmt: skip
            assert done.returncode == 0, done.stderr
            assert "tasks.toml followed in" in done.stdout
            assert '+status = "running"' in done.stdout and '+agent = "backend"' in done.stdout
            assert "Redis followed in" in done.stdout and "logout flows" in done.stdout
            assert "no change seen in time" not in done.stdout
        finally:
            stop_embedded(town)
