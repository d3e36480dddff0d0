"""Concurrency suite of "nothing lost": the real daemon (`ttsyncd run` in a subprocess) on a
redis-server of the test's own, raced by editors saving tasks.toml and by agents writing Redis
the way tinytown does, at the same time, on the same tasks.

Short counts by default (CI); full counts with `pytest --long` or TTSYNCD_LONG=1. Every check is
on final states and counts, never on how long something took. Set TTSYNCD_SEED to replay a
run's choices (the timing of a race cannot be replayed).
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import random
import re
import subprocess
import sys
import threading
import time
import tomllib
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import redis
import tomlkit

from tests.daemon_harness import QUIET_S, Daemon, FileWrites, redis_server, wait_until
from tests.helpers import make_town, plan_records, run_cli, town_records, write_counts
from tests.workflow_helpers import (
    Step,
    applied,
    assign,
    complete,
    fail,
    read_task,
    requeue,
    write_task,
)
from tests.workflow_helpers import start as start_step
from ttsyncd.codec import backlog_key, rfc3339, task_key
from ttsyncd.fsutil import exchange  # the editor's atomic swap is the daemon's own
from ttsyncd.identity import task_uuid_for
from ttsyncd.model import STATES, TERMINAL_STATES, Record, Value
from ttsyncd.tinytown import new_task, register_agent, set_task

SETTLE_TIMEOUT_S = 30.0  # generous: a 2-core CI box running three daemons
STUCK_S = 4.0  # the same disagreement, daemons idle all along: nothing will change it
QUIET_WINDOW_S = 3.0


def seeded_rng(name: str) -> tuple[random.Random, int]:
    seed = int(os.environ.get("TTSYNCD_SEED") or random.SystemRandom().randrange(2**32))
    print(f"[{name}] TTSYNCD_SEED={seed}")
    return random.Random(seed), seed


# ---------------------------------------------------------------------------- daemons


@contextmanager
def running_daemons(towns: list[Path], redis_url: str) -> Iterator[list[Daemon]]:
    """One daemon per town, each terminated in the end whatever happened; when the body went
    through, every daemon must have exited 0 (SIGTERM flushes and exits cleanly)."""
    daemons: list[Daemon] = []
    try:
        for town in towns:
            daemons.append(Daemon(town, redis_url))
        for daemon in daemons:
            daemon.wait_ready()
        yield daemons
    finally:
        codes: list[int | None] = []
        for daemon in daemons:
            try:
                codes.append(daemon.terminate(timeout=10))
            except Exception:  # never leave a daemon behind, even one that hangs
                daemon.process.kill()
                daemon.process.wait()
                codes.append(None)
    assert codes == [0] * len(daemons), f"daemon exit codes {codes}\n{log_tails(daemons)}"


def log_tails(daemons: list[Daemon], lines: int = 40) -> str:
    return "\n".join(
        f"--- {d.log_path.name} (last {lines} lines)\n" + "\n".join(d.log().splitlines()[-lines:])
        for d in daemons
    )


def log_entries(daemon: Daemon) -> list[dict[str, Any]]:
    entries = []
    for line in daemon.log().splitlines():
        with contextlib.suppress(json.JSONDecodeError):
            entries.append(json.loads(line))
    return entries


def count_log(daemon: Daemon, match: Callable[[dict[str, Any]], bool]) -> int:
    return sum(1 for entry in log_entries(daemon) if match(entry))


def wait_for_log(
    daemon: Daemon, match: Callable[[dict[str, Any]], bool], more_than: int = 0
) -> None:
    """Until the daemon has logged more than `more_than` lines that `match`."""
    wait_until(lambda: count_log(daemon, match) > more_than, what="a daemon log line")


def pull_wrote_file(entry: dict[str, Any]) -> bool:
    return entry.get("direction") == "pull" and bool(entry.get("file_written"))


def log_events(daemon: Daemon) -> Counter[str]:
    """How often each event (message) appears in the daemon's JSON log."""
    return Counter(str(entry.get("event")) for entry in log_entries(daemon))


# ---------------------------------------------------------------------------- both sides, read


def differences(left: dict[str, Record], right: dict[str, Record]) -> list[str]:
    return [
        f"{plan_id}: {left.get(plan_id)} != {right.get(plan_id)}"
        for plan_id in sorted(set(left) | set(right))
        if left.get(plan_id) != right.get(plan_id)
    ]


class NotSettled(AssertionError):
    """The files and Redis disagree and nothing is moving any more."""


def settle(
    daemons: list[Daemon], client: redis.Redis, town: str, timeout: float = SETTLE_TIMEOUT_S
) -> dict[str, Record]:
    """Wait for quiescence: every daemon idle, every file equal to Redis, and still so after a
    quiet second (a sync under way would change one side or the other). Returns Redis's tasks.
    Raises NotSettled when the same disagreement outlives STUCK_S of idle daemons (they will not
    fix it by themselves); AssertionError when things still move at the timeout (ping-pong)."""
    deadline = time.monotonic() + timeout
    previous: dict[str, Record] | None = None
    same_problems: list[str] = []
    stuck_since = time.monotonic()
    while True:
        for daemon in daemons:
            daemon.wait_idle()
        problems: list[str] = []
        in_redis = town_records(client, town)
        for daemon in daemons:
            try:
                diff = differences(plan_records(daemon.town / "tasks.toml"), in_redis)
            except Exception as error:  # a plan that does not parse is a difference too
                diff = [repr(error)]
            problems += [f"{daemon.town.name}/tasks.toml vs Redis: {line}" for line in diff]
        if not problems and in_redis == previous:
            return in_redis
        previous = None if problems else in_redis
        if not problems or problems != same_problems:
            same_problems, stuck_since = problems, time.monotonic()
        if problems and time.monotonic() - stuck_since > STUCK_S:
            raise NotSettled(
                "files and Redis disagree, and idle daemons leave it so:\n" + "\n".join(problems)
            )
        if time.monotonic() > deadline:
            raise AssertionError(
                f"still changing after {timeout} s:\n" + "\n".join([*problems, log_tails(daemons)])
            )
        time.sleep(QUIET_S)


def recorded_conflicts(town: Path, redis_url: str) -> list[dict[str, Any]]:
    """`ttsyncd conflicts --json` (through the running daemon's socket)."""
    done = run_cli(town, "conflicts", "--json", redis_url=redis_url)
    assert done.returncode == 0, done.stderr
    lists = json.loads(done.stdout)
    assert lists["pending"] == [], lists["pending"]  # `owner` settles every conflict
    return list(lists["recorded"])


def frozen(value: Any) -> Value:
    return tuple(value) if isinstance(value, list) else value


# ---------------------------------------------------------------------------- the file side


@dataclass
class Saved:
    base: str  # the text the saved edit was made on: what the editor saw
    races: int  # saves redone because the daemon wrote the file at the same moment


def careful_save(path: Path, edit: Callable[[str], str | None], style: str) -> Saved | None:
    """Save an edit of the file as an editor does (`rename`: write a temp file and rename it
    over; `in-place`: truncate and rewrite), carefully: the text is read right before saving and
    compared once more at the last moment (as vim's "file changed since reading"), so the
    editor never knowingly saves over the daemon's write. What remains is a window of
    microseconds; the rename style closes it by swapping atomically and checking what it
    replaced, the in-place style by checking that it wrote the inode the path still names: a
    save that raced the daemon is redone on the daemon's text, so any loss left is the daemon's.
    None when `edit` finds nothing to do (e.g. its entry was deleted meanwhile)."""
    races = 0
    base = current = path.read_bytes().decode()
    while True:
        new = edit(base)
        if new is None:
            return None
        if style == "in-place":
            with open(path, "r+b") as out:
                if out.read().decode() != current:
                    races += 1
                    base = current = path.read_bytes().decode()
                    continue
                out.seek(0)
                out.truncate()
                out.write(new.encode())
                out.flush()
                landed = os.fstat(out.fileno()).st_ino == os.stat(path).st_ino
            if landed:
                return Saved(base, races)
            races += 1  # the daemon renamed its file over between our check and our write
            base = current = path.read_bytes().decode()
            continue
        temp = path.with_name(f".{path.name}.editor~")
        temp.write_bytes(new.encode())
        if path.read_bytes().decode() != current:
            temp.unlink()
            races += 1
            base = current = path.read_bytes().decode()
            continue
        if not exchange(temp, path):
            os.replace(temp, path)
            return Saved(base, races)
        replaced = temp.read_bytes().decode()
        temp.unlink()
        if replaced == current:
            return Saved(base, races)
        # The daemon wrote right after our check and we just replaced its text: redo our edit
        # on top of it at once (before the daemon even notices the file changed).
        races += 1
        base, current = replaced, new


def save_by_rename(path: Path, text: str) -> None:
    temp = path.with_name(f".{path.name}.editor~")
    temp.write_text(text, encoding="utf-8")
    os.replace(temp, path)


def plan_values(text: str) -> dict[str, dict[str, Any]]:
    """Entries by id, as tomllib reads them."""
    return {entry["id"]: entry for entry in tomllib.loads(text).get("tasks", [])}


def set_entry_fields(text: str, plan_id: str, changes: dict[str, Any]) -> str | None:
    """The text with the entry's keys set (tomlkit keeps everything else as it was)."""
    document = tomlkit.parse(text)
    for entry in document.get("tasks", []):
        if entry.get("id") == plan_id:
            for key, value in changes.items():
                entry[key] = value
            return tomlkit.dumps(document)
    return None


_HEADER = re.compile(r"^\s*\[\[\s*tasks\s*\]\]\s*$")


def remove_entry(text: str, plan_id: str) -> str | None:
    """The text without the entry (from its header to the next one), as a person deletes it."""
    lines = text.splitlines(keepends=True)
    headers = [n for n, line in enumerate(lines) if _HEADER.match(line)]
    for start, stop in zip(headers, [*headers[1:], len(lines)], strict=True):
        segment = "".join(lines[start:stop])
        if tomllib.loads(segment)["tasks"][0].get("id") == plan_id:
            return "".join(lines[:start] + lines[stop:])
    return None


def entry_edit(plan_id: str, changes: dict[str, Any]) -> Callable[[str], str | None]:
    return lambda text: set_entry_fields(text, plan_id, changes)


def append_entry(text: str, plan_id: str, description: str, tags: list[str]) -> str:
    tail = "" if text.endswith("\n") else "\n"
    return (
        f'{text}{tail}\n[[tasks]]\nid = "{plan_id}"\ndescription = "{description}"\n'
        f"tags = {json.dumps(tags)}\n"
    )


# ---------------------------------------------------------------------------- the Redis side


def tinytown_update(
    client: redis.Redis, town: str, task_uuid: str, change: Callable[[dict[str, str]], None]
) -> dict[str, str] | None:
    """An agent's update as tinytown makes it: read the task, change it, store it with
    `set_task` (HDEL of the unset optional fields + HSET, one pipeline, no MULTI). A careful
    agent reads the hash once more right before storing, so it never knowingly writes back a
    stale copy over the daemon's write. Returns the hash it read (None: the task is gone)."""
    key = task_key(town, task_uuid)
    for _ in range(100):
        before = {str(k): str(v) for k, v in client.hgetall(key).items()}
        if not before:
            return None
        fields = dict(before)
        change(fields)
        if client.hgetall(key) != before:
            continue
        set_task(client, town, fields)
        return before
    raise AssertionError(f"{key} never held still long enough to update it")


def lifecycle(fields: dict[str, str], state: str) -> None:
    """State change as tinytown's Task methods make it: times follow the state."""
    stamp = rfc3339(datetime.now(UTC))
    fields["state"] = state
    fields["updated_at"] = stamp
    if state == "running":
        fields["started_at"] = stamp
    elif state in TERMINAL_STATES:
        fields["completed_at"] = stamp
    elif state == "pending":
        fields.pop("started_at", None)
        fields.pop("completed_at", None)


def task_change(
    state: str, result: str, description: str | None = None
) -> Callable[[dict[str, str]], None]:
    """An agent's change of a task: a new state (times follow it), a result, maybe new words."""

    def change(fields: dict[str, str]) -> None:
        lifecycle(fields, state)
        fields["result"] = result
        if description is not None:
            fields["description"] = description

    return change


# ---------------------------------------------------------------------------- 1. file and agent

RACE_TOWN = "race"
RACE_TASKS = 7


def race_plan() -> str:
    parts = ['# The plan two sides race on\n[meta]\ndescription = "race"\n']
    for n in range(1, RACE_TASKS + 1):
        parts.append(
            f'\n# task {n}\n[[tasks]]\nid = "t{n}"\ndescription = "Task {n}"\ntags = ["seed"]\n'
        )
    return "".join(parts)


@dataclass(frozen=True)
class Write:
    side: str  # "file" | "redis"
    plan_id: str
    field: str
    value: Value
    seen: Value  # that field's value on the writer's own side right before the write


@dataclass
class Journal:
    """Every value each side wrote, in order per side (each side is one thread)."""

    writes: list[Write] = field(default_factory=list)
    saves: int = 0  # file saves
    updates: int = 0  # tinytown updates
    races: int = 0  # saves redone because the daemon wrote the file at that very moment
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, *writes: Write) -> None:
        with self.lock:
            self.writes.extend(writes)


def file_writer(path: Path, rounds: int, rng: random.Random, journal: Journal) -> None:
    """Edits descriptions and tags as a person does, in both save styles."""
    for n in range(rounds):
        plan_id = f"t{rng.randrange(1, RACE_TASKS + 1)}"
        which = rng.choice(["description", "description", "tags", "both"])
        changes: dict[str, Any] = {}
        if which in ("description", "both"):
            changes["description"] = f"file {plan_id} #{n}"
        if which in ("tags", "both"):
            changes["tags"] = [f"f{n}", "seed"]
        style = rng.choice(["rename", "in-place"])
        saved = careful_save(path, entry_edit(plan_id, changes), style)
        assert saved is not None
        seen = plan_values(saved.base)[plan_id]
        absent: dict[str, Any] = {"tags": []}  # what a missing key means
        journal.add(
            *(
                Write(
                    "file", plan_id, name, frozen(value), frozen(seen.get(name, absent.get(name)))
                )
                for name, value in changes.items()
            )
        )
        with journal.lock:
            journal.saves += 1
            journal.races += saved.races
        time.sleep(rng.uniform(0.0, 0.25))


def agent(client: redis.Redis, rounds: int, rng: random.Random, journal: Journal) -> None:
    """Moves tasks through their states with a result each time, sometimes rewording one."""
    for n in range(rounds):
        plan_id = f"t{rng.randrange(1, RACE_TASKS + 1)}"
        state = rng.choice([s for s in STATES if s != "cancelled"])
        result = f"agent {plan_id} r{n}"
        description = f"agent {plan_id} #{n}" if rng.random() < 0.3 else None
        change = task_change(state, result, description)
        before = tinytown_update(client, RACE_TOWN, task_uuid_for(RACE_TOWN, plan_id), change)
        assert before is not None
        writes = [
            Write("redis", plan_id, "status", state, before["state"]),
            Write("redis", plan_id, "result", result, before.get("result")),
        ]
        if description is not None:
            writes.append(
                Write("redis", plan_id, "description", description, before["description"])
            )
        journal.add(*writes)
        with journal.lock:
            journal.updates += 1
        time.sleep(rng.uniform(0.0, 0.25))


def run_threads(*targets: Callable[[], None]) -> None:
    """Run the sides at the same time; re-raise the first failure of any."""
    errors: list[BaseException] = []

    def guarded(target: Callable[[], None]) -> None:
        try:
            target()
        except BaseException as error:  # reported by the main thread
            errors.append(error)

    threads = [threading.Thread(target=guarded, args=(t,)) for t in targets]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]


def lost_writes(
    journal: Journal, final: dict[str, Record], conflicts: list[dict[str, Any]]
) -> list[str]:
    """For each (task, field), the last value each side wrote must be the final value, a value
    of a recorded conflict, or one the other side saw on its side and then replaced (an
    ordinary later edit, not a loss). Earlier values replaced by the same side do not count."""
    last: dict[tuple[str, str, str], Write] = {}
    replaced_knowingly: set[tuple[str, str, str, Value]] = set()
    for write in journal.writes:
        last[(write.side, write.plan_id, write.field)] = write
        other = "redis" if write.side == "file" else "file"
        replaced_knowingly.add((other, write.plan_id, write.field, write.seen))
    in_conflicts: set[tuple[str, str, Value]] = set()
    for c in conflicts:
        for value in (c["file"], c["redis"]):
            in_conflicts.add((c["plan_id"], c["field"], frozen(value)))
    lost = []
    for (side, plan_id, name), write in sorted(last.items()):
        if final[plan_id].get(name) == write.value:
            continue
        if (plan_id, name, write.value) in in_conflicts:
            continue
        if (side, plan_id, name, write.value) in replaced_knowingly:
            continue
        lost.append(
            f"{side} wrote {plan_id}.{name} = {write.value!r} last; final is "
            f"{final[plan_id].get(name)!r} and no conflict records it"
        )
    return lost


def test_file_writer_and_agent_race_the_daemon_and_nothing_is_lost(
    tmp_path: Path, long_run: bool
) -> None:
    rounds = 200 if long_run else 30
    rng, seed = seeded_rng("race")
    started = time.monotonic()
    town = make_town(tmp_path / "race", RACE_TOWN, race_plan())
    path = town / "tasks.toml"
    journal = Journal()
    with redis_server() as server, running_daemons([town], server.url) as daemons:
        client = server.client()
        writer_rng, agent_rng = random.Random(rng.random()), random.Random(rng.random())
        run_threads(
            lambda: file_writer(path, rounds, writer_rng, journal),
            lambda: agent(client, rounds, agent_rng, journal),
        )
        final = settle(daemons, client, RACE_TOWN)
        conflicts = recorded_conflicts(town, server.url)
        status = daemons[0].status()
        events = log_events(daemons[0])
        lost = lost_writes(journal, final, conflicts)
    print(
        f"[race] seed {seed}: edits made {len(journal.writes)} field writes in "
        f"{journal.saves} file saves + {journal.updates} tinytown updates; edits lost "
        f"{len(lost)}; conflicts recorded {len(conflicts)}; saves redone after racing a "
        f"daemon write {journal.races}; syncs {status and status['syncs']}; "
        f"{time.monotonic() - started:.1f} s; log events {dict(events)}"
    )
    assert set(final) == {f"t{n}" for n in range(1, RACE_TASKS + 1)}
    assert not lost, "\n".join(lost) + "\n" + log_tails(daemons)
    assert status is not None and status["last_error"] is None, status


# ---------------------------------------------------------------------------- 2. three clones

FLEET_TOWN = "fleet"
FLEET_PLAN = """\
# The fleet's plan, cloned three times
[meta]
description = "fleet"

[[tasks]]
id = "api"
description = "Build the API"
tags = ["backend"]

[[tasks]]
id = "docs"
description = "Write the docs"
tags = ["docs"]

# tests get their own entry
[[tasks]]
id = "tests"
description = "Write the tests"
tags = ["qa"]

[[tasks]]
id = "deploy"
description = "Deploy"
status = "pending"
tags = ["ops"]

[[tasks]]
id = "monitor"
description = "Monitoring"
tags = ["ops"]

[[tasks]]
id = "ui"
description = "Build the UI"
tags = ["frontend"]
"""
MIN_TASKS = 4  # keep a few tasks around: deletions stay single, far below the deletion guard


def fleet_edit(
    n: int, rng: random.Random, clones: list[Path], client: redis.Redis, made: Counter[str]
) -> None:
    """One random edit: in one clone's file (description, status, tags, add, delete) or in Redis
    the way tinytown writes (an agent's update, a new task of `tt assign`)."""
    kind = rng.choices(
        ["description", "status", "tags", "add", "delete", "redis-update", "redis-add"],
        weights=[20, 15, 12, 10, 10, 28, 5],
    )[0]
    path = rng.choice(clones) / "tasks.toml"
    style = rng.choice(["rename", "in-place"])
    text = path.read_bytes().decode()
    ids = sorted(plan_values(text))
    if kind == "delete" and len(ids) <= MIN_TASKS:
        kind = "add"
    if kind in ("description", "status", "tags", "delete") and not ids:
        kind = "add"
    plan_id = rng.choice(ids) if ids else ""
    saved: Saved | None
    if kind == "description":
        changes: dict[str, Any] = {"description": f"{path.parent.name} #{n}"}
        saved = careful_save(path, entry_edit(plan_id, changes), style)
    elif kind == "status":
        changes = {"status": rng.choice(STATES)}
        saved = careful_save(path, entry_edit(plan_id, changes), style)
    elif kind == "tags":
        changes = {"tags": [f"g{n}"]}
        saved = careful_save(path, entry_edit(plan_id, changes), style)
    elif kind == "add":
        saved = careful_save(
            path, lambda t: append_entry(t, f"new-{n}", f"New task {n}", ["new"]), style
        )
    elif kind == "delete":
        saved = careful_save(path, lambda t: remove_entry(t, plan_id), style)
    elif kind == "redis-update":
        keys = sorted(client.scan_iter(match=f"tt:{FLEET_TOWN}:task:*"))
        if not keys:
            return
        task_uuid = rng.choice(keys).rsplit(":", 1)[1]
        state = rng.choice(STATES)
        change = task_change(state, f"redis r{n}", f"agent #{n}" if rng.random() < 0.3 else None)
        saved = None
        if tinytown_update(client, FLEET_TOWN, task_uuid, change) is None:
            return
    else:  # redis-add: `tt assign` makes an untagged task and puts it on the backlog
        task = new_task(f"Assigned task {n}", ["assigned"])
        set_task(client, FLEET_TOWN, task)
        client.rpush(backlog_key(FLEET_TOWN), task["id"])
        saved = None
    if kind.startswith("redis") or saved is not None:
        made[kind] += 1


def test_three_clones_three_daemons_one_redis_converge_and_go_quiet(
    tmp_path: Path, long_run: bool
) -> None:
    edits = 200 if long_run else 40
    rng, seed = seeded_rng("fleet")
    started = time.monotonic()
    clones = [make_town(tmp_path / name, FLEET_TOWN, FLEET_PLAN) for name in ("a", "b", "c")]
    made: Counter[str] = Counter()
    with redis_server() as server, running_daemons(clones, server.url) as daemons:
        client = server.client()
        n = 0
        while sum(made.values()) < edits:  # an edit of an entry deleted meanwhile is skipped
            fleet_edit(n, rng, clones, client, made)
            n += 1
            time.sleep(rng.uniform(0.0, 0.15))
        final = settle(daemons, client, FLEET_TOWN)
        # The quiet window: nobody writes anything, to Redis or to any of the files.
        client.config_resetstat()
        watchers = [FileWrites(clone / "tasks.toml") for clone in clones]
        time.sleep(QUIET_WINDOW_S)
        for watcher in watchers:
            watcher.stop()
        redis_writes = write_counts(client)
        file_writes = [watcher.count_since(1) for watcher in watchers]
        conflicts = {c.name: recorded_conflicts(c, server.url) for c in clones}
        statuses = [d.status() for d in daemons]
    print(
        f"[fleet] seed {seed}: edits made {sum(made.values())} {dict(made)}; final task count "
        f"{len(final)}; writes during the quiet window: Redis {redis_writes}, files "
        f"{file_writes}; conflicts recorded {[len(v) for v in conflicts.values()]}; "
        f"{time.monotonic() - started:.1f} s"
    )
    assert redis_writes == {}, redis_writes
    assert file_writes == [0, 0, 0], file_writes
    assert all(s is not None and s["last_error"] is None for s in statuses), statuses


# ---------------------------------------------------------------------------- 3. races pinned down
# Three races the stress tests above used to hit now and then (each left a change unsynced
# until the next full sync); here each one is forced, with debounce settings or a held-back
# watcher deciding the order, and checked to have happened. They pass since the daemon
# keeps a direction owed until a sync completes it.

PINNED_TIMEOUT_S = 10.0


def test_an_agent_update_met_by_a_push_retry_still_reaches_the_file(tmp_path: Path) -> None:
    """A save and an agent's update of the same task: the save is pushed first (the Redis side
    is still debouncing), its guarded write meets the agent's update and merges again. The
    update must still reach the file once the Redis side's debounce is over."""
    town = make_town(tmp_path / "race", RACE_TOWN, race_plan())
    # A long Redis debounce: the agent's notification waits while the file side is pushed.
    (town / "ttsyncd.toml").write_text(
        "[sync]\nredis_debounce_ms = 1500\nredis_max_wait_ms = 3000\n"
    )
    path = town / "tasks.toml"
    with redis_server() as server, running_daemons([town], server.url) as daemons:
        client = server.client()
        daemons[0].wait_idle()

        start = task_change("running", "picked up")
        assert tinytown_update(client, RACE_TOWN, task_uuid_for(RACE_TOWN, "t1"), start)
        edit = {"description": "Edited while an agent works"}
        assert careful_save(path, entry_edit("t1", edit), "rename")
        # The race did happen: the push's guarded write met the agent's update.
        wait_for_log(daemons[0], lambda e: e["event"] == "redis changed during sync, merging again")
        final = settle(daemons, client, RACE_TOWN, PINNED_TIMEOUT_S)
    assert final["t1"] == Record(
        "Edited while an agent works", status="running", tags=("seed",), result="picked up"
    )


# Another program writing files in the town's directory, in a process of its own (so that the
# test's GIL cannot pause it): a new name every millisecond or so.
BUSY_DIRECTORY = """
import pathlib, sys, time
directory, prefix, until = pathlib.Path(sys.argv[1]), sys.argv[2], time.monotonic() + 3.0
n = 0
while time.monotonic() < until:
    (directory / f"{prefix}-{n}.log").write_text("x")
    n += 1
    time.sleep(0.001)
"""


def test_a_save_read_by_a_pull_before_the_watcher_reports_it_is_still_pushed(
    tmp_path: Path,
) -> None:
    """A save that a pull (started by an agent's update) reads before the file watcher hands the
    save's event over: the pull copies it into the text it writes, and the save must still be
    pushed. A program writing new files in the town's directory keeps watchfiles gathering
    events (it waits for 5 ms without a new change) up to file_max_wait_ms, which turns a 5 ms
    window into a certain order; the test checks the watcher was held before going on."""
    town = make_town(tmp_path / "race", RACE_TOWN, race_plan())
    (town / "ttsyncd.toml").write_text("[sync]\nfile_max_wait_ms = 2000\n")
    path = town / "tasks.toml"
    edit = {"description": "Saved while the directory is busy"}
    with redis_server() as server, running_daemons([town], server.url) as daemons:
        client = server.client()
        daemon = daemons[0]
        for saved_id, agent_id in (("t1", "t2"), ("t3", "t4"), ("t5", "t6")):
            daemon.wait_idle()
            busy = subprocess.Popen(
                [sys.executable, "-c", BUSY_DIRECTORY, str(town), f"out-{saved_id}"]
            )
            try:
                first_noise = town / f"out-{saved_id}-0.log"
                wait_until(first_noise.exists, what="the other program to start")
                assert careful_save(path, entry_edit(saved_id, edit), "rename")
                time.sleep(0.05)  # an unhindered watcher reports a save within a few ms
                status = daemon.status()
                held = status is not None and not status["pending_events"]["file"]
                if held:
                    pulls = count_log(daemon, pull_wrote_file)
                    complete = task_change("completed", "done")
                    assert tinytown_update(
                        client, RACE_TOWN, task_uuid_for(RACE_TOWN, agent_id), complete
                    )
                    # A pull wrote the file while the watcher was still gathering events.
                    wait_for_log(daemon, pull_wrote_file, more_than=pulls)
                    assert busy.poll() is None, "the watcher was let go too early: try again"
            finally:
                assert busy.wait(timeout=10) == 0
            if held:
                break
        else:
            raise AssertionError("never held the watcher back: the race was not forced")
        final = settle(daemons, client, RACE_TOWN, PINNED_TIMEOUT_S)
    assert final[agent_id].status == "completed"
    assert final[saved_id].description == "Saved while the directory is busy"


def test_an_agent_update_made_while_the_plan_is_broken_reaches_the_file_once_it_is_fixed(
    tmp_path: Path,
) -> None:
    """Someone is halfway through an edit (the saved plan does not parse) while an agent
    completes a task. Nothing can be synced then; once the plan parses again, the agent's
    update must reach the file."""
    town = make_town(tmp_path / "race", RACE_TOWN, race_plan())
    path = town / "tasks.toml"
    good = path.read_text()
    with redis_server() as server, running_daemons([town], server.url) as daemons:
        client = server.client()
        daemon = daemons[0]
        daemon.wait_idle()
        save_by_rename(path, good.replace('id = "t1"', 'id = "t1'))  # an unterminated string
        wait_until(lambda: (s := daemon.status()) and s["last_error"], what="the broken plan")

        def failed(entry: dict[str, Any]) -> bool:
            return bool(entry["event"] == "sync failed")

        failures = count_log(daemon, failed)
        complete = task_change("completed", "done while the plan was broken")
        assert tinytown_update(client, RACE_TOWN, task_uuid_for(RACE_TOWN, "t2"), complete)
        wait_for_log(daemon, failed, more_than=failures)  # the update met the broken plan
        save_by_rename(path, good.replace("Task 3", "Task 3, fixed"))
        final = settle(daemons, client, RACE_TOWN, PINNED_TIMEOUT_S)
    assert final["t3"].description == "Task 3, fixed"
    assert final["t2"].status == "completed"


# ---------------------------------------------------------------------------- 4. stale copies
# tinytown's agents as they really are: get_task, work a while, set_task of the whole hash,
# with no second look. A copy read before the daemon pushed the user's new description writes
# the old one back; the daemon must see the write as stale and keep the user's text, without
# undoing any agent's lifecycle step.

AGENTS_TOWN = "agents"
AGENTS_TASKS = 4  # few tasks: each one's copies are often in flight when the user saves it


def agents_plan() -> str:
    parts = ['# Agents at work\n[meta]\ndescription = "agents"\n']
    for n in range(1, AGENTS_TASKS + 1):
        parts.append(f'\n[[tasks]]\nid = "w{n}"\ndescription = "Work {n}"\n')
    return "".join(parts)


@dataclass
class AgentsJournal:
    """The last value each side wrote per task, in the order the writes happened: agents
    write, and the user saves, under `lock`, so the order of all writes is known (`seq`)."""

    user_descriptions: dict[str, str] = field(default_factory=dict)
    # plan id -> (the state, with the result for an agent's write; the write's seq)
    user_statuses: dict[str, tuple[str, int]] = field(default_factory=dict)
    agent_states: dict[str, tuple[str, str | None, int]] = field(default_factory=dict)
    agent_writes: int = 0
    saves: int = 0
    status_saves: int = 0
    seq: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def next_seq(self) -> int:
        self.seq += 1
        return self.seq


def lifecycle_step(fields: dict[str, str], agent_uuid: str, rng: random.Random, n: int) -> Step:
    """The next step tinytown would take from the state the copy holds."""
    state = fields["state"]
    if state == "pending":
        return assign(agent_uuid)
    if state == "assigned":
        return start_step()
    if state == "running":
        return complete(f"done #{n}") if rng.random() < 0.7 else fail(f"broke #{n}")
    return requeue()  # completed, failed, cancelled: back to the queue


def stale_copy_agent(
    client: redis.Redis, name: str, rounds: int, rng: random.Random, journal: AgentsJournal
) -> None:
    agent_uuid = register_agent(client, AGENTS_TOWN, name)
    for n in range(rounds):
        plan_id = f"w{rng.randrange(1, AGENTS_TASKS + 1)}"
        copy = read_task(client, AGENTS_TOWN, task_uuid_for(AGENTS_TOWN, plan_id))
        assert copy, plan_id
        time.sleep(rng.uniform(0.1, 0.5))  # the agent works; the copy ages
        fields = applied(copy, lifecycle_step(copy, agent_uuid, rng, n))
        with journal.lock:
            write_task(client, AGENTS_TOWN, fields)
            state = (fields["state"], fields.get("result"), journal.next_seq())
            journal.agent_states[plan_id] = state
            journal.agent_writes += 1
        time.sleep(rng.uniform(0.0, 0.1))


def describing_user(path: Path, rounds: int, rng: random.Random, journal: AgentsJournal) -> None:
    """Saves new descriptions, and now and then a new status (cancels a task, or re-opens
    it), from the file's text read fresh each time; the last save rewords every task at once
    (while the agents are still at work)."""
    for n in range(rounds):
        last = n == rounds - 1
        plan_ids = [f"w{k}" for k in range(1, AGENTS_TASKS + 1)] if last else [
            f"w{rng.randrange(1, AGENTS_TASKS + 1)}"
        ]  # fmt: skip
        if not last and rng.random() < 0.25:
            key, values = "status", {plan_ids[0]: rng.choice(["cancelled", "pending"])}
        else:
            key, values = "description", {plan_id: f"user {plan_id} #{n}" for plan_id in plan_ids}

        def edit(text: str, key: str = key, values: dict[str, str] = values) -> str | None:
            for plan_id, value in values.items():
                edited = set_entry_fields(text, plan_id, {key: value})
                if edited is None:
                    return None
                text = edited
            return text

        with journal.lock:  # the order of this save among the agents' writes
            saved = careful_save(path, edit, rng.choice(["rename", "in-place"]))
            assert saved is not None
            if key == "description":
                journal.user_descriptions.update(values)
            else:
                seq = journal.next_seq()
                journal.user_statuses.update({i: (v, seq) for i, v in values.items()})
                journal.status_saves += 1
            journal.saves += 1
        time.sleep(rng.uniform(0.05, 0.25))


def lost_status(
    plan_id: str, journal: AgentsJournal, final: dict[str, str], recorded: list[dict[str, Any]]
) -> str:
    """Why the last write of the task's state is neither what Redis holds nor recorded as set
    aside by a conflict or as stale ("" when it is one of the two). An agent's step must hold
    with its result; the user's status may lose a conflict to an agent's (Redis owns status
    under the `owner` policy), recorded with the user's value."""
    agent = journal.agent_states.get(plan_id)
    user = journal.user_statuses.get(plan_id)
    if agent is None and user is None:
        return ""
    held = (final["state"], final.get("result"))
    if user is None or (agent is not None and agent[2] > user[1]):
        assert agent is not None
        if held == agent[:2]:
            return ""
        return f"an agent wrote {plan_id} as {agent[0]}/{agent[1]!r} last; final is {held}"
    if final["state"] == user[0] or any(
        r["plan_id"] == plan_id and r["field"] == "status" and r["file"] == user[0]
        for r in recorded
    ):
        return ""
    return f"the user set {plan_id}.status = {user[0]!r} last; final is {held}, not recorded"


def test_agents_writing_back_stale_copies_lose_no_edit_and_undo_no_step(
    tmp_path: Path, long_run: bool
) -> None:
    agents, agent_rounds, user_rounds = (4, 80, 120) if long_run else (4, 12, 20)
    rng, seed = seeded_rng("stale-copies")
    started = time.monotonic()
    town = make_town(tmp_path / "agents", AGENTS_TOWN, agents_plan())
    path = town / "tasks.toml"
    journal = AgentsJournal()
    with redis_server() as server, running_daemons([town], server.url) as daemons:
        client = server.client()
        rngs = [random.Random(rng.random()) for _ in range(agents + 1)]
        run_threads(
            lambda: describing_user(path, user_rounds, rngs[0], journal),
            *(
                functools.partial(
                    stale_copy_agent, client, f"agent-{k}", agent_rounds, rngs[k + 1], journal
                )
                for k in range(agents)
            ),
        )
        final = settle(daemons, client, AGENTS_TOWN)
        hashes = {
            plan_id: read_task(client, AGENTS_TOWN, task_uuid_for(AGENTS_TOWN, plan_id))
            for plan_id in final
        }
        recorded = recorded_conflicts(town, server.url)
        status = daemons[0].status()
    lost = [
        f"the user saved {plan_id}.description = {text!r} last; final is "
        f"{final[plan_id].description!r}"
        for plan_id, text in sorted(journal.user_descriptions.items())
        if final[plan_id].description != text
    ]
    lost += [lost_status(plan_id, journal, hashes[plan_id], recorded) for plan_id in sorted(final)]
    lost = [line for line in lost if line]
    stale = sum(1 for record in recorded if record.get("kind") == "stale")
    print(
        f"[stale-copies] seed {seed}: {journal.agent_writes} whole-hash agent writes by "
        f"{agents} agents, {journal.saves} saves ({journal.status_saves} of a status); stale "
        f"writes recognised {stale}; conflicts "
        f"recorded {len(recorded)}; edits lost {len(lost)}; "
        f"{time.monotonic() - started:.1f} s"
    )
    assert set(final) == {f"w{n}" for n in range(1, AGENTS_TASKS + 1)}
    assert not lost, "\n".join(lost) + "\n" + log_tails(daemons)
    assert status is not None and status["last_error"] is None, status
