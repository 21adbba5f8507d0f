"""The allocator setting (tlsproxy/allocator.py) does what it claims, in a fresh process each time:
uvloop-sized 256 KiB buffers, allocated and freed in waves between small long-lived objects (connections
coming and going), leave the heap holding the memory with glibc's dynamic mmap threshold, and give it
back with the threshold fixed."""

from __future__ import annotations

import subprocess
import sys

from tlsproxy import allocator

WAVES = r"""
import ctypes, sys
from tlsproxy import allocator
if sys.argv[1] == "tuned":
    assert allocator.tune()
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
def rss_kib():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
keep = []
for wave in range(4):
    buffers = []
    for i in range(400):
        pointer = libc.malloc(256 * 1024)
        ctypes.memset(pointer, 1, 64 * 1024)  # the part a connection's reads touched
        buffers.append(pointer)
        keep.append(bytearray(200))  # a small object that outlives the connection
    for pointer in buffers:
        libc.free(pointer)
print(rss_kib())
"""


def rss_after_waves(mode: str) -> int:
    result = subprocess.run([sys.executable, "-c", WAVES, mode], capture_output=True, text=True, check=True,
                            timeout=60)
    return int(result.stdout)


def test_tune_is_taken_on_glibc() -> None:
    assert allocator.tune()
    allocator.trim()  # callable, whatever it releases


def test_freed_connection_buffers_go_back_to_the_system() -> None:
    default, tuned = rss_after_waves("default"), rss_after_waves("tuned")
    # 400 buffers x 64 KiB touched = 25 MiB that the default heap keeps after they are freed
    assert default - tuned > 15 * 1024, (default, tuned)
