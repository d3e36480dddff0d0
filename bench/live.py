"""Measurements with the real daemon running on a town: both latencies, a burst of Redis
updates, and the idle daemon's CPU and memory."""

from __future__ import annotations

import os
import re
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from time import perf_counter
from typing import Any

import redis

from bench.procs import (
    DAEMON_WRITE_COMMANDS,
    BenchError,
    Daemon,
    calls_since,
    command_calls,
    cpu_seconds,
)
from bench.town import (
    description_of,
    editor_save,
    entry_text,
    file_version,
    plan_id,
    town_name,
    with_description,
)
from ttsyncd.codec import rfc3339, task_key
from ttsyncd.config import SyncSettings
from ttsyncd.identity import task_uuid_for
from ttsyncd.tinytown import set_task

CHANGE_TIMEOUT_S = 30.0  # a change that has not arrived by then is a failure, not a slow sample
POLL_S = 0.001  # how often the file is stat()ed while waiting for the daemon to write it
BURST_RESULT = re.compile(r'result = "(burst \d+)"')


@dataclass(frozen=True)
class LiveTown:
    """A town with a daemon running on it, and what the measurements need to know about it."""

    path: Path
    size: int
    daemon: Daemon
    client: redis.Redis
    db: int
    debounce: SyncSettings

    @property
    def name(self) -> str:
        return town_name(self.size)

    @property
    def tasks_file(self) -> Path:
        return self.path / "tasks.toml"

    @property
    def gap_s(self) -> float:
        """Pause between repetitions: longer than either side's longest debounce wait, so one
        repetition's events can never be coalesced with the next one's."""
        return max(self.debounce.file_max_wait_ms, self.debounce.redis_max_wait_ms) / 1000 + 0.1

    def key(self, index: int) -> str:
        return task_key(self.name, task_uuid_for(self.name, plan_id(index)))

    def settle(self) -> None:
        """Idle, then a gap (a sync under way shows nothing pending), then idle again."""
        self.daemon.wait_idle()
        time.sleep(self.gap_s)
        self.daemon.wait_idle()


def spread(size: int, count: int, offset: int) -> list[int]:
    """`count` distinct task indexes spread over the town (7919 is prime: no repeats)."""
    if count > size:
        raise BenchError(f"cannot pick {count} distinct tasks in a town of {size}")
    return [(offset + k * 7919) % size for k in range(count)]


def subscribe(pubsub: redis.client.PubSub, channel: str) -> None:
    """Subscribe and wait for Redis to confirm, so no notification can come before it."""
    pubsub.subscribe(channel)
    deadline = perf_counter() + 5.0
    while perf_counter() < deadline:
        message = pubsub.get_message(timeout=max(0.0, deadline - perf_counter()))
        if message is not None and message["type"] == "subscribe":
            return
    raise BenchError(f"Redis did not confirm the subscription to {channel}")


def save_to_redis(town: LiveTown, repeat: int) -> dict[str, Any]:
    """An editor-style save changing one task's description; the time until Redis holds it,
    seen through our own keyspace subscription on that key plus an HGET."""
    samples: list[float] = []
    hash_writes: list[int] = []  # EVALSHA calls per save: ttsyncd writes one task per script
    other_writes: list[int] = []
    file_rewrites: list[int] = []
    town.settle()  # then after each save, which also lets its echoes and writes be counted
    log_from = town.daemon.log_offset()
    pubsub = town.client.pubsub()  # type: ignore[no-untyped-call]
    try:
        for k, index in enumerate(spread(town.size, repeat, offset=1)):
            pid, key = plan_id(index), town.key(index)
            channel = f"__keyspace@{town.db}__:{key}"
            subscribe(pubsub, channel)
            text = town.tasks_file.read_text(encoding="utf-8")
            wanted = f"{description_of(text, pid)} (edit {k})"
            before = command_calls(town.client, DAEMON_WRITE_COMMANDS)
            started = editor_save(town.tasks_file, with_description(text, pid, wanted))
            saved_version = file_version(town.tasks_file)
            deadline = started + CHANGE_TIMEOUT_S
            while True:
                remaining = deadline - perf_counter()
                if remaining <= 0:
                    raise BenchError(f"the save of {pid} never reached Redis")
                message = pubsub.get_message(timeout=remaining)
                landed = message is not None and message["type"] == "message"
                if landed and town.client.hget(key, "description") == wanted:
                    samples.append(perf_counter() - started)
                    break
            pubsub.unsubscribe(channel)
            town.settle()
            writes = calls_since(town.client, before)
            hash_writes.append(writes.pop("evalsha", 0) + writes.pop("eval", 0))
            other_writes.append(sum(writes.values()))
            file_rewrites.append(int(file_version(town.tasks_file) != saved_version))
    finally:
        pubsub.close()
    return {
        "samples_s": samples,
        "hash_writes_per_save": hash_writes,
        "other_redis_writes_per_save": other_writes,
        "file_rewrites_per_save": file_rewrites,
        "daemon_sync_ms": town.daemon.sync_durations_ms(log_from),
    }


def redis_to_file(town: LiveTown, repeat: int, agent_uuid: str) -> dict[str, Any]:
    """An agent starting one task, written as tinytown writes it (HDEL + HSET pipeline, no
    MULTI); the time until tasks.toml says so, seen by stat()ing the file every millisecond."""
    samples: list[float] = []
    file_writes: list[int] = []  # 1 expected; 2 means it was written again afterwards
    redis_writes: list[int] = []  # the daemon's: 0 expected
    town.settle()  # then after each update
    log_from = town.daemon.log_offset()
    for index in spread(town.size, repeat, offset=town.size // 2):
        pid, key = plan_id(index), town.key(index)
        fields: dict[str, str] = town.client.hgetall(key)  # type: ignore[assignment]
        stamp = rfc3339(datetime.now(UTC))
        fields.update(assigned_to=agent_uuid, state="running", started_at=stamp, updated_at=stamp)
        version = file_version(town.tasks_file)
        before = command_calls(town.client, DAEMON_WRITE_COMMANDS)
        started = perf_counter()
        set_task(town.client, town.name, fields)
        while True:
            now = perf_counter()
            current = file_version(town.tasks_file)
            if current != version:
                version = current
                if 'status = "running"' in entry_text(town.tasks_file.read_text(), pid):
                    samples.append(now - started)
                    break
            if now - started > CHANGE_TIMEOUT_S:
                raise BenchError(f"the update of {pid} never reached tasks.toml")
            time.sleep(POLL_S)
        town.settle()
        file_writes.append(1 + int(file_version(town.tasks_file) != version))
        redis_writes.append(sum(calls_since(town.client, before).values()))
    return {
        "samples_s": samples,
        "file_writes_per_update": file_writes,
        "daemon_redis_writes_per_update": redis_writes,
        "daemon_sync_ms": town.daemon.sync_durations_ms(log_from),
    }


def file_floor(town: LiveTown, repeat: int) -> dict[str, Any]:
    """The floor under Redis -> file: what any writer pays to replace a file as big as the plan
    durably, measured beside it in the same run: write a temp file of the plan's bytes, fsync
    it, rename it over the previous one (on the plan's file system, under .tt/ where the
    daemon's watch does not look). ttsyncd also fsyncs the directory after the rename; that is
    left out, so the floor is the issue's "write, fsync, rename" and nothing more."""
    data = town.tasks_file.read_bytes()
    scratch = town.path / ".tt" / "bench-floor"
    scratch.mkdir(parents=True, exist_ok=True)
    target, temp = scratch / "tasks.toml", scratch / ".tasks.toml.tmp"
    target.write_bytes(data)
    samples: list[float] = []
    for _ in range(repeat):
        started = perf_counter()
        with open(temp, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temp, target)
        samples.append(perf_counter() - started)
    target.unlink()
    return {"samples_s": samples, "bytes": len(data)}


class FileVersions:
    """Every distinct version of a file, seen by stat()ing it every millisecond in a thread,
    with the perf_counter at which each was first seen."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.seen: list[tuple[tuple[int, int, int], float]] = [(file_version(path), perf_counter())]
        self.running = True
        self.thread = threading.Thread(target=self.watch, daemon=True)
        self.thread.start()

    def watch(self) -> None:
        while self.running:
            try:
                version = file_version(self.path)
            except FileNotFoundError:
                version = (0, 0, 0)
            if version != self.seen[-1][0]:
                self.seen.append((version, perf_counter()))
            time.sleep(POLL_S)

    def stop(self) -> None:
        self.running = False
        self.thread.join()


def burst(town: LiveTown, updates: int, over_s: float) -> dict[str, Any]:
    """`updates` tinytown-style updates (a new `result`) spread evenly over `over_s` seconds,
    cycling over up to `updates` tasks: file writes made, and the time from the last update
    until tasks.toml holds every task's last value."""
    town.settle()
    indexes = sorted(set(spread(town.size, min(town.size, updates), offset=2)))
    pipe = town.client.pipeline(transaction=False)
    for index in indexes:
        pipe.hgetall(town.key(index))
    current = dict(zip(indexes, pipe.execute(), strict=True))
    last_value: dict[int, str] = {}
    before = command_calls(town.client, DAEMON_WRITE_COMMANDS)
    log_from = town.daemon.log_offset()
    versions = FileVersions(town.tasks_file)
    try:
        first = perf_counter()
        for j in range(updates):
            pause = first + j * over_s / updates - perf_counter()
            if pause > 0:
                time.sleep(pause)
            index = indexes[j % len(indexes)]
            fields = current[index]
            fields.update(result=f"burst {j}", updated_at=rfc3339(datetime.now(UTC)))
            set_task(town.client, town.name, fields)
            last_value[index] = f"burst {j}"
        last = perf_counter()
        wanted = set(last_value.values())
        converged: float | None = None
        checked = 0
        while converged is None:
            for _version, seen_at in versions.seen[checked:]:
                checked += 1
                if wanted <= set(BURST_RESULT.findall(town.tasks_file.read_text())):
                    converged = seen_at
                    break
            if perf_counter() - last > CHANGE_TIMEOUT_S:
                raise BenchError("the burst never converged in tasks.toml")
            time.sleep(POLL_S)
        town.settle()
    finally:
        versions.stop()
    writes = [seen_at for _version, seen_at in versions.seen[1:]]
    window_s = town.debounce.redis_max_wait_ms / 1000
    span = max(converged, last) - first  # a write after convergence counts, but extends nothing
    return {
        "updates": updates,
        "tasks": len(indexes),
        "sent_over_s": last - first,
        "file_writes": len(writes),
        # Under a steady stream the quiet period never comes: the Redis side syncs once per
        # longest wait (redis_max_wait_ms), plus the sync after the stream stops.
        "allowed_file_writes": 1 + int(span / window_s),
        "converge_s": max(0.0, converged - last),
        "daemon_redis_writes": sum(calls_since(town.client, before).values()),
        "daemon_sync_ms": town.daemon.sync_durations_ms(log_from),
    }


def idle(town: LiveTown, window_s: float) -> dict[str, Any]:
    """The daemon's CPU use over `window_s` of nothing happening."""
    town.settle()
    status = town.daemon.status() or {}
    cpu_before, started = cpu_seconds(town.daemon.pid), time.monotonic()
    time.sleep(window_s)
    cpu_after, ended = cpu_seconds(town.daemon.pid), time.monotonic()
    return {
        "window_s": ended - started,
        "cpu_percent": 100 * (cpu_after - cpu_before) / (ended - started),
        "notifications": status.get("notifications"),
    }
