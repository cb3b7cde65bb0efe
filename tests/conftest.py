"""Shared fixtures: real servers on loopback, and condition waits with timeouts (never bare sleeps)."""

from __future__ import annotations

import asyncio
import inspect
import os
import time
from collections.abc import AsyncIterator, Callable

import pytest

from protocol import SyncStatus
from typha.snapcache import SnapCache
from typha.syncserver import ServerConfig, SyncServer

IN_CI = os.environ.get("CI", "").lower() == "true"


async def wait_for(cond: Callable[[], object], timeout: float = 10.0, what: str = "condition") -> None:
    """Poll `cond` until truthy (awaiting what it returns, if awaitable); fail with `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        ok = cond()
        if inspect.isawaitable(ok):
            ok = await ok
        if ok:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.01)


def kernel_skip(reason: str) -> None:
    """Skip a kernel test, except under CI=true where a skipped kernel test is a failure."""
    if IN_CI:
        pytest.fail(f"kernel test cannot run under CI: {reason}")
    pytest.skip(reason)


def make_cache(n: int = 0, syncer: str = "felix", in_sync: bool = True) -> SnapCache:
    cache = SnapCache(syncer)
    if n:
        cache.apply([(f"/calico/test/{i:06d}", b'{"v":%d}' % i, str(i)) for i in range(n)])
    if in_sync:
        cache.set_status(SyncStatus.RESYNC_IN_PROGRESS)
        cache.set_status(SyncStatus.IN_SYNC)
    return cache


@pytest.fixture
def server_factory() -> Callable[..., object]:
    servers: list[SyncServer] = []

    async def start(caches: dict[str, SnapCache] | SnapCache, **config: object) -> SyncServer:
        if isinstance(caches, SnapCache):
            caches = {caches.syncer_type: caches}
        cfg = ServerConfig(host="127.0.0.1", port=0, **config)  # type: ignore[arg-type]
        server = SyncServer(caches, cfg)
        await server.start()
        servers.append(server)
        return server

    start.servers = servers  # type: ignore[attr-defined]
    return start


@pytest.fixture(autouse=True)
async def _stop_servers(server_factory: Callable[..., object]) -> AsyncIterator[None]:
    yield
    for server in server_factory.servers:  # type: ignore[attr-defined]
        if not server.shutting_down:
            await server.shutdown()


def pytest_asyncio_loop_factories(config: object, item: object) -> dict[str, object]:
    """Run every async test on uvloop, the loop typha and felix run on in production."""
    import uvloop

    return {"uvloop": uvloop.new_event_loop}
