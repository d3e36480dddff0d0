"""What the CLI says and does at its edges: unknown ids, no daemon, options after the command,
no town, a town without a plan, git conflict markers, dry runs, an explicit Redis while a
daemon runs, and `service`. The real CLI in a subprocess against a real redis-server."""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import shlex
import shutil
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from tests.daemon_harness import Daemon, RedisServer
from tests.helpers import clean_env, make_town, run_cli, write_counts
from ttsyncd.codec import task_key
from ttsyncd.commands import PLAN_HEADER
from ttsyncd.identity import task_uuid_for
from ttsyncd.tinytown import new_task, register_agent, set_task, start_task

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
    clean = clean_env()
    return subprocess.run(
        [sys.executable, "-m", "ttsyncd", *args],
        cwd=cwd, env={**clean, **(env or {})}, capture_output=True, text=True, timeout=60,
        check=False,
    )  # fmt: skip


def key(plan_id: str) -> str:
    return task_key(TOWN, task_uuid_for(TOWN, plan_id))


@contextlib.contextmanager
def serving(town: Path, redis_url: str) -> Iterator[Daemon]:
    """A daemon on `town`, ready (its first sync done); stopped however the block ends, and
    it must have exited 0."""
    running = Daemon(town, redis_url)
    try:
        running.wait_ready()
        yield running
    finally:
        code = running.terminate()
    assert code == 0, running.log()


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
    "conflicts", "resolve", "demo", "service",
)  # fmt: skip
ACTIONS = ("service install", "service uninstall", "service status")


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


@pytest.mark.parametrize("command", COMMANDS + ACTIONS)
def test_every_command_has_a_description_in_its_help(command: str, tmp_path: Path) -> None:
    done = ttsyncd(*command.split(), "--help", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    paragraphs = done.stdout.split("\n\n")
    assert paragraphs[0].startswith(f"usage: ttsyncd {command}")
    description = paragraphs[1]
    assert not description.startswith(("options", "positional")), done.stdout
    assert len(description.split()) >= 8, description  # a sentence, not a label
    assert "--town DIR" in done.stdout and "--redis-url URL" in done.stdout
    *parents, name = command.split()
    listing = ttsyncd(*parents, "--help", cwd=tmp_path).stdout
    assert listing.count(f"\n    {name} ") == 1


# --- finding the town -------------------------------------------------------------------------

TOWN_FILES = ("tinytown.toml", "tasks.toml")


def kill_redis_left_in(directory: Path) -> None:
    """A redis-server a command started in `directory` (it must not have): stopped, so a
    failing test leaves nothing running."""
    pidfile = directory / ".tt" / "redis.pid"
    if pidfile.exists():
        os.kill(int(pidfile.read_text().strip()), 15)


@pytest.mark.parametrize(
    "command",
    [["check"], ["push"], ["pull"], ["status", "--json"], ["pause"], ["conflicts"], ["stop"]],
)
def test_outside_a_town_commands_say_no_town_found_and_create_nothing(
    tmp_path: Path, command: list[str]
) -> None:
    nowhere = tmp_path / "nowhere"
    nowhere.mkdir()
    if any((d / f).exists() for d in nowhere.parents for f in TOWN_FILES):
        pytest.skip("a town file lies above the test's temp dir")
    try:
        done = ttsyncd(*command, cwd=nowhere)
        assert done.returncode == 2, (done.stdout, done.stderr)
        assert done.stderr.startswith(
            "ttsyncd: no town found: no tinytown.toml or tasks.toml "
            f"in {nowhere.resolve()} or any directory above it"
        )
        assert done.stdout == ""
        assert list(nowhere.iterdir()) == []  # no .tt/, no redis-server, no tasks.toml
    finally:
        kill_redis_left_in(nowhere)


def test_a_town_without_tasks_toml_push_says_so_and_starts_no_redis(tmp_path: Path) -> None:
    town = tmp_path / "town"
    town.mkdir()
    (town / "tinytown.toml").write_text(f'name = "{TOWN}"\n')  # the embedded default Redis
    inside = town / "src"
    inside.mkdir()
    try:
        done = ttsyncd("push", cwd=inside)
        assert done.returncode == 1, (done.stdout, done.stderr)
        assert done.stderr == (
            f"ttsyncd: no tasks.toml in {town.resolve()}: nothing to push "
            "(`ttsyncd pull` creates it from the town's Redis)\n"
        )
        assert done.stdout == ""
        assert sorted(p.name for p in town.iterdir()) == ["src", "tinytown.toml"]
    finally:
        kill_redis_left_in(town)


def test_pull_starts_a_plan_from_an_existing_tinytown_town(
    tmp_path: Path, redis_url: str, rdb: redis.Redis
) -> None:
    town = tmp_path / "town"
    town.mkdir()
    (town / "tinytown.toml").write_text(f'name = "{TOWN}"\n')
    agent = register_agent(rdb, TOWN, "backend")
    made = new_task("Investigate the flaky login test", ["bug"])
    set_task(rdb, TOWN, made)
    start_task(rdb, TOWN, made["id"], agent)
    code, out, err = cli(town, redis_url, "push")
    assert code == 1 and "no tasks.toml" in err and not (town / "tasks.toml").exists()
    code, out, err = cli(town, redis_url, "pull", "--dry-run")
    assert code == 0 and not (town / "tasks.toml").exists()
    code, out, err = cli(town, redis_url, "pull")
    assert code == 0, err
    assert out.splitlines() == [
        "⬇️  Pulled 1 tasks from Redis to tasks.toml",
        "created 1, updated 0, deleted 0, unchanged 0",
    ]
    text = (town / "tasks.toml").read_text()
    derived = "task-" + made["id"].replace("-", "")[:8]
    assert text.startswith(
        f'# The plan of tinytown town "{TOWN}": one [[tasks]] entry per task (id, description,'
    )
    header = "".join(line + "\n" for line in text.splitlines() if line.startswith("#"))
    assert header == PLAN_HEADER.format(town=f'"{TOWN}"')
    assert text.endswith(
        f'[[tasks]]\nid = "{derived}"\ndescription = "Investigate the flaky login test"\n'
        'agent = "backend"\nstatus = "running"\ntags = ["bug"]\n'
    )
    rdb.config_resetstat()
    assert cli(town, redis_url, "push")[0] == 0 and cli(town, redis_url, "pull")[0] == 0
    assert (town / "tasks.toml").read_text() == text and write_counts(rdb) == {}
    code, out, _ = cli(town, redis_url, "check")
    assert code == 0 and out.splitlines()[-1] == "in sync"
    # An empty town: the file holds the header alone, a plan to start writing.
    other = make_town(tmp_path / "empty", "empty-town", "")
    (other / "tasks.toml").unlink()
    assert cli(other, redis_url, "pull")[0] == 0
    assert (other / "tasks.toml").read_text() == PLAN_HEADER.format(town='"empty-town"')


# --- git conflict markers ---------------------------------------------------------------------

CONFLICTED = PLAN.replace(
    'description = "Write the docs"\n',
    "<<<<<<< HEAD\n"
    'description = "Write the docs"\n'
    "=======\n"
    'description = "Write the user docs"\n'
    ">>>>>>> feature/docs\n",
)


def test_git_conflict_markers_are_named_with_file_and_line(
    town: Path, redis_url: str, rdb: redis.Redis
) -> None:
    assert cli(town, redis_url, "push")[0] == 0
    (town / "tasks.toml").write_text(CONFLICTED)
    assert CONFLICTED.splitlines()[9] == "<<<<<<< HEAD"  # line 10
    rdb.config_resetstat()
    for command in ("push", "pull", "check"):
        code, out, err = cli(town, redis_url, command)
        assert code == 1, (out, err)
        assert err == f"ttsyncd: {town / 'tasks.toml'}:10: unresolved merge conflict (<<<<<<<)\n"
    assert write_counts(rdb) == {}
    assert (town / "tasks.toml").read_text() == CONFLICTED
    # Half resolved (the first marker gone), still named; with diff3's base section too.
    half = CONFLICTED.replace("<<<<<<< HEAD\n", "")
    (town / "tasks.toml").write_text(half)
    err = cli(town, redis_url, "push")[2]
    assert err.endswith("tasks.toml:11: unresolved merge conflict (=======)\n")
    # diff3's base section, and another error above the conflict: the conflict is named.
    diff3 = CONFLICTED.replace("=======\n", "||||||| base\ndescription = 'Docs'\n=======\n")
    (town / "tasks.toml").write_text(diff3.replace('tags = ["api"]', "tags = [api]"))
    err = cli(town, redis_url, "push")[2]
    assert err.endswith("tasks.toml:10: unresolved merge conflict (<<<<<<<)\n")
    # A line of equals signs in a multi-line string is no conflict: the real error is named.
    underlined = PLAN.replace('"Write the docs"', '"""Docs\n=======\n"""') + "oops\n"
    (town / "tasks.toml").write_text(underlined)
    err = cli(town, redis_url, "push")[2]
    assert err.split("tasks.toml:")[-1].startswith("13: invalid TOML: Expected")


# --- dry runs ---------------------------------------------------------------------------------


def test_dry_runs_say_would_and_list_every_change_with_its_values(
    town: Path, redis_url: str, rdb: redis.Redis
) -> None:
    agent = register_agent(rdb, TOWN, "backend")
    rdb.config_resetstat()
    code, out, err = cli(town, redis_url, "push", "--dry-run")
    assert code == 0, err
    assert out.splitlines() == [
        "would push 2 tasks from tasks.toml to Redis (dry run: nothing written):",
        '  redis: create api: description "Build the API", agent "backend", status "pending", '
        'tags ["api"]',
        '  redis: create docs: description "Write the docs", status "pending"',
        "would create 2, update 0, delete 0; 0 unchanged",
    ]
    assert write_counts(rdb) == {} and rdb.keys("tt:*:task:*") == []
    assert cli(town, redis_url, "push")[0] == 0
    for command in ("push", "pull"):  # in sync: nothing to do either way
        code, out, _ = cli(town, redis_url, command, "--dry-run")
        assert code == 0 and out == f"nothing to {command} (dry run: nothing written)\n"
    without_docs = PLAN.split('\n[[tasks]]\nid = "docs"')[0]
    (town / "tasks.toml").write_text(without_docs)
    code, out, _ = cli(town, redis_url, "push", "--dry-run")
    assert out.splitlines()[1:] == [
        '  redis: delete docs ("Write the docs")',
        "would create 0, update 0, delete 1; 1 unchanged",
    ]
    assert rdb.exists(key("docs"))
    # Changes on both sides: each dry run lists its own direction's, field by field.
    text = PLAN.replace('tags = ["api"]', 'tags = ["api", "v2"]').replace(
        '"Write the docs"', '"Write the user docs"'
    )
    text += '\n[[tasks]]\nid = "ops"\ndescription = "Ops"\n'
    (town / "tasks.toml").write_text(text)
    start_task(rdb, TOWN, task_uuid_for(TOWN, "api"), agent)
    set_task(rdb, TOWN, {**rdb.hgetall(key("docs")), "result": 'half "done"'})
    rdb.config_resetstat()
    code, out, err = cli(town, redis_url, "push", "--dry-run")
    assert code == 0, err
    assert out.splitlines() == [
        "would push 3 tasks from tasks.toml to Redis (dry run: nothing written):",
        '  redis: update api: tags ["api"] → ["api", "v2"]',
        '  redis: update docs: description "Write the docs" → "Write the user docs"',
        '  redis: create ops: description "Ops", status "pending"',
        "would create 1, update 2, delete 0; 0 unchanged",
    ]
    code, out, err = cli(town, redis_url, "pull", "--dry-run")
    assert code == 0, err
    assert out.splitlines() == [
        "would pull 2 tasks from Redis to tasks.toml (dry run: nothing written):",
        '  file: update api: status "pending" → "running"',
        '  file: update docs: result (none) → "half \\"done\\""',
        "would create 0, update 2, delete 0; 0 unchanged",
    ]
    assert write_counts(rdb) == {}
    assert (town / "tasks.toml").read_text() == text


# --- an explicit Redis while a daemon runs ----------------------------------------------------


def test_an_explicit_redis_other_than_the_daemons_is_used_not_the_daemons(
    town: Path, server: RedisServer, redis_url: str, rdb: redis.Redis
) -> None:
    """The daemon syncs the town with `server`; a command naming the session's Redis
    (`redis_url`) runs on its own against it, and says so. Naming the daemon's own Redis, in
    any spelling, goes through the daemon."""
    theirs = server.client()
    with contextlib.closing(theirs), serving(town, server.url) as running:
        status = json.loads(cli(town, None, "status", "--json")[1])
        assert status["running"] is True and status["pid"] == running.process.pid
        connections = theirs.info("stats")["total_connections_received"]
        code, out, err = cli(town, redis_url, "push")
        assert code == 0, err
        assert out.splitlines()[0] == "⬆️  Pushed 2 tasks from tasks.toml to Redis"
        assert err.splitlines()[0] == (
            f"note: the daemon serving this town uses {server.url}; --redis-url names "
            f"{redis_url}: ran on its own against that one"
        )
        assert rdb.hget(key("docs"), "description") == "Write the docs"  # ours got them
        # REDIS_URL too: an agent's change there is pulled from there.
        set_task(rdb, TOWN, {**rdb.hgetall(key("docs")), "state": "completed"})
        code, out, err = cli(town, None, "pull", env={"REDIS_URL": redis_url})
        assert code == 0 and err.startswith("note: the daemon serving this town uses"), err
        assert 'status = "completed"' in (town / "tasks.toml").read_text()
        assert theirs.info("stats")["total_connections_received"] == connections
        # The daemon's own Redis, spelled another way: through the daemon (no connection
        # of this command's own reaches that Redis).
        running.wait_idle()
        connections = theirs.info("stats")["total_connections_received"]
        code, out, err = cli(town, f"{server.url}?db=0", "check")
        assert code == 0 and "note:" not in err, err
        assert theirs.info("stats")["total_connections_received"] == connections


# --- what each command imports ----------------------------------------------------------------

HEAVY = frozenset(
    {"redis", "structlog", "tomlkit", "daemon", "watchfiles", "asyncio", "ttsyncd.daemon",
     "ttsyncd.background", "ttsyncd.engine"}
)  # fmt: skip


def imported(*args: str, cwd: Path, env: dict[str, str] | None = None) -> set[str]:
    """The modules `python -X importtime -m ttsyncd ARGS...` imported."""
    clean = clean_env()
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "ttsyncd", *args],
        cwd=cwd, env={**clean, **(env or {})}, capture_output=True, text=True, timeout=60,
        check=False,
    )  # fmt: skip
    lines = [line for line in done.stderr.splitlines() if line.startswith("import time:")]
    assert lines, done.stderr
    return {line.rsplit("|", 1)[1].strip() for line in lines[1:]}


def test_each_command_imports_only_what_it_needs(
    town: Path, server: RedisServer, redis_url: str, rdb: redis.Redis
) -> None:
    assert HEAVY.isdisjoint(imported("--version", cwd=town))
    assert HEAVY.isdisjoint(imported("push", "--help", cwd=town))
    assert HEAVY.isdisjoint(imported("status", cwd=town))  # no daemon
    assert HEAVY.isdisjoint(imported("status", "--json", cwd=town))
    # In this process: Redis and the engine (whose log is structlog), and nothing of the daemon;
    # no tomlkit for a push or a check (they render no file).
    daemon_side = {"daemon", "watchfiles", "ttsyncd.daemon", "ttsyncd.background"}
    for command in ("push", "check", "pull"):
        modules = imported("--redis-url", redis_url, command, cwd=town)
        assert {"redis", "ttsyncd.engine"} <= modules
        assert daemon_side.isdisjoint(modules), command
        if command != "pull":
            assert "tomlkit" not in modules
    # Through a daemon: the request and its answer, nothing else.
    with serving(town, server.url):
        for args in (["status"], ["push"], ["pull", "--dry-run"], ["check"], ["conflicts"]):
            assert HEAVY.isdisjoint(imported(*args, cwd=town)), args


# --- service install | uninstall | status -----------------------------------------------------

SHIPPED_UNIT = Path(__file__).parents[1] / "systemd" / "ttsyncd@.service"


@pytest.fixture
def systemd_home(tmp_path: Path) -> dict[str, str]:
    """A fake `systemctl` first on PATH that records its arguments (one JSON list a line) and
    exits with $FAKE_SYSTEMCTL_EXIT; XDG_CONFIG_HOME in the temp dir. The real systemctl is
    never run."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "systemctl"
    fake.write_text(
        f"#!{sys.executable}\n"
        "import json, os, sys\n"
        "with open(os.environ['FAKE_SYSTEMCTL_LOG'], 'a') as log:\n"
        "    log.write(json.dumps(sys.argv[1:]) + '\\n')\n"
        "if os.environ.get('FAKE_SYSTEMCTL_EXIT', '0') != '0':\n"
        "    print('Failed to enable unit: boom', file=sys.stderr)\n"
        "sys.exit(int(os.environ.get('FAKE_SYSTEMCTL_EXIT', '0')))\n"
    )
    fake.chmod(0o755)
    return {
        "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
        "XDG_CONFIG_HOME": str(tmp_path / "config"),
        "FAKE_SYSTEMCTL_LOG": str(tmp_path / "systemctl.log"),
    }


def systemctl_calls(env: dict[str, str]) -> list[list[str]]:
    log = Path(env["FAKE_SYSTEMCTL_LOG"])
    calls = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
    log.unlink(missing_ok=True)
    return calls


def test_service_install_status_uninstall_with_a_fake_systemctl(
    tmp_path: Path, systemd_home: dict[str, str]
) -> None:
    town = make_town(tmp_path / "my town-1", TOWN, PLAN)  # a space and a dash to escape
    env = systemd_home
    escaped = "tmp-town"
    if shutil.which("systemd-escape"):
        escaped = subprocess.run(
            ["systemd-escape", "--path", str(town)], capture_output=True, text=True, check=True
        ).stdout.strip()
        assert escaped.endswith("-my\\x20town\\x2d1")
    instance = f"ttsyncd@{escaped}.service"
    unit_path = tmp_path / "config" / "systemd" / "user" / "ttsyncd@.service"
    exec_start = f"ExecStart={Path(sys.executable).parent / 'ttsyncd'} --town %f run"
    expected_unit = (
        "# Written by `ttsyncd service install`; `ttsyncd service uninstall` removes it.\n"
        + SHIPPED_UNIT.read_text().replace("ExecStart=/usr/local/bin/ttsyncd --town %f run",
                                           exec_start)
    )  # fmt: skip

    # --dry-run: the file and the commands, nothing written, systemctl not run.
    done = ttsyncd("service", "install", "--dry-run", "--town", str(town), cwd=tmp_path, env=env)
    assert done.returncode == 0, done.stderr
    assert done.stdout == (
        f"would write {unit_path}:\n{expected_unit}"
        "would run: systemctl --user daemon-reload\n"
        f"would run: systemctl --user enable --now {shlex.quote(instance)}\n"
    )
    assert not (tmp_path / "config").exists() and systemctl_calls(env) == []

    done = ttsyncd("service", "install", "--town", str(town), cwd=tmp_path, env=env)
    assert done.returncode == 0, done.stderr
    assert unit_path.read_text() == expected_unit
    assert stat.S_IMODE(unit_path.stat().st_mode) == 0o644
    assert systemctl_calls(env) == [
        ["--user", "daemon-reload"],
        ["--user", "enable", "--now", instance],
    ]
    if shutil.which("systemd-analyze"):  # the unit as written, for this town's instance
        check = tmp_path / "verify" / instance
        check.parent.mkdir()
        check.write_text(unit_path.read_text())
        verified = subprocess.run(
            ["systemd-analyze", "verify", str(check)], capture_output=True, text=True
        )
        assert verified.returncode == 0, verified.stderr

    done = ttsyncd("service", "status", "--town", str(town), cwd=tmp_path, env=env)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[:2] == [
        f"unit:     {unit_path} (installed)",
        f"instance: {instance}",
    ]
    assert systemctl_calls(env) == [["--user", "status", "--no-pager", instance]]
    inactive = {**env, "FAKE_SYSTEMCTL_EXIT": "3"}
    assert (
        ttsyncd("service", "status", "--town", str(town), cwd=tmp_path, env=inactive).returncode
        == 1
    )
    systemctl_calls(env)

    done = ttsyncd("service", "uninstall", "--town", str(town), cwd=tmp_path, env=env)
    assert done.returncode == 0, done.stderr
    assert not unit_path.exists()
    assert systemctl_calls(env) == [
        ["--user", "disable", "--now", instance],
        ["--user", "daemon-reload"],
    ]


def test_service_install_system_unit_runs_as_the_towns_owner(
    tmp_path: Path, systemd_home: dict[str, str]
) -> None:
    town = make_town(tmp_path / "town", TOWN, PLAN)
    units = tmp_path / "units"
    done = ttsyncd(
        "--town", str(town), "service", "install", "--system", "--unit-dir", str(units),
        cwd=tmp_path, env=systemd_home,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    calls = systemctl_calls(systemd_home)
    assert calls[0] == ["daemon-reload"] and calls[1][:2] == ["enable", "--now"]  # no --user
    instance = calls[1][2]
    owner = pwd.getpwuid(town.stat().st_uid).pw_name
    drop_in = (units / f"{instance}.d" / "10-owner.conf").read_text()
    assert f"[Service]\nUser={owner}\nGroup=" in drop_in
    assert (units / "ttsyncd@.service").exists()
    # A failing systemctl: one line naming the command and its words, exit 1.
    failing = {**systemd_home, "FAKE_SYSTEMCTL_EXIT": "1"}
    done = ttsyncd("--town", str(town), "service", "install", "--system", "--unit-dir",
                   str(units), cwd=tmp_path, env=failing)  # fmt: skip
    assert done.returncode == 1
    assert done.stderr == (
        "ttsyncd: `systemctl daemon-reload` failed (exit 1): Failed to enable unit: boom\n"
    )
    systemctl_calls(systemd_home)
    done = ttsyncd("--town", str(town), "service", "uninstall", "--system", "--unit-dir",
                   str(units), cwd=tmp_path, env=systemd_home)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert list(units.iterdir()) == []  # the unit, its drop-in and the drop-in's directory
    assert systemctl_calls(systemd_home) == [["disable", "--now", instance], ["daemon-reload"]]


def test_service_install_refuses_while_another_daemon_serves_the_town(
    town: Path, server: RedisServer, systemd_home: dict[str, str]
) -> None:
    with serving(town, server.url) as running:
        done = ttsyncd("service", "install", cwd=town, env=systemd_home)
        assert done.returncode == 1 and done.stderr == (
            f"ttsyncd: a ttsyncd daemon (pid {running.process.pid}, foreground) already serves "
            "this town: `ttsyncd stop` it first, the service starts its own\n"
        )
        assert systemctl_calls(systemd_home) == []
        assert not (Path(systemd_home["XDG_CONFIG_HOME"]) / "systemd").exists()
        assert (
            ttsyncd("service", "install", "--dry-run", cwd=town, env=systemd_home).returncode == 0
        )
