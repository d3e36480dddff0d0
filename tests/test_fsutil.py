"""The plan's atomic replace against saves that land in its last gap: between the check that
the file still holds what the pull read, and the rename that puts the pull's text in place.

A thread switch in the daemon can hold that gap open for milliseconds, and an editor's save
in it was renamed over and lost (the file-and-agent race test caught it about once in twenty
runs). Here the save is made to land exactly there, by running it from inside the check.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from io import RawIOBase
from pathlib import Path

import pytest

from ttsyncd import fsutil
from ttsyncd.fsutil import write_atomic

READ = "what the pull read\n"
OURS = "the pull's text\n"

needs_exchange = pytest.mark.skipif(
    fsutil._renameat2 is None, reason="no renameat2 here: the check-then-rename fallback is used"
)


def save_by_rename(path: Path, text: str) -> None:
    temp = path.with_name(".tasks.toml.editor~")
    temp.write_text(text)
    os.replace(temp, path)


def save_in_place(path: Path, text: str) -> None:
    with open(path, "r+") as out:
        out.truncate()
        out.write(text)


def save_right_after_the_check(monkeypatch: pytest.MonkeyPatch, save: Callable[[], object]) -> None:
    """The next check of the file reads it, then a save lands before anything else runs."""
    real = fsutil.file_holds
    pending = [save]

    def check_then_save(current: RawIOBase, expected: bytes) -> bool:
        seen = real(current, expected)
        while pending:
            pending.pop()()
        return seen

    monkeypatch.setattr(fsutil, "file_holds", check_then_save)


@needs_exchange
@pytest.mark.parametrize("style", ["rename", "in-place"])
def test_a_save_between_the_check_and_the_rename_is_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, style: str
) -> None:
    path = tmp_path / "tasks.toml"
    path.write_text(READ)
    save = save_by_rename if style == "rename" else save_in_place
    save_right_after_the_check(monkeypatch, lambda: save(path, "the user's save\n"))
    assert not write_atomic(path, OURS, READ)  # the caller merges again
    assert path.read_text() == "the user's save\n"
    assert sorted(os.listdir(tmp_path)) == ["tasks.toml"]


@needs_exchange
def test_a_second_save_while_the_swap_is_undone_is_kept_too(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two saves inside the gap: the newest ends at the plan's name, the other beside it."""
    path = tmp_path / "tasks.toml"
    path.write_text(READ)
    save_right_after_the_check(monkeypatch, lambda: save_by_rename(path, "first save\n"))
    real_exchange = fsutil.exchange
    calls = []

    def exchange(a: Path, b: Path) -> bool:
        calls.append(1)
        if len(calls) == 2:  # undoing the swap: one more save lands first
            save_by_rename(path, "second save\n")
        return real_exchange(a, b)

    monkeypatch.setattr(fsutil, "exchange", exchange)
    assert not write_atomic(path, OURS, READ)
    assert path.read_text() == "second save\n"
    kept = [p for p in tmp_path.iterdir() if p.name.startswith("tasks.toml.saved-")]
    assert [p.read_text() for p in kept] == ["first save\n"]
    assert sorted(os.listdir(tmp_path)) == sorted(["tasks.toml", kept[0].name])


def test_a_file_created_after_we_read_it_missing_is_not_replaced(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "tasks.toml"
    real = fsutil.link_in

    def created_first(temp: Path, target: Path) -> bool:
        path.write_text("a new plan\n")
        return real(temp, target)

    monkeypatch.setattr(fsutil, "link_in", created_first)
    assert not write_atomic(path, OURS, "")
    assert path.read_text() == "a new plan\n"
    assert os.listdir(tmp_path) == ["tasks.toml"]


@needs_exchange
def test_a_plan_deleted_in_the_gap_is_not_written_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "tasks.toml"
    path.write_text(READ)
    save_right_after_the_check(monkeypatch, path.unlink)
    assert not write_atomic(path, OURS, READ)
    assert os.listdir(tmp_path) == []


def test_without_a_race_the_pull_lands_and_leaves_nothing_behind(tmp_path: Path) -> None:
    path = tmp_path / "tasks.toml"
    path.write_text(READ)
    inode = path.stat().st_ino
    assert write_atomic(path, OURS, READ)
    assert path.read_text() == OURS
    assert path.stat().st_ino != inode  # a new file, swapped in whole
    assert os.listdir(tmp_path) == ["tasks.toml"]


@needs_exchange
def test_a_save_is_kept_even_when_the_check_after_the_swap_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The swapped-out file cannot be read (too many open files, an I/O error): it may be the
    user's save, so it is kept beside the plan, never deleted, and the error goes on up."""
    path = tmp_path / "tasks.toml"
    path.write_text(READ)
    save_right_after_the_check(monkeypatch, lambda: save_by_rename(path, "the user's save\n"))

    def unreadable(path: Path, expected: bytes) -> bool:
        raise OSError(24, "Too many open files")

    monkeypatch.setattr(fsutil, "holds", unreadable)
    with pytest.raises(OSError, match="Too many open files"):
        write_atomic(path, OURS, READ)
    kept = [p for p in tmp_path.iterdir() if p.name.startswith("tasks.toml.saved-")]
    assert [p.read_text() for p in kept] == ["the user's save\n"]
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_saves_kept_in_the_same_second_each_get_a_name_of_their_own(tmp_path: Path) -> None:
    path = tmp_path / "tasks.toml"
    path.write_text(OURS)
    for n in range(3):
        displaced = tmp_path / f".tasks.toml.{n}.tmp"
        displaced.write_text(f"save {n}\n")
        fsutil.keep_beside(displaced, path, OURS.encode())
    kept = sorted(p.read_text() for p in tmp_path.iterdir() if ".saved-" in p.name)
    assert kept == ["save 0\n", "save 1\n", "save 2\n"]
