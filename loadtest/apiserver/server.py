"""The thin aiohttp (HTTPS) shell around :class:`~loadtest.apiserver.store.Store`.

Design note
-----------
Everything with semantics lives in the store; this module only does I/O:

- *routing*: one catch-all handler parses ``/api/v1/...`` and ``/apis/{g}/{v}/...`` into
  (resource, namespace, name, subresource) with :func:`parse_path` (pure, unit-tested),
  then maps HTTP method + shape to a Kubernetes verb;
- *auth*: bearer token compare, plus a mutable set of "forbidden" rules producing 403s;
- *watch streaming*: each watch is one chunked response. The handler sleeps on a tiny
  future-based waker that the store pokes when the watcher's queue becomes non-empty, then
  writes everything queued in a single ``write`` (the bytes are shared across watchers).
  Bookmarks are queued *through* the watcher so they can never overtake an event. A
  watcher closed by the store (slow consumer, cut, shutdown) simply ends the stream.
- *future resourceVersions*: kube-apiserver waits up to ~3 s for an RV it has not seen yet
  before answering 504; we do the same by listening for commits.

Handlers run with aiohttp ``handler_cancellation`` so a client that disconnects from an
idle watch releases its watcher immediately rather than at the next write.
"""

from __future__ import annotations

import asyncio
import hmac
import random
import secrets
import socket
import ssl
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web

from . import errors
from .errors import ApiError
from .kubeconfig import TLSMaterial, make_tls, write_kubeconfig
from .resources import ResourceType
from .stats import Stats
from .store import ERROR, Store, TooLargeResourceVersion, Watcher, encode_event

_TRUE = {"1", "t", "T", "TRUE", "true", "True"}
_JSON = "application/json"

VERSION_INFO = {
    "major": "1",
    "minor": "31",
    "gitVersion": "v1.31.0-pytypha-emulator",
    "gitCommit": "0000000000000000000000000000000000000000",
    "gitTreeState": "clean",
    "buildDate": "2024-08-13T00:00:00Z",
    "goVersion": "go1.22.5",
    "compiler": "gc",
    "platform": "linux/amd64",
}


@dataclass
class ServerConfig:
    token: str
    # Rules: "pods" / "ippools.crd.projectcalico.org" (all verbs), "list:pods",
    # "watch:nodes", "get:pods/status", "*:pods". Mutable at runtime.
    forbidden: set[str] = field(default_factory=set)
    bookmark_interval: float = 60.0
    # Watches without timeoutSeconds last min_request_timeout * [1, 2) like kube-apiserver.
    min_request_timeout: float = 1800.0
    too_large_rv_wait: float = 3.0
    initial_batch: int = 1000
    user: str = "system:serviceaccount:default:pytypha-loadtest"


@dataclass
class Route:
    kind: str  # "resource" | "discovery"
    rt: ResourceType | None = None
    namespace: str | None = None
    name: str | None = None
    subresource: str | None = None
    legacy_watch: bool = False
    doc: dict[str, Any] | None = None


def parse_path(store: Store, path: str) -> Route:
    """Map a request path to a Route; raises ApiError(404) for unknown paths."""
    segs = [s for s in path.split("/") if s]
    reg = store.registry
    if not segs or segs[0] not in ("api", "apis"):
        raise errors.path_not_found()
    if segs[0] == "api":
        if len(segs) == 1:
            return Route("discovery", doc={"kind": "APIVersions", "versions": ["v1"]})
        group, version, rest = "", segs[1], segs[2:]
    else:
        if len(segs) == 1:
            return Route("discovery", doc=reg.api_group_list())
        if len(segs) == 2:
            doc = reg.api_group(segs[1])
            if doc is None:
                raise errors.path_not_found()
            return Route("discovery", doc=doc)
        group, version, rest = segs[1], segs[2], segs[3:]
    if not rest:
        doc = reg.api_resource_list(group, version)
        if doc is None:
            raise errors.path_not_found()
        return Route("discovery", doc=doc)
    legacy_watch = False
    if rest[0] == "watch":  # deprecated /watch/ prefix paths
        legacy_watch, rest = True, rest[1:]
        if not rest:
            raise errors.path_not_found()
    ns = None
    if rest[0] == "namespaces" and len(rest) >= 3:
        nrt = reg.lookup(group, version, rest[2])
        if nrt is not None and nrt.namespaced:
            ns, rest = rest[1], rest[2:]
    if len(rest) > 3:
        raise errors.path_not_found()
    rt = reg.lookup(group, version, rest[0])
    if rt is None:
        raise errors.path_not_found()
    name = rest[1] if len(rest) > 1 else None
    sub = rest[2] if len(rest) > 2 else None
    if not rt.namespaced and ns is not None:
        raise errors.path_not_found()
    if rt.namespaced and ns is None and name is not None:
        raise errors.path_not_found()
    if sub is not None and (sub != "status" or not rt.status_subresource):
        raise errors.path_not_found()
    return Route("resource", rt, ns, name, sub, legacy_watch)


class _Waker:
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


def _shrink_tls_read_buffer(transport: Any, size: int = 16 * 1024) -> None:
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


def _qbool(v: str | None) -> bool:
    return v in _TRUE


def _qint(q: Any, name: str) -> int | None:
    v = q.get(name)
    if v in (None, ""):
        return None
    try:
        return int(v)
    except ValueError:
        raise errors.bad_request(f"invalid {name} parameter: {v!r}") from None


def _json_response(status: int, body: bytes) -> web.Response:
    return web.Response(status=status, body=body, content_type=_JSON)


def _status_response(e: ApiError) -> web.Response:
    return _json_response(e.code, orjson.dumps(e.status))


class ApiServerApp:
    """The aiohttp request handler. One instance per emulator."""

    def __init__(self, store: Store, config: ServerConfig) -> None:
        self.store = store
        self.config = config
        self.port = 0
        self.host = "127.0.0.1"
        self._token = config.token.encode()

    # ---- entry -----------------------------------------------------------------------

    async def handle(self, request: web.Request) -> web.StreamResponse:
        stats = self.store.stats
        stats.requests_total += 1
        path = request.path
        if path in ("/healthz", "/livez", "/readyz"):
            return web.Response(text="ok")
        if not self._authenticated(request):
            stats.unauthorized += 1
            return _status_response(errors.unauthorized())
        try:
            if path.startswith("/emulator/"):
                return await self._emulator(request, path)
            if path == "/version" or path == "/version/":
                return _json_response(200, orjson.dumps(VERSION_INFO))
            route = parse_path(self.store, path)
            if route.kind == "discovery":
                doc = route.doc
                assert doc is not None
                if doc.get("kind") == "APIVersions":
                    doc = dict(
                        doc,
                        serverAddressByClientCIDRs=[
                            {"clientCIDR": "0.0.0.0/0", "serverAddress": f"{self.host}:{self.port}"}
                        ],
                    )
                return _json_response(200, orjson.dumps(doc))
            return await self._resource(request, route)
        except ApiError as e:
            return _status_response(e)

    def _authenticated(self, request: web.Request) -> bool:
        auth = request.headers.get("Authorization", "")
        if not auth.startswith("Bearer "):
            return False
        return hmac.compare_digest(auth[7:].strip().encode(), self._token)

    def _check_forbidden(self, verb: str, rt: ResourceType, sub: str | None, route: Route) -> None:
        rules = self.config.forbidden
        if not rules:
            return
        names = [rt.plural, rt.key]
        if sub:
            names = [f"{n}/{sub}" for n in names] + names
        for n in names:
            if n in rules or f"{verb}:{n}" in rules or f"*:{n}" in rules:
                self.store.stats.forbidden += 1
                raise errors.forbidden(
                    rt, rt.plural + (f"/{sub}" if sub else ""), verb, route.name, route.namespace, self.config.user
                )

    # ---- resources -------------------------------------------------------------------

    async def _resource(self, request: web.Request, route: Route) -> web.StreamResponse:
        rt = route.rt
        assert rt is not None
        q = request.query
        method = request.method
        name, ns, sub = route.name, route.namespace, route.subresource
        if method == "GET":
            is_watch = route.legacy_watch or _qbool(q.get("watch"))
            verb = "watch" if is_watch else ("get" if name else "list")
        elif method == "POST":
            verb = "create"
        elif method == "PUT":
            verb = "update"
        elif method == "PATCH":
            verb = "patch"
        elif method == "DELETE":
            verb = "delete" if name else "deletecollection"
        else:
            raise errors.method_not_allowed(method)
        self._check_forbidden(verb, rt, sub, route)
        if q.get("dryRun"):
            raise errors.bad_request("dryRun is not supported by the emulator")
        rstats = self.store.stats.resource(rt.key)
        store = self.store

        if verb == "watch":
            return await self._watch(request, route)
        if verb == "get":
            rstats.get_requests += 1
            return _json_response(200, store.get_object(rt, name, ns).raw)  # type: ignore[arg-type]
        if verb == "list":
            res = await self._retry_too_large(
                lambda: store.list(
                    rt,
                    ns,
                    label_selector=q.get("labelSelector"),
                    field_selector=q.get("fieldSelector"),
                    limit=_qint(q, "limit"),
                    continue_=q.get("continue") or None,
                    resource_version=q.get("resourceVersion"),
                    resource_version_match=q.get("resourceVersionMatch"),
                )
            )
            body = res.to_bytes()
            rstats.list_bytes_sent += len(body)
            return _json_response(200, body)
        if verb == "create":
            if name is not None or (rt.namespaced and ns is None):
                raise errors.method_not_allowed(method)
            obj = store.create_object(rt, await self._body(request), namespace=ns, strategy=True)
            return _json_response(201, obj.raw)
        if verb == "update":
            if name is None:
                raise errors.method_not_allowed(method)
            obj = store.update_object(
                rt, await self._body(request), namespace=ns, name=name, subresource=sub, strategy=True
            )
            return _json_response(200, obj.raw)
        if verb == "patch":
            if name is None:
                raise errors.method_not_allowed(method)
            obj = store.patch_object(
                rt,
                name,
                await self._body(request),
                namespace=ns,
                content_type=request.headers.get("Content-Type", ""),
                subresource=sub,
                strategy=True,
            )
            return _json_response(200, obj.raw)
        if verb == "delete":
            if sub is not None:
                raise errors.method_not_allowed(method)
            opts = await self._body(request, optional=True) or {}
            pre = opts.get("preconditions") if isinstance(opts, dict) else None
            obj, _ = store.delete_object(rt, name, namespace=ns, preconditions=pre)  # type: ignore[arg-type]
            return _json_response(200, obj.raw)
        # deletecollection
        if rt.namespaced and ns is None:
            raise errors.method_not_allowed(method)
        deleted = store.delete_collection(
            rt.key, ns, label_selector=q.get("labelSelector"), field_selector=q.get("fieldSelector")
        )
        head = orjson.dumps(
            {"kind": rt.list_kind, "apiVersion": rt.api_version, "metadata": {"resourceVersion": str(store.rv)}}
        )
        return _json_response(200, head[:-1] + b',"items":[' + b",".join(o.raw for o in deleted) + b"]}")

    async def _body(self, request: web.Request, optional: bool = False) -> Any:
        raw = await request.read()
        if not raw:
            if optional:
                return None
            raise errors.bad_request("the request body is empty")
        ct = request.headers.get("Content-Type", _JSON).split(";", 1)[0].strip()
        if "yaml" in ct or "protobuf" in ct:
            raise errors.unsupported_media_type(ct)
        try:
            return orjson.loads(raw)
        except orjson.JSONDecodeError as e:
            raise errors.bad_request(f"couldn't get version/kind; json parse error: {e}") from None

    async def _retry_too_large(self, fn: Callable[[], Any]) -> Any:
        try:
            return fn()
        except TooLargeResourceVersion as e:
            if not await self._wait_for_rv(e.requested, self.config.too_large_rv_wait):
                raise
            return fn()

    async def _wait_for_rv(self, rv: int, timeout: float) -> bool:
        store = self.store
        if store.rv >= rv:
            return True
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        def on_commit(cur: int) -> None:
            if cur >= rv and not fut.done():
                fut.set_result(None)

        store.add_commit_listener(on_commit)
        try:
            await asyncio.wait_for(fut, timeout)
            return True
        except TimeoutError:
            return False
        finally:
            store.remove_commit_listener(on_commit)

    # ---- watch -----------------------------------------------------------------------

    async def _watch(self, request: web.Request, route: Route) -> web.StreamResponse:
        rt = route.rt
        assert rt is not None
        q = request.query
        store = self.store
        rstats = store.stats.resource(rt.key)
        fsel = q.get("fieldSelector") or ""
        if route.name is not None:  # watch on a single object == metadata.name selector
            fsel = f"metadata.name={route.name}" + (f",{fsel}" if fsel else "")
        bookmarks = _qbool(q.get("allowWatchBookmarks"))
        send_initial = _qbool(q.get("sendInitialEvents"))
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
        timeout_s = _qint(q, "timeoutSeconds")
        if timeout_s is None or timeout_s <= 0:
            timeout = self.config.min_request_timeout * (1 + random.random())
        else:
            timeout = float(timeout_s)
        loop = asyncio.get_running_loop()
        waker = _Waker(loop)
        rv_param = q.get("resourceVersion")
        error: ApiError | None = None
        w: Watcher | None = None
        try:
            w = await self._retry_too_large(
                lambda: store.watch(
                    rt,
                    route.namespace,
                    resource_version=rv_param,
                    label_selector=q.get("labelSelector"),
                    field_selector=fsel or None,
                    send_initial_events=send_initial,
                    notify=waker.notify,
                )
            )
        except ApiError as e:
            if e.code not in (410, 504):
                raise
            error = e  # kube-apiserver reports these *inside* a 200 watch stream
        resp = web.StreamResponse(status=200, headers={"Content-Type": _JSON, "Cache-Control": "no-cache, private"})
        resp.enable_chunked_encoding()
        _shrink_tls_read_buffer(request.transport)
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
            await self._stream(resp, w, loop, waker, timeout, bookmarks)
            await resp.write_eof()
        except (ConnectionResetError, ConnectionError):
            pass  # client went away
        finally:
            if w is not None:
                store.unwatch(w)
        return resp

    async def _stream(
        self,
        resp: web.StreamResponse,
        w: Watcher,
        loop: asyncio.AbstractEventLoop,
        waker: _Waker,
        timeout: float,
        bookmarks: bool,
    ) -> None:
        store = self.store
        rstats = store.stats.resource(w.rt.key)
        deadline = loop.time() + timeout
        interval = self.config.bookmark_interval
        next_bm = loop.time() + interval if bookmarks else float("inf")
        batch_n = self.config.initial_batch
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

    # ---- /emulator/* -----------------------------------------------------------------

    async def _emulator(self, request: web.Request, path: str) -> web.Response:
        store = self.store
        q = request.query
        resource = q.get("resource") or None
        if path == "/emulator/stats" and request.method == "GET":
            snap = store.stats.snapshot()
            snap["resourceVersion"] = str(store.rv)
            return _json_response(200, orjson.dumps(snap))
        if path == "/emulator/cut-watches" and request.method == "POST":
            return _json_response(200, orjson.dumps({"cut": store.cut_watches(resource)}))
        if path == "/emulator/compact" and request.method == "POST":
            rv = _qint(q, "resourceVersion")
            return _json_response(200, orjson.dumps({"compactedTo": str(store.compact(resource, rv))}))
        if path == "/emulator/forbidden":
            if request.method == "POST":
                body = await self._body(request, optional=True) or {}
                self.config.forbidden.update(body.get("add", []))
                self.config.forbidden.difference_update(body.get("remove", []))
            return _json_response(200, orjson.dumps({"forbidden": sorted(self.config.forbidden)}))
        raise errors.path_not_found()


class ApiServerHandle:
    """A running emulator. ``store``/``stats`` are live; mutate the store from the loop's thread."""

    def __init__(self, app: ApiServerApp, runner: web.AppRunner, tls: TLSMaterial, host: str, port: int) -> None:
        self.app = app
        self.store: Store = app.store
        self.stats: Stats = app.store.stats
        self.config = app.config
        self.tls = tls
        self.host = host
        self.port = port
        self._runner = runner
        self._stopped = False

    @property
    def url(self) -> str:
        # A wildcard bind is reached (and certified) as loopback.
        host = {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "::": "::1"}.get(self.host, self.host)
        host = f"[{host}]" if ":" in host else host
        return f"https://{host}:{self.port}"

    @property
    def token(self) -> str:
        return self.config.token

    @property
    def ca_pem(self) -> bytes:
        return self.tls.ca_pem

    def write_kubeconfig(self, path: str, *, token: str | None = None, namespace: str = "default") -> str:
        """Write a kubeconfig for this server (``token`` overrides, e.g. to test 401)."""
        return write_kubeconfig(
            path, self.url, self.ca_pem, token if token is not None else self.token, namespace=namespace
        )

    def client_ssl_context(self) -> ssl.SSLContext:
        return self.tls.client_context()

    def forbid(self, *rules: str) -> None:
        self.config.forbidden.update(rules)

    def allow(self, *rules: str) -> None:
        self.config.forbidden.difference_update(rules)

    def cut_watches(self, resource: str | None = None) -> int:
        return self.store.cut_watches(resource)

    def compact(self, resource: str | None = None) -> int:
        return self.store.compact(resource)

    async def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        self.store.cut_watches(reason="shutdown")
        await self._runner.cleanup()

    async def __aenter__(self) -> ApiServerHandle:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


async def start_apiserver(
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    token: str | None = None,
    store: Store | None = None,
    forbidden: Iterable[str] = (),
    bookmark_interval: float = 60.0,
    window_size: int = 10_000,
    max_watch_queue: int = 10_000,
    min_request_timeout: float = 1800.0,
    too_large_rv_wait: float = 3.0,
    require_namespace: bool = False,
    kubeconfig_path: str | None = None,
    tls: TLSMaterial | None = None,
) -> ApiServerHandle:
    """Start an HTTPS Kubernetes API emulator on ``host:port`` (0 = ephemeral port).

    ``window_size`` (events retained per resource) and ``max_watch_queue`` only apply when
    a new Store is created here. ``token`` defaults to a random one.
    """
    if store is None:
        store = Store(window_size=window_size, max_watch_queue=max_watch_queue, require_namespace=require_namespace)
    config = ServerConfig(
        token=token or secrets.token_urlsafe(24),
        forbidden=set(forbidden),
        bookmark_interval=bookmark_interval,
        min_request_timeout=min_request_timeout,
        too_large_rv_wait=too_large_rv_wait,
    )
    tls = tls or make_tls()
    api = ApiServerApp(store, config)
    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_route("*", "/{tail:.*}", api.handle)
    runner = web.AppRunner(app, access_log=None, handler_cancellation=True, shutdown_timeout=2.0)
    await runner.setup()
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    site = web.SockSite(runner, sock, ssl_context=tls.server_context(), backlog=1024)
    await site.start()
    api.host, api.port = host, sock.getsockname()[1]
    handle = ApiServerHandle(api, runner, tls, host, api.port)
    if kubeconfig_path:
        handle.write_kubeconfig(kubeconfig_path)
    return handle


__all__ = ["ApiServerApp", "ApiServerHandle", "Route", "ServerConfig", "parse_path", "start_apiserver"]
