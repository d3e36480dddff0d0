"""The tomlkit fallback of rendering: an entry whose changed keys are not on plain lines, and
layouts the line edits do not handle (inline `tasks = [...]`, `[tasks.sub]` tables,
multi-line strings holding `[[tasks]]`), edited as a whole tomlkit document and checked.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from typing import Any

import tomlkit
from tomlkit.container import Container
from tomlkit.items import AoT, Array, Comment, InlineTable, Item, Table, Whitespace

from ttsyncd.errors import PlanError
from ttsyncd.plan.grammar import TomlData, _same
from ttsyncd.plan.model import Plan, _Outcome


def _edit_with_tomlkit(segment_text: str, changes: Mapping[str, Any], indent: str) -> str:
    document = tomlkit.parse(segment_text)
    table = document["tasks"][0]
    for key, value in changes.items():
        if value is None:
            del table[key]
        elif key in table:
            table[key] = value  # tomlkit keeps the key's place and inline comment
        else:
            item = tomlkit.item(value)
            item.trivia.indent = indent
            table.append(key, item)
    return tomlkit.dumps(document)


def _render_whole_document(
    plan: Plan, data: TomlData, outcome: _Outcome, expected: Mapping[int, TomlData]
) -> str:
    # tomlkit glues an appended table onto a last line that lacks its newline.
    document = tomlkit.parse(plan.text if plan.text.endswith("\n") else plan.text + "\n")
    tasks: Any = document.get("tasks")  # an AoT, or an Array of inline tables
    for index, changes in outcome.changes.items():
        _edit_table(tasks[index], changes)
    for index in sorted(outcome.removed, reverse=True):
        _remove_table(document, tasks, index)
    if outcome.removed and tasks is not None and not len(tasks) and not outcome.added:
        del document["tasks"]  # the last entry went: no `tasks = []` in its place
        tasks = None
    for entry in outcome.added:
        if tasks is None:
            tasks = tomlkit.aot()
            document.append("tasks", tasks)
        new_table = tomlkit.inline_table() if isinstance(tasks, Array) else tomlkit.table()
        new_table.update(entry)
        if isinstance(new_table, Table) and document.body:
            new_table.trivia.indent = "\n"  # one blank line before it, as on the fast path
        tasks.append(new_table)
    new_text = tomlkit.dumps(document)
    if outcome.removed:
        new_text = _blank_lines_as_in(plan.text, new_text)
    if not plan.text.endswith("\n") and new_text.endswith("\n"):
        new_text = new_text[:-1].removesuffix("\r")  # the newline added for parsing above

    raw_entries: list[TomlData] = data.get("tasks", [])
    intended = {
        **data,
        "tasks": [
            expected.get(index, raw)
            for index, raw in enumerate(raw_entries)
            if index not in outcome.removed
        ]
        + list(outcome.added),
    }
    try:
        produced = tomllib.loads(new_text)
    except tomllib.TOMLDecodeError:
        produced = {}
    if not _same({"tasks": [], **produced}, {"tasks": [], **intended}):
        raise PlanError([f"{plan.path}:1: cannot apply the edits to this file's layout"])
    return new_text


def _blank_lines_as_in(original: str, text: str) -> str:
    """`text` (tomlkit's, after removing entries) with no run of blank lines longer than the
    original's longest, and no more at its start or end than the original had: a removed
    entry leaves no double blank line behind. (The check after it holds every value.)"""
    old = original.split("\n")
    longest = max([1, *_blank_runs(old)])
    old_lead, old_tail = _edge_blanks(old)
    out: list[str] = []
    run = 0
    for line in text.split("\n"):
        run = run + 1 if not line.strip() else 0
        if run <= longest:
            out.append(line)
    lead, tail = _edge_blanks(out)
    del out[: max(0, lead - old_lead)]
    del out[len(out) - max(0, tail - old_tail) :]
    return "\n".join(out)


def _blank_runs(lines: list[str]) -> list[int]:
    """At each line, how many blank lines end there (0 on a line that is not blank)."""
    runs = [0]
    for line in lines:
        runs.append(runs[-1] + 1 if not line.strip() else 0)
    return runs


def _edge_blanks(lines: list[str]) -> tuple[int, int]:
    """How many blank lines (a final "" for the last newline included) start and end them."""
    lead = next((n for n, line in enumerate(lines) if line.strip()), len(lines))
    tail = next((n for n, line in enumerate(reversed(lines)) if line.strip()), len(lines))
    return lead, tail


def _edit_table(table: Table | InlineTable, changes: Mapping[str, Any]) -> None:
    body = table.value.body
    for key, value in changes.items():
        if value is None:
            del table[key]
        elif key in table or not body:
            table[key] = value
        elif key == "id":
            _insert_first(table, key, value)
        elif isinstance(table, InlineTable):
            table[key] = value
        else:
            # Plain assignment would land after trailing comments that visually belong to
            # the next [[tasks]] (a tomlkit pitfall): insert after the last key instead.
            last_key = max(
                (n for n, (k, item) in enumerate(body) if k and _is_value(item)),
                default=len(body) - 1,
            )
            if last_key + 1 < len(body):
                table.value._insert_at(last_key + 1, key, value)
            else:
                table[key] = value


def _insert_first(table: Table | InlineTable, key: str, value: Any) -> None:
    body = table.value.body
    position, first = next((n, item) for n, (k, item) in enumerate(body) if k is not None)
    table.value._insert_at(position, key, value)
    body[position][1].trivia.indent = first.trivia.indent
    if isinstance(table, InlineTable):
        first.trivia.indent = " "  # after the comma tomlkit puts between them


def _is_value(item: Item) -> bool:
    return not isinstance(item, (Table, AoT, Comment, Whitespace))


def _remove_table(document: tomlkit.TOMLDocument, tasks: AoT | Array, index: int) -> None:
    if not isinstance(tasks, AoT):
        del tasks[index]
        return
    # tomlkit keeps the comments above a [[tasks]] header at the end of the previous table,
    # so deleting a table would take the next entry's comments with it: carry them over.
    carried = _trailing_trivia(_last_container(tasks[index]))
    carried_text = "".join(item.as_string() for _, item in carried)
    if index > 0:
        previous = _last_container(tasks[index - 1])
        own_comments = _trailing_trivia(previous)
        while own_comments and isinstance(own_comments.pop()[1], Comment):
            previous.body.pop()  # the removed entry's own comments go with it
    del tasks[index]
    if index < len(tasks):
        # A table's indent is rendered right before its `[[tasks]]`: where its comments were.
        tasks[index].trivia.indent = carried_text + tasks[index].trivia.indent
    elif index > 0:
        _last_container(tasks[index - 1]).body.extend(carried)
    elif carried_text:
        document.add(Whitespace(carried_text))  # verbatim text; Whitespace renders as is


def _last_container(table: Table) -> Container:
    """The container whose end is rendered last for this table (its last sub-table's)."""
    container = table.value
    while container.body and isinstance(container.body[-1][1], Table):
        container = container.body[-1][1].value
    return container


def _trailing_trivia(container: Container) -> list[tuple[Any, Item]]:
    body = container.body
    start = len(body)
    while start > 0 and isinstance(body[start - 1][1], (Comment, Whitespace)):
        start -= 1
    return body[start:]
