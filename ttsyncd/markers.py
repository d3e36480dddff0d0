"""Knowing that a Redis, or one primary of a Cluster, came back without its data: the epoch
markers. ttsyncd leaves a random token in the town's Redis (one per Cluster primary) and keeps
it in the base; a token missing or changed means the tasks under it were lost, not deleted by
anyone, so the engine repopulates them from the file instead of deleting them from it.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Final

import redis
import redis.cluster
from redis.crc import key_slot

from ttsyncd.topology import RedisClient


@dataclass(frozen=True)
class Marker:
    """An epoch marker of a Cluster primary as read: its token (None: missing), and the slots
    of the primary that holds it, whose keys go when the primary comes back without its data."""

    token: str | None
    slots: frozenset[int]


def epoch_key(town: str) -> str:
    """A marker ttsyncd leaves in the town's Redis: a random token, kept in the base too. A
    Redis whose token is missing or another one is not the Redis the base agreed with (it
    restarted empty, or it is a new one), even when an agent has written a task to it since."""
    return f"tt:{town}:ttsyncd:epoch"


def ensure_epoch(client: RedisClient, town: str) -> str:
    """The marker's token, set first if missing (NX: every daemon of the town agrees on it)."""
    client.set(epoch_key(town), uuid.uuid4().hex, nx=True)
    return str(client.get(epoch_key(town)))


# How far cluster_markers looks for a marker key that hashes into a primary's slots: ~1.3 tries
# a primary on average; a town whose name holds a hash tag ({...}) puts all its keys, markers
# included, in one slot, and then the other primaries hold none of the town's keys anyway.
MARKER_CANDIDATES: Final = 4096


def marker_key(town: str, n: int) -> str:
    return f"{epoch_key(town)}:{n}"


def cluster_markers(client: redis.cluster.RedisCluster, town: str) -> dict[str, frozenset[int]]:
    """One epoch marker key in the slots of each primary of a Cluster, as the client's slot map
    has it now, with that primary's slots: epoch_key for the primary that holds its slot, else
    the first `tt:<town>:ttsyncd:epoch:<n>` that hashes into its slots.

    A primary that restarts without its data (no replica, no persistence) loses its marker with
    its keys, while the others keep theirs: its slots are then known to have been emptied, and
    only the tasks in them are repopulated from the file (the engine), instead of reading as
    deleted in Redis. A marker moves with its slot (resharding), and a promoted replica holds
    its primary's."""
    slots_of: dict[str, set[int]] = {}
    for slot, nodes in client.nodes_manager.slots_cache.items():
        if nodes:
            slots_of.setdefault(nodes[0].name, set()).add(slot)
    candidates = [epoch_key(town), *(marker_key(town, n) for n in range(MARKER_CANDIDATES))]
    markers: dict[str, frozenset[int]] = {}
    for _name, slots in sorted(slots_of.items()):
        key = next((k for k in candidates if key_slot(k.encode()) in slots), None)
        if key is not None:
            markers[key] = frozenset(slots)
    return markers


def read_markers(client: RedisClient, town: str) -> dict[str, Marker]:
    """A Cluster's markers with their tokens ({} on one server: epoch_key is its marker)."""
    if not isinstance(client, redis.cluster.RedisCluster):
        return {}
    slots = cluster_markers(client, town)
    pipe = client.pipeline(transaction=False)  # type: ignore[no-untyped-call]
    for key in slots:
        pipe.get(key)  # GETs, not MGET: the ACL user has +get
    tokens = pipe.execute()
    return {
        key: Marker(None if token is None else str(token), slots[key])
        for key, token in zip(slots, tokens, strict=True)
    }


def ensure_markers(client: RedisClient, town: str, markers: dict[str, Marker]) -> dict[str, str]:
    """Each Cluster marker's token (epoch_key's left out: ensure_epoch keeps it), a fresh one
    set first where it is missing (NX: every daemon of the town agrees on it). Done before the
    sync writes anything and saved in the base after: a crash or another restart in between
    leaves the base's token and the marker differing, so the slots are repopulated again."""
    tokens: dict[str, str] = {}
    for key, marker in markers.items():
        if key == epoch_key(town):
            continue
        if marker.token is None:
            client.set(key, uuid.uuid4().hex, nx=True)
            tokens[key] = str(client.get(key))
        else:
            tokens[key] = marker.token
    return tokens
