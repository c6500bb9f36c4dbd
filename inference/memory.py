"""Keep freed memory in the process while samplers run (glibc's ``malloc`` on Linux).

A sampler's step allocates and frees the same tensors over and over: a NUTS leaf on 64 chains
of a 601-parameter BNN makes a dozen ``(64, 601)`` tensors (150 kB each) and the transition
two checkpoint buffers of a megabyte. glibc serves blocks above its mmap threshold (128 kB at
first) with fresh pages from the kernel and gives the top of the heap back to the kernel once
more than its trim threshold is free there, so such a loop keeps mapping, faulting in, zeroing
and unmapping the same memory. Measured on the CPU machine (``benchmarks/RESULTS.md``): the
first 64-chain compiled NUTS run in a process took 59 s, the same run repeated in that process
35 s, and the first run with the thresholds below 31 s.

:func:`keep_freed_memory` raises the thresholds once per process, at the start of the first
run (:func:`~bayesdl.inference.driver.run`): blocks up to 32 MiB come from the heap, up to
512 MiB of free memory at its top stays mapped, and the heap grows 64 MiB at a time. Freed
memory is then reused instead of returned to the kernel; the process's resident size stays
near its peak. ``BAYESDL_MALLOPT=0`` leaves glibc's defaults alone. Elsewhere (macOS, Windows,
musl) nothing is done.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

__all__ = ["keep_freed_memory"]

#: glibc's ``mallopt`` parameters (malloc.h).
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3
_MIB = 1 << 20
#: The values set: ``(parameter, bytes)``.
SETTINGS = (
    (_M_MMAP_THRESHOLD, 32 * _MIB),
    (_M_TRIM_THRESHOLD, 512 * _MIB),
    (_M_TOP_PAD, 64 * _MIB),
)

_applied: bool | None = None


def keep_freed_memory() -> bool:
    """Raise glibc's mmap and trim thresholds, once per process; whether they are raised.

    Returns ``False`` (and changes nothing) off Linux, without glibc's ``mallopt``, or with the
    environment variable ``BAYESDL_MALLOPT=0``.
    """
    global _applied
    if _applied is None:
        _applied = _apply()
    return _applied


def _apply() -> bool:
    if not sys.platform.startswith("linux") or os.environ.get("BAYESDL_MALLOPT") == "0":
        return False
    try:
        mallopt = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return all(mallopt(parameter, value) == 1 for parameter, value in SETTINGS)
