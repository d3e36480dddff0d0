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
from io import RawIOBase
from pathlib import Path

import structlog

log = structlog.get_logger("ttsyncd.fsutil")

CHUNK = 1 << 20  # bytes compared at a time

_AT_FDCWD = -100
_RENAME_EXCHANGE = 2  # linux/fs.h
_renameat2: Callable[..., int] | None
try:
    _renameat2 = ctypes.CDLL(None, use_errno=True).renameat2  # glibc >= 2.28
except (AttributeError, OSError):
    _renameat2 = None


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
    except BaseException:
        Path(temp_name).unlink(missing_ok=True)
        raise
    if unless_changed_from is None:
        try:
            os.replace(temp_name, target)
        except BaseException:
            Path(temp_name).unlink(missing_ok=True)
            raise
    # From here the temp name may hold someone's save (what the swap displaced): only
    # replace_unless_changed may delete it, once it knows it is not.
    elif not replace_unless_changed(Path(temp_name), target, data, unless_changed_from):
        return False
    directory = os.open(target.parent, os.O_RDONLY)  # (the rename itself, made durable)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)
    return True


def replace_unless_changed(temp: Path, target: Path, data: bytes, expected: bytes) -> bool:
    """Put `temp` (holding `data`) at `target` only if `target` holds `expected`; False, and
    `target` as it was, otherwise. `temp` is gone either way. The old file stays open over
    the swap: freeing a big file's pages (~3 ms for 12 MB) then happens at the close, after
    the new text is in place."""
    try:
        current = open(target, "rb", buffering=0)  # noqa: SIM115 (closed after the swap)
    except FileNotFoundError:
        if expected:
            temp.unlink(missing_ok=True)
            return False
        return link_in(temp, target)  # we read "missing": create it only if it still is
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    with current:
        try:
            unchanged = file_holds(current, expected)  # most saves show here, nothing moved
            swapped = unchanged and exchange(temp, target)
            if unchanged and not swapped:  # no renameat2 here: check-then-rename
                os.replace(temp, target)
                return True
        except BaseException as error:
            temp.unlink(missing_ok=True)  # (still ours: nothing was swapped)
            if isinstance(error, FileNotFoundError):
                return False  # deleted in the gap: a change the caller merges
            raise
        if not unchanged:
            temp.unlink(missing_ok=True)
            return False
        try:
            return settle_displaced(temp, target, data, expected)
        except BaseException:
            keep_beside(temp, target, data)  # never unlink what may be someone's save
            raise


def settle_displaced(temp: Path, target: Path, data: bytes, expected: bytes) -> bool:
    """After the swap, `temp` names the file displaced from `target`: when it holds what was
    read, the swap stands; else a save landed between the check and the swap, and its file
    goes back to `target` (False)."""
    if holds(temp, expected):  # what we displaced is what we read: nothing lost
        temp.unlink()
        return True
    exchange(temp, target)  # theirs back at the plan's name; ours (normally) at `temp`
    if not holds(temp, data):
        # Yet another save replaced ours in those microseconds: it is the newest, so it goes
        # to the plan's name, and the one it displaces is kept beside the plan.
        exchange(temp, target)
        keep_beside(temp, target, data)
        return False
    temp.unlink()
    return False


def keep_beside(temp: Path, target: Path, data: bytes) -> None:
    """`temp`, unless it holds our own `data` (or is gone), kept as `<plan>.saved-<time>[-n]`
    (a new name each time: a hard link never replaces). Kept too when it cannot be read."""
    with contextlib.suppress(FileNotFoundError):
        try:
            ours = holds(temp, data)
        except OSError:
            ours = False
        if ours:
            temp.unlink()
            return
        stamp = f"{target.name}.saved-{time.strftime('%Y%m%dT%H%M%S')}"
        for n in range(1000):
            kept = target.with_name(stamp if n == 0 else f"{stamp}-{n}")
            try:
                os.link(temp, kept)
            except FileExistsError:
                continue
            temp.unlink()
            log.warning("saves raced a pull: one is kept beside the plan", kept=str(kept))
            return


def exchange(a: Path, b: Path) -> bool:
    """Swap two paths atomically; False where the system or file system cannot."""
    if _renameat2 is None:
        return False
    if _renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
        return False
    raise OSError(code, os.strerror(code), str(b))


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
