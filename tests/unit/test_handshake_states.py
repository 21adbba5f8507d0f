"""The handshake machine's states: the transition table is the only way between them, the module's
diagram is that table, every state is reachable, and the per-(side, state) handler tables agree with it."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.fixtures import greetings as G
from tests.support.playbook import AdoptPrewarmed, Playbook, client, frame, raises, server
from tests.unit.test_handshake import machine, masked, ssl_request
from tests.unit.test_handshake_prewarm import OTHER, RESPONSE
from tlsproxy.errors import ServerProtocolError
from tlsproxy.mysql import handshake
from tlsproxy.mysql.handshake import HandshakeMachine, ReplaceUpstream, SendToClient, State
from tlsproxy.mysql.states import ALLOWED, TRANSITIONS, render_transitions


def test_the_module_diagram_is_the_transition_table() -> None:
    diagram = "\n".join(line.strip() for line in render_transitions().splitlines())
    assert handshake.__doc__ is not None
    documented = "\n".join(line.strip() for line in handshake.__doc__.splitlines() if "──" in line)
    assert documented == diagram
    assert len(diagram.splitlines()) == len(TRANSITIONS) + 1


def test_every_state_is_reached_and_every_state_may_close() -> None:
    reached = {State.GREETING} | {to for _, _, to in TRANSITIONS}
    assert reached | {State.CLOSED} == set(State)
    assert all(State.CLOSED in ALLOWED[state] for state in State)
    assert ALLOWED[State.CLOSED] == {State.CLOSED}


def test_set_state_refuses_a_move_not_in_the_table() -> None:
    m = HandshakeMachine()
    with pytest.raises(RuntimeError, match="no transition from GREETING to RELAY"):
        m._set_state(State.RELAY)
    assert m.state is State.GREETING


def test_states_that_wait_for_a_peer_have_a_handler_for_it() -> None:
    """A state with a move triggered by a server frame routes server frames; one waiting for the client
    routes client frames (or holds its bytes, as the table's docstrings say)."""
    server_driven = {State.GREETING, State.REPLACING, State.AUTH, State.CHANGE_USER_SENT, State.CHANGE_USER}
    client_driven = {State.CLIENT_RESPONSE, State.REAUTH, State.AUTH, State.CHANGE_USER}
    assert server_driven <= set(handshake.SERVER_FRAME_HANDLERS)
    assert client_driven <= set(handshake.CLIENT_FRAME_HANDLERS)
    assert State.RELAY not in handshake.SERVER_FRAME_HANDLERS
    assert not {State.TLS_PENDING, State.REPLACEMENT_TLS_PENDING} & set(handshake.SERVER_FRAME_HANDLERS)


def test_bytes_behind_a_replacement_greeting_are_refused_not_kept_for_after_tls() -> None:
    """No server byte may wait between the SSLRequest and the TLS handshake: behind the fresh
    upstream's greeting (same read) they would be taken for the server's first TLS-protected packet."""
    playbook = (
        Playbook(machine())
        >> AdoptPrewarmed(G.MARIADB_10_11_CAPTURED.payload, ssl_request(RESPONSE))
        << SendToClient(frame(0, masked(G.MARIADB_10_11_CAPTURED)))
        >> client >> frame(1, OTHER)
        << ReplaceUpstream
        >> server >> frame(0, G.MARIADB_10.payload) + frame(2, b"\x00\x00\x00\x02\x00\x00\x00")
        << raises(ServerProtocolError)
    )
    assert playbook
    assert playbook.machine.state is State.CLOSED


def test_the_architecture_map_names_a_real_method_for_every_transition() -> None:
    """docs/ARCHITECTURE.md says which method makes each move: every transition of the table has a row,
    and every method it names exists."""
    text = (Path(__file__).resolve().parents[2] / "docs" / "ARCHITECTURE.md").read_text(encoding="utf-8")
    section = text.split("## Where each state transition lives", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| ") and "→" in line]
    for source, _, to in TRANSITIONS:
        assert any(re.search(rf"\b{source.name}\b", row.split("|")[1]) and re.search(rf"\b{to.name}\b", row.split("|")[1])
                   for row in rows), f"no row for {source.name} → {to.name}"
    named = {name.rpartition(".")[2] for row in rows for name in re.findall(r"`([A-Za-z_.]+)`", row.split("|")[2])}
    named.discard("receive_*")
    assert named and all(hasattr(HandshakeMachine, name) for name in named), sorted(
        name for name in named if not hasattr(HandshakeMachine, name))
