"""Sentinel failover end to end: a primary, its replica and one Sentinel (quorum 1, down after
500 ms) started by the test on loopback, the real daemon on `redis+sentinel://`, edits on both
sides (file saves; tinytown-style writes through the sentinel-resolved primary) while the
primary is SIGKILLed and the replica promoted, or while Sentinel hands the primary over with the
old one still up (SENTINEL FAILOVER). The daemon must follow, converge and lose nothing: every
edit made is present on both sides or recorded as a settled conflict.

It measures, per failover, the time from the primary's loss to the daemon's first successful
sync after it, and prints the figures (`python -m bench.failover` runs the same scenario longer
and writes them as JSON). Short by default; `pytest --long` or TTSYNCD_LONG=1 for more rounds.
"""

from __future__ import annotations

import json
import random
import statistics
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from datetime import datetime
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import redis
import redis.sentinel

from tests.daemon_harness import Daemon, wait_until
from tests.helpers import make_town, run_cli, town_records
from tests.test_faults import (  # noqa: F401  (figures: the fault suite's report fixture)
    SEED,
    TOWN,
    Ledger,
    PlanWatch,
    figures,
    key_of,
    log_tail,
    plan_text,
    same_on_both_sides,
    settle_file,
    stop_daemon,
    tinytown_fields,
    wait_converged,
)
from tests.topologies import SentinelSetup, TcpServer, redis_sentinel, replica_in_sync
from ttsyncd.codec import OPTIONAL_FIELDS
from ttsyncd.replication import promotable
from ttsyncd.state import read_conflicts

COUNT = 20
FOLLOW_S = 30.0  # Sentinel's failover plus the daemon's reconnect, generously
KILL = "kill"  # SIGKILL the primary: Sentinel promotes the replica
HANDOVER = "handover"  # SENTINEL FAILOVER: the old primary stays up, as a replica


@dataclass
class FailoverFigures:
    rounds: list[str] = field(default_factory=list)  # kill | handover, in order
    # Seconds from the primary's loss (the SIGKILL, or the SENTINEL FAILOVER request) to the
    # end of the daemon's first successful sync against the new primary.
    to_first_sync_s: dict[str, list[float]] = field(default_factory=dict)
    edits_made: int = 0
    edits_lost: int = 0
    lost: list[str] = field(default_factory=list)
    conflicts_recorded: int = 0
    seed: int = SEED

    def count(self, ledger: Ledger, state_dir: Path) -> FailoverFigures:
        """The edits the run made and lost, and the conflicts it recorded."""
        self.edits_made = ledger.made
        self.lost = list(ledger.lost)
        self.edits_lost = len(ledger.lost)
        self.conflicts_recorded = len(read_conflicts(state_dir))
        return self

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "failovers": dict(Counter(self.rounds)),
            "edits made": self.edits_made,
            "edits lost": self.edits_lost,
            "conflicts recorded": self.conflicts_recorded,
        }
        for kind, times in sorted(self.to_first_sync_s.items()):
            ms = [round(t * 1000) for t in times]
            out[f"{kind}: loss to first sync, ms (each)"] = ms
            out[f"{kind}: loss to first sync, ms (median, max)"] = (
                round(statistics.median(ms)),
                max(ms),
            )
        return out

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def primary_client(setup: SentinelSetup) -> redis.Redis:
    """What an agent uses: the primary as the sentinels name it, found again after a failover."""
    sentinel = redis.sentinel.Sentinel([("127.0.0.1", setup.sentinel.port)], socket_timeout=1.0)
    client: redis.Redis = sentinel.master_for(
        setup.service, decode_responses=True, socket_timeout=1.0
    )
    return client


def retried(action: Any, timeout: float = FOLLOW_S) -> None:
    """An agent's write during a failover: retried until a primary takes it."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            action()
            return
        except (redis.ConnectionError, redis.TimeoutError, redis.ReadOnlyError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def agent_update(ledger: Ledger, client: redis.Redis, plan_id: str, **changes: str | None) -> None:
    """An agent's update as tinytown writes it (HDEL + HSET, no MULTI), made durable the way an
    agent that wants it to survive a failover must: WAIT, on the same connection, for the
    replicas Sentinel considers up. Retried until a primary takes it and they hold it (Redis
    replicates asynchronously: an unconfirmed write can be lost by Redis itself)."""
    pool = client.connection_pool

    def attempt() -> None:
        # A pooled connection may still reach a demoted primary: look the primary up first
        # (redis-py then drops connections to the old one), and write again if it changed.
        primary = pool.get_master_address()  # type: ignore[attr-defined]
        fields = tinytown_fields(client.hgetall(key_of(plan_id)), changes)
        replicas = len(promotable(pool))  # type: ignore[arg-type]
        pipe = client.pipeline(transaction=False)
        unset = [name for name in OPTIONAL_FIELDS if name not in fields]
        if unset:
            pipe.hdel(key_of(plan_id), *unset)
        pipe.hset(key_of(plan_id), mapping=fields)  # type: ignore[arg-type]
        if replicas:
            pipe.execute_command("WAIT", replicas, 1000)
        acknowledged = pipe.execute()[-1]
        if replicas and int(acknowledged) < replicas:
            raise redis.ConnectionError("not on every replica yet")
        if pool.get_master_address() != primary:  # type: ignore[attr-defined]
            raise redis.ConnectionError("the primary changed meanwhile")

    retried(attempt)
    for name, value in changes.items():
        ledger.edit("redis", plan_id, {"state": "status"}.get(name, name), value)


def first_sync_after(daemon: Daemon, lost_at: float, primary: str) -> float:
    """Seconds from `lost_at` (wall clock) to the end of the daemon's first sync on `primary`,
    from its JSON log: the first "connected to Redis" to that primary after `lost_at`, then
    the first sync logged after it."""

    def synced() -> float | None:
        connected = False
        for line in daemon.log().splitlines():
            event = json.loads(line)
            at = datetime.fromisoformat(event["timestamp"]).timestamp()
            if at < lost_at:
                continue
            if event["event"] == "connected to Redis":
                connected = f"primary {primary})" in event["topology"]
            elif event["event"] == "sync" and connected:
                return at - lost_at
        return None

    return wait_until(synced, FOLLOW_S, f"a sync on the new primary {primary}")


def rejoin(setup: SentinelSetup, server: TcpServer) -> None:
    """The old primary back as a replica the next failover can promote: a killed one restarts
    (empty: no persistence), a demoted one is already up; Sentinel makes it a replica of the
    new primary (once its next INFO shows otherwise: up to 10 s), which copies its data over."""
    if not server.alive():
        server.start()
    primary = setup.current_primary()

    def back() -> bool:
        return setup.replica_known(server) and replica_in_sync(primary)

    wait_until(back, FOLLOW_S, f"{server.address} back as a replica")


def measure_failovers(workdir: Path, rounds: list[str], rng: random.Random) -> FailoverFigures:
    """The scenario: a town of COUNT tasks on a Sentinel-managed primary, and per round (kill
    or handover) edits on both sides before, during and after the switch."""
    measured = FailoverFigures()
    town = make_town(workdir / "town", TOWN, plan_text(COUNT))
    path = town / "tasks.toml"
    state_dir = town / ".tt" / "ttsyncd"
    ledger = Ledger(ids={f"t{n:03d}" for n in range(COUNT)})
    with redis_sentinel() as setup:
        client = primary_client(setup)
        watch = PlanWatch(path)
        daemon: Daemon | None = None
        try:
            daemon = Daemon(town, setup.url)
            status = daemon.wait_ready()
            assert status["topology"]["primaries"] == [setup.primary.address], status
            wait_converged(daemon, path, client)
            for r, kind in enumerate(rounds):
                ids = sorted(ledger.ids)
                old = setup.current_primary()
                new = setup.replica if old is setup.primary else setup.primary
                # Before: a save and agents' updates, handed to the replica, then the switch
                # lands at a random moment of the daemon's syncs of them.
                saved = rng.sample(ids, 2)
                ledger.save(path, {i: f"round {r} before {i}" for i in saved})
                updated = rng.sample([i for i in ids if i not in saved], 2)
                for plan_id in updated:
                    state = rng.choice(["running", "completed", "failed", "assigned"])
                    agent_update(
                        ledger, client, plan_id, state=state, result=f"round {r} {plan_id}"
                    )
                time.sleep(rng.uniform(0, 0.15))
                lost_at = time.time()
                if kind == KILL:
                    old.kill()
                else:
                    setup.sentinel_client().execute_command("SENTINEL FAILOVER", setup.service)
                # During: a save with a new entry, and agents' updates that wait for a primary.
                settle_file(path)
                during = rng.sample([i for i in ids if i not in saved], 2)
                ledger.save(path, {during[0]: f"round {r} during {during[0]}"}, f"n{r:03d}")
                agent_update(ledger, client, during[1], state="completed",
                             result=f"round {r} during {during[1]}")  # fmt: skip
                wait_until(lambda: setup.primary_address() == new.address, FOLLOW_S,  # noqa: B023
                           "Sentinel to promote the replica")  # fmt: skip
                measured.rounds.append(kind)
                measured.to_first_sync_s.setdefault(kind, []).append(
                    first_sync_after(daemon, lost_at, new.address)
                )
                # After: one more update on the new primary must reach the file.
                after = rng.choice([i for i in ids if i not in (*saved, *during)])
                agent_update(ledger, client, after, result=f"round {r} after")
                wait_until(partial(same_on_both_sides, path, client, [after]), FOLLOW_S,
                           "an update on the new primary in the file")  # fmt: skip
                final = wait_converged(daemon, path, client)
                problems = ledger.check(final, state_dir)
                assert not problems, f"round {r} ({kind}): {problems}\n{log_tail(daemon)}"
                assert not watch.problems, watch.problems
                flags = new.tcp_client().config_get("notify-keyspace-events")
                assert set("Khgx") <= set(flags["notify-keyspace-events"])
                if r < len(rounds) - 1:
                    rejoin(setup, old)
            assert daemon.process.poll() is None
        finally:
            watch.stop()
            stop_daemon(daemon)
            client.close()
    return measured.count(ledger, state_dir)


def test_the_daemon_follows_sentinel_failovers_and_loses_nothing(
    tmp_path: Path,
    long_run: bool,
    figures: Counter[str],  # noqa: F811  (the fixture imported above)
    request: pytest.FixtureRequest,
) -> None:
    rounds = [HANDOVER, KILL] * (4 if long_run else 1)
    measured = measure_failovers(tmp_path, rounds, random.Random(f"{SEED}/{request.node.name}"))
    for name, value in measured.summary().items():
        figures[f"sentinel: {name}"] = value  # type: ignore[assignment]
    assert measured.edits_lost == 0, measured.lost
    assert measured.edits_made >= 10 * len(rounds)


def test_the_config_table_form_and_what_status_shows(tmp_path: Path) -> None:
    """`[redis] sentinels` + `service_name` in ttsyncd.toml, as the README shows it: one-shot
    commands and the daemon reach the primary, and status names it (never a secret)."""
    with redis_sentinel() as setup:
        town = make_town(tmp_path / "town", TOWN, plan_text(3))
        (town / "ttsyncd.toml").write_text(
            f'[redis]\nsentinels = ["127.0.0.1:{setup.sentinel.port}"]\n'
            f'service_name = "{setup.service}"\n'
        )
        pushed = run_cli(town, "push", redis_url=None)
        assert pushed.returncode == 0, pushed.stderr
        assert "created 3" in pushed.stdout
        client = primary_client(setup)
        assert len(town_records(client, TOWN)) == 3
        running = Daemon(town, setup.url)
        try:
            running.wait_ready()
            shown = run_cli(town, "status", redis_url=None).stdout
            assert (
                f"topology:      sentinel (service '{setup.service}', "
                f"primary {setup.primary.address})" in shown
            )
            assert f"redis+sentinel://{setup.sentinel.address}/{setup.service}/0" in shown
        finally:
            stop_daemon(running)
