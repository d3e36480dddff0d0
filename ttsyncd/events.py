"""The daemon's event bus: what `ttsyncd monitor` streams (a sync, each task and field it
changed, conflicts, errors, reconnects, pause and resume).

Publishing never waits: each subscriber has a bounded queue, and one that falls behind (a
monitor stopped with Ctrl-Z, a slow pipe) misses the events that find its queue full, counted:
in their place it is told `{"event": "dropped", "count": N}`. The daemon is
never slowed by who watches it. Everything runs on the daemon's event loop (publish from the
loop's thread only)."""

from __future__ import annotations

import asyncio
import itertools
from collections import deque
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

Event = dict[str, Any]
QUEUE_SIZE = 1000  # events a subscriber may fall behind by before it loses some


class Subscription:
    """One subscriber's queue."""

    def __init__(self, size: int) -> None:
        self.queue: deque[Event] = deque()
        self.size = size
        self.ready = asyncio.Event()
        self.closed = False
        self.over = asyncio.Event()  # its stream has sent what it had, and ended

    def put(self, event: Event) -> None:
        queue = self.queue
        if len(queue) < self.size:
            queue.append(event)
        elif queue and queue[-1]["event"] == "dropped":
            queue[-1]["count"] += 1
        else:  # (one entry past the size: the count, where the lost events would be)
            queue.append({"event": "dropped", "count": 1, "time": now()})
        self.ready.set()

    async def events(self) -> AsyncIterator[Event]:
        """Each event in turn (a `dropped` count where some were lost), until the bus
        closes."""
        while True:
            if self.queue:
                yield self.queue.popleft()
            elif self.closed:
                return
            else:
                self.ready.clear()
                await self.ready.wait()


class EventBus:
    def __init__(self, queue_size: int = QUEUE_SIZE) -> None:
        self.queue_size = queue_size
        self.subscribers: set[Subscription] = set()
        self.sequence = itertools.count(1)
        self.closed = False

    def publish(self, name: str, /, **fields: Any) -> None:
        """Hand `{"event": name, "seq": n, "time": ..., **fields}` to every subscriber; does
        nothing (and costs next to nothing) when nobody watches."""
        if not self.subscribers:
            return
        event = {"event": name, "seq": next(self.sequence), "time": now(), **fields}
        for subscriber in self.subscribers:
            subscriber.put(event)

    def subscribe(self) -> Subscription:
        subscription = Subscription(self.queue_size)
        if self.closed:
            subscription.closed = True
        else:
            self.subscribers.add(subscription)
        return subscription

    def unsubscribe(self, subscription: Subscription) -> None:
        """The subscriber is gone, or has had every event (`Subscription.events` ended)."""
        self.subscribers.discard(subscription)
        subscription.over.set()

    async def close(self, timeout: float = 0.5, **fields: Any) -> None:
        """The daemon stops: a last `stopping` event, then every subscription ends; waits (at
        most `timeout`) for their streams to send what they hold."""
        self.publish("stopping", **fields)
        self.closed = True
        ending = list(self.subscribers)
        for subscriber in ending:
            subscriber.closed = True
            subscriber.ready.set()
        if ending:
            waits = [asyncio.ensure_future(s.over.wait()) for s in ending]
            await asyncio.wait(waits, timeout=timeout)
            for wait in waits:
                wait.cancel()
        self.subscribers.clear()


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")
