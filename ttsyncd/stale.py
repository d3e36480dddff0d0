"""Stale writes. Both sides have writers that work from old copies: an editor buffer loaded before
the daemon's last pull, `git checkout` of an older tasks.toml, and tinytown itself, which writes
a task back whole from the hash it read earlier. Such a write looks like a change (it differs
from the base) that happens to undo the other side's latest changes. The base keeps each task's
recent history (which side changed which fields, and what they held before), and these
invariants hold:

- S1. A write by side T is stale when it is consistent with a copy from some point p in the
  task's history (every field changed since p holds its value at p, or a new value of the
  writer's) and some field the other side S changed since p (and still holds) is back at its
  value at p. Exactly those fields are set aside: the newer values stay and go back to T; the
  write's other fields merge as usual (the user's edit of another field, the agent's new
  state). A deletion from the file of a task Redis created and the file never changed is
  stale too (a copy older than the task). The history lists changes in the order syncs took
  them, which is not always the order a side saw them in, so a field of the writer's own side
  may also hold a later value when its change was taken alongside the other side's (on its own
  side it came first: `Change.overtaken`), or came from the same old copy writing again (an
  agent's next step, a buffer saved twice: `Change.old_copy`). Such a copy mixes points:
  what it wrote from its old copy before, written again where the task now holds another
  value, is stale again, whatever point its other fields are from; and a value the old copy
  had set aside, held again, says nothing of the point the rest of the copy is from (it may
  equal the task's value now by chance: a requeue's state). The history keeps the
  last HISTORY_LIMIT changes of a task: a copy older than that is not recognised.
- S2. A write from the latest copy is never stale: it cannot hold a value the other side
  replaced after it was read, unless it sets that value anew, and deliberate reverts are
  partial (a re-opened task keeps its result) or undo the writer's own side (a user returning
  to an earlier text of their own). On the Redis side, what tinytown's lifecycle step writes
  is never stale (the state; the agent assign() sets and requeue() clears; the result of
  complete(), fail() and cancel()): the step is meant even when applied to an old copy.
  What values cannot tell apart is read as stale: a user setting a task back to the exact
  state of before the agent's last step, when that step changed nothing else; and a write
  that, after a stale write from its side was set aside (while the task's history holds it),
  holds the same stale value again (the old copy's writer saving again looks just like it),
  or, holding such a value by chance, puts back a value that copy wrote which the other side
  has replaced since.
- S3. Setting aside changes nothing the base agreed on: a stale write is recorded (kind
  "stale", with both values) when the sync that restores the newer values runs, and
  `resolve --take` pins the stale value on both sides on purpose.
"""

from __future__ import annotations

from collections.abc import Iterable

from ttsyncd.base import BaseTask, Change, Side
from ttsyncd.model import FIELDS, TERMINAL_STATES, Record


def created_by_redis_only(base: BaseTask) -> bool:
    """Redis created the task and the file never changed it since: a file without it is a
    copy from before it existed."""
    history = base.history
    return bool(history) and history[0].created and all(c.side == "redis" for c in history)


def written_by_step(redis: Record) -> frozenset[str]:
    """The synced fields tinytown's lifecycle step that leaves a task in its state writes:
    meant even on an old copy (S2). Every step sets the state; assign() sets the agent and
    requeue() clears it; complete(), fail() and cancel() set the result. start() sets only
    the state (and started_at, which is not synced)."""
    fields = {"status"}
    if redis.status in ("assigned", "pending"):
        fields.add("agent")
    if redis.status in TERMINAL_STATES:
        fields.add("result")
    return frozenset(fields)


def stale_fields(base: BaseTask, record: Record, side: Side) -> frozenset[str]:
    """The fields of `side`'s `record` that are a stale write (S1): the write is consistent
    with a copy from some point p of the task's history (each field changed since p holds
    p's value or a new one), and the other side's fields back at p's value are set aside.
    Of all points, the one that sets aside the most fields (the oldest, on a tie)."""
    history = base.history
    if not history:
        return frozenset()
    current = base.fields
    changed = {f for f in FIELDS if f in current and record.get(f) != current[f]}
    # The writer's own new values, whatever they are: tinytown writes a task only by applying
    # a lifecycle step to its copy.
    meant = written_by_step(record) if side == "redis" else frozenset()
    if not changed - meant:
        return frozenset()
    held_again = held_from_old_copies(history, record, side)
    # The same old copy writing again (an agent's next step from the hash it read before):
    # what that copy wrote before and the task no longer holds is stale again, from whatever
    # point the rest of the copy is (it took in later values through its own writes).
    again = frozenset((held_again & changed) - meant)
    newest_change = {f: i for i, change in enumerate(history) for f in change.before}
    at_p = dict(current)  # the task's fields at point p: before history[k]
    changed_since_p: set[str] = set()
    held_since_p = {f: {v} for f, v in current.items()}  # every value each field held since p
    # This side's fields whose value since p a copy from p may hold: changed alongside the other
    # side's change (on this side it came first), or by this side's writer of an old copy.
    relaxed: set[str] = set()
    best: frozenset[str] = frozenset()
    for k in range(len(history) - 1, -1, -1):
        change = history[k]
        at_p.update(change.before)
        changed_since_p.update(change.before)
        for f, v in change.before.items():
            held_since_p.setdefault(f, set()).add(v)
        if change.side != side:
            relaxed |= change.overtaken
        elif change.old_copy and any(record.get(f) == v for f, v in change.old_copy.values.items()):
            relaxed |= change.before.keys()  # the same old copy, writing again

        # A copy from p holds p's value in every field changed since, unless its writer set a
        # new one: a write that holds a later value is from a later copy.
        later = {
            f
            for f in changed_since_p - changed - meant - held_again
            if record.get(f) != at_p[f] and not (f in relaxed and record.get(f) in held_since_p[f])
        }
        if later:
            continue
        by_other = {f for f, i in newest_change.items() if i >= k and history[i].side != side}
        went_back = frozenset(
            f for f in (by_other & changed) - meant - again if record.get(f) == at_p[f]
        )
        if went_back and len(went_back) >= len(best):
            best = went_back
    return best | again


def held_from_old_copies(history: Iterable[Change], record: Record, side: Side) -> frozenset[str]:
    """The fields of `record` that hold a value an old copy of `side` had set aside before
    (changed or not): known to come from that copy, they say nothing of the point the rest
    of the copy is from."""
    return frozenset(
        f
        for change in history
        if change.side == side and change.old_copy
        for f, v in change.old_copy.values.items()
        if record.get(f) == v
    )
