"""`ttsyncd run` end to end: the real CLI in a subprocess, a redis-server of the test's own
that starts with keyspace notifications off, files saved the ways editors save them, Redis
written the way tinytown writes it. Asserts on what is written, never on milliseconds."""

from __future__ import annotations

import json
import os
import signal
import socket
import stat
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.daemon_harness import (
    QUIET_S,
    SAVES,
    Daemon,
    FileWrites,
    RedisServer,
    redis_server,
    rewrite_in_place,
    started,
    wait_until,
    write_temp_and_rename,
)
from tests.helpers import make_town, run_cli, write_counts
from ttsyncd import control
from ttsyncd.codec import task_key
from ttsyncd.identity import task_uuid_for
from ttsyncd.tinytown import register_agent, set_task, start_task

TOWN = "live"
PLAN = """\
# Live plan
[[tasks]]
id = "api"
description = "Build the API"

# the docs entry
[[tasks]]
id = "docs"
description = "Write the docs"  # short
tags = ["docs"]
"""


def key(plan_id: str) -> str:
    return task_key(TOWN, task_uuid_for(TOWN, plan_id))


@pytest.fixture
def town(tmp_path: Path) -> Path:
    return make_town(tmp_path / "town", TOWN, PLAN)


@pytest.fixture
def daemon(town: Path, server: RedisServer) -> Iterator[Daemon]:
    yield from started(town, server.url)


def test_first_sync_pushes_the_plan_and_turns_notifications_on(
    daemon: Daemon, server: RedisServer
) -> None:
    client = server.client()
    assert set(client.keys(f"tt:{TOWN}:task:*")) == {key("api"), key("docs")}
    flags = client.config_get("notify-keyspace-events")["notify-keyspace-events"]
    assert set("Khgx") <= set(flags)
    status = daemon.status()
    assert status is not None and status["notifications"] == "keyspace"


@pytest.mark.parametrize("save", SAVES.values(), ids=SAVES.keys())
def test_an_editor_save_writes_one_hash_and_never_rewrites_the_file(
    daemon: Daemon, server: RedisServer, town: Path, save: Callable[[Path, str], None]
) -> None:
    client = server.client()
    path = town / "tasks.toml"
    client.config_resetstat()
    writes = FileWrites(path)
    save(path, PLAN.replace("Write the docs", "Write the user docs"))
    wait_until(lambda: client.hget(key("docs"), "description") == "Write the user docs",
               what="the save to reach Redis")  # fmt: skip
    ours = len(writes.versions)
    time.sleep(QUIET_S)
    daemon.wait_idle()
    writes.stop()
    assert writes.count_since(ours) == 0, "the daemon rewrote tasks.toml"
    counts = write_counts(client)
    assert counts.get("evalsha") == 1, counts  # exactly one guarded task write
    assert not {"del", "rpush", "lrem"} & counts.keys(), counts
    assert path.read_text() == PLAN.replace("Write the docs", "Write the user docs")


def test_a_tinytown_update_rewrites_the_file_once_and_writes_nothing_to_redis(
    daemon: Daemon, server: RedisServer, town: Path
) -> None:
    client = server.client()
    path = town / "tasks.toml"
    agent = register_agent(client, TOWN, "backend")
    daemon.wait_idle()
    client.config_resetstat()
    writes = FileWrites(path)
    start_task(client, TOWN, task_uuid_for(TOWN, "api"), agent)  # HDEL + HSET, no MULTI
    wait_until(lambda: 'status = "running"' in path.read_text(), what="the update in the file")
    time.sleep(QUIET_S)
    daemon.wait_idle()
    writes.stop()
    assert writes.count_since(0) == 2  # the version we started with, and one rewrite
    counts = write_counts(client)
    assert counts == {"hdel": 1, "hset": 1}, counts  # only tinytown's own pipeline
    assert path.read_text() == PLAN.replace(
        'description = "Build the API"\n',
        'description = "Build the API"\nagent = "backend"\nstatus = "running"\n',
    )


def test_a_burst_of_saves_is_one_sync(daemon: Daemon, server: RedisServer, town: Path) -> None:
    client = server.client()
    client.config_resetstat()
    before = daemon.status()
    assert before is not None
    for n in range(10):
        rewrite_in_place(town / "tasks.toml", PLAN.replace("Write the docs", f"Docs v{n}"))
        time.sleep(0.01)
    wait_until(lambda: client.hget(key("docs"), "description") == "Docs v9", what="last save")
    time.sleep(QUIET_S)
    after = daemon.status()
    assert after is not None
    assert write_counts(client).get("evalsha", 0) <= 2  # not one per save
    assert after["syncs"] - before["syncs"] <= 2


def test_a_broken_save_is_reported_by_line_and_pushes_nothing_until_fixed(
    daemon: Daemon, server: RedisServer, town: Path
) -> None:
    client = server.client()
    path = town / "tasks.toml"
    client.config_resetstat()
    broken = PLAN.replace('id = "docs"', 'id = "docs').replace("Write the docs", "Broken")
    write_temp_and_rename(path, broken)
    status = wait_until(lambda: (s := daemon.status()) and s["last_error"] and s,
                        what="the error in status")  # fmt: skip
    assert f"{path}:8:" in status["last_error"]
    assert write_counts(client) == {}
    done = run_cli(town, "status", redis_url=None)
    assert "tasks.toml:8:" in done.stdout
    write_temp_and_rename(path, PLAN.replace("Write the docs", "Fixed"))
    wait_until(lambda: client.hget(key("docs"), "description") == "Fixed", what="resumed sync")
    wait_until(lambda: (s := daemon.status()) and s["last_error"] is None, what="error cleared")


def test_cli_goes_through_the_socket_which_is_private(
    daemon: Daemon, server: RedisServer, town: Path
) -> None:
    sock = control.socket_path(town)
    assert stat.S_IMODE(os.stat(sock).st_mode) == 0o600
    done = run_cli(town, "push", redis_url=None)  # no Redis URL: only the daemon knows it
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[0] == "⬆️  Pushed 2 tasks from tasks.toml to Redis"
    status = json.loads(run_cli(town, "status", "--json", redis_url=None).stdout)
    for field in ("pid", "town", "tasks_file", "redis", "mode", "notifications",
                  "redis_connected", "last_push", "last_pull", "pending_events", "conflicts",
                  "last_error"):  # fmt: skip
        assert field in status
    assert status["pid"] == daemon.process.pid and status["mode"] == "foreground"
    assert status["topology"] == {"kind": "standalone", "primaries": []}
    text = run_cli(town, "status", redis_url=None).stdout
    assert "  topology:      standalone\n" in text
    assert status["last_push"]["duration_ms"] >= 0
    second = Daemon(town, server.url)
    assert second.process.wait(timeout=20) != 0
    assert "already serves this town" in second.log()


def test_config_refused_falls_back_to_polling(tmp_path: Path) -> None:
    with redis_server("--rename-command", "CONFIG", "") as server:
        town = make_town(tmp_path / "town", TOWN, PLAN)
        (town / "ttsyncd.toml").write_text("[sync]\npoll_interval_ms = 200\n")
        running = Daemon(town, server.url)
        try:
            status = running.wait_ready()
            assert status["notifications"] == "polling"
            client = server.client()
            docs = client.hgetall(key("docs"))
            set_task(client, TOWN, {**docs, "state": "completed", "result": "done"})
            wait_until(lambda: 'result = "done"' in (town / "tasks.toml").read_text(),
                       what="the polled change in the file")  # fmt: skip
            assert "polling" in running.log()
        finally:
            assert running.terminate() == 0


def test_redis_outage_and_restart_converge(tmp_path: Path) -> None:
    with redis_server() as server:
        server.extra = ["--save", "3600 1", "--appendonly", "yes"]  # keep data across restarts
        server.kill()
        server.start()
        town = make_town(tmp_path / "town", TOWN, PLAN)
        running = Daemon(town, server.url)
        try:
            running.wait_ready()
            server.stop()
            wait_until(lambda: (s := running.status()) and not s["redis_connected"],
                       what="the daemon to notice the outage")  # fmt: skip
            write_temp_and_rename(town / "tasks.toml", PLAN.replace("Build the API", "API v2"))
            through_daemon = run_cli(town, "push", redis_url=None)
            assert through_daemon.returncode == 3, through_daemon.stderr  # as if run alone
            assert "Redis unreachable" in through_daemon.stderr
            time.sleep(0.5)
            server.start()
            client = server.client()
            wait_until(lambda: client.hget(key("api"), "description") == "API v2",
                       what="the edit made during the outage")  # fmt: skip
            docs = client.hgetall(key("docs"))
            set_task(client, TOWN, {**docs, "description": "Docs after restart"})
            wait_until(lambda: "Docs after restart" in (town / "tasks.toml").read_text(),
                       what="a Redis edit after the restart")  # fmt: skip
            assert running.status()["redis_connected"]  # type: ignore[index]
        finally:
            assert running.terminate() == 0


def test_sigterm_flushes_pending_work_and_exits_0(town: Path, server: RedisServer) -> None:
    (town / "ttsyncd.toml").write_text("[sync]\nfile_debounce_ms = 2000\nfile_max_wait_ms = 3000\n")
    running = Daemon(town, server.url)
    running.wait_ready()
    write_temp_and_rename(town / "tasks.toml", PLAN.replace("Build the API", "Flushed"))
    wait_until(lambda: ((s := running.status()) and s["pending_events"]["file"]) or None,
               timeout=5, what="the debounced event")  # fmt: skip
    assert running.terminate(timeout=5) == 0
    assert server.client().hget(key("api"), "description") == "Flushed"


def test_sighup_reloads_the_configuration(daemon: Daemon, server: RedisServer, town: Path) -> None:
    (town / "ttsyncd.toml").write_text('[sync]\npolicy = "redis"\n')
    daemon.process.send_signal(signal.SIGHUP)
    wait_until(lambda: "configuration reloaded" in daemon.log(), what="the reload")
    client = server.client()
    docs = client.hgetall(key("docs"))
    set_task(client, TOWN, {**docs, "description": "From Redis"})
    rewrite_in_place(town / "tasks.toml", PLAN.replace("Write the docs", "From the file"))
    # Both changed the description: under the reloaded `redis` policy, Redis wins.
    wait_until(lambda: "From Redis" in (town / "tasks.toml").read_text(), what="redis winning")
    daemon.wait_idle()
    assert client.hget(key("docs"), "description") == "From Redis"


def test_start_stop_twice_and_a_stale_pidfile(town: Path, server: RedisServer) -> None:
    pidfile = town / ".tt" / "ttsyncd.pid"
    for _ in range(2):
        started = run_cli(town, "start", redis_url=server.url)
        assert started.returncode == 0, started.stderr
        pid = int(pidfile.read_text())
        assert f"pid {pid}" in started.stdout
        again = run_cli(town, "start", redis_url=server.url)
        assert again.returncode == 1 and "already running" in again.stderr
        status = json.loads(run_cli(town, "status", "--json", redis_url=None).stdout)
        assert status["mode"] == "background" and status["pid"] == pid
        stopped = run_cli(town, "stop", redis_url=None)
        assert stopped.returncode == 0 and "stopped" in stopped.stdout
        assert not pidfile.exists()
    pidfile.write_text("999999\n")  # a daemon that died without cleaning up
    started = run_cli(town, "start", redis_url=server.url)
    assert started.returncode == 0, started.stderr
    assert run_cli(town, "stop", redis_url=None).returncode == 0
    not_running = run_cli(town, "status", redis_url=None)
    assert not_running.returncode == 1 and "not running" in not_running.stderr


def test_start_reports_why_the_daemon_did_not_come_up(town: Path, tmp_path: Path) -> None:
    done = run_cli(town, "start", redis_url=f"unix://{tmp_path}/nothing.sock")
    assert done.returncode != 0 and "cannot reach Redis" in done.stderr
    assert not (town / ".tt" / "ttsyncd.pid").exists()


def test_a_peer_of_another_uid_is_refused(server: RedisServer) -> None:
    if os.getuid() != 0:
        pytest.skip("needs root to connect as another uid")
    with tempfile.TemporaryDirectory(prefix="ttsu-") as tmp:
        os.chmod(tmp, 0o755)  # the other uid must reach the socket's directory
        town = make_town(Path(tmp) / "town", TOWN, PLAN)
        running = Daemon(town, server.url)
        try:
            running.wait_ready()
            sock = control.socket_path(town)
            os.chmod(sock.parent, 0o755)
            os.chmod(sock, 0o666)  # so that SO_PEERCRED, not the file mode, is what refuses
            answer = request_as_uid(65534, sock)
            if not isinstance(answer, dict):  # a busy machine: the child's connect timed out
                answer = request_as_uid(65534, sock)
        finally:
            assert running.terminate() == 0
    assert answer == {"ok": False, "error": "permission denied: not your daemon"}


def request_as_uid(uid: int, sock: Path) -> object:
    read_end, write_end = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover - the child
        os.close(read_end)
        try:
            os.setgid(uid)
            os.setuid(uid)
            answer: object = control.request(sock, {"cmd": "status"}, 20.0)
        except Exception as error:
            answer = repr(error)
        os.write(write_end, json.dumps(answer).encode())
        os._exit(0)
    os.close(write_end)
    os.waitpid(child, 0)
    with os.fdopen(read_end) as stream:
        return json.loads(stream.read())


def test_systemd_readiness_status_and_unit(tmp_path: Path, town: Path, server: RedisServer) -> None:
    notify_path = tmp_path / "notify.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener.bind(str(notify_path))
    listener.settimeout(20)
    running = Daemon(town, server.url, env={"NOTIFY_SOCKET": str(notify_path)})
    try:
        messages = []
        while not any("READY=1" in m for m in messages):
            messages.append(listener.recv(4096).decode())
        assert any("STATUS=" in m for m in messages)
        assert running.status()["mode"] == "systemd"  # type: ignore[index]
    finally:
        assert running.terminate() == 0
        listener.close()
    unit = Path(__file__).parents[1] / "systemd" / "ttsyncd@.service"
    text = unit.read_text()
    for line in ("Type=notify", "WatchdogSec=", "Restart=on-failure", "ExecReload=/bin/kill -HUP"):
        assert line in text
    analyze = subprocess.run(["which", "systemd-analyze"], capture_output=True, text=True)
    if analyze.returncode != 0:
        pytest.skip("systemd-analyze is not installed")
    instance = tmp_path / "units" / "ttsyncd@tmp-town.service"
    instance.parent.mkdir()
    instance.write_text(
        text.replace("/usr/local/bin/ttsyncd", str(Path(os.sys.executable).parent / "ttsyncd"))
    )
    verified = subprocess.run(
        ["systemd-analyze", "verify", str(instance)], capture_output=True, text=True
    )
    assert verified.returncode == 0, verified.stderr


def test_status_keeps_every_unknown_agent_across_later_syncs(
    daemon: Daemon, server: RedisServer, town: Path
) -> None:
    """A later sync merges only what changed; status still lists every agent name no agent
    hash carries, not only those of the tasks that sync merged."""
    path = town / "tasks.toml"
    rewrite_in_place(path, PLAN.replace('"Build the API"', '"Build the API"\nagent = "ghost"'))
    wait_until(lambda: (daemon.status() or {}).get("unknown_agents") == {"api": "ghost"},
               what="the unknown agent in status")  # fmt: skip
    rewrite_in_place(path, path.read_text().replace("Write the docs", "Write the user docs"))
    client = server.client()
    wait_until(lambda: client.hget(key("docs"), "description") == "Write the user docs",
               what="the second save in Redis")  # fmt: skip
    daemon.wait_idle()
    assert daemon.status()["unknown_agents"] == {"api": "ghost"}  # type: ignore[index]
