"""Which Redis task is which plan entry (DESIGN §2)."""

from __future__ import annotations

import functools
import uuid
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass

from ttsyncd.codec import RedisTask, parse_time

# Fixed namespace so every ttsyncd, on every machine, derives the same uuid for an entry: two
# pushers racing on one new entry write one task.
TTSYNCD_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "https://github.com/tinytown/ttsyncd")
DERIVED_PREFIX = "task-"


@functools.lru_cache(maxsize=1 << 16)  # asked for several times per task in one sync
def task_uuid_for(town: str, plan_id: str) -> str:
    return str(uuid.uuid5(TTSYNCD_NAMESPACE, f"{town}/{plan_id}"))


@dataclass(frozen=True)
class Identified:
    by_plan_id: dict[str, RedisTask]  # the one task each plan id maps to
    duplicates: dict[str, list[RedisTask]]  # plan id -> the extra tasks sharing it (not synced)
    untagged: frozenset[str]  # plan ids derived from a uuid: the task has no plan tag yet


def identify(tasks: Iterable[RedisTask]) -> Identified:
    """Give every task a plan id: its `plan:` tag, else `task-<first 8 hex>` (longer on collision).

    Several tasks sharing a plan id (what repeated `tt sync push` leaves) are not merged: the most
    recently updated one is synced, the others are reported as duplicates.
    """
    tagged: dict[str, list[RedisTask]] = defaultdict(list)
    untagged: list[RedisTask] = []
    for task in tasks:
        if task.plan_id is None:
            untagged.append(task)
        else:
            tagged[task.plan_id].append(task)
    by_plan_id: dict[str, RedisTask] = {}
    duplicates: dict[str, list[RedisTask]] = {}
    for plan_id, sharing in tagged.items():
        newest_first = sorted(
            sharing, key=lambda t: (parse_time(t.updated_at), t.uuid), reverse=True
        )
        by_plan_id[plan_id] = newest_first[0]
        if len(newest_first) > 1:
            duplicates[plan_id] = newest_first[1:]
    derived = derived_ids([t.uuid for t in untagged], taken=set(by_plan_id))
    for task in untagged:
        by_plan_id[derived[task.uuid]] = task
    return Identified(by_plan_id, duplicates, frozenset(derived.values()))


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
