"""Giving memory back to the system after a sync of the whole town.

A whole-town sync of 10,000 tasks builds ~20 MB of short-lived objects (views, merge results,
the state's JSON) beside the ~25 MB the daemon keeps. Freed, most of it stays in the C
allocator's heap, fragmented among the objects kept, and counts in the daemon's RSS until
the next such sync reuses it. glibc's malloc_trim hands the free pages back. Elsewhere (musl,
macOS) there is no such call and this does nothing.
"""

from __future__ import annotations

import ctypes
import functools
from collections.abc import Callable


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    # The process's own symbols, where the C library's are: no search for the library
    # (ctypes.util.find_library runs ldconfig or a compiler in a subprocess).
    try:
        trim: Callable[[int], int] = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return None
    return trim


def release_free_memory() -> bool:
    """Return the free pages of the C heap to the system; False where there is no way to."""
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True
