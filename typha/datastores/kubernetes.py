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
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from protocol import SyncStatus
from protocol.keys import BOOKMARK, ERROR, WATCH_EVENT_TYPES

from ..ingest import Ingestor, ObjectEvent, Resync, gc_paused
from ..k8s.resources import RESOURCES, Resource
from ..k8s.wire import DecodeError, WatchLines, decode_event, decode_list
from .audit import METADATA_ACCEPT, Divergence, compare, decode_page
from .failures import (
    RELIST_AUDIT,
    RELIST_GONE,
    RELIST_OUTAGE,
    RELIST_TOO_LARGE,
    UNREACHED,
    ApiError,
    Gone,
    RelistWanted,
    SilentWatch,
    TooLarge,
    classify,
    error_for,
    is_outage,
    status_error,
)
from .probe import Probe

log = logging.getLogger("typha.kubernetes")

# Results of an audit (ResourceStats.audits, typha_datastore_audits_total{result}).
AUDIT_OK, AUDIT_DIVERGED, AUDIT_FAILED, AUDIT_SKIPPED = "ok", "diverged", "failed", "skipped"

WAITING, RESYNCING, SYNCED = SyncStatus.WAIT_FOR_DATASTORE, SyncStatus.RESYNC_IN_PROGRESS, SyncStatus.IN_SYNC


@dataclass(slots=True)
class ResourceStats:
    lists: int = 0
    list_pages: int = 0
    watches: int = 0
    events: int = 0
    bookmarks: int = 0
    relists_410: int = 0
    relists: Counter[str] = field(default_factory=Counter)  # reason (RELIST_*) -> relists
    audits: Counter[str] = field(default_factory=Counter)  # result (AUDIT_*) -> audits
    divergences: Counter[str] = field(default_factory=Counter)  # missing/phantom/stale -> objects found
    watching: bool = False  # a watch is streaming: the cache is exactly at `resource_version`
    malformed: int = 0
    quiet_restarts: int = 0  # silent watches restarted because the API server still answered
    errors: Counter[str] = field(default_factory=Counter)  # error kind -> count
    last_error: str = ""  # "<kind>: <what happened>", kept after recovery for /status
    state: SyncStatus = WAITING
    resource_version: str = ""


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
            raise error_for(code if isinstance(code, int) else 500, {"message": "watch error", **obj})
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
        audit_interval: float = 0.0,
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
        self.audit_interval = audit_interval  # seconds between audits (typha.datastores.audit); 0: none
        self._relist_wanted: set[str] = set()  # resources the audit found diverging
        if audit_interval > 0:
            ingestor.track_revisions()

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
        self,
        path: str,
        params: list[tuple[str, str]],
        timeout: aiohttp.ClientTimeout,
        accept: str = "application/json",
    ) -> aiohttp.ClientResponse:
        resp = await self.api.call_api(
            path,
            "GET",
            query_params=params,
            header_params={"Accept": accept},
            auth_settings=["BearerToken"],
            _preload_content=False,
            _return_http_data_only=True,
            _request_timeout=timeout,
        )
        if resp.status != 200:
            body = await resp.read()
            resp.release()
            raise status_error(resp.status, body)
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
        st.watching = True
        try:
            stream = WatchLines()
            async for chunk in _silence_checked(resp.content.iter_any(), self.silence_timeout):
                with gc_paused():
                    newest = self._ingest_chunk(res, stream, chunk)
                if newest is not None:
                    rv = newest
                    st.resource_version = rv
                if res.name in self._relist_wanted:  # checked per chunk: bookmarks bound the wait
                    self._relist_wanted.discard(res.name)
                    raise RelistWanted(200, "the audit found the cache diverging from the API server")
        finally:
            st.watching = False
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
                reason = (
                    RELIST_TOO_LARGE
                    if isinstance(exc, TooLarge)
                    else RELIST_AUDIT
                    if isinstance(exc, RelistWanted)
                    else RELIST_GONE
                )
                st.relists[reason] += 1
                if reason == RELIST_AUDIT:
                    log.info("%s: relisting to repair what the audit found", res.name)
                elif reason == RELIST_GONE:
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
                kind = classify(exc)
                st.errors[kind] += 1
                st.last_error = f"{kind}: {exc}"
                if rv and is_outage(kind):
                    # Whatever happened while we could not see the server (a restart from an etcd
                    # backup among others) may have replaced the history our version belongs to, and
                    # a resumed watch would not say so: relist and reconcile, as on 410.
                    st.relists[RELIST_OUTAGE] += 1
                    log.info("%s: %s after rv %s; relisting once the API server answers", res.name, kind, rv)
                    rv = ""
                self._set_state(res.name, WAITING if kind != "watch-dropped" or failures > 1 else st.state)
                delay = random.uniform(0, min(self.backoff_max, self.backoff_initial * 2 ** min(failures, 10)))
                level = logging.WARNING if failures <= 3 or failures % 20 == 0 else logging.DEBUG
                if kind in UNREACHED:
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

    # -- the audit (typha.datastores.audit) -----------------------------------------------------------
    async def audit(self, res: Resource) -> Divergence | None:
        """Compare the cache of `res` with the API server at the version the watch has reached, and
        have the follower relist if they differ. None when `res` is not being watched right now (it
        is listing, waiting for the server or for the relist an audit asked for): there is nothing
        settled to compare."""
        st = self.stats[res.name]
        rv = st.resource_version
        if not st.watching or not rv or res.name in self._relist_wanted:
            st.audits[AUDIT_SKIPPED] += 1
            return None
        cached = self.ingestor.revisions(res.name)  # a copy, exactly at rv: no await since rv was read
        pages = []
        cont = ""
        while True:
            params = [("limit", str(self.page_size))]
            params += [("continue", cont)] if cont else [("resourceVersion", rv), ("resourceVersionMatch", "Exact")]
            try:
                resp = await self._get(res.path(), params, self._timeout(60), accept=METADATA_ACCEPT)
            except TooLarge as exc:  # the server has not reached the version our watch streamed
                d = Divergence()
                self._diverged(res, rv, d, f"the API server has not reached rv {rv} ({exc.message})")
                return d
            try:
                body = await resp.read()
            finally:
                resp.release()
            page = decode_page(body)
            pages.append(page.versions)
            cont = page.continue_token
            if not cont:
                break
        d = compare(pages, cached)
        if d:
            self._diverged(res, rv, d, d.describe())
        else:
            st.audits[AUDIT_OK] += 1
        return d

    def _diverged(self, res: Resource, rv: str, d: Divergence, what: str) -> None:
        st = self.stats[res.name]
        st.audits[AUDIT_DIVERGED] += 1
        st.divergences.update({kind: n for kind, n in d.counts().items() if n})
        self._relist_wanted.add(res.name)
        self._loud(
            f"audit:{res.name}",
            "%s: the cache diverges from the API server at rv %s: %s; relisting",
            res.name,
            rv,
            what,
        )

    async def _audit_loop(self) -> None:
        """Audit every resource in turn, every `audit_interval` (jittered, so replicas spread out)."""
        while True:
            await asyncio.sleep(self.audit_interval * random.uniform(0.9, 1.1))
            for res in self.resources:
                try:
                    await self.audit(res)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # an audit that fails changes nothing; the next one may pass
                    self.stats[res.name].audits[AUDIT_FAILED] += 1
                    self._loud(f"audit:{res.name}", "%s: audit failed: %s: %s", res.name, classify(exc), exc)

    async def run(self) -> None:
        for res in self.resources:
            self._set_state(res.name, WAITING)
        tasks = [self.follow(r) for r in self.resources]
        if self.audit_interval > 0:
            tasks.append(self._audit_loop())
        try:
            await asyncio.gather(*tasks)
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
