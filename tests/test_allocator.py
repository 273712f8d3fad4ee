"""ldct/allocator.py: large allocations stay in glibc's heap instead of a fresh mmap each."""

import ctypes
import platform
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

PROBE = """
import ctypes, sys
from ldct.allocator import keep_large_allocations, map_every_allocation

class Mallinfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd",
                "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]

libc = ctypes.CDLL(None)
libc.mallinfo2.restype = Mallinfo2
took = map_every_allocation() if sys.argv[1] == "map" else keep_large_allocations()
before = libc.mallinfo2().hblkhd
block = bytearray(64 << 20)  # one 64 MB allocation, above glibc's default mmap threshold
held = libc.mallinfo2().hblkhd - before
del block
after = libc.mallinfo2().hblkhd - before
freed = bytearray(8 << 20)  # an 8 MB block allocated and freed (glibc's defaults then raise the threshold)
del freed
again = bytearray(8 << 20)
print(int(took), held, after, libc.mallinfo2().hblkhd - before)
"""


def probe(env_value, mode="keep"):
    """(took effect, bytes mapped while a 64 MB block is held, bytes still mapped after its free,
    bytes mapped while an 8 MB block is held after another 8 MB one was freed)."""
    env = {"LDCT_KEEP_HEAP": env_value, "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, env=env, check=True)
    took, mmapped, after, again = out.stdout.split()
    return bool(int(took)), int(mmapped), int(after), int(again)


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc only")
def test_large_blocks_stay_in_the_heap_unless_turned_off():
    assert hasattr(ctypes.CDLL(None), "mallinfo2")
    took, mmapped, _, _ = probe("1")
    assert took and mmapped == 0  # served from the heap
    took, mmapped, after, again = probe("0")
    assert not took and mmapped >= 64 << 20 and after == 0  # glibc's default: its own mmap, unmapped on free
    assert again == 0  # ... but it raises its threshold past a freed mapped block's size


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc only")
def test_measurement_setting_maps_every_large_block_and_returns_it():
    """The benchmark's third setting: a block above 128 KB gets its own mapping, gone on free."""
    took, mmapped, after, again = probe("1", mode="map")
    assert took and mmapped >= 64 << 20 and after == 0
    assert again >= 8 << 20  # the threshold stays fixed: a block of a size freed before is mapped again
