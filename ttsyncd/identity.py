"""Which Redis task is which plan entry: its `plan:<id>` tag, else an id derived from its uuid;
a new entry's uuid is uuid5(town, plan id) (README, "File format and field mapping")."""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Iterable, Mapping
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from typing import Final

from ttsyncd.codec import RedisTask, parse_time

# Fixed namespace so every ttsyncd, on every machine, derives the same uuid for an entry: two
# pushers racing on one new entry write one task.
TTSYNCD_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "https://github.com/tinytown/ttsyncd")
DERIVED_PREFIX = "task-"


def task_uuid_for(town: str, plan_id: str) -> str:
    """derive_task_uuid, memoised: a sync asks for it several times per task. Per town, a dict
    of plan id -> uuid (an entry costs ~30 bytes; functools.lru_cache's key tuple and link
    cost ~140 per task, and a daemon keeps the whole town's), started over when it is full."""
    known = _DERIVED.get(town)
    if known is None:
        known = _DERIVED.setdefault(town, {})
    task_uuid = known.get(plan_id)
    if task_uuid is None:
        task_uuid = derive_task_uuid(town, plan_id)
        if len(known) >= DERIVED_LIMIT:
            known.clear()
        known[plan_id] = task_uuid
    return task_uuid


DERIVED_LIMIT: Final = 1 << 17  # uuids memoised per town
_DERIVED: dict[str, dict[str, str]] = {}


def derive_task_uuid(town: str, plan_id: str) -> str:
    """str(uuid.uuid5(TTSYNCD_NAMESPACE, f"{town}/{plan_id}")), ~5x faster (a cold push
    derives one per task): the same SHA-1, version and variant bits set on the bytes, with no
    UUID object in between. tests/test_identity.py holds it to uuid5."""
    digest = bytearray(hashlib.sha1(_NAMESPACE_BYTES + f"{town}/{plan_id}".encode()).digest()[:16])
    digest[6] = (digest[6] & 0x0F) | 0x50  # version 5
    digest[8] = (digest[8] & 0x3F) | 0x80  # RFC 4122 variant
    hex_ = digest.hex()
    return f"{hex_[:8]}-{hex_[8:12]}-{hex_[12:16]}-{hex_[16:20]}-{hex_[20:]}"


_NAMESPACE_BYTES = TTSYNCD_NAMESPACE.bytes


@dataclass(frozen=True)
class Identified:
    by_plan_id: Mapping[str, RedisTask]  # the one task each plan id maps to
    duplicates: Mapping[str, list[RedisTask]]  # plan id -> the extra tasks sharing it (not synced)
    untagged: AbstractSet[str]  # plan ids derived from a uuid: the task has no plan tag yet
    plan_id_of_uuid: Mapping[str, str]  # the inverse of by_plan_id


def identify(tasks: Iterable[RedisTask]) -> Identified:
    """Give every task a plan id: its `plan:` tag, else `task-<first 8 hex>` (longer on collision).

    Several tasks sharing a plan id (what repeated `tt sync push` leaves) are not merged: the most
    recently updated one is synced, the others are reported as duplicates.
    """
    return IdentityIndex(tasks).identified


class IdentityIndex:
    """`identify`, kept current a few tasks at a time: the daemon's mirror changes a handful of
    tasks per sync, and identifying 10,000 of them again costs ~50 ms. Pure: no I/O."""

    def __init__(self, tasks: Iterable[RedisTask] = ()) -> None:
        self.tasks: dict[str, RedisTask] = {}  # key -> task
        # plan tag -> the task carrying it, or a tuple of the tasks when several do (rarely:
        # a tuple of one per tag would cost ~70 bytes per task in a big town's mirror)
        self.sharing: dict[str, RedisTask | tuple[RedisTask, ...]] = {}
        self.untagged_tasks: dict[str, RedisTask] = {}  # key -> task
        self.by_plan_id: dict[str, RedisTask] = {}
        self.duplicates: dict[str, list[RedisTask]] = {}
        self.plan_id_of_uuid: dict[str, str] = {}
        self.derived: dict[str, str] = {}  # uuid -> derived plan id
        self.changed: set[str] = set()  # plan ids whose task changed, until take_changed()
        self.update(tasks, ())

    @property
    def identified(self) -> Identified:
        """A view, not a copy: valid until the next update."""
        return Identified(
            self.by_plan_id, self.duplicates, frozenset(self.derived.values()), self.plan_id_of_uuid
        )

    def take_changed(self) -> set[str]:
        changed, self.changed = self.changed, set()
        return changed

    def update(
        self, put: Iterable[RedisTask], removed: Iterable[str], *, note: bool = True
    ) -> None:
        """Put these tasks (by key) and drop the tasks at these keys. `note=False`: do not
        count the plan ids they move among the changed ones."""
        noted = self.changed
        if not note:
            self.changed = set()
        try:
            self._update(put, removed)
        finally:
            self.changed = noted if not note else self.changed

    def _update(self, put: Iterable[RedisTask], removed: Iterable[str]) -> None:
        tags: set[str] = set()
        rederive = False
        for task in put:
            rederive |= self._detach(task.key, tags, replacing=True)
            self.tasks[task.key] = task
            if task.plan_id is None:
                self.untagged_tasks[task.key] = task
                rederive = True
            else:
                group = self.group(task.plan_id)
                self.sharing[task.plan_id] = (*group, task) if group else task
                tags.add(task.plan_id)
        for key in removed:
            rederive |= self._detach(key, tags)
        for plan_id in tags:
            self._settle(plan_id)
        # Derived ids avoid the tags in use: a tag of that form coming or going may move them.
        if rederive or (self.untagged_tasks and any(t.startswith(DERIVED_PREFIX) for t in tags)):
            self._rederive()

    def _detach(self, key: str, tags: set[str], *, replacing: bool = False) -> bool:
        """Forget the task at `key` (`replacing`: but keep its key in `tasks`, which the
        caller sets anew); True when it was an untagged one.

        Keys that stay are overwritten, never deleted and added again: a dict fills with
        the dummies deletions leave and then grows to twice its size (at 10,000 tasks, ~0.2
        MB more for each of these dicts after 1,000 updates). A tag left with no task keeps
        an empty group until _settle removes it."""
        task = self.tasks.get(key) if replacing else self.tasks.pop(key, None)
        if task is None:
            return False
        if task.plan_id is None:
            del self.untagged_tasks[key]
            return True
        group = tuple(t for t in self.group(task.plan_id) if t.key != key)
        self.sharing[task.plan_id] = group[0] if len(group) == 1 else group
        tags.add(task.plan_id)
        return False

    def group(self, plan_id: str) -> tuple[RedisTask, ...]:
        """The tasks carrying this plan tag."""
        tasks = self.sharing.get(plan_id, ())
        return tasks if isinstance(tasks, tuple) else (tasks,)

    def _settle(self, plan_id: str) -> None:
        """Choose the task this tag maps to again: the most recently updated one."""
        self.changed.add(plan_id)
        before = self.by_plan_id.get(plan_id)
        self.duplicates.pop(plan_id, None)
        group = self.group(plan_id)
        newest_first = sorted(group, key=lambda t: (parse_time(t.updated_at), t.uuid), reverse=True)
        newest = newest_first[0] if newest_first else None
        old = before.uuid if before is not None else None
        kept = newest is not None and newest.uuid == old  # (then overwritten below, in place)
        if old is not None and not kept and self.plan_id_of_uuid.get(old) == plan_id:
            del self.plan_id_of_uuid[old]
        if newest is None:
            self.sharing.pop(plan_id, None)
            self.by_plan_id.pop(plan_id, None)
            return
        self.by_plan_id[plan_id] = newest
        self.plan_id_of_uuid[newest.uuid] = plan_id
        if len(newest_first) > 1:
            self.duplicates[plan_id] = newest_first[1:]

    def _rederive(self) -> None:
        uuids = [task.uuid for task in self.untagged_tasks.values()]
        derived = derived_ids(uuids, taken=set(self.sharing))
        for task_uuid, plan_id in self.derived.items():
            if derived.get(task_uuid) == plan_id:
                continue
            self.changed.add(plan_id)
            # Unless a tag took the id over since (perhaps this very task's new tag).
            held = self.by_plan_id.get(plan_id)
            tagged = held is not None and held.plan_id is not None
            if held is not None and not tagged and held.uuid == task_uuid:
                del self.by_plan_id[plan_id]
            mine = tagged and held is not None and held.uuid == task_uuid
            if self.plan_id_of_uuid.get(task_uuid) == plan_id and not mine:
                del self.plan_id_of_uuid[task_uuid]
        for task in self.untagged_tasks.values():
            plan_id = derived[task.uuid]
            if self.by_plan_id.get(plan_id) is not task:
                self.changed.add(plan_id)
            self.by_plan_id[plan_id] = task
            self.plan_id_of_uuid[task.uuid] = plan_id
        self.derived = derived


def derived_ids(uuids: list[str], taken: set[str]) -> dict[str, str]:
    """`task-` + the shortest prefix (at least 8 hex digits) that no other id here shares.

    Sorted, a uuid can only share a longer prefix with its neighbours: O(n log n), not O(n²).
    """
    ordered = sorted((u.replace("-", ""), u) for u in uuids)
    result: dict[str, str] = {}
    for i, (digits, task_uuid) in enumerate(ordered):
        neighbours = [ordered[j][0] for j in (i - 1, i + 1) if 0 <= j < len(ordered)]
        length = max([8, *(common_prefix(digits, n) + 1 for n in neighbours)])
        while length < len(digits) and DERIVED_PREFIX + digits[:length] in taken:
            length += 1
        result[task_uuid] = DERIVED_PREFIX + digits[:length]
    return result


def common_prefix(a: str, b: str) -> int:
    return next(
        (i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b))
    )
