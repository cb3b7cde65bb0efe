"""The store's state, and everything that only reads it: lists, watches, fault injection.

Design note
-----------
:class:`StoreState` holds one :class:`_ResourceState` per served resource (its sorted
object table, its retained history, its watchers, its counters) plus the global
revision counter, and answers every read from them: GET, consistent paginated LIST at a
revision (:mod:`.listing`), and WATCH from a revision, with bookmarks (:mod:`.watch`).
Fault injection (cutting watches, compacting history) lives here too, since it only
touches history and watchers. Writes, which are where the semantics of Kubernetes
objects live, are :class:`~.store.Store`'s; the split keeps each module one concern and
readable on its own.

The set of resources can change at runtime (a CRD starts or stops serving one):
:meth:`StoreState.add_resource`, :meth:`~StoreState.replace_resource`,
:meth:`~StoreState.remove_resource`.
"""

from __future__ import annotations

import builtins
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from . import errors
from .defaults import ClusterIPs
from .errors import ApiError
from .history import History
from .listing import ListResult, TooLargeResourceVersion, build_page, choose_snapshot, encode_continue, parse_rv
from .objects import Event, ObjectTable, StoredObject, make_key
from .resources import DEFAULT_RESOURCES, K8S_MINOR, ResourceRegistry, ResourceType
from .schema import SchemaSet
from .selectors import FieldSelector, LabelSelector, parse_field_selector, parse_label_selector
from .stats import ResourceStats, Stats
from .watch import Watcher, WatcherSet, bookmark_bytes

DEFAULT_NAMESPACES = ("default", "kube-system", "kube-public", "kube-node-lease")


@dataclass(frozen=True)
class Backup:
    """A store's contents at one revision: what ``etcdctl snapshot save`` keeps. Cheap to take: the
    stored objects are immutable, so this holds references, not copies."""

    rv: int
    objects: Mapping[str, tuple[StoredObject, ...]]  # resource key -> its objects at ``rv``

    def count(self) -> int:
        return sum(len(v) for v in self.objects.values())


class _ResourceState:
    """Everything the store keeps for one resource."""

    __slots__ = ("history", "rt", "stats", "table", "watchers")

    def __init__(self, rt: ResourceType, window_size: int, start_rv: int, stats: ResourceStats) -> None:
        self.rt = rt
        self.table = ObjectTable()
        self.history = History(window_size, start_rv)
        self.watchers = WatcherSet(rt)
        self.stats = stats


class StoreState:
    """The state of a :class:`~.store.Store` and everything that only reads it. Public methods
    taking ``resource`` accept a resource key, plural (when unambiguous), kind or short
    name: ``"pods"``, ``"ippools"``, ``"networkpolicies.crd.projectcalico.org"``.
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
        require_crds: bool = False,
        k8s_minor: int = K8S_MINOR,
        namespace_cleanup_delay: float = 0.0,
    ) -> None:
        # require_crds: custom resources are served only once their CRD is created, as in a
        # real cluster; otherwise the built-in Calico kinds are served from the start.
        self.registry = ResourceRegistry(rt for rt in resources if not (require_crds and rt.custom))
        self.stats = stats or Stats()
        self.window_size = window_size
        self.max_watch_queue = max_watch_queue
        self.require_namespace = require_namespace
        self.schemas = SchemaSet(k8s_minor)
        self.crd_columns: dict[str, builtins.list[dict[str, Any]]] = {}
        self.cascading: set[str] = set()  # namespaces being emptied right now
        # Namespaces marked Terminating whose contents the namespace controller deletes at the
        # given monotonic time (0 delay: at once, inside the delete).
        self.namespace_cleanup_delay = namespace_cleanup_delay
        self.terminating: dict[str, float] = {}
        self._cluster_ips = ClusterIPs()
        self._rv = initial_rv
        self._states: dict[str, _ResourceState] = {
            rt.key: _ResourceState(rt, window_size, initial_rv, self.stats.resource(rt.key)) for rt in self.registry
        }
        self._listeners: list[Callable[[int], None]] = []
        self._seed(seed_namespaces)

    def _seed(self, namespaces: Iterable[str]) -> None:
        """Create the namespaces every cluster starts with (a write: :class:`~.store.Store`'s)."""
        raise NotImplementedError

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

    def add_resource(self, rt: ResourceType) -> None:
        """Start serving ``rt`` (a CRD's resource), empty."""
        self.registry.add(rt)
        self._states[rt.key] = _ResourceState(rt, self.window_size, self._rv, self.stats.resource(rt.key))

    def replace_resource(self, rt: ResourceType) -> None:
        """Serve ``rt`` in place of the row with its key, keeping the objects (a CRD update)."""
        old = self.registry.remove(rt.key)
        self.registry.add(rt)
        self._states[rt.key].rt = rt
        if (old.version, old.namespaced) != (rt.version, rt.namespaced):
            self.cut_watches(rt.key, reason="resource changed")

    def remove_resource(self, key: str) -> None:
        """Stop serving ``key``; its watches end."""
        self.cut_watches(key, reason="resource removed")
        self.registry.remove(key)
        del self._states[key]

    def objects_in(self, rt: ResourceType, namespace: str | None) -> builtins.list[StoredObject]:
        """The current objects of ``rt`` (in one namespace, or all)."""
        return self._states[rt.key].table.in_namespace(namespace)

    def namespace_object(self, ns: str) -> StoredObject | None:
        return self._states["namespaces"].table.get(make_key("", ns))

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

    def backup(self) -> Backup:
        """The current contents and revision (restore them with :meth:`restore`)."""
        return Backup(self._rv, {k: tuple(rs.table.objects.values()) for k, rs in self._states.items()})

    def restore(self, backup: Backup) -> int:
        """Replace every resource's contents with ``backup``'s and rewind the revision counter to its
        revision, as restoring etcd from a snapshot does: later writes take revisions that were
        handed out before, for different contents. History restarts empty at the backup's revision
        (older versions get 410, newer ones "too large" until writes reach them) and every open
        watch is cut. Returns how many objects the store now holds."""
        self._rv = backup.rv
        for key, rs in self._states.items():
            rs.table = ObjectTable()
            for obj in backup.objects.get(key, ()):
                rs.table.put(obj)
            rs.history.reset(backup.rv)
        self.cut_watches(reason="restore")
        self._notify_listeners(self._rv)
        return sum(len(rs.table) for rs in self._states.values())

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


__all__ = ["Backup", "StoreState"]
