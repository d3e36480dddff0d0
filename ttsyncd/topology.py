"""Which kind of Redis a town lives on — one server, a primary behind Sentinel, or a Redis
Cluster — and the client redis-py offers for each (what `status` says about it: topology_status).

Failover and sharding stay redis-py's job: its Sentinel client asks the sentinels for the
current primary whenever it connects (and drops a connection to a primary that was demoted), and
its Cluster client routes each key to its node and follows MOVED/ASK. What ttsyncd adds is only
what no client can do for it: turning keyspace notifications on for every primary, noticing
that the primary it listens to is no longer the one (see `current_primaries`), reconnecting to
a Cluster from every node it knew (`known_cluster_nodes`), and, behind Sentinel and on a
Cluster, saving a base only once the replicas hold it (replication.confirm_replicated).
"""

from __future__ import annotations

from typing import Any, Final, TypeAlias

import redis
import redis.asyncio
import redis.asyncio.cluster
import redis.cluster
import redis.sentinel

from ttsyncd.endpoints import Endpoint
from ttsyncd.topology_status import CLUSTER, SENTINEL, STANDALONE, Topology

# A client of the town's Redis: one server (also a Sentinel-managed primary), or a Cluster.
RedisClient: TypeAlias = redis.Redis | redis.cluster.RedisCluster
AsyncRedisClient: TypeAlias = redis.asyncio.Redis | redis.asyncio.cluster.RedisCluster

# What says "this Redis cannot answer right now", retried as a lost connection is: also a
# Cluster between a primary's loss and its return or its replica's promotion (CLUSTERDOWN, a
# slot with no node), or mid-resharding (TRYAGAIN).
UNREACHABLE: Final = (
    redis.ConnectionError,
    redis.TimeoutError,
    OSError,
    redis.exceptions.ClusterError,
    redis.exceptions.TryAgainError,
    redis.exceptions.SlotNotCoveredError,
)


# The nodes of each Cluster this process has connected to (by endpoint identity), as its slot
# map last listed them: a reconnect starts from all of them, not only from the node the URL
# names, which may be the very primary that was lost.
known_cluster_nodes: dict[str, tuple[tuple[str, int], ...]] = {}


def open_client(endpoint: Endpoint, *, timeout_s: float = 5.0) -> RedisClient:
    """A client of `endpoint`'s Redis, not yet connected. A Cluster client when the endpoint says
    so (`[redis] cluster = true`), when its node reports `cluster_enabled:1`, or when this
    process met a Cluster there before (see known_cluster_nodes)."""
    known = known_cluster_nodes.get(endpoint.identity())
    if known and endpoint.cluster is not False:
        return endpoint.cluster_client(timeout_s=timeout_s, nodes=known)
    client = endpoint.client(timeout_s=timeout_s)
    if wants_cluster(endpoint, client):
        client.close()
        return endpoint.cluster_client(timeout_s=timeout_s)
    return client


def wants_cluster(endpoint: Endpoint, client: redis.Redis) -> bool:
    if endpoint.cluster is not None:
        return endpoint.cluster
    if endpoint.is_sentinel or endpoint.unix_socket is not None:
        return False  # Sentinel serves no cluster; a cluster announces TCP addresses
    return is_cluster_node(client)


def is_cluster_node(client: redis.Redis) -> bool:
    """INFO cluster says `cluster_enabled:1` on a cluster node (and INFO may be refused)."""
    try:
        info: dict[str, Any] = client.info("cluster")
    except redis.ResponseError:
        return False
    return str(info.get("cluster_enabled", 0)) == "1"


def open_async_client(endpoint: Endpoint, cluster: bool) -> AsyncRedisClient:
    """The asyncio client for keyspace notifications, of the same kind as the sync one."""
    if cluster:
        return endpoint.async_cluster_client(nodes=known_cluster_nodes.get(endpoint.identity(), ()))
    return endpoint.async_client()


def primary_clients(client: RedisClient) -> list[redis.Redis]:
    """A client of each primary: the server itself, or every primary node of a Cluster
    (each node has its own notify-keyspace-events, and notifies only about its own keys)."""
    if isinstance(client, redis.cluster.RedisCluster):
        nodes = client.get_primaries()  # type: ignore[no-untyped-call]
        return [client.get_redis_connection(node) for node in nodes]
    return [client]


def topology_of(endpoint: Endpoint) -> Topology:
    """The topology an endpoint names, before a connection says more (a Cluster is detected on
    connecting, so a plain redis:// endpoint reads as standalone until then)."""
    if endpoint.is_sentinel:
        return Topology(SENTINEL, service=endpoint.service_name)
    return Topology(CLUSTER if endpoint.cluster else STANDALONE)


def remember_cluster_nodes(endpoint: Endpoint, client: RedisClient) -> None:
    """A connected Cluster client's nodes, primaries and replicas, for the next open_client."""
    if isinstance(client, redis.cluster.RedisCluster):
        nodes = client.get_nodes()  # type: ignore[no-untyped-call]
        known_cluster_nodes[endpoint.identity()] = tuple(sorted((n.host, n.port) for n in nodes))


def current_topology(client: RedisClient) -> Topology:
    """The topology as the client sees it now."""
    if isinstance(client, redis.cluster.RedisCluster):
        primaries = client.get_primaries()  # type: ignore[no-untyped-call]
        return Topology(CLUSTER, tuple(sorted(node.name for node in primaries)))
    pool = client.connection_pool
    if isinstance(pool, redis.sentinel.SentinelConnectionPool):
        host, port = pool.get_master_address()  # type: ignore[no-untyped-call]
        return Topology(SENTINEL, (f"{host}:{port}",), pool.service_name)
    return Topology(STANDALONE)


async def current_primaries(aclient: AsyncRedisClient) -> tuple[str, ...]:
    """The primaries now: as the sentinels name them, or as the Cluster says (cluster_primaries)."""
    if isinstance(aclient, redis.asyncio.cluster.RedisCluster):
        return await cluster_primaries(aclient)
    pool = aclient.connection_pool
    if isinstance(pool, redis.asyncio.sentinel.SentinelConnectionPool):
        host, port = await pool.get_master_address()  # type: ignore[no-untyped-call]
        return (f"{host}:{port}",)
    return ()


async def cluster_primaries(aclient: redis.asyncio.cluster.RedisCluster) -> tuple[str, ...]:
    """The primaries of every slot as the Cluster says now (CLUSTER SLOTS, of the first primary
    the client knows that answers). Not the client's own slot map: redis-py refreshes that on
    MOVED or a lost connection only, and a handover (CLUSTER FAILOVER) causes neither on
    connections that only listen for notifications, which would then miss every event of the
    promoted primary."""
    failure: Exception = redis.ConnectionError("no node of the cluster answers")
    for node in aclient.get_primaries():
        try:
            slots = await aclient.execute_command("CLUSTER SLOTS", target_nodes=node)
        except (redis.ConnectionError, redis.TimeoutError) as error:
            failure = error
            continue
        addresses = {f"{served['primary'][0] or node.host}:{served['primary'][1]}"
                     for served in slots.values()}  # fmt: skip
        return tuple(sorted(addresses))
    raise failure
