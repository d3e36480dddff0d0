"""The Redis side: read a town's tasks and agents in a few pipelined round trips, and write tasks
guarded on what was read.

Each task write is one Lua script rather than WATCH/MULTI/EXEC: it is just as atomic (nobody sees
the HDEL without the HSET), it carries the guard ("the hash still holds what the merge read") in
the same round trip, and many of them pipeline into one round trip, where WATCH needs a round
trip per key. It touches one key, so it also works on Redis Cluster, where redis-py's cluster
pipeline sends each node its own keys' scripts.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Protocol

import redis
import redis.cluster
import redis.sentinel
import structlog
from redis.client import NEVER_DECODE

from ttsyncd.codec import (
    BadHash,
    HashWrite,
    RedisTask,
    agent_key_prefix,
    backlog_key,
    decode_task,
    is_uuid,
)
from ttsyncd.identity import Identified, identify
from ttsyncd.markers import Marker, ensure_epoch, ensure_markers, epoch_key, read_markers
from ttsyncd.topology import RedisClient

log = structlog.get_logger("ttsyncd.store")

SCAN_COUNT: Final = 1000
PIPELINE_CHUNK: Final = 2000

# KEYS[1]: the task hash. ARGV: expected field count n, n field/value pairs (the hash as read;
# n = 0 means "absent"), then "del" or "set"; for "set": HDEL field count, the fields, then the
# HSET field/value pairs. Returns 1 when written, 0 when the hash changed since it was read.
GUARDED_WRITE: Final = """
local n = tonumber(ARGV[1])
local kind = redis.call('TYPE', KEYS[1])['ok']
if kind ~= 'hash' and kind ~= 'none' then return 0 end
local current = redis.call('HGETALL', KEYS[1])
if #current ~= 2 * n then return 0 end
local expected = {}
for i = 0, n - 1 do expected[ARGV[2 + 2 * i]] = ARGV[3 + 2 * i] end
for i = 1, #current, 2 do
  if expected[current[i]] ~= current[i + 1] then return 0 end
end
local p = 2 + 2 * n
if ARGV[p] == 'del' then
  redis.call('DEL', KEYS[1])
  return 1
end
local ndel = tonumber(ARGV[p + 1])
if ndel > 0 then redis.call('HDEL', KEYS[1], unpack(ARGV, p + 2, p + 1 + ndel)) end
redis.call('HSET', KEYS[1], unpack(ARGV, p + 2 + ndel))
return 1
"""
GUARDED_WRITE_SHA: Final = hashlib.sha1(GUARDED_WRITE.encode()).hexdigest()


@dataclass
class Snapshot:
    """A town's tasks and agents as read from Redis."""

    tasks: list[RedisTask] = field(default_factory=list)
    unreadable: dict[str, str] = field(default_factory=dict)  # key -> why it was skipped
    agent_names: dict[str, str] = field(default_factory=dict)  # agent uuid -> name
    epoch: str | None = None  # this Redis's ttsyncd marker (see epoch_key); None: not set
    # The tasks identified, where the source keeps that current (the daemon's mirror).
    identified: Identified | None = field(default=None, compare=False, repr=False)
    # A Cluster's marker on each primary (see cluster_markers), epoch_key's among them.
    markers: dict[str, Marker] = field(default_factory=dict)

    def identify(self) -> Identified:
        return self.identified if self.identified is not None else identify(self.tasks)


@dataclass(frozen=True, slots=True)  # one per task a sync writes
class TaskWrite:
    key: str
    expected: dict[str, str]  # the hash as the merge read it; {} when it did not exist
    write: HashWrite | None  # None: delete the key
    task_uuid: str
    backlog_add: bool = False  # a new claimable task: RPUSH it once created (creates only)
    backlog_remove: bool = False  # LREM it before the task goes


def scan_keys(client: RedisClient, pattern: str) -> tuple[list[str], list[str]]:
    """(the keys matching `pattern`, and those whose name is not UTF-8, shown escaped).

    Read as bytes (NEVER_DECODE) and decoded here: one undecodable key name must not stop
    a sync of the whole town. On a Cluster, redis-py's scan_iter scans every primary."""
    keys: list[str] = []
    undecodable: list[str] = []

    def take(batch: Iterable[bytes]) -> None:
        for raw in batch:
            try:
                keys.append(raw.decode("utf-8"))
            except UnicodeDecodeError:
                undecodable.append(raw.decode("utf-8", "backslashreplace"))

    if isinstance(client, redis.cluster.RedisCluster):
        take(client.scan_iter(match=pattern, count=SCAN_COUNT, **{NEVER_DECODE: []}))  # type: ignore[arg-type]
        return keys, undecodable
    cursor: int | bytes = 0
    while True:
        cursor, batch = client.execute_command(  # type: ignore[no-untyped-call]
            "SCAN", cursor, "MATCH", pattern, "COUNT", SCAN_COUNT, **{NEVER_DECODE: []}
        )
        take(batch)
        if int(cursor) == 0:
            return keys, undecodable


def glob_escape(text: str) -> str:
    """`text` matched literally in a SCAN pattern (a town may be called `team[1]`)."""
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)


def chunks(items: Sequence[str], size: int = PIPELINE_CHUNK) -> Iterator[Sequence[str]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def hgetall_many(client: RedisClient, keys: Sequence[str]) -> list[dict[str, str] | str]:
    """HGETALL of every key, pipelined: each hash decoded, or why it cannot be read (a wrong
    type, bytes that are not UTF-8)."""
    replies: list[dict[str, str] | str] = []
    shared = SharedStrings()
    for batch in chunks(keys):
        pipe = client.pipeline(transaction=False)
        for key in batch:
            pipe.execute_command("HGETALL", key, **{NEVER_DECODE: []})
        replies.extend(decoded_hash(reply, shared) for reply in pipe.execute(raise_on_error=False))
    return replies


class SharedStrings:
    """One str for each short text decoded again and again: a daemon's mirror of 10,000 tasks
    holds ~0.5 KB per task less. Field names are shared for the life of the process
    (FIELD_NAMES); short values the hashes of one read repeat (states, the timestamps of one
    bulk write, agent uuids) for that read. Bounded either way. (A dict lookup is also faster
    than decoding: the read gets quicker, not slower.)"""

    SHORT = 40  # bytes: a uuid (36) or an RFC 3339 timestamp, not a description

    def __init__(self, limit: int = 50_000) -> None:
        self.strings: dict[bytes, str] = {}
        self.limit = limit  # distinct strings kept

    def add(self, raw: bytes) -> str:
        """`raw` decoded (UnicodeDecodeError: the caller words it), kept if short."""
        text = raw.decode("utf-8")
        if len(raw) <= self.SHORT and len(self.strings) < self.limit:
            self.strings[raw] = text
        return text


FIELD_NAMES = SharedStrings(limit=1_000)


def decoded_hash(reply: Any, shared: SharedStrings | None = None) -> dict[str, str] | str:
    if isinstance(reply, Exception):
        return f"cannot be read as a hash ({reply})"
    names, values = FIELD_NAMES, shared or SharedStrings()
    known_name, known_value = names.strings.get, values.strings.get  # (the hot loop of a read)
    decoded: dict[str, str] = {}
    raw_name = b""
    try:
        for raw_name, raw_value in reply.items():
            name = known_name(raw_name) or names.add(raw_name)
            value = known_value(raw_value)
            decoded[name] = value if value is not None else values.add(raw_value)
    except UnicodeDecodeError:
        shown = raw_name.decode("utf-8", "backslashreplace")
        return f"field {shown!r} is not UTF-8 text"
    return decoded


def read_snapshot(client: RedisClient, town: str) -> Snapshot:
    """Every task hash of the town and every agent's name: SCAN, then pipelined HGETALLs."""
    task_prefix = f"tt:{town}:task:"
    found, undecodable = scan_keys(client, glob_escape(task_prefix) + "*")
    task_keys = [key for key in found if is_uuid(key[len(task_prefix) :])]
    agent_keys, _ = scan_keys(client, glob_escape(agent_key_prefix(town)) + "*")
    snapshot = read_hashes(client, task_keys, agent_keys)
    epoch = client.get(epoch_key(town))
    snapshot.epoch = str(epoch) if epoch is not None else None
    snapshot.markers = read_markers(client, town)
    for key in undecodable:
        snapshot.unreadable[key] = "the key name is not UTF-8 text"
    return snapshot


def read_hashes(
    client: RedisClient, task_keys: Sequence[str], agent_keys: Sequence[str]
) -> Snapshot:
    """These task and agent hashes, in pipelined round trips; a missing key is left out."""
    snapshot = Snapshot()
    replies = hgetall_many(client, [*task_keys, *agent_keys])
    for key, reply in zip(task_keys, replies[: len(task_keys)], strict=True):
        task, why = task_from_reply(key, reply)
        if task is not None:
            snapshot.tasks.append(task)
        elif why is not None:
            snapshot.unreadable[key] = why
    for key, reply in zip(agent_keys, replies[len(task_keys) :], strict=True):
        agent_uuid = key.rsplit(":", 1)[-1]
        name = agent_name(agent_uuid, reply)
        if name is not None:
            snapshot.agent_names[agent_uuid] = name
    return snapshot


def task_from_reply(key: str, reply: dict[str, str] | str) -> tuple[RedisTask | None, str | None]:
    """A task hash as hgetall_many gave it: (the task, None); (None, why it cannot be read);
    (None, None) when the key does not exist."""
    if isinstance(reply, str):
        return None, reply
    if not reply:
        return None, None
    try:
        return decode_task(key, reply), None
    except BadHash as error:
        return None, str(error)


def agent_name(agent_uuid: str, reply: dict[str, str] | str) -> str | None:
    """The name an agent hash gives; None unless it is well formed: only such an agent may
    lend its uuid to `assigned_to`."""
    if not (isinstance(reply, dict) and is_uuid(agent_uuid)) or reply.get("id") != agent_uuid:
        return None
    return reply.get("name") or None


def guarded_write_args(write: TaskWrite) -> list[str]:
    args = [str(len(write.expected))]
    for name, value in write.expected.items():
        args += [name, value]
    if write.write is None:
        return [*args, "del"]
    args += ["set", str(len(write.write.delete_fields)), *write.write.delete_fields]
    for name, value in write.write.set_fields.items():
        args += [name, value]
    return args


def apply_writes(client: RedisClient, town: str, writes: Sequence[TaskWrite]) -> list[TaskWrite]:
    """Apply every write whose hash still holds what was read; return the ones that changed.

    Backlog order keeps a claimable id from ever naming a missing task: LREM before a delete,
    RPUSH after a create.
    """
    if not writes:
        return []
    if isinstance(client, redis.cluster.RedisCluster):
        return apply_writes_to_cluster(client, town, writes)
    script = client.register_script(GUARDED_WRITE)
    backlog = backlog_key(town)
    # The LREMs go first: in the first round trip, where Redis runs them before the scripts'
    # DELs. A big write (a first push) goes PIPELINE_CHUNK scripts per round trip, each after
    # the last: the packed commands of a whole town at once would swell the heap for good.
    leaving = [w for w in writes if w.backlog_remove]
    replies: list[Any] = []
    for start in range(0, len(writes), PIPELINE_CHUNK):
        pipe = client.pipeline(transaction=False)
        for write in leaving if start == 0 else ():
            pipe.lrem(backlog, 0, write.task_uuid)
        for write in writes[start : start + PIPELINE_CHUNK]:
            script(keys=[write.key], args=guarded_write_args(write), client=pipe)
        replies += pipe.execute()
    removed_from_backlog = {w.task_uuid for w, n in zip(leaving, replies, strict=False) if n}
    changed, claimable = outcome(writes, replies[len(leaving) :], removed_from_backlog)
    follow_up = client.pipeline(transaction=False)
    for batch in chunks(claimable):
        follow_up.rpush(backlog, *batch)
    if len(follow_up):
        follow_up.execute()
    return changed


def outcome(
    writes: Sequence[TaskWrite], written: Sequence[Any], removed_from_backlog: set[str]
) -> tuple[list[TaskWrite], list[str]]:
    """(the writes whose hash had changed, the task uuids to RPUSH onto the backlog)."""
    changed = [w for w, ok in zip(writes, written, strict=True) if not ok]
    # The guard let only the one writer that created the task through, so a plain RPUSH
    # cannot double it (an LREM per task first would scan the list: quadratic on a cold push).
    created = [w for w, ok in zip(writes, written, strict=True) if ok and not w.expected]
    claimable = [w.task_uuid for w in created if w.backlog_add]
    claimable += [w.task_uuid for w in changed if w.task_uuid in removed_from_backlog]
    return changed, claimable


def apply_writes_to_cluster(
    client: redis.cluster.RedisCluster, town: str, writes: Sequence[TaskWrite]
) -> list[TaskWrite]:
    """apply_writes on a Redis Cluster. The backlog list hashes to a slot of its own, so one
    pipeline would reach its node and the tasks' nodes in parallel, in no order: each step
    here finishes before the next starts (LREM, then the task writes, then RPUSH). A crash
    between two steps leaves a task off the backlog at worst, never a claimable id without
    its task."""
    backlog = backlog_key(town)
    leaving = [w for w in writes if w.backlog_remove]
    removed_from_backlog: set[str] = set()
    if leaving:
        pipe = client.pipeline(transaction=False)  # type: ignore[no-untyped-call]
        for write in leaving:
            pipe.lrem(backlog, 0, write.task_uuid)
        replies = pipe.execute()
        removed_from_backlog = {w.task_uuid for w, n in zip(leaving, replies, strict=True) if n}
    written = guarded_writes_on_cluster(client, writes)
    changed, claimable = outcome(writes, written, removed_from_backlog)
    if claimable:
        pipe = client.pipeline(transaction=False)  # type: ignore[no-untyped-call]
        for batch in chunks(claimable):
            pipe.rpush(backlog, *batch)
        pipe.execute()
    return changed


def guarded_writes_on_cluster(
    client: redis.cluster.RedisCluster, writes: Sequence[TaskWrite]
) -> list[Any]:
    """The guarded script for every write, in one cluster pipeline (redis-py groups the
    commands per node and follows MOVED/ASK). redis-py's Script objects refuse cluster
    pipelines, so EVALSHA goes out as a plain command, and a node that does not know the script
    yet (a new or restarted primary) gets SCRIPT LOAD, which redis-py sends to every primary,
    and its writes again."""
    replies: list[Any] = [None] * len(writes)
    todo = list(range(len(writes)))
    for _attempt in range(3):
        pipe = client.pipeline(transaction=False)  # type: ignore[no-untyped-call]
        for n in todo:
            write = writes[n]
            pipe.execute_command("EVALSHA", GUARDED_WRITE_SHA, 1, write.key,
                                 *guarded_write_args(write))  # fmt: skip
        unknown = []
        for n, reply in zip(todo, pipe.execute(raise_on_error=False), strict=True):
            if isinstance(reply, redis.exceptions.NoScriptError):
                unknown.append(n)
            elif isinstance(reply, Exception):
                raise reply
            replies[n] = reply
        if not unknown:
            return replies
        client.script_load(GUARDED_WRITE)
        todo = unknown
    raise redis.ResponseError("the cluster kept forgetting ttsyncd's write script")


def hash_after(write: TaskWrite) -> dict[str, str] | None:
    """What the hash holds once `write` applied (None: deleted)."""
    if write.write is None:
        return None
    kept = {k: v for k, v in write.expected.items() if k not in write.write.delete_fields}
    return {**kept, **write.write.set_fields}


class RedisSource(Protocol):
    """Where a sync gets the town's Redis side from."""

    def snapshot(self) -> Snapshot: ...

    def changed_under_us(self, keys: Iterable[str]) -> None:
        """These keys no longer hold what the last snapshot said: read them anew."""

    def wrote(self, writes: Iterable[TaskWrite]) -> None:
        """These writes were applied."""

    def ensure_epoch(self) -> str:
        """The Redis's ttsyncd marker, set if missing."""

    def ensure_markers(self, markers: dict[str, Marker]) -> dict[str, str]:
        """A Cluster's markers per primary (see markers.ensure_markers), set where missing."""


class LiveRead:
    """The one-shot commands' source: every snapshot reads the whole town."""

    def __init__(self, client: RedisClient, town: str) -> None:
        self.client, self.town = client, town

    def snapshot(self) -> Snapshot:
        return read_snapshot(self.client, self.town)

    def changed_under_us(self, keys: Iterable[str]) -> None:
        pass

    def wrote(self, writes: Iterable[TaskWrite]) -> None:
        pass

    def ensure_epoch(self) -> str:
        return ensure_epoch(self.client, self.town)

    def ensure_markers(self, markers: dict[str, Marker]) -> dict[str, str]:
        return ensure_markers(self.client, self.town, markers)
