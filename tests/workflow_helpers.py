"""Helpers for the end-to-end workflow tests: agents that write Redis exactly as tinytown 0.10
does (whole-hash read, change, whole-hash write; from a fresh or a stale copy), editors that
save whole buffers, and readers of what the daemon recorded and logged."""

from __future__ import annotations

import contextlib
import json
import time
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import redis
import tomlkit

from tests.daemon_harness import (
    Daemon,
    wait_until,
)
from tests.helpers import run_cli
from ttsyncd.codec import task_key
from ttsyncd.identity import task_uuid_for
from ttsyncd.tinytown import register_agent, set_task

# ---------------------------------------------------------------------------- tinytown's side


def now_rfc3339() -> str:
    """`Utc::now().to_rfc3339()` as chrono writes it: nanoseconds, `+00:00`."""
    ns = time.time_ns()
    seconds, fraction = divmod(ns, 1_000_000_000)
    whole = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))
    return f"{whole}.{fraction:09d}+00:00"


def read_task(client: redis.Redis, town: str, task_uuid: str) -> dict[str, str]:
    """`get_task`: the whole hash (HGETALL), as a copy the caller may keep for later."""
    return {str(k): str(v) for k, v in client.hgetall(task_key(town, task_uuid)).items()}


def write_task(client: redis.Redis, town: str, fields: dict[str, str]) -> None:
    """`set_task`: ONE pipeline, not MULTI: HDEL of the unset optional fields, HSET of the rest."""
    set_task(client, town, fields)


Step = Callable[[dict[str, str]], dict[str, str]]


def assign(agent_uuid: str) -> Step:
    def step(fields: dict[str, str]) -> dict[str, str]:
        return {**fields, "assigned_to": agent_uuid, "state": "assigned",
                "updated_at": now_rfc3339()}  # fmt: skip

    return step


def start() -> Step:
    def step(fields: dict[str, str]) -> dict[str, str]:
        stamp = now_rfc3339()
        return {**fields, "state": "running", "started_at": stamp, "updated_at": stamp}

    return step


def finish(state: str, result: str) -> Step:
    """complete(result) / fail(error) / cancel(reason): state, result, completed_at."""
    assert state in ("completed", "failed", "cancelled")

    def step(fields: dict[str, str]) -> dict[str, str]:
        stamp = now_rfc3339()
        return {**fields, "state": state, "result": result, "completed_at": stamp,
                "updated_at": stamp}  # fmt: skip

    return step


def complete(result: str) -> Step:
    return finish("completed", result)


def fail(error: str) -> Step:
    return finish("failed", error)


def cancel(reason: str) -> Step:
    return finish("cancelled", reason)


def requeue() -> Step:
    """Back to pending: assigned_to and started_at removed."""

    def step(fields: dict[str, str]) -> dict[str, str]:
        changed = {**fields, "state": "pending", "updated_at": now_rfc3339()}
        changed.pop("assigned_to", None)
        changed.pop("started_at", None)
        return changed

    return step


def applied(fields: dict[str, str], *steps: Step) -> dict[str, str]:
    for step in steps:
        fields = step(fields)
    return fields


class Agent:
    """One tinytown agent of a town: registered under `name`, updating tasks by plan id."""

    def __init__(self, client: redis.Redis, town: str, name: str) -> None:
        self.client, self.town, self.name = client, town, name
        self.uuid = register_agent(client, town, name)

    def task_uuid(self, plan_id: str) -> str:
        return task_uuid_for(self.town, plan_id)

    def read(self, plan_id: str) -> dict[str, str]:
        copy = read_task(self.client, self.town, self.task_uuid(plan_id))
        assert copy, f"no task hash for {plan_id}"
        return copy

    def write(self, fields: dict[str, str]) -> dict[str, str]:
        write_task(self.client, self.town, fields)
        return fields

    def update(self, plan_id: str, *steps: Step) -> dict[str, str]:
        """A fresh read-change-write; returns what it wrote."""
        return self.write(applied(self.read(plan_id), *steps))

    def write_back(self, copy: dict[str, str], *steps: Step) -> dict[str, str]:
        """Write back a copy read earlier (maybe stale), with `steps` applied to it."""
        return self.write(applied(dict(copy), *steps))

    # tinytown's methods, each a whole read-change-write of its own
    def assign(self, plan_id: str) -> dict[str, str]:
        return self.update(plan_id, assign(self.uuid))

    def start(self, plan_id: str) -> dict[str, str]:
        return self.update(plan_id, assign(self.uuid), start())


# ---------------------------------------------------------------------------- the user's side


def entries(text: str) -> dict[str, dict[str, Any]]:
    """The plan's entries by id, as tomllib reads them."""
    return {entry["id"]: entry for entry in tomllib.loads(text).get("tasks", [])}


def file_entries(path: Path) -> dict[str, dict[str, Any]]:
    try:
        return entries(path.read_text(encoding="utf-8"))
    except (FileNotFoundError, tomllib.TOMLDecodeError):
        return {}  # mid-save: the caller's wait_until tries again


def file_entry(path: Path, plan_id: str) -> dict[str, Any] | None:
    return file_entries(path).get(plan_id)


def with_fields(text: str, plan_id: str, **changes: Any) -> str:
    """The text with one entry's keys set (None removes the key); tomlkit keeps the rest."""
    document = tomlkit.parse(text)
    for entry in document.get("tasks", []):
        if entry.get("id") == plan_id:
            for name, value in changes.items():
                if value is None:
                    entry.pop(name, None)
                else:
                    entry[name] = value
            return tomlkit.dumps(document)
    raise AssertionError(f"no entry {plan_id} in the text")


def without_entries(text: str, *plan_ids: str) -> str:
    """The text without those entries (header to the next header), as a person deletes them."""
    lines = text.splitlines(keepends=True)
    headers = [n for n, line in enumerate(lines) if line.strip() == "[[tasks]]"]
    kept: list[str] = lines[: headers[0]] if headers else lines
    removed: set[str] = set()
    for begin, end in zip(headers, [*headers[1:], len(lines)], strict=True):
        segment = "".join(lines[begin:end])
        plan_id = tomllib.loads(segment)["tasks"][0].get("id")
        if plan_id in plan_ids:
            removed.add(plan_id)
        else:
            kept.extend(lines[begin:end])
    assert removed == set(plan_ids), f"entries not found: {set(plan_ids) - removed}"
    return "".join(kept)


# ---------------------------------------------------------------------------- what ttsyncd says


def conflicts(town: Path, redis_url: str) -> dict[str, list[dict[str, Any]]]:
    """`ttsyncd conflicts --json`: {"recorded": [...], "pending": [...]}."""
    done = run_cli(town, "conflicts", "--json", redis_url=redis_url)
    assert done.returncode == 0, done.stderr
    lists: dict[str, list[dict[str, Any]]] = json.loads(done.stdout)
    return lists


def records_of(
    town: Path, redis_url: str, kind: str, plan_id: str | None = None, **match: Any
) -> list[dict[str, Any]]:
    """The recorded conflicts of `kind` (e.g. "stale", "held"), for `plan_id`, whose keys
    equal `match` (e.g. field="status", from_side="file")."""
    return [
        record
        for record in conflicts(town, redis_url)["recorded"]
        if record.get("kind") == kind
        and (plan_id is None or record.get("plan_id") == plan_id)
        and all(record.get(name) == value for name, value in match.items())
    ]


def stale_records(town: Path, redis_url: str, plan_id: str | None = None, **match: Any) -> list[
    dict[str, Any]
]:  # fmt: skip
    return records_of(town, redis_url, "stale", plan_id, **match)


def assert_stale_record(
    town: Path, redis_url: str, plan_id: str, field: str, from_side: str
) -> dict[str, Any]:
    """One stale record for that task and field, with both values and a time."""
    found = stale_records(town, redis_url, plan_id, field=field, from_side=from_side)
    every = conflicts(town, redis_url)
    assert found, f"no stale record of {plan_id}.{field} from the {from_side}: {every}"
    record = found[-1]
    for name in ("file", "redis", "time"):
        assert name in record, f"stale record without {name!r}: {record}"
    return record


def assert_no_stale_record(town: Path, redis_url: str) -> None:
    every = conflicts(town, redis_url)
    stale = [r for r in every["recorded"] if r.get("kind") == "stale"]
    assert not stale, f"a deliberate change was taken as stale: {stale}"
    assert every["pending"] == [], every["pending"]


def log_entries(daemon: Daemon) -> list[dict[str, Any]]:
    found = []
    for line in daemon.log().splitlines():
        with contextlib.suppress(json.JSONDecodeError):
            entry = json.loads(line)
            if isinstance(entry, dict):
                found.append(entry)
    return found


def log_lines(daemon: Daemon, word: str) -> list[dict[str, Any]]:
    """The daemon's JSON log lines whose event contains `word`."""
    return [e for e in log_entries(daemon) if word in str(e.get("event", ""))]


def assert_stale_logged(daemon: Daemon, plan_id: str, field: str) -> None:
    lines = log_lines(daemon, "stale")
    named = [e for e in lines if e.get("plan_id") == plan_id and e.get("field") == field]
    assert named, f"no log line about a stale write of {plan_id}.{field}; stale lines: {lines}"


def status_of(daemon: Daemon) -> dict[str, Any]:
    status = daemon.status()
    assert status is not None, f"no status from the daemon:\n{daemon.log()}"
    return status


def settled(daemon: Daemon, client: redis.Redis, town: str, timeout: float = 30.0) -> None:
    """Until the daemon is idle and the file and Redis agree, twice in a row a second apart."""
    from tests.helpers import plan_records, town_records

    agreed_before = False

    def agreed() -> bool:
        nonlocal agreed_before
        daemon.wait_idle()
        try:
            same = plan_records(daemon.town / "tasks.toml") == town_records(client, town)
        except Exception:  # a plan mid-save, an unreadable hash
            same = False
        if same and agreed_before:
            return True
        agreed_before = same
        time.sleep(0.5)
        return False

    wait_until(agreed, timeout, "the file and Redis to agree")


def differences(path: Path, client: redis.Redis, town: str) -> list[str]:
    from tests.helpers import plan_records, town_records

    left, right = plan_records(path), town_records(client, town)
    return [
        f"{plan_id}: file {left.get(plan_id)} != redis {right.get(plan_id)}"
        for plan_id in sorted(set(left) | set(right))
        if left.get(plan_id) != right.get(plan_id)
    ]
