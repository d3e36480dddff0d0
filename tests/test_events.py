"""The daemon's event bus (ttsyncd/events.py): publishing never waits, a subscriber that falls
behind is told how many events it missed, and where; closing ends every subscription."""

from __future__ import annotations

import asyncio
from typing import Any

from ttsyncd.events import EventBus


async def taken(bus: EventBus, publish: int) -> list[dict[str, Any]]:
    subscription = bus.subscribe()
    for n in range(publish):
        bus.publish("sync", n=n)  # nobody reads meanwhile: nothing here waits
    got: list[dict[str, Any]] = []
    closing = asyncio.ensure_future(bus.close())
    await asyncio.sleep(0)  # it has published `stopping`, and waits for the stream to end
    async for event in subscription.events():
        got.append(event)
    bus.unsubscribe(subscription)  # as the control socket does once the stream is sent
    await closing
    return got


def test_a_slow_subscriber_misses_events_counted_in_their_place() -> None:
    got = asyncio.run(taken(EventBus(queue_size=5), publish=12))
    assert [e.get("n") for e in got[:5]] == [0, 1, 2, 3, 4]
    assert got[5]["event"] == "dropped" and got[5]["count"] == 12 - 5 + 1  # and `stopping`
    assert len(got) == 6


def test_every_event_reaches_a_subscriber_that_keeps_up_then_the_stream_ends() -> None:
    got = asyncio.run(taken(EventBus(queue_size=100), publish=10))
    assert [e.get("n") for e in got[:10]] == list(range(10))
    assert got[-1]["event"] == "stopping"
    assert [e["seq"] for e in got] == sorted(e["seq"] for e in got)


def test_publishing_with_nobody_subscribed_does_nothing() -> None:
    bus = EventBus()
    bus.publish("sync", n=1)
    assert not bus.subscribers
