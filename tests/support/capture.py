"""A real packet capture on the loopback interface (tcpdump, as root), read back without extra packages.

Independent of the proxy and of the test relays: what the kernel put on `lo` is what crossed the wire.
A missing tcpdump or missing privileges fail the test (scripts/setup.sh installs tcpdump).
"""

from __future__ import annotations

import shutil
import signal
import struct
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Segment:
    source_port: int
    destination_port: int
    payload: bytes


class LoopbackCapture:
    """`with LoopbackCapture(path, ports) as capture:` records TCP on `lo` to or from any of `ports`;
    after the block, `capture.segments` holds every captured segment with its payload."""

    def __init__(self, path: Path, ports: list[int]) -> None:
        self.path = path
        self.ports = ports
        self.segments: list[Segment] = []
        self._process: subprocess.Popen[str] | None = None

    def __enter__(self) -> "LoopbackCapture":
        tcpdump = shutil.which("tcpdump")
        assert tcpdump, "tcpdump is not installed (scripts/setup.sh installs it)"
        port_filter = " or ".join(f"tcp port {port}" for port in self.ports)
        # -Z root: keep writing where root writes (tcpdump would otherwise switch to its own user);
        # -U and --immediate-mode: hand over and write each packet at once, so stopping loses nothing.
        self._process = subprocess.Popen(
            [tcpdump, "-i", "lo", "-n", "-U", "--immediate-mode", "-s", "0", "-Z", "root", "-w", str(self.path), port_filter],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        )
        assert self._process.stderr is not None
        line = self._process.stderr.readline()  # "listening on lo, ..." once the capture runs
        if "listening on" not in line:
            self._process.kill()
            self._process.wait(5)
            raise AssertionError(f"tcpdump did not start (root needed): {line}{self._process.stderr.read()}")
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._process is not None
        time.sleep(0.2)  # the last segments (FIN, RST) to reach the capture
        self._process.send_signal(signal.SIGINT)
        try:
            self._process.wait(10)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait(5)
        self.segments = read_pcap(self.path)

    def payload_to(self, port: int) -> bytes:
        """Every TCP payload byte sent to `port`, in capture order."""
        return b"".join(s.payload for s in self.segments if s.destination_port == port)

    def payload_from(self, port: int) -> bytes:
        return b"".join(s.payload for s in self.segments if s.source_port == port)


def read_pcap(path: Path) -> list[Segment]:
    """TCP segments from a classic pcap file of Ethernet frames (what tcpdump writes for `lo`)."""
    data = path.read_bytes()
    magic = data[:4]
    endian = {b"\xd4\xc3\xb2\xa1": "<", b"\xa1\xb2\xc3\xd4": ">",
              b"\x4d\x3c\xb2\xa1": "<", b"\xa1\xb2\x3c\x4d": ">"}[magic]
    link_type = struct.unpack(endian + "I", data[20:24])[0]
    assert link_type == 1, f"expected Ethernet frames on lo, got link type {link_type}"
    segments: list[Segment] = []
    offset = 24
    while offset + 16 <= len(data):
        captured = struct.unpack(endian + "I", data[offset + 8:offset + 12])[0]
        frame = data[offset + 16:offset + 16 + captured]
        offset += 16 + captured
        ether_type = int.from_bytes(frame[12:14], "big")
        if ether_type == 0x0800:  # IPv4
            ip = frame[14:]
            header = (ip[0] & 0x0F) * 4
            total = int.from_bytes(ip[2:4], "big")
            if ip[9] != 6:
                continue
            tcp = ip[header:total]
        elif ether_type == 0x86DD:  # IPv6 (no extension headers on loopback TCP)
            ip = frame[14:]
            if ip[6] != 6:
                continue
            tcp = ip[40:40 + int.from_bytes(ip[4:6], "big")]
        else:
            continue
        source, destination = struct.unpack("!HH", tcp[:4])
        segments.append(Segment(source, destination, bytes(tcp[(tcp[12] >> 4) * 4:])))
    return segments
