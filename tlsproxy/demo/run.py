"""`tlsproxy demo`: the whole product on an embedded default.

A fresh CA and server certificate in a temporary directory, a local MariaDB that requires TLS from
the demo account, tlsproxy in front of it in VERIFY_IDENTITY mode, and one query through the proxy by
the plaintext `mariadb` CLI that shows the server saw a TLS connection. Stays up until Ctrl-C
(`--once` exits after the query).
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import signal
import sys
import tempfile
from pathlib import Path

from tlsproxy.certs import AuthRsaKey
from tlsproxy.config import ProxyConfig, Route, SslMode, TcpAddress, TlsSettings
from tlsproxy.demo.localdb import find_mariadb_binaries, start_mariadb
from tlsproxy.demo.mariadb import LocalDatabaseError
from tlsproxy.demo.pki import CertificateAuthority
from tlsproxy.server import Proxy

# "tlsproxy.demo": the logger name this module has always had.
log = logging.getLogger("tlsproxy.demo")

DEMO_USER = "demo"
DEMO_PASSWORD = "demo-password"
DEMO_QUERY = "SHOW SESSION STATUS WHERE Variable_name IN ('Ssl_version', 'Ssl_cipher')"


def _say(text: str = "") -> None:
    print(text, flush=True)


async def run_demo(*, once: bool, event_loop: str = "uvloop") -> int:
    try:
        binaries = find_mariadb_binaries()
    except LocalDatabaseError as exc:
        _say(f"tlsproxy demo: {exc}")
        return 1
    workdir = Path(tempfile.mkdtemp(prefix="tlsproxy-demo-"))
    server = None
    proxy = None
    try:
        _say(f"[1/4] generating a CA and a server certificate for localhost in {workdir}")
        ca = CertificateAuthority.create("tlsproxy demo CA")
        ca_path = workdir / "ca.pem"
        ca.write(ca_path)
        issued = ca.issue_server(("localhost",), ("127.0.0.1", "::1"))
        issued.write(workdir / "server-cert.pem", workdir / "server-key.pem")

        _say("[2/4] starting MariaDB with TLS on a free loopback port")
        server = await asyncio.to_thread(
            start_mariadb, workdir / "mariadb", ssl_ca=ca_path, ssl_cert=workdir / "server-cert.pem",
            ssl_key=workdir / "server-key.pem",
        )
        await asyncio.to_thread(server.sql, f"CREATE USER '{DEMO_USER}'@'%' IDENTIFIED BY '{DEMO_PASSWORD}' REQUIRE SSL")
        await asyncio.to_thread(server.sql, f"GRANT SELECT ON *.* TO '{DEMO_USER}'@'%'")
        _say(f"      MariaDB listens on {server.host}:{server.port}; account {DEMO_USER} is REQUIRE SSL")

        route = Route(
            name="demo",
            listen=TcpAddress("127.0.0.1", 0),
            upstream=TcpAddress("localhost", server.port),
            tls=TlsSettings(mode=SslMode.VERIFY_IDENTITY, ca_file=ca_path),
        )
        config = ProxyConfig(routes=(route,), event_loop=event_loop)
        proxy = Proxy(config, AuthRsaKey.generate())
        await proxy.start()
        port = proxy.listeners[0].port
        _say(f"[3/4] tlsproxy listens on 127.0.0.1:{port} (plaintext), upstream localhost:{server.port} "
             "with VERIFY_IDENTITY against the demo CA")

        command = [str(binaries.client), "--protocol=TCP", "-h", "127.0.0.1", "-P", str(port), "--skip-ssl",
                   "-u", DEMO_USER, f"-p{DEMO_PASSWORD}", "--table", "-e", DEMO_QUERY]
        _say("[4/4] a plaintext client through the proxy: mariadb --skip-ssl ... -e \"" + DEMO_QUERY + "\"")
        process = await asyncio.create_subprocess_exec(*command, stdout=asyncio.subprocess.PIPE,
                                                       stderr=asyncio.subprocess.PIPE)
        stdout, stderr = await asyncio.wait_for(process.communicate(), 30)
        _say(stdout.decode().rstrip())
        if process.returncode != 0 or b"TLSv1" not in stdout:
            _say("demo FAILED: " + stderr.decode().strip())
            return 1
        _say()
        _say("The client spoke plaintext to tlsproxy; the server saw the TLS session above.")
        _say(f"Connect yourself:  mariadb --protocol=TCP -h 127.0.0.1 -P {port} --skip-ssl -u {DEMO_USER} -p{DEMO_PASSWORD}")
        _say(f"Direct without TLS is refused (REQUIRE SSL): mariadb --protocol=TCP -h 127.0.0.1 -P {server.port} "
             f"--skip-ssl -u {DEMO_USER} -p{DEMO_PASSWORD}")
        if once:
            return 0
        _say("Press Ctrl-C to stop.")
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        await stop.wait()
        return 0
    except LocalDatabaseError as exc:
        _say(f"demo FAILED: {exc}")
        return 1
    finally:
        if proxy is not None:
            await proxy.stop()
        if server is not None:
            await asyncio.to_thread(server.stop)
        shutil.rmtree(workdir, ignore_errors=True)
        _say("stopped MariaDB and the proxy; removed " + str(workdir)) if not once else None


if __name__ == "__main__":  # pragma: no cover
    sys.exit(asyncio.run(run_demo(once=True)))
