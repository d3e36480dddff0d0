"""The reader chosen by measurement (issue 11): toml_rs, held to TOML 1.0, with tomllib for
errors. What it must not change: it reads exactly what tomllib reads (the conformance tests),
refuses what tomllib refuses, never crashes the process, and the fast validity check never
lets through an entry the exact check would refuse."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ttsyncd.errors import PlanError
from ttsyncd.plan import parse_plan
from ttsyncd.plan.validate import _field_problems, fields_look_valid

PATH = Path("tasks.toml")
ENTRY = '[[tasks]]\nid = "a"\ndescription = "first"\n\n'


@pytest.mark.parametrize(
    "value",
    [
        '"\\e"',  # escape for ESC
        '"\\x41"',  # two-digit hex escape
        "{ x = 1,\n y = 2 }",  # newline in an inline table
        "{ x = 1, }",  # trailing comma in an inline table
        "12:30",  # a time without seconds
        "1979-05-27T07:32Z",  # a date-time without seconds
    ],
)
def test_toml_1_1_additions_are_refused_as_tomllib_refuses_them(value: str) -> None:
    """toml_rs reads TOML 1.1 unless told otherwise; tomllib (and so tasks.toml) is TOML 1.0."""
    text = ENTRY + f'[[tasks]]\nid = "b"\ndescription = "second"\nextra = {value}\n'
    with pytest.raises(PlanError) as error:
        parse_plan(PATH, text)
    assert error.value.problems[0].startswith("tasks.toml:8: invalid TOML"), error.value.problems


def test_a_byte_order_mark_is_refused_as_tomllib_refuses_it() -> None:
    with pytest.raises(PlanError) as error:
        parse_plan(PATH, "\ufeff" + ENTRY)
    assert error.value.problems[0].startswith("tasks.toml:1: invalid TOML")


@pytest.mark.parametrize("entries", [1, 2_000])
def test_values_nested_thousands_deep_are_an_error_not_a_crash(entries: int) -> None:
    """toml_rs recurses once per level and kills the process (SIGSEGV) past ~6,000 levels;
    such a file must get the same clear error tomllib gives, alone or in a big plan (which
    the reader parses in chunks). In a child process, so a crash shows as one."""
    script = (
        "import sys\n"
        "from pathlib import Path\n"
        "from ttsyncd.errors import PlanError\n"
        "from ttsyncd.plan import parse_plan\n"
        "text = sys.stdin.read()\n"
        "try:\n"
        "    parse_plan(Path('tasks.toml'), text)\n"
        "except PlanError as error:\n"
        "    print(error.problems[0])\n"
    )
    many = "".join(f'[[tasks]]\nid = "t{n}"\ndescription = "task {n}"\n\n' for n in range(entries))
    deep = f'[[tasks]]\nid = "deep"\ndescription = "d"\nx = {"[" * 20_000}{"]" * 20_000}\n'
    done = subprocess.run(
        [sys.executable, "-c", script],
        input=many + deep,
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr[-500:]
    line = entries * 4 + 4
    assert done.stdout.startswith(f"tasks.toml:{line}: invalid TOML: values nested too deeply")


def test_an_edit_reparses_only_what_changed_and_keeps_the_other_entries_objects() -> None:
    """A daemon tells what changed by identity: after an edit of one entry, every other entry
    (the one just before the edit too, which is read again) is the same object."""
    text = "".join(f'[[tasks]]\nid = "t{n}"\ndescription = "task {n}"\n\n' for n in range(600))
    before = parse_plan(PATH, text)
    after = parse_plan(PATH, text.replace('"task 300"', '"task 300, edited"'), previous=before)
    changed = [n for n, (a, b) in enumerate(zip(before.entries, after.entries, strict=True))
               if a is not b]  # fmt: skip
    assert changed == [300]
    assert after.entries[300].record.description == "task 300, edited"
    assert after.edited_since(before) == {"t300"}


toml_values = st.one_of(
    st.text(max_size=6),
    st.sampled_from(["pending", "running", "done", "", "plan:x", "plan:"]),
    st.integers(),
    st.booleans(),
    st.floats(allow_nan=True),
    st.lists(
        st.one_of(st.text(max_size=6), st.sampled_from(["plan:x", "a\nplan:y"]), st.integers()),
        max_size=3,
    ),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
)
keys = st.sampled_from(["id", "description", "status", "agent", "tags", "parent", "result", "x"])


@settings(max_examples=2_000, deadline=None)
@given(st.dictionaries(keys, toml_values, max_size=7))
def test_the_fast_validity_check_never_accepts_what_the_exact_check_refuses(
    table: dict[str, object],
) -> None:
    if fields_look_valid(table):
        assert _field_problems(table, 0, None) == []


def test_a_reread_derives_index_of_from_the_plan_before() -> None:
    """A pull asks for index_of on every sync; a re-read whose entry count is unchanged
    derives it from the previous plan's (a copy, not ~35 ms of building at 100,000 entries),
    and it must equal one built anew: for an edit, an entry given its id, a renamed id."""
    text = "".join(f'[[tasks]]\nid = "t{n}"\ndescription = "task {n}"\n\n' for n in range(600))
    text += '[[tasks]]\ndescription = "no id yet"\n'
    plan = parse_plan(PATH, text)
    for before, after in [
        ('"task 300"', '"task 300, edited"'),
        ('description = "no id yet"', 'id = "late"\ndescription = "no id yet"'),
        ('id = "t7"', 'id = "seven"'),
    ]:
        plan.index_of  # noqa: B018 (asked for, as a pull does)
        edited = parse_plan(PATH, plan.text.replace(before, after), previous=plan)
        assert "index_of" in vars(edited)  # derived, not built when asked
        fresh = parse_plan(PATH, edited.text)
        assert edited.index_of == fresh.index_of
        # The previous plan's maps were taken over (changed in place): it builds its own
        # again when asked, from its entries.
        assert "by_id" not in vars(plan) and "index_of" not in vars(plan)
        before = parse_plan(PATH, plan.text)
        assert plan.by_id == before.by_id and plan.index_of == before.index_of
        plan = edited
