"""User workflows that must not lose work, end to end: the real `ttsyncd run` in a subprocess on
a redis-server of the test's own, agents writing Redis exactly as tinytown 0.10 does (read the
whole hash, change it, write it all back, sometimes from a copy read earlier), and a person
saving tasks.toml from an editor buffer, with vim, with git.

The contract (DESIGN §3, "Stale writes" and "Tasks an agent holds"): a write made from a copy
older than the other side's latest change, which undoes that change, is not applied; both sides
end with the newer values plus whatever new change the stale copy carried, and `conflicts`
records it as `kind: "stale"`. A task an agent holds is not deleted because its entry left the
file. The deletion guard is a state. Deliberate changes (requeue, reassignment, re-opening,
cancelling, returning to one's own earlier text) are never taken as stale.

Asserts on final states, records and counts, never on how long something took."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from tests.daemon_harness import (
    QUIET_S,
    SAVES,
    Daemon,
    RedisServer,
    rewrite_in_place,
    started,
    wait_until,
    write_temp_and_rename,
)
from tests.helpers import make_town, run_cli
from tests.workflow_helpers import (
    Agent,
    assert_no_stale_record,
    assert_stale_logged,
    assert_stale_record,
    assign,
    complete,
    differences,
    fail,
    file_entries,
    file_entry,
    log_lines,
    records_of,
    requeue,
    settled,
    start,
    status_of,
    with_fields,
    without_entries,
)
from ttsyncd.codec import task_key
from ttsyncd.identity import task_uuid_for

TOWN = "flow"
PLAN = """\
# The sprint
[[tasks]]
id = "api"
description = "Build the API"

# docs come second
[[tasks]]
id = "docs"
description = "Write the docs"
tags = ["docs"]

[[tasks]]
id = "tests"
description = "Write the tests"
"""
CONVERGE_S = 30.0  # generous: a shared, noisy machine


def key(plan_id: str, town: str = TOWN) -> str:
    return task_key(town, task_uuid_for(town, plan_id))


@pytest.fixture
def client(server: RedisServer) -> Iterator[redis.Redis]:
    connection = server.client()
    yield connection
    connection.close()


@pytest.fixture
def town(tmp_path: Path) -> Path:
    return make_town(tmp_path / "town", TOWN, PLAN)


@pytest.fixture
def daemon(town: Path, server: RedisServer) -> Iterator[Daemon]:
    yield from started(town, server.url, stop_timeout=10)


def tasks_file(town: Path) -> Path:
    return town / "tasks.toml"


def wait_entry(path: Path, plan_id: str, what: str, **expected: object) -> None:
    """Until the file's entry holds `expected` (None: the key is absent; a tuple: any of)."""

    def matches(value: object, wanted: object) -> bool:
        return value in wanted if isinstance(wanted, tuple) else value == wanted

    def holds() -> bool:
        entry = file_entry(path, plan_id)
        return entry is not None and all(matches(entry.get(k), v) for k, v in expected.items())

    wait_until(holds, CONVERGE_S, what)


def wait_redis(client: redis.Redis, plan_id: str, what: str, **expected: str | None) -> None:
    def holds() -> bool:
        fields = client.hgetall(key(plan_id))
        return bool(fields) and all(fields.get(k) == v for k, v in expected.items())

    wait_until(holds, CONVERGE_S, what)


def settle(daemon: Daemon, client: redis.Redis) -> None:
    """Converged: idle, the file equal to Redis. A daemon that lost an edit may converge on
    the wrong values; the assertions after this say which."""
    try:
        settled(daemon, client, TOWN, CONVERGE_S)
    except AssertionError as error:
        lines = differences(tasks_file(daemon.town), client, TOWN)
        raise AssertionError(f"{error}:\n" + "\n".join(lines)) from None


# ---------------------------------------------------------------------------- 1. stale buffer


@pytest.mark.parametrize("save", SAVES.values(), ids=SAVES.keys())
def test_a_stale_editor_buffer_does_not_undo_an_agents_start(
    daemon: Daemon, server: RedisServer, client: redis.Redis, town: Path,
    save: Callable[[Path, str], None],
) -> None:  # fmt: skip
    """The buffer holds the file from before the daemon pulled an agent's start of `api`; the
    user edits `docs` in it and saves it whole. `api` stays running with its agent."""
    path = tasks_file(town)
    backend = Agent(client, TOWN, "backend")
    buffer = path.read_text()  # the editor loads the file
    started = backend.start("api")
    wait_entry(path, "api", "the start pulled into the file", status="running", agent="backend")
    save(path, buffer.replace("Write the docs", "Write the user docs"))
    wait_redis(client, "docs", "the buffer's own edit in Redis", description="Write the user docs")
    settle(daemon, client)

    in_redis = client.hgetall(key("api"))
    assert in_redis["state"] == "running", in_redis
    assert in_redis["assigned_to"] == backend.uuid, in_redis
    assert in_redis["started_at"] == started["started_at"], in_redis
    assert "completed_at" not in in_redis, in_redis
    entry = file_entry(path, "api")
    assert entry is not None and entry.get("status") == "running", entry
    assert entry.get("agent") == "backend", entry
    assert file_entry(path, "docs")["description"] == "Write the user docs"  # type: ignore[index]
    assert_stale_record(town, server.url, "api", "status", from_side="file")
    assert_stale_logged(daemon, "api", "status")


@pytest.mark.parametrize("save", SAVES.values(), ids=SAVES.keys())
def test_a_stale_editor_buffer_does_not_undo_a_completed_task(
    daemon: Daemon, server: RedisServer, client: redis.Redis, town: Path,
    save: Callable[[Path, str], None],
) -> None:  # fmt: skip
    """As above, but the agent also completed `api` with a result before the stale save: the
    result stays on both sides, the lifecycle times are the agent's."""
    path = tasks_file(town)
    backend = Agent(client, TOWN, "backend")
    buffer = path.read_text()
    backend.start("api")
    wait_entry(path, "api", "the start in the file", status="running")
    done = backend.update("api", complete("API built"))
    wait_entry(path, "api", "the completion in the file", status="completed", result="API built")
    save(path, buffer.replace("Write the docs", "Write the user docs"))
    wait_redis(client, "docs", "the buffer's own edit in Redis", description="Write the user docs")
    settle(daemon, client)

    in_redis = client.hgetall(key("api"))
    assert in_redis["state"] == "completed", in_redis
    assert in_redis.get("result") == "API built", in_redis
    assert in_redis.get("assigned_to") == backend.uuid, in_redis
    assert in_redis.get("started_at") == done["started_at"], in_redis
    assert in_redis.get("completed_at") == done["completed_at"], in_redis
    entry = file_entry(path, "api")
    assert entry is not None, path.read_text()
    assert (entry.get("status"), entry.get("result")) == ("completed", "API built"), entry
    assert_stale_record(town, server.url, "api", "status", from_side="file")
    assert_stale_record(town, server.url, "api", "result", from_side="file")


# ---------------------------------------------------------------------------- 2. real vim

VIM_SCRIPT = """\
call writefile(['loaded'], '{loaded}')
while !filereadable('{go}')
  sleep 50m
endwhile
%s/Write the docs/Write the user docs/
w!
q!
"""


def test_vim_saving_a_buffer_loaded_before_an_agents_start(
    daemon: Daemon, server: RedisServer, client: redis.Redis, town: Path, tmp_path: Path
) -> None:
    """Real vim: the buffer is loaded, the agent starts `api` and the daemon pulls it into the
    file, then vim edits `docs` and writes (`:w!`, past its "changed since reading")."""
    vim = shutil.which("vim")
    if vim is None:
        pytest.skip("vim is not installed (CI installs it from Debian where apt is available)")
    path = tasks_file(town)
    loaded, go = tmp_path / "vim-loaded", tmp_path / "vim-go"
    script = tmp_path / "edit.vim"
    script.write_text(VIM_SCRIPT.format(loaded=loaded, go=go))
    backend = Agent(client, TOWN, "backend")
    # vim asks "The file has been changed since reading it!!! Do you really want to write to
    # it (y/n)?" even for `:w!`; in -Es mode it reads the answer from stdin: the user says y.
    editor = subprocess.Popen(
        [vim, "-Nu", "NONE", "-i", "NONE", "-n", "-Es", "-S", str(script), str(path)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={**os.environ, "HOME": str(tmp_path), "TERM": "dumb"},
    )  # fmt: skip
    try:
        wait_until(loaded.exists, CONVERGE_S, "vim to load the buffer")
        started = backend.start("api")
        wait_entry(path, "api", "the start pulled into the file", status="running")
        go.write_text("go")
        output, _ = editor.communicate(input="y\n", timeout=CONVERGE_S)
    finally:
        if editor.poll() is None:
            editor.kill()
            editor.wait()
    assert editor.returncode == 0, output
    wait_redis(client, "docs", "vim's edit in Redis", description="Write the user docs")
    settle(daemon, client)

    in_redis = client.hgetall(key("api"))
    assert in_redis["state"] == "running", in_redis
    assert in_redis.get("assigned_to") == backend.uuid, in_redis
    assert in_redis.get("started_at") == started["started_at"], in_redis
    entry = file_entry(path, "api")
    assert entry is not None and entry.get("status") == "running", entry
    assert entry.get("agent") == "backend", entry
    assert file_entry(path, "docs")["description"] == "Write the user docs"  # type: ignore[index]
    assert_stale_record(town, server.url, "api", "status", from_side="file")


# ---------------------------------------------------------------------------- 3. real git

GIT_ENV = {
    "GIT_AUTHOR_NAME": "Test", "GIT_AUTHOR_EMAIL": "test@example.invalid",
    "GIT_COMMITTER_NAME": "Test", "GIT_COMMITTER_EMAIL": "test@example.invalid",
    "GIT_CONFIG_NOSYSTEM": "1",
}  # fmt: skip
OLD_PLAN = PLAN[: PLAN.index('\n[[tasks]]\nid = "tests"')] + "\n"  # no `tests` entry yet


def git(town: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        ["git", "-c", "init.defaultBranch=main", "-c", "commit.gpgsign=false", *args],
        cwd=town, capture_output=True, text=True, timeout=60, check=False,
        env={**os.environ, **GIT_ENV, "HOME": str(town.parent)},
    )  # fmt: skip
    if check:
        assert done.returncode == 0, f"git {' '.join(args)}: {done.stdout}{done.stderr}"
    return done


@pytest.fixture
def git_town(tmp_path: Path) -> Path:
    """A town that is a git repo: `old` has the plan without `tests`; `main` adds it."""
    if shutil.which("git") is None:
        pytest.skip("git is not installed (CI installs it from Debian where apt is available)")
    town = make_town(tmp_path / "town", TOWN, OLD_PLAN)
    (town / ".gitignore").write_text(".tt/\n")
    git(town, "init", "-q")
    git(town, "add", ".")
    git(town, "commit", "-q", "-m", "the plan")
    git(town, "branch", "old")
    (town / "tasks.toml").write_text(PLAN)
    git(town, "commit", "-q", "-am", "add the tests task")
    return town


@pytest.fixture
def git_daemon(git_town: Path, server: RedisServer) -> Iterator[Daemon]:
    running = Daemon(git_town, server.url)
    running.wait_ready()
    yield running
    assert running.terminate(timeout=10) == 0


def agent_work(client: redis.Redis, path: Path) -> tuple[Agent, dict[str, str]]:
    """`api` started and completed with a result, `tests` started: each pulled into the file."""
    backend = Agent(client, TOWN, "backend")
    backend.start("api")
    wait_entry(path, "api", "api running in the file", status="running")
    backend.update("api", complete("API built"))
    wait_entry(path, "api", "api completed in the file", status="completed", result="API built")
    tests = backend.start("tests")
    wait_entry(path, "tests", "tests running in the file", status="running")
    return backend, tests


def assert_nothing_lost(client: redis.Redis, backend: Agent, tests: dict[str, str]) -> None:
    api = client.hgetall(key("api"))
    assert api.get("state") == "completed" and api.get("result") == "API built", api
    assert client.hgetall(key("tests")) == tests, "the running task's hash was touched"
    for plan_id in ("api", "docs", "tests"):
        assert client.exists(key(plan_id)), f"{plan_id} was deleted"


def test_git_stash_does_not_undo_the_agents_work(
    git_daemon: Daemon, server: RedisServer, client: redis.Redis, git_town: Path
) -> None:
    path = tasks_file(git_town)
    backend, tests = agent_work(client, path)
    git(git_town, "stash")  # tasks.toml back to the commit: api and tests pending
    settle(git_daemon, client)
    assert_nothing_lost(client, backend, tests)
    entry = file_entries(path)
    assert entry["api"].get("status") == "completed" and entry["tests"]["status"] == "running"
    assert_stale_record(git_town, server.url, "api", "status", from_side="file")
    assert_stale_record(git_town, server.url, "tests", "status", from_side="file")
    # The stash holds the daemon's pulls; popping it onto the daemon's restored text either
    # applies or stops with a conflict git explains. Either way Redis keeps everything.
    popped = git(git_town, "stash", "pop", check=False)
    if popped.returncode != 0:
        assert "conflict" in (popped.stdout + popped.stderr).lower() or "overwritten" in (
            popped.stdout + popped.stderr
        ), popped
        git(git_town, "checkout", "--", "tasks.toml")
    settle(git_daemon, client)
    assert_nothing_lost(client, backend, tests)


def test_git_checkout_of_the_file_does_not_undo_the_agents_work(
    git_daemon: Daemon, server: RedisServer, client: redis.Redis, git_town: Path
) -> None:
    path = tasks_file(git_town)
    backend, tests = agent_work(client, path)
    git(git_town, "checkout", "--", "tasks.toml")
    settle(git_daemon, client)
    assert_nothing_lost(client, backend, tests)
    entry = file_entries(path)
    assert entry["api"].get("status") == "completed" and entry["api"].get("result") == "API built"
    assert entry["tests"].get("status") == "running" and entry["tests"].get("agent") == "backend"
    assert_stale_record(git_town, server.url, "api", "status", from_side="file")


def test_git_checkout_of_an_older_branch_keeps_statuses_and_the_running_task(
    git_daemon: Daemon, server: RedisServer, client: redis.Redis, git_town: Path
) -> None:
    """`old` lacks `tests`, which an agent is running, and has `api` pending: nothing goes back
    to pending, the result stays, the running task is held (not deleted)."""
    path = tasks_file(git_town)
    backend, tests = agent_work(client, path)
    git(git_town, "commit", "-q", "-am", "the plan as the agents left it")
    git(git_town, "checkout", "-q", "old")
    wait_entry(path, "tests", "the held task back in the file", status="running")
    settle(git_daemon, client)
    assert_nothing_lost(client, backend, tests)
    api = file_entry(path, "api")
    assert api is not None and api.get("status") == "completed", api
    assert records_of(git_town, server.url, "held", "tests", from_side="file")
    assert_stale_record(git_town, server.url, "api", "status", from_side="file")


# ---------------------------------------------------------------------------- 4. stale hash


def test_tinytowns_stale_whole_hash_write_does_not_undo_the_users_description(
    daemon: Daemon, server: RedisServer, client: redis.Redis, town: Path
) -> None:
    """get_task → (the user's new description is pushed meanwhile) → start → set_task: the
    agent's write carries the old description. Both sides keep the new one, and running."""
    path = tasks_file(town)
    backend = Agent(client, TOWN, "backend")
    copy = backend.read("api")  # get_task
    write_temp_and_rename(path, path.read_text().replace("Build the API", "Build the REST API"))
    wait_redis(client, "api", "the user's edit in Redis", description="Build the REST API")
    backend.write_back(copy, assign(backend.uuid), start())  # set_task of the stale copy
    wait_entry(path, "api", "the start in the file", status="running")
    settle(daemon, client)

    in_redis = client.hgetall(key("api"))
    assert in_redis["description"] == "Build the REST API", in_redis
    assert in_redis["state"] == "running" and in_redis.get("assigned_to") == backend.uuid
    entry = file_entry(path, "api")
    assert entry is not None and entry["description"] == "Build the REST API", entry
    assert entry.get("status") == "running" and entry.get("agent") == "backend", entry
    record = assert_stale_record(town, server.url, "api", "description", from_side="redis")
    assert (record["file"], record["redis"]) == ("Build the REST API", "Build the API"), record
    assert_stale_logged(daemon, "api", "description")


# ---------------------------------------------------------------------------- 5. held task


def test_a_held_task_removed_from_the_file_is_kept_until_resolved(
    daemon: Daemon, server: RedisServer, client: redis.Redis, town: Path
) -> None:
    """`api` is running; the user removes its entry and `tests`' (free): `tests` is deleted as
    before, `api` is held (hash untouched, entry back) until `resolve api --take file`."""
    path = tasks_file(town)
    backend = Agent(client, TOWN, "backend")
    backend.start("api")
    wait_entry(path, "api", "the start in the file", status="running")
    held_hash = client.hgetall(key("api"))
    write_temp_and_rename(path, without_entries(path.read_text(), "api", "tests"))
    wait_until(lambda: not client.exists(key("tests")), CONVERGE_S, "the free task deleted")
    wait_entry(path, "api", "the held entry back in the file", status="running", agent="backend")
    settle(daemon, client)

    assert client.hgetall(key("api")) == held_hash, "the held task's hash was touched"
    assert "tests" not in file_entries(path)
    held = records_of(town, server.url, "held", "api", from_side="file")
    assert held, run_cli(town, "conflicts", "--json", redis_url=server.url).stdout
    deleted = [e for e in log_lines(daemon, "deleted") if "tests" in (e.get("plan_ids") or ())]
    assert deleted, f"no 'deleted' log line names tests: {log_lines(daemon, 'deleted')}"

    resolved = run_cli(town, "resolve", "api", "--take", "file", redis_url=server.url)
    assert resolved.returncode == 0, resolved.stderr
    wait_until(lambda: not client.exists(key("api")), CONVERGE_S, "resolve to delete api")
    wait_until(lambda: "api" not in file_entries(path), CONVERGE_S, "api gone from the file")
    settle(daemon, client)
    assert set(file_entries(path)) == {"docs"}


# ---------------------------------------------------------------------------- 6. deletion guard

TEN = "".join(f'[[tasks]]\nid = "t{n}"\ndescription = "Task {n}"\n\n' for n in range(1, 11))
REMOVED = ("t1", "t2", "t3", "t4", "t5", "t6")  # 6 of 10: over max_delete_min=5 and half


@pytest.fixture
def ten_town(tmp_path: Path) -> Path:
    return make_town(tmp_path / "ten", TOWN, TEN)


@pytest.fixture
def ten_daemon(ten_town: Path, server: RedisServer) -> Iterator[Daemon]:
    yield from started(ten_town, server.url, stop_timeout=10)


def wait_refused(daemon: Daemon) -> dict[str, Any]:
    """Until status reports the refusal; returns that status (checked by the caller last, so
    that a daemon which loses tasks fails on the loss, not on a missing status key)."""

    def refused() -> dict[str, Any]:
        status = status_of(daemon)
        return status if "refusing to delete" in str(status["last_error"]) else {}

    return wait_until(refused, CONVERGE_S, "the refusal in status")


def assert_refusal_listed(status: dict[str, Any], plan_ids: tuple[str, ...]) -> None:
    assert status.get("refused_deletions") == sorted(plan_ids), status


def test_refused_deletions_stay_refused_while_an_agent_updates_one_of_them(
    ten_daemon: Daemon, client: redis.Redis, ten_town: Path
) -> None:
    """6 of 10 removed: refused. An agent then completes t5 (5 deletions would pass the guard
    now): still none of the others is deleted, the refusal stays. `push --force` applies."""
    path = tasks_file(ten_town)
    worker = Agent(client, TOWN, "worker")
    write_temp_and_rename(path, without_entries(path.read_text(), *REMOVED))
    refusal = wait_refused(ten_daemon)
    failures = len(log_lines(ten_daemon, "sync failed"))
    syncs = status_of(ten_daemon)["syncs"]
    worker.update("t5", complete("done by hand"))
    # Give the daemon the agent's update: it syncs, or tries and keeps refusing. Absence of a
    # deletion is what is checked, so wait for a sign it looked, then a quiet while more.
    with contextlib.suppress(AssertionError):
        wait_until(
            lambda: status_of(ten_daemon)["syncs"] > syncs
            or len(log_lines(ten_daemon, "sync failed")) > failures,
            CONVERGE_S / 3, "the daemon to take the agent's update",
        )  # fmt: skip
    ten_daemon.wait_idle()
    time.sleep(3 * QUIET_S)
    ten_daemon.wait_idle()
    for plan_id in REMOVED:
        assert client.exists(key(plan_id)), f"{plan_id} was deleted while refused"
    status = status_of(ten_daemon)
    assert "refusing to delete" in str(status["last_error"]), status
    still = set(REMOVED) - {"t5"}
    assert still <= set(status.get("refused_deletions") or ()), status
    assert client.hget(key("t5"), "state") == "completed"
    assert_refusal_listed(refusal, REMOVED)

    forced = run_cli(ten_town, "push", "--force", redis_url=None)
    assert forced.returncode == 0, forced.stderr
    for plan_id in still:
        assert not client.exists(key(plan_id)), f"{plan_id} survived push --force"
    wait_until(lambda: status_of(ten_daemon)["last_error"] is None, CONVERGE_S, "error cleared")
    assert not status_of(ten_daemon).get("refused_deletions")


def test_a_new_save_judges_refused_deletions_afresh(
    ten_daemon: Daemon, client: redis.Redis, ten_town: Path
) -> None:
    """Refused; the user saves again removing only two entries: those two are deleted, the
    refusal is gone."""
    path = tasks_file(ten_town)
    original = path.read_text()
    write_temp_and_rename(path, without_entries(original, *REMOVED))
    refusal = wait_refused(ten_daemon)
    write_temp_and_rename(path, without_entries(original, "t9", "t10"))
    wait_until(lambda: not client.exists(key("t9")) and not client.exists(key("t10")),
               CONVERGE_S, "the two deletions")  # fmt: skip
    wait_until(lambda: status_of(ten_daemon)["last_error"] is None, CONVERGE_S, "error cleared")
    assert not status_of(ten_daemon).get("refused_deletions")
    for plan_id in REMOVED:
        assert client.exists(key(plan_id)), f"{plan_id} was deleted"
    assert_refusal_listed(refusal, REMOVED)


# ---------------------------------------------------------------------------- 7. undo


@pytest.mark.parametrize("save", SAVES.values(), ids=SAVES.keys())
def test_undo_back_to_the_daemons_own_text_is_synced(
    daemon: Daemon, server: RedisServer, client: redis.Redis, town: Path,
    save: Callable[[Path, str], None],
) -> None:  # fmt: skip
    """The daemon writes V2 (an agent's start); the user saves V3 (docs reworded), synced; the
    user undoes back to V2 exactly. V2 is the daemon's own text, but the undo is the user's."""
    path = tasks_file(town)
    Agent(client, TOWN, "backend").start("api")
    wait_entry(path, "api", "the start in the file", status="running")
    settle(daemon, client)
    v2 = path.read_text()
    save(path, v2.replace("Write the docs", "Write the user docs"))
    wait_redis(client, "docs", "V3 in Redis", description="Write the user docs")
    settle(daemon, client)
    save(path, v2)  # vim: u, :w
    wait_redis(client, "docs", "the undo in Redis", description="Write the docs")
    settle(daemon, client)
    assert path.read_text() == v2
    status = status_of(daemon)
    assert not status["pending_events"]["file"] and not status["pending_events"]["redis"]
    assert status["conflicts_pending"] == 0 and status["last_error"] is None, status


# ---------------------------------------------------------------------------- 8. no false alarms


def test_requeue_is_not_stale(
    daemon: Daemon, server: RedisServer, client: redis.Redis, town: Path
) -> None:
    path = tasks_file(town)
    backend = Agent(client, TOWN, "backend")
    backend.start("api")
    wait_entry(path, "api", "the start in the file", status="running", agent="backend")
    backend.update("api", requeue())
    wait_entry(path, "api", "the requeue in the file", status=(None, "pending"), agent=None)
    settle(daemon, client)
    in_redis = client.hgetall(key("api"))
    assert in_redis["state"] == "pending", in_redis
    assert "assigned_to" not in in_redis and "started_at" not in in_redis, in_redis
    assert_no_stale_record(town, server.url)


def test_reassignment_in_redis_is_not_stale(
    daemon: Daemon, server: RedisServer, client: redis.Redis, town: Path
) -> None:
    """The user assigns `api` to backend in the file; tinytown reassigns it to frontend."""
    path = tasks_file(town)
    backend = Agent(client, TOWN, "backend")
    frontend = Agent(client, TOWN, "frontend")
    rewrite_in_place(path, with_fields(path.read_text(), "api", agent="backend"))
    wait_redis(client, "api", "the file's assignment in Redis", assigned_to=backend.uuid)
    settle(daemon, client)
    frontend.assign("api")
    wait_entry(path, "api", "the reassignment in the file", agent="frontend", status="assigned")
    settle(daemon, client)
    assert client.hget(key("api"), "assigned_to") == frontend.uuid
    assert_no_stale_record(town, server.url)


def test_reassignment_in_the_file_is_not_stale(
    daemon: Daemon, server: RedisServer, client: redis.Redis, town: Path
) -> None:
    """An agent assigned `api` to backend (pulled); the user reassigns it to frontend."""
    path = tasks_file(town)
    backend = Agent(client, TOWN, "backend")
    frontend = Agent(client, TOWN, "frontend")
    backend.assign("api")
    wait_entry(path, "api", "the assignment in the file", agent="backend", status="assigned")
    settle(daemon, client)
    rewrite_in_place(path, with_fields(path.read_text(), "api", agent="frontend"))
    wait_redis(client, "api", "the reassignment in Redis", assigned_to=frontend.uuid)
    settle(daemon, client)
    assert file_entry(path, "api")["agent"] == "frontend"  # type: ignore[index]
    assert_no_stale_record(town, server.url)


def test_reopening_a_failed_task_by_its_status_is_not_stale(
    daemon: Daemon, server: RedisServer, client: redis.Redis, town: Path
) -> None:
    path = tasks_file(town)
    backend = Agent(client, TOWN, "backend")
    backend.start("api")
    wait_entry(path, "api", "the start in the file", status="running")
    backend.update("api", fail("tests broke"))
    wait_entry(path, "api", "the failure in the file", status="failed", result="tests broke")
    settle(daemon, client)
    rewrite_in_place(path, with_fields(path.read_text(), "api", status="pending"))
    wait_redis(client, "api", "the re-opening in Redis", state="pending")
    settle(daemon, client)
    in_redis = client.hgetall(key("api"))
    assert in_redis["state"] == "pending", in_redis
    assert "started_at" not in in_redis and "completed_at" not in in_redis, in_redis
    assert file_entry(path, "api")["status"] == "pending"  # type: ignore[index]
    assert_no_stale_record(town, server.url)


def test_cancelling_in_the_file_is_not_stale(
    daemon: Daemon, server: RedisServer, client: redis.Redis, town: Path
) -> None:
    path = tasks_file(town)
    Agent(client, TOWN, "backend").start("api")
    wait_entry(path, "api", "the start in the file", status="running")
    settle(daemon, client)
    rewrite_in_place(path, with_fields(path.read_text(), "api", status="cancelled"))
    wait_redis(client, "api", "the cancel in Redis", state="cancelled")
    settle(daemon, client)
    assert file_entry(path, "api")["status"] == "cancelled"  # type: ignore[index]
    assert "completed_at" in client.hgetall(key("api"))
    assert_no_stale_record(town, server.url)


def test_returning_to_ones_own_earlier_description_is_not_stale(
    daemon: Daemon, server: RedisServer, client: redis.Redis, town: Path
) -> None:
    path = tasks_file(town)
    original = path.read_text()
    rewrite_in_place(path, original.replace("Write the docs", "Write the user docs"))
    wait_redis(client, "docs", "the edit in Redis", description="Write the user docs")
    settle(daemon, client)
    rewrite_in_place(path, original)
    wait_redis(client, "docs", "the return in Redis", description="Write the docs")
    settle(daemon, client)
    assert path.read_text() == original
    assert_no_stale_record(town, server.url)
