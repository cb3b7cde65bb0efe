"""The Kubernetes datastore: one list+watch per resource type, however many agents typha serves.

Design note
-----------
Each resource has one follower task: list (paginated with limit/continue) then watch from the list's
resourceVersion with bookmarks, resuming from the last resourceVersion seen whenever the stream ends
normally. A resourceVersion is only a position in one history, and we resume from it only while we
know that history is still the one served. We relist instead when the API server answers 410 Gone
(our version fell out of its window), when it answers 504 "too large resource version" (it has not
reached our version: its history was replaced, as by an etcd restore, or it lags), and after any
failure to reach it or to be served (refused, reset, TLS, timeout, 5xx): an API server that came back
from an etcd backup hands out the same versions again for other contents, and a resumed watch would
stream the new history from the middle without a word. The Ingestor turns a relist into exactly the
deletions of objects that vanished; objects that did not change produce identical values and are
dropped by the cache. So a relist costs the agents nothing but the real changes, and it is what makes
"never resume into a history we did not follow" cheap enough to be the rule.

Requests go through kubernetes-asyncio's ApiClient (auth, TLS, kubeconfig and in-cluster config are
its job) with `_preload_content=False`, and we parse the raw bytes ourselves: the client's
generated models deserialize every field of every object into Python classes, which is several times
slower than the projection that follows and buys nothing, since we read a dozen fields. The
high-volume kinds are decoded into only the fields the projection reads (typha.k8s.wire, msgspec). A watch
stream is read in whatever chunks arrive; all complete events of a chunk are ingested as one batch,
so a burst becomes a few breadcrumbs instead of one per event.

Sync status is per cache, derived from the state of every resource that feeds it: wait-for-datastore
while any of them cannot reach the API server (or has never listed), resync-in-progress while any is
on its first listing (or relisting after an outage), in-sync when all are watching. A relist forced
by 410 Gone while connected does not leave in-sync: the cache already holds a state as current as the
watch was, the relist only upserts (deletions come at its end), and dropping every agent's and the
readiness probe's in-sync for the tens of seconds a 150k-pod relist takes would be worse than useless. Agents hear it (it travels in the breadcrumbs) and readiness
follows it, so a typha that lost its API server stops attracting new agents and says so to old ones.

Two failures give no error by themselves, so they are looked for. A watch that delivers nothing, not
even a bookmark, for `silence_timeout` (twice the API server's bookmark interval) is checked with
a cheap request (`probe`): a server that answers is alive and the watch is just restarted; one that
does not (frozen, or the path to it cut) puts the resource at wait-for-datastore until it answers.
And a follower that cannot reach the server does not sleep out its backoff blindly: it waits on the
shared probe, which asks once a second and wakes it as soon as the server is back.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import random
import ssl
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson

from protocol import SyncStatus
from protocol.keys import BOOKMARK, ERROR, WATCH_EVENT_TYPES

from ..ingest import Ingestor, ObjectEvent, Resync, gc_paused
from ..k8s.resources import RESOURCES, Resource
from ..k8s.wire import DecodeError, WatchLines, decode_event, decode_list
from .probe import Probe

log = logging.getLogger("typha.kubernetes")

WAITING, RESYNCING, SYNCED = SyncStatus.WAIT_FOR_DATASTORE, SyncStatus.RESYNC_IN_PROGRESS, SyncStatus.IN_SYNC


class ApiError(Exception):
    """The API server answered with an error status (or something that is not the API)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"HTTP {status}: {message}")
        self.status = status
        self.message = message


class Gone(ApiError):
    """410: the resourceVersion we asked for is no longer in the API server's window."""


class TooLarge(Gone):
    """504 "Too large resource version": the API server has not reached the version we asked for.

    It waited for it (kube-apiserver: 3 s) and gave up. Either it lags behind another API server we
    read from before, or its history was replaced (etcd restored from a backup): the versions we hold
    belong to a history that may no longer exist. client-go's reflector relists with no version on
    this answer as on 410 (kubernetes/kubernetes#92537); so do we. Retrying the same version would loop
    for ever (kubernetes/kubernetes#107133), or worse, succeed once the new history reaches it and
    stream a history our cache never saw."""


_TOO_LARGE_CAUSE = "ResourceVersionTooLarge"
_TOO_LARGE_TEXT = "too large resource version"


def _error_for(code: int, status: object) -> ApiError:
    """The exception for an API error answer (an HTTP status or a watch ERROR event's Status)."""
    st: dict[str, Any] = status if isinstance(status, dict) else {}
    msg = str(st.get("message") or st.get("reason") or f"HTTP {code}")
    if code == 410:
        return Gone(code, msg)
    details = st.get("details")
    causes = details.get("causes") if isinstance(details, dict) else None
    reasons = {c.get("reason") for c in causes if isinstance(c, dict)} if isinstance(causes, list) else set()
    # Servers before 1.20 left the cause's reason out: client-go matches the message too.
    if code == 504 and (_TOO_LARGE_CAUSE in reasons or _TOO_LARGE_TEXT in msg.lower()):
        return TooLarge(code, msg)
    return ApiError(code, msg)


class SilentWatch(Exception):
    """A watch delivered no event and no bookmark for the silence timeout."""


# Failures that mean "could not reach the API server": the follower waits on the probe, not a timer.
_UNREACHED = frozenset({"unreachable", "tls", "timeout", "watch-dropped", "watch-silent"})

# Why a resource was listed again (ResourceStats.relists, typha_datastore_relists_total{reason}).
RELIST_GONE = "gone"  # 410: our version left the API server's window
RELIST_TOO_LARGE = "too-large"  # 504: the API server has not reached our version (history replaced?)
RELIST_OUTAGE = "outage"  # the connection failed: we cannot know what happened meanwhile
RELIST_AUDIT = "audit"  # the periodic audit found the cache diverging from the API server


def _is_outage(kind: str) -> bool:
    """A failure after which the old resourceVersion is not trusted: the server could not be reached
    or could not serve (5xx), so it may have restarted on other contents. Not: 4xx answers (the
    server, alive, refused us), a silent watch on a server that answers (restarted quietly), a watch
    that ends normally."""
    return kind in _UNREACHED or kind.startswith("http-5")


@dataclass(slots=True)
class ResourceStats:
    lists: int = 0
    list_pages: int = 0
    watches: int = 0
    events: int = 0
    bookmarks: int = 0
    relists_410: int = 0
    relists: Counter[str] = field(default_factory=Counter)  # reason (RELIST_*) -> relists
    malformed: int = 0
    quiet_restarts: int = 0  # silent watches restarted because the API server still answered
    errors: Counter[str] = field(default_factory=Counter)  # error kind -> count
    last_error: str = ""  # "<kind>: <what happened>", kept after recovery for /status
    state: SyncStatus = WAITING
    resource_version: str = ""


def _status_error(code: int, body: bytes) -> ApiError:
    """The exception for an HTTP error answer, from its Status body (or its first bytes, if not one)."""
    try:
        obj = orjson.loads(body)
        if isinstance(obj, dict) and obj.get("kind") == "Status":
            return _error_for(code, obj)
    except orjson.JSONDecodeError:
        pass
    return _error_for(code, {"message": body[:200].decode("utf-8", "replace")})


def parse_watch_lines(
    lines: Iterable[bytes | memoryview], stats: ResourceStats, resource: str = ""
) -> tuple[list[tuple[str, dict]], str | None]:
    """Parse watch events of `resource`. Returns ([(type, object)], newest resourceVersion or None).

    Raises Gone for a 410 ERROR event, TooLarge for a 504 "too large resource version" and ApiError for
    any other ERROR event; counts and skips lines
    that are not JSON or not events, so one corrupt line cannot stop the stream.
    """
    events: list[tuple[str, dict]] = []
    rv: str | None = None
    for line in lines:
        try:
            ev = decode_event(resource, line)
        except DecodeError:
            if bytes(line).strip():  # a blank line (a keep-alive) is no event, and no error either
                stats.malformed += 1
                log.warning("skipping a watch line that is not JSON: %r", bytes(line[:120]))
            continue
        obj = ev.get("object") if isinstance(ev, dict) else None
        etype = ev.get("type") if isinstance(ev, dict) else None
        if not isinstance(obj, dict):
            stats.malformed += 1
            continue
        raw_md = obj.get("metadata")
        md: dict[str, Any] = raw_md if isinstance(raw_md, dict) else {}
        if etype == ERROR:
            code = obj.get("code")
            raise _error_for(code if isinstance(code, int) else 500, {"message": "watch error", **obj})
        if etype == BOOKMARK:
            stats.bookmarks += 1
            if isinstance(md.get("resourceVersion"), str):
                rv = md["resourceVersion"]
            continue
        if etype not in WATCH_EVENT_TYPES:
            stats.malformed += 1
            continue
        events.append((etype, obj))
        if isinstance(md.get("resourceVersion"), str):
            rv = md["resourceVersion"]
    return events, rv


class KubernetesDatastore:
    """Follows every resource any served syncer needs, feeding `ingestor`."""

    def __init__(
        self,
        ingestor: Ingestor,
        api_client: Any,
        *,
        page_size: int = 500,
        watch_timeout: float = 300.0,
        backoff_initial: float = 0.5,
        backoff_max: float = 30.0,
        silence_timeout: float = 120.0,
        connect_timeout: float = 10.0,
        probe_interval: float = 1.0,
        probe_timeout: float = 5.0,
        resources: Iterable[str] | None = None,
    ) -> None:
        self.ingestor = ingestor
        self.api = api_client
        self.page_size = page_size
        self.watch_timeout = watch_timeout
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self.silence_timeout = silence_timeout  # 2x the API server's bookmark interval (kube-apiserver: 60 s)
        self.connect_timeout = connect_timeout  # TCP + TLS handshake
        self.probe = Probe(self._ask_version, probe_interval, probe_timeout)
        names = list(resources) if resources is not None else [r for r in RESOURCES if ingestor.wanted(r)]
        self.resources: list[Resource] = [RESOURCES[n] for n in names]
        self.stats: dict[str, ResourceStats] = {r.name: ResourceStats() for r in self.resources}
        # Which followed resources feed each cache: its status is the least advanced of theirs.
        self._feeds = {name: [r.name for r in self.resources if name in r.syncers] for name in ingestor.caches}
        self.synced = asyncio.Event()
        self._frozen = False
        self._next_loud: dict[str, float] = {}

    # -- status ----------------------------------------------------------------------------------------
    def stats_view(self) -> dict[str, ResourceStats]:
        """Per-resource state and counters, for /status and the metrics (read at scrape time)."""
        return self.stats

    def _set_state(self, resource: str, state: SyncStatus) -> None:
        st = self.stats[resource]
        if st.state == state:
            return
        st.state = state
        for cache_name, feeds in self._feeds.items():
            if resource in feeds:
                self.ingestor.caches[cache_name].set_status(min(self.stats[r].state for r in feeds))
        if all(s.state == SYNCED for s in self.stats.values()):
            if not self.synced.is_set() and not self._frozen:
                # Everything alive now (caches, indexes, clients) lives as long as the process: move
                # it out of the GC's view so later collections stay proportional to new garbage.
                gc.collect()
                gc.freeze()
                self._frozen = True
            self.synced.set()
        else:
            self.synced.clear()

    # -- requests --------------------------------------------------------------------------------------
    async def _ask_version(self, timeout: float) -> None:
        """The probe's question: any HTTP answer to GET /version (errors included) means reachable."""
        resp = await self.api.call_api(
            "/version",
            "GET",
            header_params={"Accept": "application/json"},
            auth_settings=["BearerToken"],
            _preload_content=False,
            _return_http_data_only=True,
            _request_timeout=aiohttp.ClientTimeout(total=timeout),
        )
        resp.release()

    def _timeout(self, total: float, read: float | None = None) -> aiohttp.ClientTimeout:
        c = self.connect_timeout
        return aiohttp.ClientTimeout(total=total, connect=c, sock_connect=c, sock_read=read)

    async def _get(
        self, path: str, params: list[tuple[str, str]], timeout: aiohttp.ClientTimeout
    ) -> aiohttp.ClientResponse:
        resp = await self.api.call_api(
            path,
            "GET",
            query_params=params,
            header_params={"Accept": "application/json"},
            auth_settings=["BearerToken"],
            _preload_content=False,
            _return_http_data_only=True,
            _request_timeout=timeout,
        )
        if resp.status != 200:
            body = await resp.read()
            resp.release()
            raise _status_error(resp.status, body)
        return resp

    async def list_into(self, res: Resource, resync: Resync) -> str:
        """List `res` page by page (limit/continue), feeding each page to `resync` as it arrives.

        Returns the list's resourceVersion. Pages of one list are a consistent snapshot (the
        continue token pins the version); a 410 on a continue token raises Gone and we relist.
        """
        st = self.stats[res.name]
        cont = ""
        while True:
            params = [("limit", str(self.page_size))]
            if cont:
                params.append(("continue", cont))
            resp = await self._get(res.path(), params, self._timeout(60))
            if not cont and st.state != SYNCED:
                # The API server answers: a resync is under way. Not before, or every retry of a
                # resource that keeps failing would flap its caches from waiting to resync and back.
                self._set_state(res.name, RESYNCING)
            try:
                body = await resp.read()
            finally:
                resp.release()
            with gc_paused():
                try:
                    data = decode_list(res.name, body)
                    md = data["metadata"]
                    page = data.get("items") or []
                    rv = md["resourceVersion"]
                    if not isinstance(page, list) or not isinstance(rv, str):
                        raise TypeError
                except (*DecodeError, KeyError, TypeError):
                    raise ApiError(200, f"malformed list response for {res.name}: {body[:120]!r}") from None
                del body
                st.list_pages += 1
                resync.page(i for i in page if isinstance(i, dict))
                del page, data
            cont = md.get("continue") or ""
            if not cont:
                return rv

    async def _watch(self, res: Resource, rv: str) -> str:
        """Stream events from `rv` until the server ends the watch; returns the newest version seen."""
        st = self.stats[res.name]
        params = [
            ("watch", "1"),
            ("resourceVersion", rv),
            ("allowWatchBookmarks", "true"),
            ("timeoutSeconds", str(int(self.watch_timeout))),
        ]
        # sock_read bounds the silence between two reads: events and bookmarks both reset it.
        resp = await self._get(res.path(), params, self._timeout(self.watch_timeout + 60, self.silence_timeout))
        st.watches += 1
        self._set_state(res.name, SYNCED)  # the API server accepted our version: we are current again
        try:
            stream = WatchLines()
            async for chunk in _silence_checked(resp.content.iter_any(), self.silence_timeout):
                with gc_paused():
                    newest = self._ingest_chunk(res, stream, chunk)
                if newest is not None:
                    rv = newest
                    st.resource_version = rv
        finally:
            resp.release()
        return rv

    def _ingest_chunk(self, res: Resource, stream: WatchLines, chunk: bytes) -> str | None:
        """Ingest the events a chunk completes; returns the newest resourceVersion seen, if any.

        A function of its own so that everything decoded from the chunk is freed when it returns, inside
        the caller's `gc_paused()`: left alive past it, a thousand events' objects were scanned by the
        collections that followed, and promoted, before being freed anyway (a tenth of ingest's CPU).
        """
        lines = stream.feed(chunk)
        if not lines:
            return None
        st = self.stats[res.name]
        events, newest = parse_watch_lines(lines, st, res.name)
        if events:
            st.events += len(events)
            batch: list[ObjectEvent] = [(t, res.name, o) for t, o in events]
            self.ingestor.handle(batch)
        return newest

    # -- the follower ----------------------------------------------------------------------------------
    async def follow(self, res: Resource) -> None:
        st = self.stats[res.name]
        rv = ""
        failures = 0
        while True:
            try:
                if not rv:
                    rv = await self._relist(res)
                rv = await self._watch(res, rv)
                failures = 0  # a watch that ran and ended normally: resume at once
            except Gone as exc:
                reason = RELIST_TOO_LARGE if isinstance(exc, TooLarge) else RELIST_GONE
                st.relists[reason] += 1
                if reason == RELIST_GONE:
                    st.relists_410 += 1
                    log.info("%s: resourceVersion %s expired (%s); relisting", res.name, rv, exc.message)
                else:
                    self._loud(
                        res.name,
                        "%s: the API server has not reached resourceVersion %s (%s): its history is not the one we "
                        "followed (restored from a backup?); relisting",
                        res.name,
                        rv,
                        exc.message,
                    )
                rv = ""
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # every failure is retried; none may end the follower
                if isinstance(exc, SilentWatch) and await self.probe.answers():
                    st.quiet_restarts += 1
                    log.debug("%s: %s, but the API server answers: restarting the watch", res.name, exc)
                    continue
                failures += 1
                kind = self._classify(exc)
                st.errors[kind] += 1
                st.last_error = f"{kind}: {exc}"
                if rv and _is_outage(kind):
                    # Whatever happened while we could not see the server (a restart from an etcd
                    # backup among others) may have replaced the history our version belongs to, and
                    # a resumed watch would not say so: relist and reconcile, as on 410.
                    st.relists[RELIST_OUTAGE] += 1
                    log.info("%s: %s after rv %s; relisting once the API server answers", res.name, kind, rv)
                    rv = ""
                self._set_state(res.name, WAITING if kind != "watch-dropped" or failures > 1 else st.state)
                delay = random.uniform(0, min(self.backoff_max, self.backoff_initial * 2 ** min(failures, 10)))
                level = logging.WARNING if failures <= 3 or failures % 20 == 0 else logging.DEBUG
                if kind in _UNREACHED:
                    log.log(
                        level,
                        "%s: %s (%s); retrying when the API server answers (at most %.1fs)",
                        res.name,
                        kind,
                        exc,
                        delay,
                    )
                    await self.probe.wait_for_answer(delay)
                else:
                    log.log(level, "%s: %s (%s); retrying in %.1fs", res.name, kind, exc, delay)
                    await asyncio.sleep(delay)

    async def _relist(self, res: Resource) -> str:
        """List `res` into its caches (the diff against them is what agents receive); returns the version."""
        st = self.stats[res.name]
        t0 = time.monotonic()
        resync = self.ingestor.begin_resync(res.name)
        rv = await self.list_into(res, resync)
        with gc_paused():
            changed = resync.finish()
        st.lists += 1
        st.resource_version = rv
        self._set_state(res.name, SYNCED)
        log.info(
            "%s: listed %d objects at rv %s in %.2fs (%d keys deleted)",
            res.name,
            resync.objects,
            rv,
            time.monotonic() - t0,
            changed,
        )
        return rv

    def _loud(self, resource: str, msg: str, *args: object) -> None:
        """WARNING at most once a minute per resource (DEBUG otherwise): a loop must not flood the log."""
        now = time.monotonic()
        if now >= self._next_loud.get(resource, 0.0):
            self._next_loud[resource] = now + 60.0
            log.warning(msg, *args)
        else:
            log.debug(msg, *args)

    @staticmethod
    def _classify(exc: Exception) -> str:
        if isinstance(exc, SilentWatch):
            return "watch-silent"
        if isinstance(exc, ApiError):
            return {401: "unauthorized", 403: "forbidden", 404: "not-found"}.get(exc.status, f"http-{exc.status}")
        # Before "unreachable": a certificate the API server presents but we cannot verify (wrong CA,
        # a name it does not cover) is a configuration problem, and retrying will not cure it.
        if isinstance(exc, (aiohttp.ClientSSLError, ssl.SSLError)):
            return "tls"
        if isinstance(exc, aiohttp.ClientConnectorError):
            return "unreachable"
        if isinstance(exc, (aiohttp.ClientPayloadError, aiohttp.ServerDisconnectedError, ConnectionResetError)):
            return "watch-dropped"
        if isinstance(exc, asyncio.TimeoutError):
            return "timeout"
        return type(exc).__name__

    async def run(self) -> None:
        for res in self.resources:
            self._set_state(res.name, WAITING)
        try:
            await asyncio.gather(*(self.follow(r) for r in self.resources))
        finally:
            self.probe.close()


async def _silence_checked(chunks: AsyncIterator[bytes], silence: float) -> AsyncIterator[bytes]:
    """The watch stream's chunks; `SilentWatch` when a read times out (the request's sock_read)."""
    it = chunks.__aiter__()
    while True:
        try:
            chunk = await it.__anext__()
        except StopAsyncIteration:
            return
        except TimeoutError:  # aiohttp's read timeout (ServerTimeoutError is one)
            raise SilentWatch(f"no event or bookmark for {silence:g}s") from None
        yield chunk
