"""Running the real CLI in a subprocess, and counting what it did to Redis."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import redis

# Redis data exactly as tinytown 0.10 writes it (a copy of shared/fixtures, so a clone is enough).
TINYTOWN_FIXTURE = json.loads(
    (Path(__file__).parent / "fixtures" / "tinytown-0.10-redis.json").read_text(encoding="utf-8")
)

WRITE_COMMANDS = frozenset(
    {"hset", "hdel", "del", "unlink", "eval", "evalsha", "rpush", "lpush", "lrem", "set", "multi"}
)


def run_cli(town: Path, *args: str, redis_url: str | None, env: dict[str, str] | None = None,
            timeout: float = 60) -> subprocess.CompletedProcess[str]:  # fmt: skip
    """`python -m ttsyncd --town TOWN [--redis-url URL] ARGS...` with a clean environment."""
    base_env = {k: v for k, v in os.environ.items() if not k.startswith(("REDIS_URL", "TTSYNCD_"))}
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
