"""Saving a base only once the writes it counts are safe from a failover: behind Sentinel and
on a Cluster, WAIT for the replicas a failover could promote (see confirm_replicated)."""

from __future__ import annotations

from typing import Any, Final

import redis
import redis.cluster
import redis.sentinel
import structlog

from ttsyncd.errors import RedisUnavailable
from ttsyncd.markers import epoch_key
from ttsyncd.topology import RedisClient

log = structlog.get_logger("ttsyncd.replication")

# Behind Sentinel: how long a sync waits for the replicas to acknowledge what it read and wrote.
REPLICA_WAIT_MS: Final = 1000


class NotReplicated(RedisUnavailable, redis.ConnectionError):
    """The primary's replicas did not acknowledge in time: the daemon retries the sync (as
    after a lost connection), a one-shot command exits 3."""


def confirm_replicated(
    client: RedisClient, town: str, epoch: str, markers: dict[str, str] | None = None
) -> None:
    """Behind Sentinel, before a sync saves its base: what it read and wrote is on the primary
    Sentinel names now, and on every replica a failover could promote. Redis replicates
    asynchronously, and a failover loses what the old primary acknowledged but had not passed
    on: a SIGKILL just after a write; a handover, where the old primary takes writes for a
    while after the promoted replica detached (and clients' pooled connections still reach it
    until it is demoted). A base that counts such a write as done would read the new primary's
    older data as an edit made in Redis, and delete or revert the file's entry. Unconfirmed,
    the base stays as it was, so the next sync (on the new primary) still sees the file's
    change to push.

    WAIT counts the writes of its own connection, and the replication offset is global: a
    write on this connection (the epoch marker set to what it holds) then WAIT covers
    everything before it, this sync's writes included. On a Cluster, the same on every primary
    (confirm_on_cluster); a plain server skips this."""
    if isinstance(client, redis.cluster.RedisCluster):
        confirm_on_cluster(client, {epoch_key(town): epoch, **(markers or {})})
        return
    pool = client.connection_pool
    if not isinstance(pool, redis.sentinel.SentinelConnectionPool):
        return
    used = pool.master_address  # where this client's connections went
    current = pool.get_master_address()  # type: ignore[no-untyped-call]
    if used is not None and tuple(current) != tuple(used):
        raise NotReplicated(
            "the primary changed during the sync: its writes may be lost; syncing again"
        )
    replicas = promotable(pool)
    if not replicas:
        return  # none (the only replica died): nothing a failover could promote
    pipe = client.pipeline(transaction=False)
    pipe.set(epoch_key(town), epoch, xx=True)
    pipe.execute_command("WAIT", len(replicas), REPLICA_WAIT_MS)  # type: ignore[no-untyped-call]
    acknowledged = int(pipe.execute()[-1])
    if acknowledged < len(replicas):
        log.warning("the replicas did not acknowledge the sync in time",
                    acknowledged=acknowledged, replicas=len(replicas))  # fmt: skip
        raise NotReplicated(
            f"{acknowledged} of {len(replicas)} replicas acknowledged within "
            f"{REPLICA_WAIT_MS} ms: a failover could lose this sync's writes; syncing again"
        )


def confirm_on_cluster(client: redis.cluster.RedisCluster, markers: dict[str, str]) -> None:
    """confirm_replicated on a Cluster: on each primary, its marker set to what it holds (XX)
    and, where it has replicas online, WAIT for them on that connection. A Cluster fails a
    primary over to one of its replicas just as Sentinel does, and loses what the replica had
    not received. A marker that is gone (XX sets nothing) means its primary restarted empty
    during the sync: what the sync wrote there is gone too, so its base is not saved either."""
    by_node: dict[str, list[str]] = {}
    nodes: dict[str, Any] = {}
    for key in markers:
        node = client.get_node_from_key(key)  # type: ignore[no-untyped-call]
        by_node.setdefault(node.name, []).append(key)
        nodes[node.name] = node
    for name, keys in sorted(by_node.items()):
        primary = client.get_redis_connection(nodes[name])
        try:
            replicas = online_replicas(primary.info("replication"))
            pipe = primary.pipeline(transaction=False)
            for key in keys:
                pipe.set(key, markers[key], xx=True)
            if replicas:
                pipe.execute_command("WAIT", replicas, REPLICA_WAIT_MS)  # type: ignore[no-untyped-call]
            replies = pipe.execute()
        except (redis.exceptions.MovedError, redis.exceptions.ReadOnlyError) as error:
            # The client's slot map is older than a failover: read it anew for the retry.
            client.nodes_manager.initialize()
            raise NotReplicated(
                f"{name} is no longer the primary of its slots ({type(error).__name__}): "
                "its writes may be lost; syncing again"
            ) from None
        if not all(replies[: len(keys)]):
            raise NotReplicated(
                f"{name} lost its epoch marker during the sync (it restarted empty?); syncing again"
            )
        acknowledged = int(replies[-1]) if replicas else 0
        if acknowledged < replicas:
            log.warning("the replicas did not acknowledge the sync in time", primary=name,
                        acknowledged=acknowledged, replicas=replicas)  # fmt: skip
            raise NotReplicated(
                f"{acknowledged} of {replicas} replicas of {name} acknowledged within "
                f"{REPLICA_WAIT_MS} ms: a failover could lose this sync's writes; syncing again"
            )


def online_replicas(info: dict[str, Any]) -> int:
    """The replicas INFO replication lists as online (the ones a WAIT can count on)."""
    return sum(
        1
        for name, value in info.items()
        if name.startswith("slave") and isinstance(value, dict) and value.get("state") == "online"
    )


def promotable(pool: redis.sentinel.SentinelConnectionPool) -> list[str]:
    """The replicas a failover may promote, as Sentinel lists them: the one it is promoting
    (flagged `promoted`, whatever else it says meanwhile), and those up and replicating (link
    ok). Not one that is down or not replicating yet (a demoted primary until Sentinel
    converts it, a dead one after a failover): Sentinel does not pick those, and waiting for
    them would stall every sync."""
    for sentinel in pool.sentinel_manager.sentinels:
        try:
            replicas = sentinel.sentinel_slaves(pool.service_name)
        except (redis.ConnectionError, redis.TimeoutError, redis.ResponseError):
            continue
        return [
            f"{r['ip']}:{r['port']}"
            for r in replicas
            if "promoted" in str(r.get("flags", "")).split(",")
            or (
                not (r["is_sdown"] or r["is_odown"] or r["is_disconnected"])
                and r.get("master-link-status") == "ok"
            )
        ]
    return []  # no sentinel answers: none can fail the primary over either
