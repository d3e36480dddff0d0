"""The daemon's scheduler alone: a fake clock, no Redis, no asyncio.

Times are whole numbers (think milliseconds), so that deadlines compare exactly."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

from hypothesis import given, settings
from hypothesis import strategies as st

from ttsyncd.schedule import RETRY_S, Batch, Owed, Schedule, Timing

TIMING = Timing(file_quiet=100, file_longest=1000, redis_quiet=50, redis_longest=500,
                verify_interval=60_000)  # fmt: skip


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def schedule_at(clock: Clock, *, started: bool = True) -> Schedule:
    """A schedule whose first (full) sync is done, unless `started` is False."""
    schedule = Schedule(TIMING, clock)
    if started:
        schedule.owed_by(schedule.take(), redis_changed=True)
        schedule.synced()
    return schedule


@dataclass
class Sync:
    at: float
    batch: Batch
    owed: Owed
    failed: bool = False


@dataclass
class Run:
    syncs: list[Sync] = field(default_factory=list)
    taken_after: dict[int, int] = field(default_factory=dict)  # event -> first sync after it


def simulate(
    events: list[tuple[float, str]], fail_retryable: frozenset[int] = frozenset()
) -> tuple[Run, Clock]:
    """The syncer's loop on a fake clock: feed each event at its time (`file`, or a key name),
    and whenever a sync is due, take it, run it (instantly) and report the outcome. Syncs
    whose number is in `fail_retryable` fail as an unreachable Redis does."""
    clock = Clock()
    schedule = schedule_at(clock)
    run = Run()
    pending = sorted(enumerate(events), key=lambda e: e[1][0])
    while True:
        wait = schedule.seconds_until_due()
        next_event = pending[0][1][0] if pending else None
        if wait is not None and (next_event is None or clock.now + wait <= next_event):
            clock.now += wait
            batch = schedule.take()
            owed = schedule.owed_by(batch, redis_changed=bool(batch.keys or batch.reread))
            if not (owed.push or owed.pull):
                continue  # nothing to do (not a sync)
            sync = Sync(clock.now, batch, owed, failed=len(run.syncs) in fail_retryable)
            run.syncs.append(sync)
            if sync.failed:
                schedule.failed(batch, retry=True)
            else:
                schedule.synced()
        elif pending:
            number, (at, kind) = pending.pop(0)
            clock.now = max(clock.now, at)
            run.taken_after[number] = len(run.syncs)
            if kind == "file":
                schedule.file_changed()
            else:
                schedule.keys_changed({kind})
        else:
            return run, clock


def takes(sync: Sync, kind: str) -> bool:
    return sync.batch.file if kind == "file" else kind in sync.batch.keys


times = st.integers(min_value=0, max_value=5000).map(float)
file_events = st.lists(st.tuples(times, st.just("file")), max_size=30)
key_events = st.lists(st.tuples(times, st.sampled_from(["k1", "k2", "k3"])), max_size=30)


@settings(max_examples=300, deadline=None)
@given(file_events)
def test_never_two_file_syncs_inside_one_quiet_period(events: list[tuple[float, str]]) -> None:
    run, _ = simulate(events)
    at = [s.at for s in run.syncs]
    assert all(b - a >= TIMING.file_quiet for a, b in itertools.pairwise(at)), at


@settings(max_examples=300, deadline=None)
@given(key_events)
def test_never_two_redis_syncs_inside_one_quiet_period(events: list[tuple[float, str]]) -> None:
    run, _ = simulate(events)
    at = [s.at for s in run.syncs]
    assert all(b - a >= TIMING.redis_quiet for a, b in itertools.pairwise(at)), at


@settings(max_examples=300, deadline=None)
@given(file_events, key_events)
def test_every_event_is_synced_within_the_longest_wait(
    files: list[tuple[float, str]], keys: list[tuple[float, str]]
) -> None:
    events = files + keys
    run, _ = simulate(events)
    for number, (at, kind) in enumerate(events):
        later = run.syncs[run.taken_after[number] :]
        first = next((s for s in later if takes(s, kind)), None)
        assert first is not None, (at, kind)
        longest = TIMING.file_longest if kind == "file" else TIMING.redis_longest
        assert first.at <= at + longest, (at, kind, first.at)
        assert first.owed.push if kind == "file" else first.owed.pull


@settings(max_examples=200, deadline=None)
@given(file_events, key_events, st.frozensets(st.integers(0, 10), max_size=4))
def test_a_sync_that_cannot_reach_redis_is_retried(
    files: list[tuple[float, str]], keys: list[tuple[float, str]], failing: frozenset[int]
) -> None:
    events = files + keys
    run, _ = simulate(events, failing)
    for n, sync in enumerate(run.syncs):
        if not sync.failed:
            continue
        retry = run.syncs[n + 1]  # there is always one
        assert retry.at <= sync.at + RETRY_S
        assert retry.batch.full and retry.batch.reread
        assert sync.batch.keys <= retry.batch.keys
        assert retry.batch.file or not sync.batch.file
        assert retry.owed.push and retry.owed.pull
    assert not run.syncs[-1].failed if run.syncs else True
    for number, (_, kind) in enumerate(events):  # nothing is lost
        later = run.syncs[run.taken_after[number] :]
        assert any(takes(s, kind) or s.batch.full for s in later if not s.failed)


def test_the_first_sync_is_full_and_due_at_once() -> None:
    clock = Clock()
    schedule = schedule_at(clock, started=False)
    assert schedule.seconds_until_due() == 0
    batch = schedule.take()
    assert batch.full and batch.reread
    assert schedule.owed_by(batch, redis_changed=False) == Owed(push=True, pull=True)
    schedule.synced()
    assert schedule.settled() and schedule.seconds_until_due() is None


def test_a_burst_waits_for_quiet_then_syncs_once() -> None:
    clock = Clock()
    schedule = schedule_at(clock)
    for t in (0, 60, 120):
        clock.now = t
        schedule.file_changed()
    assert schedule.seconds_until_due() == 100  # 220, quiet since 120
    clock.now = 220
    batch = schedule.take()
    assert batch.file and not batch.keys
    assert schedule.owed_by(batch, redis_changed=False) == Owed(push=True)
    schedule.synced()
    assert schedule.seconds_until_due() is None


def test_events_that_never_pause_sync_at_the_longest_wait() -> None:
    clock = Clock()
    schedule = schedule_at(clock)
    for t in range(0, 1000, 50):
        clock.now = t
        schedule.file_changed()
        assert schedule.seconds_until_due() == min(t + 100, 1000) - t


def test_a_side_still_settling_waits() -> None:
    """A Redis change due now does not take a file change still settling (no half-saved
    file is pushed)."""
    clock = Clock()
    schedule = schedule_at(clock)
    schedule.keys_changed({"k"})
    clock.now = 30
    schedule.file_changed()
    clock.now = 50
    assert schedule.seconds_until_due() == 0
    batch = schedule.take()
    assert batch.keys == {"k"} and not batch.file
    assert schedule.owed_by(batch, redis_changed=True) == Owed(pull=True)
    schedule.synced()
    assert schedule.file and schedule.seconds_until_due() == 80


def test_an_echo_owes_nothing() -> None:
    """Keys whose fetch finds nothing new (our own write, an agent's heartbeat): no sync."""
    clock = Clock()
    schedule = schedule_at(clock)
    schedule.keys_changed({"k"})
    clock.now = 50
    batch = schedule.take()
    assert schedule.owed_by(batch, redis_changed=False) == Owed()
    assert schedule.settled()


def test_a_failure_that_will_not_pass_keeps_the_directions_owed_until_the_next_event() -> None:
    """A broken save: no retry loop; the next event's sync does what the failed one owed."""
    clock = Clock()
    schedule = schedule_at(clock)
    schedule.file_changed()
    clock.now = 100
    batch = schedule.take()
    assert schedule.owed_by(batch, redis_changed=False) == Owed(push=True)
    schedule.failed(batch, retry=False)
    assert schedule.seconds_until_due() is None and not schedule.settled()
    schedule.keys_changed({"k"})
    clock.now = 150
    later = schedule.take()
    assert schedule.owed_by(later, redis_changed=True) == Owed(push=True, pull=True)


def test_a_retry_waits_and_takes_everything_again() -> None:
    clock = Clock()
    schedule = schedule_at(clock)
    schedule.keys_changed({"k"})
    clock.now = 50
    batch = schedule.take()
    schedule.failed(batch, retry=True)
    schedule.file_changed()  # arrives meanwhile: a full sync takes it, settled or not
    assert schedule.seconds_until_due() == RETRY_S
    clock.now += RETRY_S
    retry = schedule.take()
    assert retry == Batch(keys=frozenset({"k"}), file=True, reread=True, full=True)


def test_what_a_sync_left_for_the_other_direction_is_owed() -> None:
    clock = Clock()
    schedule = schedule_at(clock)
    schedule.synced(owed_pull=True)
    assert schedule.seconds_until_due() == 0
    assert schedule.take().pull
    schedule.synced(owed_push=True)  # a save the watcher has not reported: it settles first
    assert schedule.seconds_until_due() == TIMING.file_quiet


def test_verify_is_due_every_interval_and_finds_work() -> None:
    clock = Clock()
    schedule = schedule_at(clock)
    assert schedule.verify_in() == 60_000
    clock.now = 60_000
    assert schedule.verify_in() == 0
    schedule.verify_started()
    assert schedule.verify_in() == 60_000
    schedule.verify_found(file_differed=False, redis_differed=True)
    assert schedule.seconds_until_due() == 0
    batch = schedule.take()
    assert batch.full and batch.pull


def test_a_reconnect_rereads_and_syncs_in_full_a_poll_only_rereads() -> None:
    clock = Clock()
    schedule = schedule_at(clock)
    schedule.reread()
    batch = schedule.take()
    assert batch.reread and not batch.full
    assert schedule.owed_by(batch, redis_changed=False) == Owed()
    schedule.reconnected()
    batch = schedule.take()
    assert batch.reread and batch.full


def test_new_timing_keeps_what_is_settling() -> None:
    clock = Clock()
    schedule = schedule_at(clock)
    schedule.file_changed()
    schedule.retime(Timing(file_quiet=300, file_longest=3000))
    assert schedule.file and schedule.seconds_until_due() == 300


def test_the_first_event_of_a_change_is_kept_until_the_sync_that_applies_it() -> None:
    """The metrics' event-to-applied latency: from each side's first event of a burst."""
    clock = Clock()
    schedule = schedule_at(clock)
    for t in (10, 40, 70):
        clock.now = t
        schedule.file_changed(t)
    schedule.keys_changed({"k"}, at=30)
    clock.now = 170  # the file has been quiet 100 since 70
    batch = schedule.take()
    assert (batch.file_since, batch.keys_since) == (10, 30)
    owed = schedule.owed_by(batch, redis_changed=True)
    assert owed.waited(200) == {"file": 190, "redis": 170}
    schedule.synced()
    clock.now = 300
    batch = schedule.take(all_owed=True)
    assert schedule.owed_by(batch, redis_changed=False).waited(300) == {}  # nothing new


def test_an_echo_adds_no_latency_and_a_retry_keeps_the_first_event() -> None:
    clock = Clock()
    schedule = schedule_at(clock)
    schedule.keys_changed({"k"}, at=5)
    clock.now = 100
    echo = schedule.take()
    assert schedule.owed_by(echo, redis_changed=False) == Owed()  # the echo of our own write
    assert schedule.owed.waited(100) == {}

    schedule.file_changed(120)
    clock.now = 300
    batch = schedule.take()
    schedule.failed(batch, retry=True)  # Redis out of reach: taken again later, in full
    clock.now += RETRY_S + 1000
    again = schedule.take()
    assert again.file and again.file_since == 120
    assert schedule.owed_by(again, redis_changed=False).waited(clock.now) == {
        "file": clock.now - 120
    }


def test_a_failed_sync_names_the_directions_it_was_to_take() -> None:
    clock = Clock()
    schedule = schedule_at(clock)
    schedule.file_changed(0)
    clock.now = 200
    assert schedule.intended(schedule.take()) == Owed(push=True)
    schedule.keys_changed({"k"})
    clock.now = 300
    assert schedule.intended(schedule.take()) == Owed(pull=True)
