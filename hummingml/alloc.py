"""What the C allocator keeps in a long-lived model process, bounded.

A model actor allocates and frees hundreds of megabytes per segment (decoded audio, stems, activations). glibc's
malloc keeps freed memory in per-thread arenas (up to 8 per core) and returns it to the system only at the top of
each heap, so an actor's resident memory grows with the number of segments it has seen, not with the one it holds.
:func:`cap_arenas` limits the arenas when the process starts its work, and :func:`release_free_memory` hands the free
pages back after each batch. Both do nothing where the C library is not glibc (they return False).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools

ARENA_MAX = 2  # malloc arenas per process: the model threads share them (more cost memory, not speed, here)
_M_ARENA_MAX = -8  # mallopt's parameter number in glibc's malloc.h


@functools.cache
def _glibc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
    except OSError:
        return None
    return libc if libc is not None and hasattr(libc, "malloc_trim") and hasattr(libc, "mallopt") else None


def cap_arenas(arenas: int = ARENA_MAX) -> bool:
    """Let malloc create at most ``arenas`` arenas from now on (the arenas that exist stay); False without glibc."""
    libc = _glibc()
    return libc is not None and libc.mallopt(_M_ARENA_MAX, arenas) == 1


def release_free_memory() -> bool:
    """Return the free pages of every arena to the system (``malloc_trim(0)``); False without glibc or when none
    could be returned."""
    libc = _glibc()
    return libc is not None and libc.malloc_trim(0) == 1
