"""Freed memory kept for reuse on the CPU, so a Langevin step does not page-fault its activations back in.

PyTorch's CPU tensors come from ``malloc``. glibc serves blocks above its mmap threshold (128 KiB at
first, adapting upward as blocks are freed) with fresh ``mmap`` calls and hands freed heap tops back
to the system, so every step of a sampling chain, which frees and reallocates the same few MiB of
activations, touches fresh zeroed pages: measured ~2,000-6,000 minor page faults per step for one
small concept at batch 64 on this project's 2-core CPU, with the chunk threads contending for the
kernel's page-table lock while they fault. Raising the mmap threshold to glibc's maximum and the trim
threshold well above a chain's working set makes a step reuse the memory the previous step freed (~30
faults per step): composed sampling 1.07-1.31x faster (benchmarks/results/speed.md). The cost: the
process keeps up to ``TRIM_THRESHOLD`` of freed memory instead of returning it to the system until it
exits.

Process-wide, applied once, on Linux with glibc only; ``CONCEPTLIB_MALLOC=system`` leaves malloc alone.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

import torch

MALLOC_ENV = "CONCEPTLIB_MALLOC"
MMAP_THRESHOLD = 32 * 2**20
"""glibc's largest allowed mmap threshold (``HEAP_MAX_SIZE / 2`` on 64-bit): a 32-image chunk's
largest activation (4 MiB at 32x32) stays well under it."""
TRIM_THRESHOLD = 1 << 30
"""Freed memory at the top of a heap beyond this goes back to the system."""
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # from glibc's malloc.h
_state: bool | None = None


def keep_freed_memory(device: torch.device) -> bool:
    """On the CPU, ask glibc once to keep freed memory for reuse; True when malloc is so tuned."""
    global _state
    if device.type != "cpu":
        return False
    if _state is None:
        _state = _tune_glibc()
    return _state


def _tune_glibc() -> bool:
    if os.environ.get(MALLOC_ENV, "keep") == "system" or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl and other libcs without glibc's mallopt
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) and mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))
