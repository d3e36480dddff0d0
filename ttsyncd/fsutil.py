"""Writing files safely: one atomic replace (temp file beside the target, mode and owner set,
fsync, an optional compare with what was read, rename, directory fsync), used for the plan
(write_atomic) and for ttsyncd's own state (state.write_private).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from io import RawIOBase
from pathlib import Path

CHUNK = 1 << 20  # bytes compared at a time


def holds(path: Path, expected: bytes) -> bool:
    """Whether the file at `path` holds exactly `expected` (a missing file holds b"")."""
    try:
        with open(path, "rb", buffering=0) as current:
            return file_holds(current, expected)
    except FileNotFoundError:
        return expected == b""


def file_holds(current: RawIOBase, expected: bytes) -> bool:
    """Whether the open file (read from its start) holds exactly `expected`: compared a chunk
    at a time through one small buffer, so that no copy of a big file is made (a fresh
    12 MB buffer costs ~3,000 page faults, ~5 ms, in a daemon holding a big town)."""
    if os.fstat(current.fileno()).st_size != len(expected):
        return False  # (a file that grows meanwhile is caught below)
    expected_view = memoryview(expected)
    buffer = bytearray(CHUNK)
    position = 0
    while count := current.readinto(buffer):
        if position + count > len(expected):
            return False
        # (bytearray == memoryview compares with memcmp; memoryview == memoryview does not)
        chunk = buffer if count == CHUNK else buffer[:count]
        if chunk != expected_view[position : position + count]:
            return False
        position += count
    return position == len(expected)


def replace_atomically(
    target: Path,
    data: bytes,
    *,
    mode: int,
    owner: tuple[int, int] | None = None,
    unless_changed_from: bytes | None = None,
) -> bool:
    """Replace `target` with `data` so that a reader, or a crash, sees the old bytes or the
    new, never a mix; durable once it returns True. `owner` (uid, gid) is given to the new file
    where the process may. With `unless_changed_from`, nothing is replaced (False) when the
    target no longer holds those bytes."""
    descriptor, temp_name = tempfile.mkstemp(
        dir=target.parent, prefix=f".{target.name}.", suffix=".tmp"
    )
    try:
        with os.fdopen(descriptor, "wb") as temp:
            temp.write(data)
            temp.flush()
            os.fchmod(temp.fileno(), mode)
            if owner is not None and owner != (os.geteuid(), os.getegid()):
                # A daemon running as root must not leave the user a root-owned file.
                with contextlib.suppress(PermissionError):
                    os.fchown(temp.fileno(), *owner)
            os.fsync(temp.fileno())
        # Compare as late as possible, with the new bytes already on disk: the window in
        # which someone's save could land between the check and the rename is a read long.
        if unless_changed_from is not None:
            if not replace_unless_changed(temp_name, target, unless_changed_from):
                Path(temp_name).unlink(missing_ok=True)
                return False
        else:
            os.replace(temp_name, target)
    except BaseException:
        Path(temp_name).unlink(missing_ok=True)
        raise
    directory = os.open(target.parent, os.O_RDONLY)  # (the rename itself, made durable)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)
    return True


def replace_unless_changed(temp_name: str, target: Path, expected: bytes) -> bool:
    """Rename `temp_name` over `target` if `target` holds `expected`; False (nothing done)
    if not. The old file stays open over the rename: freeing a big file's pages (~3 ms for
    12 MB) then happens at the close, after the new text is in place."""
    try:
        current = open(target, "rb", buffering=0)  # noqa: SIM115 (closed after the rename)
    except FileNotFoundError:
        if expected:
            return False
        os.replace(temp_name, target)
        return True
    with current:
        if not file_holds(current, expected):
            return False
        os.replace(temp_name, target)
        return True


def write_atomic(path: Path, text: str | bytes, expected_current: str | bytes | None) -> bool:
    """Replace the plan file with `text`, keeping its mode and owner; False when it no longer
    holds `expected_current` (changed since it was read: the caller re-merges). Through a
    symlink, the link's target is replaced and the link stays a link. (Either may be given as
    its UTF-8 bytes: a big plan's are not encoded again.)"""
    target = Path(os.path.realpath(path))
    try:
        status: os.stat_result | None = target.stat()
    except FileNotFoundError:
        status = None
    return replace_atomically(
        target,
        utf8(text),
        mode=status.st_mode & 0o7777 if status else 0o644,
        owner=(status.st_uid, status.st_gid) if status else None,
        unless_changed_from=None if expected_current is None else utf8(expected_current),
    )


def utf8(text: str | bytes) -> bytes:
    return text if isinstance(text, bytes) else text.encode("utf-8")
