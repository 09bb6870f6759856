"""glibc's allocator set to keep freed memory in the process (docs/train.md, "Host memory allocator").

XLA:CPU allocates a large temporary buffer per step and frees it at the end; with glibc's defaults an
allocation of that size is a fresh `mmap`, so every step faults its pages in again (SmolLM2 FT ~285k
minor faults per step; the `tiny` preset's step 50 → 28 ms without them). `keep_freed_memory()` makes the
same settings as GLIBC_TUNABLES=glibc.malloc.arena_max=1:glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=...
through `mallopt(3)`, in process: large blocks come from the heap and freed ones are kept for the next step.
The process then keeps its peak memory until it exits. `train.loop.run` calls it on CPU when
`train.keep_freed_memory` is set (the default); it changes speed and memory, not results.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools

from absl import logging

# mallopt(3) parameters (glibc's malloc.h)
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
M_ARENA_MAX = -8
SETTINGS = ((M_ARENA_MAX, 1), (M_MMAP_MAX, 0), (M_TRIM_THRESHOLD, 2**31 - 1))


@functools.cache
def keep_freed_memory() -> bool:
    """Applies SETTINGS once per process; False (with a warning) where the C library has no mallopt or
    refuses one of them (not glibc)."""
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    mallopt = getattr(libc, "mallopt", None)
    if mallopt is None:
        logging.warning("keep_freed_memory: this C library has no mallopt; allocator left as it is")
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    ok = all(mallopt(param, value) == 1 for param, value in SETTINGS)
    if not ok:
        logging.warning("keep_freed_memory: mallopt refused a setting; allocator only partly changed")
    return ok
