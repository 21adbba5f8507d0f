"""Writes the seed corpus (fuzz/corpus/<harness>/) from the byte fixtures in tests/fixtures: the captured
MariaDB greeting and ERR greeting, the built greetings, the captured HandshakeResponses, and valid auth
exchanges (tests/support/hostile.py). Deterministic; run from the repository root after changing them:

    .venv/bin/python fuzz/make_corpus.py
"""

from __future__ import annotations

import hashlib
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.fixtures import greetings as G  # noqa: E402
from tests.support import hostile as H  # noqa: E402

CORPUS = Path(__file__).resolve().parent / "corpus"


def header(selector: int, script: int, seed: int, split: int) -> bytes:
    return bytes((selector, script)) + seed.to_bytes(2, "little") + split.to_bytes(2, "little")


def client_inputs() -> list[bytes]:
    out = []
    for response in range(len(H.RESPONSES)):
        for script in range(len(H.AUTH_SCRIPTS)):
            if (response + script) % 3 and response:
                continue  # every script with the first response, a third of the rest
            stream, tail = H.valid_client_stream(response, script)
            out.append(header(response % len(H.GREETINGS), script, response * 31 + script, len(stream)) + stream + tail)
    stream, tail = H.valid_client_stream(0, 0)
    out.append(header(0x80, 0, 7, len(stream)) + stream + tail)  # upstream_tls off
    return out


def server_inputs() -> list[bytes]:
    out = []
    for index, greeting in enumerate(H.GREETINGS + (G.MARIADB_ERR_GREETING_FRAME,)):
        for script, (server1, _client2, server2) in enumerate(H.AUTH_SCRIPTS):
            if (index + script) % 2:
                continue
            out.append(header(index % len(H.RESPONSES), script, index * 7 + script, len(greeting))
                       + greeting + server1 + server2)
    out.append(header(0x80, 0, 3, len(H.GREETINGS[1])) + H.GREETINGS[1] + H.AUTH_SCRIPTS[0][0])
    return out


def codec_inputs() -> list[bytes]:
    streams = [*H.GREETINGS, G.MARIADB_ERR_GREETING_FRAME, *H.RESPONSES]
    streams += [b"".join(part for part in script) for script in H.AUTH_SCRIPTS]
    streams.append(b"".join(streams))
    # claim COM_CHANGE_USER at seq 0 (what the machine's relay looks for), and seq 1 / 0x0a for greetings
    return [bytes((0, 0x11) if i % 2 else (0, 0x0A)) + i.to_bytes(2, "little") + s for i, s in enumerate(streams)]


def main() -> None:
    for name, inputs in (("handshake_client", client_inputs()), ("handshake_server", server_inputs()),
                         ("codec", codec_inputs())):
        directory = CORPUS / name
        shutil.rmtree(directory, ignore_errors=True)
        directory.mkdir(parents=True)
        for data in inputs:
            (directory / hashlib.sha1(data).hexdigest()).write_bytes(data)
        print(f"{directory.relative_to(ROOT)}: {len(inputs)} inputs")


if __name__ == "__main__":
    main()
