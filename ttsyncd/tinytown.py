"""Writes made the way tinytown 0.10 makes them, for the demo and the tests.

`Channel::set_task` sends HDEL of the unset optional fields and HSET of the rest as one
pipeline, *not* wrapped in MULTI: a reader can land between the two commands.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from datetime import UTC, datetime

from ttsyncd.codec import OPTIONAL_FIELDS, agent_key_prefix, encode_tags, rfc3339, task_key
from ttsyncd.topology import RedisClient


def set_task(client: RedisClient, town: str, fields: Mapping[str, str]) -> None:
    """Store a task hash as tinytown does: HDEL unset optional fields, then HSET the others."""
    unset = [name for name in OPTIONAL_FIELDS if name not in fields]
    pipe = client.pipeline(transaction=False)
    key = task_key(town, fields["id"])
    if unset:
        pipe.hdel(key, *unset)
    pipe.hset(key, mapping=dict(fields))  # type: ignore[arg-type]
    pipe.execute()


def new_task(description: str, tags: list[str], now: datetime | None = None) -> dict[str, str]:
    """A task as `Task::new` makes it: pending, tags as compact JSON."""
    stamp = rfc3339(now or datetime.now(UTC))
    return {
        "id": str(uuid.uuid4()),
        "description": description,
        "state": "pending",
        "created_at": stamp,
        "updated_at": stamp,
        "tags": encode_tags(tags),
    }


def start_task(client: RedisClient, town: str, task_uuid: str, agent_uuid: str) -> None:
    """assign + start, as an agent picking the task up does: assigned_to, running, started_at."""
    fields = {str(k): str(v) for k, v in client.hgetall(task_key(town, task_uuid)).items()}
    stamp = rfc3339(datetime.now(UTC))
    fields.update(assigned_to=agent_uuid, state="running", started_at=stamp, updated_at=stamp)
    set_task(client, town, fields)


def register_agent(client: RedisClient, town: str, name: str) -> str:
    """An agent hash as `Channel::set_agent_state` stores it; returns its uuid."""
    agent_uuid = str(uuid.uuid4())
    stamp = rfc3339(datetime.now(UTC))
    client.hset(
        agent_key_prefix(town) + agent_uuid,
        mapping={
            "id": agent_uuid, "name": name, "agent_type": "worker", "state": "idle",
            "cli": "claude", "created_at": stamp, "last_heartbeat": stamp,
            "tasks_completed": "0", "rounds_completed": "0",
        },
    )  # fmt: skip
    return agent_uuid
