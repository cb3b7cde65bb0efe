"""The real `python -m felix` process exits within a second of SIGTERM, whatever typha is doing.

Felix runs without route or policy programming (`FELIX_ROUTES_ENABLED=false`,
`FELIX_POLICY_ENABLED=false`), so no privileges are needed: what is measured is the agent's
lifecycle, and above all `SyncClient.stop()` reaching every place the client can be waiting (a
live stream, a handshake that never completes, a redial backoff of several seconds).
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator, Callable

import pytest

from .conftest import make_cache, wait_for

pytestmark = pytest.mark.slow  # starts felix processes

EXIT_LIMIT = 1.0  # seconds from SIGTERM to exit (GUIDE: every program exits within a second of SIGTERM)


class Felix:
    """A felix process whose stderr is collected as it runs."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.log: list[str] = []
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        assert self.proc.stderr is not None
        while line := await self.proc.stderr.readline():
            self.log.append(line.decode(errors="replace"))

    def logged(self, pattern: str) -> Callable[[], bool]:
        rx = re.compile(pattern)
        return lambda: any(rx.search(line) for line in self.log)

    async def terminate_and_time(self) -> float:
        assert self.proc.returncode is None, "".join(self.log)
        t0 = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(self.proc.wait(), 10)
        except TimeoutError:
            self.proc.kill()
            raise AssertionError("felix ignored SIGTERM for 10 s:\n" + "".join(self.log[-20:])) from None
        took = time.monotonic() - t0
        await self._reader
        return took


@pytest.fixture
async def start_felix() -> AsyncIterator[Callable[[str], object]]:
    started: list[Felix] = []

    async def start(typha: str) -> Felix:
        env = {
            **os.environ,
            "FELIX_NODENAME": "shutdown-test",
            "FELIX_TYPHA_ADDRESSES": typha,
            "FELIX_ROUTES_ENABLED": "false",
            "FELIX_POLICY_ENABLED": "false",
            "FELIX_HEALTH_PORT": "0",
            "FELIX_METRICS_PORT": "0",
            "FELIX_LOG_LEVEL": "INFO",
        }
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "felix", env=env, stdin=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE
        )
        felix = Felix(proc)
        started.append(felix)
        await wait_for(felix.logged("felix for node shutdown-test starting"), 30, "felix to start")
        return felix

    yield start
    for felix in started:
        if felix.proc.returncode is None:
            felix.proc.kill()
            await felix.proc.wait()


async def test_exits_promptly_while_following_a_live_typha(server_factory, start_felix) -> None:
    server = await server_factory(make_cache(100))
    felix = await start_felix(f"127.0.0.1:{server.port}")
    await wait_for(felix.logged("in sync with typha"), 20, "felix to sync")
    took = await felix.terminate_and_time()
    assert felix.proc.returncode == 0, "".join(felix.log)
    assert took < EXIT_LIMIT, f"felix took {took:.2f}s to exit"
    await wait_for(lambda: not server.connections, 3, "typha to see felix go")


async def test_exits_promptly_while_typha_is_unreachable(start_felix) -> None:
    with socket.socket() as s:  # a port nothing listens on: every dial is refused, backoff grows to 10 s
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    felix = await start_felix(f"127.0.0.1:{port}")
    # Wait until felix sits in a long backoff: before the fix it slept it out (up to 10 s) after SIGTERM.
    await wait_for(felix.logged(r"reconnecting in ([2-9]|\d\d)\.\d\ds"), 60, "a backoff of 2 s or more")
    took = await felix.terminate_and_time()
    assert felix.proc.returncode == 0, "".join(felix.log)
    assert took < EXIT_LIMIT, f"felix took {took:.2f}s to exit"


async def test_exits_promptly_while_typha_never_answers_the_hello(start_felix) -> None:
    # A black-holed replica: TCP connects, then silence (felix would wait out its connect timeout).
    listener = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = listener.sockets[0].getsockname()[1]
    try:
        felix = await start_felix(f"127.0.0.1:{port}")
        await asyncio.sleep(0.3)  # felix dials at start-up; give it time to be mid-handshake
        took = await felix.terminate_and_time()
    finally:
        listener.close()
    assert felix.proc.returncode == 0, "".join(felix.log)
    assert took < EXIT_LIMIT, f"felix took {took:.2f}s to exit"
