"""The allocator bounds of the model processes (glibc only): freed heap memory goes back to the system."""

from __future__ import annotations

import subprocess
import sys

import pytest

from hummingml.alloc import _glibc

CHILD = """
import os
import numpy as np
from hummingml.alloc import cap_arenas, release_free_memory

def rss_mib():
    return int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20

assert cap_arenas()
blocks = [np.ones(8_000) for _ in range(4_000)]  # 64 KB each, from the heap (under the mmap threshold): 250 MiB
last = blocks.pop()  # still in use, at the top of the heap: the freed blocks below cannot shrink it
del blocks
before = rss_mib()
released = release_free_memory()
print(before, rss_mib(), released)
"""


@pytest.mark.skipif(_glibc() is None, reason="malloc_trim and mallopt are glibc's")
def test_freed_heap_memory_goes_back_to_the_system() -> None:
    out = subprocess.run([sys.executable, "-c", CHILD], check=True, capture_output=True, text=True).stdout.split()
    before, after, released = float(out[0]), float(out[1]), out[2] == "True"
    assert released and before - after > 200, (before, after)  # of the 250 MiB freed
