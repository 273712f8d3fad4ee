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
from ldct.allocator import keep_large_allocations

class Mallinfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd",
                "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]

libc = ctypes.CDLL(None)
libc.mallinfo2.restype = Mallinfo2
took = keep_large_allocations()
before = libc.mallinfo2().hblkhd
block = bytearray(64 << 20)  # one 64 MB allocation, above glibc's default mmap threshold
print(int(took), libc.mallinfo2().hblkhd - before)
"""


def probe(env_value):
    env = {"LDCT_KEEP_HEAP": env_value, "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, env=env, check=True)
    took, mmapped = out.stdout.split()
    return bool(int(took)), int(mmapped)


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc only")
def test_large_blocks_stay_in_the_heap_unless_turned_off():
    assert hasattr(ctypes.CDLL(None), "mallinfo2")
    took, mmapped = probe("1")
    assert took and mmapped == 0  # served from the heap
    took, mmapped = probe("0")
    assert not took and mmapped >= 64 << 20  # glibc's default: its own mmap
