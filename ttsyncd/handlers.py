"""What the daemon answers on its control socket (ttsyncd/control.py serves it): one handler
per command, and the `status` answer.

`push`, `pull`, `check`, `resolve` and `repair` run the one-shot commands (ttsyncd/commands.py)
on the daemon's own caches, between its syncs, under the sync lock; `pause` and `resume` hold
and release both sides (for git); `subscribe` streams the events `ttsyncd monitor` shows.
"""

from __future__ import annotations

import asyncio
import os
from typing import TYPE_CHECKING, Any

import redis
import structlog

from ttsyncd import activity, background, commands, control, systemd
from ttsyncd.commands import WRITING, Town
from ttsyncd.connection import LOST_REDIS, command_failure
from ttsyncd.errors import RedisUnavailable, TtsyncdError

if TYPE_CHECKING:
    from ttsyncd.daemon import Daemon

logger = structlog.get_logger("ttsyncd.daemon")


class Paused(TtsyncdError):
    """A command that would write, sent to a paused daemon."""


async def handle(daemon: Daemon, message: dict[str, Any]) -> Any:
    command = message["cmd"]
    if command == "status":
        return status(daemon)
    if command == "subscribe":  # `ttsyncd monitor`
        events = daemon.standing.events
        subscription = events.subscribe()
        return control.Stream(
            {"status": status(daemon)}, subscription.events(),
            lambda: events.unsubscribe(subscription),
        )  # fmt: skip
    if command == "stop":
        daemon.stop()
        return {"stopping": True, "pid": os.getpid()}
    if command == "reload":
        await daemon.reload()
        return status(daemon)
    if command == "pause":
        return await pause(daemon)
    if command == "resume":
        return await resume(daemon)
    if command == "conflicts":
        as_json = bool(message.get("json"))
        return commands.conflicts(
            daemon.settings, as_json=as_json, store=daemon.state_store
        ).to_json()
    if command in ("push", "pull", "check", "resolve", "repair"):
        return (await run_command(daemon, command, message)).to_json()
    raise ValueError(f"unknown command {command!r}")


async def pause(daemon: Daemon) -> dict[str, Any]:
    """Stop syncing and writing either side (for git): both are still watched, and what
    changes waits. Once this answers, nothing more is written (a sync under way ends
    first)."""
    async with daemon.sync_lock:
        already = daemon.paused_since is not None
        daemon.paused_since = await asyncio.to_thread(background.mark_paused, daemon.settings)
    if not already:
        logger.info("paused", since=daemon.paused_since)
        daemon.standing.events.publish("paused", since=daemon.paused_since)
        systemd.notify(f"STATUS={daemon.status_line()}")
    return {"paused": {"since": daemon.paused_since}, "already": already}


async def resume(daemon: Daemon) -> dict[str, Any]:
    """Sync again: one sync right away, of everything that changed meanwhile (the merge
    rules as ever), before answering."""
    async with daemon.sync_lock:
        since = daemon.paused_since
        await asyncio.to_thread(background.clear_pause, daemon.settings)
        daemon.paused_since = None
        if since is None:
            return {"resumed": False}
        # Read both sides afresh: a long pause (a rebase) may hold more than the events say.
        daemon.schedule.resumed(file_differed=await daemon.file_differs())
        daemon.wake.set()
    logger.info("resumed", paused_since=since)
    daemon.standing.events.publish("resumed", paused_since=since)
    if daemon.session.connected:
        await daemon.sync_due(all_owed=True)
    systemd.notify(f"STATUS={daemon.status_line()}")
    return {"resumed": True, "paused_since": since, "synced": daemon.session.connected,
            "last_error": daemon.standing.last_error}  # fmt: skip


async def run_command(daemon: Daemon, command: str, message: dict[str, Any]) -> commands.Output:
    """push/pull/check/resolve for the CLI, through the daemon's own caches, between
    its syncs. Paused, the commands that write are refused (a dry run writes nothing)."""
    writes = command in WRITING and not message.get("dry_run")
    if daemon.paused_since and writes:
        raise Paused(f"paused since {daemon.paused_since}; `ttsyncd resume` first")
    session, settings = daemon.session, daemon.settings
    if not session.connected or session.mirror is None or session.client is None:
        raise RedisUnavailable(f"Redis unreachable at {settings.endpoint.redacted()}")
    async with daemon.sync_lock:
        mirror = session.mirror
        town = Town(settings, session.client, daemon.file_side.reader, mirror, daemon.state_store)
        force, dry_run = bool(message.get("force")), bool(message.get("dry_run"))

        def run() -> commands.Output:
            mirror.reload()  # an explicit command reads Redis afresh
            if command == "check":
                return commands.check(town)
            if command == "resolve":
                return commands.resolve(town, str(message["plan_id"]), str(message["take"]))
            if command == "repair":
                return commands.repair(town, dry_run=dry_run)
            return commands.push_or_pull(town, command, force=force, dry_run=dry_run)

        try:
            output = await daemon.under_way(run)
        except (redis.RedisError, *LOST_REDIS) as error:  # (the session notices, reconnects)
            failure = command_failure(error, settings.endpoint, command)
            if failure is None:
                raise
            raise failure from None
        for report, push, pull, wrote_nothing in town.synced:  # recorded as its own are
            if wrote_nothing:
                said = command if command == "check" else f"{command} --dry-run"
                activity.check_done(daemon.standing.events, report, command=said)
            else:
                daemon.record(report, push=push, pull=pull, origin="command")
        if writes:  # a forced push or a resolve may have lifted (or made) a refusal
            daemon.standing.show_refusal(daemon.state_store.load().refused)
        return output


def status(daemon: Daemon) -> dict[str, Any]:
    settings, session, standing = daemon.settings, daemon.session, daemon.standing
    lists = commands.conflict_lists(settings, daemon.state_store)
    refused = daemon.state_store.load().refused
    last_report, problem = standing.last_report, standing.problem
    return {
        "pid": os.getpid(),
        "town": settings.town_name,
        "town_dir": str(settings.town_dir),
        "tasks_file": str(settings.tasks_file),
        "redis": settings.endpoint.redacted(),
        "topology": session.topology.to_json(),
        "mode": daemon.mode,
        "state": daemon.state.value,
        "notifications": session.notifications,
        "redis_connected": session.connected,
        "started_at": standing.started_at,
        "syncs": standing.syncs,
        "last_push": vars(standing.last_push) if standing.last_push else None,
        "last_pull": vars(standing.last_pull) if standing.last_pull else None,
        "pending_events": {"file": daemon.schedule.file, "redis": len(daemon.schedule.keys)},
        "duplicates": last_report.duplicates if last_report else {},
        "unreadable": last_report.unreadable if last_report else {},
        "unknown_agents": last_report.unresolved_agents if last_report else {},
        "conflicts": len(lists["recorded"]),
        "conflicts_pending": len(lists["pending"]),
        "refused_deletions": sorted(refused.plan_ids) if refused else [],
        "paused": {"since": daemon.paused_since} if daemon.paused_since else None,
        "last_error": standing.last_error,
        "last_error_kind": problem.kind if problem else None,
        "part_failures": dict(daemon.parts.failures),  # per part, restarted or not
        "monitors": len(standing.events.subscribers),  # `ttsyncd monitor`s watching
        "verify": {
            "last": daemon.anti_entropy.verified_at,
            "found": daemon.anti_entropy.found,
            "interval_s": settings.sync.verify_interval_s,
        },
    }
