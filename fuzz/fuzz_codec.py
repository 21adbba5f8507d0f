"""atheris: the packet codec (tlsproxy/mysql/codec.py) and the message parsers (messages.py).

Input: byte 0 the claimed sequence id and byte 1 the claimed first byte for the FrameSkipper, bytes 2-3
the chunking seed, the rest a byte stream. Properties: the parsers raise only DecodeError on every frame
payload and on the raw body; FrameBuffer and FrameSkipper give the same frames / stops in any chunking,
and FrameBuffer never holds a whole frame's worth without handing it out.
"""

from __future__ import annotations

import random

from _harness import hostile as H
from _harness import main, u16

HEADER = 4
MAX_PAYLOAD = 512


def one_input(data: bytes) -> None:
    if len(data) < HEADER:
        return
    body = data[HEADER:]
    rng = random.Random(u16(data, 2))
    pieces = H.cut_at(body, [rng.randrange(len(body) + 1) for _ in range(rng.randrange(12))])
    whole = H.frames_of([body], MAX_PAYLOAD)
    if H.frames_of(pieces, MAX_PAYLOAD)[:2] != whole[:2]:
        raise AssertionError("FrameBuffer: chunking changed the frames")
    for frame in whole[0]:
        H.parse_everything(frame.payload)
    H.parse_everything(body)
    stops = H.skipper_stops([body], data[0], data[1])
    if H.skipper_stops(pieces, data[0], data[1]) != stops:
        raise AssertionError("FrameSkipper: chunking changed where it stops")


if __name__ == "__main__":
    main(one_input)
