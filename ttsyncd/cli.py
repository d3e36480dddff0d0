"""The `ttsyncd` command: argument parsing, output and exit codes. No sync logic lives here."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from dataclasses import asdict, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import redis

from ttsyncd import __version__, log
from ttsyncd.config import Settings, load_settings
from ttsyncd.connection import connect
from ttsyncd.engine import SyncReport, sync
from ttsyncd.errors import EXIT_OK, EXIT_PLAN, TtsyncdError
from ttsyncd.merge import Side
from ttsyncd.state import append_conflicts, load_state, read_conflicts, state_file

PUSH_LINE = "⬆️  Pushed {n} tasks from {file} to Redis"
PULL_LINE = "⬇️  Pulled {n} tasks from Redis to {file}"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ttsyncd",
        description="Keep a tinytown town's tasks.toml and its Redis tasks in sync.",
    )
    parser.add_argument("--version", action="version", version=f"ttsyncd {__version__}")
    parser.add_argument(
        "--town", metavar="DIR", help="the town directory (default: found from cwd)"
    )
    parser.add_argument(
        "--config", metavar="FILE", help="ttsyncd config (default: <town>/ttsyncd.toml)"
    )
    parser.add_argument("--redis-url", metavar="URL", help="Redis to use (overrides REDIS_URL)")
    parser.add_argument(
        "--log-format", choices=("auto", "console", "json"), help="log format (default: config)"
    )
    parser.add_argument(
        "-v", "--verbose", action="store_true", help="log progress, not only problems"
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, help_text in (
        ("push", "apply the file's changes to Redis"),
        ("pull", "apply Redis's changes to the file"),
    ):
        command = commands.add_parser(name, help=help_text)
        command.add_argument(
            "--force", action="store_true",
            help="make the target equal the source for every task, deletions included",
        )  # fmt: skip
        command.add_argument(
            "--dry-run", action="store_true", help="show what would change, write nothing"
        )
    commands.add_parser("check", help="validate the plan and the town's Redis tasks, write nothing")
    conflicts = commands.add_parser("conflicts", help="list recorded and unresolved conflicts")
    conflicts.add_argument("--json", action="store_true", help="one JSON array")
    resolve = commands.add_parser("resolve", help="settle a conflict left for you (manual policy)")
    resolve.add_argument("plan_id", metavar="ID", help="the task's plan id")
    resolve.add_argument(
        "--take", choices=("file", "redis"), required=True, help="whose values win"
    )
    demo = commands.add_parser("demo", help="make a demo town and sync it both ways")
    demo.add_argument(
        "dir", nargs="?", default="ttsyncd-demo", help="where (default: ./ttsyncd-demo)"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "demo":
            from ttsyncd.demo import run_demo

            return run_demo(Path(args.dir))
        settings = load_settings(
            town_arg=args.town,
            config_arg=args.config,
            redis_url_arg=args.redis_url,
            env=os.environ,
            cwd=Path.cwd(),
        )
        level = "info" if args.verbose else "warning"
        log.configure(level, args.log_format or settings.log.format)
        if args.command == "conflicts":
            return show_conflicts(settings, as_json=args.json)
        client = connect(settings)
        if args.command == "check":
            return check(settings, client)
        if args.command == "resolve":
            return resolve(settings, client, args.plan_id, args.take)
        return push_or_pull(settings, client, args.command, force=args.force, dry_run=args.dry_run)
    except TtsyncdError as error:
        print(f"ttsyncd: {error}", file=sys.stderr)
        return error.exit_code
    except KeyboardInterrupt:
        return 130


def push_or_pull(
    settings: Settings, client: redis.Redis, command: str, *, force: bool, dry_run: bool
) -> int:
    pushing = command == "push"
    report = sync(settings, client, push=pushing, pull=not pushing, force=force, dry_run=dry_run)
    name = settings.tasks_file.name
    if dry_run:
        print("(dry run: nothing written)")
        for line in report.changes or ["no changes"]:
            print(f"  would {line}")
    if pushing:
        print(PUSH_LINE.format(n=report.plan_tasks, file=name))
        print(report.to_redis.summary())
    else:
        print(PULL_LINE.format(n=report.redis_tasks, file=name))
        print(report.to_file.summary())
    print_warnings(report)
    return EXIT_PLAN if report.pending else EXIT_OK


def print_warnings(report: SyncReport) -> None:
    def warn(text: str) -> None:
        print(f"warning: {text}", file=sys.stderr)

    if report.new_redis:
        warn("Redis held none of this town's tasks: treated as a new Redis, nothing deleted")
    for key, why in sorted(report.unreadable.items()):
        warn(f"skipped {key}: {why} (left untouched)")
    for plan_id, extras in sorted(report.duplicates.items()):
        warn(f"{len(extras) + 1} Redis tasks carry plan:{plan_id}; syncing the newest, "
             f"not touching {', '.join(extras)}")  # fmt: skip
    for plan_id, agent in sorted(report.unresolved_agents.items()):
        warn(f"task {plan_id}: no agent is named {agent!r}; Redis gets no assigned_to")
    if report.settled:
        warn(f"{len(report.settled)} conflict(s) settled by policy; see `ttsyncd conflicts`")
    for conflict in report.pending:
        warn(
            f"conflict on {conflict.plan_id}.{conflict.field} left for you: "
            f"file={conflict.file!r} redis={conflict.redis!r}; see `ttsyncd conflicts`"
        )


def check(settings: Settings, client: redis.Redis) -> int:
    """Everything a sync would do or complain about, writing nothing."""
    report = sync(settings, client, push=True, pull=True, dry_run=True)
    print(f"{settings.tasks_file}: {report.plan_tasks} tasks, valid")
    print(
        f"Redis {settings.endpoint.redacted()}: "
        f"{report.redis_tasks} tasks of town {settings.town_name!r}"
    )
    for line in report.changes:
        print(f"  out of sync: {line}")
    if not report.changes:
        print("in sync")
    print_warnings(report)
    problems = bool(report.unreadable or report.duplicates or report.pending)
    return EXIT_PLAN if problems else EXIT_OK


def resolve(settings: Settings, client: redis.Redis, plan_id: str, take: str) -> int:
    """Make the task equal on both sides to the side taken, and record the choice."""
    path = state_file(settings.state_dir, settings.town_name, settings.endpoint.identity())
    waiting = load_state(path).pending.get(plan_id, [])
    report = sync(
        settings, client, push=take == "file", pull=take == "redis", force=True,
        only=frozenset({plan_id}),
    )  # fmt: skip
    chosen: Side = "file" if take == "file" else "redis"
    append_conflicts(
        settings.state_dir, [replace(c, winner=chosen) for c in waiting],
        policy="manual", now=datetime.now(UTC),
    )  # fmt: skip
    changed = report.to_redis if take == "file" else report.to_file
    print(f"{plan_id}: took the {take}'s values ({changed.summary()})")
    return EXIT_OK


def show_conflicts(settings: Settings, *, as_json: bool) -> int:
    recorded = read_conflicts(settings.state_dir)
    state = load_state(
        state_file(settings.state_dir, settings.town_name, settings.endpoint.identity())
    )
    pending = [asdict(c) for conflicts in state.pending.values() for c in conflicts]
    if as_json:
        print(json.dumps({"recorded": recorded, "pending": pending}, ensure_ascii=False, indent=2))
        return EXIT_OK
    if not recorded and not pending:
        print("no conflicts")
    for entry in recorded:
        print(format_conflict(entry))
    for entry in pending:
        print(format_conflict({**entry, "time": "pending"}))
    return EXIT_OK


def format_conflict(entry: dict[str, Any]) -> str:
    winner = entry.get("winner") or "left for you: ttsyncd resolve ID --take file|redis"
    return (
        f"{entry.get('time', '')}  {entry['plan_id']}.{entry['field']}: "
        f"file={entry['file']!r} redis={entry['redis']!r} base={entry['base']!r} -> {winner}"
    )
