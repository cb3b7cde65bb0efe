"""The health and metrics ports under abuse: idle sockets, slowloris, and /status?digest=1 floods.

Measured before these bounds: idle sockets on typha's health port made /liveness time out for 15 s
(the kubelet would restart a healthy replica), and every /status?digest=1 hashed the whole cache on
the event loop (69 ms each on 100k keys).
"""

from __future__ import annotations

import asyncio
import time

import aiohttp
import pytest

from protocol.digest import state_digest
from typha.ops import DIGESTS, health_app, start_site
from typha.syncserver import ServerConfig, SyncServer

from .conftest import make_cache

pytestmark = pytest.mark.slow  # servers on loopback


async def test_idle_sockets_cannot_starve_the_health_port() -> None:
    caches = {"felix": make_cache(10)}
    server = SyncServer(caches, ServerConfig(host="127.0.0.1", port=0))
    await server.start()
    runner, port = await start_site(health_app(server, caches), "127.0.0.1", 0, max_connections=16)
    idle = [await asyncio.open_connection("127.0.0.1", port) for _ in range(100)]
    try:
        async with aiohttp.ClientSession() as http:
            t0 = time.monotonic()
            async with http.get(f"http://127.0.0.1:{port}/liveness", timeout=aiohttp.ClientTimeout(total=5)) as r:
                assert r.status == 200
            assert time.monotonic() - t0 < 2.0
        # The oldest idle sockets were closed to make room; the newest are still held.
        assert await asyncio.wait_for(idle[0][0].read(), 2) == b""
        assert not idle[-1][0].at_eof()
    finally:
        for _, w in idle:
            w.close()
        await runner.cleanup()
        await server.shutdown()


async def test_no_ops_connection_outlives_its_lifetime() -> None:
    caches = {"felix": make_cache(10)}
    server = SyncServer(caches, ServerConfig(host="127.0.0.1", port=0))
    await server.start()
    runner, port = await start_site(health_app(server, caches), "127.0.0.1", 0, lifetime=0.5)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        t0 = time.monotonic()
        for ch in b"GET /liveness HTTP/1.1\r\nHost: x\r\n":  # a slowloris: a header a byte at a time
            writer.write(bytes([ch]))
            await asyncio.sleep(0.02)
            if reader.at_eof():
                break
        assert await asyncio.wait_for(reader.read(), 3) == b""
        assert time.monotonic() - t0 < 1.5
    finally:
        writer.close()
        await runner.cleanup()
        await server.shutdown()


async def test_status_digests_are_computed_once_and_off_the_loop() -> None:
    cache = make_cache(20_000)
    caches = {"felix": cache}
    server = SyncServer(caches, ServerConfig(host="127.0.0.1", port=0))
    await server.start()
    app = health_app(server, caches)
    runner, port = await start_site(app, "127.0.0.1", 0)
    digests = app[DIGESTS]
    try:
        async with aiohttp.ClientSession() as http:

            async def status() -> dict:
                async with http.get(f"http://127.0.0.1:{port}/status?digest=1") as r:
                    return (await r.json())["syncers"]["felix"]

            answers = await asyncio.gather(*(status() for _ in range(20)))
            truth = state_digest((k, v) for k, (_, v, _) in cache.items().items())
            assert {(a["digest"], a["digest_seq"]) for a in answers} == {(truth, cache.head.seq)}
            assert digests.computed == 1  # twenty requests, one hash
            assert (await status())["digest"] == truth and digests.computed == 1  # reused: nothing changed
            cache.apply([("/calico/test/new", b"1", "1")])
            t0 = time.monotonic()
            after = await status()
            assert after["digest_seq"] == cache.head.seq and after["digest"] != truth
            assert digests.computed == 2 and time.monotonic() - t0 < 3
    finally:
        await runner.cleanup()
        await server.shutdown()
