"""The file side alone: apply writes only over what was read, and knows its own writes."""

from __future__ import annotations

from pathlib import Path

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
