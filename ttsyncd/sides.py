"""The two sides a sync reads and writes, with the same shape: `read`, `apply`, and what the
side remembers of its own writes (so that their echoes start no sync). The engine reaches a
side only through these; a daemon's caches (its `PlanReader`, its `TownMirror`) sit behind
them, and a one-shot command's side reads afresh every time.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ttsyncd.plan import Plan, PlanReader, write_atomic
from ttsyncd.replication import confirm_replicated
from ttsyncd.store import (
    LiveRead,
    RedisSource,
    Snapshot,
    TaskWrite,
    apply_writes,
)
from ttsyncd.topology import RedisClient


class FileSide:
    """The plan file, through a `PlanReader` (which keeps the last plan read or written)."""

    def __init__(self, reader: PlanReader) -> None:
        self.reader = reader

    @property
    def path(self) -> Path:
        return self.reader.path

    def read(self) -> Plan:
        return self.reader.read()

    def apply(self, plan: Plan, over: Plan) -> bool:
        """Write `plan` in place of `over` (atomically); False when the file no longer holds
        `over`'s text (changed since it was read: the caller merges again)."""
        data = plan.text.encode("utf-8")
        expected = self.reader.raw_of(over)
        # Known as ours before it lands: a save of the old text right after our write (a
        # stale buffer, an undo) must not pass for the echo of what the reader last knew.
        before = self.reader.wrote(plan, data)
        try:
            written = write_atomic(self.reader.path, data, expected)
        except BaseException:
            self.reader.unwrote(before)
            raise
        if not written:
            self.reader.unwrote(before)
        return written

    def knows(self, text: str) -> bool:
        """Whether `text` is what this side last read or wrote (a save of it is an echo)."""
        return self.reader.is_known(text)

    def differs(self) -> bool:
        """Whether the file no longer holds what this side last read or wrote (else: an echo,
        or no change), without reading a big plan into memory. PlanError: not UTF-8."""
        return self.reader.differs()


class RedisSide:
    """The town in Redis: read through a `RedisSource` (the daemon's mirror, or a live read),
    written through guarded writes on `client`, which the source is told about."""

    def __init__(self, client: RedisClient, town: str, source: RedisSource | None = None):
        self.client, self.town = client, town
        self.source = source or LiveRead(client, town)

    def read(self) -> Snapshot:
        return self.source.snapshot()

    def apply(self, writes: Sequence[TaskWrite]) -> list[TaskWrite]:
        """Apply every write whose hash still holds what was read; return the ones that
        changed meanwhile (the caller merges again: the source reads them anew)."""
        changed = apply_writes(self.client, self.town, writes)
        self.source.wrote(w for w in writes if w not in changed)
        if changed:
            self.source.changed_under_us(w.key for w in changed)
        return changed

    def epoch(self, snapshot: Snapshot) -> str:
        """The Redis's ttsyncd marker, as read, or set now if it had none."""
        return snapshot.epoch or self.source.ensure_epoch()

    def markers(self, snapshot: Snapshot) -> dict[str, str]:
        """On a Cluster, the marker of each primary (as read, or set now where missing): key ->
        token. {} on one server, where the epoch is the one marker."""
        return self.source.ensure_markers(snapshot.markers) if snapshot.markers else {}

    def confirm(self, epoch: str, markers: dict[str, str]) -> None:
        """Behind Sentinel or on a Cluster: what was read and written is where a failover
        keeps it (`replication.confirm_replicated`)."""
        confirm_replicated(self.client, self.town, epoch, markers)


@dataclass(frozen=True)
class Sides:
    file: FileSide
    redis: RedisSide
