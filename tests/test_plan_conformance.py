"""The plan file against tomllib, value form by value form (issue 11): every TOML value form
placed in entries (as keys tinytown ignores), in LF, CRLF and mixed files, with and without a
final newline. Reading agrees with tomllib, or both reject (ttsyncd naming file and line); a
pull that edits an entry leaves a file tomllib reads to exactly the intended values, with
everything outside that entry byte for byte as it was, line endings included."""

from __future__ import annotations

import math
import os
import tomllib
from datetime import datetime
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ttsyncd.errors import PlanError
from ttsyncd.model import Record
from ttsyncd.plan import UpdateEntry, parse_plan, render_plan

PATH = Path("tasks.toml")
EXAMPLES = 1500 if os.environ.get("TTSYNCD_LONG") else 300

# ---------------------------------------------------------------- value forms, as TOML text

ESCAPES = ["\\b", "\\t", "\\n", "\\f", "\\r", '\\"', "\\\\", "\\u00e9", "\\U0001F600", "\\u0041"]
plain_chars = st.text(
    st.characters(blacklist_categories=("Cs", "Cc"), blacklist_characters="\"\\'"),
    max_size=8,
)


@st.composite
def basic_strings(draw: st.DrawFn) -> str:
    parts = draw(st.lists(plain_chars | st.sampled_from(ESCAPES), max_size=4))
    return '"' + "".join(parts) + '"'


@st.composite
def literal_strings(draw: st.DrawFn) -> str:
    return "'" + draw(plain_chars) + "'"


@st.composite
def multiline_basic(draw: st.DrawFn) -> str:
    parts = draw(
        st.lists(
            plain_chars | st.sampled_from([*ESCAPES, "\n", "\\\n   ", "\\\n\n  more", '"', '""']),
            max_size=5,
        )
    )
    body = "".join(parts)
    if body.endswith('"'):
        body += " "
    return '"""' + draw(st.sampled_from(["", "\n"])) + body + '"""'


@st.composite
def multiline_literal(draw: st.DrawFn) -> str:
    body = "".join(
        draw(st.lists(plain_chars | st.sampled_from(["\n", "\\n", "'", "''"]), max_size=5))
    )
    if body.endswith("'"):
        body += " "
    return "'''" + draw(st.sampled_from(["", "\n"])) + body + "'''"


integers = st.sampled_from(
    ["0", "+17", "-5", "1_000", "5_349_221", "0xDEADBEEF", "0xdead_beef", "0o755", "0b1101_0110"]
)
floats = st.sampled_from(
    ["+1.0", "3.1415", "-0.01", "5e+22", "1e06", "-2E-2", "6.626e-34", "224_617.445_991",
     "inf", "+inf", "-inf", "nan", "+nan", "-nan", "0.0", "-0.0"]
)  # fmt: skip
booleans = st.sampled_from(["true", "false"])
datetimes = st.sampled_from(
    ["1979-05-27T07:32:00Z", "1979-05-27T00:32:00-07:00", "1979-05-27T00:32:00.999999+01:30",
     "1979-05-27 07:32:00Z", "1979-05-27T07:32:00", "1979-05-27T00:32:00.5", "1979-05-27",
     "07:32:00", "00:32:00.999999"]
)  # fmt: skip
scalars = (
    basic_strings() | literal_strings() | multiline_basic() | multiline_literal()
    | integers | floats | booleans | datetimes
)  # fmt: skip


@st.composite
def arrays(draw: st.DrawFn, depth: int = 0) -> str:
    inner = scalars if depth >= 1 else scalars | arrays(depth + 1) | inline_tables(depth + 1)
    items = draw(st.lists(inner, max_size=3))
    if draw(st.booleans()):  # multi-line, trailing comma and comments
        body = "".join(
            f"\n  {item},  # c" if draw(st.booleans()) else f"\n  {item}," for item in items
        )
        return "[" + body + "\n]"
    return "[" + ", ".join(items) + "]"


@st.composite
def inline_tables(draw: st.DrawFn, depth: int = 0) -> str:
    names = draw(st.lists(st.sampled_from(["a", "b", '"q k"', "c.d"]), max_size=3, unique=True))
    inner = scalars if depth >= 1 else scalars | arrays(depth + 1)
    return "{" + ", ".join(f"{name} = {draw(inner)}" for name in names) + "}"


values = scalars | arrays() | inline_tables()
keys = st.sampled_from(["x1", "x_2", '"quoted key"', "'literal key'", "dotted.key", "x-3"])


@st.composite
def key_lines(draw: st.DrawFn) -> str:
    space_before = draw(st.sampled_from(["", " ", "\t", " \t"]))
    space_after = draw(st.sampled_from(["", " ", "\t"]))
    comment = draw(st.sampled_from(["", "  # note", "\t#"]))
    return f"{draw(keys)}{space_before}={space_after}{draw(values)}{comment}"


# ---------------------------------------------------------------- plans


@st.composite
def plans(draw: st.DrawFn) -> tuple[str, list[int]]:
    """(the file's text, the offset where each entry's header starts)."""
    count = draw(st.integers(1, 4))
    pieces: list[str] = []
    for n in range(count):
        extra = draw(st.lists(key_lines(), max_size=2, unique_by=lambda line: line.split("=")[0]))
        lines = ["[[tasks]]", f'id = "t{n}"', f'description = "task {n}"', *extra]
        if draw(st.booleans()):
            lines.insert(1, "# about it")
        pieces.append("\n".join(lines) + "\n")
    text = "\n".join(pieces)
    ending = draw(st.sampled_from(["lf", "crlf", "mixed"]))
    if ending != "lf":
        lines = text.split("\n")
        crlf = [ending == "crlf" or draw(st.booleans()) for _ in lines]
        text = "\n".join(line + ("\r" if cr and i < len(lines) - 1 else "")
                         for i, (line, cr) in enumerate(zip(lines, crlf, strict=True)))  # fmt: skip
    if draw(st.booleans()):  # no final newline (or, invalid, a bare CR in its place)
        text = text.rstrip("\r\n") + draw(st.sampled_from(["", "", "\r"]))
    starts = [i for i in range(len(text)) if text.startswith("[[tasks]]", i)
              and (i == 0 or text[i - 1] == "\n")]  # fmt: skip
    return text, starts


def same(a: Any, b: Any) -> bool:
    """The same TOML data, value for value and type for type (nan equal to nan, a date-time's
    offset as well as its instant)."""
    if isinstance(a, float) and isinstance(b, float):
        return a == b or (math.isnan(a) and math.isnan(b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, datetime) and isinstance(b, datetime) and a.utcoffset() != b.utcoffset():
        return False
    return type(a) is type(b) and bool(a == b)


@given(plans())
@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_reading_agrees_with_tomllib(plan: tuple[str, list[int]]) -> None:
    text, _ = plan
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError:
        try:
            parse_plan(PATH, text)
        except PlanError as error:
            assert all(p.startswith("tasks.toml:") for p in error.problems), error.problems
            return
        raise AssertionError("ttsyncd read a file tomllib rejects") from None
    read = parse_plan(PATH, text)
    assert [e.plan_id for e in read.entries] == [t["id"] for t in data["tasks"]]
    assert [e.record.description for e in read.entries] == [t["description"] for t in data["tasks"]]
    if read.layout is not None:  # every value of every entry, as the renderer will keep it
        assert same(list(read.layout.tables), data["tasks"])


@given(plans(), st.data())
@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_a_pull_writes_exactly_the_intended_values_and_nothing_else(
    plan: tuple[str, list[int]], data: st.DataObject
) -> None:
    text, starts = plan
    try:
        original = tomllib.loads(text)["tasks"]
    except tomllib.TOMLDecodeError:
        return  # (the test above: both reject)
    index = data.draw(st.integers(0, len(starts) - 1))
    record = Record(
        data.draw(st.sampled_from([f"task {index}", "new words", 'with "quotes"\tand tab'])),
        status=data.draw(st.sampled_from(["pending", "running", "completed"])),
        result=data.draw(st.none() | st.just("done\nin two lines")),
    )
    new_text = render_plan(parse_plan(PATH, text), [UpdateEntry(f"t{index}", record)])
    produced = tomllib.loads(new_text)["tasks"]
    intended = dict(original[index])
    intended.update(description=record.description)
    intended.pop("status", None)
    intended.pop("result", None)
    if record.status != "pending" or "status" in original[index]:
        intended["status"] = record.status
    if record.result is not None:
        intended["result"] = record.result
    assert same(produced[index], intended), (produced[index], intended)
    assert all(same(produced[i], original[i]) for i in range(len(original)) if i != index)
    # Everything outside the edited entry, byte for byte (line endings included).
    begin = starts[index]
    end = starts[index + 1] if index + 1 < len(starts) else len(text)
    assert new_text.startswith(text[:begin])
    tail = text[end:]
    assert new_text.endswith(tail), (text, new_text)
    parse_plan(PATH, new_text)  # ttsyncd reads back what it wrote
