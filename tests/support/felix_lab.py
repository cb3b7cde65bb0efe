"""A FelixAgent run in-process against a real typha server, with its health and metrics servers.

For the tests that check what an operator sees (readiness, /status, metrics) beside what felix
programs: ``typha_serving(events)`` is a typha whose felix cache holds what typha's ingest makes of
``events`` (Kubernetes watch events), served on loopback; ``serving(agent)`` starts the agent and
both of its servers exactly as ``felix.__main__`` wires them, and on exit stops the agent (it must
stop within ``stop_timeout``) and closes the servers.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from typing import Any

import aiohttp

from felix.agent import FelixAgent
from felix.ops import health_app, metrics_app, start_site
from protocol import SYNCER_FELIX
from typha.ingest import Ingestor
from typha.snapcache import SnapCache
from typha.syncserver import ServerConfig, SyncServer

__all__ = ["FelixEndpoints", "serving", "typha_serving"]


@contextlib.asynccontextmanager
async def typha_serving(
    events: Iterable[tuple[str, str, dict[str, Any]]],
) -> AsyncIterator[tuple[SnapCache, Ingestor, SyncServer]]:
    """(cache, ingestor, server): the felix syncer's cache after ``events``, served on loopback.

    The cache's sync status is the caller's to set (a new cache waits for its datastore).
    """
    cache = SnapCache(SYNCER_FELIX)
    server = SyncServer({SYNCER_FELIX: cache}, ServerConfig(host="127.0.0.1", port=0))
    await server.start()
    try:
        ingest = Ingestor({SYNCER_FELIX: cache})
        ingest.handle(list(events))
        yield cache, ingest, server
    finally:
        await server.shutdown()


@dataclass
class FelixEndpoints:
    agent: FelixAgent
    http: aiohttp.ClientSession
    health: int  # port of /readiness, /liveness, /status
    metrics: int  # port of /metrics

    async def get(self, path: str, port: int | None = None) -> tuple[int, str]:
        """(status, body) of ``path`` on the health server, or on ``port``."""
        async with self.http.get(f"http://127.0.0.1:{port or self.health}{path}") as r:
            return r.status, await r.text()

    async def status(self) -> dict[str, Any]:
        async with self.http.get(f"http://127.0.0.1:{self.health}/status") as r:
            assert r.status == 200
            return await r.json()

    async def metric(self, line_start: str) -> float | None:
        """The value of the sample line that starts with ``line_start`` (name and labels), if any."""
        _, text = await self.get("/metrics", self.metrics)
        for line in text.splitlines():
            if line.startswith(line_start + " "):
                return float(line.split()[-1])
        return None


@contextlib.asynccontextmanager
async def serving(agent: FelixAgent, stop_timeout: float = 10.0) -> AsyncIterator[FelixEndpoints]:
    task = asyncio.create_task(agent.run())
    hrun, hport = await start_site(health_app(agent, task.done), "127.0.0.1", 0)
    mrun, mport = await start_site(metrics_app(agent.metrics.registry), "127.0.0.1", 0)
    try:
        async with aiohttp.ClientSession() as http:
            yield FelixEndpoints(agent, http, hport, mport)
    finally:
        agent.stop()
        await asyncio.wait_for(task, stop_timeout)
        await hrun.cleanup()
        await mrun.cleanup()
