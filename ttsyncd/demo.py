"""`ttsyncd demo`: a demo town on the embedded Redis, synced both ways, for the quick start."""

from __future__ import annotations

import difflib
import os
from pathlib import Path

from ttsyncd import log
from ttsyncd.codec import task_key
from ttsyncd.config import load_settings
from ttsyncd.connection import connect
from ttsyncd.engine import sync
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
PROMPT = "──"


def run_demo(town: Path) -> int:
    log.configure("warning")
    town.mkdir(parents=True, exist_ok=True)
    for name, text in (("tinytown.toml", DEMO_TINYTOWN), ("tasks.toml", DEMO_TASKS)):
        if not (town / name).exists():
            (town / name).write_text(text, encoding="utf-8")
    settings = load_settings(
        town_arg=str(town), config_arg=None, redis_url_arg=None, env=os.environ, cwd=Path.cwd()
    )
    client = connect(settings)
    print(f"{PROMPT} demo town {town} on {settings.endpoint.redacted()}")
    report = sync(settings, client, push=True, pull=False)
    print(f"⬆️  Pushed {report.plan_tasks} tasks from tasks.toml to Redis")
    print(report.to_redis.summary())
    again = sync(settings, client, push=True, pull=False)
    print(f"{PROMPT} pushing again changes nothing: {again.to_redis.summary()}")
    agent = register_agent(client, settings.town_name, "backend")
    start_task(client, settings.town_name, task_uuid_for(settings.town_name, "auth-api"), agent)
    print(
        f"{PROMPT} agent 'backend' starts auth-api in Redis ({task_key(settings.town_name, '…')})"
    )
    before = settings.tasks_file.read_text(encoding="utf-8")
    report = sync(settings, client, push=False, pull=True)
    print(f"⬇️  Pulled {report.redis_tasks} tasks from Redis to tasks.toml")
    print(report.to_file.summary())
    after = settings.tasks_file.read_text(encoding="utf-8")
    print(f"{PROMPT} tasks.toml changed only where Redis did:")
    diff = difflib.unified_diff(
        before.splitlines(), after.splitlines(), "before", "after", lineterm=""
    )
    print("\n".join(diff) or "(no change: the demo town had already synced)")
    print(f"{PROMPT} now edit {settings.tasks_file} and run: ttsyncd --town {town} push")
    return 0
