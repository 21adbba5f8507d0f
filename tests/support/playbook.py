"""Wire-transcript tests for the sans-IO handshake machine, in the spirit of mitmproxy's tutils.Playbook.

A Playbook is a list of steps fed to a `HandshakeMachine` (``>>``) and the effects expected back
(``<<``), asserted exactly and in order when the playbook is evaluated (``assert playbook``)::

    assert (
        Playbook(HandshakeMachine(auth_key=key))
        >> server >> frame(0, greeting)
        << SendToClient(frame(0, masked_greeting))
        >> client >> frame(1, response)
        << SendToServer(frame(1, ssl_request))
        << StartUpstreamTls()
        >> tls_established
        << SendToServer(frame(2, response))
    )

Steps: ``>> server >> data`` (bytes from upstream), ``>> client >> data`` (bytes from the client),
``>> tls_established``. Expectations: an effect instance (compared with ==), an effect class (any
instance matches, e.g. ``<< CloseConnection``), or ``<< raises(SomeError)`` right after the step that
must raise (matched with isinstance; its `.caught` then holds the exception).

Evaluation is incremental: after ``assert playbook`` you may inspect the machine, append more steps and
``assert playbook`` again; only the new steps run. On a mismatch the AssertionError shows the whole
transcript with the actual effects, so a failing test reads like a wire log.

`chunker` splits every data step into pieces fed one after another (see `every_split`, `bytewise`);
the effects of those pieces are merged (adjacent SendToClient / SendToServer joined), so the same
transcript must hold for any chunking.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator, Sequence, Union

from tlsproxy.mysql.codec import encode_frame
from tlsproxy.mysql.handshake import Effect, HandshakeMachine, SendToClient, SendToServer

__all__ = [
    "Playbook",
    "ServerData",
    "ClientData",
    "TlsEstablished",
    "raises",
    "server",
    "client",
    "tls_established",
    "frame",
    "frames",
    "merge_effects",
    "run_steps",
    "bytewise",
    "AdoptPooled",
    "UsePooledReplacement",
    "pooled_upstream_lost",
]


def frame(sequence_id: int, payload: bytes) -> bytes:
    """One wire frame (header + payload)."""
    return encode_frame(sequence_id, payload)


def frames(first_sequence_id: int, payload: bytes) -> bytes:
    """A whole packet, split into 0xFFFFFF-byte frames plus a shorter final one (PROTOCOL.md §1)."""
    out = bytearray()
    seq = first_sequence_id
    pos = 0
    while True:
        chunk = payload[pos : pos + 0xFFFFFF]
        out += len(chunk).to_bytes(3, "little") + bytes((seq & 0xFF,)) + chunk
        pos += len(chunk)
        seq += 1
        if len(chunk) < 0xFFFFFF:
            return bytes(out)


# ---- steps ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ServerData:
    data: bytes

    def __repr__(self) -> str:
        return f"server >> {_show(self.data)}"


@dataclass(frozen=True)
class ClientData:
    data: bytes

    def __repr__(self) -> str:
        return f"client >> {_show(self.data)}"


@dataclass(frozen=True)
class TlsEstablished:
    def __repr__(self) -> str:
        return "tls_established"


@dataclass(frozen=True)
class AdoptPrewarmed:
    """The driver hands the machine a prewarmed upstream: its greeting and the SSLRequest it was sent."""

    greeting_payload: bytes
    ssl_request: bytes

    def __repr__(self) -> str:
        return f"adopt_prewarmed({_show(self.greeting_payload)}, {_show(self.ssl_request)})"


class _Source:
    """`server >> data` / `client >> data` build a data step."""

    def __init__(self, kind: type) -> None:
        self._kind = kind

    def __rshift__(self, data: bytes) -> Union[ServerData, ClientData]:
        return self._kind(bytes(data))

    def __repr__(self) -> str:
        return self._kind.__name__.replace("Data", "").lower()


server = _Source(ServerData)
client = _Source(ClientData)
tls_established = TlsEstablished()

@dataclass(frozen=True)
class AdoptPooled:
    """The driver hands the machine a parked upstream: its greeting and the SSLRequest it was opened with."""

    greeting_payload: bytes
    ssl_request: bytes

    def __repr__(self) -> str:
        return f"adopt_pooled({_show(self.greeting_payload)}, {_show(self.ssl_request)})"


@dataclass(frozen=True)
class UsePooledReplacement:
    """After ReplaceUpstream, the driver found a parked upstream that fits: its greeting."""

    greeting_payload: bytes

    def __repr__(self) -> str:
        return f"use_pooled_replacement({_show(self.greeting_payload)})"


@dataclass(frozen=True)
class PooledUpstreamLost:
    """The pooled upstream closed before the server answered anything for this client."""

    def __repr__(self) -> str:
        return "pooled_upstream_lost"


pooled_upstream_lost = PooledUpstreamLost()

Step = Union[ServerData, ClientData, TlsEstablished, AdoptPrewarmed, AdoptPooled, UsePooledReplacement,
             PooledUpstreamLost]
STEP_TYPES = (ServerData, ClientData, TlsEstablished, AdoptPrewarmed, AdoptPooled, UsePooledReplacement,
              PooledUpstreamLost)


@dataclass
class raises:
    """Expect the preceding step to raise an instance of `error` (and nothing else)."""

    error: type[BaseException]
    match: str | None = None
    caught: BaseException | None = field(default=None, repr=False)

    def matches(self, exc: BaseException) -> bool:
        if not isinstance(exc, self.error):
            return False
        return self.match is None or self.match in str(exc)

    def __repr__(self) -> str:
        suffix = f", match={self.match!r}" if self.match else ""
        return f"raises({self.error.__name__}{suffix})"


# ---- running -------------------------------------------------------------------------------------

Chunker = Callable[[bytes], Iterable[bytes]]


def whole(data: bytes) -> Iterator[bytes]:
    yield data


def bytewise(data: bytes) -> Iterator[bytes]:
    for i in range(len(data)):
        yield data[i : i + 1]


def merge_effects(effects: Iterable[Effect]) -> list[Effect]:
    """Join adjacent SendToClient / SendToServer effects and drop empty ones: the chunking-invariant view."""
    merged: list[Effect] = []
    for effect in effects:
        if isinstance(effect, (SendToClient, SendToServer)):
            if not effect.data:
                continue
            if merged and type(merged[-1]) is type(effect):
                merged[-1] = type(effect)(merged[-1].data + effect.data)  # type: ignore[union-attr]
                continue
        merged.append(effect)
    return merged


def run_step(machine: HandshakeMachine, step: Step, chunker: Chunker = whole) -> list[Effect]:
    """Feed one step; its effects exactly as returned (merged across chunks if `chunker` splits).
    Exceptions propagate."""
    effects: list[Effect] = []
    if isinstance(step, TlsEstablished):
        effects += machine.tls_established()
    elif isinstance(step, AdoptPrewarmed):
        effects += machine.adopt_prewarmed_upstream(step.greeting_payload, step.ssl_request)
    elif isinstance(step, AdoptPooled):
        effects += machine.adopt_pooled_upstream(step.greeting_payload, step.ssl_request)
    elif isinstance(step, UsePooledReplacement):
        effects += machine.use_pooled_replacement(step.greeting_payload)
    elif isinstance(step, PooledUpstreamLost):
        effects += machine.pooled_upstream_lost()
    else:
        receive = machine.receive_server_data if isinstance(step, ServerData) else machine.receive_client_data
        for piece in chunker(step.data):
            effects += receive(piece)
    return effects if chunker is whole else merge_effects(effects)


def run_steps(machine: HandshakeMachine, steps: Sequence[Step], chunker: Chunker = whole) -> list[Effect]:
    effects: list[Effect] = []
    for step in steps:
        effects += run_step(machine, step, chunker)
    return merge_effects(effects)


def _show(data: bytes, limit: int = 48) -> str:
    if len(data) <= limit:
        return f"bytes.fromhex({data.hex()!r})"
    return f"<{len(data)} bytes {data[:limit].hex()}...>"


def _show_effect(effect: object) -> str:
    if isinstance(effect, (SendToClient, SendToServer)):
        return f"{type(effect).__name__}({_show(effect.data)})"
    return repr(effect)


class Playbook:
    def __init__(self, machine: HandshakeMachine, *, chunker: Chunker = whole) -> None:
        self.machine = machine
        self.chunker = chunker
        self.expected: list[Union[Step, Effect, raises]] = []
        self.actual: list[Union[Step, Effect, BaseException]] = []
        self._pending_source: _Source | None = None
        self._executed = 0

    # building
    def __rshift__(self, step: object) -> "Playbook":
        if isinstance(step, _Source):
            if self._pending_source is not None:
                raise TypeError("two sources in a row: use `>> server >> data`")
            self._pending_source = step
            return self
        if self._pending_source is not None:
            if not isinstance(step, (bytes, bytearray, memoryview)):
                raise TypeError(f"`>> {self._pending_source!r} >>` needs bytes, got {step!r}")
            step = self._pending_source >> bytes(step)
            self._pending_source = None
        if not isinstance(step, STEP_TYPES):
            raise TypeError(f"not a step: {step!r}")
        self.expected.append(step)
        return self

    def __lshift__(self, effect: object) -> "Playbook":
        if self._pending_source is not None:
            raise TypeError("a source without data")
        self.expected.append(effect)  # type: ignore[arg-type]
        return self

    # running
    def __bool__(self) -> bool:
        expected = self.expected
        i = self._executed
        while i < len(expected):
            step = expected[i]
            if not isinstance(step, STEP_TYPES):
                self._fail(f"expected effect {_show_effect(step)} but no step produced it")
            i += 1
            self.actual.append(step)
            try:
                produced: list[object] = list(run_step(self.machine, step, self.chunker))
            except Exception as exc:  # noqa: BLE001 - compared with a `raises` expectation
                produced = [exc]
            for item in produced:
                self.actual.append(item)  # type: ignore[arg-type]
                want = expected[i] if i < len(expected) else None
                if want is None or isinstance(want, STEP_TYPES):
                    self._fail(f"unexpected {_show_effect(item)} after {step!r}")
                if isinstance(want, raises):
                    if not isinstance(item, BaseException) or not want.matches(item):
                        self._fail(f"expected {want!r}, got {_show_effect(item)}")
                    want.caught = item
                elif isinstance(item, BaseException):
                    self._fail(f"expected {_show_effect(want)}, but the step raised {item!r}")
                elif isinstance(want, type):
                    if not isinstance(item, want):
                        self._fail(f"expected any {want.__name__}, got {_show_effect(item)}")
                elif item != want:
                    self._fail(f"expected {_show_effect(want)}\n     got {_show_effect(item)}")
                i += 1
            if i < len(expected) and not isinstance(expected[i], STEP_TYPES):
                self._fail(f"expected {_show_effect(expected[i])} after {step!r}, but the step produced no more")
        self._executed = i
        return True

    def _fail(self, message: str) -> None:
        lines = [message, "", "transcript (actual):"]
        for item in self.actual:
            prefix = "    " if isinstance(item, STEP_TYPES) else "      << "
            lines.append(prefix + (_show_effect(item) if not isinstance(item, BaseException) else repr(item)))
        raise AssertionError("\n".join(lines))

    # helpers for tests
    @property
    def steps(self) -> list[Step]:
        return [s for s in self.expected if isinstance(s, STEP_TYPES)]

    @property
    def expected_effects(self) -> list[Effect]:
        return [e for e in self.expected if not isinstance(e, (ServerData, ClientData, TlsEstablished, raises))]
