"""Writing files safely: an atomic replace (temp file, mode and owner kept, fsync, compare
with what was read, rename, directory fsync).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path


def current_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return b""


def write_atomic(path: Path, text: str, expected_current: str | None) -> bool:
    # Follow a symlink: replace its target, not the link.
    target = Path(os.path.realpath(path))
    try:
        status: os.stat_result | None = target.stat()
    except FileNotFoundError:
        status = None
    descriptor, temp_name = tempfile.mkstemp(
        dir=target.parent, prefix=f".{target.name}.", suffix=".tmp"
    )
    try:
        with os.fdopen(descriptor, "wb") as temp:
            temp.write(text.encode("utf-8"))
            temp.flush()
            os.fchmod(temp.fileno(), status.st_mode & 0o7777 if status else 0o644)
            if status and (status.st_uid, status.st_gid) != (os.geteuid(), os.getegid()):
                # A daemon running as root must not leave the user a root-owned file.
                with contextlib.suppress(PermissionError):
                    os.fchown(temp.fileno(), status.st_uid, status.st_gid)
            os.fsync(temp.fileno())
        # Compare as late as possible, with the new text already on disk: the window in
        # which someone's save could land between the check and the rename is a read long.
        if expected_current is not None and current_bytes(target) != expected_current.encode():
            Path(temp_name).unlink(missing_ok=True)
            return False  # changed since it was read: the caller re-merges
        os.replace(temp_name, target)
    except BaseException:
        Path(temp_name).unlink(missing_ok=True)
        raise
    directory = os.open(target.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)
    return True
