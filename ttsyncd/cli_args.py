"""The `ttsyncd` command line's words: every command with its help line (`ttsyncd --help`), its
description (`ttsyncd COMMAND --help`) and its options, and the options every command takes,
before or after its name. Imports nothing of ttsyncd's but its version: `--help` needs no more.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from typing import Any

from ttsyncd import __version__

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

# Every command, in the order `ttsyncd --help` lists them: its name, its help line, and its
# description. Their options, for those that have some, are added by OPTIONS below.
COMMANDS: tuple[tuple[str, str, str], ...] = (
    ("run", "run the daemon in the foreground (as systemd does)",
     "Run the daemon in the foreground: sync the town's tasks.toml and Redis both ways, "
     "live, until SIGTERM or Ctrl-C (pending work is flushed first). Under systemd "
     "(NOTIFY_SOCKET set) it reports READY, STATUS and WATCHDOG; SIGHUP reloads the config."),
    ("start", "run the daemon in the background",
     "Start the daemon in the background (pidfile and log under <town>/.tt/). Returns once "
     "the first sync is done and the control socket answers; exits non-zero with the reason "
     "when the daemon cannot come up or one already serves the town."),
    ("stop", "stop the background daemon",
     "Stop the town's daemon: asked through its control socket (else SIGTERM to the "
     "pidfile's pid), and wait until it has flushed its work and exited."),
    ("status", "what the daemon is doing",
     "Show what the town's daemon is doing: Redis, notifications, the last push and pull, "
     "pending events, conflicts, errors. Exits 1 when no daemon serves the town."),
    ("monitor", "watch the daemon work, live",
     "Watch the town's daemon live: each sync with its direction and duration, every task "
     "and field it changes (old → new), deletions, conflicts and stale writes set aside, "
     "errors, reconnects, pause and resume; on a terminal under a status header. Ends on "
     "Ctrl-C or when the daemon stops (exit 0); exits 1 when no daemon serves the town."),
    ("push", "apply the file's changes to Redis",
     "Apply the changes made in tasks.toml since the last sync to the town's Redis tasks "
     "(three-way merge: a change made in Redis waits for `pull`, it is not overwritten)."),
    ("pull", "apply Redis's changes to the file",
     "Apply the changes made in the town's Redis tasks since the last sync to tasks.toml, "
     "keeping its comments and layout (creates tasks.toml when the town has none)."),
    ("pause", "stop syncing and writing either side (for git)",
     "Stop syncing and writing either side (before a rebase or a branch switch); changes "
     "wait, also across a daemon restart, until `ttsyncd resume`."),
    ("resume", "sync again after `pause`",
     "Sync again after `pause`: one sync of everything that changed meanwhile right away, "
     "then live."),
    ("check", "validate the plan and the town's Redis tasks, write nothing",
     "Validate tasks.toml and the town's Redis tasks and report what is out of sync, "
     "duplicates, unreadable hashes and conflicts; writes nothing. Exits 1 on a problem."),
    ("repair", "delete duplicate tasks left by `tt sync push`",
     "Delete the duplicate tasks `tt sync push` leaves (several tasks carrying one plan "
     "tag), keeping the most recently updated of each."),
    ("conflicts", "list recorded and unresolved conflicts",
     "List every conflict settled by the policy (with the losing value), every one left "
     "for you, and every stale or held write set aside."),
    ("resolve", "settle a conflict left for you (manual policy)",
     "Settle one task on purpose: make it equal on both sides to the side taken. Settles a "
     "conflict the manual policy left for you, applies a stale write set aside, or lets a "
     "held or refused deletion go through (--take file)."),
    ("service", "install the daemon as a systemd service (install, uninstall, status)",
     "The town's daemon as a systemd service: `install` writes the unit ttsyncd@.service "
     "(ExecStart set to this ttsyncd) and runs `systemctl daemon-reload` and "
     "`enable --now` of the town's instance; `uninstall` undoes it; `status` asks systemctl."),
    ("demo", "make a demo town and run the daemon on it",
     "Make a demo town (a tinytown.toml and a commented tasks.toml) with an embedded "
     "redis-server, and run the daemon on it, showing a sync in each direction."),
)  # fmt: skip

# `ttsyncd service ACTION`, likewise.
SERVICE_ACTIONS: tuple[tuple[str, str, str], ...] = (
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
)  # fmt: skip


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
    for name, help_text, description in COMMANDS:
        command = sub.add_parser(name, help=help_text, description=description, parents=[common])
        if name in OPTIONS:
            OPTIONS[name](command, common)
    return parser


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    args = build_parser().parse_args(argv)
    for name, default in GLOBAL_DEFAULTS.items():
        if not hasattr(args, name):
            setattr(args, name, default)
    return args


# A command's own options: added to its parser (the first argument); the second is the parser
# of the options every command takes, for a command with subcommands of its own.
Options = Callable[[argparse.ArgumentParser, argparse.ArgumentParser], None]


def status_options(command: argparse.ArgumentParser, _common: argparse.ArgumentParser) -> None:
    command.add_argument(
        "--json", action="store_true",
        help='one JSON object, also with no daemon ({"running": false, ...})',
    )  # fmt: skip


def monitor_options(command: argparse.ArgumentParser, _common: argparse.ArgumentParser) -> None:
    command.add_argument(
        "--json", action="store_true",
        help='one JSON event per line (the first: {"event": "subscribed", "status": ...})',
    )  # fmt: skip


def push_or_pull_options(
    command: argparse.ArgumentParser, _common: argparse.ArgumentParser
) -> None:
    command.add_argument(
        "--force", action="store_true",
        help="make the target equal the source for every task, deletions included",
    )  # fmt: skip
    command.add_argument(
        "--dry-run", action="store_true", help="show every change it would make, write nothing"
    )


def repair_options(command: argparse.ArgumentParser, _common: argparse.ArgumentParser) -> None:
    command.add_argument("--dry-run", action="store_true", help="show what would be deleted")


def conflicts_options(command: argparse.ArgumentParser, _common: argparse.ArgumentParser) -> None:
    command.add_argument("--json", action="store_true", help="one JSON object")


def resolve_options(command: argparse.ArgumentParser, _common: argparse.ArgumentParser) -> None:
    command.add_argument("plan_id", metavar="ID", help="the task's plan id")
    command.add_argument(
        "--take", choices=("file", "redis"), required=True, help="whose values win"
    )


def service_options(command: argparse.ArgumentParser, common: argparse.ArgumentParser) -> None:
    actions = command.add_subparsers(dest="action", required=True, metavar="ACTION")
    for action, help_text, description in SERVICE_ACTIONS:
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


def demo_options(command: argparse.ArgumentParser, _common: argparse.ArgumentParser) -> None:
    command.add_argument(
        "dir", nargs="?", default="ttsyncd-demo", help="where (default: ./ttsyncd-demo)"
    )


OPTIONS: dict[str, Options] = {
    "status": status_options,
    "monitor": monitor_options,
    "push": push_or_pull_options,
    "pull": push_or_pull_options,
    "repair": repair_options,
    "conflicts": conflicts_options,
    "resolve": resolve_options,
    "service": service_options,
    "demo": demo_options,
}
