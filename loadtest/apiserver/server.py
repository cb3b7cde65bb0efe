"""The thin aiohttp (HTTPS) shell around :class:`~loadtest.apiserver.store.Store`.

Design note
-----------
Everything with semantics lives in the store and in pure request-parsing functions; this
module only does I/O, in this order for every request:

- *auth* first, on every path (bearer token compare, constant time), so an
  unauthenticated peer can cost a request line and headers, never a body, and learns
  nothing, not even whether a path exists;
- *routing*: :func:`.routing.parse_path` and :func:`.routing.verb_of`, then the 403
  rules (:func:`.routing.check_forbidden`);
- *bodies*: Content-Length is checked against the 3 MiB limit before anything is read,
  aiohttp stops reading at the same limit, and :mod:`.decode` turns the bytes into a
  document or a 4xx Status (413, 415, 400);
- *watches* are handed to :mod:`.watchstream`.

Every ApiError becomes its Status body. Anything else is a bug, not bad input: it is
logged with its traceback (at most once a second) and answered with a 500 InternalError
Status, so a client always gets JSON, and counted in ``internal_errors``.

*Future resourceVersions*: kube-apiserver waits up to ~3 s for an RV it has not reached
before answering 504; the shell does the same by listening for commits.

Handlers run with aiohttp ``handler_cancellation`` so a client that disconnects from an
idle watch releases its watcher immediately rather than at the next write.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import secrets
import socket
import ssl
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

import orjson
from aiohttp import web

from . import errors, tables
from .decode import (
    JSON,
    MAX_BODY_BYTES,
    check_size,
    decode_body,
    decode_patch,
    delete_preconditions,
    media_type,
    query_bool,
    query_int,
    rule_list,
)
from .errors import ApiError
from .kubeconfig import TLSMaterial, cert_hosts, make_tls, write_kubeconfig
from .listing import TooLargeResourceVersion, list_body
from .objects import StoredObject
from .openapi import OpenAPI
from .openapi_pb import MEDIA_TYPES as OPENAPI_V2_PROTOBUF
from .protobuf import PROTOBUF, decode_protobuf
from .resources import VERSION_INFO, ResourceType
from .routing import Route, check_forbidden, parse_path, verb_of
from .schema import WARN, parse_field_validation
from .state import Backup
from .stats import Stats
from .store import Admission, Store
from .watchstream import serve_watch, watch_params

log = logging.getLogger("loadtest.apiserver")
T = TypeVar("T")
MAX_WARNINGS = 50  # kube-apiserver caps the Warning headers of one response too


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


def _json_response(status: int, body: bytes) -> web.Response:
    return web.Response(status=status, body=body, content_type=JSON)


def _status_response(e: ApiError) -> web.Response:
    return _json_response(e.code, orjson.dumps(e.status))


def _written(status: int, obj: StoredObject, admission: Admission) -> web.Response:
    """A write's answer, with one ``Warning`` header (RFC 7234 form) per unknown field dropped."""
    resp = _json_response(status, obj.raw)
    for w in admission.warnings[:MAX_WARNINGS]:
        text = w.replace("\\", "\\\\").replace('"', '\\"')
        resp.headers.add("Warning", f'299 - "{text}"')
    return resp


def dry_run_param(q: Mapping[str, str]) -> bool:
    """``?dryRun=All`` (the only value kube-apiserver accepts); 400 for anything else."""
    values = q.getall("dryRun", []) if hasattr(q, "getall") else ([q["dryRun"]] if "dryRun" in q else [])
    for v in values:
        if v != "All":
            raise errors.bad_request(f'dryRun: Unsupported value: "{v}": supported values: "All"')
    return bool(values)


def decode_object(raw: bytes, content_type: str | None, rt: ResourceType) -> Any:
    """A create/update body: JSON, or kube's protobuf envelope for the kinds :mod:`.protobuf` knows."""
    if media_type(content_type) == PROTOBUF:
        return decode_protobuf(raw, rt)
    return decode_body(raw, content_type)


async def read_body(request: web.Request) -> bytes:
    """The request body, or 413 RequestEntityTooLarge past :data:`.decode.MAX_BODY_BYTES`."""
    check_size(request.content_length)
    try:
        return await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise errors.request_entity_too_large(MAX_BODY_BYTES) from None


class ApiServerApp:
    """The aiohttp request handler. One instance per emulator."""

    def __init__(self, store: Store, config: ServerConfig) -> None:
        self.store = store
        self.config = config
        self.openapi = OpenAPI(store)
        self.port = 0
        self.host = "127.0.0.1"
        self._token = config.token.encode()
        self._next_bug_log = 0.0

    # ---- entry -----------------------------------------------------------------------

    async def handle(self, request: web.Request) -> web.StreamResponse:
        stats = self.store.stats
        stats.requests_total += 1
        path = request.path
        if not self._authenticated(request):
            stats.unauthorized += 1
            return _status_response(errors.unauthorized())
        if path in ("/healthz", "/livez", "/readyz"):
            return web.Response(text="ok")
        try:
            return await self._dispatch(request, path)
        except ApiError as e:
            return _status_response(e)
        except (asyncio.CancelledError, ConnectionError):
            raise
        except Exception as exc:
            stats.internal_errors += 1
            now = time.monotonic()
            if now >= self._next_bug_log:
                self._next_bug_log = now + 1.0
                log.exception("internal error serving %s %s", request.method, path)
            return _status_response(errors.internal_error(f"{type(exc).__name__}: {exc}"))

    async def _dispatch(self, request: web.Request, path: str) -> web.StreamResponse:
        if path.startswith("/emulator/"):
            return await self._emulator(request, path)
        if path in ("/version", "/version/"):
            return _json_response(200, orjson.dumps(VERSION_INFO))
        if path.startswith("/openapi/"):
            return self._openapi(request, path)
        route = parse_path(self.store.registry, path)
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

    def _authenticated(self, request: web.Request) -> bool:
        auth = request.headers.get("Authorization", "")
        if not auth.startswith("Bearer "):
            return False
        return hmac.compare_digest(auth[7:].strip().encode(), self._token)

    # ---- resources -------------------------------------------------------------------

    async def _resource(self, request: web.Request, route: Route) -> web.StreamResponse:
        rt = route.rt
        assert rt is not None
        q = request.query
        method = request.method
        name, ns, sub = route.name, route.namespace, route.subresource
        verb = verb_of(method, route, route.legacy_watch or query_bool(q.get("watch")))
        try:
            check_forbidden(self.config.forbidden, verb, route, self.config.user)
        except ApiError:
            self.store.stats.forbidden += 1
            raise
        dry_run = dry_run_param(q)
        rstats = self.store.stats.resource(rt.key)
        store = self.store
        ctype = request.headers.get("Content-Type")
        writes = verb in ("create", "update", "patch")
        admission = Admission(parse_field_validation(q.get("fieldValidation")) if writes else WARN)
        table = tables.wants_table(request.headers.get("Accept"))

        if verb == "watch":
            params = watch_params(q, route, self.config.min_request_timeout)
            return await serve_watch(
                request,
                store,
                route,
                params,
                bookmark_interval=self.config.bookmark_interval,
                initial_batch=self.config.initial_batch,
                retry_too_large=self._retry_too_large,
            )
        if verb == "get":
            assert name is not None
            rstats.get_requests += 1
            obj = store.get_object(rt, name, ns)
            if table:
                return self._table(rt, [obj], {"resourceVersion": str(obj.rv)}, q)
            return _json_response(200, obj.raw)
        if verb == "list":
            res = await self._retry_too_large(
                lambda: store.list(
                    rt,
                    ns,
                    label_selector=q.get("labelSelector"),
                    field_selector=q.get("fieldSelector"),
                    limit=query_int(q, "limit"),
                    continue_=q.get("continue") or None,
                    resource_version=q.get("resourceVersion"),
                    resource_version_match=q.get("resourceVersionMatch"),
                )
            )
            if table:
                return self._table(rt, res.items, res.metadata(), q)
            if tables.wants_metadata_list(request.headers.get("Accept")):
                body = orjson.dumps(tables.metadata_list(res.items, res.metadata()))
            else:
                body = res.to_bytes()
            rstats.list_bytes_sent += len(body)
            return _json_response(200, body)
        if verb == "create":
            if name is not None or (rt.namespaced and ns is None):
                raise errors.method_not_allowed(method)
            body = decode_object(await read_body(request), ctype, rt)
            obj = store.create_object(rt, body, namespace=ns, strategy=True, dry_run=dry_run, admission=admission)
            return _written(201, obj, admission)
        if verb == "update":
            if name is None:
                raise errors.method_not_allowed(method)
            body = decode_object(await read_body(request), ctype, rt)
            obj = store.update_object(
                rt, body, namespace=ns, name=name, subresource=sub, strategy=True, dry_run=dry_run, admission=admission
            )
            return _written(200, obj, admission)
        if verb == "patch":
            if name is None:
                raise errors.method_not_allowed(method)
            patch, ptype = decode_patch(await read_body(request), ctype)
            obj = store.patch_object(
                rt,
                name,
                patch,
                namespace=ns,
                content_type=ptype,
                subresource=sub,
                strategy=True,
                dry_run=dry_run,
                admission=admission,
            )
            return _written(200, obj, admission)
        if verb == "delete":
            assert name is not None
            if sub is not None:
                raise errors.method_not_allowed(method)
            pre = delete_preconditions(await read_body(request), ctype)
            obj, _ = store.delete_object(rt, name, namespace=ns, preconditions=pre, dry_run=dry_run)
            return _json_response(200, obj.raw)
        # deletecollection
        if rt.namespaced and ns is None:
            raise errors.method_not_allowed(method)
        if dry_run:
            res = store.list(rt, ns, label_selector=q.get("labelSelector"), field_selector=q.get("fieldSelector"))
            return _json_response(200, res.to_bytes())
        deleted = store.delete_collection(
            rt.key, ns, label_selector=q.get("labelSelector"), field_selector=q.get("fieldSelector")
        )
        return _json_response(200, list_body(rt, {"resourceVersion": str(store.rv)}, deleted))

    def _table(
        self, rt: ResourceType, objs: list[StoredObject], metadata: dict[str, Any], q: Mapping[str, str]
    ) -> web.Response:
        doc = tables.table(
            rt, objs, metadata, self.store.crd_columns.get(rt.key), tables.include_object(q.get("includeObject"))
        )
        return _json_response(200, orjson.dumps(doc))

    def _openapi(self, request: web.Request, path: str) -> web.Response:
        if request.method != "GET":
            raise errors.method_not_allowed(request.method)
        if path.rstrip("/") == "/openapi/v2":
            accept = request.headers.get("Accept", "")
            if any(t in accept for t in OPENAPI_V2_PROTOBUF):
                # kube-openapi answers with a generic type: the media type asked for does not parse in Go.
                return web.Response(
                    status=200, body=self.openapi.v2_protobuf(), content_type="application/octet-stream"
                )
            if accept and "json" not in accept and "*/*" not in accept:
                raise errors.ApiError(406, "NotAcceptable", f"cannot serve /openapi/v2 as {accept}")
            return _json_response(200, self.openapi.v2_document())
        if path.rstrip("/") == "/openapi/v3":
            return _json_response(200, self.openapi.v3_index())
        doc = self.openapi.v3_document(path.removeprefix("/openapi/v3/"))
        if doc is None:
            raise errors.path_not_found()
        return _json_response(200, doc)

    async def _retry_too_large(self, fn: Callable[[], T]) -> T:
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
            rv = query_int(q, "resourceVersion")
            return _json_response(200, orjson.dumps({"compactedTo": str(store.compact(resource, rv))}))
        if path == "/emulator/forbidden":
            if request.method == "POST":
                raw = await read_body(request)
                body = decode_body(raw, request.headers.get("Content-Type")) if raw else {}
                add, remove = rule_list(body, "add"), rule_list(body, "remove")
                self.config.forbidden.update(add)
                self.config.forbidden.difference_update(remove)
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
        self._controllers: list[asyncio.Task[None]] = []

    def start_controllers(self) -> None:
        """What kube-apiserver's controller manager would do: the namespace controller."""
        self._controllers.append(asyncio.create_task(self._namespace_controller(), name="namespace-controller"))

    async def _namespace_controller(self) -> None:
        while True:
            await asyncio.sleep(0.2)
            if self.store.terminating:
                try:
                    self.store.run_namespace_controller()
                except Exception:  # a bug must not stop the controller (nor the server)
                    log.exception("namespace controller")

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
        for task in self._controllers:
            task.cancel()
        self.store.cut_watches(reason="shutdown")
        await self._runner.cleanup()

    async def restart(self, down: float = 0.0, restore: Backup | None = None) -> None:
        """Stop serving (every connection closed, new ones refused) for ``down`` seconds, then serve
        again on the same address, certificate and token. With ``restore``, the store is restored
        from that backup meanwhile (:meth:`.state.StoreState.restore`): an API server restarted on an
        etcd restored from a backup, whose revisions overlap the ones its clients saw."""
        self.store.cut_watches(reason="shutdown")
        await self._runner.cleanup()
        if restore is not None:
            self.store.restore(restore)
        await asyncio.sleep(down)
        self._runner = await _serve(self.app, _bind(self.host, self.port), self.tls)

    async def __aenter__(self) -> ApiServerHandle:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


async def _serve(api: ApiServerApp, sock: socket.socket, tls: TLSMaterial) -> web.AppRunner:
    """Serve ``api`` over HTTPS on the bound ``sock`` until the returned runner is cleaned up."""
    app = web.Application(client_max_size=MAX_BODY_BYTES)
    app.router.add_route("*", "/{tail:.*}", api.handle)
    runner = web.AppRunner(app, access_log=None, handler_cancellation=True, shutdown_timeout=2.0)
    await runner.setup()
    try:
        site = web.SockSite(runner, sock, ssl_context=tls.server_context(), backlog=1024)
        await site.start()
    except BaseException:
        await runner.cleanup()
        sock.close()
        raise
    return runner


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    except BaseException:
        sock.close()
        raise
    return sock


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
    require_crds: bool = False,
    namespace_cleanup_delay: float = 2.0,
    kubeconfig_path: str | None = None,
    tls: TLSMaterial | None = None,
    sans: Iterable[str] = (),
) -> ApiServerHandle:
    """Start an HTTPS Kubernetes API emulator on ``host:port`` (0 = ephemeral port).

    ``window_size`` (events retained per resource) and ``max_watch_queue`` only apply when
    a new Store is created here, and so do ``require_namespace``, ``require_crds``
    (custom resources served only once their CRD exists) and ``namespace_cleanup_delay``
    (seconds between a namespace's deletion and its namespace controller emptying it). ``token`` defaults to a random one. The serving
    certificate covers loopback, ``host`` and every name or address in ``sans``
    (:func:`.kubeconfig.cert_hosts`). Raises OSError if the address cannot be bound.
    """
    sock = _bind(host, port)
    try:
        tls = tls or make_tls(cert_hosts(host, sans))
    except BaseException:
        sock.close()
        raise
    if store is None:
        store = Store(
            window_size=window_size,
            max_watch_queue=max_watch_queue,
            require_namespace=require_namespace,
            require_crds=require_crds,
            namespace_cleanup_delay=namespace_cleanup_delay,
        )
    config = ServerConfig(
        token=token or secrets.token_urlsafe(24),
        forbidden=set(forbidden),
        bookmark_interval=bookmark_interval,
        min_request_timeout=min_request_timeout,
        too_large_rv_wait=too_large_rv_wait,
    )
    api = ApiServerApp(store, config)
    api.host, api.port = host, sock.getsockname()[1]
    runner = await _serve(api, sock, tls)
    handle = ApiServerHandle(api, runner, tls, host, api.port)
    handle.start_controllers()
    if kubeconfig_path:
        handle.write_kubeconfig(kubeconfig_path)
    return handle


__all__ = ["ApiServerApp", "ApiServerHandle", "ServerConfig", "read_body", "start_apiserver"]
