"""bench/stopping.py's parts without any server: the output folder an interrupted run leaves, and (in a
child Python, as guarded() owns the process's signals and children) a signal inside uninterrupted(), in
an event loop, and a child process left behind by a command."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from bench.stopping import output_folder

REPO = Path(__file__).resolve().parents[2]


def test_output_folder_keeps_a_complete_run(tmp_path: Path) -> None:
    out = tmp_path / "new"
    with output_folder(out):
        (out / "results.json").write_text("{}")
    assert (out / "results.json").exists()


def test_output_folder_removes_what_an_interrupted_run_wrote(tmp_path: Path) -> None:
    out = tmp_path / "new"
    with pytest.raises(KeyboardInterrupt), output_folder(out):
        (out / "results.json").write_text("{")
        (out / "plots").mkdir()
        raise KeyboardInterrupt
    assert not out.exists()

    old = tmp_path / "old"
    old.mkdir()
    (old / "notes.md").write_text("kept")
    (old / "report.md").write_text("an earlier run's")
    os.utime(old / "notes.md", (0, 0))
    os.utime(old / "report.md", (0, 0))
    with pytest.raises(RuntimeError), output_folder(old):
        (old / "report.md").write_text("half of this run's")
        raise RuntimeError("failed")
    assert sorted(path.name for path in old.iterdir()) == ["notes.md"]


def _child(code: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, TMPDIR=str(tmp_path),
               PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, env=env,
                          cwd=REPO, timeout=60, check=False)


def test_a_signal_waits_for_the_end_of_an_uninterrupted_block(tmp_path: Path) -> None:
    result = _child("""
        import os, signal, sys, time
        from bench.stopping import guarded, uninterrupted

        def command():
            with uninterrupted():
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(0.2)
                print("block finished", flush=True)
            print("not reached", flush=True)
            return 0

        sys.exit(guarded("test", command))
    """, tmp_path)
    assert result.returncode == 143, result.stderr
    assert result.stdout == "block finished\n"
    assert result.stderr.splitlines()[-1].startswith("test: interrupted by SIGTERM; everything it started is stopped")
    assert not list(tmp_path.iterdir())  # its temporary directory is gone


def test_a_signal_in_an_event_loop_cancels_the_task_and_its_cleanup_runs(tmp_path: Path) -> None:
    result = _child("""
        import asyncio, os, signal, sys
        from bench.stopping import guarded, run_async

        async def worker():
            try:
                await asyncio.sleep(60)
            finally:
                print("worker cleaned up", flush=True)

        async def main():
            task = asyncio.create_task(worker())
            asyncio.get_running_loop().call_later(0.1, os.kill, os.getpid(), signal.SIGINT)
            try:
                await task
            finally:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
                print("main cleaned up", flush=True)

        sys.exit(guarded("test", lambda: run_async(main()) or 0))
    """, tmp_path)
    assert result.returncode == 130, result.stderr
    assert result.stdout == "worker cleaned up\nmain cleaned up\n"
    assert "Traceback" not in result.stderr and "never retrieved" not in result.stderr


def test_the_net_kills_what_a_command_left_running(tmp_path: Path) -> None:
    result = _child("""
        import subprocess, sys
        from bench.stopping import guarded

        def command():
            # its own session and no Popen kept: nothing but the net can stop it
            subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True)
            raise RuntimeError("an error")

        sys.exit(guarded("test", command))
    """, tmp_path)
    assert result.returncode == 1
    lines = result.stderr.splitlines()
    assert "RuntimeError: an error" in lines
    assert lines[-2].startswith("test: 1 process(es) outlived their stop and were killed: python")
    assert lines[-1].startswith("test: failed (RuntimeError); everything it started is stopped")
