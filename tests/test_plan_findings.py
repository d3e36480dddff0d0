"""What a TOML conformance run found in the plan reader and writer (issue 11), each pinned: the
file ttsyncd reads is the file tomllib reads, and a pull writes exactly the intended values
with every untouched line byte for byte, its own line ending included."""

from __future__ import annotations

import math
import tomllib
from pathlib import Path

import pytest

from ttsyncd.errors import PlanError
from ttsyncd.model import Record
from ttsyncd.plan import RemoveEntry, UpdateEntry, parse_plan, render_plan

PATH = Path("tasks.toml")


def rendered(text: str, *edits: UpdateEntry | RemoveEntry) -> str:
    """The text after the edits, checked as the engine checks it: parsed back."""
    new_text = render_plan(parse_plan(PATH, text), edits)
    parse_plan(PATH, new_text)
    return new_text


def test_a_bare_cr_at_the_end_is_rejected_as_tomllib_rejects_it() -> None:
    text = '[[tasks]]\nid = "a"\ndescription = "x"\r'
    with pytest.raises(tomllib.TOMLDecodeError):
        tomllib.loads(text)
    with pytest.raises(PlanError) as caught:
        parse_plan(PATH, text)
    assert caught.value.problems[0].startswith("tasks.toml:3")


def test_a_pull_into_a_crlf_file_with_no_final_newline_ends_it_validly() -> None:
    text = '[[tasks]]\r\nid = "a"\r\ndescription = "x"'
    new_text = rendered(text, UpdateEntry("a", Record("x", status="running")))
    assert tomllib.loads(new_text)["tasks"] == [
        {"id": "a", "description": "x", "status": "running"}
    ]
    assert not new_text.endswith("\r")
    assert new_text.startswith('[[tasks]]\r\nid = "a"\r\ndescription = "x"\r\n')


def test_an_entry_holding_nan_can_be_pulled_into() -> None:
    text = '[[tasks]]\nid = "a"\ndescription = "x"\nestimate = nan\n'
    new_text = rendered(text, UpdateEntry("a", Record("x", status="running")))
    entry = tomllib.loads(new_text)["tasks"][0]
    assert entry["status"] == "running" and math.isnan(entry["estimate"])
    assert "estimate = nan\n" in new_text


def test_line_endings_are_kept_line_by_line() -> None:
    # An LF file whose multi-line string holds one CRLF: editing the entry keeps every other
    # line as it was (the CRLF inside the string too) and writes the new line with LF.
    lf = '[[tasks]]\nid = "a"\ndescription = "x"\nnotes = """one\r\ntwo\nthree"""\n'
    new_text = rendered(lf, UpdateEntry("a", Record("x", status="running")))
    assert new_text == lf + 'status = "running"\n'
    # A CRLF file whose multi-line string holds LF breaks: they stay LF.
    crlf = '[[tasks]]\r\nid = "a"\r\ndescription = "x"\r\nnotes = """one\ntwo"""\r\n'
    new_text = rendered(crlf, UpdateEntry("a", Record("x", status="running")))
    assert new_text == crlf + 'status = "running"\r\n'


# A multi-line string holding a line that starts with "[" does not split into segments by
# lines: these plans go through the tomlkit path.
FIRST, SECOND = '"""first\n[x] item"""', '"""second\n[y] item"""'


def test_removing_an_entry_through_the_tomlkit_path_leaves_one_blank_line() -> None:
    text = (
        f'[[tasks]]\nid = "a"\ndescription = {FIRST}\n\n'
        f'[[tasks]]\nid = "b"\ndescription = {SECOND}\n\n'
        '[[tasks]]\nid = "c"\ndescription = "third"\n'
    )
    assert rendered(text, RemoveEntry("b")) == (
        f'[[tasks]]\nid = "a"\ndescription = {FIRST}\n\n'
        '[[tasks]]\nid = "c"\ndescription = "third"\n'
    )
    assert rendered(text, RemoveEntry("a")) == (
        f'[[tasks]]\nid = "b"\ndescription = {SECOND}\n\n'
        '[[tasks]]\nid = "c"\ndescription = "third"\n'
    )


def test_removing_the_only_entry_leaves_no_tasks_key() -> None:
    text = f'# the plan\n[meta]\ndescription = "m"\n\n[[tasks]]\nid = "a"\ndescription = {FIRST}\n'
    new_text = rendered(text, RemoveEntry("a"))
    assert "tasks" not in tomllib.loads(new_text)
    assert new_text == '# the plan\n[meta]\ndescription = "m"\n'


def test_a_pull_into_a_crlf_file_whose_last_entry_is_not_plain() -> None:
    text = '[[tasks]]\r\nid = "a"\r\ndescription = "x"\r\nestimate = 3'
    new_text = rendered(text, UpdateEntry("a", Record("x", status="running")))
    assert tomllib.loads(new_text)["tasks"][0] == {
        "id": "a",
        "description": "x",
        "estimate": 3,
        "status": "running",
    }
    assert new_text == text + '\r\nstatus = "running"'


def test_a_pull_through_the_tomlkit_path_keeps_a_file_with_no_final_newline_so() -> None:
    # (found by the conformance test) a nested array's line starting with "[" sends the
    # render through tomlkit, which parsed the text with a newline added, and kept it
    text = (
        '[[tasks]]\nid = "a"\ndescription = "x"\nx1=[\n  [],\n]\n\n'
        '[[tasks]]\nid = "b"\ndescription = "y"'
    )
    new_text = rendered(text, UpdateEntry("a", Record("x", status="running")))
    assert new_text.endswith('\n[[tasks]]\nid = "b"\ndescription = "y"')
    assert tomllib.loads(new_text)["tasks"][0]["status"] == "running"
