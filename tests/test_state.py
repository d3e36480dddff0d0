"""The persisted base: whole rewrites, the journal of small saves, and crash leftovers."""

from __future__ import annotations

import copy
import json
import os
import tempfile
from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ttsyncd import state as state_module
from ttsyncd.base import BaseTask
from ttsyncd.merge import Conflict
from ttsyncd.state import JOURNAL_LIMIT, StateStore, SyncState, append_conflicts, read_conflicts


def store(tmp_path: Path) -> StateStore:
    return StateStore(tmp_path / "state", "demo", "unix:///r.sock", "unix:///r.sock")


def state_with(tasks: dict[str, str], epoch: str | None = "e1") -> SyncState:
    return SyncState(
        base={k: BaseTask.of({"description": v, "tags": ("a",)}) for k, v in tasks.items()},
        uuids={k: f"uuid-{k}" for k in tasks},
        redis_epoch=epoch,
    )


def test_a_small_save_is_a_journal_line_and_reads_back(tmp_path: Path) -> None:
    first = store(tmp_path)
    first.save(state_with({"a": "A", "b": "B"}))
    assert first.path.exists() and not first.journal.exists()
    base_text = first.path.read_text()
    changed = state_with({"a": "A2", "c": "C"})
    changed.pending["a"] = [Conflict("a", "status", "pending", "running", "failed", None)]
    changed.unresolved_agents["c"] = "nobody"
    first.save(changed, touched={"a", "b", "c"})
    assert first.path.read_text() == base_text  # the base file is not rewritten
    assert len(first.journal.read_text().splitlines()) == 1
    assert oct(os.stat(first.journal).st_mode & 0o777) == "0o600"
    assert store(tmp_path).load() == changed


def test_a_state_changed_in_place_journals_what_changed(tmp_path: Path) -> None:
    """The engine updates the cached state in place and says what it held before for the
    ids it touched (`before`): the journal line is the same as for a new state."""
    first = store(tmp_path)
    first.save(state_with({"a": "A", "b": "B"}))
    cached = first.load()
    before = SyncState(
        base={"a": cached.base["a"]}, uuids={"a": cached.uuids["a"]}, redis_epoch="e1"
    )
    cached.base["a"] = BaseTask.of({"description": "A2", "tags": ("a",)})
    cached.base["c"] = BaseTask.of({"description": "C", "tags": ()})
    cached.uuids["c"] = "uuid-c"
    cached.redis_epoch = "e2"
    first.save(cached, touched={"a", "c"}, before=before)
    assert len(first.journal.read_text().splitlines()) == 1
    assert store(tmp_path).load() == cached
    first.save(cached, touched={"a", "c"}, before=copy.deepcopy(cached))
    assert len(first.journal.read_text().splitlines()) == 1  # nothing changed: no line


def test_a_save_that_changes_nothing_writes_nothing(tmp_path: Path) -> None:
    first = store(tmp_path)
    first.save(state_with({"a": "A"}))
    first.save(state_with({"a": "A"}), touched={"a", "zzz"})
    assert not first.journal.exists()


def test_the_journal_is_folded_into_the_base_when_it_grows(tmp_path: Path) -> None:
    first = store(tmp_path)
    first.save(state_with({"a": "0"}))
    for n in range(1, JOURNAL_LIMIT + 2):
        first.save(state_with({"a": str(n)}), touched={"a"})
    assert not first.journal.exists()  # the 2,001st save rewrote the base
    assert store(tmp_path).load() == state_with({"a": str(JOURNAL_LIMIT + 1)})


def test_lines_of_an_older_generation_are_not_replayed(tmp_path: Path) -> None:
    """A crash between rewriting the base and removing the journal leaves lines the new base
    already holds (or that an even newer value replaced): they must not come back."""
    first = store(tmp_path)
    first.save(state_with({"a": "A"}))
    first.save(state_with({"a": "old"}), touched={"a"})
    stale = first.journal.read_text()
    first.save(state_with({"a": "new"}))  # a whole rewrite: the next generation
    first.journal.write_text(stale)  # as if the unlink never happened
    assert store(tmp_path).load() == state_with({"a": "new"})


def test_a_torn_last_line_is_ignored(tmp_path: Path) -> None:
    first = store(tmp_path)
    first.save(state_with({"a": "A"}))
    first.save(state_with({"a": "A2"}), touched={"a"})
    with first.journal.open("a") as out:
        out.write('{"generation": 1, "tasks": {"a": nul')
    assert store(tmp_path).load() == state_with({"a": "A2"})


@settings(max_examples=100, deadline=None)
@given(
    st.lists(
        st.dictionaries(st.sampled_from("abcde"), st.sampled_from(["x", "y", "z"]), max_size=5),
        min_size=1,
        max_size=12,
    ),
    st.lists(st.sampled_from(["e1", "e2", None]), min_size=12, max_size=12),
)
def test_any_series_of_saves_reads_back_as_the_last_one(
    series: list[dict[str, str]], epochs: list[str | None]
) -> None:
    with tempfile.TemporaryDirectory() as directory:
        saving = store(Path(directory))
        for n, tasks in enumerate(series):
            before = saving.load()
            state = state_with(tasks, epochs[n])
            touched = set(before.base) | set(state.base)
            saving.save(state, touched=None if n % 5 == 0 else touched)
            assert store(Path(directory)).load() == state
            if saving.path.exists():  # (an empty state is never written)
                assert json.loads(saving.path.read_text())["town"] == "demo"


def test_values_holding_unicode_line_breaks_read_back(tmp_path: Path) -> None:
    """json.dumps(ensure_ascii=False) leaves U+2028 and \\x1c inside strings; the journal and
    the conflict log are split at newlines only."""
    odd = "one\u2028two\x1cthree\x85four"
    first = store(tmp_path)
    first.save(state_with({"a": "A"}))
    first.save(state_with({"a": odd}), touched={"a"})
    assert store(tmp_path).load() == state_with({"a": odd})
    conflict = Conflict("a", "description", odd, odd + "!", odd + "?", "file")
    append_conflicts(tmp_path / "state", [conflict], policy="owner", now=datetime.now(UTC))
    (logged,) = read_conflicts(tmp_path / "state")
    assert logged["base"] == odd


def test_a_clusters_markers_are_saved_and_journaled(tmp_path: Path) -> None:
    """The per-primary epoch markers of a Cluster: in the base, and in a journal line when
    only they changed (a primary came back empty and was marked anew)."""
    first = store(tmp_path)
    marked = state_with({"a": "A"})
    marked.redis_markers = {"tt:demo:ttsyncd:epoch:0": "m0", "tt:demo:ttsyncd:epoch:2": "m2"}
    first.save(marked)
    assert store(tmp_path).load() == marked
    remarked = state_with({"a": "A"})
    remarked.redis_markers = {**marked.redis_markers, "tt:demo:ttsyncd:epoch:2": "new"}
    first.save(remarked, touched={"a"})
    assert len(first.journal.read_text().splitlines()) == 1
    assert store(tmp_path).load() == remarked
    first.save(state_with({"a": "A"}), touched={"a"})  # a server that is no Cluster any more
    assert store(tmp_path).load().redis_markers == {}


def test_a_whole_save_that_fails_leaves_the_journal_counting_as_before(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A whole save that fails (a full disk) leaves the base file and its journal as they
    were: the journal lines after it must still be read back at the next start."""
    first = store(tmp_path)
    first.save(state_with({"a": "A"}))
    first.save(state_with({"a": "A2"}), touched={"a"})

    def full_disk(*args: object, **kwargs: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(state_module, "save_state", full_disk)
    with pytest.raises(OSError):
        first.save(state_with({"a": "A3", "b": "B"}))
    monkeypatch.undo()
    last = state_with({"a": "A4"})
    first.save(last, touched={"a"})
    assert store(tmp_path).load() == last
