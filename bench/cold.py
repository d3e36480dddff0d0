"""Cold push and cold pull of a whole town, side by side with what tinytown 0.10 does (the
baseline) and with the least work Redis allows (the limit), over the same hashes.

- ttsyncd: `engine.sync` in this process, on an empty Redis (push) or into an empty file
  (pull), with the state dir removed so there is no base: really cold.
- baseline, push: tinytown's `push_tasks_to_redis`: parse the plan, then for every entry a NEW
  random-uuid task (tags plus `plan:<id>`, completed/failed "via sync") stored with its own
  `set_task`, one round trip per task (tinytown pipelines only that task's HDEL + HSET).
- baseline, pull (tinytown's is a placeholder): KEYS, then one HGETALL round trip per key, then
  the same minimal render and write of the file as the limit.
- limit: one pipelined HSET of the hashes ttsyncd wrote; SCAN plus one pipelined HGETALL, and
  for pull also a minimal render of those hashes and an atomic write of the file.
"""

from __future__ import annotations

import json
import shutil
import statistics
import subprocess
import sys
import tomllib
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from pathlib import Path
from time import perf_counter
from typing import Any

import redis
import toml_rs

from bench.procs import BenchError, clean_env
from bench.town import plan_text, reset_files, town_name
from ttsyncd.codec import PLAN_TAG_PREFIX, rfc3339
from ttsyncd.config import Settings, load_settings
from ttsyncd.engine import sync
from ttsyncd.plan import forget_parses, parse_plan, write_atomic
from ttsyncd.store import glob_escape
from ttsyncd.tinytown import new_task, set_task

Hashes = dict[str, dict[str, str]]


def settings_for(town: Path, redis_url: str) -> Settings:
    """The town's settings as `ttsyncd --town T --redis-url U` loads them (defaults otherwise)."""
    return load_settings(
        town_arg=str(town), config_arg=None, redis_url_arg=redis_url, env={}, cwd=town
    )


def task_pattern(town: str) -> str:
    return glob_escape(f"tt:{town}:task:") + "*"


def ttsyncd_push(settings: Settings, client: redis.Redis, size: int) -> float:
    forget_parses()  # as cold as a `ttsyncd push` process: no entry parsed before
    started = perf_counter()
    report = sync(settings, client, push=True, pull=False)
    elapsed = perf_counter() - started
    if report.to_redis.created != size:
        raise BenchError(f"cold push created {report.to_redis.created} tasks, not {size}")
    return elapsed


def ttsyncd_push_process(
    settings: Settings, redis_url: str, client: redis.Redis, size: int
) -> float:
    """`ttsyncd push` as a user runs it: a new process (imports and all), into an empty Redis,
    with no state dir. Seconds from the start of the process to its exit."""
    shutil.rmtree(settings.state_dir, ignore_errors=True)
    env = clean_env()
    command = [sys.executable, "-m", "ttsyncd", "--town", str(settings.town_dir)]
    started = perf_counter()
    done = subprocess.run(
        [*command, "--redis-url", redis_url, "push"], capture_output=True, text=True, env=env
    )
    elapsed = perf_counter() - started
    if done.returncode != 0:
        raise BenchError(f"`ttsyncd push` as a process failed: {done.stdout}{done.stderr}")
    if len(snapshot(client, town_name(size))) != size:
        raise BenchError(f"`ttsyncd push` as a process did not create {size} tasks")
    return elapsed


def parse_seconds(text: str) -> dict[str, float]:
    """A cold read of the plan by ttsyncd, beside one whole-file parse by toml_rs (the reader
    ttsyncd uses) and by tomllib: best of 5 each, in seconds."""

    def best(parse: Callable[[], object]) -> float:
        times = []
        for _ in range(5):
            forget_parses()
            started = perf_counter()
            parse()
            times.append(perf_counter() - started)
        return min(times)

    return {
        "ttsyncd_parse": best(lambda: parse_plan(Path("tasks.toml"), text)),
        "toml_rs_parse": best(lambda: toml_rs.loads(text, toml_version="1.0.0")),
        "tomllib_parse": best(lambda: tomllib.loads(text)),
    }


def ttsyncd_pull(settings: Settings, client: redis.Redis, size: int) -> tuple[float, str]:
    """Pull every task into an empty tasks.toml with no base; returns (seconds, the file)."""
    reset_files(settings.town_dir, "")
    forget_parses()
    started = perf_counter()
    report = sync(settings, client, push=False, pull=True)
    elapsed = perf_counter() - started
    if report.to_file.created != size:
        raise BenchError(f"cold pull wrote {report.to_file.created} entries, not {size}")
    return elapsed, settings.tasks_file.read_text(encoding="utf-8")


def snapshot(client: redis.Redis, town: str) -> Hashes:
    """Every task hash of the town (untimed: the input of the limit's write)."""
    keys = list(client.scan_iter(match=task_pattern(town), count=1000))
    pipe = client.pipeline(transaction=False)
    for key in keys:
        pipe.hgetall(key)
    return dict(zip(keys, pipe.execute(), strict=True))


def limit_write(client: redis.Redis, hashes: Hashes) -> float:
    started = perf_counter()
    pipe = client.pipeline(transaction=False)
    for key, fields in hashes.items():
        pipe.hset(key, mapping=fields)  # type: ignore[arg-type]
    pipe.execute()
    return perf_counter() - started


def limit_pull(client: redis.Redis, town: str, path: Path) -> tuple[float, float]:
    """SCAN + one pipelined HGETALL, then render and write the file: (read s, total s)."""
    started = perf_counter()
    keys = list(client.scan_iter(match=task_pattern(town), count=1000))
    pipe = client.pipeline(transaction=False)
    for key in keys:
        pipe.hgetall(key)
    hashes = pipe.execute()
    read = perf_counter() - started
    write_atomic(path, render_minimal(hashes), None)
    return read, perf_counter() - started


def baseline_push(client: redis.Redis, town: str, path: Path) -> float:
    started = perf_counter()
    plan = tomllib.loads(path.read_text(encoding="utf-8"))
    for entry in plan.get("tasks", []):
        fields = new_task(entry["description"], [*entry.get("tags", []), f"plan:{entry['id']}"])
        status = entry.get("status", "pending")
        if status in ("completed", "failed"):  # Task::complete / Task::fail
            stamp = rfc3339(datetime.now(UTC))
            fields.update(
                state=status,
                completed_at=stamp,
                updated_at=stamp,
                result="Completed via sync" if status == "completed" else "Failed via sync",
            )
        set_task(client, town, fields)
    return perf_counter() - started


def baseline_pull(client: redis.Redis, town: str, path: Path) -> tuple[float, float]:
    """KEYS, then one HGETALL round trip per key, then the same render and write as the limit:
    (read s, total s)."""
    started = perf_counter()
    hashes: list[dict[str, str]] = [client.hgetall(k) for k in client.keys(task_pattern(town))]  # type: ignore[misc]
    read = perf_counter() - started
    write_atomic(path, render_minimal(hashes), None)
    return read, perf_counter() - started


def render_minimal(hashes: Iterable[dict[str, str]]) -> str:
    """The least a pull must render: one entry per task, id, description, status and tags
    (JSON strings are valid TOML basic strings)."""
    lines: list[str] = []
    for fields in hashes:
        tags = json.loads(fields["tags"])
        plan = next((t for t in tags if t.startswith(PLAN_TAG_PREFIX)), "plan:" + fields["id"])
        lines += [
            "[[tasks]]",
            f"id = {json.dumps(plan[len(PLAN_TAG_PREFIX) :], ensure_ascii=False)}",
            f"description = {json.dumps(fields['description'], ensure_ascii=False)}",
            f'status = "{fields["state"]}"',
        ]
        others = [t for t in tags if t != plan]
        if others:
            lines.append(f"tags = {json.dumps(others, ensure_ascii=False)}")
        lines.append("")
    return "\n".join(lines)


def measure_cold(town: Path, redis_url: str, size: int, repeats: int) -> dict[str, Any]:
    """Every cold figure for one town, `repeats` times; medians and samples in seconds."""
    settings = settings_for(town, redis_url)
    name = town_name(size)
    client = settings.endpoint.client()  # the same client (hiredis) for all three contenders
    scratch = town / "scratch-tasks.toml"
    samples: dict[str, list[float]] = {}

    def add(metric: str, seconds: float) -> None:
        samples.setdefault(metric, []).append(seconds)

    file_bytes = 0
    try:
        client.config_set("notify-keyspace-events", "")  # as before any daemon: nobody listens
        for metric, seconds in parse_seconds(plan_text(size)).items():
            add(metric, seconds)
        for run in range(repeats):
            client.flushall()
            reset_files(town, plan_text(size, marker=f"cold process run {run}"))
            add("ttsyncd_push_process", ttsyncd_push_process(settings, redis_url, client, size))
            client.flushall()
            reset_files(town, plan_text(size, marker=f"cold run {run}"))
            add("ttsyncd_push", ttsyncd_push(settings, client, size))
            hashes = snapshot(client, name)
            seconds, pulled = ttsyncd_pull(settings, client, size)
            add("ttsyncd_pull", seconds)
            file_bytes = len(pulled.encode())

            client.flushall()
            add("limit_write", limit_write(client, hashes))
            read, total = limit_pull(client, name, scratch)
            add("limit_read", read)
            add("limit_read_plus_file", total)
            read, total = baseline_pull(client, name, scratch)
            add("baseline_pull_read", read)
            add("baseline_pull", total)

            client.flushall()
            reset_files(town, plan_text(size, marker=f"baseline run {run}"))
            add("baseline_push", baseline_push(client, name, town / "tasks.toml"))
            if len(snapshot(client, name)) != size:
                raise BenchError("the baseline push did not store one task per entry")
        client.flushall()
    finally:
        scratch.unlink(missing_ok=True)
        client.close()
    result: dict[str, Any] = {
        metric: {"median_s": statistics.median(values), "samples_s": values}
        for metric, values in samples.items()
    }
    result["repeats"] = repeats
    result["pulled_file_bytes"] = file_bytes
    return result
