"""Keyspace notifications, which tell the daemon what changed in Redis: turning them on (the
flags ttsyncd needs, added to those set: `enable_notifications`), subscribing to the town's
task and agent keys (on every primary of a Cluster: `subscribe`), and, where ttsyncd may not
ask with CONFIG, finding out whether they are on (`notifications_arrive`).

Managed Redis services refuse CONFIG (ElastiCache, Memorystore, Azure Cache for Redis), and so
does the minimal ACL user ttsyncd documents; their notifications are turned on elsewhere (a
parameter group, a console, an administrator). A probe finds out without CONFIG: subscribe to
one key of the town's own, write it with a hash command and delete it, and see whether both
events arrive (`hset` needs the K and h flags, `del` needs g). It cannot check x (expiry)
without waiting for a key to expire; docs/managed-redis.md asks for it with the others.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Final

import redis
import redis.asyncio
import redis.asyncio.cluster
from redis.asyncio.keyspace_notifications import (
    AsyncClusterKeyspaceNotifications,
    AsyncKeyspaceNotifications,
)
from redis.keyspace_notifications import KeyspaceChannel

from ttsyncd.codec import agent_key_prefix
from ttsyncd.store import glob_escape
from ttsyncd.topology import AsyncRedisClient, RedisClient, primary_clients

PROBE_TIMEOUT_S: Final = 1.0  # events reach a subscriber before the write's reply: ample
PROBE_EVENTS: Final = frozenset({"hset", "del"})


def probe_key(town: str) -> str:
    """Inside the town's keyspace (tt:<town>:*), so the town's ACL user may write it, and
    outside its tasks and agents, so no sync ever reads it."""
    return f"tt:{town}:ttsyncd:probe"


def write_probe(client: redis.Redis, key: str) -> None:
    """One hash write and one delete: the key does not outlive the probe."""
    pipe = client.pipeline(transaction=False)
    pipe.hset(key, "probe", uuid.uuid4().hex)
    pipe.delete(key)
    pipe.execute()


async def notifications_arrive(
    aclient: redis.asyncio.Redis, client: redis.Redis, town: str, db: int
) -> bool:
    """True when the server publishes the keyspace events ttsyncd listens to (h and g)."""
    key = probe_key(town)
    notifications = AsyncKeyspaceNotifications(aclient)
    try:
        await notifications.subscribe(KeyspaceChannel(key, db))
        await asyncio.to_thread(write_probe, client, key)
        seen: set[str] = set()
        deadline = asyncio.get_running_loop().time() + PROBE_TIMEOUT_S
        while not seen >= PROBE_EVENTS:
            left = deadline - asyncio.get_running_loop().time()
            if left <= 0:
                return False
            message = await notifications.get_message(timeout=left)
            if message is not None and message.key == key:
                seen.add(message.event_type)
        return True
    except redis.ResponseError:  # e.g. NOPERM: the user may not subscribe or write the probe
        return False
    finally:
        await notifications.aclose()  # type: ignore[no-untyped-call]


# ---------------------------------------------------------------- turning them on, subscribing

# Keyspace events ttsyncd needs: K (keyspace channel), h (hash commands), g (DEL, RENAME, ...),
# x (expiry). `A` stands for all classes but K and E, m and n.
NEEDED_FLAGS = "Khgx"


ALL_CLASSES = set("g$lshzxetd")


def merged_notify_flags(current: str, needed: str = NEEDED_FLAGS) -> str:
    """`notify-keyspace-events` with the flags ttsyncd needs added and none removed."""
    present = set(current) | (ALL_CLASSES if "A" in current else set())
    return current + "".join(flag for flag in needed if flag not in present)


def enable_notifications(client: RedisClient) -> bool:
    """Add the flags ttsyncd needs to notify-keyspace-events on every primary (a Cluster's
    nodes each have their own); False where CONFIG is refused (managed Redis,
    `rename-command CONFIG ""`, an ACL without it)."""
    try:
        for primary in primary_clients(client):
            events = primary.config_get("notify-keyspace-events")
            current = str(events.get("notify-keyspace-events", ""))
            wanted = merged_notify_flags(current)
            if wanted != current:
                primary.config_set("notify-keyspace-events", wanted)
    except redis.ResponseError:
        return False
    return True


class FollowingClusterNotifications(AsyncClusterKeyspaceNotifications):
    """redis-py's Cluster notifications, which resubscribe on their own after a node's
    connection fails (or its primary changes). Notifications sent meanwhile are lost, and a
    new primary has notify-keyspace-events still off: so a resubscription is reported, and
    the session starts over (notifications on, subscribed, full sync)."""

    refreshed = False

    async def refresh_subscriptions(self) -> None:
        self.refreshed = True
        await super().refresh_subscriptions()  # type: ignore[no-untyped-call]


Notifications = AsyncKeyspaceNotifications | FollowingClusterNotifications


async def subscribe(aclient: AsyncRedisClient, town: str, db: int) -> Notifications:
    """Subscribed to the town's task and agent keys (in the endpoint's db: a Cluster has only
    0), on every primary of a Cluster."""
    channels = (
        KeyspaceChannel(glob_escape(f"tt:{town}:task:") + "*", db),
        KeyspaceChannel(glob_escape(agent_key_prefix(town)) + "*", db),
    )
    # Subscribe first, load the mirror second (the caller): nothing falls between the two.
    if isinstance(aclient, redis.asyncio.cluster.RedisCluster):
        cluster = FollowingClusterNotifications(aclient)
        await cluster.subscribe(*channels)
        # subscribe() skips a node it cannot reach (to retry later): make sure none was.
        await cluster.refresh_subscriptions()
        cluster.refreshed = False
        return cluster
    single = AsyncKeyspaceNotifications(aclient)
    await single.subscribe(*channels)
    return single
