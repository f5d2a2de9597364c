"""New memory straight from the kernel: an anonymous, private memory map.

It imports nothing of minilens, so that loading (a GGUF model's widened weights) and the forward
pass's recycled memory (fast/memory.py) both use it.
"""

from __future__ import annotations

import mmap


def anonymous_map(nbytes: int) -> mmap.mmap:
    """nbytes of new memory, zero until written. Private: a forked child gets a copy, never a share
    (Python's default for mmap(-1, ...) on Unix is MAP_SHARED).

    In ordinary 4 KiB pages unless madvise asks for huge ones: the forward pass's recycled memory
    does (fast/memory.py, from HUGE_PAGES_FROM); a GGUF model's widened weights do not
    (loading/gguf_checkpoint.py, GGUFCheckpoint.widen)."""
    if hasattr(mmap, "MAP_PRIVATE"):
        return mmap.mmap(-1, nbytes, flags=mmap.MAP_PRIVATE)
    return mmap.mmap(-1, nbytes)        # Windows: anonymous maps are private to the process
