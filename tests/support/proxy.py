"""Run tlsproxy for tests: in-process on its own event loop thread (uvloop or asyncio), or as the real
CLI subprocess. Both listen on a free loopback port and stop even when the test fails."""

from __future__ import annotations

import asyncio
import os
import re
import resource
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from tlsproxy import certs
from tlsproxy.config import ProxyConfig, Route, TcpAddress, TlsSettings
from tlsproxy.server import Proxy

_AUTH_KEY: certs.AuthRsaKey | None = None


def shared_auth_key() -> certs.AuthRsaKey:
    """One RSA key for all in-process proxies of a test run (generating one takes ~50 ms)."""
    global _AUTH_KEY
    if _AUTH_KEY is None:
        _AUTH_KEY = certs.AuthRsaKey.generate()
    return _AUTH_KEY


def make_route(upstream_port: int, *, upstream_host: str = "localhost", name: str = "test",
               listen: Any = None, connect_retry_window: float = 0.0, **tls: Any) -> Route:
    """A route for tests: no connect retries unless asked (a refused upstream fails at once)."""
    settings = TlsSettings(**tls)
    return Route(name=name, listen=listen or TcpAddress("127.0.0.1", 0),
                 upstream=TcpAddress(upstream_host, upstream_port), tls=settings,
                 connect_timeout=5.0, connect_retry_window=connect_retry_window, handshake_timeout=10.0)


class ProxyThread:
    """tlsproxy's Proxy on a private event loop in a daemon thread."""

    def __init__(self, config: ProxyConfig | Route, *, event_loop: str = "uvloop",
                 auth_key: certs.AuthRsaKey | None = None) -> None:
        if isinstance(config, Route):
            config = ProxyConfig(routes=(config,))
        self.config = config
        self.event_loop = event_loop
        self.auth_key = auth_key or shared_auth_key()
        self.loop: asyncio.AbstractEventLoop | None = None
        self.proxy: Proxy | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._stop: asyncio.Event | None = None

    @property
    def port(self) -> int:
        assert self.proxy is not None
        return self.proxy.listeners[0].port

    def start(self) -> "ProxyThread":
        self._thread = threading.Thread(target=self._run, name="tlsproxy-test", daemon=True)
        self._thread.start()
        if not self._ready.wait(20):
            raise RuntimeError("proxy did not start within 20 s")
        if self._error is not None:
            raise self._error
        return self

    def _run(self) -> None:
        if self.event_loop == "uvloop":
            import uvloop

            loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
        else:
            loop = asyncio.new_event_loop()
        self.loop = loop
        try:
            loop.run_until_complete(self._main())
        except BaseException as exc:  # reported to start()
            self._error = exc
            self._ready.set()
        finally:
            loop.close()

    async def _main(self) -> None:
        self._stop = asyncio.Event()
        self.proxy = Proxy(self.config, self.auth_key)
        await self.proxy.start()
        self._ready.set()
        await self._stop.wait()
        await self.proxy.stop()

    def call(self, func: Any, *args: Any) -> Any:
        """Run `func(*args)` on the proxy's loop and return its result."""
        assert self.loop is not None

        async def invoke() -> Any:
            return func(*args)

        return asyncio.run_coroutine_threadsafe(invoke(), self.loop).result(10)

    def active_connections(self) -> int:
        return self.call(lambda: self.proxy.active_connections)  # type: ignore[union-attr]

    def stop(self) -> None:
        if self.loop is not None and self._stop is not None and self._thread is not None and self._thread.is_alive():
            self.loop.call_soon_threadsafe(self._stop.set)
            self._thread.join(20)

    def __enter__(self) -> "ProxyThread":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


_LISTENING = re.compile(r"route (\S+): listening on ([^\s,]+)")
_ADMIN = re.compile(r"admin: metrics and health on http://([^/]+)/")


class CliProxy:
    """The real `python -m tlsproxy` process; the port is read from its start-up log line."""

    def __init__(self, args: list[str], *, cwd: Path | None = None,
                 open_files: tuple[int, int] | None = None) -> None:
        """`open_files`: the (soft, hard) RLIMIT_NOFILE the process starts with."""
        # a free admin port unless the test chose one (the default 9090 may be taken)
        self.args = args if "--admin-listen" in args else [*args, "--admin-listen", "127.0.0.1:0"]
        self.cwd = cwd
        self.open_files = open_files
        self.process: subprocess.Popen[str] | None = None
        self.addresses: dict[str, str] = {}
        self.admin_address: str | None = None
        self.output: list[str] = []

    def start(self, timeout: float = 20.0) -> "CliProxy":
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tlsproxy", *self.args], cwd=self.cwd, env=env,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            preexec_fn=None if self.open_files is None else self._limit_open_files,
        )
        deadline = time.monotonic() + timeout
        assert self.process.stdout is not None
        while time.monotonic() < deadline:
            line = self.process.stdout.readline()
            if not line:
                break
            self.output.append(line)
            match = _LISTENING.search(line)
            if match:
                self.addresses[match.group(1)] = match.group(2)
            admin = _ADMIN.search(line)
            if admin:
                self.admin_address = admin.group(1)
            if "ready" in line and "tlsproxy" in line:
                threading.Thread(target=self._drain, daemon=True).start()
                return self
        self.stop()
        raise RuntimeError("tlsproxy CLI did not start:\n" + "".join(self.output))

    def _limit_open_files(self) -> None:
        assert self.open_files is not None
        resource.setrlimit(resource.RLIMIT_NOFILE, self.open_files)

    def _drain(self) -> None:
        assert self.process is not None and self.process.stdout is not None
        for line in self.process.stdout:
            self.output.append(line)

    def port(self, route: str | None = None) -> int:
        address = self.addresses[route] if route else next(iter(self.addresses.values()))
        return int(address.rsplit(":", 1)[1])

    def stop(self) -> int | None:
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        return self.process.returncode

    def __enter__(self) -> "CliProxy":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def metric_value(proxy: ProxyThread, name: str, **labels: str) -> float:
    """One sample of an in-process proxy's metrics (0 when the series does not exist yet)."""
    registry = proxy.proxy.metrics.registry  # type: ignore[union-attr]
    found = proxy.call(lambda: registry.get_sample_value(name, labels))
    return 0.0 if found is None else found


def wait_for(predicate: Any, timeout: float = 5.0) -> bool:
    """Poll `predicate` every 50 ms until it holds or `timeout` passes; its last value."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return bool(predicate())
