"""Redis Cluster failover end to end: three primaries, each with a replica (node timeout 1 s),
started by the test on loopback, the real daemon on one node's address, and edits on both sides
(file saves; tinytown-style agent writes through a cluster client) before, during and after a
primary is SIGKILLed (its replica is promoted by the cluster itself) or handed over with the
old primary still up (CLUSTER FAILOVER on the replica). The daemon must follow and lose
nothing: every edit made is present on both sides or recorded as a settled conflict.

It measures, per failover, the time from the primary's loss to the end of the daemon's first
successful sync after it (`python -m bench.failover --cluster` runs it longer and writes JSON).
Short by default; `pytest --long` or TTSYNCD_LONG=1 for more rounds."""

from __future__ import annotations

import json
import random
import time
from collections import Counter
from datetime import datetime
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import redis
import redis.cluster

from tests.daemon_harness import Daemon, wait_until
from tests.helpers import make_town
from tests.test_faults import (  # noqa: F401  (figures: the fault suite's report fixture)
    SEED,
    TOWN,
    Ledger,
    PlanWatch,
    figures,
    key_of,
    log_tail,
    plan_text,
    same_on_both_sides,
    settle_file,
    stop_daemon,
    tinytown_fields,
    wait_converged,
)
from tests.test_sentinel import HANDOVER, KILL, FailoverFigures
from tests.topologies import Cluster, TcpServer, redis_cluster
from ttsyncd.codec import OPTIONAL_FIELDS

COUNT = 30  # every primary holds some
FOLLOW_S = 40.0  # the cluster's failover plus the daemon's reconnect, generously
NODE_TIMEOUT_MS = 1000
# What an agent's write meets while a primary is lost: retried until a primary takes it.
TRANSIENT = (
    redis.ConnectionError,
    redis.TimeoutError,
    redis.ReadOnlyError,
    redis.exceptions.ClusterError,
    redis.exceptions.TryAgainError,
    redis.exceptions.MovedError,
    redis.exceptions.RedisClusterException,
)


def agents_client(cluster: Cluster) -> redis.cluster.RedisCluster:
    """What agents use: any live node as the entry point, the slot map found from it."""
    for server in cluster.servers:
        if server.alive():
            return redis.cluster.RedisCluster(
                "127.0.0.1", server.port, decode_responses=True, socket_timeout=1.0
            )
    raise AssertionError("no live node")


def retried(action: Any, cluster: Cluster, timeout: float = FOLLOW_S) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        try:
            return action(agents_client(cluster))
        except TRANSIENT:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def agent_update(ledger: Ledger, cluster: Cluster, plan_id: str, **changes: str | None) -> None:
    """An agent's update as tinytown writes it (HDEL + HSET, no MULTI), on the primary of its
    slot, made durable the way an agent that wants it to survive a failover must: WAIT for
    that primary's replicas, on the same connection. Retried until a primary takes it and its
    replicas hold it."""
    key = key_of(plan_id)

    def attempt(client: redis.cluster.RedisCluster) -> None:
        node = client.get_node_from_key(key)
        primary = client.get_redis_connection(node)
        replicas = sum(
            1
            for name, value in primary.info("replication").items()
            if name.startswith("slave") and isinstance(value, dict)
            and value.get("state") == "online"
        )  # fmt: skip
        fields = tinytown_fields(primary.hgetall(key), changes)
        pipe = primary.pipeline(transaction=False)
        unset = [name for name in OPTIONAL_FIELDS if name not in fields]
        if unset:
            pipe.hdel(key, *unset)
        pipe.hset(key, mapping=fields)  # type: ignore[arg-type]
        if replicas:
            pipe.execute_command("WAIT", replicas, 1000)
        acknowledged = pipe.execute()[-1]
        if replicas and int(acknowledged) < replicas:
            raise redis.ConnectionError("not on every replica yet")

    retried(attempt, cluster)
    for name, value in changes.items():
        ledger.edit("redis", plan_id, {"state": "status"}.get(name, name), value)


def first_sync_after(daemon: Daemon, lost_at: float, primary: str) -> float:
    """Seconds from `lost_at` (wall clock) to the end of the daemon's first sync once it is
    connected with `primary` among the cluster's primaries, from its JSON log."""

    def synced() -> float | None:
        connected = False
        for line in daemon.log().splitlines():
            try:
                event = json.loads(line)
            except json.JSONDecodeError:
                continue  # not JSON (a library's own traceback), or still being written
            at = datetime.fromisoformat(event["timestamp"]).timestamp()
            if at < lost_at:
                continue
            if event["event"] == "connected to Redis":
                connected = primary in event["topology"]
            elif event["event"] == "sync" and connected:
                return at - lost_at
        return None

    return wait_until(synced, FOLLOW_S, f"a sync with the new primary {primary}")


def replica_of(cluster: Cluster, primary: TcpServer) -> TcpServer:
    """The server replicating `primary` now."""
    for server in cluster.servers:
        if server.alive() and server is not primary:
            info = server.tcp_client().info("replication")
            if info["role"] == "slave" and int(info["master_port"]) == primary.port:
                return server
    raise AssertionError(f"{primary.address} has no replica")


def rejoin(cluster: Cluster, server: TcpServer) -> None:
    """A killed primary back (empty: no persistence): it finds its slots taken over, becomes
    the replica of the node that took them, and copies its data."""
    if not server.alive():
        server.start()
    wait_until(cluster.healthy, FOLLOW_S, f"{server.address} back as a replica")


def measure_cluster_failovers(
    workdir: Path, rounds: list[str], rng: random.Random
) -> FailoverFigures:
    """A town of COUNT tasks on a 3+3 Cluster, and per round (kill or handover) of a random
    primary, edits on both sides before, during and after the switch."""
    measured = FailoverFigures()
    town = make_town(workdir / "town", TOWN, plan_text(COUNT))
    path = town / "tasks.toml"
    state_dir = town / ".tt" / "ttsyncd"
    ledger = Ledger(ids={f"t{n:03d}" for n in range(COUNT)})
    with redis_cluster(replicas=True, node_timeout_ms=NODE_TIMEOUT_MS) as cluster:
        watch = PlanWatch(path)
        daemon: Daemon | None = None
        try:
            daemon = Daemon(town, cluster.url)
            status = daemon.wait_ready()
            assert status["topology"]["kind"] == "cluster", status
            client = agents_client(cluster)
            wait_converged(daemon, path, client)
            for r, kind in enumerate(rounds):
                ids = sorted(ledger.ids)
                primaries = cluster.primaries()
                old = rng.choice(primaries)
                if kind == KILL and cluster.nodes[0] in primaries:
                    old = cluster.nodes[0]  # the node the daemon's URL names: it must do without
                new = replica_of(cluster, old)
                # The edits of each phase land on every primary, the lost one's included.
                saved = rng.sample(ids, 3)
                ledger.save(path, {i: f"round {r} before {i}" for i in saved})
                updated = rng.sample([i for i in ids if i not in saved], 3)
                for plan_id in updated:
                    state = rng.choice(["running", "completed", "failed", "assigned"])
                    agent_update(
                        ledger, cluster, plan_id, state=state, result=f"round {r} {plan_id}"
                    )
                time.sleep(rng.uniform(0, 0.15))
                lost_at = time.time()
                if kind == KILL:
                    old.kill()
                else:
                    new.tcp_client().execute_command("CLUSTER FAILOVER")
                # During: a save with a new entry, and agents' updates that wait for a primary.
                settle_file(path)
                during = rng.sample([i for i in ids if i not in saved], 3)
                ledger.save(path, {during[0]: f"round {r} during {during[0]}"}, f"n{r:03d}")
                for plan_id in during[1:]:
                    agent_update(ledger, cluster, plan_id, state="completed",
                                 result=f"round {r} during {plan_id}")  # fmt: skip
                wait_until(lambda: cluster.role(new) == "master", FOLLOW_S,  # noqa: B023
                           "the replica to be promoted")  # fmt: skip
                measured.rounds.append(kind)
                measured.to_first_sync_s.setdefault(kind, []).append(
                    first_sync_after(daemon, lost_at, new.address)
                )
                # After: one more update on the new primary must reach the file.
                client = agents_client(cluster)
                after = rng.choice([i for i in ids if i not in (*saved, *during)])
                agent_update(ledger, cluster, after, result=f"round {r} after")
                wait_until(partial(same_on_both_sides, path, client, [after]), FOLLOW_S,
                           "an update after the failover in the file")  # fmt: skip
                final = wait_converged(daemon, path, client)
                problems = ledger.check(final, state_dir)
                assert not problems, f"round {r} ({kind}): {problems}\n{log_tail(daemon)}"
                assert not watch.problems, watch.problems
                flags = new.tcp_client().config_get("notify-keyspace-events")
                assert set("Khgx") <= set(flags["notify-keyspace-events"])
                rejoin(cluster, old)
            assert daemon.process.poll() is None
        finally:
            watch.stop()
            stop_daemon(daemon)
    return measured.count(ledger, state_dir)


def test_the_daemon_follows_cluster_failovers_and_loses_nothing(
    tmp_path: Path,
    long_run: bool,
    figures: Counter[str],  # noqa: F811  (the fixture imported above)
    request: pytest.FixtureRequest,
) -> None:
    rounds = [HANDOVER, KILL] * (4 if long_run else 1)
    rng = random.Random(f"{SEED}/{request.node.name}")
    measured = measure_cluster_failovers(tmp_path, rounds, rng)
    for name, value in measured.summary().items():
        figures[f"cluster: {name}"] = value  # type: ignore[assignment]
    assert measured.edits_lost == 0, measured.lost
    assert measured.edits_made >= 10 * len(rounds)
