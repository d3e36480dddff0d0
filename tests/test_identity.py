"""Which Redis task is which plan entry: deterministic uuids, plan tags, derived ids for untagged
tasks (longer on collision), and duplicates left by repeated `tt sync push`."""

from __future__ import annotations

import random
import tomllib
import uuid

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.helpers import TINYTOWN_FIXTURE
from ttsyncd.codec import RedisTask, decode_task, encode_tags, is_uuid, task_key
from ttsyncd.identity import (
    TTSYNCD_NAMESPACE,
    Identified,
    IdentityIndex,
    derive_task_uuid,
    derived_ids,
    identify,
    task_uuid_for,
)

FIXTURE = TINYTOWN_FIXTURE

UNTAGGED = "c3e8b1f0-5a6d-4b2c-9f7e-1a0d3c5b7e92"


def make_task(
    task_uuid: str,
    plan_id: str | None = None,
    updated_at: str = "2026-11-26T10:00:00+00:00",
    tags: tuple[str, ...] = (),
) -> RedisTask:
    """A task decoded from a hash as tinytown writes it (so it is a realistic RedisTask)."""
    all_tags = [*tags, *([f"plan:{plan_id}"] if plan_id is not None else [])]
    raw = {
        "id": task_uuid,
        "description": f"task {task_uuid[:8]}",
        "state": "pending",
        "created_at": "2026-11-26T09:00:00+00:00",
        "updated_at": updated_at,
        "tags": encode_tags(all_tags),
    }
    return decode_task(task_key("demo", task_uuid), raw)


def uuid_with(prefix_hex: str, fill: str = "0") -> str:
    """A lowercase uuid whose 32 hex digits start with `prefix_hex` (rest `fill`)."""
    digits = (prefix_hex + fill * 32)[:32]
    return str(uuid.UUID(hex=digits))


def mapping(identified: Identified) -> dict[str, str]:
    return {plan_id: task.uuid for plan_id, task in identified.by_plan_id.items()}


# --------------------------------------------------------------------------- task_uuid_for


def test_task_uuid_for_is_deterministic() -> None:
    assert task_uuid_for("demo", "auth-api") == task_uuid_for("demo", "auth-api")


def test_task_uuid_for_is_pinned() -> None:
    """Every ttsyncd, of every version, must derive the same uuid, or two pushers racing on a new
    entry create two tasks: the namespace and the name format are a contract."""
    assert task_uuid_for("demo", "auth-api") == "f9a5cb99-1d96-5e85-be0f-6331152331ab"


@pytest.mark.parametrize("plan_id", ["auth-api", "task-c3e8b1f0", "ÜNÏ code", "a b/c", ""])
def test_task_uuid_for_is_a_lowercase_hyphenated_uuid5(plan_id: str) -> None:
    value = task_uuid_for("demo", plan_id)
    assert is_uuid(value)
    assert value == value.lower()
    assert uuid.UUID(value).version == 5
    # ... so the task it names decodes.
    make_task(value, plan_id or None)


def test_task_uuid_for_differs_by_town() -> None:
    assert task_uuid_for("demo", "auth-api") != task_uuid_for("other", "auth-api")
    assert task_uuid_for("demo", "auth-api") != task_uuid_for("Demo", "auth-api")


def test_task_uuid_for_differs_by_plan_id() -> None:
    ids = ["auth-api", "auth-tests", "auth-api ", "Auth-api", "task-1", "task-2"]
    assert len({task_uuid_for("demo", p) for p in ids}) == len(ids)


@given(st.text(min_size=1, max_size=20), st.text(max_size=30), st.text(max_size=30))
def test_task_uuid_for_is_injective_on_plan_ids_in_a_town(town: str, a: str, b: str) -> None:
    assert (task_uuid_for(town, a) == task_uuid_for(town, b)) == (a == b)


# --------------------------------------------------------------------------- identify: fixture


def fixture_tasks() -> list[RedisTask]:
    return [
        decode_task(key, raw)
        for key, raw in FIXTURE["hashes"].items()
        if key.startswith("tt:demo:task:")
    ]


def test_fixture_tasks_get_the_ids_of_the_tasks_toml_equivalent() -> None:
    identified = identify(fixture_tasks())
    toml_ids = [e["id"] for e in tomllib.loads(FIXTURE["tasks_toml_equivalent"])["tasks"]]
    assert set(identified.by_plan_id) == set(toml_ids)
    assert identified.by_plan_id["auth-api"].uuid == "0d6f2b52-77a3-4f55-8c1e-2d2e8c6b9a01"
    assert identified.by_plan_id["task-c3e8b1f0"].uuid == UNTAGGED
    assert identified.untagged == frozenset({"task-c3e8b1f0"})
    assert identified.duplicates == {}


def test_identify_empty() -> None:
    identified = identify([])
    assert identified.by_plan_id == {}
    assert identified.duplicates == {}
    assert identified.untagged == frozenset()


def test_plan_tag_gives_the_plan_id() -> None:
    task = make_task(uuid_with("aa"), "auth-api", tags=("auth", "api"))
    identified = identify([task])
    assert identified.by_plan_id == {"auth-api": task}
    assert identified.untagged == frozenset()


def test_plan_id_that_looks_derived_is_still_tagged_not_untagged() -> None:
    task = make_task(uuid_with("aa"), "task-deadbeef")
    identified = identify([task])
    assert identified.by_plan_id == {"task-deadbeef": task}
    assert identified.untagged == frozenset()


def test_untagged_task_gets_task_and_its_first_8_hex() -> None:
    task = make_task(UNTAGGED, tags=("flaky",))
    identified = identify([task])
    assert identified.by_plan_id == {"task-c3e8b1f0": task}
    assert identified.untagged == frozenset({"task-c3e8b1f0"})


def test_identify_accepts_any_iterable() -> None:
    tasks = fixture_tasks()
    assert mapping(identify(iter(tasks))) == mapping(identify(tasks))


# --------------------------------------------------------------------------- collisions


def test_untagged_sharing_8_hex_get_longer_ids() -> None:
    a = make_task(uuid_with("abcdef120"))
    b = make_task(uuid_with("abcdef123"))
    c = make_task(uuid_with("12345678"))
    identified = identify([a, b, c])
    assert mapping(identified) == {
        "task-abcdef120": a.uuid,
        "task-abcdef123": b.uuid,
        "task-12345678": c.uuid,
    }
    assert identified.untagged == frozenset(mapping(identified))


def test_collision_across_the_first_hyphen_uses_the_digits_without_hyphens() -> None:
    a = make_task("abcdef12-3456-4000-8000-000000000000")
    b = make_task("abcdef12-3457-4000-8000-000000000000")
    assert mapping(identify([a, b])) == {"task-abcdef123456": a.uuid, "task-abcdef123457": b.uuid}


def test_three_way_collision_each_id_is_long_enough_to_be_unique() -> None:
    uuids = [uuid_with("abcdef1200"), uuid_with("abcdef1201"), uuid_with("abcdef13")]
    result = derived_ids(uuids, taken=set())
    assert result == {
        uuids[0]: "task-abcdef1200",
        uuids[1]: "task-abcdef1201",
        uuids[2]: "task-abcdef13",
    }


def test_derived_id_equal_to_a_tagged_plan_id_gets_longer() -> None:
    tagged = make_task(uuid_with("99"), "task-c3e8b1f0")
    untagged = make_task(UNTAGGED)
    identified = identify([untagged, tagged])
    assert identified.by_plan_id["task-c3e8b1f0"] is tagged
    assert identified.by_plan_id["task-c3e8b1f05"] is untagged
    assert identified.untagged == frozenset({"task-c3e8b1f05"})


def test_derived_id_skips_several_taken_lengths() -> None:
    taken = {"task-c3e8b1f0", "task-c3e8b1f05", "task-c3e8b1f05a"}
    assert derived_ids([UNTAGGED], taken) == {UNTAGGED: "task-c3e8b1f05a6"}


def test_collision_and_taken_together() -> None:
    a = uuid_with("abcdef120")
    b = uuid_with("abcdef123")
    result = derived_ids([a, b], taken={"task-abcdef120"})
    assert result == {a: "task-abcdef1200", b: "task-abcdef123"}


# --------------------------------------------------------------------------- duplicates


def test_duplicates_keep_the_most_recently_updated() -> None:
    old = make_task(uuid_with("01"), "auth-api", "2026-11-26T09:00:00+00:00")
    newest = make_task(uuid_with("02"), "auth-api", "2026-11-26T11:00:00.5+00:00")
    middle = make_task(uuid_with("03"), "auth-api", "2026-11-26T10:00:00+00:00")
    other = make_task(uuid_with("04"), "auth-tests")
    for order in ([old, newest, middle, other], [other, middle, newest, old]):
        identified = identify(order)
        assert identified.by_plan_id["auth-api"] is newest
        assert identified.by_plan_id["auth-tests"] is other
        assert {t.uuid for t in identified.duplicates["auth-api"]} == {old.uuid, middle.uuid}
        assert set(identified.duplicates) == {"auth-api"}


def test_duplicates_compare_chrono_fractions_as_times() -> None:
    # chrono writes 0/3/6/9 digits: a whole second is older than a moment within it.
    whole = make_task(uuid_with("ff"), "p", "2026-11-26T10:40:12+00:00")
    later = make_task(uuid_with("01"), "p", "2026-11-26T10:40:12.000000001+00:00")
    later_ms = make_task(uuid_with("02"), "p", "2026-11-26T10:40:12.5+00:00")
    assert identify([whole, later]).by_plan_id["p"] is later
    assert identify([later_ms, later, whole]).by_plan_id["p"] is later_ms


@pytest.mark.parametrize(
    ("older", "newer"),
    [
        # 09:30Z written with a +02:00 offset vs 10:00Z.
        ("2026-11-26T11:30:00+02:00", "2026-11-26T10:00:00+00:00"),
        # 'Z' sorts after '.', so a whole second with Z beats a later fraction.
        ("2026-11-25T18:00:00Z", "2026-11-25T18:00:00.5+00:00"),
        # More digits are not a later time: .123456789 < .123457.
        ("2026-11-26T10:40:12.123456789+00:00", "2026-11-26T10:40:12.123457+00:00"),
        # Nanoseconds count, beyond what a Python datetime holds.
        ("2026-11-26T10:40:12.123456788+00:00", "2026-11-26T10:40:12.123456789+00:00"),
        # A space separator and a negative offset: 16:00Z vs 15:30Z.
        ("2026-11-26 10:00:00-05:30", "2026-11-26T16:00:00Z"),
    ],
)
def test_duplicates_compare_updated_at_as_moments(older: str, newer: str) -> None:
    old = make_task(uuid_with("ff"), "p", older)
    new = make_task(uuid_with("01"), "p", newer)
    identified = identify([old, new])
    assert identified.by_plan_id["p"] is new
    assert identified.duplicates["p"] == [old]


def test_duplicates_with_equal_updated_at_choose_the_same_task_in_any_order() -> None:
    tasks = [make_task(uuid_with(f"{i:02x}"), "p") for i in range(5)]
    chosen = {
        identify(random.Random(seed).sample(tasks, len(tasks))).by_plan_id["p"].uuid
        for seed in range(20)
    }
    assert len(chosen) == 1


def test_duplicates_are_not_untagged_and_do_not_steal_derived_ids() -> None:
    a = make_task(uuid_with("01"), "p", "2026-11-26T09:00:00+00:00")
    b = make_task(uuid_with("02"), "p", "2026-11-26T10:00:00+00:00")
    loose = make_task(UNTAGGED)
    identified = identify([a, b, loose])
    assert mapping(identified) == {"p": b.uuid, "task-c3e8b1f0": UNTAGGED}
    assert identified.untagged == frozenset({"task-c3e8b1f0"})
    assert identified.duplicates == {"p": [a]}


# --------------------------------------------------------------------------- property

# Hex digits drawn mostly from a tiny alphabet so 8-digit (and longer) prefixes collide often.
colliding_hex = st.tuples(
    st.text("ab", min_size=12, max_size=12), st.text("0123456789abcdef", min_size=20, max_size=20)
).map(lambda parts: str(uuid.UUID(hex=parts[0] + parts[1])))


@st.composite
def towns(draw: st.DrawFn) -> tuple[list[RedisTask], set[str]]:
    """Untagged tasks with colliding prefixes, plus tagged tasks whose plan ids may be exactly
    what an untagged task would otherwise derive."""
    uuids = draw(st.lists(colliding_hex, min_size=1, max_size=12, unique=True))
    n_untagged = draw(st.integers(1, len(uuids)))
    untagged, spare = uuids[:n_untagged], uuids[n_untagged:]
    tempting = ["task-" + u.replace("-", "")[:length] for u in untagged for length in (8, 9, 10)]
    tasks = [make_task(u) for u in untagged]
    plan_ids: set[str] = set()
    for u in spare:
        plan_id = draw(st.sampled_from(tempting) | st.text("xyz", min_size=1, max_size=3))
        plan_ids.add(plan_id)
        tasks.append(make_task(u, plan_id))
    return tasks, plan_ids


@settings(max_examples=300)
@given(town=towns(), seed=st.integers(0, 2**32))
def test_derived_ids_are_unique_and_stable(
    town: tuple[list[RedisTask], set[str]], seed: int
) -> None:
    tasks, tagged_plan_ids = town
    identified = identify(tasks)
    untagged = {t.uuid for t in tasks if t.plan_id is None}

    # Every tagged plan id keeps its own name; every untagged task gets one derived id.
    assert tagged_plan_ids <= set(identified.by_plan_id)
    derived = {p: t.uuid for p, t in identified.by_plan_id.items() if p in identified.untagged}
    assert set(derived.values()) == untagged
    assert len(derived) == len(untagged)  # unique
    assert not set(derived) & tagged_plan_ids
    assert identified.untagged == frozenset(derived)

    for plan_id, task_uuid in derived.items():
        digits = task_uuid.replace("-", "")
        prefix = plan_id.removeprefix("task-")
        assert plan_id.startswith("task-")
        assert 8 <= len(prefix) <= 32
        assert digits.startswith(prefix)
        # The id names that task alone: no other untagged task's digits start with it.
        others = (u.replace("-", "") for u in untagged if u != task_uuid)
        assert not any(o.startswith(prefix) for o in others)

    # Every task is accounted for exactly once: synced, or reported as a duplicate.
    seen = [t.uuid for t in identified.by_plan_id.values()]
    seen += [t.uuid for extra in identified.duplicates.values() for t in extra]
    assert sorted(seen) == sorted(t.uuid for t in tasks)

    # Stable: the same tasks in any order give the same mapping.
    shuffled = random.Random(seed).sample(tasks, len(tasks))
    again = identify(shuffled)
    assert mapping(again) == mapping(identified)
    assert again.untagged == identified.untagged


@given(uuids=st.lists(colliding_hex, min_size=1, max_size=10, unique=True))
def test_derived_id_of_a_task_with_a_unique_8_hex_prefix_is_just_8(uuids: list[str]) -> None:
    result = derived_ids(uuids, taken=set())
    for u, derived in result.items():
        if sum(o[:8] == u[:8] for o in uuids) == 1:
            assert derived == "task-" + u[:8]


@given(uuids=st.lists(colliding_hex, min_size=1, max_size=10, unique=True), fresh=st.uuids())
def test_an_unrelated_new_task_does_not_rename_existing_ones(
    uuids: list[str], fresh: uuid.UUID
) -> None:
    newcomer = str(fresh)
    if any(newcomer[:8] == u[:8] for u in uuids):
        return  # shares a prefix: renaming is expected then
    before = derived_ids(uuids, taken=set())
    after = derived_ids([*uuids, newcomer], taken=set())
    assert {u: after[u] for u in uuids} == before
    assert after[newcomer] == "task-" + newcomer[:8]


# --------------------------------------------------------------------------- the daemon's index

# A small pool, so tasks collide on tags, derived prefixes (first 8 hex digits shared) and keys.
POOL_UUIDS = [uuid_with(p, f) for p in ("abcdef12", "abcdef13", "0badcafe") for f in "01"]
POOL_TAGS = [None, "a", "b", "task-abcdef12", "task-abcdef120"]
TIMES = ["2026-11-26T10:00:00+00:00", "2026-11-26T11:00:00+00:00"]


def same_identity(left: Identified, right: Identified) -> bool:
    return (
        dict(left.by_plan_id) == dict(right.by_plan_id)
        and dict(left.duplicates) == dict(right.duplicates)
        and set(left.untagged) == set(right.untagged)
        and dict(left.plan_id_of_uuid) == dict(right.plan_id_of_uuid)
    )


steps = st.lists(
    st.tuples(
        st.lists(
            st.tuples(
                st.sampled_from(POOL_UUIDS), st.sampled_from(POOL_TAGS), st.sampled_from(TIMES)
            ),
            max_size=4,
        ),
        st.lists(st.sampled_from(POOL_UUIDS), max_size=2),
    ),
    min_size=1,
    max_size=8,
)


@settings(max_examples=500, deadline=None)
@given(steps)
def test_the_index_kept_current_equals_identifying_afresh(
    history: list[tuple[list[tuple[str, str | None, str]], list[str]]],
) -> None:
    """Whatever tasks come, change their tag or go, the index kept current task by task says
    what identify() says of the tasks there are now, and names every plan id that moved."""
    index = IdentityIndex()
    present: dict[str, RedisTask] = {}
    for put, removed in history:
        before = identify(present.values())
        tasks = [make_task(u, tag, updated_at=when) for u, tag, when in put]
        gone = [task_key("demo", u) for u in removed]
        index.update(tasks, gone)
        for task in tasks:
            present[task.key] = task
        for key in gone:
            present.pop(key, None)
        after = identify(present.values())
        assert same_identity(index.identified, after)
        moved = {
            plan_id
            for plan_id in set(before.by_plan_id) | set(after.by_plan_id)
            if before.by_plan_id.get(plan_id) != after.by_plan_id.get(plan_id)
        }
        assert moved <= index.take_changed()


@given(st.text(max_size=20), st.text(max_size=40))
def test_the_derived_uuid_is_uuid5_of_town_and_plan_id(town: str, plan_id: str) -> None:
    """task_uuid_for computes uuid5 by hand for speed; every ttsyncd must derive the same."""
    expected = uuid.uuid5(TTSYNCD_NAMESPACE, f"{town}/{plan_id}")
    assert derive_task_uuid(town, plan_id) == str(expected)
    assert task_uuid_for(town, plan_id) == task_uuid_for(town, plan_id) == str(expected)
