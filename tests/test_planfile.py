"""The plan-file adapter: parsing, validation, style-preserving rendering, atomic writes."""

from __future__ import annotations

import os
import stat
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from unittest.mock import patch

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ttsyncd.errors import PlanError
from ttsyncd.fsutil import CHUNK, holds
from ttsyncd.model import STATES, Record
from ttsyncd.plan import (
    AddEntry,
    AssignId,
    FileEdit,
    Plan,
    RemoveEntry,
    UpdateEntry,
    forget_parses,
    new_entry_id,
    parse_plan,
    read,
    read_plan,
    render_edits,
    render_plan,
    write_atomic,
)
from ttsyncd.plan.entry_text import edit_simple_lines, field_changes
from ttsyncd.plan.read import _parse_whole
from ttsyncd.plan.render import (
    _Render,
    _render_window,
    _resolve,
    _split,
    _Window,
)
from ttsyncd.plan.render_tomlkit import _edit_with_tomlkit

PATH = Path("tasks.toml")


def plan_of(text: str) -> Plan:
    return parse_plan(PATH, text)


def render(text: str, *edits: FileEdit) -> str:
    return render_plan(plan_of(text), edits)


def problems_of(text: str) -> list[str]:
    with pytest.raises(PlanError) as caught:
        plan_of(text)
    return caught.value.problems


SAMPLE = """\
# Sprint plan
[meta]
description = "Sprint 1"
default_agent = "developer"

# The API first.
[[tasks]]
id = "auth-api"
description = "Build user authentication API"  # the big one
agent = "backend"
status = "running"
tags = ["auth", "api"]

# Then its tests.
# (two comment lines)
[[tasks]]
id = "auth-tests"
description = "Write auth API tests"
parent = "auth-api"
# trailing note about the tests

[[tasks]]
description = "No id yet"
"""


# ---------------------------------------------------------------------------- parsing


def test_parse_reads_entries_meta_and_line_numbers() -> None:
    plan = plan_of(SAMPLE)
    assert plan.path == PATH
    assert plan.text == SAMPLE
    assert plan.default_agent == "developer"
    assert [(plan.entry_line(n), e.plan_id) for n, e in enumerate(plan.entries)] == [
        (7, "auth-api"),
        (16, "auth-tests"),
        (22, None),
    ]
    assert plan.entries[0].record == Record(
        "Build user authentication API", "running", "backend", ("auth", "api")
    )
    # Defaults: pending, no tags; the agent is the entry's own key, not [meta]'s default.
    assert plan.entries[1].record == Record("Write auth API tests", parent="auth-api")
    assert plan.entries[2].record == Record("No id yet")


def test_parse_allows_unknown_keys_and_empty_files() -> None:
    plan = plan_of('[[tasks]]\ndescription = "x"\npriority = 3\n[meta]\nowner = "me"\n')
    assert plan.entries[0].record == Record("x")
    assert plan.default_agent is None
    assert plan_of("").entries == ()
    assert plan_of("# nothing yet\n").entries == ()


def test_parse_accepts_every_redis_state() -> None:
    text = "".join(f'[[tasks]]\ndescription = "t"\nstatus = "{state}"\n' for state in STATES)
    assert [e.record.status for e in plan_of(text).entries] == list(STATES)


def test_read_plan_missing_file_is_empty(tmp_path: Path) -> None:
    plan = read_plan(tmp_path / "tasks.toml")
    assert plan == Plan(tmp_path / "tasks.toml", "", None, ())


def test_read_plan_keeps_the_exact_bytes(tmp_path: Path) -> None:
    path = tmp_path / "tasks.toml"
    path.write_bytes(b'[[tasks]]\r\nid = "a"\r\ndescription = "caf\xc3\xa9"\r\n')
    plan = read_plan(path)
    assert plan.text == '[[tasks]]\r\nid = "a"\r\ndescription = "café"\r\n'
    assert plan.entries[0].record.description == "café"


def test_read_plan_rejects_non_utf8(tmp_path: Path) -> None:
    path = tmp_path / "tasks.toml"
    path.write_bytes(b'[[tasks]]\ndescription = "\xff"\n')
    with pytest.raises(PlanError, match=r"tasks.toml:2: not UTF-8"):
        read_plan(path)


# ---------------------------------------------------------------------------- validation

T = '[[tasks]]\nid = "a"\ndescription = "A"\n'  # a valid first entry, lines 1-3


@pytest.mark.parametrize(
    ("text", "line", "message"),
    [
        ('[[tasks]]\nid = "a"\ndescription = \n', 3, "invalid TOML"),
        ('[[tasks]]\ndescription = "unterminated\n', 2, "invalid TOML"),
        ('[tasks]\ndescription = "x"\n', 1, "`tasks` must be an array of tables"),
        ('title = "x"\ntasks = "nope"\n', 2, "`tasks` must be an array of tables"),
        ("tasks = [1]\n", 1, "task 1 must be a table"),
        (T + '\n[[tasks]]\nid = "b"\n', 5, "task has no description"),
        (T + '[[tasks]]\nid = "b"\ndescription = 7\n', 6, "description must be a string"),
        (T + '[[tasks]]\ndescription = "B"\nid = 2\n', 6, "id must be a string"),
        (T + '[[tasks]]\ndescription = "B"\nid = ""\n', 6, "id is empty"),
        (T + "tags = [\n", 4, "invalid TOML"),
        (T + '\n[[tasks]]\ndescription = "B"\nid = "a"\n', 7, 'duplicate id "a"'),
        (T + 'status = "done"\n', 4, 'invalid status "done"'),
        (T + "status = 1\n", 4, "status must be a string (got an integer)"),
        (T + "agent = 1\n", 4, "agent must be a string (got an integer)"),
        (T + "result = false\n", 4, "result must be a string (got a boolean)"),
        (T + "parent = [1]\n", 4, "parent must be a string (got an array)"),
        (T + 'tags = "auth"\n', 4, "tags must be an array of strings"),
        (T + 'tags = ["auth", 1]\n', 4, "tags must be an array of strings"),
        (T + 'parent = "nobody"\n', 4, 'parent "nobody" is not the id of any task'),
        (T + 'parent = "a"\n', 4, 'task "a" is its own parent'),
        ("meta = 1\n" + T, 1, "[meta] must be a table"),
        ("[meta]\ndefault_agent = 3\n" + T, 2, "default_agent must be a string"),
    ],
)
def test_each_problem_names_file_and_line(text: str, line: int, message: str) -> None:
    problems = problems_of(text)
    assert len(problems) == 1, problems
    assert problems[0].startswith(f"tasks.toml:{line}: ")
    assert message in problems[0]


def test_duplicate_id_names_the_first_definition() -> None:
    text = '# x\n\n[[tasks]]\nid = "auth-api"\ndescription = "A"\n\n'
    text += '[[tasks]]\ndescription = "B"\nid = "auth-api"\n'
    assert problems_of(text) == ['tasks.toml:9: duplicate id "auth-api" (first defined at line 4)']


def test_parent_cycle_names_its_ids_at_the_first_entry() -> None:
    text = (
        '[[tasks]]\nid = "x"\ndescription = "X"\n\n'
        '[[tasks]]\nid = "a"\ndescription = "A"\nparent = "c"\n\n'
        '[[tasks]]\nid = "b"\ndescription = "B"\nparent = "a"\n\n'
        '[[tasks]]\nid = "c"\ndescription = "C"\nparent = "b"\n\n'
        '[[tasks]]\nid = "d"\ndescription = "D"\nparent = "c"\n'
    )
    assert problems_of(text) == ['tasks.toml:8: parent cycle: "a" -> "c" -> "b" -> "a"']


def test_every_problem_is_reported_at_once() -> None:
    text = (
        '[[tasks]]\nid = "a"\nstatus = "bogus"\n\n'
        '[[tasks]]\nid = "b"\ndescription = "B"\ntags = [1]\nparent = "zzz"\n'
    )
    assert problems_of(text) == [
        "tasks.toml:1: task has no description",
        'tasks.toml:3: invalid status "bogus" (expected one of: pending, assigned, running,'
        " completed, failed, cancelled)",
        "tasks.toml:8: tags must be an array of strings",
        'tasks.toml:9: parent "zzz" is not the id of any task',
    ]


def test_plan_error_message_lists_every_problem() -> None:
    with pytest.raises(PlanError) as caught:
        plan_of('[[tasks]]\nid = 1\n[[tasks]]\nid = "b"\n')
    assert str(caught.value).splitlines() == caught.value.problems
    assert len(caught.value.problems) == 3


# ---------------------------------------------------------------------------- rendering


def test_update_of_one_field_keeps_every_other_byte() -> None:
    record = plan_of(SAMPLE).entries[0].record.with_fields({"status": "completed"})
    assert render(SAMPLE, UpdateEntry("auth-api", record)) == SAMPLE.replace(
        'status = "running"', 'status = "completed"'
    )


def test_unchanged_record_renders_the_same_text() -> None:
    plan = plan_of(SAMPLE)
    edits = [UpdateEntry(e.plan_id, e.record) for e in plan.entries if e.plan_id]
    assert render_plan(plan, edits) == SAMPLE
    assert render_plan(plan, []) == SAMPLE


def test_added_key_goes_before_the_next_entrys_comments() -> None:
    # tomlkit's own API would put `result` after "# Then its tests." (pitfall 1).
    record = plan_of(SAMPLE).entries[0].record.with_fields({"result": "done", "parent": None})
    expected = SAMPLE.replace(
        'tags = ["auth", "api"]\n', 'tags = ["auth", "api"]\nresult = "done"\n'
    )
    assert render(SAMPLE, UpdateEntry("auth-api", record)) == expected


def test_new_keys_follow_the_fixed_order_and_the_body_indent() -> None:
    text = (
        '[[tasks]]\n  id = "a"\n  description = "A"  # keep\n\n'
        '# about b\n[[tasks]]\nid = "b"\ndescription = "B"\n'
    )
    record = Record("A", status="failed", agent="qa", tags=("x",), parent="b", result="r")
    assert render(text, UpdateEntry("a", record)) == (
        '[[tasks]]\n  id = "a"\n  description = "A"  # keep\n  agent = "qa"\n'
        '  status = "failed"\n  tags = ["x"]\n  parent = "b"\n  result = "r"\n'
        '\n# about b\n[[tasks]]\nid = "b"\ndescription = "B"\n'
    )


def test_inline_comments_survive_a_value_change() -> None:
    text = '[[tasks]]\nid = "a"\ndescription = "A"  # what\nstatus = "pending"   # where it is\n'
    record = Record("A2", status="running")
    assert render(text, UpdateEntry("a", record)) == (
        '[[tasks]]\nid = "a"\ndescription = "A2"  # what\nstatus = "running"   # where it is\n'
    )


def test_keys_back_to_their_default_are_removed_but_status_stays() -> None:
    text = (
        '[[tasks]]\nid = "a"\ndescription = "A"\nagent = "x"\nstatus = "failed"\n'
        'tags = ["t"]\nresult = "r"\nnote = 1\n'
    )
    assert render(text, UpdateEntry("a", Record("A"))) == (
        '[[tasks]]\nid = "a"\ndescription = "A"\nstatus = "pending"\nnote = 1\n'
    )


def test_default_agent_is_not_written() -> None:
    plan = plan_of(SAMPLE)
    tests_record = plan.entries[1].record.with_fields({"agent": "developer"})
    rendered = render_plan(
        plan,
        [
            UpdateEntry("auth-tests", tests_record),
            AddEntry("docs", Record("Write docs", agent="developer")),
        ],
    )
    assert (
        rendered
        == SAMPLE + '\n[[tasks]]\nid = "docs"\ndescription = "Write docs"\nstatus = "pending"\n'
    )
    # An entry that names an agent explicitly keeps naming it, even the default one.
    api_record = plan.entries[0].record.with_fields({"agent": "developer"})
    assert 'agent = "developer"' in render_plan(plan, [UpdateEntry("auth-api", api_record)])


def test_remove_keeps_the_neighbours_comments() -> None:
    # tomlkit's `del doc["tasks"][i]` drops the comment above the following entry (pitfall 2).
    assert render(SAMPLE, RemoveEntry("auth-api")) == SAMPLE.replace(
        "# The API first.\n[[tasks]]\n"
        'id = "auth-api"\n'
        'description = "Build user authentication API"  # the big one\n'
        'agent = "backend"\nstatus = "running"\ntags = ["auth", "api"]\n\n',
        "",
    )
    assert render(SAMPLE, RemoveEntry("auth-tests")) == SAMPLE.replace(
        "# Then its tests.\n# (two comment lines)\n[[tasks]]\n"
        'id = "auth-tests"\ndescription = "Write auth API tests"\nparent = "auth-api"\n',
        "",
    )


def test_remove_leaves_no_doubled_or_trailing_blank_lines() -> None:
    text = "\n".join(
        f'[[tasks]]\nid = "{name}"\ndescription = "{name.upper()}"\n' for name in "abc"
    )
    assert render(text, RemoveEntry("b")) == text.replace(
        '[[tasks]]\nid = "b"\ndescription = "B"\n\n', ""
    )
    assert render(text, RemoveEntry("a")) == text.replace(
        '[[tasks]]\nid = "a"\ndescription = "A"\n\n', ""
    )
    assert render(text, RemoveEntry("c")) == text.replace(
        '\n\n[[tasks]]\nid = "c"\ndescription = "C"\n', "\n"
    )
    assert (
        render(text, RemoveEntry("b"), RemoveEntry("c"))
        == '[[tasks]]\nid = "a"\ndescription = "A"\n'
    )
    assert render(text, RemoveEntry("a"), RemoveEntry("b"), RemoveEntry("c")) == ""


def test_add_appends_at_the_end_after_one_blank_line() -> None:
    record = Record('New: "quoted"\nsecond line', "assigned", "qa", ("a", "b"), "auth-api", "ok")
    new_entry = (
        '[[tasks]]\nid = "new"\ndescription = "New: \\"quoted\\"\\nsecond line"\nagent = "qa"\n'
        'status = "assigned"\ntags = ["a", "b"]\nparent = "auth-api"\nresult = "ok"\n'
    )
    assert render(SAMPLE, AddEntry("new", record)) == SAMPLE + "\n" + new_entry
    assert render(SAMPLE + "\n\n\n", AddEntry("new", record)) == SAMPLE + "\n" + new_entry
    assert render(SAMPLE.rstrip("\n"), AddEntry("new", record)) == SAMPLE + "\n" + new_entry
    assert render("", AddEntry("new", record)) == new_entry
    two = render("", AddEntry("x", Record("X")), AddEntry("y", Record("Y")))
    assert two == (
        '[[tasks]]\nid = "x"\ndescription = "X"\nstatus = "pending"\n\n'
        '[[tasks]]\nid = "y"\ndescription = "Y"\nstatus = "pending"\n'
    )


def test_add_after_a_trailing_meta_table() -> None:
    text = '[[tasks]]\nid = "a"\ndescription = "A"\n\n[meta]\ndefault_agent = "dev"\n'
    rendered = render(text, AddEntry("b", Record("B")))
    assert rendered.startswith(text + "\n[[tasks]]\n")
    assert [t["id"] for t in tomllib.loads(rendered)["tasks"]] == ["a", "b"]
    assert tomllib.loads(rendered)["meta"] == {"default_agent": "dev"}


def test_assign_id_goes_first_in_the_entry() -> None:
    rendered = render(SAMPLE, AssignId(2, "no-id-yet"))
    assert rendered == SAMPLE.replace(
        '[[tasks]]\ndescription = "No id yet"',
        '[[tasks]]\nid = "no-id-yet"\ndescription = "No id yet"',
    )
    # An id just given can be used by the following edits.
    record = Record("No id yet", status="running")
    rendered = render(SAMPLE, AssignId(2, "n"), UpdateEntry("n", record))
    assert rendered.endswith('[[tasks]]\nid = "n"\ndescription = "No id yet"\nstatus = "running"\n')


def test_edits_apply_in_sequence() -> None:
    rendered = render(
        SAMPLE,
        AddEntry("x", Record("X")),
        UpdateEntry("x", Record("X2", "failed")),
        RemoveEntry("auth-tests"),
        AddEntry("auth-tests", Record("Again")),
    )
    tasks = tomllib.loads(rendered)["tasks"]
    assert [t.get("id") for t in tasks] == ["auth-api", None, "x", "auth-tests"]
    assert tasks[2] == {"id": "x", "description": "X2", "status": "failed"}


@pytest.mark.parametrize(
    "edit",
    [
        UpdateEntry("nobody", Record("x")),
        RemoveEntry("nobody"),
        AddEntry("auth-api", Record("x")),
        AssignId(0, "other"),  # entry 0 already has an id
        AssignId(7, "other"),
        AssignId(2, "auth-tests"),  # taken
    ],
)
def test_impossible_edits_are_refused(edit: FileEdit) -> None:
    with pytest.raises(ValueError):
        render(SAMPLE, edit)


def test_crlf_files_stay_crlf() -> None:
    text = SAMPLE.replace("\n", "\r\n")
    record = Record("No id yet", agent="qa")
    rendered = render(text, AssignId(2, "n"), UpdateEntry("n", record), AddEntry("z", Record("Z")))
    assert "\n" not in rendered.replace("\r\n", "")
    assert rendered.startswith(text[: text.index('description = "No id yet"')])
    assert tomllib.loads(rendered)["tasks"][2] == {
        "id": "n",
        "description": "No id yet",
        "agent": "qa",
    }


# --- layouts the segment split cannot describe: whole-document fallback


def test_fallback_inline_array_of_tables() -> None:
    text = (
        "# inline style\n"
        "tasks = [\n"
        '  {id = "a", description = "A"},  # first\n'
        '  {description = "B"},\n'
        '  {id = "c", description = "C", status = "running"},\n'
        "]\n"
    )
    rendered = render(
        text,
        UpdateEntry("a", Record("A", status="failed")),
        AssignId(1, "b"),
        RemoveEntry("c"),
        AddEntry("d", Record("D", tags=("t",))),
    )
    assert rendered.startswith(
        '# inline style\ntasks = [\n  {id = "a", description = "A", status = "failed"},  # first\n'
    )
    assert tomllib.loads(rendered)["tasks"] == [
        {"id": "a", "description": "A", "status": "failed"},
        {"id": "b", "description": "B"},
        {"id": "d", "description": "D", "status": "pending", "tags": ["t"]},
    ]


def test_fallback_empty_inline_array_gets_the_new_entry() -> None:
    rendered = render("tasks = []\n", AddEntry("a", Record("A")))
    assert tomllib.loads(rendered)["tasks"] == [
        {"id": "a", "description": "A", "status": "pending"}
    ]


SUB_TABLES = """\
# about a
[[tasks]]
id = "a"
description = "A"

[tasks.extra]
note = "kept"
# trailing note of a

# about b
[[tasks]]
id = "b"
description = "B"
# trailing note of b

# about c
[[tasks]]
id = "c"
description = "C"
"""


def test_fallback_sub_table_update_keeps_comments_in_place() -> None:
    rendered = render(SUB_TABLES, UpdateEntry("a", Record("A", status="running")))
    assert rendered == SUB_TABLES.replace(
        'description = "A"\n', 'description = "A"\nstatus = "running"\n'
    )


def test_fallback_sub_table_removal_keeps_the_next_entrys_comment() -> None:
    rendered = render(SUB_TABLES, RemoveEntry("a"), RemoveEntry("b"))
    assert "# about c\n[[tasks]]" in rendered
    assert "# trailing note of a" in rendered
    assert tomllib.loads(rendered)["tasks"] == [{"id": "c", "description": "C"}]


def test_fallback_multiline_string_holding_a_header() -> None:
    text = (
        '[[tasks]]\nid = "a"\ndescription = """\nLooks like a header:\n[[tasks]]\n"""\n\n'
        '# about b\n[[tasks]]\nid = "b"\ndescription = "B"\n'
    )
    plan = plan_of(text)
    assert [e.plan_id for e in plan.entries] == ["a", "b"]
    rendered = render_plan(plan, [UpdateEntry("b", Record("B", agent="qa")), RemoveEntry("a")])
    assert "# about b\n[[tasks]]" in rendered
    assert tomllib.loads(rendered)["tasks"] == [{"id": "b", "description": "B", "agent": "qa"}]


# --- property: random files, random edits


def toml_string(value: str) -> str:
    escaped = []
    for char in value:
        if char in '"\\':
            escaped.append("\\" + char)
        elif ord(char) < 0x20 or ord(char) == 0x7F:
            escaped.append(f"\\u{ord(char):04x}")
        else:
            escaped.append(char)
    return '"' + "".join(escaped) + '"'


def toml_value(value: str | tuple[str, ...]) -> str:
    if isinstance(value, tuple):
        return "[" + ", ".join(toml_string(item) for item in value) + "]"
    return toml_string(value)


texts = st.text(min_size=1, max_size=12)
records = st.builds(
    Record,
    description=texts.filter(lambda text: bool(text.strip())),
    status=st.sampled_from(STATES),
    agent=st.none() | st.sampled_from(["dev", "qa", "backend"]),
    tags=st.lists(texts.filter(lambda tag: not tag.startswith("plan:")), max_size=3).map(tuple),
    parent=st.none() | st.sampled_from(["t0", "t1", "elsewhere"]),
    result=st.none() | texts,
)
comment_lines = st.lists(
    st.sampled_from(["# note", "#", "  # indented note", "# [[tasks]]"]), max_size=2
)


@st.composite
def entry_blocks(draw: st.DrawFn, plan_id: str | None, parents: list[str]) -> str:
    """One entry's text (its attached comments included) in a randomly chosen style."""
    record = draw(records)
    parent = draw(st.none() | st.sampled_from(parents)) if parents else None
    fields = record.with_fields({"parent": parent}).as_fields()
    pairs: list[tuple[str, str | tuple[str, ...]]] = [
        (key, value)
        for key, value in fields.items()
        # (a status of "pending" may be left out: it is the default; a description may not)
        if value is not None
        and value != ()
        and not (key == "status" and value == "pending" and draw(st.booleans()))
    ]
    pairs = list(draw(st.permutations(pairs)))
    if plan_id is not None:
        pairs.insert(draw(st.integers(0, len(pairs))), ("id", plan_id))
    if draw(st.booleans()):
        pairs.append(("priority", "high"))  # a key tinytown ignores
    indent = draw(st.sampled_from(["", "  "]))
    lines = [f"{indent}{key} = {toml_value(value)}" for key, value in pairs]
    if draw(st.booleans()):
        lines[draw(st.integers(0, len(lines) - 1))] += "  # inline"
    if draw(st.integers(0, 9)) == 0:
        # A sub-table: the segment split cannot hold it, the whole-document path takes over.
        lines += ["", "[tasks.extra]", "size = 2  # sub"]
    return "\n".join([*draw(comment_lines), "[[tasks]]", *lines]) + "\n"


@st.composite
def plan_files(draw: st.DrawFn) -> tuple[str, list[str]]:
    """(file text, each entry's text)."""
    default_agent = draw(st.none() | st.sampled_from(["dev", "qa"]))
    meta = "" if default_agent is None else f'[meta]\ndefault_agent = "{default_agent}"\n'
    meta_first = draw(st.booleans())
    text = meta + "\n" if meta and meta_first else ""
    blocks: list[str] = []
    ids: list[str] = []
    for n in range(draw(st.integers(0, 6))):
        plan_id = draw(st.none() | st.just(f"t{n}"))
        blocks.append(draw(entry_blocks(plan_id, list(ids))))
        ids += [plan_id] if plan_id else []
        # Between entries: blank lines and comments that belong to neither.
        interstitial = "".join(line + "\n" for line in draw(comment_lines))
        text += blocks[-1] + "\n" * draw(st.integers(0, 2)) + interstitial
        text += "\n" if interstitial else ""
    if meta and not meta_first:
        text += "\n" + meta
    if draw(st.booleans()):
        text = text.rstrip("\n")
    return text, blocks


def expected_raw(
    raw: dict[str, Any], record: Record | None, default_agent: str | None
) -> dict[str, Any]:
    """What an entry read as `raw` holds once made to hold `record` (`raw` is {} when added)."""
    if record is None:
        return raw
    updated = {key: value for key, value in raw.items() if key not in record.as_fields()}
    for key, value in record.as_fields().items():
        if value is None or value == ():
            continue
        if key == "agent" and value == default_agent and "agent" not in raw:
            continue
        if key == "status" and value == "pending" and raw and "status" not in raw:
            continue  # an existing entry keeps relying on the default
        updated[key] = list(value) if isinstance(value, tuple) else value
    return updated


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(plan_files(), st.data())
def test_random_edits_render_exactly_the_intended_entries(
    plan_file: tuple[str, list[str]], data: st.DataObject
) -> None:
    text, blocks = plan_file
    plan = plan_of(text)
    original = tomllib.loads(text).get("tasks", [])

    @dataclass
    class Entry:  # the test's model of one entry
        index: int | None  # in the original file; None when added
        plan_id: str | None
        record: Record | None = None  # the last record asked for, if any

    model = [Entry(index, entry.plan_id) for index, entry in enumerate(plan.entries)]
    edits: list[FileEdit] = []
    for serial in range(data.draw(st.integers(0, 6))):
        with_id = [entry for entry in model if entry.plan_id]
        without_id = [entry for entry in model if not entry.plan_id]
        kind = data.draw(st.sampled_from(["update", "add", "remove", "assign"]))
        if kind == "assign" and without_id:
            entry = data.draw(st.sampled_from(without_id))
            assert entry.index is not None
            entry.plan_id = f"given{serial}"
            edits.append(AssignId(entry.index, entry.plan_id))
        elif kind == "remove" and with_id:
            entry = data.draw(st.sampled_from(with_id))
            assert entry.plan_id is not None
            edits.append(RemoveEntry(entry.plan_id))
            model.remove(entry)
        elif kind == "update" and with_id:
            entry = data.draw(st.sampled_from(with_id))
            assert entry.plan_id is not None
            entry.record = data.draw(records)
            edits.append(UpdateEntry(entry.plan_id, entry.record))
        else:
            record = data.draw(records)
            model.append(Entry(None, f"new{serial}", record))
            edits.append(AddEntry(f"new{serial}", record))

    rendered = render_plan(plan, edits)
    # Reading it back (render seeds the parses of the entries it added) says what a fresh read
    # of the text says.
    assert parsed_or_problems(rendered, plan) == parsed_or_problems_afresh(rendered)
    # So does a read told what the render kept of the plan's text (as a pull reads it back);
    # and what it says it kept, it kept.
    result = render_edits(plan, edits)
    assert result.text == rendered
    if result.kept is not None:
        head, tail = result.kept
        assert head + tail <= min(len(text), len(rendered))
        assert rendered[:head] == text[:head]
        assert rendered[len(rendered) - tail :] == text[len(text) - tail :]
        try:
            again: Plan | list[str] = parse_plan(PATH, rendered, plan, kept=result.kept)
        except PlanError as error:
            again = error.problems
        assert again == parsed_or_problems_afresh(rendered)

    expected = []
    for entry in model:
        raw = {} if entry.index is None else original[entry.index]
        id_part = {"id": entry.plan_id} if entry.plan_id else {}
        expected.append({**id_part, **expected_raw(raw, entry.record, plan.default_agent)})
    assert tomllib.loads(rendered).get("tasks", []) == expected
    for entry in model:
        if entry.index is None or entry.record is not None:
            continue
        if entry.plan_id == plan.entries[entry.index].plan_id:  # not given an id either
            assert blocks[entry.index] in rendered + "\n"  # (may lack the final newline)


def test_big_file_update_changes_only_that_entry() -> None:
    blocks = [
        f'# task {n}\n[[tasks]]\nid = "t{n}"\n'
        f'description = "Task number {n}, with enough text to be realistic"\n'
        f'agent = "backend"\nstatus = "pending"\ntags = ["bulk", "n{n}"]\n'
        for n in range(10_000)
    ]
    text = '[meta]\ndefault_agent = "backend"\n\n' + "\n".join(blocks)
    plan = plan_of(text)
    assert len(plan.entries) == 10_000
    assert plan.entry_line(5000) == 5 + 5000 * 8
    record = plan.entries[5000].record.with_fields({"status": "completed", "result": "ok"})
    rendered = render_plan(plan, [UpdateEntry("t5000", record)])
    changed = blocks[5000].replace('status = "pending"', 'status = "completed"') + 'result = "ok"\n'
    assert rendered == text.replace(blocks[5000], changed)


# ---------------------------------------------------------------------------- ids


def test_new_entry_id_slugs_and_deduplicates() -> None:
    assert new_entry_id("Build the user Auth API!", set()) == "build-the-user-auth-api"
    assert new_entry_id("Café déjà vu", set()) == "cafe-deja-vu"
    assert new_entry_id("!!!", set()) == "task"
    assert new_entry_id("日本語", set()) == "task"
    long = new_entry_id("word " * 30, set())
    assert len(long) <= 40 and not long.endswith("-")
    assert new_entry_id("Fix it", {"fix-it"}) == "fix-it-2"
    assert new_entry_id("Fix it", {"fix-it", "fix-it-2"}) == "fix-it-3"
    assert new_entry_id("Fix it", {"fix-it"}) == new_entry_id("Fix it", {"fix-it"})


# ---------------------------------------------------------------------------- writing


def test_write_atomic_creates_a_0644_file(tmp_path: Path) -> None:
    path = tmp_path / "tasks.toml"
    assert write_atomic(path, "x = 1\n", "")
    assert path.read_text() == "x = 1\n"
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert os.listdir(tmp_path) == ["tasks.toml"]


def test_write_atomic_keeps_the_mode_and_exact_bytes(tmp_path: Path) -> None:
    path = tmp_path / "tasks.toml"
    path.write_text("old\n")
    path.chmod(0o600)
    assert write_atomic(path, "new\r\nçà\n", "old\n")
    assert path.read_bytes() == "new\r\nçà\n".encode()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert os.listdir(tmp_path) == ["tasks.toml"]


def test_holds_says_whether_a_file_holds_exactly_these_bytes(tmp_path: Path) -> None:
    """The compare before a write, and a re-read, without copying the file: chunk by chunk,
    across chunk boundaries, a missing file holding b""."""
    path = tmp_path / "tasks.toml"
    data = bytes(range(256)) * (CHUNK // 256 * 2 + 3)  # two chunks and a bit
    path.write_bytes(data)
    assert holds(path, data)
    for other in (
        data[:-1],  # shorter
        data + b"x",  # longer
        data[:CHUNK] + b"\xff" + data[CHUNK + 1 :],  # as long, one byte differs
        data[:-1] + b"\x00",  # the last byte
    ):
        assert not holds(path, other)
    assert not holds(tmp_path / "missing", data) and holds(tmp_path / "missing", b"")


def test_write_atomic_refuses_when_the_file_changed(tmp_path: Path) -> None:
    path = tmp_path / "tasks.toml"
    path.write_text("edited by a human\n")
    assert not write_atomic(path, "ours\n", "what we read\n")
    assert path.read_text() == "edited by a human\n"
    assert not write_atomic(path, "ours\n", "")  # we read "missing", it now exists
    assert write_atomic(path, "ours\n", None)  # no check asked for
    assert path.read_text() == "ours\n"
    assert os.listdir(tmp_path) == ["tasks.toml"]


def test_write_atomic_replaces_a_symlinks_target(tmp_path: Path) -> None:
    target = tmp_path / "real.toml"
    target.write_text("old\n")
    link = tmp_path / "tasks.toml"
    link.symlink_to(target)
    assert write_atomic(link, "new\n", "old\n")
    assert link.is_symlink()
    assert target.read_text() == "new\n"


def test_read_render_write_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "tasks.toml"
    path.write_text(SAMPLE)
    plan = read_plan(path)
    text = render_plan(plan, [AssignId(2, "no-id-yet")])
    assert write_atomic(path, text, plan.text)
    assert read_plan(path).entries[2].plan_id == "no-id-yet"
    assert not write_atomic(path, text, plan.text)  # plan.text is stale now


def parsed_or_problems_afresh(text: str) -> Plan | list[str]:
    try:
        return _parse_whole(PATH, text)
    except PlanError as error:
        return error.problems


def parsed_or_problems(text: str, previous: Plan | None = None) -> Plan | list[str]:
    try:
        return parse_plan(PATH, text, previous)
    except PlanError as error:
        return error.problems


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(plan_files(), st.sampled_from(["\n", "\r\n"]), st.booleans(), st.booleans())
def test_parsing_by_segments_gives_exactly_what_a_whole_parse_gives(
    plan_file: tuple[str, list[str]], newline: str, trouble: bool, chunked: bool
) -> None:
    """`chunked`: entries parsed CHUNK_ENTRIES at a time (as a cold read of a big plan does),
    or one at a time."""
    text = plan_file[0].replace("\n", newline)
    if trouble:  # what must send it back to a whole parse: a string spanning lines, a header
        text += 'notes = """\n[[tasks]]\n"""\n' if "[[tasks]]" in text else "[other]\nx = 1\n"
    try:
        whole: Plan | list[str] = _parse_whole(PATH, text)
    except PlanError as error:
        whole = error.problems
    with patch.object(read, "CHUNK_ENTRIES", read.CHUNK_ENTRIES if chunked else 1):
        assert parsed_or_problems(text) == whole


def text_edits() -> st.SearchStrategy[tuple[int, int, str]]:
    """(start, length, replacement), positions as fractions of the text's length (‰)."""
    pieces = st.sampled_from(
        ["", "\n", "x", "[[tasks]]\n", 'id = "t1"\n', 'description = "d"\n', "# c\n",
         '[[tasks]]\ndescription = "new"\n', 'parent = "t0"\n', "[meta]\n", '"', "\n\n"]
    )  # fmt: skip
    return st.tuples(st.integers(0, 1000), st.integers(0, 60), pieces)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(plan_files(), st.lists(text_edits(), min_size=1, max_size=4))
def test_a_reparse_from_the_previous_plan_equals_a_parse_from_scratch(
    plan_file: tuple[str, list[str]], edits: list[tuple[int, int, str]]
) -> None:
    """Whatever the edit (inside an entry, across headers, in the preamble, breaking the
    file), reading it with the previous plan in hand gives what a fresh read gives."""
    previous = parsed_or_problems(plan_file[0])
    text = plan_file[0]
    for where, length, replacement in edits:
        start = len(text) * where // 1000
        text = text[:start] + replacement + text[start + length :]
        fresh = parsed_or_problems(text)
        if isinstance(previous, Plan) and where % 2:
            previous.index_of  # noqa: B018 (asked for: the next plan's is then derived from it)
        again = parsed_or_problems(text, previous if isinstance(previous, Plan) else None)
        assert again == fresh
        if isinstance(again, Plan) and isinstance(fresh, Plan):
            assert (again.layout is None) == (fresh.layout is None)
            if again.layout and fresh.layout:
                assert again.layout.starts == fresh.layout.starts
                assert list(again.layout.tables) == list(fresh.layout.tables)
            assert again.by_id == {e.plan_id: e for e in fresh.entries if e.plan_id}
            indexes = {e.plan_id: n for n, e in enumerate(fresh.entries) if e.plan_id}
            assert again.index_of == indexes
            previous = again


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(plan_files(), st.data())
def test_rendering_windows_gives_what_rendering_the_whole_text_gives(
    plan_file: tuple[str, list[str]], data: st.DataObject
) -> None:
    """The windowed render is the line-based render of the whole file, applied locally."""
    plan = plan_of(plan_file[0])
    if plan.layout is None:
        return
    ids = [e.plan_id for e in plan.entries if e.plan_id]
    edits: list[FileEdit] = []
    for plan_id in data.draw(st.lists(st.sampled_from(ids), unique=True) if ids else st.just([])):
        if data.draw(st.booleans()):
            edits.append(RemoveEntry(plan_id))
        else:
            edits.append(UpdateEntry(plan_id, data.draw(records)))
    if data.draw(st.booleans()):
        edits.append(AddEntry("added", data.draw(records)))
    outcome = _resolve(plan, edits)
    expected = {
        n: {k: v for k, v in {**plan.layout.tables[n], **c}.items() if v is not None}
        for n, c in outcome.changes.items()
    }
    text = plan.text
    lines = text.split("\n")[: -1 if text.endswith("\n") else None]
    window = _Window(text, range(len(_split(lines))), True, text.endswith("\n"))
    carriage = "\r" if "\r\n" in text else ""
    whole = _render_window(window, _Render(plan.layout.tables, outcome, expected, carriage))
    if whole is not None:
        assert render_plan(plan, edits) == whole


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(plan_files(), st.data())
def test_simple_line_edits_equal_tomlkits(
    plan_file: tuple[str, list[str]], data: st.DataObject
) -> None:
    """An entry's changed keys, when they sit on simple lines, are rewritten without tomlkit:
    the text must be exactly what tomlkit makes of it."""
    blocks = [b for b in plan_file[1] if "[tasks." not in b]
    if not blocks:
        return
    block = data.draw(st.sampled_from(blocks))
    table = tomllib.loads(block)["tasks"][0]
    changes = field_changes(table, data.draw(records), data.draw(st.none() | st.just("dev")))
    indent = data.draw(st.sampled_from(["", "  "]))
    simple = edit_simple_lines(block, changes, indent)
    if simple is not None:
        assert simple == _edit_with_tomlkit(block, changes, indent)


def test_a_long_run_of_saves_read_incrementally_equals_a_fresh_read() -> None:
    """A daemon re-reads its plan after every save, each time from the plan read before."""
    text = "".join(f'[[tasks]]\nid = "t{n}"\ndescription = "task {n}"\n\n' for n in range(50))
    plan = plan_of(text)
    for save in range(3_000):
        edited = plan.text.replace(f'"task {save % 50}', f'"task {save % 50}.{save}', 1)
        plan = parse_plan(PATH, edited, previous=plan)
        assert plan.by_id.keys() == {f"t{n}" for n in range(50)}
    assert plan == _parse_whole(PATH, plan.text)


def test_a_plan_with_no_entries_reads_with_a_full_parse_cache() -> None:
    """The cache is pruned to the current plan's segments once it is big; a plan holding none
    used to crash the pruning (a daemon of a town over 1,000 tasks whose file was emptied)."""
    forget_parses()
    many = "".join(f'[[tasks]]\nid = "t{n}"\ndescription = "task {n}"\n\n' for n in range(1_200))
    big = parse_plan(Path("tasks.toml"), many)
    empty = parse_plan(Path("tasks.toml"), '[meta]\ndefault_agent = "dev"\n\n', previous=big)
    assert not empty.entries
    forget_parses()
