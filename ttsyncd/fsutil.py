"""Writing files safely: one atomic replace (temp file beside the target, mode and owner set,
fsync, an optional compare with what was read, rename, directory fsync), used for the plan
(write_atomic) and for ttsyncd's own state (state.write_private).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path


def opened_bytes(path: Path) -> tuple[int | None, bytes]:
    """The file's bytes (b"" when missing), read through a descriptor left open for the
    caller to close (None when missing)."""
    try:
        descriptor = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None, b""
    try:
        with open(descriptor, "rb", closefd=False) as current:
            return descriptor, current.read()
    except BaseException:
        os.close(descriptor)
        raise


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
            # (The old file stays open over the rename: freeing a big file's pages, ~3 ms
            # for 12 MB, then happens at the close, after the new text is in place.)
            old_file, current = opened_bytes(target)
            try:
                if current != unless_changed_from:
                    Path(temp_name).unlink(missing_ok=True)
                    return False
                os.replace(temp_name, target)
            finally:
                if old_file is not None:
                    os.close(old_file)
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
