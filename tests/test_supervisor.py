"""The supervisor on its own, no Redis: restart or fail per policy, give up on a part that keeps
failing, replace a part without counting a failure, and time progress with a given clock."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from redis.backoff import NoBackoff
from structlog.testing import capture_logs

from ttsyncd.supervisor import PartFailed, Policy, Supervisor


class Boom(RuntimeError):
    pass


def fails(times: int, then: asyncio.Event | None = None) -> tuple[Any, list[int]]:
    """A part that raises `times` times, then sets `then` and waits to be cancelled."""
    runs: list[int] = []

    async def work() -> None:
        runs.append(len(runs))
        if len(runs) <= times:
            raise Boom(f"run {len(runs)}")
        if then is not None:
            then.set()
        await asyncio.Event().wait()

    return work, runs


def test_a_restart_part_is_restarted_with_its_failures_logged_and_counted() -> None:
    async def scenario() -> Supervisor:
        up = asyncio.Event()
        work, runs = fails(2, then=up)
        with capture_logs() as logs:
            async with Supervisor(backoff=NoBackoff()) as parts:
                parts.start("worker", work, Policy.RESTART)
                await up.wait()
                parts.cancel_all()
        assert runs == [0, 1, 2]
        restarted = [e for e in logs if e["event"] == "part failed, restarting"]
        assert [(e["part"], e["failures"]) for e in restarted] == [("worker", 1), ("worker", 2)]
        assert all(isinstance(e["exc_info"], Boom) for e in restarted)  # logged with traceback
        return parts

    assert asyncio.run(scenario()).failures == {"worker": 2}


def test_a_fatal_part_takes_the_group_down_and_cancels_the_others() -> None:
    cancelled = []

    async def bystander() -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.append(True)
            raise

    async def scenario() -> None:
        work, _runs = fails(1)
        async with Supervisor(backoff=NoBackoff()) as parts:
            parts.start("bystander", bystander, Policy.RESTART)
            parts.start("worker", work, Policy.FATAL)
            await asyncio.Event().wait()  # the failure cancels this too

    with pytest.raises(ExceptionGroup) as raised:
        asyncio.run(scenario())
    failed = raised.value.exceptions
    assert len(failed) == 1 and isinstance(failed[0], PartFailed)
    assert failed[0].part == "worker" and isinstance(failed[0].error, Boom)
    assert cancelled == [True]


def test_a_part_that_keeps_failing_is_given_up_on() -> None:
    async def scenario() -> None:
        work, _runs = fails(100)
        async with Supervisor(backoff=NoBackoff(), max_restarts=3) as parts:
            parts.start("worker", work, Policy.RESTART)
            await asyncio.Event().wait()

    with pytest.raises(ExceptionGroup) as raised, capture_logs() as logs:
        asyncio.run(scenario())
    assert isinstance(raised.value.exceptions[0], PartFailed)
    assert [e["event"] for e in logs if e.get("part") == "worker"] == [
        *["part failed, restarting"] * 3,
        "part failed, stopping the daemon",
    ]


def test_a_run_that_lasted_resets_the_failures_in_a_row() -> None:
    now = [0.0]

    async def scenario() -> Supervisor:
        runs: list[int] = []
        done = asyncio.Event()

        async def work() -> None:
            runs.append(1)
            if len(runs) > 6:
                done.set()
                await asyncio.Event().wait()
            now[0] += 100.0  # every run lasts longer than healthy_after
            raise Boom("after a long run")

        async with Supervisor(backoff=NoBackoff(), max_restarts=2, healthy_after=60.0,
                              clock=lambda: now[0]) as parts:  # fmt: skip
            parts.start("worker", work, Policy.RESTART)
            await done.wait()
            parts.cancel_all()
        return parts

    assert asyncio.run(scenario()).failures == {"worker": 6}  # never given up on


def test_replacing_a_part_cancels_the_old_one_without_a_failure() -> None:
    async def scenario() -> tuple[Supervisor, list[str]]:
        seen: list[str] = []
        second = asyncio.Event()

        def named(name: str) -> Any:
            async def work() -> None:
                seen.append(f"{name} started")
                if name == "second":
                    second.set()
                try:
                    await asyncio.Event().wait()
                except asyncio.CancelledError:
                    seen.append(f"{name} cancelled")
                    raise

            return work

        async with Supervisor(backoff=NoBackoff()) as parts:
            parts.start("watch", named("first"), Policy.RESTART)
            await asyncio.sleep(0)
            parts.start("watch", named("second"), Policy.RESTART)
            await second.wait()
            parts.cancel_all()
        parts.start("watch", named("third"), Policy.RESTART)  # closed: ignored
        return parts, seen

    parts, seen = asyncio.run(scenario())
    assert seen == ["first started", "first cancelled", "second started", "second cancelled"]
    assert parts.failures == {"watch": 0}


def test_a_part_that_returns_is_done() -> None:
    async def scenario() -> list[int]:
        runs: list[int] = []

        async def work() -> None:
            runs.append(1)

        async with Supervisor(backoff=NoBackoff()) as parts:
            parts.start("once", work, Policy.FATAL)
        return runs

    assert asyncio.run(scenario()) == [1]


def test_silence_is_measured_from_the_last_progress() -> None:
    now = [10.0]
    parts = Supervisor(clock=lambda: now[0])
    assert parts.silent_for("syncer") == float("inf")  # never reported
    parts.progress("syncer")
    now[0] = 25.0
    assert parts.silent_for("syncer") == 15.0
    parts.progress("syncer")
    assert parts.silent_for("syncer") == 0.0
