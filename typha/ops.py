"""Operational HTTP endpoints: /liveness and /readiness on the health port, /metrics on the metrics port.

Readiness is the honest signal a Service routes by: ready only while the server accepts connections,
is not shutting down, and every cache is in sync (an agent connecting to a replica that lost its
datastore would receive a stale view). Liveness fails if the listener is gone or the event loop has
stopped running housekeeping: "healthy but accepting nothing" is the failure users complain about.

`/status?digest=1` hashes the whole cache in key order (SHA-256 over sorted keys), which took 69 ms
of event-loop time per request on a 100k-key cache: a handful of requests a second would have
starved the fan-out. `StatusDigests` takes the state's copy on the loop (one dict copy, the only
consistent view) and hashes it in a worker thread, at most one computation per syncer at a time and
at most one a second, shared by every request waiting meanwhile, and reused while the cache's head
has not moved. The answer names the sequence number it describes (`digest_seq`).
"""

from __future__ import annotations

import asyncio
import errno
import socket
import time
from collections.abc import Awaitable, Callable, Mapping

from aiohttp import web

from common.ops import metrics_app, start_site
from protocol import SyncStatus
from protocol.digest import state_digest

from .metrics import DatastoreStats
from .snapcache import SnapCache
from .syncserver import SyncServer

__all__ = [
    "DIGESTS",
    "StatusDigests",
    "health_app",
    "listen_error",
    "liveness",
    "metrics_app",
    "readiness",
    "start_site",
    "status",
]


def listen_error(host_flag: str, host: str, port_flag: str, port: int, exc: OSError) -> str:
    """One line naming the setting that made listening on host:port fail."""
    if isinstance(exc, socket.gaierror):
        return f"{host_flag}={host!r}: not an address this host can listen on ({exc.strerror})"
    if exc.errno == errno.EADDRINUSE:
        return f"{port_flag}={port}: {host}:{port} is already in use"
    if exc.errno == errno.EADDRNOTAVAIL:
        return f"{host_flag}={host!r}: not an address of this host"
    if exc.errno == errno.EACCES:
        return f"{port_flag}={port}: permission denied (ports below 1024 need privileges)"
    return f"{host_flag}={host!r} {port_flag}={port}: cannot listen: {exc.strerror or exc}"


def readiness(
    server: SyncServer, caches: Mapping[str, SnapCache], datastore: Mapping[str, DatastoreStats] | None = None
) -> tuple[bool, str]:
    if server.shutting_down:
        return False, "shutting down"
    if not server.accepting:
        return False, "not accepting connections"
    lagging = [
        f"{name}={cache.status.name}" for name, cache in caches.items() if cache.status is not SyncStatus.IN_SYNC
    ]
    if lagging:
        why = "caches not in sync: " + ", ".join(sorted(lagging))
        stuck = sorted(r for r, st in (datastore or {}).items() if st.state is not SyncStatus.IN_SYNC and st.last_error)
        if stuck:
            why += f" ({stuck[0]}: {datastore[stuck[0]].last_error})"  # type: ignore[index]
        return False, why
    return True, "ready"


def liveness(server: SyncServer, stale_after: float) -> tuple[bool, str]:
    if not server.shutting_down and not server.accepting:
        return False, "listener closed"
    age = time.monotonic() - server.last_housekeeping
    if age > stale_after:
        return False, f"housekeeping last ran {age:.1f}s ago"
    return True, "live"


def _reply(check: Callable[[], tuple[bool, str]]) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    async def handler(request: web.Request) -> web.Response:
        ok, why = check()
        return web.Response(status=200 if ok else 503, text=why + "\n")

    return handler


class StatusDigests:
    """State digests of the caches for /status, computed off the event loop, one at a time per syncer
    and at most once per `min_interval` seconds, reused while a cache's head is unchanged."""

    def __init__(self, caches: Mapping[str, SnapCache], min_interval: float = 1.0) -> None:
        self.caches = caches
        self.min_interval = min_interval
        self.computed = 0  # digests actually computed (the rest were shared or reused)
        self._done: dict[str, tuple[int, str]] = {}  # syncer -> (seq, digest)
        self._running: dict[str, asyncio.Future[tuple[int, str]]] = {}
        self._last: dict[str, float] = {}

    async def digest(self, syncer: str) -> tuple[int, str]:
        """(seq, digest) of the syncer's cache as of a moment no older than this call."""
        done = self._done.get(syncer)
        if done is not None and done[0] == self.caches[syncer].head.seq:
            return done
        running = self._running.get(syncer)
        if running is None:
            running = self._running[syncer] = asyncio.ensure_future(self._compute(syncer))
        return await asyncio.shield(running)

    async def _compute(self, syncer: str) -> tuple[int, str]:
        try:
            wait = self._last.get(syncer, float("-inf")) + self.min_interval - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            cache = self.caches[syncer]
            seq, state = cache.head.seq, cache.items()  # a copy, consistent with seq: the loop's only cost
            digest = await asyncio.to_thread(lambda: state_digest((k, v) for k, (_, v, _) in state.items()))
            self.computed += 1
            self._last[syncer] = time.monotonic()
            self._done[syncer] = (seq, digest)
            return seq, digest
        finally:
            self._running.pop(syncer, None)


#: The health app's `StatusDigests` (tests read how many digests were computed).
DIGESTS = web.AppKey("digests", StatusDigests)


def status(
    server: SyncServer,
    caches: Mapping[str, SnapCache],
    digests: Mapping[str, tuple[int, str]] | None = None,
    datastore: Mapping[str, DatastoreStats] | None = None,
) -> dict[str, object]:
    """What this replica serves: per syncer its status, head seq and size (and its digest, with the seq
    it describes, when `digests` has it); per followed resource its state and errors, when the
    datastore reports them."""
    out: dict[str, object] = {
        "server_id": server.config.server_id,
        "connections": len(server.connections),
        "syncers": {},
    }
    for name, cache in caches.items():
        entry: dict[str, object] = {"status": cache.status.name, "seq": cache.head.seq, "keys": len(cache)}
        if digests and name in digests:
            entry["digest_seq"], entry["digest"] = digests[name]
        out["syncers"][name] = entry  # type: ignore[index]
    if datastore is not None:
        out["datastore"] = {
            resource: {"status": st.state.name, "errors": dict(st.errors), "last_error": st.last_error}
            for resource, st in datastore.items()
        }
    return out


def health_app(
    server: SyncServer,
    caches: Mapping[str, SnapCache],
    datastore: Callable[[], Mapping[str, DatastoreStats]] | None = None,
) -> web.Application:
    """/liveness, /readiness and /status; ``datastore`` (per-resource stats) adds why to the last two."""
    app = web.Application()
    stale = max(10.0, 10 * server.config.housekeeping_interval)
    digests = StatusDigests(caches)
    app[DIGESTS] = digests

    def stats() -> Mapping[str, DatastoreStats] | None:
        return datastore() if datastore is not None else None

    async def status_handler(request: web.Request) -> web.Response:
        wanted = request.query.get("digest", "") in ("1", "true")
        computed = {name: await digests.digest(name) for name in caches} if wanted else None
        return web.json_response(status(server, caches, computed, stats()))

    app.router.add_get("/liveness", _reply(lambda: liveness(server, stale)))
    app.router.add_get("/readiness", _reply(lambda: readiness(server, caches, stats())))
    app.router.add_get("/status", status_handler)
    return app
