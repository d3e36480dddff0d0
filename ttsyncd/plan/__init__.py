"""The plan file (tasks.toml): read fast, checked with file:line, edited in place keeping its
style, written atomically.

- model: the plan and its entries, the edits a pull makes
- grammar: the TOML line grammar reading and rendering share
- read: text -> Plan, whole or by `[[tasks]]` segments (the incremental re-read), pure
- reader: the file's bytes and text, and the PlanReader a daemon keeps (parse on change, echoes)
- validate: field and graph problems with file:line
- render: Plan + edits -> text, untouched bytes kept; entry_text: one entry's line edits;
  render_tomlkit: the tomlkit fallback
"""

from ttsyncd.fsutil import write_atomic
from ttsyncd.plan.model import (
    AddEntry,
    AssignId,
    FileEdit,
    Plan,
    PlanEntry,
    RemoveEntry,
    UpdateEntry,
    new_entry_id,
)
from ttsyncd.plan.read import forget_parses, parse_plan
from ttsyncd.plan.reader import PlanReader, read_plan, read_text
from ttsyncd.plan.render import Rendered, render_edits, render_plan
from ttsyncd.plan.validate import parent_cycles

__all__ = [
    "AddEntry",
    "AssignId",
    "FileEdit",
    "Plan",
    "PlanEntry",
    "PlanReader",
    "RemoveEntry",
    "Rendered",
    "UpdateEntry",
    "forget_parses",
    "new_entry_id",
    "parent_cycles",
    "parse_plan",
    "read_plan",
    "read_text",
    "render_edits",
    "render_plan",
    "write_atomic",
]
