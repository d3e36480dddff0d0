"""The pure three-way merge, exhaustively: every combination of unchanged / changed / deleted /
added per side and field, under every policy and direction, plus random whole towns."""

from __future__ import annotations

import itertools
from collections.abc import Mapping

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ttsyncd.base import BaseTask
from ttsyncd.merge import Delete, MergeResult, Op, Options, Upsert, merge
from ttsyncd.model import FIELDS, Record, Value

POLICIES = ("owner", "file", "redis", "manual")
FILE_OWNED = {"description", "tags", "parent", "agent"}

BASE = Record(
    description="base", status="pending", agent="a", tags=("t",), parent=None, result=None
)
# Two different non-base values for every field.
ALTERNATIVES: dict[str, tuple[Value, Value]] = {
    "description": ("one", "two"),
    "agent": ("b", None),
    "status": ("running", "completed"),
    "tags": (("x",), ()),
    "parent": ("p1", "p2"),
    "result": ("r1", "r2"),
}


def apply(view: Mapping[str, Record], ops: list[Op], *, redis_side: bool) -> dict[str, Record]:
    out = dict(view)
    for op in ops:
        if isinstance(op, Upsert):
            out[op.plan_id] = op.record
        elif op.mode == "delete":
            del out[op.plan_id]
        elif op.mode == "cancel":
            assert redis_side
            out[op.plan_id] = out[op.plan_id].with_fields({"status": "cancelled"})
    return out


def side_states(field: str) -> list[tuple[str, Record | None]]:
    one, two = ALTERNATIVES[field]
    return [
        ("unchanged", BASE),
        ("changed-1", BASE.with_fields({field: one})),
        ("changed-2", BASE.with_fields({field: two})),
        ("deleted", None),
    ]


def base_of(record: Record) -> dict[str, BaseTask]:
    return {"t1": BaseTask(record)}


CASES = [
    (field, file_case, redis_case, policy)
    for field in FIELDS
    for file_case, redis_case in itertools.product(side_states(field), repeat=2)
    for policy in POLICIES
]


@pytest.mark.parametrize(("field", "file_case", "redis_case", "policy"), CASES)
def test_every_single_field_combination(
    field: str,
    file_case: tuple[str, Record | None],
    redis_case: tuple[str, Record | None],
    policy: str,
) -> None:
    (file_name, file_rec), (redis_name, redis_rec) = file_case, redis_case
    file_view = {"t1": file_rec} if file_rec else {}
    redis_view = {"t1": redis_rec} if redis_rec else {}
    result = merge(base_of(BASE), file_view, redis_view, Options(policy=policy))
    new_file = apply(file_view, result.file_ops, redis_side=False)
    new_redis = apply(redis_view, result.redis_ops, redis_side=True)
    both_changed = file_name.startswith("changed") and redis_name.startswith("changed")
    conflict = both_changed and file_rec != redis_rec
    if conflict and policy == "manual":
        assert not result.file_ops and not result.redis_ops
        assert [(c.field, c.file, c.redis) for c in result.pending["t1"]] == [
            (field, file_rec.get(field), redis_rec.get(field))
        ]
        assert result.base["t1"] == base_of(BASE)["t1"]  # unsynced until resolved
        return
    # Two-way sync converges.
    assert new_file == new_redis
    if conflict:
        assert file_rec is not None and redis_rec is not None
        (recorded,) = result.settled
        assert (recorded.field, recorded.file, recorded.redis) == (
            field, file_rec.get(field), redis_rec.get(field),
        )  # fmt: skip
        file_wins = policy == "file" or (policy == "owner" and field in FILE_OWNED)
        assert new_file["t1"] == (file_rec if file_wins else redis_rec)
        assert recorded.winner == ("file" if file_wins else "redis")
    elif file_rec is None and redis_rec is None:
        assert new_file == {}
    elif file_rec is None:
        # Deleted in the file: deleted in Redis unless Redis modified it (modification wins).
        assert new_file == ({} if redis_name == "unchanged" else {"t1": redis_rec})
    elif redis_rec is None:
        assert new_file == ({} if file_name == "unchanged" else {"t1": file_rec})
    else:
        changed = file_rec if file_name != "unchanged" else redis_rec
        assert new_file["t1"] == changed
        assert not result.settled
    assert_idempotent(result, new_file, new_redis, policy)


def assert_idempotent(
    result: MergeResult, file_view: dict[str, Record], redis_view: dict[str, Record], policy: str
) -> None:
    again = merge(result.base, file_view, redis_view, Options(policy=policy))
    assert again.file_ops == [] and again.redis_ops == [] and again.settled == []
    assert again.base == result.base


@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize("field", FIELDS)
def test_added_on_both_sides_without_base(policy: str, field: str) -> None:
    one, two = ALTERNATIVES[field]
    file_rec, redis_rec = BASE.with_fields({field: one}), BASE.with_fields({field: two})
    result = merge({}, {"t1": file_rec}, {"t1": redis_rec}, Options(policy=policy))
    if policy == "manual":
        assert result.pending["t1"][0].base is None
        assert result.new_pending == result.pending["t1"]
        return
    new_file = apply({"t1": file_rec}, result.file_ops, redis_side=False)
    new_redis = apply({"t1": redis_rec}, result.redis_ops, redis_side=True)
    assert new_file == new_redis
    assert [(c.field, c.base) for c in result.settled] == [(field, None)]


def test_added_on_one_side_is_copied() -> None:
    record = BASE
    pushed = merge({}, {"n": record}, {}, Options())
    assert pushed.redis_ops == [Upsert("n", record, created=True)]
    pulled = merge({}, {}, {"n": record}, Options())
    assert pulled.file_ops == [Upsert("n", record, created=True)]


@pytest.mark.parametrize("mode", ["delete", "cancel", "keep"])
def test_deletion_modes_and_tombstones(mode: str) -> None:
    result = merge(base_of(BASE), {}, {"t1": BASE}, Options(deletions=mode))
    assert result.redis_ops == [Delete("t1", mode)]
    if mode == "delete":
        assert "t1" not in result.base
        return
    assert result.base["t1"].tombstone
    # The task stays in Redis (cancelled or kept) but never comes back into the file.
    still_there = BASE.with_fields({"status": "cancelled"}) if mode == "cancel" else BASE
    later = merge(result.base, {}, {"t1": still_there}, Options(deletions=mode))
    assert later.file_ops == [] and later.redis_ops == [] and later.base["t1"].tombstone
    # Gone from Redis too: the tombstone is forgotten.
    assert merge(result.base, {}, {}, Options()).base == {}
    # Re-added to the file: synced again.
    readded = merge(result.base, {"t1": BASE}, {"t1": still_there}, Options(deletions=mode))
    assert not readded.base["t1"].tombstone


def test_push_only_and_pull_only_wait_for_the_other_direction() -> None:
    file_rec = BASE.with_fields({"description": "new words"})
    redis_rec = BASE.with_fields({"status": "running"})
    pushed = merge(base_of(BASE), {"t1": file_rec}, {"t1": redis_rec}, Options(pull=False))
    assert pushed.file_ops == []
    both = BASE.with_fields({"description": "new words", "status": "running"})
    assert pushed.redis_ops == [Upsert("t1", both, created=False)]
    # The base took the pushed field only: the status change is still Redis's to bring.
    assert pushed.base["t1"].fields["description"] == "new words"
    assert pushed.base["t1"].fields["status"] == "pending"
    redis_after = apply({"t1": redis_rec}, pushed.redis_ops, redis_side=True)
    pulled = merge(pushed.base, {"t1": file_rec}, redis_after, Options(push=False))
    assert pulled.redis_ops == []
    assert apply({"t1": file_rec}, pulled.file_ops, redis_side=False) == redis_after


def test_conflict_settled_for_the_other_direction_is_recorded_once() -> None:
    file_rec = BASE.with_fields({"status": "failed"})
    redis_rec = BASE.with_fields({"status": "running"})
    pushed = merge(base_of(BASE), {"t1": file_rec}, {"t1": redis_rec}, Options(pull=False))
    assert pushed.settled == [] and pushed.redis_ops == []  # Redis owns status: waits for pull
    again = merge(pushed.base, {"t1": file_rec}, {"t1": redis_rec}, Options(pull=False))
    assert again.settled == []
    pulled = merge(again.base, {"t1": file_rec}, {"t1": redis_rec}, Options(push=False))
    assert [(c.field, c.file, c.redis, c.winner) for c in pulled.settled] == [
        ("status", "failed", "running", "redis")
    ]


def test_manual_conflicts_are_new_only_once() -> None:
    file_rec, redis_rec = BASE.with_fields({"result": "f"}), BASE.with_fields({"result": "r"})
    first = merge(base_of(BASE), {"t1": file_rec}, {"t1": redis_rec}, Options(policy="manual"))
    assert len(first.new_pending) == 1
    second = merge(
        first.base, {"t1": file_rec}, {"t1": redis_rec}, Options(policy="manual"), first.pending
    )
    assert second.new_pending == [] and second.pending == first.pending


@pytest.mark.parametrize("direction", ["push", "pull"])
def test_force_makes_target_equal_source(direction: str) -> None:
    file_view = {"a": BASE.with_fields({"description": "file"}), "only-file": BASE}
    redis_view = {"a": BASE.with_fields({"status": "running"}), "only-redis": BASE}
    options = Options(push=direction == "push", pull=direction == "pull", force=True)
    result = merge(base_of(BASE), file_view, redis_view, options)
    if direction == "push":
        assert apply(redis_view, result.redis_ops, redis_side=True) == file_view
        assert result.file_ops == []
    else:
        assert apply(file_view, result.file_ops, redis_side=False) == redis_view
        assert result.redis_ops == []


# --- random towns -------------------------------------------------------------------------

SMALL = st.sampled_from(["u", "v", "w"])
records = st.builds(
    Record,
    description=SMALL,
    status=st.sampled_from(["pending", "running", "completed"]),
    agent=st.none() | SMALL,
    tags=st.tuples() | st.tuples(SMALL),
    parent=st.none() | SMALL,
    result=st.none() | SMALL,
)
views = st.dictionaries(st.sampled_from(["t1", "t2", "t3", "t4", "t5"]), records, max_size=5)
modes = st.sampled_from(["delete", "cancel", "keep"])


def mutate(draw: st.DrawFn, base: dict[str, Record]) -> dict[str, Record]:
    side = {}
    for plan_id, record in base.items():
        action = draw(st.sampled_from(["keep", "keep", "delete", "edit"]))
        if action == "keep":
            side[plan_id] = record
        elif action == "edit":
            side[plan_id] = draw(records)
    side.update(draw(st.dictionaries(st.sampled_from(["n1", "n2"]), records, max_size=2)))
    return side


@st.composite
def towns(draw: st.DrawFn) -> tuple[dict[str, Record], dict[str, Record], dict[str, Record]]:
    base = draw(views)
    return base, mutate(draw, base), mutate(draw, base)


@settings(max_examples=400, deadline=None)
@given(town=towns(), policy=st.sampled_from(["owner", "file", "redis"]), mode=modes)
def test_random_towns_converge_and_lose_nothing(
    town: tuple[dict[str, Record], dict[str, Record], dict[str, Record]], policy: str, mode: str
) -> None:
    base, file_view, redis_view = town
    base_tasks = {k: BaseTask(v) for k, v in base.items()}
    options = Options(policy=policy, deletions=mode)
    result = merge(base_tasks, file_view, redis_view, options)
    new_file = apply(file_view, result.file_ops, redis_side=False)
    new_redis = apply(redis_view, result.redis_ops, redis_side=True)
    tombstoned = {k for k, v in result.base.items() if v.tombstone}
    assert new_file == {k: v for k, v in new_redis.items() if k not in tombstoned}
    # Every field value either side changed survives or is recorded as a conflict.
    recorded = {(c.plan_id, c.field, c.file) for c in result.settled} | {
        (c.plan_id, c.field, c.redis) for c in result.settled
    }
    for side in (file_view, redis_view):
        for plan_id, record in side.items():
            if plan_id not in new_file:
                continue  # deleted by the other side: only unmodified tasks are, checked below
            for field in FIELDS:
                value = record.get(field)
                was = base[plan_id].get(field) if plan_id in base else None
                if value != was:
                    assert (
                        new_file[plan_id].get(field) == value or (plan_id, field, value) in recorded
                    )
    # Only a task unmodified on the surviving side may be deleted.
    for plan_id in set(file_view) | set(redis_view):
        if plan_id in new_file or plan_id in tombstoned:
            continue
        survivor = file_view.get(plan_id) or redis_view.get(plan_id)
        assert plan_id in base and survivor == base[plan_id], plan_id
    assert_idempotent(result, new_file, new_redis, policy)


@settings(max_examples=200, deadline=None)
@given(town=towns(), policy=st.sampled_from(["owner", "file", "redis"]))
def test_push_then_pull_converges(
    town: tuple[dict[str, Record], dict[str, Record], dict[str, Record]], policy: str
) -> None:
    base, file_view, redis_view = town
    base_tasks = {k: BaseTask(v) for k, v in base.items()}
    pushed = merge(base_tasks, file_view, redis_view, Options(policy=policy, pull=False))
    assert pushed.file_ops == []
    redis_view = apply(redis_view, pushed.redis_ops, redis_side=True)
    pulled = merge(pushed.base, file_view, redis_view, Options(policy=policy, push=False))
    assert pulled.redis_ops == []
    # Whatever the pull brings, the push saw waiting for it (so a daemon never forgets it).
    assert {op.plan_id for op in pulled.file_ops} <= pushed.owed_pull
    assert not pulled.owed_push  # the push took every file-side change
    file_view = apply(file_view, pulled.file_ops, redis_side=False)
    assert file_view == redis_view
    assert_idempotent(pulled, file_view, redis_view, policy)
