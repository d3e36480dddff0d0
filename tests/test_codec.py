"""The tinytown task hash codec: golden tests against hashes exactly as tinytown 0.10 writes them
(../shared/fixtures/tinytown-0.10-redis.json), malformed hashes, and the write that encodes a
plan record as tinytown's Task methods would."""

from __future__ import annotations

import json
import tomllib
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.helpers import TINYTOWN_FIXTURE
from ttsyncd.codec import (
    OPTIONAL_FIELDS,
    REQUIRED_FIELDS,
    BadHash,
    HashWrite,
    RedisTask,
    decode_tags,
    decode_task,
    encode_tags,
    encode_task,
    is_uuid,
    rfc3339,
    tags_with_plan,
    task_key,
)
from ttsyncd.model import STATES, TERMINAL_STATES, Record

FIXTURE = TINYTOWN_FIXTURE
HASHES: dict[str, dict[str, str]] = FIXTURE["hashes"]
TASK_HASHES = {k: v for k, v in HASHES.items() if k.startswith("tt:demo:task:")}

AGENT_UUID = "5f0c2a1e-8d3b-4c7a-9e21-3b6f4d2a9c10"
AUTH_API = "0d6f2b52-77a3-4f55-8c1e-2d2e8c6b9a01"  # running, assigned, plan:auth-api
AUTH_TESTS = "7a1c9e44-0b2f-4d8e-a5c3-6e9f1b2d4c77"  # completed, result, parent
UNTAGGED = "c3e8b1f0-5a6d-4b2c-9f7e-1a0d3c5b7e92"  # pending, no plan tag, tags []
LEGACY = "9b2d7c30-1e4f-4a6b-8d9c-0f1e2a3b4c5d"  # state in_flight, Z timestamps

# A fixed `now` whose fraction reads the same in chrono (9 significant digits: 6) and Python.
NOW = datetime(2026, 11, 27, 8, 15, 30, 123456, tzinfo=UTC)
STAMP = "2026-11-27T08:15:30.123456+00:00"

NEW_UUID = "1a2b3c4d-5e6f-4a7b-8c9d-0e1f2a3b4c5d"
PARENT_UUID = "66666666-7777-4888-9999-aaaaaaaaaaaa"


def key_of(task_uuid: str) -> str:
    return task_key("demo", task_uuid)


def fixture_hash(task_uuid: str) -> dict[str, str]:
    return dict(TASK_HASHES[key_of(task_uuid)])


def fixture_task(task_uuid: str) -> RedisTask:
    return decode_task(key_of(task_uuid), fixture_hash(task_uuid))


def minimal_hash(task_uuid: str = NEW_UUID, **changes: str) -> dict[str, str]:
    """A valid hash as `Task::new` writes it, with `changes` applied."""
    raw = {
        "id": task_uuid,
        "description": "Something to do",
        "state": "pending",
        "created_at": "2026-11-26T09:00:00+00:00",
        "updated_at": "2026-11-26T09:00:00+00:00",
        "tags": '["x","plan:thing"]',
    }
    raw.update(changes)
    return raw


def apply_to_hash(current: dict[str, str], write: HashWrite) -> dict[str, str]:
    """What tinytown's pipeline (and ttsyncd's script) leaves: HDEL the unset, HSET the rest."""
    after = {k: v for k, v in current.items() if k not in write.delete_fields}
    after.update(write.set_fields)
    return after


def record_of(task: RedisTask, **changes: Any) -> Record:
    record = Record(
        description=task.description,
        status=task.state,
        tags=task.tags,
        result=task.result,
    )
    return record.with_fields(changes) if changes else record


def encode_from(task: RedisTask, record: Record, *, plan_id: str | None = None) -> HashWrite:
    return encode_task(
        record,
        task_uuid=task.uuid,
        plan_id=plan_id or task.plan_id or "adopted",
        current=task,
        assigned_to=task.assigned_to,
        parent_id=task.parent_id,
        now=NOW,
    )


# --------------------------------------------------------------------------- golden decode


GOLDEN = {
    AUTH_API: {
        "description": "Build user authentication API",
        "state": "running",
        "tags": ("auth", "api"),
        "plan_id": "auth-api",
        "assigned_to": AGENT_UUID,
        "parent_id": None,
        "result": None,
        "updated_at": "2026-11-26T10:30:41.004211873+00:00",
    },
    AUTH_TESTS: {
        "description": "Write auth API tests",
        "state": "completed",
        "tags": (),
        "plan_id": "auth-tests",
        "assigned_to": None,
        "parent_id": AUTH_API,
        "result": "Completed via sync",
        "updated_at": "2026-11-26T10:40:12+00:00",
    },
    UNTAGGED: {
        "description": "Investigate flaky login test (assigned with tt assign, no plan tag)",
        "state": "pending",
        "tags": (),
        "plan_id": None,
        "assigned_to": None,
        "parent_id": None,
        "result": None,
        "updated_at": "2026-11-26T10:05:00.5+00:00",
    },
    LEGACY: {
        "description": "Legacy entry with an old state name",
        "state": "running",
        "tags": (),
        "plan_id": "legacy",
        "assigned_to": None,
        "parent_id": None,
        "result": None,
        "updated_at": "2026-11-25T18:00:00Z",
    },
}


def test_fixture_holds_the_tasks_the_golden_table_describes() -> None:
    assert {key_of(u) for u in GOLDEN} == set(TASK_HASHES)


@pytest.mark.parametrize("task_uuid", list(GOLDEN))
def test_every_fixture_task_decodes_to_its_golden_values(task_uuid: str) -> None:
    key = key_of(task_uuid)
    task = decode_task(key, TASK_HASHES[key])
    assert task.key == key
    assert task.uuid == task_uuid
    for name, expected in GOLDEN[task_uuid].items():
        assert getattr(task, name) == expected, name
    # The hash as read is kept verbatim (the write guard compares against it).
    assert dict(task.raw) == TASK_HASHES[key]


def test_the_hash_is_kept_as_its_values_with_shared_names_and_tags() -> None:
    """A mirror holds a whole town's tasks: each keeps the hash's values (the very str objects
    read, no copies), one tuple of field names for every hash of the same fields, and one
    tuple for equal tags. A hash read with its fields in another order is the same task."""
    raw = fixture_hash(AUTH_API)
    task = decode_task(key_of(AUTH_API), raw)
    assert task.raw == raw and all(task.raw[name] is raw[name] for name in raw)
    assert task.description is raw["description"] and task.updated_at is raw["updated_at"]
    reordered = dict(reversed(fixture_hash(AUTH_API).items()))
    again = decode_task(key_of(AUTH_API), reordered)
    assert again == task and again.raw == raw
    assert again.names is task.names
    assert task.tags and again.tags is task.tags


def test_plan_tag_is_removed_from_tags_but_other_tags_keep_their_order() -> None:
    task = decode_task(key_of(NEW_UUID), minimal_hash(tags='["z","plan:p","a","m"]'))
    assert task.plan_id == "p"
    assert task.tags == ("z", "a", "m")


def test_untagged_fixture_task_has_no_plan_id() -> None:
    task = fixture_task(UNTAGGED)
    assert task.plan_id is None
    assert task.tags == ()


def test_legacy_in_flight_reads_as_running_but_raw_keeps_it() -> None:
    task = fixture_task(LEGACY)
    assert task.state == "running"
    assert task.raw["state"] == "in_flight"


@pytest.mark.parametrize("state", STATES)
def test_every_tinytown_state_decodes(state: str) -> None:
    assert decode_task(key_of(NEW_UUID), minimal_hash(state=state)).state == state


def test_optional_fields_absent_decode_as_none() -> None:
    task = decode_task(key_of(NEW_UUID), minimal_hash())
    assert (task.assigned_to, task.parent_id, task.result) == (None, None, None)


def test_optional_fields_present_decode() -> None:
    raw = minimal_hash(
        state="failed",
        assigned_to=AGENT_UUID,
        parent_id=PARENT_UUID,
        result="boom",
        started_at="2026-11-26T09:10:00+00:00",
        completed_at="2026-11-26T09:20:00.5Z",
    )
    task = decode_task(key_of(NEW_UUID), raw)
    assert (task.assigned_to, task.parent_id, task.result) == (AGENT_UUID, PARENT_UUID, "boom")


def test_empty_result_is_kept_as_an_empty_string_not_none() -> None:
    assert decode_task(key_of(NEW_UUID), minimal_hash(result="")).result == ""


def test_unknown_extra_fields_are_tolerated_and_kept_in_raw() -> None:
    task = decode_task(key_of(NEW_UUID), minimal_hash(priority="high"))
    assert task.raw["priority"] == "high"


def test_fixture_toml_equivalent_matches_the_decoded_tasks() -> None:
    """The fixture's tasks.toml and its hashes say the same thing, field for field."""
    entries = {e["id"]: e for e in tomllib.loads(FIXTURE["tasks_toml_equivalent"])["tasks"]}
    agents = {h["id"]: h["name"] for k, h in HASHES.items() if ":agent:" in k}
    tasks = [decode_task(k, h) for k, h in TASK_HASHES.items()]
    plan_of = {t.uuid: t.plan_id or f"task-{t.uuid[:8]}" for t in tasks}
    for task in tasks:
        entry = entries[plan_of[task.uuid]]
        assert entry["description"] == task.description
        assert entry["status"] == task.state
        assert tuple(entry.get("tags", ())) == task.tags
        assert entry.get("result") == task.result
        assert entry.get("agent") == (agents[task.assigned_to] if task.assigned_to else None)
        assert entry.get("parent") == (plan_of[task.parent_id] if task.parent_id else None)
    assert len(entries) == len(tasks)


# --------------------------------------------------------------------------- timestamps

TIME_FIELDS = ("created_at", "updated_at", "started_at", "completed_at")

GOOD_TIMES = [
    "2026-11-26T10:42:30+00:00",  # 0 fraction digits (chrono, whole second)
    "2026-11-26T10:42:30.123+00:00",  # 3
    "2026-11-26T10:42:30.123456+00:00",  # 6
    "2026-11-26T10:42:30.123456789+00:00",  # 9
    "2026-11-26T10:42:30.5+00:00",  # 1, as in the fixture
    "2026-11-26T10:42:30Z",
    "2026-11-26T10:42:30.123Z",
    "2026-11-26T10:42:30.123456789Z",
    "2026-11-26T12:42:30+02:00",
    "2026-11-26T05:12:30.25-05:30",
    "2026-11-26t10:42:30z",  # RFC 3339 allows lower-case t and z
    "2026-11-26 10:42:30+00:00",  # ... and a space instead of T (RFC 3339 §5.6 note)
]


@pytest.mark.parametrize("field", TIME_FIELDS)
@pytest.mark.parametrize("value", GOOD_TIMES)
def test_any_rfc3339_time_is_accepted(field: str, value: str) -> None:
    task = decode_task(key_of(NEW_UUID), minimal_hash(**{field: value}))
    assert task.raw[field] == value
    if field == "updated_at":
        assert task.updated_at == value


def test_fixture_time_formats_all_decode() -> None:
    """The fixture's own variety: 9 digits, none, one, and Z."""
    seen = {h[f] for h in TASK_HASHES.values() for f in TIME_FIELDS if f in h}
    assert "2026-11-26T10:30:41.004211873+00:00" in seen
    assert "2026-11-26T10:40:12+00:00" in seen
    assert "2026-11-25T18:00:00Z" in seen
    for key, raw in TASK_HASHES.items():
        decode_task(key, raw)


BAD_TIMES = [
    "",
    "yesterday",
    "2026-11-26",  # a date only
    "2026-11-26T10:42:30",  # no offset
    "2026-11-26T10:42+00:00",  # no seconds
    "2026-11-26T10:42:30.+00:00",  # a dot with no digits
    "2026-11-26T10:42:30+0000",  # offset without colon (ISO 8601 basic, not RFC 3339)
    "26/11/2026 10:42:30",
    "2026-11-26T10:42:30+00:00 ",  # trailing garbage
    "1764150000",  # a unix timestamp
]


@pytest.mark.parametrize("field", TIME_FIELDS)
@pytest.mark.parametrize("value", BAD_TIMES)
def test_a_bad_time_is_a_bad_hash_naming_the_field(field: str, value: str) -> None:
    with pytest.raises(BadHash, match=field):
        decode_task(key_of(NEW_UUID), minimal_hash(**{field: value}))


@pytest.mark.parametrize(
    "value",
    ["2026-13-01T10:00:00+00:00", "2026-02-30T10:00:00+00:00", "2026-11-26T25:61:00Z"],
)
def test_an_impossible_time_is_a_bad_hash(value: str) -> None:
    """The right shape is not enough: tinytown's chrono parse refuses an impossible date."""
    with pytest.raises(BadHash, match="updated_at"):
        decode_task(key_of(NEW_UUID), minimal_hash(updated_at=value))


# --------------------------------------------------------------------------- malformed hashes


@pytest.mark.parametrize("field", REQUIRED_FIELDS)
def test_missing_required_field_is_a_bad_hash_naming_it(field: str) -> None:
    raw = minimal_hash()
    del raw[field]
    with pytest.raises(BadHash, match=field):
        decode_task(key_of(NEW_UUID), raw)


def test_missing_several_fields_names_them_all() -> None:
    raw = minimal_hash()
    del raw["description"], raw["tags"]
    with pytest.raises(BadHash) as error:
        decode_task(key_of(NEW_UUID), raw)
    assert "description" in str(error.value) and "tags" in str(error.value)


def test_empty_hash_is_a_bad_hash() -> None:
    with pytest.raises(BadHash, match="id"):
        decode_task(key_of(NEW_UUID), {})


def test_an_agent_hash_is_not_a_task() -> None:
    key = f"tt:demo:agent:{AGENT_UUID}"
    with pytest.raises(BadHash, match="description"):
        decode_task(key, HASHES[key])


def test_id_not_matching_the_key_is_a_bad_hash() -> None:
    with pytest.raises(BadHash, match="id"):
        decode_task(key_of(PARENT_UUID), minimal_hash(NEW_UUID))


def test_key_that_only_ends_with_the_id_characters_is_rejected() -> None:
    # "...:task:X<uuid>" must not pass as the key of <uuid>.
    with pytest.raises(BadHash, match="id"):
        decode_task(f"tt:demo:task:0{NEW_UUID}", minimal_hash(NEW_UUID))


@pytest.mark.parametrize(
    "bad_id",
    [
        NEW_UUID.upper(),  # tinytown writes lowercase
        NEW_UUID.replace("-", ""),  # not hyphenated
        "{" + NEW_UUID + "}",
        "urn:uuid:" + NEW_UUID,
        "task-1",
        "",
    ],
)
def test_id_that_is_not_a_lowercase_hyphenated_uuid_is_a_bad_hash(bad_id: str) -> None:
    # Even when the key agrees with the id.
    with pytest.raises(BadHash, match="id"):
        decode_task(f"tt:demo:task:{bad_id}", minimal_hash(bad_id))


@pytest.mark.parametrize("state", ["done", "Running", "PENDING", "", "in-flight", "inflight"])
def test_unknown_state_is_a_bad_hash(state: str) -> None:
    with pytest.raises(BadHash, match="state"):
        decode_task(key_of(NEW_UUID), minimal_hash(state=state))


@pytest.mark.parametrize(
    "tags",
    [
        "",
        "auth,api",
        "[auth]",
        "['auth']",  # Python repr, not JSON
        '["auth",',
    ],
)
def test_tags_not_json_is_a_bad_hash(tags: str) -> None:
    with pytest.raises(BadHash, match="tags"):
        decode_task(key_of(NEW_UUID), minimal_hash(tags=tags))


@pytest.mark.parametrize(
    "tags",
    ['"auth"', '{"plan":"x"}', "null", "1", "[1,2]", '["a",null]', '["a",["b"]]', "true"],
)
def test_tags_not_an_array_of_strings_is_a_bad_hash(tags: str) -> None:
    with pytest.raises(BadHash, match="tags"):
        decode_task(key_of(NEW_UUID), minimal_hash(tags=tags))


@pytest.mark.parametrize("field", ["assigned_to", "parent_id"])
@pytest.mark.parametrize(
    "value", ["backend", "", AGENT_UUID.upper(), AGENT_UUID.replace("-", ""), "auth-api"]
)
def test_reference_that_is_not_a_uuid_is_a_bad_hash(field: str, value: str) -> None:
    with pytest.raises(BadHash, match=field):
        decode_task(key_of(NEW_UUID), minimal_hash(**{field: value}))


def test_bad_hash_is_a_value_error() -> None:
    assert issubclass(BadHash, ValueError)


# --------------------------------------------------------------------------- tags JSON


@pytest.mark.parametrize("key", list(TASK_HASHES))
def test_encode_tags_reproduces_tinytowns_tags_byte_for_byte(key: str) -> None:
    text = TASK_HASHES[key]["tags"]
    assert encode_tags(decode_tags(text)) == text


def test_encode_tags_is_compact_like_serde_json() -> None:
    assert encode_tags(["auth", "api", "plan:auth-api"]) == '["auth","api","plan:auth-api"]'
    assert encode_tags([]) == "[]"


def test_encode_tags_keeps_non_ascii_as_is() -> None:
    assert encode_tags(["künstler", "日本語", "😀"]) == '["künstler","日本語","😀"]'


def test_encode_tags_escapes_quotes_and_backslashes_like_serde_json() -> None:
    assert encode_tags(['say "hi"', "a\\b", "tab\there"]) == r'["say \"hi\"","a\\b","tab\there"]'


# --------------------------------------------------------------------------- rfc3339


def test_rfc3339_writes_utc_with_plus_zero_offset() -> None:
    assert rfc3339(NOW) == STAMP


def test_rfc3339_converts_other_offsets_to_utc() -> None:
    moment = datetime(2026, 11, 27, 10, 15, 30, 123456, tzinfo=timezone(timedelta(hours=2)))
    assert rfc3339(moment) == STAMP


def test_rfc3339_whole_second_has_no_fraction_like_chrono() -> None:
    assert rfc3339(datetime(2026, 11, 27, 8, 0, 0, tzinfo=UTC)) == "2026-11-27T08:00:00+00:00"


def test_rfc3339_whole_milliseconds_have_three_digits_like_chrono() -> None:
    moment = datetime(2026, 11, 27, 8, 0, 0, 250000, tzinfo=UTC)
    assert rfc3339(moment) == "2026-11-27T08:00:00.250+00:00"


def test_rfc3339_output_decodes() -> None:
    decode_task(key_of(NEW_UUID), minimal_hash(updated_at=rfc3339(NOW)))


# --------------------------------------------------------------------------- encode: new task


def encode_new(record: Record, **kwargs: Any) -> HashWrite:
    params: dict[str, Any] = {
        "task_uuid": NEW_UUID,
        "plan_id": "thing",
        "current": None,
        "assigned_to": None,
        "parent_id": None,
        "now": NOW,
    }
    params.update(kwargs)
    return encode_task(record, **params)


def test_new_pending_task_gets_exactly_tinytowns_field_set() -> None:
    write = encode_new(Record(description="Build it", tags=("auth", "api")))
    assert write.set_fields == {
        "id": NEW_UUID,
        "description": "Build it",
        "state": "pending",
        "created_at": STAMP,
        "updated_at": STAMP,
        "tags": '["auth","api","plan:thing"]',
    }
    assert sorted(write.delete_fields) == sorted(OPTIONAL_FIELDS)
    assert not set(write.set_fields) & set(write.delete_fields)


def test_new_task_with_every_optional_field_set() -> None:
    write = encode_new(
        Record(description="Do", status="running", result="half way"),
        assigned_to=AGENT_UUID,
        parent_id=PARENT_UUID,
    )
    assert write.set_fields == {
        "id": NEW_UUID,
        "description": "Do",
        "state": "running",
        "created_at": STAMP,
        "updated_at": STAMP,
        "tags": '["plan:thing"]',
        "assigned_to": AGENT_UUID,
        "parent_id": PARENT_UUID,
        "result": "half way",
        "started_at": STAMP,
    }
    assert write.delete_fields == ("completed_at",)


@pytest.mark.parametrize("status", sorted(TERMINAL_STATES))
def test_new_task_in_a_terminal_state_has_completed_at(status: str) -> None:
    write = encode_new(Record(description="Done already", status=status))
    assert write.set_fields["state"] == status
    assert write.set_fields["completed_at"] == STAMP
    assert "started_at" not in write.set_fields
    assert "completed_at" not in write.delete_fields


def test_new_assigned_task_has_no_lifecycle_times() -> None:
    write = encode_new(Record(description="Mine", status="assigned"), assigned_to=AGENT_UUID)
    assert write.set_fields["assigned_to"] == AGENT_UUID
    assert {"started_at", "completed_at"} <= set(write.delete_fields)
    assert "started_at" not in write.set_fields and "completed_at" not in write.set_fields


def test_new_task_written_hash_decodes_back() -> None:
    record = Record(description="Ünïcode ✓", status="running", tags=("ü", "b"), result="r")
    write = encode_new(record, plan_id="plan-ü", assigned_to=AGENT_UUID, parent_id=PARENT_UUID)
    task = decode_task(key_of(NEW_UUID), write.set_fields)
    assert task.description == record.description
    assert task.state == "running"
    assert task.tags == ("ü", "b")
    assert task.plan_id == "plan-ü"
    assert task.result == "r"
    assert task.assigned_to == AGENT_UUID
    assert task.parent_id == PARENT_UUID
    assert task.updated_at == STAMP


# --------------------------------------------------------------------------- encode: plan tag


@pytest.mark.parametrize(
    ("old_tags", "new_tags", "expected"),
    [
        ('["plan:p","a","b"]', ("a", "b"), ["plan:p", "a", "b"]),
        ('["a","plan:p","b"]', ("a", "b"), ["a", "plan:p", "b"]),
        ('["a","b","plan:p"]', ("a", "b"), ["a", "b", "plan:p"]),
        ('["a","plan:p","b"]', ("a", "b", "c"), ["a", "plan:p", "b", "c"]),
        # Fewer tags than the plan tag's old position: it cannot go further than last.
        ('["a","b","c","plan:p"]', ("a",), ["a", "plan:p"]),
        # The hash had no plan tag (an untagged task being adopted): it goes last.
        ('["a","b"]', ("a", "b"), ["a", "b", "plan:p"]),
        ("[]", (), ["plan:p"]),
        # The hash had another plan's tag: the new one goes last.
        ('["plan:other","a"]', ("a",), ["a", "plan:p"]),
    ],
)
def test_plan_tag_keeps_its_position_else_goes_last(
    old_tags: str, new_tags: tuple[str, ...], expected: list[str]
) -> None:
    assert tags_with_plan(old_tags, new_tags, "p") == expected
    current = decode_task(key_of(NEW_UUID), minimal_hash(tags=old_tags))
    write = encode_from(current, Record(description="d", tags=new_tags), plan_id="p")
    assert json.loads(write.set_fields["tags"]) == expected


def test_plan_tag_goes_last_when_there_is_no_current_hash() -> None:
    assert tags_with_plan(None, ("x", "y"), "p") == ["x", "y", "plan:p"]


def test_untagged_fixture_task_adopted_under_its_derived_id() -> None:
    task = fixture_task(UNTAGGED)
    write = encode_from(task, record_of(task), plan_id="task-c3e8b1f0")
    assert write.set_fields["tags"] == '["plan:task-c3e8b1f0"]'
    assert decode_task(task.key, apply_to_hash(dict(task.raw), write)).plan_id == "task-c3e8b1f0"


# --------------------------------------------------------------------------- encode: lifecycle


def test_pending_to_running_sets_started_at() -> None:
    task = fixture_task(UNTAGGED)
    write = encode_from(task, record_of(task, status="running"), plan_id="task-c3e8b1f0")
    assert write.set_fields["state"] == "running"
    assert write.set_fields["started_at"] == STAMP
    assert "completed_at" in write.delete_fields
    assert write.set_fields["created_at"] == "2026-11-26T10:05:00.5+00:00"
    assert write.set_fields["updated_at"] == STAMP


@pytest.mark.parametrize("status", ["completed", "failed", "cancelled"])
def test_running_to_terminal_sets_completed_at_and_keeps_started_at(status: str) -> None:
    task = fixture_task(AUTH_API)
    write = encode_from(task, record_of(task, status=status, result="done"))
    after = apply_to_hash(dict(task.raw), write)
    assert after["state"] == status
    assert after["completed_at"] == STAMP
    assert after["started_at"] == "2026-11-26T10:30:41.004211873+00:00"
    assert after["result"] == "done"
    assert after["created_at"] == "2026-11-26T09:15:02.120934117+00:00"
    assert after["assigned_to"] == AGENT_UUID


def test_back_to_pending_clears_both_lifecycle_times() -> None:
    task = fixture_task(AUTH_TESTS)
    assert "completed_at" in task.raw
    raw = dict(task.raw, started_at="2026-11-26T10:00:00+00:00")
    task = decode_task(task.key, raw)
    write = encode_from(task, record_of(task, status="pending", result=None))
    assert {"started_at", "completed_at", "result"} <= set(write.delete_fields)
    after = apply_to_hash(raw, write)
    assert "started_at" not in after and "completed_at" not in after and "result" not in after
    assert after["state"] == "pending"
    assert after["parent_id"] == AUTH_API  # untouched by the lifecycle


def test_running_to_pending_clears_started_at() -> None:
    task = fixture_task(AUTH_API)
    write = encode_from(task, record_of(task, status="pending"))
    assert "started_at" in write.delete_fields
    assert "started_at" not in write.set_fields


def test_to_assigned_keeps_existing_times() -> None:
    task = fixture_task(AUTH_API)
    write = encode_from(task, record_of(task, status="assigned"))
    assert write.set_fields["state"] == "assigned"
    assert write.set_fields["started_at"] == task.raw["started_at"]
    assert "started_at" not in write.delete_fields


def test_unchanged_state_keeps_legacy_in_flight_and_adds_no_times() -> None:
    task = fixture_task(LEGACY)
    write = encode_from(task, record_of(task, description="Legacy entry, renamed"))
    assert write.set_fields["state"] == "in_flight"
    assert write.set_fields["description"] == "Legacy entry, renamed"
    assert write.set_fields["created_at"] == "2026-11-25T18:00:00Z"
    assert write.set_fields["updated_at"] == STAMP
    assert "started_at" not in write.set_fields  # the state did not change: no new start time
    after = apply_to_hash(dict(task.raw), write)
    assert decode_task(task.key, after).state == "running"


def test_legacy_in_flight_to_completed_writes_the_new_state() -> None:
    task = fixture_task(LEGACY)
    write = encode_from(task, record_of(task, status="completed"))
    assert write.set_fields["state"] == "completed"
    assert write.set_fields["completed_at"] == STAMP


def test_unchanged_state_keeps_existing_times_exactly() -> None:
    running = fixture_task(AUTH_API)
    write = encode_from(running, record_of(running, description="Renamed"))
    assert write.set_fields["started_at"] == "2026-11-26T10:30:41.004211873+00:00"
    assert "completed_at" not in write.set_fields

    completed = fixture_task(AUTH_TESTS)
    write = encode_from(completed, record_of(completed, tags=("new",)))
    assert write.set_fields["completed_at"] == "2026-11-26T10:40:12+00:00"
    assert write.set_fields["state"] == "completed"


def test_created_at_is_kept_from_the_current_hash() -> None:
    for task_uuid in GOLDEN:
        task = fixture_task(task_uuid)
        write = encode_from(task, record_of(task, description="x"))
        assert write.set_fields["created_at"] == task.raw["created_at"]
        assert write.set_fields["updated_at"] == STAMP


def test_clearing_result_and_references_deletes_them() -> None:
    task = fixture_task(AUTH_TESTS)
    write = encode_task(
        record_of(task, result=None),
        task_uuid=task.uuid,
        plan_id="auth-tests",
        current=task,
        assigned_to=None,
        parent_id=None,
        now=NOW,
    )
    assert {"result", "parent_id", "assigned_to"} <= set(write.delete_fields)
    after = apply_to_hash(dict(task.raw), write)
    assert not {"result", "parent_id", "assigned_to"} & set(after)


@pytest.mark.parametrize("task_uuid", [AUTH_API, AUTH_TESTS, LEGACY])
def test_encoding_an_unchanged_task_reproduces_tinytowns_hash_but_updated_at(
    task_uuid: str,
) -> None:
    task = fixture_task(task_uuid)
    write = encode_from(task, record_of(task))
    assert write.set_fields == dict(task.raw, updated_at=STAMP)
    assert set(write.delete_fields) == set(OPTIONAL_FIELDS) - set(task.raw)


def test_delete_fields_are_exactly_the_unset_optional_fields() -> None:
    for task_uuid in GOLDEN:
        task = fixture_task(task_uuid)
        for status in STATES:
            write = encode_from(task, record_of(task, status=status), plan_id="p")
            assert set(write.delete_fields) == set(OPTIONAL_FIELDS) - set(write.set_fields)
            assert set(REQUIRED_FIELDS) <= set(write.set_fields)


# --------------------------------------------------------------------------- round trip


@pytest.mark.parametrize("task_uuid", list(GOLDEN))
@pytest.mark.parametrize("status", STATES)
def test_fixture_round_trip_through_encode(task_uuid: str, status: str) -> None:
    task = fixture_task(task_uuid)
    record = record_of(task, status=status, description=task.description + " (v2)")
    write = encode_from(task, record, plan_id=task.plan_id or "task-c3e8b1f0")
    back = decode_task(task.key, apply_to_hash(dict(task.raw), write))
    assert record_of(back) == record
    assert back.plan_id == (task.plan_id or "task-c3e8b1f0")
    assert (back.assigned_to, back.parent_id) == (task.assigned_to, task.parent_id)


plain_text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=30)
tag_text = plain_text.filter(lambda t: not t.startswith("plan:"))
plan_ids = st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=20)
records = st.builds(
    Record,
    description=plain_text,
    status=st.sampled_from(STATES),
    tags=st.lists(tag_text, max_size=5).map(tuple),
    result=st.none() | plain_text,
)
references = st.none() | st.uuids().map(str)


@given(
    first=records,
    second=records,
    plan_id=plan_ids,
    assigned_to=references,
    parent_id=references,
)
def test_round_trip_property(
    first: Record,
    second: Record,
    plan_id: str,
    assigned_to: str | None,
    parent_id: str | None,
) -> None:
    """Create from `first`, then update to `second`: decoding gives back each record."""
    created = encode_new(first, plan_id=plan_id, assigned_to=assigned_to, parent_id=parent_id)
    task = decode_task(key_of(NEW_UUID), created.set_fields)
    assert record_of(task) == first
    assert (task.plan_id, task.assigned_to, task.parent_id) == (plan_id, assigned_to, parent_id)

    updated = encode_task(
        second,
        task_uuid=NEW_UUID,
        plan_id=plan_id,
        current=task,
        assigned_to=parent_id,
        parent_id=assigned_to,
        now=NOW + timedelta(seconds=1),
    )
    after = apply_to_hash(dict(task.raw), updated)
    again = decode_task(key_of(NEW_UUID), after)
    assert record_of(again) == second
    assert (again.plan_id, again.assigned_to, again.parent_id) == (plan_id, parent_id, assigned_to)
    assert after["created_at"] == task.raw["created_at"]
    assert is_uuid(after["id"])
