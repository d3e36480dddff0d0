"""The one-shot commands on what must not be undone or deleted: the deletion guard as a state,
tasks an agent holds, stale writes set aside and applied on purpose with `resolve`. The real
CLI in a subprocess against a real redis-server, Redis changed the way tinytown changes it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import redis

from tests.helpers import make_town, run_cli
from ttsyncd.codec import task_key
from ttsyncd.identity import task_uuid_for
from ttsyncd.tinytown import register_agent, set_task, start_task

TOWN = "guard"
IDS = [f"t{i}" for i in range(10)]


def plan(ids: list[str], **descriptions: str) -> str:
    return "".join(
        f'[[tasks]]\nid = "{i}"\ndescription = "{descriptions.get(i, "task " + i)}"\n\n'
        for i in ids
    )


def key(plan_id: str) -> str:
    return task_key(TOWN, task_uuid_for(TOWN, plan_id))


@pytest.fixture
def town(tmp_path: Path) -> Path:
    return make_town(tmp_path / "town", TOWN, plan(IDS))


def cli(town: Path, redis_url: str, *args: str) -> tuple[int, str, str]:
    done = run_cli(town, *args, redis_url=redis_url)
    return done.returncode, done.stdout, done.stderr


def recorded(town: Path, redis_url: str) -> list[dict[str, Any]]:
    code, out, _ = cli(town, redis_url, "conflicts", "--json")
    assert code == 0
    entries: list[dict[str, Any]] = json.loads(out)["recorded"]
    return entries


def complete(client: redis.Redis, plan_id: str, result: str) -> None:
    """tinytown's complete() on the hash as it is now, written back whole."""
    fields = {str(k): str(v) for k, v in client.hgetall(key(plan_id)).items()}
    fields.update(state="completed", result=result, completed_at=fields["updated_at"])
    set_task(client, TOWN, fields)


def test_a_refused_deletion_stands_when_an_agent_touches_one_of_its_tasks(
    town: Path, redis_url: str, rdb: redis.Redis
) -> None:
    assert cli(town, redis_url, "push")[0] == 0
    agent = register_agent(rdb, TOWN, "bob")
    (town / "tasks.toml").write_text(plan(IDS[:4]))  # 6 of 10 removed: over both limits
    code, _, err = cli(town, redis_url, "push")
    assert code == 1 and "refusing to delete 6 of 10" in err
    assert len(rdb.keys(f"tt:{TOWN}:task:*")) == 10
    # An agent takes one of them up: the modification wins, it comes back into the file, and
    # the 5 left would be under the limit (5 is not more than max_delete_min). Still refused.
    start_task(rdb, TOWN, task_uuid_for(TOWN, "t9"), agent)
    code, out, err = cli(town, redis_url, "pull")
    assert code == 0, (out, err)
    assert 'id = "t9"' in (town / "tasks.toml").read_text()
    code, _, err = cli(town, redis_url, "push")
    assert code == 1 and "refusing to delete 5 of 10" in err
    assert len(rdb.keys(f"tt:{TOWN}:task:*")) == 10
    # A new save by the user is judged afresh: 5 deletions are within the limits.
    text = (town / "tasks.toml").read_text()
    (town / "tasks.toml").write_text(text.replace("task t0", "task t0, edited"))
    code, out, err = cli(town, redis_url, "push")
    assert code == 0 and "deleted 5" in out, err
    assert sorted(rdb.keys(f"tt:{TOWN}:task:*")) == sorted(key(i) for i in [*IDS[:4], "t9"])


def test_resolve_deletes_one_refused_task_and_the_refusal_holds_for_the_rest(
    town: Path, redis_url: str, rdb: redis.Redis
) -> None:
    assert cli(town, redis_url, "push")[0] == 0
    (town / "tasks.toml").write_text(plan(IDS[:3]))
    assert cli(town, redis_url, "push")[0] == 1
    code, out, _ = cli(town, redis_url, "resolve", "t3", "--take", "file")
    assert code == 0 and "deleted 1" in out
    assert not rdb.exists(key("t3")) and len(rdb.keys(f"tt:{TOWN}:task:*")) == 9
    code, _, err = cli(town, redis_url, "push")
    assert code == 1 and "refusing to delete 6 of 9" in err
    assert cli(town, redis_url, "push", "--force")[0] == 0
    assert len(rdb.keys(f"tt:{TOWN}:task:*")) == 3


def test_an_entry_removed_while_an_agent_runs_its_task_comes_back(
    town: Path, redis_url: str, rdb: redis.Redis
) -> None:
    assert cli(town, redis_url, "push")[0] == 0
    start_task(rdb, TOWN, task_uuid_for(TOWN, "t1"), register_agent(rdb, TOWN, "bob"))
    assert cli(town, redis_url, "pull")[0] == 0
    held_hash = rdb.hgetall(key("t1"))
    (town / "tasks.toml").write_text(plan([i for i in IDS if i not in ("t1", "t2")]))
    code, out, err = cli(town, redis_url, "push")
    assert code == 0 and "deleted 1" in out  # t2 is free: deleted
    assert "held t1: removed from the file while running in Redis" in err
    assert rdb.hgetall(key("t1")) == held_hash and not rdb.exists(key("t2"))
    code, out, _ = cli(town, redis_url, "pull")
    text = (town / "tasks.toml").read_text()
    assert 'id = "t1"' in text and 'status = "running"' in text and 'id = "t2"' not in text
    held = [e for e in recorded(town, redis_url) if e["kind"] == "held"]
    assert [(e["plan_id"], e["from_side"], e["redis"]) for e in held] == [("t1", "file", "running")]
    assert (
        "held t1: removed from the file while running in Redis"
        in cli(town, redis_url, "conflicts")[1]
    )
    # On purpose: resolve with the file's side applies the removal, in Redis and the file.
    assert cli(town, redis_url, "resolve", "t1", "--take", "file")[0] == 0
    assert not rdb.exists(key("t1")) and 'id = "t1"' not in (town / "tasks.toml").read_text()


def test_a_restored_old_plan_is_set_aside_and_resolve_applies_it(
    town: Path, redis_url: str, rdb: redis.Redis
) -> None:
    assert cli(town, redis_url, "push")[0] == 0
    committed = (town / "tasks.toml").read_text()  # what git holds
    start_task(rdb, TOWN, task_uuid_for(TOWN, "t1"), register_agent(rdb, TOWN, "bob"))
    assert cli(town, redis_url, "pull")[0] == 0
    complete(rdb, "t1", "shipped")
    assert cli(town, redis_url, "pull")[0] == 0
    # git checkout -- tasks.toml, plus the user's new edit of t5 on top of it
    (town / "tasks.toml").write_text(committed.replace("task t5", "task t5, edited"))
    code, _, err = cli(town, redis_url, "push")
    assert code == 0 and "stale t1.status: the file's 'pending' undoes the newer 'completed'" in err
    done = rdb.hgetall(key("t1"))
    assert (done["state"], done["result"]) == ("completed", "shipped")
    assert rdb.hget(key("t5"), "description") == "task t5, edited"
    assert cli(town, redis_url, "pull")[0] == 0
    text = (town / "tasks.toml").read_text()
    assert 'status = "completed"' in text and 'result = "shipped"' in text
    assert "task t5, edited" in text
    stale = sorted(
        (e["plan_id"], e["field"], e["from_side"], e["file"], e["redis"])
        for e in recorded(town, redis_url)
        if e["kind"] == "stale"
    )
    assert stale == [
        ("t1", "agent", "file", None, "bob"),
        ("t1", "result", "file", None, "shipped"),
        ("t1", "status", "file", "pending", "completed"),
    ]
    resolvable = json.loads(cli(town, redis_url, "conflicts", "--json")[1])["set_aside"]
    assert sorted(c["field"] for c in resolvable) == ["agent", "result", "status"]
    # Applied on purpose: both sides take the file's old values.
    code, out, _ = cli(town, redis_url, "resolve", "t1", "--take", "file")
    assert code == 0, out
    reopened = rdb.hgetall(key("t1"))
    assert reopened["state"] == "pending" and "result" not in reopened
    assert "assigned_to" not in reopened
    assert 'status = "completed"' not in (town / "tasks.toml").read_text()
    # Nothing is left to resolve, and a sync now changes nothing.
    assert json.loads(cli(town, redis_url, "conflicts", "--json")[1])["set_aside"] == []
    assert cli(town, redis_url, "check")[1].endswith("in sync\n")


def test_stale_writes_can_be_turned_off(town: Path, redis_url: str, rdb: redis.Redis) -> None:
    (town / "ttsyncd.toml").write_text('[sync]\nstale_writes = "apply"\n')
    assert cli(town, redis_url, "push")[0] == 0
    committed = (town / "tasks.toml").read_text()
    start_task(rdb, TOWN, task_uuid_for(TOWN, "t1"), register_agent(rdb, TOWN, "bob"))
    assert cli(town, redis_url, "pull")[0] == 0
    (town / "tasks.toml").write_text(committed)
    assert cli(town, redis_url, "push")[0] == 0
    assert rdb.hget(key("t1"), "state") == "pending"
    assert not [e for e in recorded(town, redis_url) if e["kind"] == "stale"]
