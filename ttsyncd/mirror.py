"""The daemon's in-memory mirror of a town's Redis side.

Loaded once in full, then kept current key by key: a notification about one key fetches that
key, not the whole town, and the daemon's own writes update it directly. A sync reads the
mirror instead of Redis; the guarded writes catch anything the mirror missed.
"""

from __future__ import annotations

from collections.abc import Iterable

from ttsyncd.codec import RedisTask, agent_key_prefix, decode_task
from ttsyncd.store import (
    Snapshot,
    TaskWrite,
    ensure_epoch,
    hash_after,
    read_hashes,
    read_snapshot,
)
from ttsyncd.topology import RedisClient


class TownMirror:
    def __init__(self, client: RedisClient, town: str) -> None:
        self.client = client
        self.town = town
        self.task_prefix = f"tt:{town}:task:"
        self.agent_prefix = agent_key_prefix(town)
        self.tasks: dict[str, RedisTask] = {}
        self.unreadable: dict[str, str] = {}
        self.agent_names: dict[str, str] = {}  # agent uuid -> name
        self.epoch: str | None = None

    def reload(self) -> bool:
        """Read the whole town (at start, after a reconnect, when polling); True if it changed."""
        snapshot = read_snapshot(self.client, self.town)
        before = (self.tasks, self.unreadable, self.agent_names, self.epoch)
        self.tasks = {task.key: task for task in snapshot.tasks}
        self.unreadable = dict(snapshot.unreadable)
        self.agent_names = dict(snapshot.agent_names)
        self.epoch = snapshot.epoch
        return before != (self.tasks, self.unreadable, self.agent_names, self.epoch)

    def refresh(self, keys: Iterable[str]) -> bool:
        """Fetch these keys; True when a task or an agent's name really changed (an agent's
        heartbeat, or the echo of the daemon's own write, changes nothing)."""
        task_keys = sorted(k for k in set(keys) if k.startswith(self.task_prefix))
        agent_keys = sorted(k for k in set(keys) if k.startswith(self.agent_prefix))
        if not task_keys and not agent_keys:
            return False
        fresh = read_hashes(self.client, task_keys, agent_keys)
        found = {task.key: task for task in fresh.tasks}
        changed = False
        for key in task_keys:
            before = (self.tasks.get(key), self.unreadable.get(key))
            self.tasks.pop(key, None)
            self.unreadable.pop(key, None)
            if key in found:
                self.tasks[key] = found[key]
            elif key in fresh.unreadable:
                self.unreadable[key] = fresh.unreadable[key]
            changed |= before != (self.tasks.get(key), self.unreadable.get(key))
        for key in agent_keys:
            agent_uuid = key[len(self.agent_prefix) :]
            name = fresh.agent_names.get(agent_uuid)
            changed |= self.agent_names.get(agent_uuid) != name
            if name is None:
                self.agent_names.pop(agent_uuid, None)
            else:
                self.agent_names[agent_uuid] = name
        return changed

    # RedisSource, for the engine:

    def snapshot(self) -> Snapshot:
        return Snapshot(
            list(self.tasks.values()), dict(self.unreadable), dict(self.agent_names), self.epoch
        )

    def ensure_epoch(self) -> str:
        self.epoch = ensure_epoch(self.client, self.town)
        return self.epoch

    def changed_under_us(self, keys: Iterable[str]) -> None:
        self.refresh(keys)

    def wrote(self, writes: Iterable[TaskWrite]) -> None:
        for write in writes:
            after = hash_after(write)
            if after is None:
                self.tasks.pop(write.key, None)
            else:
                self.tasks[write.key] = decode_task(write.key, after)
