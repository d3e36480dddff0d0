"""The daemon's in-memory mirror of a town's Redis side.

Loaded once in full, then kept current key by key: a notification about one key fetches that
key, not the whole town, and the daemon's own writes update it directly. A sync reads the
mirror instead of Redis; the guarded writes catch anything the mirror missed.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from ttsyncd.codec import RedisTask, agent_key_prefix, decode_task, is_uuid
from ttsyncd.identity import IdentityIndex
from ttsyncd.markers import Marker, ensure_epoch, ensure_markers, epoch_key, read_markers
from ttsyncd.store import (
    Snapshot,
    TaskWrite,
    agent_name,
    chunks,
    glob_escape,
    hash_after,
    hgetall_many,
    read_hashes,
    read_snapshot,
    scan_keys,
    task_from_reply,
)
from ttsyncd.topology import RedisClient


class TownMirror:
    def __init__(self, client: RedisClient, town: str) -> None:
        self.client = client
        self.town = town
        self.task_prefix = f"tt:{town}:task:"
        self.agent_prefix = agent_key_prefix(town)
        self.index = IdentityIndex()  # the tasks by key, identified
        self.unreadable: dict[str, str] = {}
        self.agent_names: dict[str, str] = {}  # agent uuid -> name
        self.epoch: str | None = None
        self.markers: dict[str, Marker] = {}  # a Cluster's, one per primary
        self.all_changed = True  # loaded anew, or an agent renamed: any task may read differently
        self.unflushed: list[list[TaskWrite]] = []  # writes applied, not taken in yet (`wrote`)

    def reload(self) -> bool:
        """Read the whole town (at start, after a reconnect, when polling); True if it changed.
        A reload that finds nothing new keeps the index, and so the daemon's small scope."""
        self.flush()
        snapshot = read_snapshot(self.client, self.town)
        tasks = {task.key: task for task in snapshot.tasks}
        now = (tasks, snapshot.unreadable, snapshot.agent_names, snapshot.epoch, snapshot.markers)
        if now == (self.tasks, self.unreadable, self.agent_names, self.epoch, self.markers):
            return False
        self.index = IdentityIndex(snapshot.tasks)
        self.unreadable = dict(snapshot.unreadable)
        self.agent_names = dict(snapshot.agent_names)
        self.epoch = snapshot.epoch
        self.markers = snapshot.markers
        self.all_changed = True
        return True

    def verify(self) -> bool:
        """Compare the town in Redis with the mirror, hash by hash as read (decoding only what
        differs), and take in what does; True if anything did. The daemon's anti-entropy pass:
        a third of the cost of `reload` at 10,000 tasks, and a scope of only what differed."""
        self.flush()
        snapshot_keys, _ = scan_keys(self.client, glob_escape(self.task_prefix) + "*")
        task_keys = [k for k in snapshot_keys if is_uuid(k[len(self.task_prefix) :])]
        agent_keys, _ = scan_keys(self.client, glob_escape(self.agent_prefix) + "*")
        epoch = self.client.get(epoch_key(self.town))
        epoch_now = str(epoch) if epoch is not None else None
        if epoch_now != self.epoch or read_markers(self.client, self.town) != self.markers:
            # Another Redis, one that lost the town, or a Cluster primary that lost its share
            # (or a slot map that changed): read it anew.
            return self.reload()
        replies = hgetall_many(self.client, [*task_keys, *agent_keys])
        differ = {
            key
            for key, reply in zip(task_keys, replies[: len(task_keys)], strict=True)
            if key in self.unreadable or (task := self.tasks.get(key)) is None or task.raw != reply
        }
        differ |= (self.tasks.keys() | self.unreadable.keys()) - set(task_keys)  # gone
        present: set[str] = set()
        for key, reply in zip(agent_keys, replies[len(task_keys) :], strict=True):
            agent_uuid = key[len(self.agent_prefix) :]
            present.add(agent_uuid)
            if agent_name(agent_uuid, reply) != self.agent_names.get(agent_uuid):
                differ.add(key)
        differ |= {self.agent_prefix + gone for gone in self.agent_names.keys() - present}
        return bool(differ) and self.refresh(differ)

    def take_changes(self) -> frozenset[str] | None:
        """The plan ids whose task changed since the last call; None when any may have."""
        changed = self.index.take_changed()
        if self.all_changed:
            self.all_changed = False
            return None
        return frozenset(changed)

    @property
    def tasks(self) -> dict[str, RedisTask]:
        self.flush()
        return self.index.tasks

    def refresh(self, keys: Iterable[str]) -> bool:
        """Fetch these keys; True when a task or an agent's name really changed (an agent's
        heartbeat, or the echo of the daemon's own write, changes nothing)."""
        self.flush()
        task_keys = sorted(k for k in set(keys) if k.startswith(self.task_prefix))
        agent_keys = sorted(k for k in set(keys) if k.startswith(self.agent_prefix))
        if not task_keys and not agent_keys:
            return False
        changed = self.refresh_tasks(task_keys)
        fresh = read_hashes(self.client, (), agent_keys)
        for key in agent_keys:
            agent_uuid = key[len(self.agent_prefix) :]
            name = fresh.agent_names.get(agent_uuid)
            renamed = self.agent_names.get(agent_uuid) != name
            changed |= renamed
            self.all_changed |= renamed
            if name is None:
                self.agent_names.pop(agent_uuid, None)
            else:
                self.agent_names[agent_uuid] = name
        return changed

    def refresh_tasks(self, task_keys: Sequence[str]) -> bool:
        """refresh() of these task keys, a pipelined chunk at a time; a hash that reads as
        the mirror holds it (the echo of the daemon's own write) is not even decoded: an
        echo of a first push is the whole town."""
        put: list[RedisTask] = []
        gone: list[str] = []
        for batch in chunks(task_keys):
            for key, reply in zip(batch, hgetall_many(self.client, batch), strict=True):
                known = self.index.tasks.get(key)
                if known is not None and isinstance(reply, dict):
                    if key not in self.unreadable and known.raw == reply:
                        continue
                    key, reply = known.key, with_values_of(known, reply)
                after = task_from_reply(key, reply)
                if (known, self.unreadable.get(key)) == after:
                    continue
                self.unreadable.pop(key, None)
                if after[1] is not None:
                    self.unreadable[key] = after[1]
                if after[0] is not None:
                    put.append(after[0])
                else:
                    gone.append(key)
        self.index.update(put, gone)
        return bool(put or gone)

    # RedisSource, for the engine:

    def snapshot(self) -> Snapshot:
        self.flush()
        return Snapshot(
            list(self.tasks.values()),
            dict(self.unreadable),
            dict(self.agent_names),
            self.epoch,
            self.index.identified,
            dict(self.markers),
        )

    def ensure_epoch(self) -> str:
        self.epoch = ensure_epoch(self.client, self.town)
        return self.epoch

    def ensure_markers(self, markers: dict[str, Marker]) -> dict[str, str]:
        tokens = ensure_markers(self.client, self.town, markers)
        self.markers = {
            key: Marker(tokens.get(key, self.epoch), marker.slots)
            for key, marker in markers.items()
        }
        return tokens

    def changed_under_us(self, keys: Iterable[str]) -> None:
        self.refresh(keys)

    def wrote(self, writes: Iterable[TaskWrite]) -> None:
        """Taken in on the mirror's next use (`flush`), not now: the sync that wrote them still
        holds its own objects (a whole town's, after a first push), and the mirror's tasks
        built among them would keep more of the heap they leave behind (at 10,000 tasks ~3 MB
        more at the peak, and ~0.07 KB per task of RSS after). Built after, they fill it."""
        self.unflushed.append(list(writes))

    def flush(self) -> None:
        """Take in the writes applied since the last use, in order."""
        while self.unflushed:
            writes = self.unflushed.pop(0)
            put: list[RedisTask] = []
            gone: list[str] = []
            for write in writes:
                after = hash_after(write)
                if after is None:
                    gone.append(write.key)
                else:
                    put.append(decode_task(write.key, after))
            # The base already holds what these writes say: nothing for the next sync to merge.
            self.index.update(put, gone, note=False)


def with_values_of(task: RedisTask, reply: dict[str, str]) -> dict[str, str]:
    """`reply` with each value the task already holds taken from the task: the same strings,
    not copies (an agent's update changes a field or two; the description, the tags and the
    times it leaves as they were, and the first push shared them with the plan's entry)."""
    before = task.raw
    return {name: before[name] if before.get(name) == value else value
            for name, value in reply.items()}  # fmt: skip
