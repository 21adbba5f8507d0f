"""Resumable upstream TLS sessions: a small bounded cache per route TLS context.

A resumed handshake skips the key exchange of TLS 1.2 and the certificate work of both versions, so
connect-per-request clients get most of their TLS cost back. The rules:

- One cache belongs to one `ssl.SSLContext` (a session only resumes under the context that made it),
  so a TLS reload (new CA, CRL or client certificate) starts with an empty cache: nothing verified
  under the old trust settings is resumed under the new ones.
- Sessions are kept by the server name they were verified for (SNI and the host name check), and are
  only ever offered for that name.
- A session is kept until the earliest of: its own timeout, the server's ticket lifetime hint, and the
  notAfter of the server certificate it was verified with.
- A session (TLS 1.2 session or ticket, TLS 1.3 ticket) is reused until it expires or the server
  declines it; only a connection that did not resume offers its new session. RFC 8446 §C.4 suggests
  TLS 1.3 clients use a ticket once, against linking connections to one client (a privacy matter for
  browsers, not for a proxy talking to its own database; nothing here sends 0-RTT data, which is what
  replay would touch). Single use would mean reading every connection's new ticket through
  `SSLObject.session`, and on CPython before 3.12.7/3.13.1 each read leaks about 5.5 KiB
  (CPython gh-116810: 5.5 MB per thousand connections, measured here on 3.11.7).
- A session whose handshake failed, or that the server declined, is dropped.
- At most `capacity` sessions are kept; the oldest go first.
"""

from __future__ import annotations

import ssl
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable

DEFAULT_CAPACITY = 64


@dataclass(frozen=True)
class _Entry:
    session: ssl.SSLSession
    server_name: str | None
    expires_at: float


class TlsSessionCache:
    def __init__(self, capacity: int = DEFAULT_CAPACITY, clock: Callable[[], float] = time.time) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self.capacity = capacity
        self._clock = clock  # wall clock: SSL_SESSION_get_time is in Unix seconds
        self._entries: OrderedDict[bytes, _Entry] = OrderedDict()  # by session id, oldest first

    def __len__(self) -> int:
        return len(self._entries)

    def take(self, server_name: str | None) -> ssl.SSLSession | None:
        """The newest live session for `server_name`, or None."""
        now = self._clock()
        found: tuple[bytes, _Entry] | None = None
        for session_id, entry in list(self._entries.items()):
            if entry.expires_at <= now:
                del self._entries[session_id]
            elif entry.server_name == server_name:
                found = (session_id, entry)  # later entries are newer
        if found is None:
            return None
        return found[1].session

    def put(self, server_name: str | None, session: ssl.SSLSession | None, tls_version: str | None,
            certificate_not_after: float | None = None) -> bool:
        """Keep `session` (from a completed handshake for `server_name`) if it can be resumed."""
        if session is None or tls_version not in ("TLSv1.2", "TLSv1.3"):
            return False
        if tls_version == "TLSv1.3" and not session.has_ticket:
            return False  # a TLS 1.3 session resumes only with a ticket (not yet received, or none sent)
        if not session.has_ticket and not session.id:
            return False
        lifetime = float(session.timeout)
        if session.has_ticket and session.ticket_lifetime_hint:
            lifetime = min(lifetime, float(session.ticket_lifetime_hint))
        expires_at = session.time + lifetime
        if certificate_not_after is not None:
            expires_at = min(expires_at, certificate_not_after)
        if expires_at <= self._clock():
            return False
        session_id = bytes(session.id)
        self._entries.pop(session_id, None)
        self._entries[session_id] = _Entry(session, server_name, expires_at)
        while len(self._entries) > self.capacity:
            self._entries.popitem(last=False)
        return True

    def discard(self, session: ssl.SSLSession) -> None:
        """Forget `session`: its handshake failed or the server would not resume it."""
        self._entries.pop(bytes(session.id), None)

    def clear(self) -> None:
        self._entries.clear()
