"""SyncClient's lifecycle: `stop()` ends `run()` promptly at every point of the reconnect loop."""

from __future__ import annotations

import asyncio
import socket
import time

import pytest

from protocol.client import SyncClient

from .conftest import make_cache, wait_for

pytestmark = pytest.mark.slow  # real servers on loopback


async def stop_within(client: SyncClient, task: asyncio.Task[None], limit: float) -> float:
    t0 = time.monotonic()
    client.stop()
    await asyncio.wait_for(task, limit)
    return time.monotonic() - t0


@pytest.mark.parametrize("passes", range(8))
async def test_stop_during_a_reconnect_ends_run(server_factory, passes: int) -> None:
    # The reproduction: stop() while the redial is in flight (after `passes` loop passes) used to
    # be forgotten, and run() followed the new connection for ever.
    server = await server_factory(make_cache(10))
    client = SyncClient([("127.0.0.1", server.port)], "felix", hostname="n", backoff_initial=0.0)
    task = asyncio.create_task(client.run())
    await client.wait_in_sync(5)
    client.disconnect("testing stop")
    for _ in range(passes):
        await asyncio.sleep(0)
    await stop_within(client, task, 3)
    await wait_for(lambda: not server.connections, 3, "the server to see the client go")


async def test_stop_wakes_the_backoff_sleep(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("protocol.client.random.uniform", lambda low, high: high)  # no jitter: the full 30 s
    with socket.socket() as s:  # a port nothing listens on: every dial is refused at once
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    client = SyncClient([("127.0.0.1", port)], "felix", hostname="n", backoff_initial=30.0, backoff_max=30.0)
    task = asyncio.create_task(client.run())
    await wait_for(lambda: client.stats.disconnects == 1, 5, "a refused dial")  # now in a 30 s backoff
    await asyncio.sleep(0.05)
    assert await stop_within(client, task, 1) < 0.5


async def test_stop_interrupts_a_dial_that_hangs() -> None:
    # An address source that never answers (an API server that is down) or a connect that is black-holed.
    hang = asyncio.Event()

    async def addresses() -> list[tuple[str, int]]:
        await hang.wait()
        return []

    client = SyncClient(addresses, "felix", hostname="n", connect_timeout=30.0)
    task = asyncio.create_task(client.run())
    await asyncio.sleep(0.05)
    assert await stop_within(client, task, 1) < 0.5
    assert client.stats.connects == 0


async def test_stop_before_run_returns_at_once() -> None:
    client = SyncClient([("127.0.0.1", 1)], "felix", hostname="n")
    client.stop()
    await asyncio.wait_for(client.run(), 1)
    assert client.stats.connects == 0 and client.stats.disconnects == 0


async def test_stop_while_following_says_goodbye(server_factory) -> None:
    server = await server_factory(make_cache(10))
    client = SyncClient([("127.0.0.1", server.port)], "felix", hostname="n")
    task = asyncio.create_task(client.run())
    await client.wait_in_sync(5)
    assert await stop_within(client, task, 1) < 0.5
    await wait_for(lambda: not server.connections, 3, "the server to see the goodbye")
    assert client.stats.disconnects == 0  # a requested stop is not a disconnect
