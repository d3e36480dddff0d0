"""The `ttsyncd` command: what each command runs, its output and exit codes. No sync logic
lives here; the command line's words (commands, options, help) are in ttsyncd/cli_args.py,
and `status` as it prints in ttsyncd/status_text.py.

push, pull, check, conflicts and resolve go through the control socket when a daemon serves
the town (so the daemon's caches and the file stay consistent), and run in this process
otherwise; either way they print the same.

Each command imports what it needs when it runs: `--version` and `--help` import nothing of
ttsyncd's, `status` and a command a daemon serves need no redis-py, only a command run in this
process loads the sync engine, and only `run` and `start` the daemon and python-daemon.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ttsyncd.cli_args import parse_args
from ttsyncd.errors import EXIT_OK, EXIT_PLAN, ConfigError, TtsyncdError

if TYPE_CHECKING:
    from ttsyncd.config import Settings
    from ttsyncd.output import Output


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
            from ttsyncd.status_text import show_status

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
    from ttsyncd.connection import LOST_REDIS, command_failure, connect

    log.configure("info" if args.verbose else "warning", args.log_format or settings.log.format)
    if args.command == "conflicts":
        return commands.conflicts(settings, as_json=args.json)
    writes = args.command in commands.WRITING and not getattr(args, "dry_run", False)
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
    except (redis.RedisError, *LOST_REDIS) as error:
        failure = command_failure(error, settings.endpoint, args.command)
        if failure is None:
            raise
        raise failure from None


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
