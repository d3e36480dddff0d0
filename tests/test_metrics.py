"""`[metrics] listen`: a real daemon in a subprocess on a redis-server of the test's own, its
metrics scraped over HTTP as Prometheus would. Asserts on counts, never on timings."""

from __future__ import annotations

import subprocess
import sys
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.daemon_harness import Daemon, RedisServer, rewrite_in_place, wait_until
from tests.helpers import TWO_TASKS, free_port, make_town, run_cli
from ttsyncd.codec import task_key
from ttsyncd.identity import task_uuid_for
from ttsyncd.tinytown import register_agent, start_task

TOWN = "counted"
PLAN = TWO_TASKS

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(port: int) -> Samples:
    """Every sample on /metrics, by name and labels."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as answer:
        assert answer.status == 200
        text = answer.read().decode()
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def scrape_until(port: int, ready: Callable[[Samples], bool], what: str) -> Samples:
    """The first scrape `ready` accepts."""
    return wait_until(lambda: s if ready(s := scrape(port)) else None, 20.0, what)


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def syncs(samples: Samples, direction: str, outcome: str = "ok", origin: str = "daemon") -> float:
    labels = {"direction": direction, "outcome": outcome, "origin": origin}
    return value(samples, "ttsyncd_syncs_total", **labels)


@pytest.fixture
def port() -> int:
    return free_port()


@pytest.fixture
def daemon(tmp_path: Path, server: RedisServer, port: int) -> Iterator[Daemon]:
    town = make_town(tmp_path / "town", TOWN, PLAN)
    # A guard that refuses a single deletion of the two tasks, for the refusal below.
    (town / "ttsyncd.toml").write_text(
        f'[metrics]\nlisten = "127.0.0.1:{port}"\n\n'
        "[sync]\nmax_delete_min = 0\nmax_delete_fraction = 0.1\n"
    )
    running = Daemon(town, server.url)
    try:
        running.wait_ready()
        yield running
    finally:
        assert running.terminate() == 0, running.log()


def key(plan_id: str) -> str:
    return task_key(TOWN, task_uuid_for(TOWN, plan_id))


def test_syncs_latency_conflicts_refusals_and_reconnects_are_counted(
    daemon: Daemon, server: RedisServer, port: int
) -> None:
    town = daemon.town
    first = scrape(port)
    assert syncs(first, "both") == 1  # the first sync, in full
    assert value(first, "ttsyncd_tasks", side="file") == 2
    assert value(first, "ttsyncd_tasks", side="redis") == 2
    assert value(first, "ttsyncd_redis_connected") == 1
    assert value(first, "ttsyncd_last_sync_success_timestamp_seconds") > 0
    assert value(first, "ttsyncd_sync_duration_seconds_count", direction="both") == 1
    assert value(first, "ttsyncd_change_latency_seconds_count", source="file") == 0

    # A save: one push, its latency measured from the watcher's event.
    rewrite_in_place(town / "tasks.toml", PLAN.replace("Write the docs", "Write the user docs"))
    saved = scrape_until(port, lambda s: syncs(s, "push") == 1, "the push counted")
    assert value(saved, "ttsyncd_change_latency_seconds_count", source="file") == 1
    assert value(saved, "ttsyncd_change_latency_seconds_sum", source="file") > 0
    assert value(saved, "ttsyncd_sync_duration_seconds_count", direction="push") == 1

    # An agent picks a task up (tinytown's HDEL + HSET): one pull, its latency from the
    # keyspace notification.
    client = server.client()
    start_task(client, TOWN, task_uuid_for(TOWN, "api"), register_agent(client, TOWN, "backend"))
    pulled = scrape_until(port, lambda s: syncs(s, "pull") >= 1, "the pull counted")
    assert value(pulled, "ttsyncd_change_latency_seconds_count", source="redis") >= 1
    assert "running" in (town / "tasks.toml").read_text()
    assert value(pulled, "ttsyncd_conflicts_total") == 0

    # A conflict: both sides change one description while paused; resume merges them.
    assert run_cli(town, "pause", redis_url=None).returncode == 0
    text = (town / "tasks.toml").read_text()
    rewrite_in_place(town / "tasks.toml", text.replace("Build the API", "Build the file API"))
    client.hset(key("api"), "description", "Build the redis API")
    assert run_cli(town, "resume", redis_url=None).returncode == 0
    conflicted = scrape_until(
        port, lambda s: value(s, "ttsyncd_conflicts_total") > 0, "the conflict counted"
    )
    assert value(conflicted, "ttsyncd_conflicts_total") == 1
    assert value(conflicted, "ttsyncd_stale_writes_total") == 0

    # A push through the socket counts as the command's.
    assert run_cli(town, "push", redis_url=None).returncode == 0
    assert syncs(scrape(port), "push", origin="command") == 1

    # Deleting one task of two is refused by this town's guard: counted, and held.
    daemon.wait_idle()
    text = (town / "tasks.toml").read_text()
    rewrite_in_place(town / "tasks.toml", text[: text.index("[[tasks]]", 1)])
    refused = scrape_until(
        port, lambda s: value(s, "ttsyncd_refused_deletions_total") > 0, "the refusal counted"
    )
    assert value(refused, "ttsyncd_refused_deletions_total") == 1
    assert value(refused, "ttsyncd_refused_deletion_tasks") == 1
    assert client.exists(key("docs"))
    assert value(refused, "ttsyncd_tasks", side="file") == 1

    # Redis goes away and comes back: one reconnect, and a full sync.
    assert value(refused, "ttsyncd_redis_reconnects_total") == 0
    server.kill()
    scrape_until(port, lambda s: value(s, "ttsyncd_redis_connected") == 0, "the loss noticed")
    before = syncs(scrape(port), "both")
    server.start()
    back = scrape_until(port, lambda s: syncs(s, "both") > before, "the resync")
    assert value(back, "ttsyncd_redis_reconnects_total") == 1
    assert value(back, "ttsyncd_redis_connected") == 1
    failed = sum(
        v for (name, labels), v in back.items()
        if name == "ttsyncd_syncs_total" and ("outcome", "ok") not in labels
    )  # fmt: skip
    assert failed == 0  # nothing failed on the way: what was owed waited for the connection


def test_a_port_in_use_stops_the_daemon_with_the_key_named(
    tmp_path: Path, server: RedisServer, port: int
) -> None:
    town = make_town(tmp_path / "town", TOWN, PLAN)
    (town / "ttsyncd.toml").write_text(f'[metrics]\nlisten = "127.0.0.1:{port}"\n')
    running = Daemon(town, server.url)
    try:
        running.wait_ready()
        second = run_cli(town, "run", redis_url=server.url, timeout=30)
    finally:
        assert running.terminate() == 0
    assert second.returncode != 0
    assert f"{town / 'ttsyncd.toml'}: metrics.listen: cannot serve on 127.0.0.1:{port}" in (
        second.stderr
    )


def test_without_the_extra_the_error_names_the_setting_and_the_extra(
    tmp_path: Path, server: RedisServer, port: int
) -> None:
    town = make_town(tmp_path / "town", TOWN, PLAN)
    (town / "ttsyncd.toml").write_text(f'[metrics]\nlisten = "127.0.0.1:{port}"\n')
    # prometheus_client made unimportable in the daemon's process only.
    blocker = tmp_path / "blocker"
    (blocker / "prometheus_client").mkdir(parents=True)
    (blocker / "prometheus_client" / "__init__.py").write_text("raise ImportError('hidden')\n")
    done = subprocess.run(
        [sys.executable, "-m", "ttsyncd", "--town", str(town), "--redis-url", server.url, "run"],
        capture_output=True, text=True, timeout=30, check=False,
        env={"PYTHONPATH": str(blocker), "PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert f"{town / 'ttsyncd.toml'}: metrics.listen is set, but prometheus_client" in done.stderr
    assert "pip install 'ttsyncd[metrics]'" in done.stderr
    assert not (town / ".tt" / "ttsyncd.sock").exists()
