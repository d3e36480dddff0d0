"""The `ttsyncd` command: argument parsing, output and exit codes. No sync logic lives here.

push, pull, check, conflicts and resolve go through the control socket when a daemon serves
the town (so the daemon's caches and the file stay consistent), and run in this process
otherwise; either way they print the same.

Each command imports what it needs when it runs: `--version` and `--help` import nothing of
ttsyncd's, `status` and a command a daemon serves need no redis-py, only a command run in this
process loads the sync engine, and only `run` and `start` the daemon and python-daemon.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ttsyncd import __version__
from ttsyncd.errors import EXIT_OK, EXIT_PLAN, ConfigError, TtsyncdError

if TYPE_CHECKING:
    from ttsyncd.config import Settings
    from ttsyncd.output import Output

# The options every command takes, before or after its name. Their defaults are SUPPRESSed in
# the parsers (a subcommand's default would otherwise overwrite the value given before it) and
# filled in by `parse_args`.
GLOBAL_DEFAULTS: dict[str, Any] = {
    "town": None,
    "config": None,
    "redis_url": None,
    "log_format": None,
    "verbose": False,
}


def global_options() -> argparse.ArgumentParser:
    options = argparse.ArgumentParser(add_help=False)
    group = options.add_argument_group("options of every command (before or after it)")
    group.add_argument(
        "--town", metavar="DIR", default=argparse.SUPPRESS,
        help="the town directory (default: the nearest one holding tinytown.toml or "
        "tasks.toml, from the current directory up)",
    )  # fmt: skip
    group.add_argument(
        "--config", metavar="FILE", default=argparse.SUPPRESS,
        help="ttsyncd config (default: <town>/ttsyncd.toml)",
    )  # fmt: skip
    group.add_argument(
        "--redis-url", metavar="URL", default=argparse.SUPPRESS,
        help="Redis to use (overrides REDIS_URL)",
    )  # fmt: skip
    group.add_argument(
        "--log-format", choices=("auto", "console", "json"), default=argparse.SUPPRESS,
        help="log format (default: config)",
    )  # fmt: skip
    group.add_argument(
        "-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
        help="log progress, not only problems (run, start: debug, each field a sync changes)",
    )  # fmt: skip
    return options


def build_parser() -> argparse.ArgumentParser:
    common = global_options()
    parser = argparse.ArgumentParser(
        prog="ttsyncd",
        description="Keep a tinytown town's tasks.toml and its Redis tasks in sync.",
        parents=[common],
    )
    parser.add_argument("--version", action="version", version=f"ttsyncd {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, help_text: str, description: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=help_text, description=description, parents=[common])

    command(
        "run", "run the daemon in the foreground (as systemd does)",
        "Run the daemon in the foreground: sync the town's tasks.toml and Redis both ways, "
        "live, until SIGTERM or Ctrl-C (pending work is flushed first). Under systemd "
        "(NOTIFY_SOCKET set) it reports READY, STATUS and WATCHDOG; SIGHUP reloads the config.",
    )  # fmt: skip
    command(
        "start", "run the daemon in the background",
        "Start the daemon in the background (pidfile and log under <town>/.tt/). Returns once "
        "the first sync is done and the control socket answers; exits non-zero with the reason "
        "when the daemon cannot come up or one already serves the town.",
    )  # fmt: skip
    command(
        "stop", "stop the background daemon",
        "Stop the town's daemon: asked through its control socket (else SIGTERM to the "
        "pidfile's pid), and wait until it has flushed its work and exited.",
    )  # fmt: skip
    status = command(
        "status", "what the daemon is doing",
        "Show what the town's daemon is doing: Redis, notifications, the last push and pull, "
        "pending events, conflicts, errors. Exits 1 when no daemon serves the town.",
    )  # fmt: skip
    status.add_argument(
        "--json", action="store_true",
        help='one JSON object, also with no daemon ({"running": false, ...})',
    )  # fmt: skip
    monitor = command(
        "monitor", "watch the daemon work, live",
        "Watch the town's daemon live: each sync with its direction and duration, every task "
        "and field it changes (old → new), deletions, conflicts and stale writes set aside, "
        "errors, reconnects, pause and resume; on a terminal under a status header. Ends on "
        "Ctrl-C or when the daemon stops (exit 0); exits 1 when no daemon serves the town.",
    )  # fmt: skip
    monitor.add_argument(
        "--json", action="store_true",
        help='one JSON event per line (the first: {"event": "subscribed", "status": ...})',
    )  # fmt: skip
    for name, help_text, description in (
        ("push", "apply the file's changes to Redis",
         "Apply the changes made in tasks.toml since the last sync to the town's Redis tasks "
         "(three-way merge: a change made in Redis waits for `pull`, it is not overwritten)."),
        ("pull", "apply Redis's changes to the file",
         "Apply the changes made in the town's Redis tasks since the last sync to tasks.toml, "
         "keeping its comments and layout (creates tasks.toml when the town has none)."),
    ):  # fmt: skip
        push_or_pull = command(name, help_text, description)
        push_or_pull.add_argument(
            "--force", action="store_true",
            help="make the target equal the source for every task, deletions included",
        )  # fmt: skip
        push_or_pull.add_argument(
            "--dry-run", action="store_true", help="show every change it would make, write nothing"
        )
    command(
        "pause", "stop syncing and writing either side (for git)",
        "Stop syncing and writing either side (before a rebase or a branch switch); changes "
        "wait, also across a daemon restart, until `ttsyncd resume`.",
    )  # fmt: skip
    command(
        "resume", "sync again after `pause`",
        "Sync again after `pause`: one sync of everything that changed meanwhile right away, "
        "then live.",
    )  # fmt: skip
    command(
        "check", "validate the plan and the town's Redis tasks, write nothing",
        "Validate tasks.toml and the town's Redis tasks and report what is out of sync, "
        "duplicates, unreadable hashes and conflicts; writes nothing. Exits 1 on a problem.",
    )  # fmt: skip
    repair = command(
        "repair", "delete duplicate tasks left by `tt sync push`",
        "Delete the duplicate tasks `tt sync push` leaves (several tasks carrying one plan "
        "tag), keeping the most recently updated of each.",
    )  # fmt: skip
    repair.add_argument("--dry-run", action="store_true", help="show what would be deleted")
    conflicts = command(
        "conflicts", "list recorded and unresolved conflicts",
        "List every conflict settled by the policy (with the losing value), every one left "
        "for you, and every stale or held write set aside.",
    )  # fmt: skip
    conflicts.add_argument("--json", action="store_true", help="one JSON object")
    resolve = command(
        "resolve", "settle a conflict left for you (manual policy)",
        "Settle one task on purpose: make it equal on both sides to the side taken. Settles a "
        "conflict the manual policy left for you, applies a stale write set aside, or lets a "
        "held or refused deletion go through (--take file).",
    )  # fmt: skip
    resolve.add_argument("plan_id", metavar="ID", help="the task's plan id")
    resolve.add_argument(
        "--take", choices=("file", "redis"), required=True, help="whose values win"
    )
    service = command(
        "service", "install the daemon as a systemd service (install, uninstall, status)",
        "The town's daemon as a systemd service: `install` writes the unit ttsyncd@.service "
        "(ExecStart set to this ttsyncd) and runs `systemctl daemon-reload` and "
        "`enable --now` of the town's instance; `uninstall` undoes it; `status` asks systemctl.",
    )  # fmt: skip
    actions = service.add_subparsers(dest="action", required=True, metavar="ACTION")
    for action, help_text, description in (
        ("install", "write the unit, daemon-reload, enable --now",
         "Write ttsyncd@.service (ExecStart: this ttsyncd; --system: a drop-in running it as "
         "the town's owner) into the unit directory, then `systemctl daemon-reload` and "
         "`systemctl enable --now ttsyncd@<town>.service`."),
        ("uninstall", "disable --now, remove the unit, daemon-reload",
         "`systemctl disable --now ttsyncd@<town>.service`, remove its drop-in, and the unit "
         "too when no other town's instance is enabled, then `systemctl daemon-reload`."),
        ("status", "where the unit is, and what systemctl says of the town's instance",
         "Show where the unit is and `systemctl status` of the town's instance; exits 0 when "
         "it is active, 1 otherwise."),
    ):  # fmt: skip
        parser_of_action = actions.add_parser(
            action, help=help_text, description=description, parents=[common]
        )
        scope = parser_of_action.add_mutually_exclusive_group()
        scope.add_argument(
            "--user", dest="system", action="store_false",
            help="a user unit, ~/.config/systemd/user (the default)",
        )  # fmt: skip
        scope.add_argument(
            "--system", dest="system", action="store_true",
            help="a system unit, /etc/systemd/system, run as the town's owner",
        )  # fmt: skip
        parser_of_action.set_defaults(system=False)
        parser_of_action.add_argument(
            "--unit-dir", metavar="DIR", help="the unit directory to use instead"
        )
        if action != "status":
            parser_of_action.add_argument(
                "--dry-run", action="store_true",
                help="print the files and the systemctl commands, change nothing",
            )  # fmt: skip
    demo = command(
        "demo", "make a demo town and run the daemon on it",
        "Make a demo town (a tinytown.toml and a commented tasks.toml) with an embedded "
        "redis-server, and run the daemon on it, showing a sync in each direction.",
    )  # fmt: skip
    demo.add_argument(
        "dir", nargs="?", default="ttsyncd-demo", help="where (default: ./ttsyncd-demo)"
    )
    return parser


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    args = build_parser().parse_args(argv)
    for name, default in GLOBAL_DEFAULTS.items():
        if not hasattr(args, name):
            setattr(args, name, default)
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        if args.command == "demo":
            from ttsyncd.demo import run_demo

            return run_demo(Path(args.dir), args.log_format)
        from ttsyncd.config import load_settings

        def reload_settings() -> Settings:
            return load_settings(
                town_arg=args.town,
                config_arg=args.config,
                redis_url_arg=args.redis_url,
                env=os.environ,
                cwd=Path.cwd(),
            )

        settings = reload_settings()
        if args.command in ("run", "start"):
            return run_daemon(args, settings, reload_settings)
        if args.command == "stop":
            from ttsyncd import background

            return background.stop(settings)
        if args.command == "service":
            return manage_service(args, settings)
        if args.command == "status":
            return show_status(settings, as_json=args.json)
        if args.command == "monitor":
            from ttsyncd.monitor import monitor

            return monitor(settings.town_dir, as_json=args.json)
        if args.command in ("pause", "resume"):
            return pause_or_resume(settings, args.command)
        return one_shot(args, settings).show()
    except TtsyncdError as error:
        print(f"ttsyncd: {error}", file=sys.stderr)
        return error.exit_code
    except KeyboardInterrupt:
        return 130


def run_daemon(
    args: argparse.Namespace, settings: Settings, reload_settings: Callable[[], Settings]
) -> int:
    from dataclasses import replace

    def logging_as_asked(loaded: Settings) -> Settings:
        """-v (debug: each field a sync changes, old → new) and --log-format over the
        config's [log], also once a SIGHUP has read the config again."""
        level = "debug" if args.verbose else loaded.log.level
        fmt = args.log_format or loaded.log.format
        return replace(loaded, log=replace(loaded.log, level=level, format=fmt))

    settings = logging_as_asked(settings)

    def reload_as_asked() -> Settings:
        return logging_as_asked(reload_settings())

    if args.command == "start":
        from ttsyncd import background

        return background.start(settings, reload_as_asked)
    from ttsyncd import log
    from ttsyncd.daemon import run_foreground

    log.configure(settings.log.level, settings.log.format)
    mode = "systemd" if os.environ.get("NOTIFY_SOCKET") else "foreground"
    return run_foreground(settings, reload_as_asked, mode)


def manage_service(args: argparse.Namespace, settings: Settings) -> int:
    from ttsyncd import control, service

    unit = service.service_for(settings.town_dir, system=args.system, unit_dir=args.unit_dir)
    if args.action == "status":
        return service.status(unit)
    if args.action == "install" and not args.dry_run:
        answer = control.request(control.socket_path(settings.town_dir), {"cmd": "status"}, 5.0)
        running = answer.get("result", {}) if answer and answer.get("ok") else None
        if running is not None and running.get("mode") != "systemd":
            raise TtsyncdError(
                f"a ttsyncd daemon (pid {running.get('pid')}, {running.get('mode')}) already "
                "serves this town: `ttsyncd stop` it first, the service starts its own"
            )
    if settings.endpoint.source in EXPLICIT_ENDPOINTS:
        print(
            f"note: {settings.endpoint.source} is not written into the unit: the service finds "
            "its Redis as `ttsyncd run` does (the town's ttsyncd.toml [redis] url, or "
            "tinytown.toml)",
            file=sys.stderr,
        )
    if args.action == "install":
        return service.install(unit, dry_run=args.dry_run)
    return service.uninstall(unit, dry_run=args.dry_run)


def one_shot(args: argparse.Namespace, settings: Settings) -> Output:
    """push/pull/check/conflicts/resolve/repair: through the daemon if one serves the town
    on the Redis the command means, else in this process."""
    from ttsyncd import control
    from ttsyncd.output import Output

    request: dict[str, Any] = {"cmd": args.command}
    for name in ("force", "dry_run", "json", "plan_id", "take"):
        if hasattr(args, name):
            request[name] = getattr(args, name)
    sock = control.socket_path(settings.town_dir)
    elsewhere = daemon_on_another_redis(sock, settings)
    answer = None if elsewhere is not None else control.request(sock, request)
    if answer is not None:
        if not answer.get("ok"):
            return Output(stderr=[f"ttsyncd: {answer.get('error')}"], code=answer.get("code", 1))
        return Output.from_json(answer["result"])
    output = run_here(args, settings)
    if elsewhere is not None:
        output.stderr.insert(
            0,
            f"note: the daemon serving this town uses {elsewhere}; {settings.endpoint.source} "
            f"names {settings.endpoint.redacted()}: ran on its own against that one",
        )
    return output


# Where an endpoint given for one command comes from; a daemon on another Redis does not
# serve such a command.
EXPLICIT_ENDPOINTS = ("--redis-url", "REDIS_URL")


def daemon_on_another_redis(sock: Path, settings: Settings) -> str | None:
    """The Redis of the daemon serving the town (as its status shows it) when the command
    names another one explicitly (--redis-url, REDIS_URL); else None: the daemon, if one
    runs, serves the command."""
    if settings.endpoint.source not in EXPLICIT_ENDPOINTS:
        return None
    from ttsyncd import control
    from ttsyncd.endpoints import endpoint_from_url

    answer = control.request(sock, {"cmd": "status"}, 10.0)
    if answer is None or not answer.get("ok"):
        return None
    theirs = str(answer["result"].get("redis"))
    try:  # the daemon shows its endpoint redacted: compare server and db, not the text
        same = endpoint_from_url(theirs, "the daemon").identity() == settings.endpoint.identity()
    except ConfigError:
        same = theirs == settings.endpoint.redacted()
    return None if same else theirs


def run_here(args: argparse.Namespace, settings: Settings) -> Output:
    """A one-shot command in this process, against the settings' Redis."""
    import redis

    from ttsyncd import commands, log
    from ttsyncd.connection import LOST_REDIS, connect, lost_during, refused_by_acl

    log.configure("info" if args.verbose else "warning", args.log_format or settings.log.format)
    if args.command == "conflicts":
        return commands.conflicts(settings, as_json=args.json)
    writes = args.command in ("push", "pull", "resolve", "repair") and not getattr(
        args, "dry_run", False
    )
    since = paused_since(settings) if writes else None
    if since is not None:  # as a paused daemon answers: the town is paused
        return commands.Output(
            stderr=[f"ttsyncd: paused since {since}; `ttsyncd resume` first"], code=EXIT_PLAN
        )
    commands.require_plan(settings, args.command)  # before connecting: no Redis started for it
    town = commands.Town(settings, connect(settings))
    try:
        if args.command == "check":
            return commands.check(town)
        if args.command == "resolve":
            return commands.resolve(town, args.plan_id, args.take)
        if args.command == "repair":
            return commands.repair(town, dry_run=args.dry_run)
        return commands.push_or_pull(town, args.command, force=args.force, dry_run=args.dry_run)
    except LOST_REDIS as error:  # (before ResponseError: CLUSTERDOWN is one of those too)
        raise lost_during(error, settings.endpoint, args.command) from None
    except redis.ResponseError as error:
        refused = refused_by_acl(error, settings.endpoint)
        if refused is None:
            raise
        raise refused from None


def paused_since(settings: Settings) -> str | None:
    """When the town's pause began (background.paused_since), None when it is not paused.
    Looks for the marker first: background.py imports python-daemon, which a push or pull of
    a town that is not paused has no use for."""
    if not os.path.lexists(settings.state_dir / "paused"):  # background.pause_marker
        return None
    from ttsyncd import background

    return background.paused_since(settings)


def pause_or_resume(settings: Settings, command: str) -> int:
    """Through the daemon if one serves the town; else the pause marker alone, which the
    next daemon to start obeys."""
    from ttsyncd import control

    answer = control.request(control.socket_path(settings.town_dir), {"cmd": command})
    if answer is None:
        from ttsyncd import background

        if command == "pause":
            began = background.mark_paused(settings)
            print(f"ttsyncd paused since {began}: no daemon running; it will start paused")
        elif (since := background.clear_pause(settings)) is not None:
            print(f"ttsyncd resumed (paused since {since}): no daemon running; "
                  "it will start syncing")  # fmt: skip
        else:
            print("ttsyncd was not paused (no daemon running)")
        return EXIT_OK
    if not answer.get("ok"):
        raise TtsyncdError(str(answer.get("error")))
    result: dict[str, Any] = answer["result"]
    if command == "pause":
        since = result["paused"]["since"]
        already = "already " if result["already"] else ""
        print(f"ttsyncd {already}paused since {since}: nothing is synced or written until "
              "`ttsyncd resume`")  # fmt: skip
    elif not result["resumed"]:
        print("ttsyncd was not paused")
    elif not result["synced"]:
        print(f"ttsyncd resumed (paused since {result['paused_since']}); Redis is unreachable: "
              "it syncs once Redis is back")  # fmt: skip
    else:
        error = result["last_error"]
        print(f"ttsyncd resumed (paused since {result['paused_since']}) and synced"
              + (f"; last error: {error}" if error else ""))  # fmt: skip
    return EXIT_OK


def show_status(settings: Settings, *, as_json: bool) -> int:
    """The daemon's status; exits 1 when none serves the town. `--json` always prints one
    JSON object, `"running"` saying whether a daemon answered."""
    from ttsyncd import control

    sock = control.socket_path(settings.town_dir)
    answer = control.request(sock, {"cmd": "status"}, 10.0)
    if answer is None or not answer.get("ok"):
        error = None if answer is None else str(answer.get("error"))
        if as_json:
            not_serving: dict[str, Any] = {
                "running": answer is not None,
                "town": settings.town_name,
                "town_dir": str(settings.town_dir),
                "socket": str(sock),
            }
            if error is not None:
                not_serving["error"] = error
            print(json.dumps(not_serving, indent=2))
            return EXIT_PLAN
        if error is not None:
            raise TtsyncdError(error)
        print(f"ttsyncd is not running for {settings.town_dir}", file=sys.stderr)
        return EXIT_PLAN
    status: dict[str, Any] = answer["result"]
    if as_json:
        print(json.dumps({"running": True, **status}, indent=2))
        return EXIT_OK
    for line in status_lines(status):
        print(line)
    return EXIT_OK


def verify_lines(verify: dict[str, Any] | None) -> list[str]:
    if not verify:
        return []
    last = f"last {verify['last']}: {verify['found']}" if verify["last"] else "not yet"
    return [f"  verify:        every {verify['interval_s']:g} s; {last}"]


def status_lines(status: dict[str, Any]) -> list[str]:
    from ttsyncd.topology_status import describe

    def stamp(entry: dict[str, Any] | None) -> str:
        if not entry:
            return "never"
        return (
            f"{entry['time']} ({entry['duration_ms']} ms): created {entry['created']}, "
            f"updated {entry['updated']}, deleted {entry['deleted']}, "
            f"unchanged {entry['unchanged']}"
        )

    connected = "connected" if status["redis_connected"] else "NOT CONNECTED"
    pending = status["pending_events"]
    paused: dict[str, Any] | None = status.get("paused")
    return [
        f"ttsyncd {status['mode']} (pid {status['pid']}) for town {status['town']!r}",
        *(
            [f"  paused:        since {paused['since']} (`ttsyncd resume` to sync again)"]
            if paused
            else []
        ),
        f"  tasks file:    {status['tasks_file']}",
        f"  redis:         {status['redis']} ({connected})",
        f"  topology:      {describe(status['topology'])}",
        f"  notifications: {status['notifications']}",
        f"  last push:     {stamp(status['last_push'])}",
        f"  last pull:     {stamp(status['last_pull'])}",
        f"  pending:       file {'changed' if pending['file'] else 'unchanged'}, "
        f"{pending['redis']} Redis key(s)",
        f"  conflicts:     {status['conflicts']} recorded, {status['conflicts_pending']} "
        "left for you",
        f"  last error:    {status['last_error'] or 'none'}",
        *verify_lines(status.get("verify")),
        *(
            [f"  refused:       {', '.join(status['refused_deletions'])} (not deleted)"]
            if status.get("refused_deletions")
            else []
        ),
        *(
            f"  duplicates:    plan:{plan_id} is carried by {len(extra) + 1} tasks "
            "(`ttsyncd repair` keeps the newest)"
            for plan_id, extra in sorted(status.get("duplicates", {}).items())
        ),
        *(
            f"  unreadable:    {key}: {why}"
            for key, why in sorted(status.get("unreadable", {}).items())
        ),
    ]
