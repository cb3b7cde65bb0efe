"""Serving one watch: its query parameters, and the chunked stream fed from a Watcher queue.

Design note
-----------
Each watch is one chunked HTTP response. The handler sleeps on a tiny future-based
:class:`Waker` that the store pokes when the watcher's queue goes from empty to
non-empty, then writes everything queued in a single ``write`` (the bytes are shared by
every watcher of the event). Bookmarks are queued *through* the watcher, so they can
never overtake an event. A watcher the store closes (slow consumer, cut, shutdown, a
failure serving it) simply ends the stream, and the client re-watches.

410 Expired and 504 Timeout are reported as kube-apiserver does: inside a 200 stream,
as one ERROR event carrying the Status. Query validation (:func:`watch_params`) is a
pure function, so the shell's only job here is I/O.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import orjson
from aiohttp import web

from . import errors
from .decode import JSON, query_bool, query_int
from .errors import ApiError
from .objects import ERROR, encode_event
from .routing import Route
from .store import Store
from .watch import Watcher


class Waker:
    """One-shot wakeups without asyncio.Event/wait_for task overhead (thousands of watchers)."""

    __slots__ = ("_fut", "_loop")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._fut: asyncio.Future[None] | None = None

    def notify(self) -> None:
        f = self._fut
        if f is not None and not f.done():
            f.set_result(None)

    async def wait(self, timeout: float) -> None:
        fut = self._fut = self._loop.create_future()
        h = self._loop.call_later(max(timeout, 0.0), _resolve, fut)
        try:
            await fut
        finally:
            h.cancel()
            self._fut = None


def _resolve(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


def shrink_tls_read_buffer(transport: Any, size: int = 16 * 1024) -> None:
    """Give a long-lived watch connection a small TLS read buffer.

    The stdlib asyncio SSLProtocol allocates (and zero-fills) a 256 KiB read buffer per
    connection: 2,000 watches would pin ~500 MB for buffers that only ever see tiny
    requests. It is safe to swap here: the buffer is only touched inside one synchronous
    get_buffer/recv_into/buffer_updated callback, never across an await. Other loops
    (uvloop) or Python versions without these attributes are left alone.
    """
    proto = getattr(transport, "_ssl_protocol", None)
    buf = getattr(proto, "_ssl_buffer", None)
    if proto is None or not isinstance(buf, bytearray) or len(buf) <= size:
        return
    try:
        proto.max_size = size  # instance attribute; caps future get_buffer() growth
        proto._ssl_buffer = bytearray(size)
        proto._ssl_buffer_view = memoryview(proto._ssl_buffer)
    except (AttributeError, TypeError):
        pass


@dataclass(frozen=True)
class WatchParams:
    resource_version: str | None
    label_selector: str | None
    field_selector: str | None
    bookmarks: bool
    send_initial_events: bool
    timeout: float


def watch_params(q: Mapping[str, str], route: Route, min_request_timeout: float) -> WatchParams:
    """Validate a watch's query; 422 for the combinations kube-apiserver forbids."""
    fsel = q.get("fieldSelector") or ""
    if route.name is not None:  # watch on a single object == metadata.name selector
        fsel = f"metadata.name={route.name}" + (f",{fsel}" if fsel else "")
    bookmarks = query_bool(q.get("allowWatchBookmarks"))
    send_initial = query_bool(q.get("sendInitialEvents"))
    match = q.get("resourceVersionMatch")
    if send_initial:
        if not bookmarks:
            raise errors.invalid(
                None,
                "",
                "allowWatchBookmarks",
                "Forbidden: sendInitialEvents requires setting allowWatchBookmarks to true",
            )
        if match != "NotOlderThan":
            raise errors.invalid(
                None,
                "",
                "resourceVersionMatch",
                "Forbidden: sendInitialEvents requires setting resourceVersionMatch to NotOlderThan",
            )
    elif match:
        raise errors.invalid(
            None,
            "",
            "resourceVersionMatch",
            "Forbidden: resourceVersionMatch is forbidden for watch unless sendInitialEvents is provided",
        )
    timeout_s = query_int(q, "timeoutSeconds")
    # Without a timeout, kube's default: [1, 2) x the minimum request timeout.
    timeout = float(timeout_s) if timeout_s and timeout_s > 0 else min_request_timeout * (1 + random.random())
    return WatchParams(q.get("resourceVersion"), q.get("labelSelector"), fsel or None, bookmarks, send_initial, timeout)


async def serve_watch(
    request: web.Request,
    store: Store,
    route: Route,
    p: WatchParams,
    *,
    bookmark_interval: float,
    initial_batch: int,
    retry_too_large: Callable[[Callable[[], Watcher]], Awaitable[Watcher]],
) -> web.StreamResponse:
    rt = route.rt
    assert rt is not None
    rstats = store.stats.resource(rt.key)
    loop = asyncio.get_running_loop()
    waker = Waker(loop)
    error: ApiError | None = None
    w: Watcher | None = None
    try:
        w = await retry_too_large(
            lambda: store.watch(
                rt,
                route.namespace,
                resource_version=p.resource_version,
                label_selector=p.label_selector,
                field_selector=p.field_selector,
                send_initial_events=p.send_initial_events,
                notify=waker.notify,
            )
        )
    except ApiError as e:
        if e.code not in (410, 504):
            raise
        error = e  # kube-apiserver reports these *inside* a 200 watch stream
    resp = web.StreamResponse(status=200, headers={"Content-Type": JSON, "Cache-Control": "no-cache, private"})
    resp.enable_chunked_encoding()
    shrink_tls_read_buffer(request.transport)
    try:
        await resp.prepare(request)
        if error is not None:
            data = encode_event(ERROR, orjson.dumps(error.status))
            await resp.write(data)
            rstats.events_sent += 1
            rstats.bytes_sent += len(data)
            await resp.write_eof()
            return resp
        assert w is not None
        await _stream(resp, store, w, waker, p, bookmark_interval, initial_batch)
        await resp.write_eof()
    except (ConnectionResetError, ConnectionError):
        pass  # client went away
    finally:
        if w is not None:
            store.unwatch(w)
    return resp


async def _stream(
    resp: web.StreamResponse,
    store: Store,
    w: Watcher,
    waker: Waker,
    p: WatchParams,
    interval: float,
    batch_n: int,
) -> None:
    loop = asyncio.get_running_loop()
    rstats = store.stats.resource(w.rt.key)
    deadline = loop.time() + p.timeout
    next_bm = loop.time() + interval if p.bookmarks else float("inf")
    while not w.closed:
        batch = w.next_initial(batch_n) if w.has_initial() else w.drain()
        if batch:
            data = b"".join(batch)
            await resp.write(data)
            nbm = sum(1 for b in batch if b[9:10] == b"B")  # '{"type":"B...' = BOOKMARK
            rstats.events_sent += len(batch) - nbm
            rstats.bookmarks_sent += nbm
            rstats.bytes_sent += len(data)
            continue
        now = loop.time()
        if now >= deadline:
            return
        if now >= next_bm:
            store.push_bookmark(w)
            next_bm = now + interval
            continue
        await waker.wait(min(deadline, next_bm) - now)


__all__ = ["Waker", "WatchParams", "serve_watch", "shrink_tls_read_buffer", "watch_params"]
