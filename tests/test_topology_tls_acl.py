"""TLS and ACL users beyond one server: `rediss+sentinel://` (TLS to the sentinels and to the
primary, client certificates required everywhere) and the `[redis] sentinels` table with
`tls = true`; the README's ACL lines behind Sentinel and on a Cluster, then every one-shot
command and the daemon as that user (tests/test_tls_acl.py does the same on one server). All
on servers the tests start on ports the OS picks; the TLS case needs a TLS build (Debian's)."""

from __future__ import annotations

from pathlib import Path

import redis.cluster

from tests.daemon_harness import Daemon
from tests.helpers import make_town, run_cli
from tests.test_secrets import every_output_and_file
from tests.test_tls_acl import (
    PASSWORD,
    PLAN,
    TOWN,
    run_everything_as_the_user,
    run_readme_lines,
    tls_config,
)
from tests.tls_harness import make_certificates, require_tls
from tests.topologies import redis_cluster, redis_sentinel


def test_rediss_sentinel_with_the_readme_acl_user(tmp_path: Path) -> None:
    """TLS-only sentinel, primary and replica; the user (README's lines, `+wait` included) on
    the primary and the replica; every command and the daemon through `rediss+sentinel://`,
    then the table form with `tls = true`."""
    require_tls()
    town = make_town(tmp_path / "town", TOWN, PLAN)
    certs = make_certificates(town / "certs")
    config = town / "ttsyncd.toml"
    config.write_text(tls_config(certs, verify="required"))
    with redis_sentinel(tls=certs) as setup:
        for server in (setup.primary, setup.replica):
            server.client().config_set("notify-keyspace-events", "Khgx")
            run_readme_lines(server.client(), "+wait")
        url = setup.url.replace("rediss+sentinel://", f"rediss+sentinel://ttsyncd:{PASSWORD}@")
        admin = setup.primary.client()
        outputs = run_everything_as_the_user(town, url, admin, topology="sentinel")
        shown = f"rediss+sentinel://ttsyncd:***@{setup.sentinel.address}/{setup.service}/0"
        everything = every_output_and_file(town, outputs)
        assert shown in everything and PASSWORD not in everything
        # The replica holds what the syncs wrote (WAIT), and the user never needed more.
        assert setup.replica.client().hgetall(next(admin.scan_iter(match=f"tt:{TOWN}:task:*")))

        # The table form: sentinels, service, the primary's user, tls = true.
        config.write_text(
            config.read_text().replace(
                "[redis]\n",
                f'[redis]\nsentinels = ["{setup.sentinel.address}"]\n'
                f'service_name = "{setup.service}"\nusername = "ttsyncd"\n'
                f'password = "{PASSWORD}"\ntls = true\n',
            )
        )
        (town / "tasks.toml").write_text(PLAN.replace("Build the API", "Build the API v2"))
        pushed = run_cli(town, "push", redis_url=None)
        assert pushed.returncode == 0, pushed.stderr
        assert "updated 1" in pushed.stdout
        daemon = Daemon(town, url)
        try:
            status = daemon.wait_ready()
            assert status["last_error"] is None, daemon.log()
            shown_status = run_cli(town, "status", redis_url=None).stdout
            assert f"redis:         {shown}" in shown_status
            assert f"primary {setup.primary.address})" in shown_status
        finally:
            assert daemon.terminate() == 0
        # A sentinel that refuses the handshake (no client certificate) says so, exit 3.
        config.write_text(tls_config(certs, client_cert=False))
        refused = run_cli(town, "push", redis_url=None, env={"REDIS_URL": url})
        assert refused.returncode == 3, refused.stderr
        assert PASSWORD not in refused.stdout + refused.stderr


def test_the_readme_acl_user_on_a_cluster(tmp_path: Path) -> None:
    """The README's lines on every node, replicas included (a sync WAITs for them); the user
    cannot turn notifications on or probe every primary, so the daemon polls (a short interval
    here): agents' updates still arrive."""
    town = make_town(tmp_path / "town", TOWN, PLAN)
    (town / "ttsyncd.toml").write_text("[sync]\npoll_interval_ms = 300\n")
    notify = ("--notify-keyspace-events", "Khgx")
    with redis_cluster(extra=notify, replicas=True) as cluster:  # replicas: the syncs WAIT
        nodes = [server.tcp_client() for server in cluster.servers]
        for node in nodes:
            run_readme_lines(node, "+cluster|slots")
        url = f"redis://ttsyncd:{PASSWORD}@{cluster.nodes[0].address}/0"
        admin: redis.cluster.RedisCluster = cluster.client()
        outputs = run_everything_as_the_user(
            town, url, admin, topology="cluster", notifications="polling", nodes=nodes
        )
        everything = every_output_and_file(town, outputs)
        assert PASSWORD not in everything
