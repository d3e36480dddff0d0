"""Are keyspace notifications on, where ttsyncd may not ask with CONFIG?

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
from redis.asyncio.keyspace_notifications import AsyncKeyspaceNotifications
from redis.keyspace_notifications import KeyspaceChannel

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
