"""atheris: a hostile client against HandshakeMachine (a real greeting first, upstream playing a valid script).

Input: byte 0 greeting (low 7 bits, index into hostile.GREETINGS; bit 7 set: upstream_tls off), byte 1 the
upstream script (hostile.AUTH_SCRIPTS), bytes 2-3 the chunking seed, bytes 4-5 where the body splits into
the client's first stream (its HandshakeResponse...) and what it sends after upstream's first answer.
Properties: only TlsProxyError escapes; a random chunking (and, for short bodies, byte-by-byte) gives
the whole-read result; buffers stay under one frame of the limit. See fuzz/README.md.
"""

from __future__ import annotations

from _harness import hostile as H
from _harness import main, u16

HEADER = 6


def one_input(data: bytes) -> None:
    if len(data) < HEADER:
        return
    greeting = H.GREETINGS[(data[0] & 0x7F) % len(H.GREETINGS)]
    upstream_tls = not data[0] & 0x80
    body = data[HEADER:]
    split = u16(data, 4) % (len(body) + 1)
    steps = H.client_side(greeting, body[:split], data[1], body[split:])
    reference = H.run(steps, upstream_tls=upstream_tls)
    H.same_outcome(reference, H.run(steps, H.random_cutter(u16(data, 2)), upstream_tls=upstream_tls))
    if len(body) <= 64:
        H.same_outcome(reference, H.run(steps, H.bytewise, upstream_tls=upstream_tls))


if __name__ == "__main__":
    main(one_input)
