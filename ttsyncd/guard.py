"""What a sync holds back, as states that outlive it (ttsyncd/engine.py applies them):

- the deletion guard: a sync that would delete a large share of the synced tasks from the file
  is refused (`check_file_deletions`); deletions from Redis that are too many, or made by an
  empty plan, are held back (`hold_back_deletions`) and the refusal stands (`refusal`) until
  the plan is saved again, `--force` or `resolve`;
- the writes set aside (stale, or a held task's removal) that `resolve` can still apply
  (`still_set_aside`).

Pure: settings, the base and the merge in, decisions out.
"""

from __future__ import annotations

from collections.abc import Container, Mapping
from collections.abc import Set as AbstractSet

from ttsyncd.config import Settings
from ttsyncd.errors import DeletionsRefused
from ttsyncd.merge import Conflict, Delete, MergeResult
from ttsyncd.plan import Plan
from ttsyncd.state import RefusedDeletions, SyncState, plan_digest


def live_tasks(state: SyncState) -> int:
    return sum(1 for task in state.base.values() if not task.tombstone)


def check_file_deletions(
    settings: Settings, state: SyncState, merged: MergeResult, force: bool
) -> None:
    """Refuse a sync that would remove a large share of the synced tasks from the file (Redis
    lost them), unless forced."""
    deleting = sum(1 for op in merged.file_ops if isinstance(op, Delete))
    if force or deleting <= settings.sync.max_delete_min:
        return  # (never too many: no need to count the synced tasks, O(n) in a big town)
    synced = live_tasks(state)
    if too_many(settings, deleting, synced):
        raise DeletionsRefused(
            f"refusing to delete {deleting} of {synced} synced tasks from tasks.toml "
            f"(more than max_delete_fraction={settings.sync.max_delete_fraction} and "
            f"max_delete_min={settings.sync.max_delete_min}); run with --force to apply"
        )


def too_many(settings: Settings, deleting: int, synced: int) -> bool:
    limits = settings.sync
    return deleting > limits.max_delete_min and deleting > limits.max_delete_fraction * synced


def hold_back_deletions(
    settings: Settings, plan: Plan, state: SyncState, merged: MergeResult, force: bool
) -> frozenset[str]:
    """The deletion guard, a state and not an event: the task deletions from Redis it holds
    back now (taken out of `merged`, whose base keeps those tasks). A mass deletion, or any
    deletion by an empty plan, is refused; once refused, none of those deletions happens
    while the plan's text stays the one they were refused for, whatever else changes (an
    agent touching one of them must not bring the rest under the threshold). A new save is
    judged afresh; --force (and `resolve`) lifts it."""
    deleting = {
        op.plan_id for op in merged.redis_ops if isinstance(op, Delete) and op.mode == "delete"
    }
    if force or not deleting:
        return frozenset()
    standing = state.refused is not None and state.refused.plan_digest == plan_digest(plan.text)
    if not standing and plan.entries and not too_many(settings, len(deleting), live_tasks(state)):
        return frozenset()
    merged.redis_ops = [
        op for op in merged.redis_ops if not (isinstance(op, Delete) and op.plan_id in deleting)
    ]
    for plan_id in deleting:
        merged.base[plan_id] = state.base[plan_id]
    return frozenset(deleting)


def refusal(
    settings: Settings,
    state: SyncState,
    held_back: frozenset[str],
    read: Plan,
    left: Plan,
    base: Container[str],
) -> RefusedDeletions | None:
    """The refusal that stands once a sync that read the plan `read` leaves `left` (its own
    write is no new save): what it held back, and what a standing refusal still holds (tasks
    still out of the file and in the base) though this sync did not come to delete them (a
    pull, or a scope without them)."""
    refused = state.refused
    if refused is not None and refused.plan_digest == plan_digest(read.text):
        in_file = left.by_id
        held_back |= {i for i in refused.plan_ids if i in base and i not in in_file}
    if not held_back:
        return None
    synced = live_tasks(state)
    if not left.entries:
        message = (
            f"{settings.tasks_file} has no tasks: refusing to delete {len(held_back)} task(s) "
            "from Redis; run `ttsyncd push --force` if that is what you want"
        )
    else:
        message = (
            f"refusing to delete {len(held_back)} of {synced} synced tasks from Redis (more "
            f"than max_delete_fraction={settings.sync.max_delete_fraction} and "
            f"max_delete_min={settings.sync.max_delete_min}): "
            f"{', '.join(sorted(held_back)[:20])}{' ...' if len(held_back) > 20 else ''}; "
            "save tasks.toml again to have it judged afresh, or run `ttsyncd push --force`"
        )
    return RefusedDeletions(held_back, plan_digest(left.text), message)


def still_set_aside(
    before: Mapping[str, list[Conflict]],
    found: list[Conflict],
    base: Container[str],
    resolved: AbstractSet[str],
) -> dict[str, list[Conflict]]:
    """The set-aside writes `resolve` can still apply: the latest per task and field, kept
    until resolved or the task is gone."""
    kept = {k: list(v) for k, v in before.items() if k not in resolved}
    for conflict in found:
        same = [c for c in kept.get(conflict.plan_id, []) if c.field != conflict.field]
        kept[conflict.plan_id] = [*same, conflict]
    return {k: v for k, v in kept.items() if k in base}
