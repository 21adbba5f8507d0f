"""lifecycle.run_until_stopped with a fake service: stop requests, the second request's abort, the
supervisor's command lines, and the exit codes (signals themselves: tests/integration/test_workers.py)."""

from __future__ import annotations

import asyncio
import os
from typing import Any

import pytest

from tlsproxy.lifecycle import CommandFeed, StopRequests, run_until_stopped


class FakeService:
    def __init__(self, *, starts: bool = True, code: int = 0) -> None:
        self.starts = starts
        self.code = code
        self.events: list[str] = []
        self.drained = asyncio.Event()

    async def start(self) -> bool:
        self.events.append("start")
        return self.starts

    def reload(self) -> None:
        self.events.append("reload")

    async def drain(self) -> int:
        self.events.append("drain")
        await self.drained.wait()
        return self.code

    def abort(self) -> None:
        self.events.append("abort")
        self.drained.set()


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def running(service: FakeService, stop: StopRequests, **options: Any) -> asyncio.Future[int]:
    """run_until_stopped, started and serving."""
    task = asyncio.ensure_future(run_until_stopped(service, stop, **options))
    await settle()
    return task


def test_a_stop_request_drains_and_a_second_one_aborts() -> None:
    async def scenario() -> list[str]:
        service, stop = FakeService(code=0), StopRequests()
        serving = await running(service, stop)
        stop.request_stop()
        stop.request_stop()  # before the drain began: the same request
        await settle()
        assert service.events == ["start", "drain"]
        stop.request_stop()
        assert await serving == 0
        return service.events

    assert asyncio.run(scenario()) == ["start", "drain", "abort"]


def test_without_repeat_aborts_only_an_abort_request_aborts() -> None:
    async def scenario() -> list[str]:
        service, stop = FakeService(code=0), StopRequests(repeat_aborts=False)
        serving = await running(service, stop)
        stop.request_stop()
        await settle()
        stop.request_stop()
        stop.request_drain()
        await settle()
        assert service.events == ["start", "drain"]
        stop.request_abort()
        assert await serving == 0
        return service.events

    assert asyncio.run(scenario()) == ["start", "drain", "abort"]


def test_a_drain_that_ends_by_itself_is_not_aborted_and_gives_the_exit_code() -> None:
    async def scenario() -> tuple[int, list[str]]:
        service, stop = FakeService(code=1), StopRequests()
        serving = await running(service, stop)
        stop.request_stop()
        await settle()
        service.drained.set()
        return await serving, service.events

    assert asyncio.run(scenario()) == (1, ["start", "drain"])


def test_a_service_that_cannot_start_exits_1_without_draining() -> None:
    service = FakeService(starts=False)
    assert asyncio.run(run_until_stopped(service, StopRequests())) == 1
    assert service.events == ["start"]


@pytest.mark.parametrize(
    ("chunks", "expected"),
    [
        ([b"drain\n"], ["drain"]),
        ([b"rel", b"oad\nabort\n"], ["reload", "abort"]),
        ([b" drain \r\n"], ["drain"]),
    ],
)
def test_command_feed_splits_lines(chunks: list[bytes], expected: list[str]) -> None:
    lines: list[str] = []
    feed = CommandFeed(lines.append)
    for chunk in chunks:
        feed.data_received(chunk)
    assert lines == expected
    feed.eof_received()
    assert lines == [*expected, "eof"]


def test_the_command_feed_reloads_and_its_end_drains(caplog: pytest.LogCaptureFixture) -> None:
    async def scenario() -> list[str]:
        read_fd, write_fd = os.pipe()
        service, stop = FakeService(code=0), StopRequests(repeat_aborts=False)
        with os.fdopen(read_fd, "rb", buffering=0) as commands:
            serving = await running(service, stop, commands=commands)
            os.write(write_fd, b"reload\n")
            await asyncio.sleep(0.05)
            os.close(write_fd)  # the supervisor is gone
            await asyncio.sleep(0.05)
            assert service.events == ["start", "reload", "drain"]
            service.drained.set()
            assert await serving == 0
        return service.events

    assert asyncio.run(scenario()) == ["start", "reload", "drain"]
    assert "the supervisor is gone: shutting down" in caplog.text
