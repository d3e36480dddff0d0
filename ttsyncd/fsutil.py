"""Writing files safely: one atomic replace (temp file beside the target, mode and owner set,
fsync, an optional compare with what was read, rename, directory fsync), used for the plan
(write_atomic) and for ttsyncd's own state (state.write_private).

The compare has no gap. A check followed by a rename leaves one: a save landing between the
two (a thread switch in this process can hold it open for milliseconds) would be renamed
over and lost. So on Linux the new file is swapped in with renameat2(RENAME_EXCHANGE), which
leaves the file it displaced under the temp name, and that file is checked: when it is not
what was read, someone saved meanwhile, and the swap is undone, putting their file back
under the plan's name. Python has no renameat2 (3.11-3.13), hence ctypes; elsewhere, or on
a file system without it, the check-then-rename is the fallback.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import structlog

log = structlog.get_logger("ttsyncd.fsutil")

_AT_FDCWD = -100
_RENAME_EXCHANGE = 2  # linux/fs.h
_renameat2: Callable[..., int] | None
try:
    _renameat2 = ctypes.CDLL(None, use_errno=True).renameat2  # glibc >= 2.28
except (AttributeError, OSError):
    _renameat2 = None


def current_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return b""


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
        if unless_changed_from is None:
            os.replace(temp_name, target)
        elif not swap_in(Path(temp_name), target, data, unless_changed_from):
            return False
    except BaseException:
        Path(temp_name).unlink(missing_ok=True)
        raise
    directory = os.open(target.parent, os.O_RDONLY)  # (the rename itself, made durable)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)
    return True


def exchange(a: Path, b: Path) -> bool:
    """Swap two paths atomically; False where the system or file system cannot."""
    if _renameat2 is None:
        return False
    if _renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP, errno.ENOENT):
        return False  # (ENOENT: `b` does not exist, nothing to swap with)
    raise OSError(code, os.strerror(code), str(b))


def swap_in(temp: Path, target: Path, data: bytes, expected: bytes) -> bool:
    """Put `temp` (holding `data`) at `target` only if `target` holds `expected`; False, and
    `target` as it was, otherwise. `temp` is gone either way."""
    if current_bytes(target) != expected:  # most saves show here, before anything moves
        temp.unlink(missing_ok=True)
        return False
    if not target.exists():  # we read "missing": create it only if it still is
        return link_in(temp, target)
    if not exchange(temp, target):  # no renameat2 here: check-then-rename
        os.replace(temp, target)
        return True
    if temp.read_bytes() == expected:  # what we displaced is what we read: nothing lost
        temp.unlink()
        return True
    # A save landed between the check and the swap: its file is now `temp`. Swap it back.
    exchange(temp, target)
    if temp.read_bytes() != data:
        # Yet another save replaced ours in those microseconds: it is the newest, so it goes
        # to the plan's name, and the one it displaces is kept beside the plan, not deleted.
        exchange(temp, target)
        if temp.read_bytes() != data:
            kept = target.with_name(f"{target.name}.saved-{time.strftime('%Y%m%dT%H%M%S')}")
            os.replace(temp, kept)
            log.warning("two saves raced a pull: the older is kept beside the plan", kept=str(kept))
            return False
    temp.unlink()
    return False


def link_in(temp: Path, target: Path) -> bool:
    """`temp` at `target` unless something is there by now (a hard link never replaces)."""
    try:
        os.link(temp, target)
    except FileExistsError:
        return False
    except OSError:  # a file system without hard links
        os.replace(temp, target)
        return True
    finally:
        temp.unlink(missing_ok=True)
    return True


def write_atomic(path: Path, text: str, expected_current: str | None) -> bool:
    """Replace the plan file with `text`, keeping its mode and owner; False when it no longer
    holds `expected_current` (changed since it was read: the caller re-merges). Through a
    symlink, the link's target is replaced and the link stays a link."""
    target = Path(os.path.realpath(path))
    try:
        status: os.stat_result | None = target.stat()
    except FileNotFoundError:
        status = None
    return replace_atomically(
        target,
        text.encode("utf-8"),
        mode=status.st_mode & 0o7777 if status else 0o644,
        owner=(status.st_uid, status.st_gid) if status else None,
        unless_changed_from=None if expected_current is None else expected_current.encode(),
    )
