"""What the CLI says and does at its edges: unknown ids, no daemon, options after the command,
no town, a town without a plan, git conflict markers, dry runs, an explicit Redis while a
daemon runs, and `service`. The real CLI in a subprocess against a real redis-server."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import redis

from tests.helpers import make_town, run_cli

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
