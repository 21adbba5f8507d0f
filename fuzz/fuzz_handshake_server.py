"""atheris: a hostile upstream against HandshakeMachine (a real client response after its greeting).

Input: byte 0 the client's HandshakeResponse (low 7 bits, index into hostile.RESPONSES; bit 7 set:
upstream_tls off), byte 1 the client's answer (hostile.AUTH_SCRIPTS' client part), bytes 2-3 the chunking
seed, bytes 4-5 where the body splits into upstream's first stream (its greeting...) and what it sends
after the client's response. Properties as in fuzz_handshake_client.py.
"""

from __future__ import annotations

from _harness import hostile as H
from _harness import main, u16

HEADER = 6


def one_input(data: bytes) -> None:
    if len(data) < HEADER:
        return
    response = H.RESPONSES[(data[0] & 0x7F) % len(H.RESPONSES)]
    upstream_tls = not data[0] & 0x80
    client_tail = H.AUTH_SCRIPTS[data[1] % len(H.AUTH_SCRIPTS)][1]
    body = data[HEADER:]
    split = u16(data, 4) % (len(body) + 1)
    steps = H.server_side(body[:split], response, body[split:], client_tail)
    reference = H.run(steps, upstream_tls=upstream_tls)
    H.same_outcome(reference, H.run(steps, H.random_cutter(u16(data, 2)), upstream_tls=upstream_tls))
    if len(body) <= 64:
        H.same_outcome(reference, H.run(steps, H.bytewise, upstream_tls=upstream_tls))


if __name__ == "__main__":
    main(one_input)
