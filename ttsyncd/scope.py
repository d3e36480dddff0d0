"""What may have changed: the scope of a daemon's sync, and the rules that widen it. Pure.

A *full* sync merges every plan id in the base, the file and Redis. The daemon's syncs are
*scoped*: one edited task in a town of 10,000 is one task merged, not 10,000. A scoped sync
merges the ids it *touches* and carries every other id's base over unchanged. It is correct
only if it decides exactly what a full sync would (tests/test_scope.py checks that property on
random edits of both sides); the invariants below are what make it so, and the code in this
module (and the two views that call it) relies on each of them as numbered.

Invariants
----------

1. **Every change is owed.** Between two completed syncs, every plan id whose file entry or
   Redis task changed is in the scope of the next: the Redis side's from the mirror
   (`TownMirror.take_changes`, which sees every hash fetched), the file side's from the plan
   (`Plan.edited_since`, else an entry-by-entry identity compare against the plan the last
   sync left), and the ids a sync saw and left for the other direction (a push leaves the
   Redis side's changes owed to a pull). `OwedTasks` keeps the first and the last;
   `Scope.with_file_changes` adds the second.

2. **Not known is full.** Where a source cannot say what changed, the sync is full (scope
   None), never guessed: at start and after a reload of the configuration (no plan to
   compare with), a full batch (a reconnect, an anti-entropy pass: `schedule.Owed.full`), a
   mirror that cannot say which tasks changed, a change of `[meta] default_agent` (it is
   every entry without an agent), and another Redis than the base's or one emptied (the base
   is dropped: `engine.decide`).

3. **A refusal is judged on every sync.** The plan ids of a standing refused deletion are
   in every scope (the guard is a state, not an event: `guard.hold_back_deletions`).

4. **A task leaving a side takes its children.** When an id in the scope is gone from the
   file or from Redis, its children's parent link changes with it: every file entry whose
   parent it is joins the scope.

5. **A cycle is taken whole.** Redis does not stop `parent_id` links from going round; the
   Redis view cuts each cycle at its smallest id, which depends on the whole cycle. So a
   cycle through any id in the scope joins it whole (`with_parent_cycles`, from
   `views.redis_view`).

6. **An entry with no id is always merged.** It gets its id in this sync, so it is new
   whatever the scope (`views.file_view`).

7. **What is touched is what is saved.** The ids touched are the scope after rules 3-6 and
   everything either view returned; a task whose hash cannot be read is never touched (left
   alone on both sides until it can be). The new base replaces exactly the touched ids
   (`base_state.advanced`), so an id outside the scope keeps its base: sound by rule 1.

8. **`resolve` names its tasks.** A sync limited to some ids (`only`) touches those and no
   other, whatever the scope.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from collections.abc import Set as AbstractSet
from dataclasses import dataclass

from ttsyncd.plan import Plan, parent_cycles


@dataclass(frozen=True)
class Scope:
    """What may have changed since a daemon's last sync: the plan ids its Redis mirror saw
    change (and those that sync left owed to the other direction), and the plan it left.
    Only these, and what the file changed since that plan, need merging (rule 1)."""

    plan_ids: frozenset[str]
    plan: Plan

    def with_file_changes(self, plan: Plan) -> frozenset[str] | None:
        """The plan ids to merge against `plan`, the plan read now; None: all of them."""
        if plan.default_agent != self.plan.default_agent:
            return None  # every entry without an agent changed (rule 2)
        edited = plan.edited_since(self.plan)
        if edited is None:  # compare every entry (an entry unchanged is the same object)
            before, now = self.plan.by_id, plan.by_id
            changed = {
                plan_id for plan_id, entry in now.items() if before.get(plan_id) is not entry
            }
            edited = frozenset(changed | (before.keys() - now.keys()))
        return self.plan_ids | edited


class OwedTasks:
    """The tasks a daemon owes a sync: what may have changed since its last completed sync
    (rule 1), or everything when that is not known (rule 2). The schedule says when to
    sync and which directions are owed; this says which tasks."""

    def __init__(self) -> None:
        self.plan_ids: set[str] = set()  # Redis-side changes, and what a sync left owed
        self.full = True  # at start, after a reload: anything may have changed
        self.plan: Plan | None = None  # the plan the last sync left

    def note(self, plan_ids: frozenset[str] | None, *, full: bool = False) -> None:
        """Redis-side changes (None: not known which); `full`: the next sync is full."""
        if plan_ids is None or full:
            self.full = True
        else:
            self.plan_ids |= plan_ids

    def scope(self) -> Scope | None:
        """The next sync's scope; None: a full sync."""
        if self.full or self.plan is None:
            return None
        return Scope(frozenset(self.plan_ids), self.plan)

    def synced(self, plan: Plan | None, owed: AbstractSet[str]) -> None:
        """A sync completed, leaving `plan` and these ids owed to a direction."""
        self.plan_ids = set(owed)
        self.full = False
        self.plan = plan


def merge_limit(
    may_differ: frozenset[str] | None,
    refused: frozenset[str],
    only: frozenset[str] | None,
    plan: Plan,
    in_redis: Mapping[str, object],
) -> frozenset[str] | None:
    """The plan ids a sync starts from, before the views add cycles and new ids; None: all.
    `may_differ`: the scope with the file's changes (None: full); `refused`: the ids of a
    standing refusal; `in_redis`: the town's tasks by plan id."""
    if only is not None:
        return only  # rule 8
    if may_differ is None:
        return None  # rule 2
    may_differ = may_differ | refused  # rule 3
    leaving = {i for i in may_differ if i not in plan.by_id or i not in in_redis}
    entries = plan.entries if leaving else ()
    children = {e.plan_id for e in entries if e.plan_id is not None and e.record.parent in leaving}
    return may_differ | children  # rule 4


def with_parent_cycles(
    plan_ids: Iterable[str], parent_of: Callable[[str], str | None]
) -> list[str]:
    """`plan_ids` (in order), then the members of every parent cycle through one of them
    (rule 5), each once."""
    chosen = dict.fromkeys(plan_ids)
    for cycle in list(parent_cycles(parent_of, list(chosen))):
        chosen.update(dict.fromkeys(cycle))
    return list(chosen)


def touched_ids(
    only: frozenset[str] | None,
    limit: frozenset[str] | None,
    base: Iterable[str],
    in_file: Iterable[str],
    in_redis: Iterable[str],
    unreadable: AbstractSet[str],
) -> frozenset[str]:
    """The ids a sync merges and saves (rule 7): `in_file` and `in_redis`, what the views
    returned for `limit`."""
    if only is not None:
        ids = only  # rule 8
    elif limit is not None:
        ids = frozenset(limit | set(in_redis) | set(in_file))
    else:
        ids = frozenset(set(base) | set(in_file) | set(in_redis))
    return ids - unreadable
