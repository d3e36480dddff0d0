"""What ttsyncd persists under `<town>/.tt/ttsyncd/` (0700, files 0600): the base of the merge,
one per town and Redis endpoint, and the log of conflicts."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from ttsyncd.merge import BaseTask, Conflict
from ttsyncd.model import Value

STATE_VERSION = 1
CONFLICTS_FILE = "conflicts.jsonl"


@dataclass
class SyncState:
    base: dict[str, BaseTask] = field(default_factory=dict)
    # plan id -> agent name that no agent hash carried when it was pushed: Redis holds no
    # `assigned_to` for it, which must not read as "Redis removed the agent".
    unresolved_agents: dict[str, str] = field(default_factory=dict)
    pending: dict[str, list[Conflict]] = field(default_factory=dict)  # left for the user
    # plan id -> task uuid: which hash a synced entry is, even when that hash cannot be read.
    uuids: dict[str, str] = field(default_factory=dict)
    redis_epoch: str | None = None  # the marker of the Redis this base was agreed with


def state_file(state_dir: Path, town: str, endpoint_identity: str) -> Path:
    """One base per town and Redis: another Redis starts from no base, never from "all deleted"."""
    digest = hashlib.sha256(f"{town}\0{endpoint_identity}".encode()).hexdigest()[:16]
    return state_dir / f"base-{digest}.json"


class StateStore:
    """The state of one town on one Redis, read from disk once and then kept: a daemon syncs
    often, and the base of a big town is megabytes of JSON."""

    def __init__(self, state_dir: Path, town: str, endpoint_identity: str, endpoint: str) -> None:
        self.path = state_file(state_dir, town, endpoint_identity)
        self.town, self.endpoint = town, endpoint  # saved alongside, for a person reading it
        self.cached: SyncState | None = None

    def load(self) -> SyncState:
        if self.cached is None:
            self.cached = load_state(self.path)
        return self.cached

    def save(self, state: SyncState) -> None:
        save_state(self.path, state, town=self.town, endpoint=self.endpoint)
        self.cached = state


def ensure_private_dir(state_dir: Path) -> None:
    state_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(state_dir, 0o700)


def freeze(value: Any) -> Value:
    return tuple(value) if isinstance(value, list) else value


def load_state(path: Path) -> SyncState:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return SyncState()
    base = {
        plan_id: BaseTask(
            {name: freeze(value) for name, value in entry["fields"].items()},
            tombstone=entry.get("tombstone", False),
        )
        for plan_id, entry in data.get("tasks", {}).items()
    }
    pending = {
        plan_id: [
            Conflict(**{**c, **{k: freeze(c[k]) for k in ("base", "file", "redis")}}) for c in items
        ]
        for plan_id, items in data.get("pending", {}).items()
    }
    uuids = {
        plan_id: entry["uuid"]
        for plan_id, entry in data.get("tasks", {}).items()
        if isinstance(entry.get("uuid"), str)
    }
    return SyncState(
        base, dict(data.get("unresolved_agents", {})), pending, uuids, data.get("redis_epoch")
    )


def save_state(path: Path, state: SyncState, *, town: str, endpoint: str) -> None:
    data = {
        "version": STATE_VERSION,
        "town": town,
        "redis": endpoint,
        "tasks": {
            plan_id: {
                "fields": dict(task.fields),
                **({"uuid": state.uuids[plan_id]} if plan_id in state.uuids else {}),
                **({"tombstone": True} if task.tombstone else {}),
            }
            for plan_id, task in sorted(state.base.items())
        },
        "redis_epoch": state.redis_epoch,
        "unresolved_agents": state.unresolved_agents,
        "pending": {k: [asdict(c) for c in v] for k, v in state.pending.items()},
    }
    write_private(path, json.dumps(data, ensure_ascii=False, separators=(",", ":")))


def write_private(path: Path, text: str) -> None:
    """Atomically replace `path` with `text`, readable by its owner only."""
    ensure_private_dir(path.parent)
    fd, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(text)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp)
        raise


def append_conflicts(
    state_dir: Path, conflicts: list[Conflict], *, policy: str, now: datetime
) -> None:
    """Append each conflict with both values, the winner and the time: nothing is ever lost."""
    if not conflicts:
        return
    ensure_private_dir(state_dir)
    path = state_dir / CONFLICTS_FILE
    lines = [
        json.dumps({"time": now.isoformat(), "policy": policy, **asdict(c)}, ensure_ascii=False)
        for c in conflicts
    ]
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    with os.fdopen(fd, "a", encoding="utf-8") as out:
        out.write("\n".join(lines) + "\n")


def read_conflicts(state_dir: Path) -> list[dict[str, Any]]:
    path = state_dir / CONFLICTS_FILE
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]
