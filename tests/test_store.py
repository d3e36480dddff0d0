"""The Redis side against a real redis-server: reading a town written the way tinytown writes it,
and guarded writes that never overwrite a concurrent change."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
import redis

from tests.helpers import TINYTOWN_FIXTURE
from ttsyncd import tinytown
from ttsyncd.codec import (
    OPTIONAL_FIELDS,
    HashWrite,
    RedisTask,
    backlog_key,
    decode_task,
    encode_task,
    task_key,
)
from ttsyncd.model import Record
from ttsyncd.store import Snapshot, TaskWrite, apply_writes, read_hashes, read_snapshot

FIXTURE = TINYTOWN_FIXTURE
HASHES: dict[str, dict[str, str]] = FIXTURE["hashes"]

TOWN = "demo"
AGENT_UUID = "5f0c2a1e-8d3b-4c7a-9e21-3b6f4d2a9c10"
AUTH_API = "0d6f2b52-77a3-4f55-8c1e-2d2e8c6b9a01"
AUTH_TESTS = "7a1c9e44-0b2f-4d8e-a5c3-6e9f1b2d4c77"
UNTAGGED = "c3e8b1f0-5a6d-4b2c-9f7e-1a0d3c5b7e92"
LEGACY = "9b2d7c30-1e4f-4a6b-8d9c-0f1e2a3b4c5d"
TASK_UUIDS = (AUTH_API, AUTH_TESTS, UNTAGGED, LEGACY)

NEW_UUID = "1a2b3c4d-5e6f-4a7b-8c9d-0e1f2a3b4c5d"
NOW = datetime(2026, 11, 27, 8, 15, 30, 123456, tzinfo=UTC)

WRITE_COMMANDS = ("hset", "hmset", "hdel", "del", "unlink", "evalsha", "eval", "rpush", "lpush",
                  "lrem", "multi", "exec", "set")  # fmt: skip


def load_fixture(client: redis.Redis, town: str = TOWN) -> None:
    """The fixture written as tinytown writes it: set_task per task, set_agent_state, RPUSH."""
    for key, fields in HASHES.items():
        if key.split(":")[2] == "task":
            tinytown.set_task(client, town, fields)
        else:
            client.hset(key.replace("tt:demo:", f"tt:{town}:", 1), mapping=fields)
    for key, items in FIXTURE["lists"].items():
        client.rpush(key.replace("tt:demo:", f"tt:{town}:", 1), *items)


def fixture_hash(task_uuid: str) -> dict[str, str]:
    return dict(HASHES[task_key(TOWN, task_uuid)])


def by_uuid(snapshot: Snapshot) -> dict[str, RedisTask]:
    return {t.uuid: t for t in snapshot.tasks}


def backlog(client: redis.Redis, town: str = TOWN) -> list[str]:
    return [str(x) for x in client.lrange(backlog_key(town), 0, -1)]


def new_task_write(
    task_uuid: str = NEW_UUID, *, backlog_add: bool = False, status: str = "pending"
) -> TaskWrite:
    write = encode_task(
        Record(description="Brand new", status=status, tags=("new",), result=None),
        task_uuid=task_uuid,
        plan_id="brand-new",
        current=None,
        assigned_to=None,
        parent_id=None,
        now=NOW,
    )
    return TaskWrite(task_key(TOWN, task_uuid), {}, write, task_uuid, backlog_add=backlog_add)


def update_write(task: RedisTask, **changes: Any) -> TaskWrite:
    """A write guarded on the hash as `task` was read."""
    record = Record(
        description=task.description, status=task.state, tags=task.tags, result=task.result
    ).with_fields(changes)
    write = encode_task(
        record,
        task_uuid=task.uuid,
        plan_id=task.plan_id or "adopted",
        current=task,
        assigned_to=task.assigned_to,
        parent_id=task.parent_id,
        now=NOW,
    )
    return TaskWrite(task.key, dict(task.raw), write, task.uuid)


def delete_write(task: RedisTask, *, backlog_remove: bool = True) -> TaskWrite:
    return TaskWrite(task.key, dict(task.raw), None, task.uuid, backlog_remove=backlog_remove)


def read_task(client: redis.Redis, task_uuid: str) -> RedisTask:
    return by_uuid(read_snapshot(client, TOWN))[task_uuid]


def command_calls(client: redis.Redis) -> dict[str, int]:
    stats = client.info("commandstats")
    return {
        name.removeprefix("cmdstat_").lower(): int(value["calls"]) for name, value in stats.items()
    }


# --------------------------------------------------------------------------- read_snapshot


def test_fixture_is_written_as_tinytown_stores_it(rdb: redis.Redis) -> None:
    load_fixture(rdb)
    for key, fields in HASHES.items():
        assert rdb.hgetall(key) == fields
    assert backlog(rdb) == [UNTAGGED]


def test_read_snapshot_finds_every_task_decoded(rdb: redis.Redis) -> None:
    load_fixture(rdb)
    snapshot = read_snapshot(rdb, TOWN)
    tasks = by_uuid(snapshot)
    assert set(tasks) == set(TASK_UUIDS)
    assert len(snapshot.tasks) == len(TASK_UUIDS)
    for task_uuid in TASK_UUIDS:
        key = task_key(TOWN, task_uuid)
        assert tasks[task_uuid] == decode_task(key, HASHES[key])
    assert tasks[AUTH_API].plan_id == "auth-api"
    assert tasks[UNTAGGED].plan_id is None
    assert tasks[LEGACY].state == "running"
    assert snapshot.unreadable == {}


def test_read_snapshot_finds_the_agent_names(rdb: redis.Redis) -> None:
    load_fixture(rdb)
    second = tinytown.register_agent(rdb, TOWN, "frontend")
    assert read_snapshot(rdb, TOWN).agent_names == {AGENT_UUID: "backend", second: "frontend"}


def test_read_snapshot_of_an_empty_town(rdb: redis.Redis) -> None:
    snapshot = read_snapshot(rdb, TOWN)
    assert (snapshot.tasks, snapshot.unreadable, snapshot.agent_names) == ([], {}, {})


def test_read_snapshot_reports_a_malformed_hash_without_raising(rdb: redis.Redis) -> None:
    load_fixture(rdb)
    bad_uuid = "0badbad0-0000-4000-8000-000000000001"
    bad_key = task_key(TOWN, bad_uuid)
    rdb.hset(bad_key, mapping=dict(fixture_hash(UNTAGGED), id=bad_uuid, state="done"))
    no_tags_uuid = "0badbad0-0000-4000-8000-000000000002"
    no_tags = dict(fixture_hash(UNTAGGED), id=no_tags_uuid)
    del no_tags["tags"]
    rdb.hset(task_key(TOWN, no_tags_uuid), mapping=no_tags)

    snapshot = read_snapshot(rdb, TOWN)
    assert set(by_uuid(snapshot)) == set(TASK_UUIDS)
    assert set(snapshot.unreadable) == {bad_key, task_key(TOWN, no_tags_uuid)}
    assert "state" in snapshot.unreadable[bad_key]
    assert "tags" in snapshot.unreadable[task_key(TOWN, no_tags_uuid)]


@pytest.mark.parametrize("kind", ["string", "list", "set"])
def test_read_snapshot_reports_a_non_hash_task_key_without_raising(
    rdb: redis.Redis, kind: str
) -> None:
    load_fixture(rdb)
    odd_key = task_key(TOWN, "0badbad0-0000-4000-8000-00000000000f")
    if kind == "string":
        rdb.set(odd_key, "not a hash")
    elif kind == "list":
        rdb.rpush(odd_key, "a", "b")
    else:
        rdb.sadd(odd_key, "a")
    snapshot = read_snapshot(rdb, TOWN)
    assert set(by_uuid(snapshot)) == set(TASK_UUIDS)
    assert list(snapshot.unreadable) == [odd_key]
    assert "hash" in snapshot.unreadable[odd_key]
    assert snapshot.agent_names == {AGENT_UUID: "backend"}


def test_read_snapshot_ignores_task_namespace_keys_that_are_not_task_uuids(
    rdb: redis.Redis,
) -> None:
    load_fixture(rdb)
    rdb.set(f"tt:{TOWN}:task:counter", "7")
    rdb.rpush(f"tt:{TOWN}:task:{AUTH_API}:log", "x")
    snapshot = read_snapshot(rdb, TOWN)
    assert set(by_uuid(snapshot)) == set(TASK_UUIDS)
    assert snapshot.unreadable == {}


def test_read_snapshot_skips_agent_keys_it_cannot_use(rdb: redis.Redis) -> None:
    load_fixture(rdb)
    rdb.set(f"tt:{TOWN}:agent:0badbad0-0000-4000-8000-000000000003", "string")
    rdb.hset(f"tt:{TOWN}:agent:0badbad0-0000-4000-8000-000000000004", mapping={"state": "idle"})
    snapshot = read_snapshot(rdb, TOWN)
    assert snapshot.agent_names == {AGENT_UUID: "backend"}
    assert snapshot.unreadable == {}


@pytest.mark.parametrize("other", ["other", "demo2", "dem", "demo-old", "Demo"])
def test_read_snapshot_does_not_read_other_towns(rdb: redis.Redis, other: str) -> None:
    load_fixture(rdb, other)
    foreign_uuid = "ffffffff-0000-4000-8000-000000000000"
    tinytown.set_task(rdb, other, dict(fixture_hash(UNTAGGED), id=foreign_uuid))
    rdb.set(task_key(other, "ffffffff-0000-4000-8000-000000000001"), "not a hash")
    tinytown.register_agent(rdb, other, "stranger")

    snapshot = read_snapshot(rdb, TOWN)
    assert (snapshot.tasks, snapshot.unreadable, snapshot.agent_names) == ([], {}, {})

    load_fixture(rdb)
    snapshot = read_snapshot(rdb, TOWN)
    assert set(by_uuid(snapshot)) == set(TASK_UUIDS)
    assert all(t.key.startswith(f"tt:{TOWN}:task:") for t in snapshot.tasks)
    assert snapshot.unreadable == {}
    assert snapshot.agent_names == {AGENT_UUID: "backend"}


@pytest.mark.parametrize(("town", "neighbour"), [("d?mo", "demo"), ("team[1]", "team1")])
def test_town_names_with_glob_characters_read_exactly_their_own_keys(
    rdb: redis.Redis, town: str, neighbour: str
) -> None:
    load_fixture(rdb, neighbour)
    load_fixture(rdb, town)
    own = "eeeeeeee-0000-4000-8000-000000000000"
    tinytown.set_task(rdb, town, dict(fixture_hash(UNTAGGED), id=own))
    snapshot = read_snapshot(rdb, town)
    assert {t.key for t in snapshot.tasks} == {task_key(town, u) for u in (*TASK_UUIDS, own)}
    assert snapshot.agent_names == {AGENT_UUID: "backend"}


def test_read_hashes_of_given_keys_only(rdb: redis.Redis) -> None:
    load_fixture(rdb)
    gone = task_key(TOWN, "0badbad0-0000-4000-8000-000000000009")  # deleted since the event
    agent = f"tt:{TOWN}:agent:{AGENT_UUID}"
    snapshot = read_hashes(rdb, [task_key(TOWN, AUTH_API), gone], [agent])
    assert [t.uuid for t in snapshot.tasks] == [AUTH_API]
    assert snapshot.unreadable == {}  # a key that vanished is not "unreadable"
    assert snapshot.agent_names == {AGENT_UUID: "backend"}


def test_read_snapshot_sees_tinytowns_own_updates(rdb: redis.Redis) -> None:
    load_fixture(rdb)
    tinytown.start_task(rdb, TOWN, UNTAGGED, AGENT_UUID)
    task = read_task(rdb, UNTAGGED)
    assert task.state == "running"
    assert task.assigned_to == AGENT_UUID
    assert "started_at" in task.raw


def test_read_snapshot_between_tinytowns_hdel_and_hset_still_decodes(rdb: redis.Redis) -> None:
    """tinytown's pipeline is not MULTI: a reader can see the HDEL without the HSET."""
    load_fixture(rdb)
    key = task_key(TOWN, AUTH_TESTS)
    rdb.hdel(key, *OPTIONAL_FIELDS)  # the first half of a set_task that clears everything
    task = read_task(rdb, AUTH_TESTS)
    assert (task.result, task.parent_id) == (None, None)
    assert task.state == "completed"


# --------------------------------------------------------------------------- apply_writes


def test_guarded_create_writes_the_hash_exactly(rdb: redis.Redis) -> None:
    write = new_task_write()
    assert write.write is not None
    assert apply_writes(rdb, TOWN, [write]) == []
    stored = rdb.hgetall(write.key)
    assert stored == write.write.set_fields
    assert not set(write.write.delete_fields) & set(stored)
    task = read_task(rdb, NEW_UUID)
    assert (task.description, task.plan_id, task.tags) == ("Brand new", "brand-new", ("new",))


def test_guarded_create_over_an_existing_hash_is_changed_and_writes_nothing(
    rdb: redis.Redis,
) -> None:
    write = new_task_write(backlog_add=True)
    theirs = dict(fixture_hash(UNTAGGED), id=NEW_UUID, description="created by someone else")
    tinytown.set_task(rdb, TOWN, theirs)
    assert apply_writes(rdb, TOWN, [write]) == [write]
    assert rdb.hgetall(write.key) == theirs
    assert backlog(rdb) == []


def test_guarded_update_writes_when_the_hash_is_as_read(rdb: redis.Redis) -> None:
    load_fixture(rdb)
    task = read_task(rdb, AUTH_TESTS)
    write = update_write(task, status="pending", result=None)
    assert apply_writes(rdb, TOWN, [write]) == []
    stored = rdb.hgetall(task.key)
    assert write.write is not None
    assert stored == write.write.set_fields
    assert not {"completed_at", "result", "started_at"} & set(stored)
    assert stored["parent_id"] == AUTH_API


@pytest.mark.parametrize(
    "interference",
    ["hset-description", "tinytown-start", "hdel-field", "add-field", "deleted"],
)
def test_write_whose_expected_content_no_longer_matches_is_changed_and_not_written(
    rdb: redis.Redis, interference: str
) -> None:
    load_fixture(rdb)
    task = read_task(rdb, UNTAGGED)
    write = update_write(task, description="ours")
    # Someone else, between our read and our write:
    if interference == "hset-description":
        rdb.hset(task.key, "description", "theirs")
    elif interference == "tinytown-start":
        tinytown.start_task(rdb, TOWN, UNTAGGED, AGENT_UUID)
    elif interference == "hdel-field":
        rdb.hdel(task.key, "tags")
    elif interference == "add-field":
        rdb.hset(task.key, "result", "note")
    else:
        rdb.delete(task.key)
    theirs = rdb.hgetall(task.key)

    assert apply_writes(rdb, TOWN, [write]) == [write]
    assert rdb.hgetall(task.key) == theirs


def test_a_changed_value_that_is_restored_matches_again(rdb: redis.Redis) -> None:
    load_fixture(rdb)
    task = read_task(rdb, UNTAGGED)
    rdb.hset(task.key, "description", "temporary")
    rdb.hset(task.key, "description", task.description)
    write = update_write(task, description="ours")
    assert apply_writes(rdb, TOWN, [write]) == []
    assert rdb.hget(task.key, "description") == "ours"


def test_a_batch_writes_the_fresh_and_returns_only_the_stale(rdb: redis.Redis) -> None:
    load_fixture(rdb)
    snapshot = by_uuid(read_snapshot(rdb, TOWN))
    stale = update_write(snapshot[AUTH_API], description="ours, stale")
    fresh = update_write(snapshot[LEGACY], status="completed", result="ok")
    create = new_task_write()
    rdb.hset(snapshot[AUTH_API].key, "state", "failed")

    assert apply_writes(rdb, TOWN, [stale, fresh, create]) == [stale]
    assert rdb.hget(stale.key, "description") == "Build user authentication API"
    assert rdb.hget(stale.key, "state") == "failed"
    assert fresh.write is not None and create.write is not None
    assert rdb.hgetall(fresh.key) == fresh.write.set_fields
    assert rdb.hgetall(create.key) == create.write.set_fields


def test_delete_removes_the_key_and_lrems_it_from_the_backlog(rdb: redis.Redis) -> None:
    load_fixture(rdb)
    other = "0e0e0e0e-0000-4000-8000-000000000000"
    rdb.rpush(backlog_key(TOWN), other, UNTAGGED)  # an extra copy too: LREM removes all
    task = read_task(rdb, UNTAGGED)
    assert apply_writes(rdb, TOWN, [delete_write(task)]) == []
    assert not rdb.exists(task.key)
    assert backlog(rdb) == [other]
    assert set(by_uuid(read_snapshot(rdb, TOWN))) == {AUTH_API, AUTH_TESTS, LEGACY}


def test_delete_without_backlog_remove_leaves_the_backlog(rdb: redis.Redis) -> None:
    load_fixture(rdb)
    task = read_task(rdb, AUTH_API)
    rdb.rpush(backlog_key(TOWN), AUTH_API)
    assert apply_writes(rdb, TOWN, [delete_write(task, backlog_remove=False)]) == []
    assert not rdb.exists(task.key)
    assert backlog(rdb) == [UNTAGGED, AUTH_API]


def test_failed_guarded_delete_keeps_the_task_and_puts_it_back_on_the_backlog(
    rdb: redis.Redis,
) -> None:
    load_fixture(rdb)
    task = read_task(rdb, UNTAGGED)
    write = delete_write(task)
    tinytown.start_task(rdb, TOWN, UNTAGGED, AGENT_UUID)  # an agent claimed it meanwhile
    theirs = rdb.hgetall(task.key)

    assert apply_writes(rdb, TOWN, [write]) == [write]
    assert rdb.hgetall(task.key) == theirs
    assert backlog(rdb) == [UNTAGGED]


def test_failed_guarded_delete_of_a_task_not_on_the_backlog_does_not_add_it(
    rdb: redis.Redis,
) -> None:
    load_fixture(rdb)
    task = read_task(rdb, AUTH_API)
    write = delete_write(task)
    rdb.hset(task.key, "description", "edited meanwhile")
    assert apply_writes(rdb, TOWN, [write]) == [write]
    assert rdb.exists(task.key)
    assert backlog(rdb) == [UNTAGGED]


def test_backlog_add_pushes_the_new_task_once(rdb: redis.Redis) -> None:
    load_fixture(rdb)
    create = new_task_write(backlog_add=True)
    assert apply_writes(rdb, TOWN, [create]) == []
    assert backlog(rdb) == [UNTAGGED, NEW_UUID]

    # Applied again (a retry): the guard refuses it and the backlog does not grow.
    assert apply_writes(rdb, TOWN, [create]) == [create]
    assert backlog(rdb) == [UNTAGGED, NEW_UUID]

    # A later write that also asks for the backlog: still one entry.
    task = read_task(rdb, NEW_UUID)
    again = update_write(task, description="renamed")
    again = TaskWrite(again.key, again.expected, again.write, again.task_uuid, backlog_add=True)
    assert apply_writes(rdb, TOWN, [again]) == []
    assert backlog(rdb).count(NEW_UUID) == 1
    assert backlog(rdb).count(UNTAGGED) == 1


def test_backlog_add_of_a_refused_write_does_not_push(rdb: redis.Redis) -> None:
    rdb.hset(task_key(TOWN, NEW_UUID), mapping={"description": "someone else's"})
    create = new_task_write(backlog_add=True)
    assert apply_writes(rdb, TOWN, [create]) == [create]
    assert backlog(rdb) == []


def test_applied_writes_read_back_as_the_records_written(rdb: redis.Redis) -> None:
    load_fixture(rdb)
    snapshot = by_uuid(read_snapshot(rdb, TOWN))
    writes = [
        update_write(snapshot[AUTH_API], status="completed", result="shipped"),
        update_write(snapshot[UNTAGGED], tags=("flaky", "ci")),
        new_task_write(status="running"),
    ]
    assert apply_writes(rdb, TOWN, writes) == []
    after = by_uuid(read_snapshot(rdb, TOWN))
    assert (after[AUTH_API].state, after[AUTH_API].result) == ("completed", "shipped")
    assert after[AUTH_API].raw["completed_at"] == "2026-11-27T08:15:30.123456+00:00"
    assert after[AUTH_API].raw["started_at"] == HASHES[task_key(TOWN, AUTH_API)]["started_at"]
    assert after[UNTAGGED].tags == ("flaky", "ci")
    assert after[UNTAGGED].plan_id == "adopted"
    assert after[NEW_UUID].state == "running"
    assert "started_at" in after[NEW_UUID].raw


def test_a_write_that_clears_fields_hdels_them(rdb: redis.Redis) -> None:
    load_fixture(rdb)
    task = read_task(rdb, AUTH_TESTS)
    hash_write = encode_task(
        Record(description=task.description, status="completed", result=None),
        task_uuid=task.uuid,
        plan_id="auth-tests",
        current=task,
        assigned_to=None,
        parent_id=None,
        now=NOW,
    )
    write = TaskWrite(task.key, dict(task.raw), hash_write, task.uuid)
    assert apply_writes(rdb, TOWN, [write]) == []
    stored = rdb.hgetall(task.key)
    assert "result" not in stored and "parent_id" not in stored
    assert stored["completed_at"] == task.raw["completed_at"]


def test_applying_no_writes_sends_no_write_command(rdb: redis.Redis) -> None:
    load_fixture(rdb)
    rdb.config_resetstat()
    assert apply_writes(rdb, TOWN, []) == []
    calls = command_calls(rdb)
    assert not {name for name in WRITE_COMMANDS if calls.get(name)}, calls


def test_commandstats_does_count_a_real_write(rdb: redis.Redis) -> None:
    """The control for the test above: the measurement does see apply_writes' commands."""
    load_fixture(rdb)
    rdb.config_resetstat()
    assert apply_writes(rdb, TOWN, [new_task_write(backlog_add=True)]) == []
    calls = command_calls(rdb)
    assert calls.get("evalsha", 0) + calls.get("eval", 0) == 1
    assert calls.get("rpush") == 1
    # commandstats counts the commands a script runs too: the guard's read and the write.
    assert calls.get("hgetall") == 1
    assert calls.get("hset") == 1


def test_one_round_trip_for_many_writes(rdb: redis.Redis) -> None:
    """Many writes go as one script call each, not a WATCH/MULTI/EXEC per key."""
    rdb.config_resetstat()
    writes = [new_task_write(f"1a2b3c4d-5e6f-4a7b-8c9d-{i:012x}") for i in range(50)]
    assert apply_writes(rdb, TOWN, writes) == []
    calls = command_calls(rdb)
    assert calls.get("evalsha", 0) + calls.get("eval", 0) == 50
    assert not calls.get("watch") and not calls.get("multi")
    assert len(read_snapshot(rdb, TOWN).tasks) == 50


def test_a_write_to_a_non_hash_key_is_reported_and_does_not_spoil_the_batch(
    rdb: redis.Redis,
) -> None:
    blocked_uuid = "0badbad0-0000-4000-8000-00000000000f"
    rdb.set(task_key(TOWN, blocked_uuid), "not a hash")
    blocked = new_task_write(blocked_uuid, backlog_add=True)
    good = new_task_write(backlog_add=True)
    assert apply_writes(rdb, TOWN, [blocked, good]) == [blocked]
    assert rdb.get(task_key(TOWN, blocked_uuid)) == "not a hash"
    assert backlog(rdb) == [NEW_UUID]


def test_hash_write_dataclass_is_what_apply_writes_consumes(rdb: redis.Redis) -> None:
    """A hand-made HashWrite (not from encode_task) is applied as HDEL then HSET."""
    load_fixture(rdb)
    task = read_task(rdb, AUTH_API)
    set_fields = dict(task.raw, description="hand made")
    del set_fields["assigned_to"]
    write = TaskWrite(task.key, dict(task.raw), HashWrite(set_fields, ("assigned_to",)), task.uuid)
    assert apply_writes(rdb, TOWN, [write]) == []
    assert rdb.hgetall(task.key) == set_fields
