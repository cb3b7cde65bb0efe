"""Operational HTTP endpoints: /liveness and /readiness on the health port, /metrics on the metrics port.

Readiness is the honest signal a Service routes by: ready only while the server accepts connections,
is not shutting down, and every cache is in sync (an agent connecting to a replica that lost its
datastore would receive a stale view). Liveness fails if the listener is gone or the event loop has
stopped running housekeeping: "healthy but accepting nothing" is the failure users complain about.
"""

from __future__ import annotations

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

__all__ = ["health_app", "listen_error", "liveness", "metrics_app", "readiness", "start_site", "status"]


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


def status(
    server: SyncServer,
    caches: Mapping[str, SnapCache],
    with_digest: bool,
    datastore: Mapping[str, DatastoreStats] | None = None,
) -> dict[str, object]:
    """What this replica serves: per syncer its status, head seq and size (and a digest on request);
    per followed resource its state and errors, when the datastore reports them."""
    out: dict[str, object] = {
        "server_id": server.config.server_id,
        "connections": len(server.connections),
        "syncers": {},
    }
    for name, cache in caches.items():
        entry: dict[str, object] = {"status": cache.status.name, "seq": cache.head.seq, "keys": len(cache)}
        if with_digest:
            entry["digest"] = state_digest((k, v) for k, (_, v, _) in cache.items().items())
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

    def stats() -> Mapping[str, DatastoreStats] | None:
        return datastore() if datastore is not None else None

    async def status_handler(request: web.Request) -> web.Response:
        digest = request.query.get("digest", "") in ("1", "true")
        return web.json_response(status(server, caches, digest, stats()))

    app.router.add_get("/liveness", _reply(lambda: liveness(server, stale)))
    app.router.add_get("/readiness", _reply(lambda: readiness(server, caches, stats())))
    app.router.add_get("/status", status_handler)
    return app
