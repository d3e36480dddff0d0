"""The Redis session, the daemon's part `redis`: connect, turn keyspace notifications on,
subscribe, load the mirror, then listen (or poll where notifications are off), feeding what
changed to the schedule; after any loss, back off, reconnect and have the town synced in full,
so edits made during the outage arrive. A failover takes the same path (`TopologyChanged`).

The session holds the connection the syncer and the commands use (`client`, `mirror`, swapped
only under the sync lock) and what `status` says of it (`connected`, `notifications`,
`topology`). Of the daemon it knows only the settings, the sync lock, the schedule with the
event that wakes the syncer, and the standing it reports problems and connections to.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import redis
import redis.asyncio
import redis.asyncio.cluster
import redis.cluster
import structlog
from redis.backoff import EqualJitterBackoff

from ttsyncd.config import Settings
from ttsyncd.connection import connect
from ttsyncd.errors import RedisUnavailable
from ttsyncd.mirror import TownMirror
from ttsyncd.notifications import (
    FollowingClusterNotifications,
    Notifications,
    enable_notifications,
    notifications_arrive,
    subscribe,
)
from ttsyncd.schedule import Schedule
from ttsyncd.standing import Standing
from ttsyncd.topology import (
    UNREACHABLE,
    AsyncRedisClient,
    RedisClient,
    current_primaries,
    current_topology,
    open_async_client,
    topology_of,
)

logger = structlog.get_logger("ttsyncd.daemon")

# The wait before the n-th reconnect in a row (n from 0): between half and all of
# min(5, 0.1 * 2**n) seconds, at random, so daemons sharing a Redis do not retry in lockstep.
RECONNECT_BACKOFF = EqualJitterBackoff(cap=5.0, base=0.1)
HEALTH_CHECK_S = 1.0  # how often the session checks Redis is there and its primaries the same


class TopologyChanged(redis.ConnectionError):
    """The primary the session listens to is no longer the one (a Sentinel failover, a
    Cluster's primaries changing): reconnect, resubscribe and sync in full, as after a loss."""


class RedisSession:
    def __init__(
        self, settings: Callable[[], Settings], sync_lock: asyncio.Lock, schedule: Schedule,
        wake: asyncio.Event, standing: Standing,
    ) -> None:  # fmt: skip
        """`settings`: the daemon's current settings (a reload may change them); `wake`: set
        when the schedule has something new for the syncer."""
        self.settings = settings
        self.sync_lock = sync_lock
        self.schedule = schedule
        self.wake = wake
        self.standing = standing
        self.client: RedisClient | None = None
        self.mirror: TownMirror | None = None
        self.connected = False
        self.ever_connected = False  # STARTING until the first connection, RECONNECTING after
        self.notifications = "keyspace"
        self.topology = topology_of(settings().endpoint)

    async def run(self) -> None:
        """Stay connected: notifications on, subscribed, mirror loaded; after any loss, back
        off, reconnect and sync in full, so edits made during the outage arrive. A failover
        takes the same path: the new primary gets notifications turned on and a full sync.
        A failure none of that expects ends the session (the supervisor restarts it)."""
        try:
            await self.stay_connected()
        except Exception:
            self.connected = False
            self.standing.metrics.connection(connected=False)
            raise

    async def stay_connected(self) -> None:
        failures = 0  # reconnects in a row that failed, for the backoff
        while True:
            aclient: AsyncRedisClient | None = None
            try:
                client = await asyncio.to_thread(connect, self.settings())
                cluster = isinstance(client, redis.cluster.RedisCluster)
                aclient = open_async_client(self.settings().endpoint, cluster)
                if isinstance(aclient, redis.asyncio.cluster.RedisCluster):
                    await aclient.initialize()  # its slot map, before anyone asks for nodes
                await self.connect_and_listen(client, aclient)
            except TopologyChanged as change:
                logger.warning("Redis topology changed, reconnecting", change=str(change))
                self.connected = False
                failures = 0
            except (*UNREACHABLE, RedisUnavailable) as e:
                if self.connected:
                    logger.warning("lost Redis, reconnecting", error=type(e).__name__)
                    self.standing.events.publish("reconnecting", error=type(e).__name__)
                    failures = 0  # it was up: a blip, not a long outage
                self.connected = False
                self.standing.report_problem(
                    "redis", f"Redis unreachable at {self.settings().endpoint.redacted()}"
                )
            except redis.RedisError as error:  # e.g. a refused SUBSCRIBE: keep trying, say why
                self.connected = False
                self.standing.report_problem("redis", f"Redis session failed: {error}")
                logger.error("Redis session failed, retrying", error=str(error))
            finally:
                if aclient is not None:
                    await aclient.aclose()
            self.standing.metrics.connection(connected=False)
            await asyncio.sleep(RECONNECT_BACKOFF.compute(failures))
            failures += 1

    async def connect_and_listen(self, client: RedisClient, aclient: AsyncRedisClient) -> None:
        notifications = await self.attach(client, aclient)
        self.schedule.reconnected()
        self.wake.set()
        self.standing.metrics.connection(connected=True, again=self.ever_connected)
        self.connected = self.ever_connected = True
        self.standing.clear_problem("redis")
        logger.info("connected to Redis", notifications=self.notifications,
                    topology=self.topology.describe())  # fmt: skip
        self.standing.events.publish("connected", notifications=self.notifications,
                                     redis=self.settings().endpoint.redacted())  # fmt: skip
        if notifications is None:
            await self.poll(client, aclient)
        else:
            await self.listen(aclient, notifications)

    async def attach(self, client: RedisClient, aclient: AsyncRedisClient) -> Notifications | None:
        """Take the new connection: notifications on (or found on), the client and a mirror
        swapped in between syncs, subscribed; None: no notifications, it polls."""
        keyspace = await asyncio.to_thread(enable_notifications, client)
        topology = await asyncio.to_thread(current_topology, client)
        town, db = self.settings().town_name, self.settings().endpoint.db
        if not keyspace and isinstance(client, redis.Redis):
            # CONFIG refused: a managed service may have them on all the same. (Not probed on a
            # Cluster: one key's events come from one node only; it polls.)
            assert isinstance(aclient, redis.asyncio.Redis)
            keyspace = await notifications_arrive(aclient, client, town, db)
        async with self.sync_lock:
            if self.client is not None and self.client is not client:
                self.client.close()
            self.client = client
            self.mirror = TownMirror(client, town)
            self.topology = topology
        if keyspace:
            self.notifications = "keyspace"
            return await subscribe(aclient, town, db)
        if self.notifications != "polling":
            self.notifications = "polling"
            logger.warning(
                "Redis refused CONFIG and its keyspace notifications are off: polling for "
                "changes instead (docs/managed-redis.md says how to turn them on)",
                poll_interval_ms=self.settings().sync.poll_interval_ms,
            )
        return None

    async def listen(self, aclient: AsyncRedisClient, notifications: Notifications) -> None:
        next_check = time.monotonic() + HEALTH_CHECK_S
        while True:
            # get_message raises ConnectionError when the connection goes (a Cluster's
            # notifications resubscribe by themselves instead: see FollowingClusterNotifications).
            message = await notifications.get_message(timeout=1.0)
            if message is not None:
                key = message.key if isinstance(message.key, str) else message.key.decode()
                self.schedule.keys_changed({key})
                self.wake.set()
            if message is None or time.monotonic() >= next_check:
                await self.check_session(aclient, notifications)
                next_check = time.monotonic() + HEALTH_CHECK_S

    async def check_session(
        self, aclient: AsyncRedisClient, notifications: Notifications | None = None
    ) -> None:
        """Notice a silent loss within a second or so, and a primary that is no longer ours."""
        await aclient.ping()
        if isinstance(notifications, FollowingClusterNotifications) and notifications.refreshed:
            raise TopologyChanged("the cluster's notifications were resubscribed")
        now = await current_primaries(aclient)
        if now != self.topology.primaries:
            raise TopologyChanged(f"primaries were {self.topology.primaries}, now {now}")

    async def poll(self, client: RedisClient, aclient: AsyncRedisClient) -> None:
        while True:
            await asyncio.sleep(self.settings().sync.poll_interval_ms / 1000)
            await asyncio.to_thread(client.ping)  # raise here, in the session, when Redis goes
            await self.check_session(aclient)
            self.schedule.reread()
            self.wake.set()
