"""train/host_memory.py: after `keep_freed_memory()`, a large block freed and allocated again is not faulted
in again (the per-step cost it removes from XLA:CPU's temporary buffer); without it, glibc maps it afresh.
Each case runs in its own process, since the setting is process-wide."""

from __future__ import annotations

import subprocess
import sys

import pytest

CHILD = """
import ctypes, resource, sys
from train.host_memory import keep_freed_memory
if sys.argv[1] == "keep":
    assert keep_freed_memory()
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = (ctypes.c_void_p,)
size = 64 << 20
def touch():
    p = libc.malloc(size)
    ctypes.memset(p, 1, size)
    libc.free(p)
touch()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
touch()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _faults(mode: str) -> int:
    run = subprocess.run(
        [sys.executable, "-c", CHILD, mode], capture_output=True, text=True, timeout=120, check=True
    )
    return int(run.stdout.split()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_kept_memory_is_not_faulted_in_again():
    pages = (64 << 20) // 4096
    assert _faults("default") > pages // 2  # glibc's default: a fresh mapping, every page faulted again
    assert _faults("keep") < pages // 20


def test_the_makefile_sets_the_same_allocator_for_the_demo():
    """`make demo` exports the same settings as GLIBC_TUNABLES for its stages that run outside the trainer
    (generation, calibration): one set of values, checked here."""
    from pathlib import Path

    from train.host_memory import M_ARENA_MAX, M_MMAP_MAX, M_TRIM_THRESHOLD, SETTINGS

    line = next(x for x in Path("Makefile").read_text().splitlines() if x.startswith("HOST_MALLOC ?="))
    tunables = dict(kv.split("=") for kv in line.split("GLIBC_TUNABLES=")[1].split(":"))
    names = {M_ARENA_MAX: "glibc.malloc.arena_max", M_MMAP_MAX: "glibc.malloc.mmap_max"}
    names[M_TRIM_THRESHOLD] = "glibc.malloc.trim_threshold"
    assert {names[p]: v for p, v in SETTINGS} == {k: int(v) for k, v in tunables.items()}
