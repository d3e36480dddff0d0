"""The one-shot commands end to end: the real CLI in a subprocess against a real redis-server,
Redis changed the way tinytown changes it."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import redis

from tests.helpers import make_town, run_cli, write_counts
from ttsyncd.codec import task_key
from ttsyncd.identity import task_uuid_for
from ttsyncd.tinytown import new_task, register_agent, set_task, start_task

TOWN = "demo"
PLAN = """\
# Sprint 1
[meta]
description = "Sprint 1 tasks"

# The API first.
[[tasks]]
id = "auth-api"
description = "Build user authentication API"
agent = "backend"
tags = ["auth", "api"]

# Then its tests.
[[tasks]]
id = "auth-tests"
description = "Write auth API tests"  # small
parent = "auth-api"

[[tasks]]
id = "docs"
description = "Document the login flow"
status = "pending"
"""


def key(plan_id: str) -> str:
    return task_key(TOWN, task_uuid_for(TOWN, plan_id))


@pytest.fixture
def town(tmp_path: Path) -> Path:
    return make_town(tmp_path / "town", TOWN, PLAN)


def cli(town: Path, redis_url: str, *args: str, **kw: object) -> tuple[int, str, str]:
    done = run_cli(town, *args, redis_url=redis_url, **kw)  # type: ignore[arg-type]
    return done.returncode, done.stdout, done.stderr


def test_push_twice_leaves_one_task_per_entry_in_tinytown_shape(
    town: Path, redis_url: str, rdb: redis.Redis
) -> None:
    agent = register_agent(rdb, TOWN, "backend")
    code, out, err = cli(town, redis_url, "push")
    assert code == 0, err
    assert out.splitlines() == [
        "⬆️  Pushed 3 tasks from tasks.toml to Redis",
        "created 3, updated 0, deleted 0, unchanged 0",
    ]
    api = rdb.hgetall(key("auth-api"))
    assert set(api) == {
        "id",
        "description",
        "state",
        "created_at",
        "updated_at",
        "tags",
        "assigned_to",
    }
    assert api["assigned_to"] == agent and api["state"] == "pending"
    assert json.loads(api["tags"]) == ["auth", "api", "plan:auth-api"]
    assert api["tags"] == '["auth","api","plan:auth-api"]'  # compact, as serde_json writes it
    tests = rdb.hgetall(key("auth-tests"))
    assert tests["parent_id"] == api["id"]
    # Unassigned pending tasks are claimable; the assigned one is not.
    assert set(rdb.lrange(f"tt:{TOWN}:backlog", 0, -1)) == {
        task_uuid_for(TOWN, "auth-tests"),
        task_uuid_for(TOWN, "docs"),
    }
    rdb.config_resetstat()
    code, out, _ = cli(town, redis_url, "push")
    assert code == 0
    assert out.splitlines()[1] == "created 0, updated 0, deleted 0, unchanged 3"
    assert write_counts(rdb) == {}
    assert len(rdb.keys(f"tt:{TOWN}:task:*")) == 3


def test_pull_brings_a_tinytown_update_and_keeps_every_other_byte(
    town: Path, redis_url: str, rdb: redis.Redis
) -> None:
    assert cli(town, redis_url, "push")[0] == 0
    agent = register_agent(rdb, TOWN, "frontend")
    start_task(rdb, TOWN, task_uuid_for(TOWN, "docs"), agent)  # HDEL + HSET pipeline, no MULTI
    code, out, err = cli(town, redis_url, "pull")
    assert code == 0, err
    assert out.splitlines() == [
        "⬇️  Pulled 3 tasks from Redis to tasks.toml",
        "created 0, updated 1, deleted 0, unchanged 2",
    ]
    expected = PLAN.replace(
        'description = "Document the login flow"\nstatus = "pending"\n',
        'description = "Document the login flow"\nstatus = "running"\nagent = "frontend"\n',
    )
    assert (town / "tasks.toml").read_text() == expected  # every other byte is as it was
    before = os.stat(town / "tasks.toml")
    code, out, _ = cli(town, redis_url, "pull")
    assert code == 0 and out.splitlines()[1] == "created 0, updated 0, deleted 0, unchanged 3"
    after = os.stat(town / "tasks.toml")
    assert (after.st_mtime_ns, after.st_ino) == (before.st_mtime_ns, before.st_ino)


def test_edits_on_both_sides_survive_push_and_pull(
    town: Path, redis_url: str, rdb: redis.Redis
) -> None:
    assert cli(town, redis_url, "push")[0] == 0
    plan = (town / "tasks.toml").read_text()
    plan = plan.replace("Write auth API tests", "Write auth API tests, incl. tokens")
    plan = plan.replace('"Document the login flow"', '"Document the login and logout flows"')
    (town / "tasks.toml").write_text(plan)
    # In Redis: another field of auth-tests, and a third task completed with a result.
    tests = rdb.hgetall(key("auth-tests"))
    set_task(rdb, TOWN, {**tests, "state": "failed", "result": "flaky"})
    api = rdb.hgetall(key("auth-api"))
    set_task(rdb, TOWN, {**api, "state": "completed", "result": "done"})
    assert cli(town, redis_url, "push")[0] == 0
    assert cli(town, redis_url, "pull")[0] == 0
    assert rdb.hget(key("auth-tests"), "description") == "Write auth API tests, incl. tokens"
    assert rdb.hget(key("auth-tests"), "state") == "failed"
    assert rdb.hget(key("docs"), "description") == "Document the login and logout flows"
    text = (town / "tasks.toml").read_text()
    assert 'status = "failed"' in text and 'result = "flaky"' in text and 'result = "done"' in text
    assert "incl. tokens" in text and "logout" in text
    _code, out, _ = cli(town, redis_url, "conflicts")
    assert out.strip() == "no conflicts"


def test_same_field_edited_both_ways_is_settled_and_recorded(
    town: Path, redis_url: str, rdb: redis.Redis
) -> None:
    assert cli(town, redis_url, "push")[0] == 0
    (town / "tasks.toml").write_text(PLAN.replace("Document the login flow", "Docs (file)"))
    docs = rdb.hgetall(key("docs"))
    set_task(rdb, TOWN, {**docs, "description": "Docs (redis)"})
    assert cli(town, redis_url, "push")[0] == 0
    assert rdb.hget(key("docs"), "description") == "Docs (file)"  # the file owns descriptions
    assert cli(town, redis_url, "pull")[0] == 0
    _code, out, _ = cli(town, redis_url, "conflicts", "--json")
    recorded = json.loads(out)["recorded"]
    assert [(c["plan_id"], c["field"], c["file"], c["redis"], c["winner"]) for c in recorded] == [
        ("docs", "description", "Docs (file)", "Docs (redis)", "file")
    ]
    assert "Docs (redis)" in cli(town, redis_url, "conflicts")[1]


def test_broken_plan_exits_1_naming_file_and_line_and_writes_nothing(
    town: Path, redis_url: str, rdb: redis.Redis
) -> None:
    (town / "tasks.toml").write_text(PLAN.replace('status = "pending"', 'status = "sleeping"'))
    rdb.config_resetstat()
    code, _out, err = cli(town, redis_url, "push")
    assert code == 1
    assert "tasks.toml:21:" in err and "sleeping" in err
    assert write_counts(rdb) == {} and rdb.keys("*") == []
    (town / "tasks.toml").write_text(PLAN.replace('id = "docs"', 'id = "docs'))
    code, _, err = cli(town, redis_url, "push")
    assert code == 1 and "tasks.toml:19" in err


def test_dry_run_writes_nothing(town: Path, redis_url: str, rdb: redis.Redis) -> None:
    rdb.config_resetstat()
    code, out, _ = cli(town, redis_url, "push", "--dry-run")
    assert code == 0
    assert "\n  redis: create auth-api: " in out and "would create 3," in out
    assert write_counts(rdb) == {} and rdb.keys("*") == []
    text = (town / "tasks.toml").read_text()
    set_task(rdb, TOWN, new_task("From an agent", []))
    code, out, _ = cli(town, redis_url, "pull", "--dry-run")
    assert "\n  file: create task-" in out
    assert (town / "tasks.toml").read_text() == text


def test_untagged_redis_task_is_pulled_and_tagged_once(
    town: Path, redis_url: str, rdb: redis.Redis
) -> None:
    fields = new_task("Investigate flaky login test", ["bug"])
    set_task(rdb, TOWN, fields)
    derived = "task-" + fields["id"].replace("-", "")[:8]
    assert cli(town, redis_url, "pull")[0] == 0
    text = (town / "tasks.toml").read_text()
    assert text.startswith(PLAN)  # appended at the end
    assert f'id = "{derived}"' in text and "Investigate flaky login test" in text
    assert json.loads(rdb.hget(task_key(TOWN, fields["id"]), "tags")) == ["bug", f"plan:{derived}"]
    assert cli(town, redis_url, "push")[0] == 0
    assert len(rdb.keys(f"tt:{TOWN}:task:*")) == 4  # the pulled task was not pushed twice


def test_unknown_agent_causes_no_churn(town: Path, redis_url: str, rdb: redis.Redis) -> None:
    code, _, err = cli(town, redis_url, "push")
    assert code == 0 and "no agent is named 'backend'" in err
    assert "assigned_to" not in rdb.hgetall(key("auth-api"))
    assert task_uuid_for(TOWN, "auth-api") not in rdb.lrange(f"tt:{TOWN}:backlog", 0, -1)
    text = (town / "tasks.toml").read_text()
    rdb.config_resetstat()
    for command in ("pull", "push", "pull"):
        assert cli(town, redis_url, command)[0] == 0
    assert (town / "tasks.toml").read_text() == text
    assert write_counts(rdb) == {}
    # Once an agent of that name exists, the next push assigns it.
    agent = register_agent(rdb, TOWN, "backend")
    assert cli(town, redis_url, "push")[0] == 0
    assert rdb.hget(key("auth-api"), "assigned_to") == agent


def test_deletions_both_ways(town: Path, redis_url: str, rdb: redis.Redis) -> None:
    assert cli(town, redis_url, "push")[0] == 0
    docs_uuid = task_uuid_for(TOWN, "docs")
    (town / "tasks.toml").write_text(PLAN.split('\n[[tasks]]\nid = "docs"')[0])
    code, out, _ = cli(town, redis_url, "push")
    assert code == 0 and "deleted 1" in out
    assert not rdb.exists(key("docs")) and docs_uuid not in rdb.lrange(f"tt:{TOWN}:backlog", 0, -1)
    rdb.delete(key("auth-tests"))
    assert cli(town, redis_url, "pull")[0] == 0
    text = (town / "tasks.toml").read_text()
    assert "auth-tests" not in text and "# The API first." in text and "auth-api" in text


def test_empty_plan_never_deletes(town: Path, redis_url: str, rdb: redis.Redis) -> None:
    assert cli(town, redis_url, "push")[0] == 0
    (town / "tasks.toml").write_text("")
    code, _, err = cli(town, redis_url, "push")
    assert code == 1 and "refusing to delete 3" in err
    assert len(rdb.keys(f"tt:{TOWN}:task:*")) == 3
    code, _, _ = cli(town, redis_url, "push", "--force")
    assert code == 0 and rdb.keys(f"tt:{TOWN}:task:*") == []


def test_duplicates_left_by_tt_sync_are_reported_not_merged(
    town: Path, redis_url: str, rdb: redis.Redis
) -> None:
    for _ in range(2):  # what `tt sync push` twice leaves behind
        set_task(rdb, TOWN, new_task("Document the login flow", ["plan:docs"]))
    code, _out, err = cli(town, redis_url, "check")
    assert code == 1 and "2 Redis tasks carry plan:docs" in err
    assert len(rdb.keys(f"tt:{TOWN}:task:*")) == 2


def test_unreadable_hash_is_skipped_and_never_touched(
    town: Path, redis_url: str, rdb: redis.Redis
) -> None:
    assert cli(town, redis_url, "push")[0] == 0
    rdb.hset(key("docs"), "state", "exploded")
    before = rdb.hgetall(key("docs"))
    code, _, err = cli(town, redis_url, "pull")
    assert code == 0 and key("docs") in err and "exploded" in err
    assert "Document the login flow" in (town / "tasks.toml").read_text()
    assert cli(town, redis_url, "push")[0] == 0
    assert rdb.hgetall(key("docs")) == before


def test_usage_and_config_errors_exit_2(town: Path, redis_url: str) -> None:
    assert cli(town, redis_url, "frobnicate")[0] == 2
    code, _, err = cli(town, "http://nope", "push")
    assert code == 2 and "--redis-url" in err


def test_unreachable_redis_exits_3(town: Path, tmp_path: Path) -> None:
    code, _, err = cli(town, f"unix://{tmp_path}/nothing.sock", "push")
    assert code == 3 and "cannot reach Redis" in err


def test_manual_policy_leaves_the_task_until_resolved(
    town: Path, redis_url: str, rdb: redis.Redis
) -> None:
    (town / "ttsyncd.toml").write_text('[sync]\npolicy = "manual"\n')
    assert cli(town, redis_url, "push")[0] == 0
    (town / "tasks.toml").write_text(PLAN.replace("Document the login flow", "Docs (file)"))
    docs = rdb.hgetall(key("docs"))
    set_task(rdb, TOWN, {**docs, "description": "Docs (redis)", "state": "running"})
    code, _, err = cli(town, redis_url, "push")
    assert code == 1 and "left for you" in err
    assert rdb.hget(key("docs"), "description") == "Docs (redis)"  # unsynced, untouched
    code, _, _ = cli(town, redis_url, "pull")
    assert code == 1 and "Docs (file)" in (town / "tasks.toml").read_text()
    pending = json.loads(cli(town, redis_url, "conflicts", "--json")[1])["pending"]
    assert [(c["field"], c["file"], c["redis"]) for c in pending] == [
        ("description", "Docs (file)", "Docs (redis)")
    ]
    code, out, _ = cli(town, redis_url, "resolve", "docs", "--take", "redis")
    assert code == 0, out
    text = (town / "tasks.toml").read_text()
    assert "Docs (redis)" in text and 'status = "running"' in text
    assert cli(town, redis_url, "push")[0] == 0 and cli(town, redis_url, "pull")[0] == 0
    recorded = json.loads(cli(town, redis_url, "conflicts", "--json")[1])
    assert recorded["pending"] == []
    assert [c["winner"] for c in recorded["recorded"]] == [None, "redis"]


def test_repair_keeps_the_newest_duplicate_and_cleans_the_backlog(
    town: Path, redis_url: str, rdb: redis.Redis
) -> None:
    copies = []
    for n in range(3):  # what `tt sync push` three times leaves behind
        fields = new_task("Document the login flow", ["plan:docs"])
        fields["updated_at"] = f"2026-11-26T10:0{n}:00+00:00"
        set_task(rdb, TOWN, fields)
        rdb.rpush(f"tt:{TOWN}:backlog", fields["id"])
        copies.append(fields["id"])
    code, out, _ = cli(town, redis_url, "repair", "--dry-run")
    assert code == 0 and f"keeping {copies[2]}" in out and "would delete" in out
    assert len(rdb.keys(f"tt:{TOWN}:task:*")) == 3
    code, out, _ = cli(town, redis_url, "repair")
    assert code == 0 and "deleted 2 duplicate task(s)" in out
    assert rdb.keys(f"tt:{TOWN}:task:*") == [task_key(TOWN, copies[2])]
    assert rdb.lrange(f"tt:{TOWN}:backlog", 0, -1) == [copies[2]]
    code, _, err = cli(town, redis_url, "check")
    assert "carry plan:docs" not in err
    code, out, _ = cli(town, redis_url, "repair")
    assert code == 0 and "0 duplicate task(s)" in out


def test_resolve_touches_only_the_task_it_names(
    town: Path, redis_url: str, rdb: redis.Redis
) -> None:
    """`resolve docs` settles docs; an entry added meanwhile waits for the next push."""
    (town / "ttsyncd.toml").write_text('[sync]\npolicy = "manual"\n')
    assert cli(town, redis_url, "push")[0] == 0
    text = PLAN.replace("Document the login flow", "Docs (file)")
    (town / "tasks.toml").write_text(text)
    docs = rdb.hgetall(key("docs"))
    set_task(rdb, TOWN, {**docs, "description": "Docs (redis)"})
    assert cli(town, redis_url, "push")[0] == 1  # the conflict is left for the user
    (town / "tasks.toml").write_text(text + '\n[[tasks]]\ndescription = "Brand new"\n')
    code, out, _ = cli(town, redis_url, "resolve", "docs", "--take", "file")
    assert code == 0, out
    assert rdb.hget(key("docs"), "description") == "Docs (file)"
    assert not rdb.exists(key("brand-new")), "resolve pushed a task it was not asked about"
    assert cli(town, redis_url, "push")[0] == 0
    assert rdb.exists(key("brand-new"))
