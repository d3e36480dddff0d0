"""Running the real CLI in a subprocess, and counting what it did to Redis."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import redis

from ttsyncd.identity import identify
from ttsyncd.model import Record
from ttsyncd.plan import read_plan
from ttsyncd.store import read_snapshot
from ttsyncd.views import file_view, redis_view

# Redis data exactly as tinytown 0.10 writes it (a copy of shared/fixtures, so a clone is enough).
TINYTOWN_FIXTURE = json.loads(
    (Path(__file__).parent / "fixtures" / "tinytown-0.10-redis.json").read_text(encoding="utf-8")
)

WRITE_COMMANDS = frozenset(
    {"hset", "hdel", "del", "unlink", "eval", "evalsha", "rpush", "lpush", "lrem", "set", "multi"}
)


def clean_env() -> dict[str, str]:
    """This environment without REDIS_URL or TTSYNCD_*: a child sees only what a test gives it."""
    return {k: v for k, v in os.environ.items() if not k.startswith(("REDIS_URL", "TTSYNCD_"))}


# A town of two tasks, for the daemon's end-to-end tests.
TWO_TASKS = """\
[[tasks]]
id = "api"
description = "Build the API"

[[tasks]]
id = "docs"
description = "Write the docs"
"""


def run_cli(town: Path, *args: str, redis_url: str | None, env: dict[str, str] | None = None,
            timeout: float = 60) -> subprocess.CompletedProcess[str]:  # fmt: skip
    """`python -m ttsyncd --town TOWN [--redis-url URL] ARGS...` with a clean environment."""
    base_env = clean_env()
    base_env.update(env or {})
    command = [sys.executable, "-m", "ttsyncd", "--town", str(town)]
    if redis_url:
        command += ["--redis-url", redis_url]
    return subprocess.run(
        [*command, *args],
        capture_output=True,
        text=True,
        env=base_env,
        timeout=timeout,
        check=False,
    )


def write_counts(client: redis.Redis) -> dict[str, int]:
    """Calls of every data-writing command since the last CONFIG RESETSTAT."""
    stats = client.info("commandstats")
    counts = {}
    for key, value in stats.items():
        name = key.removeprefix("cmdstat_")
        if name in WRITE_COMMANDS and value["calls"]:
            counts[name] = value["calls"]
    return counts


def make_town(root: Path, name: str, tasks: str, tinytown: str | None = None) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "tinytown.toml").write_text(tinytown if tinytown is not None else f'name = "{name}"\n')
    (root / "tasks.toml").write_text(tasks)
    return root


def plan_records(path: Path) -> dict[str, Record]:
    """The plan file's tasks in the merge's terms, as the engine sees them."""
    return dict(file_view(read_plan(path)).records)


def town_records(client: redis.Redis, town: str) -> dict[str, Record]:
    """The town's Redis tasks in the merge's terms; unreadable hashes and duplicates fail."""
    snapshot = read_snapshot(client, town)
    assert not snapshot.unreadable, snapshot.unreadable
    identified = identify(snapshot.tasks)
    assert not identified.duplicates, identified.duplicates
    return redis_view(identified, snapshot.agent_names, {})


def free_port() -> int:
    """A loopback TCP port free right now, picked by the OS from its ephemeral range (never a
    fixed one such as 6379)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])
