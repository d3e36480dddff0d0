"""What ttsyncd persists under `<town>/.tt/ttsyncd/` (0700, files 0600): the base of the merge,
one per town and Redis endpoint, and the log of conflicts."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Set as AbstractSet
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from ttsyncd.base import BaseTask, Change, OldCopy
from ttsyncd.fsutil import replace_atomically
from ttsyncd.merge import Conflict
from ttsyncd.model import Value, shared_tags, shared_word

# 2: tasks carry their recent history (stale writes), `set_aside` and `refused_deletions`.
# A version 1 base loads as one with no history.
STATE_VERSION = 2
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
    # plan id -> the latest stale or held writes set aside for it, one per field, until
    # `resolve` applies or dismisses them.
    set_aside: dict[str, list[Conflict]] = field(default_factory=dict)
    refused: RefusedDeletions | None = None  # a mass deletion refused, until the file changes
    # A Cluster's epoch markers other than redis_epoch's, one per primary (markers.cluster_markers):
    # marker key -> the token it held when this base was agreed.
    redis_markers: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class RefusedDeletions:
    """Deletions the guard refused, and the plan text (its digest) they were refused for: the
    refusal stands, whatever else happens, until the user saves another text."""

    plan_ids: frozenset[str]
    plan_digest: str
    message: str


def plan_digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def state_file(state_dir: Path, town: str, endpoint_identity: str) -> Path:
    """One base per town and Redis: another Redis starts from no base, never from "all deleted"."""
    digest = hashlib.sha256(f"{town}\0{endpoint_identity}".encode()).hexdigest()[:16]
    return state_dir / f"base-{digest}.json"


class StateStore:
    """The state of one town on one Redis, read from disk once and then kept: a daemon syncs
    often, and the base of a big town is megabytes of JSON.

    A save of a few tasks appends them to a journal beside the base (rewriting 10,000 tasks'
    JSON costs ~50 ms); the base is rewritten whole now and then. Journal lines carry the
    base's generation, so lines a rewrite already holds are never applied twice."""

    def __init__(self, state_dir: Path, town: str, endpoint_identity: str, endpoint: str) -> None:
        self.path = state_file(state_dir, town, endpoint_identity)
        self.journal = self.path.with_suffix(".journal")
        self.town, self.endpoint = town, endpoint  # saved alongside, for a person reading it
        self.cached: SyncState | None = None
        self.generation = 0
        self.journal_lines = 0

    def load(self) -> SyncState:
        if self.cached is None:
            self.cached, self.generation = load_state(self.path)
            self.journal_lines = replay_journal(self.journal, self.cached, self.generation)
        return self.cached

    def save(
        self,
        state: SyncState,
        touched: AbstractSet[str] | None = None,
        before: SyncState | None = None,
    ) -> None:
        """Persist `state`; `touched`: the only plan ids whose entries may differ from the
        state last saved (None: any). `before` (with `touched`): `state` is the cached state,
        updated in place (base_state.advance), and `before` what it held for those ids, with its
        whole-state fields (epoch, markers, refusal, set-aside) as they were."""
        old = self.load() if before is None else before
        small = touched is not None and len(touched) <= JOURNAL_LINE_TASKS
        if touched is not None and small and self.generation and self.journal_lines < JOURNAL_LIMIT:
            delta = journal_delta(old, state, touched)
            if delta is None:
                self.cached = state
                return
            ensure_private_dir(self.path.parent)
            line = json.dumps({"generation": self.generation, **delta}, ensure_ascii=False)
            # Appended without fsync: a process crash keeps it; a power loss may take the last
            # lines, and an older base only makes the next sync compare more (nothing is lost:
            # both sides still hold every edit).
            fd = os.open(self.journal, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            with os.fdopen(fd, "a", encoding="utf-8") as out:
                out.write(line + "\n")
            self.journal_lines += 1
            self.cached = state
            return
        if touched is None and state == old and not self.journal_lines:
            return
        generation = self.generation + 1  # (counted once saved: a failed save changes nothing)
        save_state(self.path, state, town=self.town, endpoint=self.endpoint, generation=generation)
        self.generation = generation
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.journal)
        self.journal_lines = 0
        self.cached = state


JOURNAL_LIMIT = 2_000  # lines; then the base is rewritten whole
JOURNAL_LINE_TASKS = 1_000  # a sync that merged more tasks rewrites the base


def task_entry(state: SyncState, plan_id: str) -> dict[str, Any] | None:
    """One task's entry in the saved base (None: not in the base)."""
    task = state.base.get(plan_id)
    if task is None:
        return None
    return {
        "fields": task.fields,
        **({"uuid": state.uuids[plan_id]} if plan_id in state.uuids else {}),
        **({"tombstone": True} if task.tombstone else {}),
        **({"history": [history_entry(c) for c in task.history]} if task.history else {}),
        **({"old_copy": old_copy_entry(task.old_copy)} if task.old_copy else {}),
    }


def history_entry(change: Change) -> dict[str, Any]:
    return {
        "side": change.side,
        "before": dict(change.before),
        **({"created": True} if change.created else {}),
        **({"overtaken": sorted(change.overtaken)} if change.overtaken else {}),
        **({"old_copy": old_copy_entry(change.old_copy)} if change.old_copy else {}),
    }


def old_copy_entry(old_copy: OldCopy) -> dict[str, Any]:
    return {"side": old_copy.side, "values": dict(old_copy.values)}


def old_copy_from(saved: Any) -> OldCopy | None:
    if not isinstance(saved, dict):
        return None
    values = {name: freeze(value) for name, value in saved["values"].items()}
    return OldCopy(saved["side"], values)


def journal_delta(
    old: SyncState, new: SyncState, touched: AbstractSet[str]
) -> dict[str, Any] | None:
    """What a journal line must say to turn `old` into `new`; None when they are the same."""
    tasks: dict[str, Any] = {}
    pending: dict[str, Any] = {}
    agents: dict[str, Any] = {}
    set_aside: dict[str, Any] = {}
    for plan_id in touched:
        before, after = task_entry(old, plan_id), task_entry(new, plan_id)
        if before != after:
            tasks[plan_id] = after
        if old.pending.get(plan_id) != new.pending.get(plan_id):
            conflicts = new.pending.get(plan_id)
            pending[plan_id] = None if conflicts is None else [asdict(c) for c in conflicts]
        if old.unresolved_agents.get(plan_id) != new.unresolved_agents.get(plan_id):
            agents[plan_id] = new.unresolved_agents.get(plan_id)
        if old.set_aside.get(plan_id) != new.set_aside.get(plan_id):
            records = new.set_aside.get(plan_id)
            set_aside[plan_id] = None if records is None else [asdict(c) for c in records]
    refused_changed = old.refused != new.refused
    same_epoch = old.redis_epoch == new.redis_epoch and old.redis_markers == new.redis_markers
    if not (tasks or pending or agents or set_aside or refused_changed) and same_epoch:
        return None
    return {
        "tasks": tasks,
        "pending": pending,
        "unresolved_agents": agents,
        "redis_epoch": new.redis_epoch,
        **({"redis_markers": new.redis_markers} if new.redis_markers else {}),
        "set_aside": set_aside,
        **({"refused": refused_json(new.refused)} if refused_changed else {}),
    }


def refused_json(refused: RefusedDeletions | None) -> dict[str, Any] | None:
    if refused is None:
        return None
    return {
        "plan_ids": sorted(refused.plan_ids),
        "plan_digest": refused.plan_digest,
        "message": refused.message,
    }


def refused_from(saved: Any) -> RefusedDeletions | None:
    if not isinstance(saved, dict):
        return None
    return RefusedDeletions(
        frozenset(saved["plan_ids"]), str(saved["plan_digest"]), str(saved["message"])
    )


def replay_journal(path: Path, state: SyncState, generation: int) -> int:
    """Apply the journal's lines of this generation to `state`; how many there were. A torn
    last line (a crash mid-append) is ignored."""
    try:
        lines = json_lines(path)
    except FileNotFoundError:
        return 0
    applied = 0
    for line in lines:
        try:
            delta = json.loads(line)
        except json.JSONDecodeError:
            continue
        if not isinstance(delta, dict) or delta.get("generation") != generation:
            continue
        applied += 1
        apply_delta(state, delta)
    return applied


def apply_delta(state: SyncState, delta: dict[str, Any]) -> None:
    """One journal line applied to `state`: each key it names takes the line's value (None:
    gone)."""
    for plan_id, entry in delta["tasks"].items():
        state.base.pop(plan_id, None)
        state.uuids.pop(plan_id, None)
        if entry is not None:
            state.base[plan_id] = base_task(entry)
            if isinstance(entry.get("uuid"), str):
                state.uuids[plan_id] = entry["uuid"]
    for plan_id, conflicts in delta["pending"].items():
        state.pending.pop(plan_id, None)
        if conflicts is not None:
            state.pending[plan_id] = [conflict(c) for c in conflicts]
    for plan_id, name in delta["unresolved_agents"].items():
        state.unresolved_agents.pop(plan_id, None)
        if name is not None:
            state.unresolved_agents[plan_id] = name
    for plan_id, records in delta.get("set_aside", {}).items():
        state.set_aside.pop(plan_id, None)
        if records is not None:
            state.set_aside[plan_id] = [conflict(c) for c in records]
    if "refused" in delta:
        state.refused = refused_from(delta["refused"])
    state.redis_epoch = delta["redis_epoch"]
    state.redis_markers = dict(delta.get("redis_markers", {}))


def ensure_private_dir(state_dir: Path) -> None:
    state_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(state_dir, 0o700)


def freeze(value: Any) -> Value:
    return tuple(value) if isinstance(value, list) else value


def field_value(name: str, value: Any) -> Value:
    """A saved field's value; what many tasks repeat (a status, an agent, tags) as the one
    object the plan's entries and the mirror hold too (model.shared_*)."""
    if name == "tags" and isinstance(value, list):
        return shared_tags(value)
    if name in ("status", "agent") and (value is None or isinstance(value, str)):
        return shared_word(value)
    return freeze(value)


def base_task(entry: dict[str, Any]) -> BaseTask:
    return BaseTask.of(
        {name: field_value(name, value) for name, value in entry["fields"].items()},
        tombstone=entry.get("tombstone", False),
        history=tuple(
            Change(
                change["side"],
                {name: field_value(name, value) for name, value in change["before"].items()},
                bool(change.get("created", False)),
                frozenset(change.get("overtaken", ())),
                old_copy_from(change.get("old_copy")),
            )
            for change in entry.get("history", ())
        ),
        old_copy=old_copy_from(entry.get("old_copy")),
    )


def conflict(saved: dict[str, Any]) -> Conflict:
    return Conflict(**{**saved, **{k: freeze(saved[k]) for k in ("base", "file", "redis")}})


def load_state(path: Path) -> tuple[SyncState, int]:
    """The saved state and its generation."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return SyncState(), 0
    tasks = data.get("tasks", {})
    base = {plan_id: base_task(entry) for plan_id, entry in tasks.items()}
    pending = {
        plan_id: [conflict(c) for c in items] for plan_id, items in data.get("pending", {}).items()
    }
    uuids = {k: entry["uuid"] for k, entry in tasks.items() if isinstance(entry.get("uuid"), str)}
    set_aside = {
        plan_id: [conflict(c) for c in items]
        for plan_id, items in data.get("set_aside", {}).items()
    }
    state = SyncState(
        base, dict(data.get("unresolved_agents", {})), pending, uuids, data.get("redis_epoch"),
        set_aside, refused_from(data.get("refused")), dict(data.get("redis_markers", {})),
    )  # fmt: skip
    return state, int(data.get("generation", 0))


def save_state(
    path: Path, state: SyncState, *, town: str, endpoint: str, generation: int = 0
) -> None:
    head = {"version": STATE_VERSION, "generation": generation, "town": town, "redis": endpoint}
    tail = {
        "redis_epoch": state.redis_epoch,
        "redis_markers": state.redis_markers,
        "unresolved_agents": state.unresolved_agents,
        "pending": {k: [asdict(c) for c in v] for k, v in state.pending.items()},
        "set_aside": {k: [asdict(c) for c in v] for k, v in state.set_aside.items()},
        "refused": refused_json(state.refused),
    }
    # The JSON of {**head, "tasks": {...}, **tail}, the tasks encoded a chunk at a time: the
    # entries of a whole big town built at once (~0.7 KB each) would swell the heap for good.
    encode = _STATE_JSON.encode
    plan_ids = sorted(state.base)
    tasks = [
        ",".join(f"{encode(i)}:{encode(task_entry(state, i))}" for i in plan_ids[n : n + 1000])
        for n in range(0, len(plan_ids), 1000)
    ]
    text = f'{encode(head)[:-1]},"tasks":{{{",".join(tasks)}}},{encode(tail)[1:]}'
    write_private(path, text)


_STATE_JSON = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))


def write_private(path: Path, text: str) -> None:
    """Atomically replace `path` with `text`, readable by its owner only."""
    ensure_private_dir(path.parent)
    replace_atomically(path, text.encode("utf-8"), mode=0o600)


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
    return [json.loads(line) for line in json_lines(path) if line]


def json_lines(path: Path) -> list[str]:
    """The lines of a file of JSON lines. Split at "\n" only: str.splitlines() also splits at
    U+2028 and the like, which json.dumps(ensure_ascii=False) leaves inside strings."""
    return path.read_text(encoding="utf-8").split("\n")
