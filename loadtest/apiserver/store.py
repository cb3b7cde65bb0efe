"""The pure (socket-free) object store behind the emulator: etcd + watch cache in one.

Design note
-----------
The store sequences the pieces that hold the semantics, one concern per module:

- :mod:`.objects`: stored objects as JSON bytes plus filter data, committed events, the
  sorted key table of a resource;
- :mod:`.history`: the retained window of events (watch replay, MVCC list snapshots, 410s);
- :mod:`.listing`: which revision a list reads and one consistent page of it;
- :mod:`.watch`: bounded watcher queues and the indexed, exception-safe fan-out;
- :mod:`.strategy`: per-type create/update rules (system metadata, status, generation).

*Revisions.* One global integer counter, like an etcd revision: every write takes the
next value, stamps it into ``metadata.resourceVersion`` and records an Event in its
resource's history, then offers it to that resource's watchers, all synchronously. Since
nothing awaits between a commit and its fan-out, a bookmark queued behind a watcher's
events can never overtake one.

*Two write modes.* Methods with a ``strategy`` keyword implement REST semantics when
``strategy=True`` (the HTTP shell's choice); ``strategy=False``, the default for
in-process callers, stores what it is given like writing straight to etcd, but still
stamps system metadata and emits the same watch events.

The store is single-threaded and synchronous: call it from the event loop that runs the
HTTP shell (``server.py``); the shell only turns watcher queues into chunked responses.
"""

from __future__ import annotations

import builtins
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from . import errors
from . import strategy as strat
from .errors import ApiError
from .history import History
from .listing import ListResult, TooLargeResourceVersion, build_page, choose_snapshot, encode_continue, parse_rv
from .objects import (
    ADDED,
    BOOKMARK,
    DELETED,
    ERROR,
    MODIFIED,
    Event,
    ObjectTable,
    StoredObject,
    dumps,
    encode_event,
    make_key,
)
from .patch import MERGE, apply_patch
from .resources import DEFAULT_RESOURCES, ResourceRegistry, ResourceType
from .selectors import FieldSelector, LabelSelector, extract_fields, parse_field_selector, parse_label_selector
from .stats import ResourceStats, Stats
from .validation import validate_object
from .watch import Watcher, WatcherSet, bookmark_bytes

_EMPTY_LABELS: dict[str, str] = {}
DEFAULT_NAMESPACES = ("default", "kube-system", "kube-public", "kube-node-lease")


class _ResourceState:
    """Everything the store keeps for one resource."""

    __slots__ = ("history", "rt", "stats", "table", "watchers")

    def __init__(self, rt: ResourceType, window_size: int, start_rv: int, stats: ResourceStats) -> None:
        self.rt = rt
        self.table = ObjectTable()
        self.history = History(window_size, start_rv)
        self.watchers = WatcherSet(rt)
        self.stats = stats


class Store:
    """The emulator's state. Public methods taking ``resource`` accept a resource key,
    plural (when unambiguous), kind or short name: ``"pods"``, ``"ippools"``,
    ``"networkpolicies.crd.projectcalico.org"``.
    """

    def __init__(
        self,
        resources: Iterable[ResourceType] = DEFAULT_RESOURCES,
        *,
        window_size: int = 10_000,
        max_watch_queue: int = 10_000,
        initial_rv: int = 1,
        stats: Stats | None = None,
        seed_namespaces: Iterable[str] = DEFAULT_NAMESPACES,
        require_namespace: bool = False,
    ) -> None:
        self.registry = ResourceRegistry(resources)
        self.stats = stats or Stats()
        self.window_size = window_size
        self.max_watch_queue = max_watch_queue
        self.require_namespace = require_namespace
        self._rv = initial_rv
        self._states: dict[str, _ResourceState] = {
            rt.key: _ResourceState(rt, window_size, initial_rv, self.stats.resource(rt.key)) for rt in self.registry
        }
        self._listeners: list[Callable[[int], None]] = []
        for ns in seed_namespaces:
            self.create("namespaces", {"metadata": {"name": ns}})

    # ---- basics ----------------------------------------------------------------------

    @property
    def rv(self) -> int:
        """The current (latest committed) global resourceVersion."""
        return self._rv

    def resource(self, resource: str | ResourceType) -> ResourceType:
        try:
            return self.registry.resolve(resource)
        except KeyError as e:
            raise errors.ApiError(404, "NotFound", str(e.args[0])) from None

    def _state(self, resource: str | ResourceType) -> _ResourceState:
        return self._states[self.resource(resource).key]

    def add_commit_listener(self, cb: Callable[[int], None]) -> None:
        """``cb(rv)`` runs after every committed write (used to wake waiters for future RVs)."""
        self._listeners.append(cb)

    def remove_commit_listener(self, cb: Callable[[int], None]) -> None:
        if cb in self._listeners:
            self._listeners.remove(cb)

    def _notify_listeners(self, rv: int) -> None:
        for cb in list(self._listeners):
            cb(rv)

    def count(self, resource: str) -> int:
        return len(self._state(resource).table)

    def window_start(self, resource: str) -> int:
        """Oldest RV a watch/continue on ``resource`` may still start from (older -> 410)."""
        return self._state(resource).history.start

    def _make(self, rt: ResourceType, d: dict[str, Any]) -> StoredObject:
        """Validate ``d`` and stamp it with the next revision: the one way into storage."""
        validate_object(rt, d)
        rv = self._next_rv()
        md = d["metadata"]
        md["resourceVersion"] = str(rv)
        labels = md.get("labels") or _EMPTY_LABELS
        fields = extract_fields(d, rt.field_labels) if rt.field_labels else ()
        return StoredObject(make_key(md.get("namespace", ""), md["name"]), rv, dumps(d), labels, fields)

    # ---- reads -----------------------------------------------------------------------

    def get_object(self, resource: str | ResourceType, name: str, namespace: str | None = None) -> StoredObject:
        rs = self._state(resource)
        obj = rs.table.get(make_key((namespace or "") if rs.rt.namespaced else "", name))
        if obj is None:
            raise errors.not_found(rs.rt, name)
        return obj

    def get(self, resource: str, name: str, namespace: str | None = None) -> dict[str, Any]:
        """The current object as a dict; raises ApiError(404)."""
        return self.get_object(resource, name, namespace).to_dict()

    def list(
        self,
        resource: str | ResourceType,
        namespace: str | None = None,
        *,
        label_selector: str | LabelSelector | None = None,
        field_selector: str | FieldSelector | None = None,
        limit: int | None = None,
        continue_: str | None = None,
        resource_version: str | None = None,
        resource_version_match: str | None = None,
    ) -> ListResult:
        """A list page with Kubernetes resourceVersion / limit / continue semantics."""
        rs = self._state(resource)
        rt = rs.rt
        lsel = self._lsel(label_selector)
        fsel = self._fsel(rt, field_selector)
        if not rt.namespaced:
            namespace = None
        limit = limit if limit and limit > 0 else None
        snap_rv, start = choose_snapshot(
            self._rv, rs.history.start, resource_version, resource_version_match, limit, continue_
        )
        try:
            overrides = rs.history.state_at(snap_rv)
        except ApiError:
            rs.stats.list_expired += 1
            if continue_:
                # Like etcd3's store: tell the client how to continue inconsistently.
                assert start is not None
                raise errors.expired(errors.CONTINUE_EXPIRED_MSG, {"continue": encode_continue(-1, start)}) from None
            raise
        page = build_page(rt, rs.table, snap_rv, start, namespace, lsel, fsel, limit, overrides)
        rs.stats.list_requests += 1
        rs.stats.list_items_sent += len(page.items)
        return page

    def _lsel(self, sel: str | LabelSelector | None) -> LabelSelector:
        return sel if isinstance(sel, LabelSelector) else parse_label_selector(sel)

    def _fsel(self, rt: ResourceType, sel: str | FieldSelector | None) -> FieldSelector:
        return sel if isinstance(sel, FieldSelector) else parse_field_selector(sel, rt.field_labels, rt.namespaced)

    # ---- writes ----------------------------------------------------------------------

    def _commit(self, rs: _ResourceState, etype: str, obj: StoredObject, prev: StoredObject | None) -> Event:
        if etype == DELETED:
            rs.table.remove(obj.key)
        else:
            rs.table.put(obj)
        ev = Event(etype, obj.rv, obj, prev)
        rs.history.record(ev)
        rs.stats.events_generated += 1
        if rs.watchers.count:
            rs.watchers.dispatch(ev)
        self._notify_listeners(ev.rv)
        return ev

    def _next_rv(self) -> int:
        self._rv += 1
        return self._rv

    def create(
        self, resource: str, obj: Mapping[str, Any], *, namespace: str | None = None, strategy: bool = False
    ) -> dict[str, Any]:
        """Create ``obj``; returns the stored object. 409 AlreadyExists if present."""
        return self.create_object(resource, obj, namespace=namespace, strategy=strategy).to_dict()

    def create_object(
        self,
        resource: str | ResourceType,
        obj: Mapping[str, Any],
        *,
        namespace: str | None = None,
        strategy: bool = False,
    ) -> StoredObject:
        rs = self._state(resource)
        rt = rs.rt
        d = strat.normalize(rt, obj, namespace)
        md = d["metadata"]
        name = md.get("name")
        if not name and md.get("generateName"):
            name = md["name"] = strat.generate_name(md["generateName"])
        if not name:
            raise errors.invalid(rt, "", "metadata.name", "Required value: name or generateName is required")
        ns = md.get("namespace", "")
        key = make_key(ns, name)
        if key in rs.table.objects:
            raise errors.already_exists(rt, name)
        if ns and self.require_namespace and make_key("", ns) not in self._states["namespaces"].table.objects:
            raise errors.namespace_not_found(ns)
        strat.prepare_create(rt, d, strategy)
        stored = self._make(rt, d)
        self._commit(rs, ADDED, stored, None)
        rs.stats.creates += 1
        return stored

    def update(
        self,
        resource: str,
        obj: Mapping[str, Any],
        *,
        namespace: str | None = None,
        subresource: str | None = None,
        strategy: bool = False,
    ) -> dict[str, Any]:
        """PUT semantics: 409 Conflict if metadata.resourceVersion is set and stale."""
        return self.update_object(
            resource, obj, namespace=namespace, subresource=subresource, strategy=strategy
        ).to_dict()

    def update_object(
        self,
        resource: str | ResourceType,
        obj: Mapping[str, Any],
        *,
        namespace: str | None = None,
        name: str | None = None,
        subresource: str | None = None,
        strategy: bool = False,
    ) -> StoredObject:
        rs = self._state(resource)
        rt = rs.rt
        d = strat.normalize(rt, obj, namespace)
        md = d["metadata"]
        body_name = md.get("name")
        if name is not None and body_name and body_name != name:
            raise errors.bad_request(
                f"the name of the object ({body_name}) does not match the name on the URL ({name})"
            )
        name = name or body_name
        if not name:
            raise errors.invalid(rt, "", "metadata.name", "Required value: name is required")
        md["name"] = name
        cur = rs.table.get(make_key(md.get("namespace", ""), name))
        if cur is None:
            raise errors.not_found(rt, name)
        rv_in = md.get("resourceVersion")
        if rv_in:
            if parse_rv(str(rv_in)) != cur.rv:
                raise errors.conflict(rt, name, errors.STALE_RV)
        elif strategy and not rt.unconditional_update:
            raise errors.invalid(
                rt, name, "metadata.resourceVersion", "Invalid value: 0x0: must be specified for an update"
            )
        stored = self._update_from(rs, cur, d, subresource, strategy)
        rs.stats.updates += 1
        return stored

    def _update_from(
        self, rs: _ResourceState, cur: StoredObject, d: dict[str, Any], subresource: str | None, strategy: bool
    ) -> StoredObject:
        rt = rs.rt
        old = cur.to_dict()
        new = strat.prepare_update(rt, old, d, subresource, strategy)
        if new == old:
            return cur  # no-op update: no new revision, no event (as kube-apiserver)
        nmd = new["metadata"]
        if nmd.get("deletionTimestamp") and not nmd.get("finalizers"):
            # Last finalizer removed from an object being deleted: it goes away now.
            return self._delete_now(rs, cur, new)
        stored = self._make(rt, new)
        self._commit(rs, MODIFIED, stored, cur)
        return stored

    def patch(
        self,
        resource: str,
        name: str,
        patch: Any,
        *,
        namespace: str | None = None,
        content_type: str = MERGE,
        subresource: str | None = None,
        strategy: bool = False,
    ) -> dict[str, Any]:
        """Apply a merge / strategic-merge / JSON patch (``content_type`` says which)."""
        return self.patch_object(
            resource,
            name,
            patch,
            namespace=namespace,
            content_type=content_type,
            subresource=subresource,
            strategy=strategy,
        ).to_dict()

    def patch_object(
        self,
        resource: str | ResourceType,
        name: str,
        patch: Any,
        *,
        namespace: str | None = None,
        content_type: str = MERGE,
        subresource: str | None = None,
        strategy: bool = False,
    ) -> StoredObject:
        rs = self._state(resource)
        rt = rs.rt
        cur = self.get_object(rt, name, namespace)
        new = apply_patch(cur.to_dict(), patch, content_type, rt.strategic_type)
        md = new.get("metadata")
        if not isinstance(md, dict):
            raise errors.invalid(rt, name, "metadata", "Required value")
        if md.get("name") != name or (rt.namespaced and md.get("namespace") != cur.namespace):
            raise errors.bad_request("metadata.name and metadata.namespace are immutable")
        # A resourceVersion in the patch is an optimistic-concurrency precondition.
        if str(md.get("resourceVersion", "")) != str(cur.rv):
            raise errors.conflict(rt, name, errors.STALE_RV)
        d = strat.normalize(rt, new, cur.namespace or None)
        stored = self._update_from(rs, cur, d, subresource, strategy)
        rs.stats.patches += 1
        return stored

    def upsert(self, resource: str, obj: Mapping[str, Any], *, namespace: str | None = None) -> dict[str, Any]:
        """Create, or unconditionally replace (ignoring resourceVersion). Load-test helper."""
        rt = self.resource(resource)
        md = obj.get("metadata") or {}
        ns = (namespace or md.get("namespace") or "") if rt.namespaced else ""
        if make_key(ns, md.get("name") or "") in self._states[rt.key].table.objects:
            o = dict(obj)
            o["metadata"] = {k: v for k, v in md.items() if k != "resourceVersion"}
            return self.update(resource, o, namespace=namespace)
        return self.create(resource, obj, namespace=namespace)

    def delete(
        self, resource: str, name: str, *, namespace: str | None = None, preconditions: Mapping[str, Any] | None = None
    ) -> dict[str, Any]:
        """Delete; returns the final object. Objects with finalizers only get deletionTimestamp."""
        return self.delete_object(resource, name, namespace=namespace, preconditions=preconditions)[0].to_dict()

    def delete_object(
        self,
        resource: str | ResourceType,
        name: str,
        *,
        namespace: str | None = None,
        preconditions: Mapping[str, Any] | None = None,
    ) -> tuple[StoredObject, bool]:
        """Returns (object, deleted_now). deleted_now is False when finalizers defer it."""
        rs = self._state(resource)
        rt = rs.rt
        cur = self.get_object(rt, name, namespace)
        d = cur.to_dict()
        md = d["metadata"]
        if preconditions:
            if preconditions.get("uid") and preconditions["uid"] != md.get("uid"):
                raise errors.conflict(
                    rt,
                    name,
                    f"Precondition failed: UID in precondition: {preconditions['uid']}, UID in object meta: {md.get('uid')}",
                )
            prv = preconditions.get("resourceVersion")
            if prv and str(prv) != str(cur.rv):
                raise errors.conflict(
                    rt,
                    name,
                    f"Precondition failed: ResourceVersion in precondition: {prv}, ResourceVersion in object meta: {cur.rv}",
                )
        if md.get("finalizers"):
            if md.get("deletionTimestamp"):
                return cur, False
            md["deletionTimestamp"] = strat.now()
            md["deletionGracePeriodSeconds"] = 0
            stored = self._make(rt, d)
            self._commit(rs, MODIFIED, stored, cur)
            return stored, False
        return self._delete_now(rs, cur, d), True

    def _delete_now(self, rs: _ResourceState, cur: StoredObject, final: dict[str, Any]) -> StoredObject:
        # The DELETED event carries the last state stamped with the deletion's revision.
        tomb = self._make(rs.rt, final)
        self._commit(rs, DELETED, tomb, cur)
        rs.stats.deletes += 1
        return tomb

    def delete_collection(
        self,
        resource: str,
        namespace: str | None = None,
        *,
        label_selector: str | None = None,
        field_selector: str | None = None,
    ) -> builtins.list[StoredObject]:
        res = self.list(resource, namespace, label_selector=label_selector, field_selector=field_selector)
        return [self.delete_object(resource, o.name, namespace=o.namespace or None)[0] for o in res.items]

    def bulk_load(
        self,
        resource: str,
        objs: Iterable[Mapping[str, Any]],
        *,
        namespace: str | None = None,
        emit_events: bool = True,
    ) -> int:
        """Create many objects fast; returns how many.

        With ``emit_events=False`` no per-object events are recorded or sent; instead the
        resource's history is truncated at the new revision and its open watches are cut,
        so every client relists and sees a consistent state (like an etcd restore).
        """
        rs = self._state(resource)
        rt = rs.rt
        n = 0
        if emit_events:
            for o in objs:
                self.create_object(rt, o, namespace=namespace)
                n += 1
            return n
        ts = strat.now()
        for o in objs:
            d = strat.normalize(rt, o, namespace)
            md = d["metadata"]
            name = md.get("name")
            if not name:
                raise errors.invalid(rt, "", "metadata.name", "Required value")
            key = make_key(md.get("namespace", ""), name)
            if key in rs.table.objects:
                raise errors.already_exists(rt, name)
            strat.prepare_create(rt, d, False, ts)
            rs.table.put(self._make(rt, d))
            n += 1
        rs.stats.creates += n
        rs.history.reset(self._rv)
        self.cut_watches(rt.key, reason="reload")
        self._notify_listeners(self._rv)
        return n

    # ---- watch -----------------------------------------------------------------------

    def watch(
        self,
        resource: str | ResourceType,
        namespace: str | None = None,
        *,
        resource_version: str | None = None,
        label_selector: str | LabelSelector | None = None,
        field_selector: str | FieldSelector | None = None,
        send_initial_events: bool = False,
        max_queue: int | None = None,
        notify: Callable[[], None] | None = None,
    ) -> Watcher:
        """Register a watch. RV ""/"0"/None: synthetic ADDED for the current state first;
        RV "N": replay retained events after N (ApiError 410 if N < window_start).
        ``send_initial_events`` (streaming list) ends the initial ADDEDs with a BOOKMARK
        annotated ``k8s.io/initial-events-end``."""
        rs = self._state(resource)
        rt = rs.rt
        lsel = self._lsel(label_selector)
        fsel = self._fsel(rt, field_selector)
        if not rt.namespaced:
            namespace = None
        current = self._rv
        snapshot: builtins.list[StoredObject] = []
        replay: builtins.list[Event] = []
        end_bookmark: bytes | None = None
        if send_initial_events or resource_version in (None, "", "0"):
            if resource_version not in (None, "", "0"):
                rv = parse_rv(resource_version)
                if rv > current:
                    raise TooLargeResourceVersion(rv, current)
            snapshot = rs.table.in_namespace(namespace)
            if send_initial_events:
                end_bookmark = bookmark_bytes(rt, current, initial_events_end=True)
            start_rv = current
        else:
            rv = parse_rv(resource_version)
            if rv > current:
                raise TooLargeResourceVersion(rv, current)
            if rv < rs.history.start:
                rs.stats.watches_expired += 1
                raise errors.too_old_rv(rv, rs.history.start)
            replay = rs.history.since(rv)
            start_rv = rv
        w = Watcher(rt, namespace, lsel, fsel, max_queue or self.max_watch_queue, rs.stats, start_rv)
        w.set_notify(notify)
        w.set_initial(snapshot, replay, end_bookmark)
        rs.watchers.add(w)
        rs.stats.open_watches += 1
        rs.stats.watches_total += 1
        return w

    def unwatch(self, w: Watcher) -> None:
        """Deregister (idempotent). Call when the watch stream ends for any reason."""
        rs = self._states[w.rt.key]
        if not rs.watchers.discard(w):
            return
        rs.stats.open_watches -= 1
        if not w.closed:
            w.close("stopped")

    def watchers(self, resource: str | None = None) -> builtins.list[Watcher]:
        out: builtins.list[Watcher] = []
        for rs in [self._state(resource)] if resource else self._states.values():
            out.extend(rs.watchers)
        return out

    def bookmark_bytes(self, rt: ResourceType, rv: int | None = None, initial_events_end: bool = False) -> bytes:
        return bookmark_bytes(rt, self._rv if rv is None else rv, initial_events_end)

    def push_bookmark(self, w: Watcher) -> None:
        """Queue a BOOKMARK at the current RV behind everything already queued for ``w``
        (all events <= current RV were pushed synchronously, so the promise holds)."""
        w.push(bookmark_bytes(w.rt, self._rv))

    # ---- fault injection -------------------------------------------------------------

    def cut_watches(self, resource: str | None = None, *, reason: str = "cut") -> int:
        """Close every open watch (of one resource, or all); returns how many."""
        n = 0
        for w in self.watchers(resource):
            if not w.closed:
                w.close(reason)
                self._states[w.rt.key].stats.watches_cut += 1
                n += 1
        return n

    def compact(self, resource: str | None = None, rv: int | None = None) -> int:
        """Drop retained history up to ``rv``, so any watch or continue token from an older
        RV gets 410 Expired. Returns the compaction RV.

        Without ``rv``, behaves like kube-apiserver's compactor, which first writes its
        bookkeeping key (one new revision, no resource event) and then compacts etcd to that
        revision: every RV handed out before the call is then too old.
        """
        if rv is None:
            self._rv += 1
            self._notify_listeners(self._rv)
        target = self._rv if rv is None else min(rv, self._rv)
        for rs in [self._state(resource)] if resource else self._states.values():
            rs.history.compact(target)
        return target


__all__ = [
    "ADDED",
    "BOOKMARK",
    "DEFAULT_NAMESPACES",
    "DELETED",
    "ERROR",
    "MODIFIED",
    "Event",
    "ListResult",
    "Store",
    "StoredObject",
    "TooLargeResourceVersion",
    "Watcher",
    "encode_event",
]
