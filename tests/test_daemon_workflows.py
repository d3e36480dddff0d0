"""`ttsyncd run` end to end, in the workflows users reported: undoing a save, plans kept behind
a symlink, fixing a broken save, changes the watchers cannot see, and git under a running
daemon (pause/resume). The real CLI and daemon in subprocesses, a redis-server of the test's
own; asserts on what is written and on counts, never on milliseconds."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.daemon_harness import (
    QUIET_S,
    Daemon,
    FileWrites,
    RedisServer,
    redis_server,
    rewrite_in_place,
    started,
    wait_until,
    write_temp_and_rename,
)
from tests.helpers import make_town, run_cli, write_counts
from ttsyncd.codec import task_key
from ttsyncd.identity import task_uuid_for
from ttsyncd.tinytown import set_task

TOWN = "flow"
PLAN = """\
# Workflow plan
[[tasks]]
id = "api"
description = "Build the API"

[[tasks]]
id = "docs"
description = "Write the docs"
"""


def key(plan_id: str) -> str:
    return task_key(TOWN, task_uuid_for(TOWN, plan_id))


@pytest.fixture
def town(tmp_path: Path) -> Path:
    return make_town(tmp_path / "town", TOWN, PLAN)


@pytest.fixture
def daemon(town: Path, server: RedisServer) -> Iterator[Daemon]:
    yield from started(town, server.url)


def redis_edit(server: RedisServer, plan_id: str, **fields: str) -> None:
    """An agent's update, written the way tinytown writes it."""
    client = server.client()
    set_task(client, TOWN, {**client.hgetall(key(plan_id)), **fields})


# --- 1. a real save is never ignored


def test_undoing_a_save_back_to_the_daemons_own_write_is_synced(
    daemon: Daemon, server: RedisServer, town: Path
) -> None:
    """The daemon pulls and writes V2; the user saves V3 (synced); the user undoes back to V2.
    V2 is what the daemon wrote once, not what both sides agree on now: it must be pushed."""
    path = town / "tasks.toml"
    client = server.client()
    redis_edit(server, "api", state="completed", result="shipped")
    wait_until(lambda: 'result = "shipped"' in path.read_text(), what="the pull (V2)")
    daemon.wait_idle()
    v2 = path.read_text()
    write_temp_and_rename(path, v2.replace("Write the docs", "Write the user docs"))  # V3
    wait_until(lambda: client.hget(key("docs"), "description") == "Write the user docs",
               what="V3 in Redis")  # fmt: skip
    daemon.wait_idle()
    write_temp_and_rename(path, v2)  # the undo
    wait_until(lambda: client.hget(key("docs"), "description") == "Write the docs",
               what="the undo in Redis")  # fmt: skip
    daemon.wait_idle()
    assert path.read_text() == v2
    assert daemon.status()["last_error"] is None  # type: ignore[index]


# --- 2. symlinks


@pytest.fixture
def linked_town(tmp_path: Path) -> Path:
    """A town whose tasks.toml is a symlink to a plan kept in another directory (repo)."""
    plans = tmp_path / "plans"
    plans.mkdir()
    (plans / "flow-plan.toml").write_text(PLAN)
    town = make_town(tmp_path / "town", TOWN, PLAN)
    (town / "tasks.toml").unlink()
    (town / "tasks.toml").symlink_to(plans / "flow-plan.toml")
    return town


def test_a_symlinked_plan_syncs_every_way_it_is_saved_and_stays_a_link(
    linked_town: Path, server: RedisServer
) -> None:
    link = linked_town / "tasks.toml"
    target = link.resolve()
    client = server.client()
    running = Daemon(linked_town, server.url)
    try:
        running.wait_ready()
        rewrite_in_place(target, PLAN.replace("Write the docs", "Edited at the target"))
        wait_until(lambda: client.hget(key("docs"), "description") == "Edited at the target",
                   what="an in-place edit of the target")  # fmt: skip
        write_temp_and_rename(target, PLAN.replace("Write the docs", "Renamed over the target"))
        wait_until(lambda: client.hget(key("docs"), "description") == "Renamed over the target",
                   what="a write-temp-and-rename of the target")  # fmt: skip
        rewrite_in_place(link, PLAN.replace("Write the docs", "Written through the link"))
        wait_until(lambda: client.hget(key("docs"), "description") == "Written through the link",
                   what="an in-place write through the link")  # fmt: skip
        running.wait_idle()
        inode = target.stat().st_ino
        redis_edit(server, "api", state="completed", result="pulled")
        wait_until(lambda: 'result = "pulled"' in target.read_text(), what="the pull")
        assert link.is_symlink() and link.resolve() == target  # still the same link
        assert target.stat().st_ino != inode  # the target was replaced (write-temp-and-rename)
        assert not [p.name for p in target.parent.iterdir() if p.name.endswith(".tmp")]
        assert running.status()["last_error"] is None  # type: ignore[index]
    finally:
        assert running.terminate() == 0


def test_a_relinked_plan_is_followed_to_its_new_target(
    linked_town: Path, server: RedisServer, tmp_path: Path
) -> None:
    link = linked_town / "tasks.toml"
    other = tmp_path / "other-repo" / "plan.toml"
    other.parent.mkdir()
    other.write_text(PLAN.replace("Write the docs", "From the other repo"))
    client = server.client()
    running = Daemon(linked_town, server.url)
    try:
        running.wait_ready()
        fresh = linked_town / ".tasks.toml.new"
        fresh.symlink_to(other)
        os.replace(fresh, link)  # `ln -sfn`, atomically
        wait_until(lambda: client.hget(key("docs"), "description") == "From the other repo",
                   what="the new target's plan")  # fmt: skip
        running.wait_idle()
        rewrite_in_place(other, PLAN.replace("Write the docs", "Edited in the other repo"))
        wait_until(lambda: client.hget(key("docs"), "description") == "Edited in the other repo",
                   what="an edit of the new target")  # fmt: skip
    finally:
        assert running.terminate() == 0


def test_a_town_reached_through_a_symlinked_directory_syncs(
    town: Path, server: RedisServer, tmp_path: Path
) -> None:
    through = tmp_path / "link-to-town"
    through.symlink_to(town)
    client = server.client()
    running = Daemon(through, server.url)
    try:
        running.wait_ready()
        write_temp_and_rename(through / "tasks.toml", PLAN.replace("Write the docs", "Via link"))
        wait_until(lambda: client.hget(key("docs"), "description") == "Via link",
                   what="a save through the linked directory")  # fmt: skip
        rewrite_in_place(town / "tasks.toml", PLAN.replace("Write the docs", "Via the real dir"))
        wait_until(lambda: client.hget(key("docs"), "description") == "Via the real dir",
                   what="a save in the real directory")  # fmt: skip
    finally:
        assert running.terminate() == 0


# --- 3. last_error clears with its cause


def test_fixing_a_broken_save_back_to_the_last_text_clears_the_error(
    daemon: Daemon, server: RedisServer, town: Path
) -> None:
    """The fix restores exactly the text last synced: it is a save after a failed read, so it
    syncs, and the sync clears the error (no line number past the end of the file)."""
    path = town / "tasks.toml"
    syncs = daemon.status()["syncs"]  # type: ignore[index]
    write_temp_and_rename(path, PLAN.replace('id = "docs"', 'id = "docs') + "\n" * 5)
    status = wait_until(lambda: (s := daemon.status()) and s["last_error"] and s,
                        what="the error in status")  # fmt: skip
    assert f"{path}:" in status["last_error"]
    write_temp_and_rename(path, PLAN)
    status = wait_until(lambda: (s := daemon.status()) and s["last_error"] is None and s,
                        what="the error cleared")  # fmt: skip
    assert status["syncs"] == syncs + 1  # the fix was synced (and found nothing to change)
    assert server.client().hget(key("docs"), "description") == "Write the docs"


def test_redis_coming_back_clears_a_redis_error(tmp_path: Path) -> None:
    with redis_server() as server:
        server.extra = ["--save", "3600 1", "--appendonly", "yes"]  # keep data across restarts
        server.kill()
        server.start()
        town = make_town(tmp_path / "town", TOWN, PLAN)
        running = Daemon(town, server.url)
        try:
            running.wait_ready()
            server.stop()
            wait_until(lambda: (s := running.status()) and s["last_error"],
                       what="the outage in status")  # fmt: skip
            server.start()
            status = wait_until(
                lambda: (s := running.status()) and s["redis_connected"] and s, what="reconnect"
            )
            status = wait_until(lambda: (s := running.status()) and s["last_error"] is None and s,
                                what="the Redis error cleared")  # fmt: skip
            assert status["redis_connected"]
        finally:
            assert running.terminate() == 0


def test_a_redis_session_error_clears_when_the_session_works_again(
    town: Path, server: RedisServer
) -> None:
    """A refused SUBSCRIBE is a Redis session error that does not read "Redis unreachable":
    it clears when the session connects, not only when a sync completes (paused, none does)."""
    client = server.client()
    client.execute_command("ACL", "SETUSER", "ttsyncd", "on", ">pw", "~*", "+@all",
                           "resetchannels")  # fmt: skip
    assert run_cli(town, "pause", redis_url=None).returncode == 0
    running = Daemon(town, f"unix://ttsyncd:pw@{server.socket}")
    try:
        error = wait_until(lambda: (running.status() or {}).get("last_error"),
                           what="the session error")  # fmt: skip
        assert "Redis unreachable" not in error
        assert running.status()["last_error_kind"] == "redis"  # type: ignore[index]
        client.execute_command("ACL", "SETUSER", "ttsyncd", "allchannels")
        status = wait_until(lambda: (s := running.status()) and s["last_error"] is None and s,
                            what="the error cleared")  # fmt: skip
        assert status["redis_connected"] and status["paused"] and status["syncs"] == 0
    finally:
        assert running.terminate() == 0


# --- 4. anti-entropy


def verify_found(daemon: Daemon) -> list[str]:
    """What each verify pass that found the sides out of sync found, from the daemon's log."""
    found = []
    for line in daemon.log().splitlines():
        event = json.loads(line) if line.startswith("{") else {}
        if event.get("event") == "verify: out of sync":
            found.append(event["found"])
    return found


def test_verify_syncs_what_the_watchers_missed(
    town: Path, server: RedisServer, tmp_path: Path
) -> None:
    (town / "ttsyncd.toml").write_text("[sync]\nverify_interval_s = 0.3\n")
    path = town / "tasks.toml"
    client = server.client()
    running = Daemon(town, server.url)
    try:
        running.wait_ready()
        # A file change the watcher cannot see: written through a hard link in another
        # directory (inotify reports it to that directory's watchers only).
        elsewhere = tmp_path / "elsewhere"
        elsewhere.mkdir()
        os.link(path, elsewhere / "plan.toml")
        rewrite_in_place(elsewhere / "plan.toml", PLAN.replace("Write the docs", "Unseen edit"))
        wait_until(lambda: client.hget(key("docs"), "description") == "Unseen edit",
                   what="the verify pass to push the unseen edit")  # fmt: skip
        assert verify_found(running) == ["file differed"]
        # A Redis change made while keyspace notifications were off.
        flags = client.config_get("notify-keyspace-events")["notify-keyspace-events"]
        client.config_set("notify-keyspace-events", "")
        redis_edit(server, "api", state="completed", result="unnotified")
        client.config_set("notify-keyspace-events", flags)
        wait_until(lambda: 'result = "unnotified"' in path.read_text(),
                   what="the verify pass to pull the unnotified change")  # fmt: skip
        assert verify_found(running) == ["file differed", "redis differed"]
        status = wait_until(lambda: (s := running.status()) and s["verify"]["last"] and s,
                            what="a verify pass in status")  # fmt: skip
        assert status["verify"]["interval_s"] == 0.3
        assert status["verify"]["found"] in {"in sync", "redis differed"}
        wait_until(lambda: (running.status() or {}).get("verify", {}).get("found") == "in sync",
                   what="a later pass finding both sides in sync")  # fmt: skip
        assert verify_found(running) == ["file differed", "redis differed"]  # nothing more
        shown = run_cli(town, "status", redis_url=None).stdout
        assert "  verify:        every 0.3 s; last " in shown
    finally:
        assert running.terminate() == 0


# --- 5. pause for git


def marker(town: Path) -> Path:
    return town / ".tt" / "ttsyncd" / "paused"


def test_pause_holds_both_sides_and_resume_converges(
    daemon: Daemon, server: RedisServer, town: Path
) -> None:
    path = town / "tasks.toml"
    client = server.client()
    paused = run_cli(town, "pause", redis_url=None)
    assert paused.returncode == 0, paused.stderr
    since = daemon.status()["paused"]["since"]  # type: ignore[index]
    assert f"paused since {since}" in paused.stdout
    assert marker(town).read_text().strip() == since
    write_temp_and_rename(path, PLAN.replace("Build the API", "API edited while paused"))
    redis_edit(server, "docs", state="completed", result="done while paused")
    # Both sides are still watched: the events accumulate.
    wait_until(lambda: (s := daemon.status()) and s["pending_events"]["file"]
               and s["pending_events"]["redis"], what="both events pending")  # fmt: skip
    client.config_resetstat()
    writes = FileWrites(path)
    time.sleep(QUIET_S)
    writes.stop()
    assert write_counts(client) == {}
    assert writes.count_since(0) == 1  # the version the test wrote, nothing after it
    assert client.hget(key("api"), "description") == "Build the API"
    assert "done while paused" not in path.read_text()
    refused = run_cli(town, "push", redis_url=None)
    assert refused.returncode == 1
    assert f"paused since {since}; `ttsyncd resume` first" in refused.stderr
    assert run_cli(town, "pull", redis_url=None).returncode == 1
    dry = run_cli(town, "push", "--dry-run", redis_url=None)
    assert dry.returncode == 0, dry.stderr
    assert write_counts(client) == {}
    shown = run_cli(town, "status", redis_url=None).stdout
    assert f"  paused:        since {since}" in shown
    resumed = run_cli(town, "resume", redis_url=None)
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed" in resumed.stdout
    # resume syncs before it answers: both sides already hold both edits.
    assert client.hget(key("api"), "description") == "API edited while paused"
    assert 'result = "done while paused"' in path.read_text()
    assert daemon.status()["paused"] is None  # type: ignore[index]
    assert not marker(town).exists()
    assert "paused:" not in run_cli(town, "status", redis_url=None).stdout


def test_sigterm_while_paused_writes_nothing_and_a_restart_starts_paused(
    town: Path, server: RedisServer
) -> None:
    path = town / "tasks.toml"
    client = server.client()
    first = Daemon(town, server.url)
    first.wait_ready()
    assert run_cli(town, "pause", redis_url=None).returncode == 0
    since = first.status()["paused"]["since"]  # type: ignore[index]
    write_temp_and_rename(path, PLAN.replace("Build the API", "Edited mid-checkout"))
    wait_until(lambda: (first.status() or {"pending_events": {}})["pending_events"].get("file"),
               what="the save pending")  # fmt: skip
    client.config_resetstat()
    assert first.terminate() == 0
    assert write_counts(client) == {}  # no flush while paused
    assert client.hget(key("api"), "description") == "Build the API"
    second = Daemon(town, server.url)  # as systemd restarts it
    try:
        status = wait_until(second.status, 20.0, "the restarted daemon")
        assert status["paused"] == {"since": since} and status["syncs"] == 0
        time.sleep(QUIET_S)
        assert write_counts(client) == {}
        assert run_cli(town, "resume", redis_url=None).returncode == 0
        assert client.hget(key("api"), "description") == "Edited mid-checkout"
        assert second.status()["syncs"] == 1  # type: ignore[index]
    finally:
        assert second.terminate() == 0


def test_pause_and_resume_with_no_daemon_running(town: Path, server: RedisServer) -> None:
    paused = run_cli(town, "pause", redis_url=None)
    assert paused.returncode == 0, paused.stderr
    assert "no daemon running; it will start paused" in paused.stdout
    assert marker(town).exists()
    # One-shot commands that write are refused too (a dry run is not).
    pushed = run_cli(town, "push", redis_url=server.url)
    assert pushed.returncode == 1 and "paused since" in pushed.stderr, pushed.stderr
    assert run_cli(town, "push", "--dry-run", redis_url=server.url).returncode == 0
    assert server.client().keys("tt:*") == []
    started = run_cli(town, "start", redis_url=server.url)
    assert started.returncode == 0, started.stderr
    try:
        status = run_cli(town, "status", "--json", redis_url=None)
        assert json.loads(status.stdout)["paused"]["since"] == marker(town).read_text().strip()
        assert server.client().keys("*") == []  # nothing pushed
    finally:
        assert run_cli(town, "stop", redis_url=None).returncode == 0
    resumed = run_cli(town, "resume", redis_url=None)
    assert resumed.returncode == 0, resumed.stderr
    assert "no daemon running" in resumed.stdout
    assert not marker(town).exists()
    help_text = run_cli(town, "--help", redis_url=None).stdout
    assert "pause" in help_text and "resume" in help_text
