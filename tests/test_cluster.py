"""A Redis Cluster of three primaries, started by the tests on loopback: the store's whole suite
again through redis-py's cluster client, the backlog's ordering across slots, and the daemon
end to end (the real CLI in a subprocess) syncing both ways, with tasks on every primary, one
key written per one-task save, and a notification from each primary reaching the file."""

from __future__ import annotations

import os
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import redis.cluster

from tests.daemon_harness import QUIET_S, Daemon, FileWrites, wait_until
from tests.helpers import make_town, plan_records, run_cli, town_records
from tests.test_store import (  # noqa: F401  (the store's suite, collected here again)
    AUTH_API,
    NEW_UUID,
    UNTAGGED,
    WRITE_COMMANDS,
    backlog,
    delete_write,
    load_fixture,
    new_task_write,
    read_task,
    test_a_batch_writes_the_fresh_and_returns_only_the_stale,
    test_a_changed_value_that_is_restored_matches_again,
    test_a_write_that_clears_fields_hdels_them,
    test_a_write_to_a_non_hash_key_is_reported_and_does_not_spoil_the_batch,
    test_applied_writes_read_back_as_the_records_written,
    test_backlog_add_of_a_refused_write_does_not_push,
    test_backlog_add_pushes_the_new_task_once,
    test_delete_removes_the_key_and_lrems_it_from_the_backlog,
    test_delete_without_backlog_remove_leaves_the_backlog,
    test_failed_guarded_delete_keeps_the_task_and_puts_it_back_on_the_backlog,
    test_failed_guarded_delete_of_a_task_not_on_the_backlog_does_not_add_it,
    test_fixture_is_written_as_tinytown_stores_it,
    test_guarded_create_over_an_existing_hash_is_changed_and_writes_nothing,
    test_guarded_create_writes_the_hash_exactly,
    test_guarded_update_writes_when_the_hash_is_as_read,
    test_hash_write_dataclass_is_what_apply_writes_consumes,
    test_read_hashes_of_given_keys_only,
    test_read_snapshot_between_tinytowns_hdel_and_hset_still_decodes,
    test_read_snapshot_does_not_read_other_towns,
    test_read_snapshot_finds_every_task_decoded,
    test_read_snapshot_finds_the_agent_names,
    test_read_snapshot_ignores_task_namespace_keys_that_are_not_task_uuids,
    test_read_snapshot_of_an_empty_town,
    test_read_snapshot_reports_a_malformed_hash_without_raising,
    test_read_snapshot_reports_a_non_hash_task_key_without_raising,
    test_read_snapshot_sees_tinytowns_own_updates,
    test_read_snapshot_skips_agent_keys_it_cannot_use,
    test_town_names_with_glob_characters_read_exactly_their_own_keys,
    test_write_whose_expected_content_no_longer_matches_is_changed_and_not_written,
)
from tests.test_store import TOWN as STORE_TOWN
from tests.topologies import Cluster, TcpServer, redis_cluster
from ttsyncd import store
from ttsyncd.codec import backlog_key, task_key
from ttsyncd.identity import task_uuid_for
from ttsyncd.markers import epoch_key
from ttsyncd.store import TaskWrite, apply_writes, read_snapshot
from ttsyncd.tinytown import set_task

COUNT = 30  # tasks enough that every primary holds some (checked, not assumed)
STOP_MONITOR = "ttsyncd-test-stop-monitor"


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    with redis_cluster() as running:
        yield running


@pytest.fixture
def rdb(cluster: Cluster) -> Iterator[redis.cluster.RedisCluster]:
    """The store suite's `rdb`, as a cluster client, every primary emptied first."""
    client = cluster.client()
    client.flushall(target_nodes=redis.cluster.RedisCluster.PRIMARIES)
    yield client
    client.close()


# ---------------------------------------------------------------------------- the store


def write_calls(cluster: Cluster) -> Counter[str]:
    """Calls of the data-writing commands summed over every primary (INFO commandstats)."""
    calls: Counter[str] = Counter()
    for node in cluster.nodes:
        for name, value in node.tcp_client().info("commandstats").items():
            command = name.removeprefix("cmdstat_")
            if command in WRITE_COMMANDS or command in ("hgetall", "watch"):
                calls[command] += int(value["calls"])
    return calls


def reset_stats(cluster: Cluster) -> None:
    for node in cluster.nodes:
        node.tcp_client().config_resetstat()


def node_of(client: redis.cluster.RedisCluster, key: str) -> str:
    return str(client.get_node_from_key(key).name)


def creates(count: int) -> list[TaskWrite]:
    return [
        new_task_write(f"1a2b3c4d-5e6f-4a7b-8c9d-{n:012x}", backlog_add=True) for n in range(count)
    ]


def test_tasks_land_on_every_primary_and_are_read_from_each(
    rdb: redis.cluster.RedisCluster, cluster: Cluster
) -> None:
    writes = creates(COUNT)
    assert apply_writes(rdb, STORE_TOWN, writes) == []
    nodes = Counter(node_of(rdb, w.key) for w in writes)
    assert set(nodes) == {node.address for node in cluster.nodes}, nodes
    snapshot = read_snapshot(rdb, STORE_TOWN)
    assert {t.uuid for t in snapshot.tasks} == {w.task_uuid for w in writes}
    assert backlog(rdb) == [w.task_uuid for w in writes]


def test_one_script_call_per_write_and_no_transaction(
    rdb: redis.cluster.RedisCluster, cluster: Cluster
) -> None:
    """As on one server: each write is one guarded script call, grouped per node by redis-py,
    and a create's RPUSH is one more command (on the backlog's node)."""
    reset_stats(cluster)
    assert apply_writes(rdb, STORE_TOWN, []) == []
    assert not write_calls(cluster)
    assert apply_writes(rdb, STORE_TOWN, creates(50)) == []
    calls = write_calls(cluster)
    assert calls["evalsha"] == 50 and calls["hset"] == 50 and calls["hgetall"] == 50
    assert calls["rpush"] == 1  # the 50 new ids in one RPUSH
    assert not calls["watch"] and not calls["multi"]


def test_a_primary_that_forgot_the_script_gets_it_again(
    rdb: redis.cluster.RedisCluster, cluster: Cluster
) -> None:
    """A restarted or new primary has no scripts: NOSCRIPT, SCRIPT LOAD, the write again."""
    assert apply_writes(rdb, STORE_TOWN, creates(3)) == []
    for node in cluster.nodes:
        node.tcp_client().script_flush()
    later = [new_task_write(f"2a2b3c4d-5e6f-4a7b-8c9d-{n:012x}") for n in range(COUNT)]
    assert apply_writes(rdb, STORE_TOWN, later) == []
    assert len(read_snapshot(rdb, STORE_TOWN).tasks) == 3 + COUNT


class Monitor:
    """MONITOR on every node, from threads: each command with the server's timestamp (the
    nodes share this machine's clock), to check the order of commands across nodes."""

    def __init__(self, cluster: Cluster) -> None:
        self.nodes = cluster.nodes
        self.seen: list[tuple[float, str, list[str]]] = []
        self.lock = threading.Lock()
        self.started = threading.Barrier(len(self.nodes) + 1)
        self.threads = [threading.Thread(target=self.watch, args=(n,)) for n in self.nodes]
        for thread in self.threads:
            thread.start()
        self.started.wait(timeout=10)

    def watch(self, node: TcpServer) -> None:
        with node.tcp_client().monitor() as monitor:
            self.started.wait(timeout=10)
            while True:
                command = monitor.next_command()
                words = str(command["command"]).split()
                if words[:2] == ["ECHO", STOP_MONITOR]:
                    return
                with self.lock:
                    self.seen.append((float(command["time"]), node.address, words))

    def stop(self) -> list[tuple[float, str, list[str]]]:
        for node in self.nodes:
            node.tcp_client().echo(STOP_MONITOR)
        for thread in self.threads:
            thread.join(timeout=10)
        return sorted(self.seen)


def first_time(seen: list[tuple[float, str, list[str]]], command: str, word: str) -> float:
    return min(t for t, _, words in seen if words[0].upper() == command and word in words)


def test_backlog_updates_come_after_a_create_and_before_a_delete(
    rdb: redis.cluster.RedisCluster, cluster: Cluster
) -> None:
    """The backlog hashes to a slot of its own: each step must be done before the next starts
    (a pipeline would send them to their nodes in parallel)."""
    load_fixture(rdb)
    rdb.rpush(backlog_key(STORE_TOWN), AUTH_API)
    leaving = [read_task(rdb, UNTAGGED), read_task(rdb, AUTH_API)]
    arriving = creates(6)
    monitor = Monitor(cluster)
    writes = [*(delete_write(task) for task in leaving), *arriving]
    assert apply_writes(rdb, STORE_TOWN, writes) == []
    seen = monitor.stop()
    for task in leaving:
        assert first_time(seen, "LREM", task.uuid) < first_time(seen, "EVALSHA", task.key)
    for write in arriving:
        assert first_time(seen, "EVALSHA", write.key) < first_time(seen, "RPUSH", write.task_uuid)
    assert backlog(rdb) == [w.task_uuid for w in arriving]


def claimable_without_task(client: redis.cluster.RedisCluster) -> list[str]:
    return [u for u in backlog(client) if not client.exists(task_key(STORE_TOWN, u))]


def test_a_crash_between_the_steps_leaves_no_claimable_id_without_its_task(
    rdb: redis.cluster.RedisCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    load_fixture(rdb)

    def crash(*_args: Any, **_kwargs: Any) -> Any:
        raise redis.ConnectionError("crashed here")

    # A delete that stops after its LREM: the task is still there, off the backlog.
    task = read_task(rdb, UNTAGGED)
    with monkeypatch.context() as patch:
        patch.setattr(store, "guarded_writes_on_cluster", crash)
        with pytest.raises(redis.ConnectionError):
            apply_writes(rdb, STORE_TOWN, [delete_write(task)])
    assert rdb.exists(task.key) and UNTAGGED not in backlog(rdb)
    # A create that stops before its RPUSH: the task is there, not yet claimable.
    with monkeypatch.context() as patch:
        patch.setattr(redis.cluster.ClusterPipeline, "rpush", crash)
        with pytest.raises(redis.ConnectionError):
            apply_writes(rdb, STORE_TOWN, [new_task_write(backlog_add=True)])
    assert rdb.exists(task_key(STORE_TOWN, NEW_UUID)) and NEW_UUID not in backlog(rdb)
    assert claimable_without_task(rdb) == []


# ---------------------------------------------------------------------------- the daemon

TOWN = "shards"


def plan_text(count: int) -> str:
    return "# A plan on a cluster\n" + "".join(
        f'\n# task {n}\n[[tasks]]\nid = "t{n:02d}"\ndescription = "task {n}"\n'
        for n in range(count)
    )


def key(plan_id: str) -> str:
    return task_key(TOWN, task_uuid_for(TOWN, plan_id))


def town_hashes(client: redis.cluster.RedisCluster) -> dict[str, dict[str, str]]:
    return {k: client.hgetall(k) for k in client.scan_iter(match=f"tt:{TOWN}:task:*")}


def save(path: Path, text: str) -> None:
    """As editors do: a temp file renamed over the plan."""
    temp = path.with_name(f".{path.name}.swp")
    temp.write_text(text, encoding="utf-8")
    os.replace(temp, path)


def test_the_daemon_syncs_both_ways_through_every_primary(
    tmp_path: Path, cluster: Cluster, rdb: redis.cluster.RedisCluster
) -> None:
    plan = plan_text(COUNT)
    town = make_town(tmp_path / "town", TOWN, plan)
    path = town / "tasks.toml"
    daemon = Daemon(town, cluster.url)  # one node's address: the cluster is detected
    try:
        status = daemon.wait_ready()
        assert status["last_error"] is None, daemon.log()
        addresses = sorted(node.address for node in cluster.nodes)
        assert status["topology"] == {"kind": "cluster", "primaries": addresses}
        shown = run_cli(town, "status", redis_url=None).stdout
        assert f"topology:      cluster (3 primaries: {', '.join(addresses)})" in shown
        # Notifications on every primary; the plan's tasks spread over all of them.
        for node in cluster.nodes:
            flags = node.tcp_client().config_get("notify-keyspace-events")
            assert set("Khgx") <= set(flags["notify-keyspace-events"]), node.address
        wait_until(lambda: len(town_hashes(rdb)) == COUNT, what="the first push")
        holders = {node_of(rdb, k) for k in town_hashes(rdb)}
        assert holders == set(addresses)
        assert plan_records(path) == town_records(rdb, TOWN)
        assert rdb.get(epoch_key(TOWN))  # the marker, in a slot of its own

        # A one-task save writes that one key, nothing else, and never the file.
        daemon.wait_idle()
        before = town_hashes(rdb)
        reset_stats(cluster)
        writes = FileWrites(path)
        save(path, plan.replace('"task 7"', '"task seven"'))
        wait_until(lambda: rdb.hget(key("t07"), "description") == "task seven",
                   what="the save in Redis")  # fmt: skip
        ours = len(writes.versions)
        time.sleep(QUIET_S)
        daemon.wait_idle()
        writes.stop()
        assert writes.count_since(ours) == 0, "the daemon rewrote tasks.toml"
        calls = write_calls(cluster)
        assert calls["evalsha"] == 1, calls
        assert not (calls["del"] or calls["rpush"] or calls["lrem"] or calls["multi"]), calls
        after = town_hashes(rdb)
        assert [k for k in after if after[k] != before[k]] == [key("t07")]

        # A tinytown update on each primary reaches the file (each node notifies about its own
        # keys only), and the daemon writes nothing back.
        reset_stats(cluster)
        by_node: dict[str, str] = {}
        for n in range(COUNT):
            by_node.setdefault(node_of(rdb, key(f"t{n:02d}")), f"t{n:02d}")
        assert sorted(by_node) == addresses
        for node, plan_id in sorted(by_node.items()):
            fields = rdb.hgetall(key(plan_id))
            set_task(rdb, TOWN, {**fields, "state": "completed", "result": f"done on {node}"})
            wait_until(lambda: f'result = "done on {node}"' in path.read_text(),  # noqa: B023
                       what=f"the update from {node} in the file")  # fmt: skip
        time.sleep(QUIET_S)
        daemon.wait_idle()
        calls = write_calls(cluster)
        assert calls["evalsha"] == 0 and calls["hset"] == len(by_node), calls
        assert plan_records(path) == town_records(rdb, TOWN)

        # One-shot commands go through the daemon; with it gone, they reach the cluster alone.
        assert "in sync" in run_cli(town, "check", redis_url=None).stdout
    finally:
        assert daemon.terminate() == 0
    save(path, path.read_text().replace('"task 3"', '"task three"'))
    pushed = run_cli(town, "push", redis_url=cluster.url)
    assert pushed.returncode == 0, pushed.stderr
    assert "updated 1" in pushed.stdout
    assert rdb.hget(key("t03"), "description") == "task three"
