"""How `python -m bench run` and `python -m bench soak` stop: everything they started, whatever ends them.

A run starts a world (bench/env.py: MariaDB, tlsproxy and its worker processes, socat) and clients
(sysbench, bench/handshake_process.py, the mariadb CLI), several in sessions of their own so that a
terminal's Ctrl-C does not reach them: the bench stops them itself. :func:`guarded` runs a command so
that a SIGTERM, SIGINT (Ctrl-C) or SIGHUP, or an error, stops all of it:

* A signal becomes an exception. The first one raises :class:`Interrupted` where the program is (a
  KeyboardInterrupt, so asyncio lets it out of its event loop as it does Ctrl-C's), and the
  `with BenchEnv.create(...)` blocks and `finally` clauses on the way out stop what they started the
  usual way (SIGTERM to each process group, SIGKILL after a grace). Later signals only print that
  stopping is under way. Code that stops things runs inside :func:`uninterrupted`: a signal arriving
  there takes effect at its end, so a stop is never cut in half.
* A net under that. The bench process is a child subreaper (prctl), so a process whose parent died
  (a tlsproxy worker, in a session of its own) stays its descendant; at the end every descendant still
  alive is killed and reaped. One temporary directory holds every other one, the children's too
  (TMPDIR and tempfile point into it), and is removed.
* The exit status is 128 + the signal's number (130 for SIGINT, 143 for SIGTERM) or 1 after an error,
  with one line on stderr saying that nothing is left running.

Results: a run writes its output folder only at its end, inside :func:`output_folder`, which removes
what an interrupted or failed run wrote there: what is left is a complete run's.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import shutil
import signal
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

from bench.procs import process_tree

SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
TEMP_PREFIX = "tlsp-bench-"
PR_SET_CHILD_SUBREAPER = 36  # <linux/prctl.h>
NET_TIMEOUT_S = 10.0
T = TypeVar("T")


class Interrupted(KeyboardInterrupt):
    """A signal asked the bench to stop (raised by the handler :func:`guarded` installs)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name

    @property
    def status(self) -> int:
        return 128 + self.signum


class _State:
    stopping = False  # a signal has been raised (or an error is unwinding): later ones only say so
    depth = 0  # nesting of uninterrupted()
    pending: int | None = None  # a signal that arrived inside uninterrupted()


def _on_signal(signum: int, frame: object) -> None:
    if _State.stopping:  # os.write: print() here could re-enter a print the signal interrupted
        os.write(2, f"bench: {signal.Signals(signum).name}: already stopping what the run started\n".encode())
        return
    if _State.depth:
        _State.pending = signum
        return
    _State.stopping = True
    raise Interrupted(signum)


@contextlib.contextmanager
def uninterrupted() -> Iterator[None]:
    """A block a signal does not cut: one arriving inside is raised at its end (stopping code)."""
    _State.depth += 1
    try:
        yield
    finally:
        _State.depth -= 1
        if not _State.depth and _State.pending is not None:
            signum, _State.pending = _State.pending, None
            if not _State.stopping:
                _State.stopping = True
                raise Interrupted(signum)


@contextlib.contextmanager
def output_folder(out: Path) -> Iterator[Path]:
    """The run's output folder, created if missing. If the block raises (a signal, an error), what it
    wrote there is removed (new entries and those changed since it began), and the folder if it made it."""
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    began = time.time()
    before = set(out.iterdir())
    try:
        yield out
    except BaseException:
        with uninterrupted():
            for entry in out.iterdir():
                with contextlib.suppress(OSError):
                    if entry in before and entry.lstat().st_mtime < began:
                        continue
                    if entry.is_dir() and not entry.is_symlink():
                        shutil.rmtree(entry, ignore_errors=True)
                    else:
                        entry.unlink()
            if created:
                with contextlib.suppress(OSError):
                    out.rmdir()
        raise


# ---- inside an event loop -------------------------------------------------------------------------


def run_async(coroutine: Coroutine[Any, Any, T], *,
              loop_factory: Callable[[], asyncio.AbstractEventLoop] | None = None) -> T:
    """asyncio.run for the bench: under :func:`guarded`, a signal cancels the coroutine's task, whose own
    `finally` clauses then stop its tasks in order, and :class:`Interrupted` is raised once it is done
    (raised inside the loop, it would leave that cleanup to the loop's shutdown, tasks in any order)."""
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        if signal.getsignal(signal.SIGTERM) is not _on_signal:
            return runner.run(coroutine)
        caught, result = runner.run(_cancelled_by_signals(coroutine))
    if caught is not None:
        raise Interrupted(caught)
    return result  # type: ignore[return-value]


async def _cancelled_by_signals(coroutine: Coroutine[Any, Any, T]) -> tuple[int | None, T | None]:
    loop, task = asyncio.get_running_loop(), asyncio.current_task()
    assert task is not None
    caught: list[int] = []

    def on_signal(signum: int) -> None:
        if _State.stopping:
            os.write(2, f"bench: {signal.Signals(signum).name}: already stopping what the run started\n".encode())
            return
        _State.stopping = True
        caught.append(signum)
        task.cancel()

    for signum in SIGNALS:
        loop.add_signal_handler(signum, on_signal, signum)
    try:
        result = await coroutine
    except asyncio.CancelledError:
        if not caught:
            raise
        return caught[0], None
    else:
        return (caught[0] if caught else None), result  # a signal as the coroutine ended
    finally:
        # the loop's removal resets the signal to its default; blocked meanwhile, none is lost
        signal.pthread_sigmask(signal.SIG_BLOCK, SIGNALS)
        try:
            for signum in SIGNALS:
                loop.remove_signal_handler(signum)
                signal.signal(signum, _on_signal)
        finally:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, SIGNALS)


# ---- the net: every descendant, one temporary directory ---------------------------------------


def set_subreaper(on: bool) -> bool:
    """On: orphaned descendants are re-parented to this process instead of init (Linux; False elsewhere)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return bool(libc.prctl(PR_SET_CHILD_SUBREAPER, int(on), 0, 0, 0) == 0)
    except (OSError, AttributeError):
        return False


def _reap() -> None:
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def _is_zombie(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True  # gone
    return stat[stat.rindex(")") + 2] in "ZX"


def _name(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return "?"


def kill_descendants(timeout: float = NET_TIMEOUT_S) -> tuple[list[str], list[str]]:
    """SIGKILL every descendant still alive and reap them, until none is left, not even a zombie (one of
    a dying parent is re-parented here, then reaped): (the killed, those left at `timeout`), each as
    "name (pid)". Parents go first, so a child cannot be reaped (and its pid reused) unseen."""
    killed: dict[int, str] = {}
    deadline = time.monotonic() + timeout
    while True:
        _reap()
        left = process_tree(os.getpid())[1:]
        if not left or time.monotonic() > deadline:
            return list(killed.values()), [f"{_name(pid)} ({pid})" for pid in left]
        for pid in left:
            if _is_zombie(pid):
                continue
            killed.setdefault(pid, f"{_name(pid)} ({pid})")
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.02)


# ---- running a command ---------------------------------------------------------------------------


def guarded(what: str, command: Callable[[], int]) -> int:
    """Run `command` (it returns an exit status) so that a signal or an error stops everything it started;
    return the exit status. `what` names it in the messages ("bench run")."""
    _State.stopping, _State.depth, _State.pending = False, 0, None
    previous = {signum: signal.signal(signum, _on_signal) for signum in SIGNALS}
    saved_tempdir, saved_env = tempfile.tempdir, os.environ.get("TMPDIR")
    root: str | None = None
    status: int
    ending: str | None = None
    killed: list[str] = []
    left: list[str] = []
    try:
        try:
            with uninterrupted():
                set_subreaper(True)
                root = tempfile.mkdtemp(prefix=TEMP_PREFIX)
                tempfile.tempdir = os.environ["TMPDIR"] = root
            status = command()
        except BaseException:
            _State.stopping = True  # the cleanup on the way out is not to be cut by a signal
            raise
        finally:
            with uninterrupted():
                tempfile.tempdir = saved_tempdir
                if saved_env is None:
                    os.environ.pop("TMPDIR", None)
                else:
                    os.environ["TMPDIR"] = saved_env
                killed, left = kill_descendants()
                set_subreaper(False)
                if root is not None:
                    shutil.rmtree(root, ignore_errors=True)
    except Interrupted as stop:
        status, ending = stop.status, f"interrupted by {stop.name}"
    except KeyboardInterrupt:  # raised by a handler other than ours: Ctrl-C all the same
        status, ending = 128 + signal.SIGINT, "interrupted"
    except SystemExit as exit_:  # a clear message of the command's own (argparse, the soak's limits)
        if exit_.code is None or isinstance(exit_.code, int):
            status = exit_.code or 0
        else:
            print(exit_.code, file=sys.stderr)
            status = 1
        ending = "failed" if status else None
    except BaseException as error:  # noqa: BLE001 - any error: the traceback, then the one line
        traceback.print_exc()
        status, ending = 1, f"failed ({type(error).__name__})"
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    if killed:
        print(f"{what}: {len(killed)} process(es) outlived their stop and were killed: {', '.join(killed)}",
              file=sys.stderr)
    if left:
        print(f"{what}: {ending or 'done'}; {len(left)} process(es) could not be stopped: {', '.join(left)}",
              file=sys.stderr)
        return status or 1
    if ending is not None:
        print(f"{what}: {ending}; everything it started is stopped, nothing is left running "
              "(no partial results written)", file=sys.stderr, flush=True)
    return status
