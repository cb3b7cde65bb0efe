"""Ingest: object events from a datastore -> projected, encoded KV updates in each syncer's cache.

Design note
-----------
Every datastore (the embedded synthetic cluster, the Kubernetes watchers) reports *objects*; the
caches hold *keys*. This layer sits between them, so datastores never know about keys and the cache
never knows about Kubernetes. It remembers which keys each object produced last time, because an
object's keys can change (a pod losing its IP, a policy changing namespace-scoped name) and because a
relist must delete the keys of objects that vanished while the watch was down: both become deletions
of exactly the keys that are no longer produced, and nothing else.

Values are encoded here, once, as canonical JSON (sorted keys): identical content gives identical
bytes, which is what lets the cache drop a pod-status heartbeat as "no change".

A batch of events allocates many short-lived dicts (parsed objects, projected values), all freed by
reference counting when the batch is done. CPython's cyclic GC would meanwhile run generation-2
passes over everything the process holds, tripling ingest cost on a large cluster (measured), so
`gc_paused()` holds it off for the duration of a batch.
"""

from __future__ import annotations

import gc
import logging
from collections import Counter
from collections.abc import Iterable, Mapping

import orjson

from protocol import SyncStatus
from protocol.keys import ADDED, DELETED, MODIFIED

from .k8s.projection import RESOURCES, ProjectionError, project, project_delete
from .snapcache import SnapCache, Update

__all__ = ["ADDED", "DELETED", "MODIFIED", "Ingestor", "ObjectEvent", "Resync", "encode_value", "gc_paused"]

log = logging.getLogger("typha.ingest")

ObjectEvent = tuple[str, str, dict]  # (event type, resource name, object)
_Ident = tuple[str, str, str]  # (resource, namespace or "", name)


class gc_paused:  # a class named like the function it was: `with gc_paused():`
    """Suspend the cyclic GC for one bulk step (nested use is fine; the outermost re-enables it).

    A class rather than a @contextmanager generator: it runs once per watch chunk and per batch, and
    the generator machinery cost several microseconds each time (3-4% of a burst's ingest)."""

    __slots__ = ("_was_enabled",)

    def __enter__(self) -> None:
        self._was_enabled = gc.isenabled()
        gc.disable()

    def __exit__(self, *exc: object) -> None:
        if self._was_enabled:
            gc.enable()


def encode_value(value: object) -> bytes:
    # orjson returns its whole working buffer (4 KiB at least) as the bytes object; cache values
    # live for the life of the object, so copy to an exact-size object: 8x less memory per key.
    return bytes(memoryview(orjson.dumps(value, option=orjson.OPT_SORT_KEYS)))


def _ident(resource: str, obj: dict) -> _Ident | None:
    md = obj.get("metadata") if isinstance(obj, dict) else None
    if not isinstance(md, dict) or not isinstance(md.get("name"), str):
        return None
    ns = md.get("namespace")
    return (resource, ns if isinstance(ns, str) else "", md["name"])


def _revision(obj: dict) -> str:
    md = obj.get("metadata")
    rv = md.get("resourceVersion") if isinstance(md, dict) else None
    return rv if isinstance(rv, str) else ""


class Ingestor:
    """Feeds the caches of every syncer type that wants each resource."""

    def __init__(self, caches: Mapping[str, SnapCache]) -> None:
        self.caches = dict(caches)
        self._targets: dict[str, list[SnapCache]] = {
            name: [c for s, c in self.caches.items() if s in res.syncers] for name, res in RESOURCES.items()
        }
        self._keys: dict[_Ident, tuple[str, ...]] = {}
        # resource -> (namespace, name) -> resourceVersion of every object the caches were built from
        # (producing keys or not), for the datastore's audit; None until `track_revisions`.
        self._revisions: dict[str, dict[tuple[str, str], str]] | None = None
        self.objects: Counter[str] = Counter()  # resource -> objects currently producing keys
        self.errors: Counter[str] = Counter()  # resource -> malformed objects skipped
        self.events: Counter[str] = Counter()  # resource -> events handled

    def track_revisions(self) -> None:
        """Keep every object's resourceVersion from now on, for `revisions` (the datastore's audit).
        Off by default: it costs a dict entry and the version string per object."""
        if self._revisions is None:
            self._revisions = {}

    def revisions(self, resource: str) -> dict[tuple[str, str], str]:
        """A copy of (namespace, name) -> resourceVersion of every object of `resource` the caches
        reflect (empty unless `track_revisions` was called before the first event)."""
        return dict((self._revisions or {}).get(resource, {}))

    def wanted(self, resource: str) -> bool:
        """True if any served syncer needs this resource (datastores watch only those)."""
        return bool(self._targets.get(resource))

    def set_status(self, status: SyncStatus, resources: Iterable[str] | None = None) -> None:
        """Set the status of the caches fed by `resources` (all caches if None)."""
        if resources is None:
            targets = list(self.caches.values())
        else:
            targets = list({id(c): c for r in resources for c in self._targets.get(r, [])}.values())
        for cache in targets:
            cache.set_status(status)

    def handle(self, events: Iterable[ObjectEvent]) -> int:
        """Project and apply a batch of events; returns the number of KV updates produced."""
        with gc_paused():
            return self._handle(events)

    def _handle(self, events: Iterable[ObjectEvent]) -> int:
        batches: dict[int, tuple[SnapCache, list[Update]]] = {}
        produced = 0
        for etype, resource, obj in events:
            targets = self._targets.get(resource)
            if not targets:
                continue
            self.events[resource] += 1
            updates = self._updates_for(etype, resource, obj)
            if not updates:
                continue
            produced += len(updates)
            for cache in targets:
                batches.setdefault(id(cache), (cache, []))[1].extend(updates)
        for cache, batch in batches.values():
            cache.apply(batch)
        return produced

    def _updates_for(self, etype: str, resource: str, obj: dict) -> list[Update]:
        ident = _ident(resource, obj)
        if ident is None:
            self._bad(resource, "object without metadata.name")
            return []
        rev = _revision(obj)
        if self._revisions is not None:  # before projecting: a malformed object is still on the server
            names = self._revisions.setdefault(resource, {})
            if etype == DELETED:
                names.pop((ident[1], ident[2]), None)
            else:
                names[(ident[1], ident[2])] = rev
        old = self._keys.get(ident, ())
        if etype == DELETED:
            self._forget(ident)
            keys = old
            if not keys:  # never seen (e.g. deleted before we listed): derive from the object
                try:
                    keys = tuple(project_delete(resource, obj))
                except ProjectionError as exc:
                    self._bad(resource, str(exc))
                    return []
            return [(k, None, rev) for k in keys]
        try:
            projected = project(resource, obj)
        except ProjectionError as exc:
            self._bad(resource, str(exc))
            return []
        updates: list[Update] = []
        live: list[str] = []
        for key, value in projected:
            if value is None:
                updates.append((key, None, rev))
            else:
                live.append(key)
                updates.append((key, encode_value(value), rev))
        for key in old:
            if key not in live and all(key != k for k, _ in projected):
                updates.append((key, None, rev))
        if live:
            if ident not in self._keys:
                self.objects[resource] += 1
            self._keys[ident] = tuple(live)
        else:
            self._forget(ident)
        return updates

    def _forget(self, ident: _Ident) -> None:
        if self._keys.pop(ident, None) is not None:
            self.objects[ident[0]] -= 1

    def begin_resync(self, resource: str) -> Resync:
        """Start applying a complete listing of `resource`, page by page (see `Resync`)."""
        return Resync(self, resource)

    def resync(self, resource: str, objects: Iterable[dict]) -> int:
        """Apply a complete listing of `resource` at once: upsert everything, delete what vanished."""
        r = self.begin_resync(resource)
        return r.page(objects) + r.finish()

    def _forget_missing(self, resource: str, present: set[_Ident]) -> int:
        names = self._revisions.get(resource) if self._revisions is not None else None
        if names:  # objects that produced no keys leave no deletions below, only their versions
            for ns, name in [n for n in names if (resource, *n) not in present]:
                del names[(ns, name)]
        gone = [i for i in self._keys if i[0] == resource and i not in present]
        events: list[ObjectEvent] = []
        for _, ns, name in gone:
            md: dict[str, str] = {"name": name}
            if ns:
                md["namespace"] = ns
            events.append((DELETED, resource, {"metadata": md}))
        return self.handle(events)

    def _bad(self, resource: str, why: str) -> None:
        self.errors[resource] += 1
        # Log the first few of each resource loudly, then quietly: one bad CRD must not flood the logs.
        level = logging.WARNING if self.errors[resource] <= 5 else logging.DEBUG
        log.log(level, "skipping malformed %s: %s", resource, why)


class Resync:
    """A relist in progress: pages are upserted as they arrive, and `finish()` deletes the keys of
    every object the listing did not contain.

    Page by page rather than all at once because a listing of 150,000 pods parsed into Python is a
    few gigabytes; one page at a time keeps typha's peak memory to a page. Agents may see the
    cache between pages, which is fine: the cache says resync-in-progress until the list is done.
    """

    def __init__(self, ingestor: Ingestor, resource: str) -> None:
        self._ingestor = ingestor
        self.resource = resource
        self._present: set[_Ident] = set()
        self.objects = 0

    def page(self, objects: Iterable[dict]) -> int:
        events: list[ObjectEvent] = []
        for obj in objects:
            ident = _ident(self.resource, obj)
            if ident is not None:
                self._present.add(ident)
            events.append((MODIFIED, self.resource, obj))
        self.objects += len(events)
        return self._ingestor.handle(events)

    def finish(self) -> int:
        return self._ingestor._forget_missing(self.resource, self._present)
