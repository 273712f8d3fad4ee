"""Keep large CPU tensors' memory in the process heap (glibc), instead of a fresh mmap each time.

glibc serves every allocation above its mmap threshold (at most 32 MB, adapted at run time)
with its own mmap and returns it to the kernel on free, so each new activation of a 512x512
slice (16-64 MB) is paid again in page faults: on a 2-core CPU a 16-channel 3x3 convolution's
forward and backward at 512x512 take twice as long as with the memory kept (measured by
benchmarks/featkpn_speed.py, which runs the reference both ways). Raising the threshold to
1 GiB and never trimming the heap keeps freed memory for the next step; the peak resident
memory is what the largest step needs, as before.

Called at start-up by the CLI (`ldct ...`) and the benchmarks; a no-op outside glibc, or when
LDCT_KEEP_HEAP=0. The memory kept is not all reusable: freed blocks of one size are split for
others, so a 512x512 Feat-KPN step peaks ~390 MB (56 %) above what the computation itself
holds (benchmarks/featkpn_speed.py measures both, the latter with `map_every_allocation`).
"""

from __future__ import annotations

import ctypes
import os

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # mallopt parameters (malloc.h)
MMAP_THRESHOLD_BYTES = 1 << 30


def _set_thresholds(mmap_bytes: int, trim_bytes: int) -> bool:
    """glibc's mmap and trim thresholds (fixed: no longer adapted at run time); True if both
    took effect, False outside glibc (macOS, Windows, musl without mallopt)."""
    try:
        mallopt = ctypes.CDLL(None).mallopt  # the C library the interpreter is linked against
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    return bool(mallopt(_M_MMAP_THRESHOLD, mmap_bytes)) and bool(mallopt(_M_TRIM_THRESHOLD, trim_bytes))


def keep_large_allocations() -> bool:
    """Set glibc's mmap threshold to 1 GiB and turn off heap trimming; True if it took effect."""
    if os.environ.get("LDCT_KEEP_HEAP", "1") == "0":
        return False
    return _set_thresholds(MMAP_THRESHOLD_BYTES, 2**31 - 1)


def map_every_allocation() -> bool:
    """For measurement: every allocation above 128 KB its own mmap, returned to the kernel on
    free (glibc's threshold fixed there, not adapted), so the resident set follows the memory
    the computation holds at each moment, with no allocator's reserve on top. Slow (every new
    tensor is paid in page faults). True if it took effect."""
    return _set_thresholds(128 << 10, 128 << 10)
