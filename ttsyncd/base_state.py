"""The base a sync starts from and the base it leaves.

Which of the saved base holds for the Redis a sync reads (`markers_lost`, `without_slots`: a
Redis, or a Cluster primary, that came back without its data gets a first sync for its
tasks), and how what a sync agreed on becomes the state (`advance`, in place, and `undo` when
the save fails; `keep_what_landed` for an attempt that merges again). A state is changed only
by the sync that loaded it (under the daemon's sync lock, one at a time).
"""

from __future__ import annotations

from collections.abc import Mapping
from collections.abc import Set as AbstractSet
from dataclasses import replace
from typing import Protocol, TypeVar

from redis.crc import key_slot

from ttsyncd.codec import task_key
from ttsyncd.identity import task_uuid_for
from ttsyncd.markers import epoch_key
from ttsyncd.merge import MergeResult
from ttsyncd.state import StateStore, SyncState
from ttsyncd.store import Snapshot, TaskWrite

T = TypeVar("T")


class Agreed(Protocol):
    """What a sync decided (engine.Decision), as far as the base is concerned."""

    @property
    def merged(self) -> MergeResult: ...
    @property
    def unresolved_agents(self) -> dict[str, str]: ...
    @property
    def uuids(self) -> dict[str, str]: ...
    @property
    def state(self) -> SyncState: ...


def advance(
    state: SyncState, decided: Agreed, ids: AbstractSet[str], epoch: str, markers: dict[str, str]
) -> SyncState:
    """`state` takes, in place, what `decided` agreed on for these tasks, agreed
    with the Redis whose markers are `epoch` and `markers`. A big town's base and uuids are
    not copied (~10 ms each at 100,000 tasks). Returns what it replaced: `state` as it was
    for these ids (with its epoch, markers, refusal and set-aside), for the journal
    (`StateStore.save`) and for `undo`.

    Ownership: a state is changed only by the sync that loaded it (under the daemon's sync
    lock, one at a time); `pending`, which `status` reads from another thread, is replaced,
    never changed in place."""
    merged = decided.merged
    before = SyncState(
        base=within(state.base, ids),
        unresolved_agents=within(state.unresolved_agents, ids),
        pending=within(state.pending, ids),
        uuids=within(state.uuids, ids),
        redis_epoch=state.redis_epoch,
        set_aside=state.set_aside,
        refused=state.refused,
        redis_markers=state.redis_markers,
    )
    update(state.base, ids, within(merged.base, ids))
    update(state.unresolved_agents, ids, within(decided.unresolved_agents, ids))
    update(state.uuids, ids, within(decided.uuids, ids))
    state.pending = replaced(state.pending, ids, within(merged.pending, ids))
    state.redis_epoch, state.redis_markers = epoch, markers
    return before


def undo(state: SyncState, before: SyncState, ids: AbstractSet[str]) -> None:
    """`state` back to what it was before `advance` (ids: the ones it advanced)."""
    update(state.base, ids, before.base)
    update(state.unresolved_agents, ids, before.unresolved_agents)
    update(state.uuids, ids, before.uuids)
    state.pending = replaced(state.pending, ids, before.pending)
    state.redis_epoch, state.redis_markers = before.redis_epoch, before.redis_markers
    state.set_aside, state.refused = before.set_aside, before.refused


def save_advanced(
    state_store: StateStore,
    state: SyncState,
    ids: AbstractSet[str],
    before: SyncState,
    *,
    cached: bool,
) -> None:
    """Persist `state`, which `advance` took from `before` for these ids; `cached`: it is the
    store's own (else: a new base, saved whole). A save that fails leaves `state` as it was,
    as if this sync had not run: the next one merges from there."""
    try:
        if cached:
            state_store.save(state, ids, before)
        else:
            state_store.save(state)
    except BaseException:
        undo(state, before, ids)
        raise


class BaseAfter:
    """Which plan ids the base holds once `advance` has given the touched ids the merge's
    base: asked before the state changes (a refusal and the set-aside writes are settled
    before a failover check that must leave the state as it was)."""

    def __init__(
        self, base: Mapping[str, object], merged: Mapping[str, object], touched: AbstractSet[str]
    ) -> None:
        self.base, self.merged, self.touched = base, merged, touched

    def __contains__(self, plan_id: object) -> bool:
        return plan_id in (self.merged if plan_id in self.touched else self.base)


def keep_what_landed(
    state_store: StateStore,
    decided: Agreed,
    failed: list[TaskWrite],
    epoch: str,
    markers: dict[str, str],
) -> None:
    """An attempt that merges again (a side changed under it) keeps in the base the tasks it
    finished all the same: their Redis writes landed and the file needed nothing. Else the
    base would miss those changes, and the history the stale rule reads would too."""
    old = decided.state
    if old is not state_store.load():
        return  # another Redis than the base's: the retry starts over anyway
    failed_uuids = {w.task_uuid for w in failed}
    in_file = {op.plan_id for op in decided.merged.file_ops}
    written = {op.plan_id for op in decided.merged.redis_ops}
    done = frozenset(
        plan_id
        for plan_id in written - in_file
        if decided.uuids.get(plan_id) not in failed_uuids and plan_id in decided.merged.base
    )
    if done:
        before = advance(old, decided, done, epoch, markers)
        save_advanced(state_store, old, done, before, cached=True)


def within(values: Mapping[str, T], only: AbstractSet[str]) -> dict[str, T]:
    if len(only) < len(values):  # a daemon's sync of a few tasks in a big town
        return {k: values[k] for k in only if k in values}
    return {k: v for k, v in values.items() if k in only}


def replaced(
    values: Mapping[str, T], touched: AbstractSet[str], new: Mapping[str, T]
) -> dict[str, T]:
    """`values` with the entries of the touched ids replaced by `new`'s."""
    result = dict(values)
    for key in touched:
        result.pop(key, None)
    result.update(new)
    return result


def update(values: dict[str, T], touched: AbstractSet[str], new: Mapping[str, T]) -> None:
    """`replaced`, in place."""
    for key in touched:
        values.pop(key, None)
    values.update(new)


def markers_lost(state: SyncState, snapshot: Snapshot, town: str) -> tuple[bool, frozenset[int]]:
    """(another Redis than the base's, the slots of the Cluster primaries that came back without
    their data). A marker whose token is not the one the base was agreed with lost its keys with
    it; all of them: the whole Redis is another one (or one that restarted empty). Markers the
    base or the snapshot does not have (a slot map that changed) are not compared."""
    if state.redis_epoch is None:
        return False, frozenset()
    agreed = {epoch_key(town): state.redis_epoch, **state.redis_markers}
    now = {epoch_key(town): snapshot.epoch, **{k: m.token for k, m in snapshot.markers.items()}}
    compared = [key for key in agreed if key in now]
    differ = [key for key in compared if now[key] != agreed[key]]
    if len(differ) == len(compared):
        return bool(differ), frozenset()
    return False, frozenset().union(*(snapshot.markers[key].slots for key in differ))


def without_slots(state: SyncState, town: str, slots: frozenset[int]) -> SyncState:
    """`state` without the tasks whose hash is in these slots: a first sync for them, where a
    task on one side only is copied to the other."""

    def gone(plan_id: str) -> bool:
        uuid = state.uuids.get(plan_id) or task_uuid_for(town, plan_id)
        return key_slot(task_key(town, uuid).encode()) in slots

    def kept(items: dict[str, T]) -> dict[str, T]:
        return {plan_id: item for plan_id, item in items.items() if not gone(plan_id)}

    refused = state.refused
    if refused is not None:
        refused_ids = frozenset(i for i in refused.plan_ids if not gone(i))
        refused = replace(refused, plan_ids=refused_ids) if refused_ids else None
    return SyncState(
        base=kept(state.base),
        unresolved_agents=kept(state.unresolved_agents),
        pending=kept(state.pending),
        uuids=kept(state.uuids),
        redis_epoch=state.redis_epoch,
        set_aside=kept(state.set_aside),
        refused=refused,
        redis_markers=state.redis_markers,
    )
