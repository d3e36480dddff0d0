"""The plan file on disk: its bytes read and decoded (file:line for text that is not UTF-8),
and the PlanReader a daemon keeps, which parses again only when the text changed and tells
the echo of its own write from a save. The parse itself is read.py's (text -> Plan, pure).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ttsyncd.errors import PlanError
from ttsyncd.fsutil import holds
from ttsyncd.plan.model import Plan
from ttsyncd.plan.read import parse_plan


def read_plan(path: Path) -> Plan:
    return parse_plan(path, read_text(path))


def read_text(path: Path) -> str:
    """The file's exact text; "" for a missing file."""
    return decoded(path, read_bytes(path))


def read_bytes(path: Path) -> bytes:
    """The file's exact bytes; b"" for a missing file. (Bytes, not read_text: universal
    newlines would turn CRLF into LF and break byte equality with what write_atomic
    compares against.)"""
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return b""


def decoded(path: Path, raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as error:
        line = raw[: error.start].count(b"\n") + 1
        raise PlanError([f"{path}:{line}: not UTF-8 text"]) from None


@dataclass(frozen=True)
class Remembered:
    """What a PlanReader knows of the file: the last plan's bytes, the plan, the text seen."""

    raw: bytes | None
    last: Plan | None
    seen: str | None


class PlanReader:
    """Reads the plan, parsing it again only when its text changed, and then only the entries
    whose text changed (a daemon reads it on every sync, and most syncs come from Redis).

    `seen` is the text last read or written, whichever came last, whether it parsed or not:
    the one text a file event may carry and still be no news. An older text (the daemon's
    write before the user's last save, an undo, a checkout back) is a change like any other.

    `raw` is the last plan's text as bytes, as read or written: a read that finds the file
    holds those bytes (compared a chunk at a time, no copy made) is that plan, without reading
    and decoding 12 MB at 100,000 entries (strict UTF-8 is one text per byte string, so equal
    bytes are equal text), and a write compares the file with it without encoding the text
    again."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.last: Plan | None = None  # the last plan that parsed
        self.raw: bytes | None = None  # self.last.text's bytes
        self.seen: str | None = None

    def read(self) -> Plan:
        last, raw = self.last, self.raw
        if last is not None and raw is not None and holds(self.path, raw):
            self.seen = last.text
            return last
        raw = read_bytes(self.path)
        text = decoded(self.path, raw)
        self.seen = text  # before parsing: a save that fails to parse was seen all the same
        if last is None or last.text != text:
            last = parse_plan(self.path, text, previous=last)
        self.raw, self.last, self.seen = raw, last, last.text  # (in this order: `differs`)
        return last

    def raw_of(self, plan: Plan) -> bytes:
        """`plan.text` as bytes (the last plan's, kept; any other's, encoded)."""
        if plan is self.last and self.raw is not None:
            return self.raw
        return plan.text.encode("utf-8")

    def wrote(self, plan: Plan, raw: bytes | None = None) -> Remembered:
        """The daemon wrote this plan (as `raw`, its text's bytes): its echo is no change,
        and it needs no parse. Returns what was remembered before, for `unwrote`."""
        before = Remembered(self.raw, self.last, self.seen)
        self.raw = raw if raw is not None else plan.text.encode("utf-8")
        self.last, self.seen = plan, plan.text  # (after raw, in this order: `differs`)
        return before

    def unwrote(self, before: Remembered) -> None:
        """The write `wrote` announced did not happen: back to what was remembered."""
        self.raw = before.raw
        self.last, self.seen = before.last, before.seen  # (in this order: `differs`)

    def is_known(self, text: str) -> bool:
        """True when `text` is what was last read or written (the latest of the two): a file
        event with this content is the echo of our own write, or no change at all."""
        return text == self.seen

    def differs(self) -> bool:
        """Whether the file holds another text than the one last read or written: what
        `is_known` says of the file's text, but when that is the last plan's (the echo of our
        own write, most often), the file is compared with its bytes a chunk at a time, not
        read into memory. PlanError: the file is not UTF-8.

        (A daemon asks from another thread than its syncs': `seen` is read first, `raw`
        last, the reverse of the order a sync sets them in, so that a `seen` that is the
        last plan's text comes with that plan's bytes.)"""
        seen, last = self.seen, self.last
        raw = self.raw
        if last is not None and raw is not None and seen is last.text:
            return not holds(self.path, raw)
        return not self.is_known(read_text(self.path))
