"""The daemon merges only what may have changed since its last sync (a Scope). Whatever the
edits on either side, that must decide exactly what merging every task decides."""

from __future__ import annotations

import copy
from collections.abc import Set as AbstractSet
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ttsyncd.base_state import advance, replaced, undo, within
from ttsyncd.codec import decode_task, encode_tags, task_key
from ttsyncd.config import LogSettings, Settings, SyncSettings
from ttsyncd.endpoints import Endpoint
from ttsyncd.engine import Decision, SyncReport, decide
from ttsyncd.identity import IdentityIndex
from ttsyncd.merge import Options
from ttsyncd.plan import Plan, parse_plan, render_plan
from ttsyncd.scope import OwedTasks, Scope, merge_limit, touched_ids
from ttsyncd.state import SyncState
from ttsyncd.store import Snapshot, hash_after

TOWN = "scoped"
PATH = Path("tasks.toml")
IDS = [f"t{n}" for n in range(8)]


def town_settings(policy: str, deletions: str) -> Settings:
    return Settings(
        town_dir=Path("."), town_name=TOWN, tasks_file=PATH, config_path=None,
        state_dir=Path("."), endpoint=Endpoint(source="test"),
        sync=SyncSettings(policy=policy, deletions=deletions), log=LogSettings(),
    )  # fmt: skip


def plan_text(entries: dict[str, tuple[str, str | None]]) -> str:
    """entries: id -> (description, parent)."""
    blocks = []
    for plan_id, (description, parent) in entries.items():
        block = f'[[tasks]]\nid = "{plan_id}"\ndescription = "{description}"\n'
        blocks.append(block + (f'parent = "{parent}"\n' if parent else ""))
    return "\n".join(blocks)


def apply(decision: Decision, plan: Plan, index: IdentityIndex, state: SyncState) -> SyncState:
    """What the sync would leave: the file rendered, the writes in the index, the new base."""
    index.update(
        [decode_task(w.key, a) for w in decision.writes if (a := hash_after(w)) is not None],
        [w.key for w in decision.writes if hash_after(w) is None],
    )
    touched, old = decision.touched, decision.state
    return SyncState(
        base=replaced(old.base, touched, decision.merged.base),
        unresolved_agents=replaced(old.unresolved_agents, touched, decision.unresolved_agents),
        pending=replaced(old.pending, touched, decision.merged.pending),
        uuids=replaced(old.uuids, touched, decision.uuids),
        redis_epoch="e",
    )


def advanced(
    old: SyncState, decided: Decision, ids: AbstractSet[str], epoch: str, markers: dict[str, str]
) -> SyncState:
    """What `base_state.advance` must leave, built as a new state: `old` with what `decided`
    agreed on for these tasks (the rest carries over), agreed with the Redis whose markers
    are `epoch` and `markers`."""
    merged = decided.merged
    return SyncState(
        base=replaced(old.base, ids, within(merged.base, ids)),
        unresolved_agents=replaced(
            old.unresolved_agents, ids, within(decided.unresolved_agents, ids)
        ),
        pending=replaced(old.pending, ids, within(merged.pending, ids)),
        uuids=replaced(old.uuids, ids, within(decided.uuids, ids)),
        redis_epoch=epoch,
        set_aside=old.set_aside,
        refused=old.refused,
        redis_markers=markers,
    )


def run(settings_: Settings, plan: Plan, index: IdentityIndex, state: SyncState,
        may_differ: frozenset[str] | None) -> tuple[Decision, SyncReport]:  # fmt: skip
    report = SyncReport()
    snapshot = Snapshot(list(index.tasks.values()), {}, {}, "e", index.identified)
    decision = decide(settings_, plan, snapshot, state, Options(
        policy=settings_.sync.policy, deletions=settings_.sync.deletions,
    ), report, None, may_differ)  # fmt: skip
    return decision, report


def summary(decision: Decision, plan: Plan, state: SyncState) -> tuple[object, ...]:
    edits = render_plan(plan, decision.edits) if decision.edits else plan.text
    writes = sorted(
        (w.key, repr(w.write and {k: v for k, v in w.write.set_fields.items() if "_at" not in k}))
        for w in decision.writes
    )  # (times are the clock's)
    return edits, writes, state


redis_edit = st.tuples(
    st.sampled_from(["describe", "status", "delete", "reparent", "create"]),
    st.sampled_from(IDS),
    st.sampled_from(IDS),
)
file_edit = st.tuples(
    st.sampled_from(["describe", "delete", "add", "reparent", "unparent"]),
    st.sampled_from(IDS),
    st.sampled_from(IDS),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.dictionaries(st.sampled_from(IDS), st.sampled_from(["a", "b"]), min_size=1),
    st.lists(file_edit, max_size=4),
    st.lists(redis_edit, max_size=4),
    st.sampled_from(["owner", "file", "redis", "manual"]),
    st.sampled_from(["delete", "cancel", "keep"]),
)
def test_a_scoped_sync_decides_what_a_full_sync_decides(
    initial: dict[str, str],
    file_edits: list[tuple[str, str, str]],
    redis_edits: list[tuple[str, str, str]],
    policy: str,
    deletions: str,
) -> None:
    town = town_settings(policy, deletions)
    entries: dict[str, tuple[str, str | None]] = {
        plan_id: (description, None) for plan_id, description in initial.items()
    }
    first = sorted(entries)[0]
    entries = {k: (d, first if k != first else None) for k, (d, _) in entries.items()}
    plan = parse_plan(PATH, plan_text(entries))
    index = IdentityIndex()
    decision, _ = run(town, plan, index, SyncState(), None)
    state = apply(decision, plan, index, SyncState())
    index.take_changed()
    synced_plan = plan
    edit_redis(index, redis_edits)
    entries = edit_file(entries, file_edits)
    plan = parse_plan(PATH, plan_text(entries), previous=synced_plan)

    scope = Scope(frozenset(index.take_changed()), synced_plan)
    full, _ = run(town, plan, index, state, None)
    scoped, _ = run(town, plan, index, state, scope.with_file_changes(plan))
    assert summary(scoped, plan, apply(scoped, plan, IdentityIndex(), state)) == summary(
        full, plan, apply(full, plan, IdentityIndex(), state)
    )
    for decision in (full, scoped):  # the sync's in-place update of the state: the same
        changed = copy.deepcopy(state)
        before = advance(changed, decision, decision.touched, "e2", {})
        assert changed == advanced(state, decision, decision.touched, "e2", {})
        undo(changed, before, decision.touched)
        assert changed == state


def edit_redis(index: IdentityIndex, redis_edits: list[tuple[str, str, str]]) -> None:
    """Tinytown-like edits of the hashes."""
    for kind, plan_id, other in redis_edits:
        task = index.identified.by_plan_id.get(plan_id)
        if kind == "create":
            key = task_key(TOWN, f"00000000-0000-4000-8000-00000000000{IDS.index(plan_id)}")
            raw = {"id": key.rsplit(":", 1)[1], "description": "agent-made", "state": "pending",
                   "created_at": "2026-11-26T10:00:00Z", "updated_at": "2026-11-26T10:00:00Z",
                   "tags": encode_tags([])}  # fmt: skip
            index.update([decode_task(key, raw)], [])
            continue
        if task is None:
            continue
        raw = dict(task.raw)
        if kind == "delete":
            index.update([], [task.key])
            continue
        if kind == "describe":
            raw["description"] = f"redis {other}"
        elif kind == "status":
            raw["state"] = "completed"
        elif kind == "reparent":
            target = index.identified.by_plan_id.get(other)
            if target is None:
                continue
            raw["parent_id"] = target.uuid
        index.update([decode_task(task.key, raw)], [])


def edit_file(
    entries: dict[str, tuple[str, str | None]], file_edits: list[tuple[str, str, str]]
) -> dict[str, tuple[str, str | None]]:
    """Edits of the plan's entries (description, parent) that keep the plan valid."""
    entries = dict(entries)
    for kind, plan_id, other in file_edits:
        if kind == "add" and plan_id not in entries:
            entries[plan_id] = ("added", None)
        elif plan_id not in entries:
            continue
        elif kind == "describe":
            entries[plan_id] = (f"file {other}", entries[plan_id][1])
        elif kind == "delete" and not any(p == plan_id for _, p in entries.values()):
            del entries[plan_id]
        elif kind == "unparent":
            entries[plan_id] = (entries[plan_id][0], None)
        elif kind == "reparent" and other in entries and other != plan_id:
            candidate = {**entries, plan_id: (entries[plan_id][0], other)}
            node: str | None = other
            seen = {plan_id}
            while node is not None and node not in seen:
                seen.add(node)
                node = candidate[node][1]
            if node is None:
                entries = candidate
    return entries


def test_the_widening_rules() -> None:
    """scope.py's rules 2, 3, 4 and 8 on one small plan: a parent leaving the file takes its
    child along; a standing refusal is judged again; `resolve` names its tasks; no scope is
    a full sync."""
    plan = parse_plan(PATH, plan_text({"t0": ("a", None), "t1": ("b", "t0"), "t2": ("c", None)}))
    in_redis = {"t0": 1, "t1": 1, "t2": 1}
    gone = {"t1": 1, "t2": 1}  # t0 deleted in Redis: its child's parent link changes
    assert merge_limit(frozenset({"t0"}), frozenset(), None, plan, gone) == {"t0", "t1"}
    assert merge_limit(frozenset({"t0"}), frozenset(), None, plan, in_redis) == {"t0"}
    assert merge_limit(frozenset({"t0"}), frozenset({"t2"}), None, plan, in_redis) == {"t0", "t2"}
    assert merge_limit(frozenset({"t0"}), frozenset(), frozenset({"t2"}), plan, gone) == {"t2"}
    assert merge_limit(None, frozenset({"t2"}), None, plan, in_redis) is None
    assert touched_ids(None, frozenset({"t0"}), {"t5"}, {"t0"}, {"t1"}, {"t1"}) == {"t0"}
    assert touched_ids(None, None, {"t5"}, {"t0"}, {"t1"}, frozenset()) == {"t0", "t1", "t5"}


def test_owed_tasks_are_full_until_a_sync_and_when_not_known() -> None:
    owed = OwedTasks()
    assert owed.scope() is None  # at start
    plan = parse_plan(PATH, plan_text({"t0": ("a", None)}))
    owed.synced(plan, frozenset({"t1"}))  # a pull left t1 owed to a push
    owed.note(frozenset({"t2"}))
    scope = owed.scope()
    assert scope is not None and scope.plan_ids == {"t1", "t2"} and scope.plan is plan
    owed.note(None)  # the mirror cannot say which
    assert owed.scope() is None
