"""The client leg's cheapest form, head to head: `python -m bench.client_leg [--seconds S] [--repetitions N]
[--out DIR] [--loops uvloop,asyncio] [--pin]`.

tlsproxy's client leg (the plaintext MySQL client on a local TCP port or Unix socket) is an
asyncio.Protocol today: data_received gets a fresh bytes object per read and replies go through
transport.write. This measures that form against two others, each alone in a "leg server" process of
its own (`python -m bench.client_leg --serve FORM ...`, the same module), listening on a loopback TCP
port and on a Unix socket, under uvloop (and asyncio with --loops):

* protocol: asyncio.Protocol, data_received + transport.write (today's form);
* buffered: asyncio.BufferedProtocol, one reused bytearray (get_buffer/buffer_updated) + transport.write;
* raw: a non-blocking socket, a loop.add_reader callback doing sock.recv_into(one reused buffer) and
  sock.send; when a send would block, the rest waits in a buffer sent from a loop.add_writer callback and
  reading stops until it is gone (backpressure, no busy loop) -- the way tlsproxy/tls_leg.py drives the
  upstream leg.

TCP_NODELAY is set on TCP in every form. The leg server answers like a MySQL server's point select:
requests are fixed-size COM_QUERY frames (REQUEST_SIZE bytes), and for every whole request received it
writes one fixed REPLY_SIZE-byte reply. The load comes from 1 or 4 client processes (forked: no GIL
shared), each with one connection doing blocking request -> reply ping-pong on a plain socket.

Per sample: round trips/s (the clients' sum) and the leg server's CPU per round trip in us, from
/proc/<pid>/task/*/schedstat (ns on the CPU) and, as a cross-check, /proc/<pid>/stat utime+stime
(clock ticks). Repetitions are interleaved and the order of the forms rotates (A B C, B C A, ...) within
each cell (loop x leg x clients). Writes client_leg.json and report.md (medians, [min-max]) to --out.

Unpinned, a one-client sample is bimodal (measured on 2 cores: about 5-8 or 17-21 us per round trip,
whether the client and the leg server share a core or wake each other across cores), whatever the form.
--pin puts the leg servers on the last CPU and the clients on the others: every sample is then the
cross-core case, and the spread of 5 repetitions falls to a few percent.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import json
import multiprocessing
import os
import select
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from bench.env import free_ports
from bench.procs import cpu_seconds, machine_info
from bench.stopping import guarded, output_folder, uninterrupted

FORMS = ("protocol", "buffered", "raw")
LEGS = ("tcp", "unix")
CLIENTS = (1, 4)
LOOPS = ("uvloop", "asyncio")
REPO = Path(__file__).resolve().parents[1]

# a COM_QUERY frame: 3-byte length, sequence 0, then 0x03 and the query
_QUERY = b"\x03SELECT c FROM sbtest1 WHERE id=49152".ljust(46, b" ")
REQUEST = len(_QUERY).to_bytes(3, "little") + b"\x00" + _QUERY
REQUEST_SIZE = len(REQUEST)  # 50
REPLY = bytes(range(120))
"""What a point select's result set weighs on the wire with a short row (column count, definition, row,
EOF); the content does not matter, only the size and that it comes in one write."""
REPLY_SIZE = len(REPLY)
READ_SIZE = 65536
WARM_UP_ROUND_TRIPS = 200
READY_TIMEOUT_S = 20.0
PR_SET_PDEATHSIG = 1
UNIX_PATH_MAX = 107  # sun_path, less its terminating NUL


# ---- the leg server: one form, TCP and Unix -----------------------------------------------------


def _nodelay(sock: Any) -> None:
    if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class _TransportLeg:
    """What the two transport forms share: the reply per whole request, and backpressure."""

    def __init__(self) -> None:
        self.partial = 0  # bytes of a request not yet whole
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        _nodelay(transport.get_extra_info("socket"))

    def answer(self, nbytes: int) -> None:
        replies, self.partial = divmod(self.partial + nbytes, REQUEST_SIZE)
        if replies:
            self.transport.write(REPLY if replies == 1 else REPLY * replies)  # type: ignore[union-attr]

    def pause_writing(self) -> None:
        self.transport.pause_reading()  # type: ignore[union-attr]

    def resume_writing(self) -> None:
        self.transport.resume_reading()  # type: ignore[union-attr]


class ProtocolLeg(_TransportLeg, asyncio.Protocol):
    """Today's form: a fresh bytes object per read."""

    def data_received(self, data: bytes) -> None:
        self.answer(len(data))


class BufferedLeg(_TransportLeg, asyncio.BufferedProtocol):
    """One bytearray per connection, read into again and again."""

    def __init__(self) -> None:
        super().__init__()
        self.buffer = memoryview(bytearray(READ_SIZE))

    def get_buffer(self, sizehint: int) -> memoryview:
        return self.buffer

    def buffer_updated(self, nbytes: int) -> None:
        self.answer(nbytes)


class RawLeg:
    """A non-blocking socket driven by add_reader/add_writer, one reused read buffer."""

    def __init__(self, loop: asyncio.AbstractEventLoop, sock: socket.socket, legs: set[RawLeg]) -> None:
        self.loop, self.sock, self.legs = loop, sock, legs
        self.fd = sock.fileno()
        self.partial = 0
        self.buffer = bytearray(READ_SIZE)
        self.unsent = bytearray()  # what a send could not take; reading waits until it is gone
        legs.add(self)
        loop.add_reader(self.fd, self.on_readable)

    def on_readable(self) -> None:
        try:
            count = self.sock.recv_into(self.buffer)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            count = 0
        if not count:
            self.close()
            return
        replies, self.partial = divmod(self.partial + count, REQUEST_SIZE)
        if replies:
            self.write(REPLY if replies == 1 else REPLY * replies)

    def write(self, data: bytes) -> None:
        try:
            sent = self.sock.send(data)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError:
            self.close()
            return
        if sent < len(data):
            self.unsent += memoryview(data)[sent:]
            self.loop.remove_reader(self.fd)
            self.loop.add_writer(self.fd, self.on_writable)

    def on_writable(self) -> None:
        try:
            sent = self.sock.send(self.unsent)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self.close()
            return
        del self.unsent[:sent]
        if not self.unsent:
            self.loop.remove_writer(self.fd)
            self.loop.add_reader(self.fd, self.on_readable)

    def close(self) -> None:
        if self in self.legs:
            self.legs.discard(self)
            self.loop.remove_reader(self.fd)
            self.loop.remove_writer(self.fd)
            self.sock.close()


def _raw_listener(loop: asyncio.AbstractEventLoop, listener: socket.socket, legs: set[RawLeg]) -> None:
    listener.setblocking(False)
    listener.listen(128)

    def on_accept() -> None:
        while True:
            try:
                sock, _ = listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            sock.setblocking(False)
            _nodelay(sock)
            RawLeg(loop, sock, legs)

    loop.add_reader(listener.fileno(), on_accept)


async def _serve(form: str, tcp_port: int, unix_path: str) -> None:
    loop = asyncio.get_running_loop()
    stopped = loop.create_future()
    loop.add_signal_handler(signal.SIGTERM, lambda: stopped.done() or stopped.set_result(None))
    if form == "raw":
        legs: set[RawLeg] = set()
        tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        tcp.bind(("127.0.0.1", tcp_port))
        unix = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        unix.bind(unix_path)
        for listener in (tcp, unix):
            _raw_listener(loop, listener, legs)
        print("ready", flush=True)
        await stopped
        for leg in list(legs):
            leg.close()
        return
    factory = ProtocolLeg if form == "protocol" else BufferedLeg
    servers = [await loop.create_server(factory, "127.0.0.1", tcp_port),
               await loop.create_unix_server(factory, unix_path)]
    print("ready", flush=True)
    await stopped
    for server in servers:
        server.close()


def serve(form: str, loop_name: str, tcp_port: int, unix_path: str) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a terminal's Ctrl-C: the bench stops its servers itself
    with contextlib.suppress(OSError, AttributeError):  # a net: the server goes when the bench does
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    if loop_name == "uvloop":
        import uvloop
        factory = uvloop.new_event_loop
    else:
        factory = asyncio.new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        runner.run(_serve(form, tcp_port, unix_path))


# ---- the load: client processes doing ping-pong -------------------------------------------------


def _round_trip(sock: socket.socket, view: memoryview) -> None:
    sock.sendall(REQUEST)
    got = 0
    while got < REPLY_SIZE:
        count = sock.recv_into(view[got:], REPLY_SIZE - got)
        if not count:
            raise ConnectionError("the leg server closed the connection")
        got += count


def client_worker(commands: Connection) -> None:
    """A client process: ("connect", family, address) -> "ready"; ("go", deadline) -> (round trips,
    seconds); ("close",); None ends it."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the bench stops its clients itself
    for signum in (signal.SIGTERM, signal.SIGHUP):  # not the bench's handlers (bench/stopping.py), forked
        signal.signal(signum, signal.SIG_DFL)
    sock: socket.socket | None = None
    reply = bytearray(REPLY_SIZE)
    view = memoryview(reply)
    while (command := commands.recv()) is not None:
        if command[0] == "connect":
            sock = socket.socket(command[1], socket.SOCK_STREAM)
            sock.connect(command[2])
            _nodelay(sock)
            for _ in range(WARM_UP_ROUND_TRIPS):
                _round_trip(sock, view)
            if reply != REPLY:
                raise RuntimeError("the leg server's reply is not REPLY")
            commands.send("ready")
        elif command[0] == "go":
            assert sock is not None
            deadline, now = command[1], time.monotonic
            send, recv_into, count = sock.send, sock.recv_into, 0
            began = now()
            while True:
                for _ in range(32):  # 50 and 120 bytes on loopback: one send, one recv (checked below)
                    send(REQUEST)
                    got = recv_into(reply, REPLY_SIZE)
                    if got != REPLY_SIZE:
                        while got < REPLY_SIZE:
                            more = recv_into(view[got:], REPLY_SIZE - got)
                            if not more:
                                raise ConnectionError("the leg server closed the connection")
                            got += more
                count += 32
                if now() >= deadline:
                    break
            commands.send((count, now() - began))
        elif command[0] == "close" and sock is not None:
            sock.close()
            sock = None


# ---- the driver ----------------------------------------------------------------------------------


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def sched_cpu_seconds(pid: int) -> float:
    """Time on the CPU of every thread of `pid`, in ns resolution (/proc/<pid>/task/*/schedstat)."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError, ValueError, IndexError):
            total += int((task / "schedstat").read_text().split()[0])
    return total / 1e9


class LegServer:
    def __init__(self, form: str, loop: str, port: int, workdir: Path) -> None:
        self.form, self.loop, self.port = form, loop, port
        self.unix_path = str(workdir / f"{loop}-{form}.sock")
        if len(os.fsencode(self.unix_path)) > UNIX_PATH_MAX:
            raise RuntimeError(f"{self.unix_path}: too long for a Unix socket; set TMPDIR to a shorter directory")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "bench.client_leg", "--serve", form, "--loop", loop, "--tcp-port", str(self.port),
             "--unix", self.unix_path], cwd=REPO, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL)

    def wait_ready(self) -> None:
        assert self.process.stdout is not None
        ready, _, _ = select.select([self.process.stdout], [], [], READY_TIMEOUT_S)
        line = self.process.stdout.readline() if ready else b""
        if line.strip() != b"ready":
            self.stop()
            raise RuntimeError(f"leg server {self.loop}/{self.form} did not start (exit status {self.process.poll()})")
        log(f"leg server {self.loop}/{self.form}: pid {self.process.pid}, 127.0.0.1:{self.port} and {self.unix_path}")

    def address(self, leg: str) -> tuple[int, Any]:
        return (socket.AF_INET, ("127.0.0.1", self.port)) if leg == "tcp" else (socket.AF_UNIX, self.unix_path)

    def stop(self) -> None:
        with uninterrupted():
            if self.process.poll() is None:
                self.process.terminate()
                try:
                    self.process.wait(5)
                except subprocess.TimeoutExpired:
                    self.process.kill()
                    self.process.wait()
            if self.process.stdout is not None:
                self.process.stdout.close()


def measure(server: LegServer, leg: str, clients: list[Connection], seconds: float) -> dict[str, float]:
    family, address = server.address(leg)
    for client in clients:
        client.send(("connect", family, address))
    for client in clients:
        if client.recv() != "ready":
            raise RuntimeError("a client did not connect")
    pid = server.process.pid
    ticks0, sched0 = cpu_seconds(pid), sched_cpu_seconds(pid)
    deadline = time.monotonic() + seconds
    for client in clients:
        client.send(("go", deadline))
    results = [client.recv() for client in clients]
    ticks1, sched1 = cpu_seconds(pid), sched_cpu_seconds(pid)
    for client in clients:
        client.send(("close",))
    round_trips = sum(count for count, _ in results)
    return {"round_trips": round_trips, "rate": sum(count / elapsed for count, elapsed in results),
            "seconds": max(elapsed for _, elapsed in results),
            "cpu_us": (sched1 - sched0) / round_trips * 1e6, "cpu_us_ticks": (ticks1 - ticks0) / round_trips * 1e6}


def run(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    cells = [(loop, leg, clients) for loop in args.loops for leg in LEGS for clients in CLIENTS]
    cpus = sorted(os.sched_getaffinity(0))
    pinned = {"server": cpus[-1:], "clients": cpus[:-1]} if args.pin and len(cpus) > 1 else None
    started = time.time()
    results: dict[str, Any] = {
        "started": started, "machine": machine_info(), "load_average_start": os.getloadavg(),
        "design": {"forms": list(FORMS), "legs": list(LEGS), "clients": list(CLIENTS), "loops": args.loops,
                   "seconds": args.seconds, "repetitions": args.repetitions, "request_bytes": REQUEST_SIZE,
                   "reply_bytes": REPLY_SIZE, "pinned": pinned,
                   "cpu": "leg server: schedstat ns (cpu_us), stat ticks (cpu_us_ticks)"},
        "servers": [], "samples": []}
    servers: dict[tuple[str, str], LegServer] = {}
    context = multiprocessing.get_context("fork")  # spawn would start a resource tracker, a process more
    pipes: list[Connection] = []
    workers: list[Any] = []
    try:
        ports = iter(free_ports(len(args.loops) * len(FORMS)))  # all at once: distinct (bench/env.py)
        for loop in args.loops:
            for form in FORMS:
                servers[(loop, form)] = LegServer(form, loop, next(ports), workdir)
        for (loop, form), server in servers.items():  # started together, then waited for
            server.wait_ready()
            if pinned:
                os.sched_setaffinity(server.process.pid, pinned["server"])
            results["servers"].append({"loop": loop, "form": form, "pid": server.process.pid, "port": server.port,
                                       "unix": server.unix_path})
        for _ in range(max(CLIENTS)):
            ours, theirs = context.Pipe()
            worker = context.Process(target=client_worker, args=(theirs,), daemon=True)
            worker.start()
            if pinned:
                os.sched_setaffinity(worker.pid, pinned["clients"])  # type: ignore[arg-type]
            theirs.close()
            pipes.append(ours)
            workers.append(worker)
        total, done = len(cells) * len(FORMS) * args.repetitions, 0
        for repetition in range(args.repetitions):
            for index, (loop, leg, clients) in enumerate(cells):
                shift = (repetition + index) % len(FORMS)
                for form in FORMS[shift:] + FORMS[:shift]:
                    sample = measure(servers[(loop, form)], leg, pipes[:clients], args.seconds)
                    sample.update(loop=loop, form=form, leg=leg, clients=clients, repetition=repetition)
                    results["samples"].append(sample)
                    done += 1
                    log(f"[{done}/{total}] {loop} {form:8} {leg:4} clients={clients}: {sample['rate']:8.0f} rt/s, "
                        f"{sample['cpu_us']:6.2f} us CPU/rt")
    finally:
        with uninterrupted():
            for pipe in pipes:
                with contextlib.suppress(OSError):
                    pipe.send(None)
            for worker in workers:
                worker.join(2)
                if worker.is_alive():
                    worker.kill()
                    worker.join()
            for server in servers.values():
                server.stop()
    results["finished"] = time.time()
    results["load_average_end"] = os.getloadavg()
    results["summary"] = summarize(results["samples"])
    return results


# ---- the summary and report --------------------------------------------------------------------


def _stats(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}


def summarize(samples: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per loop x leg x clients x form: rate and CPU stats, and the CPU per round trip over protocol's in
    the same repetition (paired: the two ran next to each other)."""
    cells: dict[tuple[str, str, int, str], list[dict[str, Any]]] = {}
    for sample in samples:
        cells.setdefault((sample["loop"], sample["leg"], sample["clients"], sample["form"]), []).append(sample)
    rows = []
    for (loop, leg, clients, form), group in cells.items():
        base = {s["repetition"]: s for s in cells.get((loop, leg, clients, "protocol"), [])}
        ratios = [s["cpu_us"] / base[s["repetition"]]["cpu_us"] for s in group if s["repetition"] in base]
        rows.append({"loop": loop, "leg": leg, "clients": clients, "form": form,
                     "rate": _stats([s["rate"] for s in group]), "cpu_us": _stats([s["cpu_us"] for s in group]),
                     "cpu_us_ticks": _stats([s["cpu_us_ticks"] for s in group]),
                     "cpu_vs_protocol": _stats(ratios) if ratios else None})
    order = {name: index for index, name in enumerate(LOOPS + LEGS + FORMS)}
    return sorted(rows, key=lambda r: (order[r["loop"]], order[r["leg"]], r["clients"], order[r["form"]]))


def _spread(stats: dict[str, float], digits: int) -> str:
    return f"{stats['median']:.{digits}f} [{stats['min']:.{digits}f}-{stats['max']:.{digits}f}]"


def report(results: dict[str, Any]) -> str:
    design, machine = results["design"], results["machine"]
    lines = ["# The client leg's form, head to head", "",
             f"{machine['cpus']} CPUs ({machine['cpu_model']}); load average {results['load_average_start'][0]:.2f} "
             f"at the start, {results['load_average_end'][0]:.2f} at the end. {design['repetitions']} repetitions "
             f"of {design['seconds']} s per sample, interleaved, the forms' order rotating. Requests "
             f"{design['request_bytes']} bytes, replies {design['reply_bytes']} bytes, one round trip at a time "
             "per client connection (each client a process of its own)."
             + (f" Pinned: leg servers on CPU {design['pinned']['server']}, clients on CPUs "
                f"{design['pinned']['clients']}." if design.get("pinned") else ""), "",
             "CPU is the leg server's (one process per form), per round trip, from schedstat (ns); the stat "
             "column is utime+stime (10 ms ticks) as a cross-check. The machine is shared: CPU per round "
             "trip is the robust figure, rates are noisy (they move with whatever else runs). \"vs protocol\" "
             "is the CPU per round trip over today's form's in the same repetition (paired), median [min-max].",
             ""]
    for loop in design["loops"]:
        lines += [f"## {loop}", "", "| leg | clients | form | round trips/s | CPU us/rt | CPU us/rt (stat) | vs protocol |",
                  "|---|---|---|---|---|---|---|"]
        for row in results["summary"]:
            if row["loop"] != loop:
                continue
            ratio = _spread(row["cpu_vs_protocol"], 3) if row["cpu_vs_protocol"] else "-"
            lines.append(f"| {row['leg']} | {row['clients']} | {row['form']} | {_spread(row['rate'], 0)} | "
                         f"{_spread(row['cpu_us'], 2)} | {row['cpu_us_ticks']['median']:.2f} | {ratio} |")
        lines.append("")
        cheapest = {}
        for row in results["summary"]:
            if row["loop"] == loop:
                key = (row["leg"], row["clients"])
                if key not in cheapest or row["cpu_us"]["median"] < cheapest[key]["cpu_us"]["median"]:
                    cheapest[key] = row
        lines += [f"- cheapest at {leg} x {clients}: {row['form']} ({row['cpu_us']['median']:.2f} us/rt)"
                  for (leg, clients), row in cheapest.items()]
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.client_leg", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=3.0, help="per sample")
    parser.add_argument("--repetitions", type=int, default=5)
    parser.add_argument("--out", type=Path, default=Path("client-leg"))
    parser.add_argument("--loops", default="uvloop", help="comma-separated: uvloop, asyncio")
    parser.add_argument("--pin", action="store_true",
                        help="the leg servers on the last CPU, the clients on the others (steadier wake-ups)")
    parser.add_argument("--serve", choices=FORMS, help=argparse.SUPPRESS)  # a leg server (started by the bench)
    parser.add_argument("--loop", choices=LOOPS, default="uvloop", help=argparse.SUPPRESS)
    parser.add_argument("--tcp-port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--unix", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        serve(args.serve, args.loop, args.tcp_port, args.unix)
        return 0
    args.loops = [loop.strip() for loop in args.loops.split(",") if loop.strip()]
    if not args.loops or set(args.loops) - set(LOOPS):
        parser.error(f"--loops: a comma-separated list of {', '.join(LOOPS)}")

    def command() -> int:
        results = run(args, Path(tempfile.mkdtemp(prefix="leg-")))  # in guarded()'s directory, removed at the end
        with output_folder(args.out) as out:
            (out / "client_leg.json").write_text(json.dumps(results, indent=1) + "\n")
            (out / "report.md").write_text(report(results))
        log(f"done: {args.out / 'report.md'}")
        return 0

    return guarded("bench client_leg", command)


if __name__ == "__main__":
    sys.exit(main())
