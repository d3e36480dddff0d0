"""`ttsyncd demo`: a demo town on the embedded Redis with the daemon running, shown syncing
both ways live; then, on a terminal, it keeps running until Ctrl-C so you can try it."""

from __future__ import annotations

import asyncio
import contextlib
import difflib
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

from ttsyncd import log
from ttsyncd.codec import task_key
from ttsyncd.config import Settings, load_settings
from ttsyncd.connection import connect
from ttsyncd.daemon import Daemon
from ttsyncd.identity import task_uuid_for
from ttsyncd.tinytown import register_agent, start_task

DEMO_TINYTOWN = 'name = "demo"\n'
DEMO_TASKS = """\
# Sprint 1 — reviewed in git, synced to Redis by ttsyncd.
[meta]
description = "Sprint 1 tasks"

# The API everything else needs.
[[tasks]]
id = "auth-api"
description = "Build user authentication API"
tags = ["auth", "api"]

# Tests come right after.
[[tasks]]
id = "auth-tests"
description = "Write auth API tests"
parent = "auth-api"

[[tasks]]
id = "docs"
description = "Document the login flow"  # keep it short
"""
STEP = "──"
WAIT_S = 10.0


def run_demo(town: Path, log_format: str | None = None, *, keep_running: bool | None = None) -> int:
    log.configure("info", log_format or "console")
    town.mkdir(parents=True, exist_ok=True)
    for name, text in (("tinytown.toml", DEMO_TINYTOWN), ("tasks.toml", DEMO_TASKS)):
        if not (town / name).exists():
            (town / name).write_text(text, encoding="utf-8")

    def settings_now() -> Settings:
        return load_settings(
            town_arg=str(town), config_arg=None, redis_url_arg=None, env=os.environ, cwd=Path.cwd()
        )

    settings = settings_now()
    if keep_running is None:
        keep_running = sys.stdout.isatty()
    return asyncio.run(demo(settings, settings_now, keep_running))


async def demo(settings: Settings, reload: Callable[[], Settings], keep_running: bool) -> int:
    client = await asyncio.to_thread(connect, settings)  # starts the embedded redis-server
    daemon = Daemon(settings, reload, "foreground")
    running = asyncio.ensure_future(daemon.run())
    await asyncio.wait_for(daemon.first_sync_done.wait(), WAIT_S)
    say(f"ttsyncd is running for {settings.town_dir} on {settings.endpoint.redacted()}")
    town, path = settings.town_name, settings.tasks_file

    say("an agent picks up auth-api in Redis, the way tinytown writes it (HDEL + HSET)")
    before = path.read_text(encoding="utf-8")
    started = time.monotonic()
    agent = register_agent(client, town, "backend")
    start_task(client, town, task_uuid_for(town, "auth-api"), agent)
    after = await wait_for(lambda: changed_text(path, before))
    say(f"tasks.toml followed in {ms(started)} ms, only where Redis changed:")
    print("\n".join(difflib.unified_diff(
        before.splitlines(), (after or before).splitlines(), "before", "after", lineterm=""
    )))  # fmt: skip

    say("you edit tasks.toml the way editors save (write a temp file, rename it over)")
    text = path.read_text(encoding="utf-8")
    edited = text.replace("Document the login flow", "Document the login and logout flows")
    temp = path.with_name(".tasks.toml.swp")
    temp.write_text(edited, encoding="utf-8")
    started = time.monotonic()
    os.replace(temp, path)
    key = task_key(town, task_uuid_for(town, "docs"))
    description = await wait_for(lambda: logout_description(client.hget(key, "description")))
    say(f"Redis followed in {ms(started)} ms: {key} description = {description!r}")

    if keep_running:
        say(f"still running: edit {path} or change Redis, and watch; Ctrl-C to stop")
        with contextlib.suppress(asyncio.CancelledError):
            await running
        return 0
    daemon.stop()
    return await running


def changed_text(path: Path, before: str) -> str | None:
    text = path.read_text(encoding="utf-8")
    return text if text != before else None


def logout_description(value: object) -> str | None:
    return value if isinstance(value, str) and "logout" in value else None


async def wait_for(probe: Callable[[], str | None]) -> str | None:
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        found = await asyncio.to_thread(probe)
        if found is not None:
            return found
        await asyncio.sleep(0.01)
    say("(no change seen in time)")
    return None


def ms(started: float) -> int:
    return round((time.monotonic() - started) * 1000)


def say(text: str) -> None:
    print(f"{STEP} {text}", flush=True)
