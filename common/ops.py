"""HTTP plumbing for the ops endpoints both agents serve (health on one port, /metrics on another).

Shared here, like `settings`, because typha and felix must not depend on each other; what each
endpoint *answers* stays in typha/ops.py and felix/ops.py.

Design note
-----------
The health port is what the kubelet probes, so it must answer even while someone is abusing it:
measured before this bound, a few hundred idle sockets on typha's health port (or typha near its
open-files limit) made /liveness time out for 15 s, and the kubelet would have restarted a healthy
replica. So every ops site holds at most `max_connections` connections (opening one more closes the
*oldest*: a probe connects, asks and leaves within milliseconds, an idle socket is always older) and
no connection lives longer than `lifetime` seconds, whatever it is doing (a slowloris sending a
header a byte a second included). A probe or a scrape needs one short connection; nothing legitimate
is cut by either bound, and the port costs at most `max_connections` sockets and buffers.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, cast

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

#: Connections an ops port holds at once, and the longest any of them may live (seconds).
MAX_CONNECTIONS = 64
LIFETIME = 10.0


def metrics_app(registry: CollectorRegistry) -> web.Application:
    """An app serving `registry` at /metrics in the Prometheus text format."""

    async def metrics(request: web.Request) -> web.Response:
        return web.Response(body=generate_latest(registry), headers={"Content-Type": CONTENT_TYPE_LATEST})

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    return app


class _Pool:
    """The open connections of one site, oldest first."""

    def __init__(self, limit: int, lifetime: float) -> None:
        self.limit = limit
        self.lifetime = lifetime
        self.open: dict[_Bounded, None] = {}


class _Bounded(asyncio.Protocol):
    """One HTTP connection: aiohttp's handler inside, a place in the pool and a deadline outside."""

    def __init__(self, inner: asyncio.Protocol, pool: _Pool) -> None:
        self.inner = inner
        self.pool = pool
        self.transport: asyncio.Transport | None = None
        self.deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = t = cast(asyncio.Transport, transport)
        pool = self.pool
        pool.open[self] = None
        if len(pool.open) > pool.limit:
            oldest = next(iter(pool.open))
            if oldest.transport is not None:
                oldest.transport.abort()
            pool.open.pop(oldest, None)
        self.deadline = asyncio.get_running_loop().call_later(pool.lifetime, t.abort)
        self.inner.connection_made(t)

    def data_received(self, data: bytes) -> None:
        self.inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self.inner.eof_received()

    def pause_writing(self) -> None:
        self.inner.pause_writing()

    def resume_writing(self) -> None:
        self.inner.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        self.pool.open.pop(self, None)
        if self.deadline is not None:
            self.deadline.cancel()
        self.inner.connection_lost(exc)


class _BoundedSite(web.TCPSite):
    """A TCPSite whose connections go through a `_Pool`."""

    def __init__(self, runner: web.AppRunner, host: str, port: int, limit: int, lifetime: float) -> None:
        super().__init__(runner, host, port, reuse_address=True)
        self._pool = _Pool(limit, lifetime)

    async def start(self) -> None:
        await web.BaseSite.start(self)  # registers the site with its runner
        server = cast(Callable[[], Any], self._runner.server)
        pool = self._pool
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: _Bounded(server(), pool), self._host, self._port, reuse_address=True, backlog=self._backlog
        )
        self._bound_port = self._server.sockets[0].getsockname()[1] if self._server.sockets else self._port

    @property
    def connections(self) -> int:
        return len(self._pool.open)


async def start_site(
    app: web.Application,
    host: str,
    port: int,
    *,
    max_connections: int = MAX_CONNECTIONS,
    lifetime: float = LIFETIME,
) -> tuple[web.AppRunner, int]:
    """Start `app` on host:port (port 0 picks one), holding at most `max_connections` connections,
    each for at most `lifetime` seconds; returns the runner and the bound port."""
    runner = web.AppRunner(app, access_log=None, keepalive_timeout=min(5.0, lifetime))
    await runner.setup()
    site = _BoundedSite(runner, host, port, max_connections, lifetime)
    await site.start()
    return runner, site.port
