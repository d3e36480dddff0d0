"""The file side alone: apply writes only over what was read, and knows its own writes."""

from __future__ import annotations

from pathlib import Path

import pytest

from ttsyncd import sides
from ttsyncd.errors import PlanError
from ttsyncd.plan import PlanReader, parse_plan
from ttsyncd.sides import FileSide

BEFORE = '[[tasks]]\nid = "a"\ndescription = "one"\n'
AFTER = '[[tasks]]\nid = "a"\ndescription = "two"\n'


def test_the_file_side_writes_over_what_it_read_and_knows_its_write(tmp_path: Path) -> None:
    path = tmp_path / "tasks.toml"
    path.write_text(BEFORE)
    side = FileSide(PlanReader(path))
    read = side.read()
    assert side.knows(BEFORE) and not side.knows(AFTER)
    assert side.apply(parse_plan(path, AFTER, previous=read), over=read)
    assert path.read_text() == AFTER
    assert side.knows(AFTER)  # its echo starts no sync


def test_the_file_side_does_not_write_over_a_save_it_has_not_read(tmp_path: Path) -> None:
    path = tmp_path / "tasks.toml"
    path.write_text(BEFORE)
    side = FileSide(PlanReader(path))
    read = side.read()
    path.write_text(BEFORE + "# saved meanwhile\n")
    assert not side.apply(parse_plan(path, AFTER, previous=read), over=read)
    assert path.read_text() == BEFORE + "# saved meanwhile\n"


def test_the_file_side_reads_every_save_after_its_write(tmp_path: Path) -> None:
    """The reader keeps the bytes of what it last read or wrote and compares the file's
    bytes with them: the same bytes are the plan it has; a save of as many bytes, or of
    non-ASCII text, is read; and a write goes over what was read last."""
    path = tmp_path / "tasks.toml"
    path.write_text(BEFORE)
    side = FileSide(PlanReader(path))
    read = side.read()
    assert side.read() is read
    written = parse_plan(path, AFTER, previous=read)
    assert side.apply(written, over=read)
    assert side.read() is written
    for saved in (AFTER.replace("two", "six"), AFTER.replace("two", "tw\u00f6")):
        path.write_bytes(saved.encode())
        assert side.read().text == saved and side.knows(saved)
    over = side.read()
    assert side.apply(parse_plan(path, AFTER, previous=over), over=over)
    assert path.read_text() == AFTER


def test_the_file_side_tells_a_save_from_the_echo_of_its_own_write(tmp_path: Path) -> None:
    """`differs` says what `knows` says of the file's text (compared with the kept bytes when
    the text is the last plan's): no for the echo of its write or the text it read, yes for
    any other save, a broken one included; and a broken save it read is known."""
    path = tmp_path / "tasks.toml"
    path.write_text(BEFORE)
    side = FileSide(PlanReader(path))
    read = side.read()
    assert not side.differs()
    assert side.apply(parse_plan(path, AFTER, previous=read), over=read)
    assert not side.differs()  # the echo of its own write
    path.write_text(BEFORE)  # an undo: as long, another text
    assert side.differs()
    path.write_text("[[tasks]\n")
    assert side.differs()
    with pytest.raises(PlanError):
        side.read()
    assert not side.differs()  # the broken save, read: known
    path.write_bytes(b"\xff\n")
    with pytest.raises(PlanError):
        side.differs()  # not UTF-8


def test_a_save_of_the_old_text_right_after_the_write_is_no_echo(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A stale buffer (or an undo) saves the text from before the pull right after the pull
    lands, and the watcher asks before the sync has returned: that is a change, not the echo
    of what the side knew before its write. A write that did not land leaves it as it was."""
    path = tmp_path / "tasks.toml"
    path.write_text(BEFORE)
    side = FileSide(PlanReader(path))
    read = side.read()
    asked: list[bool] = []
    real = sides.write_atomic

    def write_then_stale_save(target: Path, data: bytes, expected: bytes | None) -> bool:
        landed = real(target, data, expected)
        path.write_text(BEFORE)
        asked.append(side.differs())
        return landed

    monkeypatch.setattr(sides, "write_atomic", write_then_stale_save)
    assert side.apply(parse_plan(path, AFTER, previous=read), over=read)
    assert asked == [True]

    monkeypatch.setattr(sides, "write_atomic", lambda *args: False)
    now = side.read()
    assert not side.apply(parse_plan(path, AFTER, previous=now), over=now)
    assert not side.differs() and side.read() is now  # as it was before the attempt
