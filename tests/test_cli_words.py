"""What the CLI says and does at its edges: unknown ids, no daemon, options after the command,
no town, a town without a plan, git conflict markers, dry runs, an explicit Redis while a
daemon runs, and `service`. The real CLI in a subprocess against a real redis-server."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import redis

from tests.helpers import make_town, run_cli, write_counts
from ttsyncd.codec import task_key
from ttsyncd.identity import task_uuid_for

TOWN = "words"
PLAN = """\
# Sprint 1
[[tasks]]
id = "api"
description = "Build the API"
agent = "backend"
tags = ["api"]

[[tasks]]
id = "docs"
description = "Write the docs"
"""


@pytest.fixture
def town(tmp_path: Path) -> Path:
    return make_town(tmp_path / "town", TOWN, PLAN)


def cli(town: Path, redis_url: str | None, *args: str, **kw: object) -> tuple[int, str, str]:
    done = run_cli(town, *args, redis_url=redis_url, **kw)  # type: ignore[arg-type]
    return done.returncode, done.stdout, done.stderr


def ttsyncd(
    *args: str, cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """`python -m ttsyncd ARGS...` in `cwd`, exactly these arguments, with a clean environment
    (no REDIS_URL, no TTSYNCD_*)."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("REDIS_URL", "TTSYNCD_"))}
    return subprocess.run(
        [sys.executable, "-m", "ttsyncd", *args],
        cwd=cwd, env={**clean, **(env or {})}, capture_output=True, text=True, timeout=60,
        check=False,
    )  # fmt: skip


def key(plan_id: str) -> str:
    return task_key(TOWN, task_uuid_for(TOWN, plan_id))


# --- resolve ----------------------------------------------------------------------------------


def test_resolve_an_unknown_id_exits_1_naming_it(
    town: Path, redis_url: str, rdb: redis.Redis
) -> None:
    assert cli(town, redis_url, "push")[0] == 0
    rdb.config_resetstat()
    for take in ("redis", "file"):
        code, out, err = cli(town, redis_url, "resolve", "zzz", "--take", take)
        assert code == 1, out
        assert err.strip() == (
            "ttsyncd: no task has the id 'zzz' (not in tasks.toml, not in Redis, not in the "
            "last sync): nothing to resolve"
        )
        assert out == ""
    assert cli(town, redis_url, "conflicts")[1].strip() == "no conflicts"  # nothing recorded
    # A known id still resolves.
    code, out, _ = cli(town, redis_url, "resolve", "docs", "--take", "redis")
    assert code == 0 and out.startswith("docs: took the redis's values")


# --- status -----------------------------------------------------------------------------------


def test_status_json_without_a_daemon_prints_json_and_exits_1(town: Path) -> None:
    code, out, err = cli(town, None, "status", "--json")
    assert code == 1, err
    status = json.loads(out)
    assert status == {
        "running": False,
        "town": TOWN,
        "town_dir": str(town.resolve()),
        "socket": str(town.resolve() / ".tt" / "ttsyncd.sock"),
    }
    code, out, err = cli(town, None, "status")  # the words, for people
    assert code == 1 and out == "" and "ttsyncd is not running for" in err


# --- options after the command, and every command's help -------------------------------------

COMMANDS = (
    "run", "start", "stop", "status", "push", "pull", "pause", "resume", "check", "repair",
    "conflicts", "resolve", "demo",
)  # fmt: skip


def test_options_are_accepted_after_the_command(
    town: Path, redis_url: str, rdb: redis.Redis, tmp_path: Path
) -> None:
    elsewhere = tmp_path  # not the town, and no town above it: only --town names it
    done = ttsyncd("status", "--town", str(town), "--json", cwd=elsewhere)
    assert done.returncode == 1 and json.loads(done.stdout)["running"] is False, done.stderr
    done = ttsyncd("push", "--redis-url", redis_url, "--town", str(town), "-v", cwd=elsewhere)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[0] == "⬆️  Pushed 2 tasks from tasks.toml to Redis"
    assert rdb.hget(key("docs"), "description") == "Write the docs"
    rdb.config_resetstat()
    # Mixed: some before, some after; given twice, the one after the command wins.
    done = ttsyncd(
        "--town", str(tmp_path / "nowhere"), "--redis-url", redis_url, "pull",
        "--town", str(town), cwd=elsewhere,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[0] == "⬇️  Pulled 2 tasks from Redis to tasks.toml"
    assert write_counts(rdb) == {}


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_a_description_in_its_help(command: str, tmp_path: Path) -> None:
    done = ttsyncd(command, "--help", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    paragraphs = done.stdout.split("\n\n")
    assert paragraphs[0].startswith(f"usage: ttsyncd {command}")
    description = paragraphs[1]
    assert not description.startswith(("options", "positional")), done.stdout
    assert len(description.split()) >= 8, description  # a sentence, not a label
    assert "--town DIR" in done.stdout and "--redis-url URL" in done.stdout
    assert ttsyncd("--help", cwd=tmp_path).stdout.count(f"\n    {command} ") == 1
