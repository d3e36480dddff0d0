"""tinytown 0.10's task hash, field for field as its source writes it, and the plan record it
carries (README, "File format and field mapping").

Decoding is strict about what tinytown itself would refuse (a missing id or description, a
state it does not know, tags that are not a JSON array of strings) and lenient where tinytown
is (`in_flight` reads as `running`, any RFC 3339 time).
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final

from ttsyncd.model import STATES, TERMINAL_STATES, Record, shared, shared_tags

PLAN_TAG_PREFIX: Final = "plan:"
OPTIONAL_FIELDS: Final = ("assigned_to", "started_at", "completed_at", "result", "parent_id")
REQUIRED_FIELDS: Final = ("id", "description", "state", "created_at", "updated_at", "tags")
UUID_TEXT: Final = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\Z")
LEGACY_STATES: Final = {"in_flight": "running"}
# RFC 3339 as chrono writes it, and any other RFC 3339 a hand or a tool may have written.
RFC3339: Final = re.compile(
    r"^\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})\Z", re.ASCII
)


class BadHash(ValueError):
    """A task hash tinytown could not parse either; the message says which field and why."""


@dataclass(frozen=True, slots=True)
class RedisTask:
    """One task hash as read, decoded; the hash itself (`raw`) is kept so a write can be
    guarded on it, as two tuples: its field names, in order, one tuple for every hash of the
    same fields, and their values (a daemon's mirror holds the whole town's: a dict per task
    would cost ~150 bytes more). The decoded fields are the same str objects as the values."""

    key: str
    uuid: str
    description: str
    state: str  # normalised: `in_flight` reads as `running`
    tags: tuple[str, ...]  # without the plan tag
    plan_id: str | None  # from the `plan:<id>` tag
    assigned_to: str | None
    parent_id: str | None
    result: str | None
    updated_at: str
    names: tuple[str, ...]  # the hash's field names, sorted
    values: tuple[str, ...]  # their values

    @property
    def raw(self) -> dict[str, str]:
        """The hash as read (a new dict each time)."""
        return dict(zip(self.names, self.values, strict=True))


def task_key(town: str, task_uuid: str) -> str:
    return f"tt:{town}:task:{task_uuid}"


def agent_key_prefix(town: str) -> str:
    return f"tt:{town}:agent:"


def backlog_key(town: str) -> str:
    return f"tt:{town}:backlog"


def is_uuid(text: str) -> bool:
    """A lowercase, hyphenated uuid, as tinytown writes them (a regex: 10x uuid.UUID's speed)."""
    return UUID_TEXT.match(text) is not None


def decode_task(key: str, raw: Mapping[str, str]) -> RedisTask:
    """Decode one hash read from `key`; raises BadHash naming the field that is wrong."""
    missing = [name for name in REQUIRED_FIELDS if name not in raw]
    if missing:
        raise BadHash(f"missing field(s) {', '.join(missing)}")
    task_uuid = raw["id"]
    if not is_uuid(task_uuid) or not key.endswith(":" + task_uuid):
        raise BadHash(f"id {task_uuid!r} is not the lowercase uuid in the key")
    state = LEGACY_STATES.get(raw["state"], raw["state"])
    if state not in STATES:
        raise BadHash(f"unknown state {raw['state']!r}")
    for name in ("created_at", "updated_at", "started_at", "completed_at"):
        if name in raw:
            parse_time(raw[name], name)
    for name in ("assigned_to", "parent_id"):
        if name in raw and not is_uuid(raw[name]):
            raise BadHash(f"{name} {raw[name]!r} is not a uuid")
    all_tags = decode_tags(raw["tags"])
    plan_tags = sorted({t for t in all_tags if t.startswith(PLAN_TAG_PREFIX) and len(t) > 5})
    if len(plan_tags) > 1:  # which entry is it? Guessing could take another entry's identity.
        raise BadHash(f"tags carry several plan tags ({', '.join(plan_tags)})")
    plan_tag = plan_tags[0] if plan_tags else None
    names = shared(_SHAPES, tuple(sorted(raw)))
    return RedisTask(
        key=key,
        uuid=task_uuid,
        description=raw["description"],
        state=state,
        tags=shared_tags(t for t in all_tags if t != plan_tag),
        plan_id=plan_tag[len(PLAN_TAG_PREFIX) :] if plan_tag else None,
        assigned_to=raw.get("assigned_to"),
        parent_id=raw.get("parent_id"),
        result=raw.get("result"),
        updated_at=raw["updated_at"],
        names=names,
        values=tuple(map(raw.__getitem__, names)),
    )


# The field names of a hash, one tuple for every hash of the same fields (bounded, as
# model.shared's tables are).
_SHAPES: dict[tuple[str, ...], tuple[str, ...]] = {}


def decode_tags(text: str) -> list[str]:
    """The tags as serde_json would read them; anything it refuses is a BadHash."""
    try:
        tags = json.loads(text)
    except json.JSONDecodeError as error:
        raise BadHash(f"tags is not JSON ({error.msg})") from None
    except RecursionError:
        raise BadHash("tags is nested too deeply") from None
    if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
        raise BadHash("tags is not a JSON array of strings")
    for tag in tags:
        try:
            tag.encode("utf-8")
        except UnicodeEncodeError:  # a lone surrogate escape such as "\ud800"
            raise BadHash("tags holds a string that is not valid unicode") from None
    return tags


# serde_json::to_string: compact, non-ASCII kept as is. One encoder for every call:
# json.dumps with options builds a new one each time (a tenth of a cold push of 10,000).
_TAGS_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)


def encode_tags(tags: list[str]) -> str:
    return _TAGS_ENCODER.encode(tags)


@functools.lru_cache(maxsize=4096)  # the tasks of one bulk write share their timestamps
def parse_time(text: str, name: str = "time") -> tuple[datetime, int]:
    """Any RFC 3339 time, to the nanosecond chrono writes: (the whole second, nanoseconds).

    The shape is checked here, the calendar by datetime (which keeps only microseconds).
    """
    match = RFC3339.match(text)
    if not match:
        raise BadHash(f"{name} {text!r} is not an RFC 3339 time")
    fraction = match.group(1) or "."
    try:
        whole_second = datetime.fromisoformat(text.upper().replace(fraction, "", 1))
    except ValueError as error:
        raise BadHash(f"{name} {text!r} is not a valid time ({error})") from None
    return whole_second, int(fraction[1:10].ljust(9, "0"))


@functools.lru_cache(maxsize=16)  # one string for every task of one write, not one each
def rfc3339(moment: datetime) -> str:
    """chrono's `to_rfc3339()` of a UTC time: 0, 3 or 6 fraction digits, `+00:00`."""
    utc = moment.astimezone(UTC)
    if utc.microsecond == 0:
        return utc.isoformat(timespec="seconds")
    if utc.microsecond % 1000 == 0:
        return utc.isoformat(timespec="milliseconds")
    return utc.isoformat(timespec="microseconds")


@dataclass(frozen=True, slots=True, init=False)  # one per task a sync writes: kept small
class HashWrite:
    """One task's write: HDEL of `delete_fields`, then HSET of `set_fields`. Kept as tuples
    (the field names and the deleted fields shared among writes of the same shape), not a
    dict per task: a first push holds one per task until it ends."""

    names: tuple[str, ...]  # set_fields' names, in order
    values: tuple[str, ...]  # and their values
    delete_fields: tuple[str, ...]

    def __init__(self, set_fields: Mapping[str, str], delete_fields: tuple[str, ...]) -> None:
        object.__setattr__(self, "names", shared(_SHAPES, tuple(set_fields)))
        object.__setattr__(self, "values", tuple(set_fields.values()))
        object.__setattr__(self, "delete_fields", shared(_SHAPES, tuple(delete_fields)))

    @property
    def set_fields(self) -> dict[str, str]:
        """The fields HSET sets, and their values (a new dict each time)."""
        return dict(zip(self.names, self.values, strict=True))


def encode_task(  # noqa: PLR0913 — keyword-only: the record, and each fact of the hash it lands in
    record: Record,
    *,
    task_uuid: str,
    plan_id: str,
    current: RedisTask | None,
    assigned_to: str | None,
    parent_id: str | None,
    now: datetime,
) -> HashWrite:
    """The write that makes the hash hold `record`, as tinytown's Task methods would.

    Fields the record does not cover (created_at, the plan tag's place among the tags) are kept
    from `current`; lifecycle times follow the state as tinytown's start/complete/fail do.
    """
    stamp = rfc3339(now)
    old = current.raw if current else {}
    new: dict[str, str] = {
        "id": task_uuid,
        "description": record.description,
        "state": record.status,
        "created_at": old.get("created_at", stamp),
        "updated_at": stamp,
        "tags": encode_tags(tags_with_plan(old.get("tags"), record.tags, plan_id)),
    }
    if current and current.state == record.status:
        new["state"] = old["state"]  # keep a legacy `in_flight` as it is when nothing changed
    optional: dict[str, str | None] = {
        "assigned_to": assigned_to,
        "parent_id": parent_id,
        "result": record.result,
        "started_at": old.get("started_at"),
        "completed_at": old.get("completed_at"),
    }
    state_changed = current is None or current.state != record.status
    if state_changed:
        if record.status == "running":
            optional["started_at"] = stamp
        elif record.status in TERMINAL_STATES:
            optional["completed_at"] = stamp
        elif record.status == "pending":
            optional["started_at"] = optional["completed_at"] = None
    new.update({name: value for name, value in optional.items() if value is not None})
    unset = tuple(name for name in OPTIONAL_FIELDS if optional[name] is None)
    return HashWrite(new, unset)


def tags_with_plan(current_tags_json: str | None, tags: tuple[str, ...], plan_id: str) -> list[str]:
    """The record's tags plus `plan:<id>`: where the hash had it, else last (as `tt sync` does)."""
    plan_tag = PLAN_TAG_PREFIX + plan_id
    position = len(tags)
    if current_tags_json is not None:
        try:
            old = decode_tags(current_tags_json)
        except BadHash:
            old = []
        if plan_tag in old:
            position = min(old.index(plan_tag), len(tags))
    return [*tags[:position], plan_tag, *tags[position:]]
