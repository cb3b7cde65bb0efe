"""The pure (socket-free) object store behind the emulator: etcd + watch cache in one.

Design note
-----------
*Objects.* Each resource keeps ``{(namespace, name): StoredObject}``. A StoredObject is
immutable and holds the object's **serialized JSON bytes** plus the few things needed to
filter without decoding (labels, pre-extracted selectable fields). GET and LIST therefore
never re-serialize: a list response is ``b",".join(raw for each item)`` and 150k pods cost
roughly their JSON size in memory. Writes decode, modify, re-encode (orjson) once.

*Revisions.* One global integer counter, like an etcd revision: every write takes the next
value, stamps it into ``metadata.resourceVersion`` and records an :class:`Event`.

*Retained window (MVCC).* Each resource keeps its last ``window_size`` events in a deque,
each event remembering the object before the change (``prev``). That single structure
serves three purposes, as kube-apiserver's watch cache + etcd history do:

- a watch from resourceVersion X replays the retained events newer than X;
- a paginated list is *consistent*: a page for snapshot X is the current state with every
  retained change newer than X undone (``prev`` of the earliest such event per key);
- anything older than the window (``window_start``) is gone: 410 Expired, both for
  watches and for continue tokens, which is what forces clients to relist.

``compact()`` empties the windows to force exactly that.

*Watches.* A :class:`Watcher` is a bounded FIFO of already-encoded event lines. When an
event is committed the store encodes it once (lazily, on the first watcher that wants it)
and appends the same ``bytes`` object to each interested watcher's queue, so fan-out to
thousands of watchers costs one encode plus an append each. Watchers that filter by a
pod's ``spec.nodeName`` (or by namespace) are indexed so an event only visits the
watchers that can match it. A watcher whose queue overflows is closed (kube-apiserver
also terminates watchers that cannot keep up); the client re-watches or relists.

The store is single-threaded and synchronous: call it from the event loop that runs the
HTTP shell (``server.py``); the shell only turns watcher queues into chunked responses.
"""

from __future__ import annotations

import base64
import builtins
import heapq
import random
import re
import time
import uuid
from bisect import bisect_left, bisect_right, insort
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import orjson

from . import errors
from .errors import ApiError
from .patch import MERGE, apply_patch
from .resources import DEFAULT_RESOURCES, ResourceRegistry, ResourceType
from .selectors import FieldSelector, LabelSelector, extract_fields, parse_field_selector, parse_label_selector
from .stats import ResourceStats, Stats

Key = str  # namespace + "\x00" + name ("" namespace for cluster-scoped); strings sort ~8x faster than tuples


def make_key(namespace: str, name: str) -> Key:
    return namespace + "\x00" + name


ADDED, MODIFIED, DELETED, BOOKMARK, ERROR = "ADDED", "MODIFIED", "DELETED", "BOOKMARK", "ERROR"

_EMPTY_LABELS: dict[str, str] = {}
_NAME_RE = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_GEN_CHARS = "bcdfghjklmnpqrstvwxz2456789"  # kube's utilrand alphabet (no vowels, no confusables)
DEFAULT_NAMESPACES = ("default", "kube-system", "kube-public", "kube-node-lease")


class TooLargeResourceVersion(ApiError):
    """Requested RV is in the future; the HTTP shell waits for it before giving up (504)."""

    def __init__(self, requested: int, current: int) -> None:
        e = errors.too_large_rv(requested, current)
        super().__init__(e.code, e.reason, e.message, e.status.get("details"))
        self.requested = requested


def encode_event(etype: str, raw: bytes) -> bytes:
    return b'{"type":"' + etype.encode() + b'","object":' + raw + b"}\n"


def _dumps(d: Any) -> bytes:
    # orjson hands back a bytes object with a ~4 KiB allocation behind a short length;
    # copying to an exact-size object cuts stored-object memory ~8x (150k pods: 600 -> 75 MB).
    return memoryview(orjson.dumps(d)).tobytes()


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _with_rv(raw_or_dict: bytes | dict[str, Any], rv: int) -> bytes:
    d = orjson.loads(raw_or_dict) if isinstance(raw_or_dict, bytes) else raw_or_dict
    d.setdefault("metadata", {})["resourceVersion"] = str(rv)
    return _dumps(d)


class StoredObject:
    """One immutable version of an object: its JSON bytes plus pre-extracted filter data."""

    __slots__ = ("fields", "key", "labels", "raw", "rv")

    def __init__(self, key: Key, rv: int, raw: bytes, labels: dict[str, str], fields: tuple[str | None, ...]) -> None:
        self.key = key
        self.rv = rv
        self.raw = raw
        self.labels = labels
        self.fields = fields

    @property
    def namespace(self) -> str:
        return self.key.partition("\x00")[0]

    @property
    def name(self) -> str:
        return self.key.partition("\x00")[2]

    def to_dict(self) -> dict[str, Any]:
        return orjson.loads(self.raw)

    def __repr__(self) -> str:
        return f"StoredObject({self.key!r}, rv={self.rv})"


class Event:
    """A committed change. ``obj`` is the new state (for DELETED: last state at the delete RV)."""

    __slots__ = ("_as_added", "_as_deleted", "_enc", "obj", "prev", "rv", "type")

    def __init__(self, etype: str, rv: int, obj: StoredObject, prev: StoredObject | None) -> None:
        self.type = etype
        self.rv = rv
        self.obj = obj
        self.prev = prev
        self._enc: bytes | None = None
        self._as_added: bytes | None = None
        self._as_deleted: bytes | None = None

    def encoded(self) -> bytes:
        # Encoded lazily and exactly once: every watcher gets this same bytes object.
        if self._enc is None:
            self._enc = encode_event(self.type, self.obj.raw)
        return self._enc

    def encoded_as_added(self) -> bytes:
        # A MODIFIED that makes the object start matching a watcher's selector.
        if self._as_added is None:
            self._as_added = encode_event(ADDED, self.obj.raw)
        return self._as_added

    def encoded_as_deleted(self) -> bytes:
        # A MODIFIED that makes it stop matching: kube sends the *old* object at the new RV.
        if self._as_deleted is None:
            assert self.prev is not None
            self._as_deleted = encode_event(DELETED, _with_rv(self.prev.raw, self.rv))
        return self._as_deleted


class Watcher:
    """A watch's bounded event queue (sans-I/O: the shell drains it onto a socket).

    ``notify`` (set via :meth:`set_notify`) is called whenever the queue goes from idle to
    having work, or the watcher closes, so the shell can sleep in between.
    """

    def __init__(
        self,
        rt: ResourceType,
        namespace: str | None,
        lsel: LabelSelector,
        fsel: FieldSelector,
        max_queue: int,
        stats: ResourceStats,
        start_rv: int,
    ) -> None:
        self.rt = rt
        self.namespace = namespace
        self.label_selector = lsel
        self.field_selector = fsel
        self.max_queue = max_queue
        self.start_rv = start_rv
        self.queue: deque[bytes] = deque()
        self.closed = False
        self.close_reason: str | None = None
        self._trivial = namespace is None and lsel.empty and fsel.empty
        self._ns_prefix = None if namespace is None else namespace + "\x00"
        self._notify: Callable[[], None] | None = None
        self._initial: Iterator[bytes] | None = None
        self._stats = stats
        self.index_key: tuple[str, str] | None = None

    # ---- filtering -------------------------------------------------------------------

    def matches(self, obj: StoredObject) -> bool:
        if self._trivial:
            return True
        if self._ns_prefix is not None and not obj.key.startswith(self._ns_prefix):
            return False
        if not self.label_selector.empty and not self.label_selector.matches(obj.labels):
            return False
        return not (
            not self.field_selector.empty and not self.field_selector.matches(obj.name, obj.namespace, obj.fields)
        )

    def render(self, ev: Event) -> bytes | None:
        """The line this watcher should see for ``ev`` (selector transitions included), or None."""
        if ev.type == MODIFIED and not self._trivial:
            now, before = self.matches(ev.obj), ev.prev is not None and self.matches(ev.prev)
            if now and before:
                return ev.encoded()
            if now:
                return ev.encoded_as_added()
            if before:
                return ev.encoded_as_deleted()
            return None
        return ev.encoded() if self.matches(ev.obj) else None

    # ---- queue -----------------------------------------------------------------------

    def set_notify(self, cb: Callable[[], None] | None) -> None:
        self._notify = cb

    def offer(self, ev: Event) -> None:
        if self.closed:
            return
        data = self.render(ev)
        if data is not None:
            self.push(data)

    def push(self, data: bytes) -> None:
        if self.closed:
            return
        q = self.queue
        if len(q) >= self.max_queue:
            self._stats.watches_closed_slow += 1
            self.close("slow")
            return
        q.append(data)
        if len(q) == 1 and self._notify is not None:
            self._notify()

    def drain(self) -> list[bytes]:
        if not self.queue:
            return []
        out = list(self.queue)
        self.queue.clear()
        return out

    def has_initial(self) -> bool:
        return self._initial is not None

    def next_initial(self, n: int) -> list[bytes]:
        """Up to ``n`` more initial lines (synthetic ADDED / replayed events); [] when done."""
        if self._initial is None:
            return []
        out: list[bytes] = []
        for data in self._initial:
            out.append(data)
            if len(out) >= n:
                return out
        self._initial = None
        return out

    def close(self, reason: str) -> None:
        if self.closed:
            return
        self.closed = True
        self.close_reason = reason
        self.queue.clear()
        self._initial = None
        if self._notify is not None:
            self._notify()


class ListResult:
    """One page of a list: items at snapshot ``resource_version``."""

    __slots__ = ("continue_token", "items", "remaining", "resource_version", "rt")

    def __init__(
        self,
        rt: ResourceType,
        items: list[StoredObject],
        resource_version: int,
        continue_token: str | None,
        remaining: int | None,
    ) -> None:
        self.rt = rt
        self.items = items
        self.resource_version = resource_version
        self.continue_token = continue_token
        self.remaining = remaining

    def metadata(self) -> dict[str, Any]:
        md: dict[str, Any] = {"resourceVersion": str(self.resource_version)}
        if self.continue_token:
            md["continue"] = self.continue_token
            if self.remaining is not None:
                md["remainingItemCount"] = self.remaining
        return md

    def to_bytes(self) -> bytes:
        head = orjson.dumps({"kind": self.rt.list_kind, "apiVersion": self.rt.api_version, "metadata": self.metadata()})
        # Splice pre-encoded items in; never re-encode stored objects.
        return head[:-1] + b',"items":[' + b",".join(o.raw for o in self.items) + b"]}"

    def to_dict(self) -> dict[str, Any]:
        return orjson.loads(self.to_bytes())


def encode_continue(rv: int, start: Key) -> str:
    tok = orjson.dumps({"v": "meta.k8s.io/v1", "rv": rv, "start": start})
    return base64.urlsafe_b64encode(tok).decode().rstrip("=")


def decode_continue(token: str) -> tuple[int, Key]:
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        d = orjson.loads(raw)
        if d.get("v") != "meta.k8s.io/v1":
            raise ValueError("bad version")
        start = d["start"]
        if not isinstance(start, str) or "\x00" not in start:
            raise ValueError("bad start key")
        return int(d["rv"]), start
    except Exception as e:
        raise errors.bad_request(f"continue key is not valid: {e}") from None


def parse_rv(s: str) -> int:
    try:
        v = int(s)
        if v < 0:
            raise ValueError
        return v
    except ValueError:
        raise errors.bad_request(f"invalid resource version: {s!r}") from None


class _ResourceState:
    __slots__ = (
        "index",
        "index_slot",
        "keys",
        "nwatchers",
        "objects",
        "pending",
        "rt",
        "stats",
        "unindexed",
        "window",
        "window_start",
    )

    def __init__(self, rt: ResourceType, window_size: int, start_rv: int, stats: ResourceStats) -> None:
        self.rt = rt
        self.objects: dict[Key, StoredObject] = {}
        self.keys: list[Key] = []  # sorted; new keys wait in `pending` until a read needs order
        self.pending: set[Key] = set()
        self.window: deque[Event] = deque(maxlen=window_size)
        self.window_start = start_rv  # every event with rv > window_start is retained
        self.unindexed: set[Watcher] = set()
        self.index: dict[tuple[str, str], set[Watcher]] = {}
        self.nwatchers = 0
        self.stats = stats
        self.index_slot = rt.field_labels.index(rt.indexed_field) if rt.indexed_field else -1

    def sorted_keys(self) -> list[Key]:
        if self.pending:
            if len(self.pending) < 64:
                for k in self.pending:
                    insort(self.keys, k)
            else:
                # Timsort merges the existing sorted run with the new batch in ~O(n).
                self.keys.extend(self.pending)
                self.keys.sort()
            self.pending.clear()
        return self.keys

    def add_key(self, key: Key) -> None:
        self.pending.add(key)

    def remove_key(self, key: Key) -> None:
        if key in self.pending:
            self.pending.discard(key)
            return
        i = bisect_left(self.keys, key)
        if i < len(self.keys) and self.keys[i] == key:
            del self.keys[i]

    def ns_range(self, keys: list[Key], ns: str | None) -> tuple[int, int]:
        if ns is None:
            return 0, len(keys)
        # Keys of namespace ns are exactly those in [ns+"\x00", ns+"\x01").
        return bisect_left(keys, ns + "\x00"), bisect_left(keys, ns + "\x01")


class Store:
    """The emulator's state. Public methods taking ``resource`` accept a resource key,
    plural (when unambiguous), kind or short name: ``"pods"``, ``"ippools"``,
    ``"networkpolicies.crd.projectcalico.org"``.

    Methods with a leading underscore-free name and a ``strategy`` keyword implement REST
    semantics: ``strategy=True`` (used by the HTTP shell) applies kube-apiserver's per-type
    create/update strategies (pod status reset on create, status preserved on main-resource
    PUT, CRs need resourceVersion on PUT); ``strategy=False`` (the default for in-process
    callers) stores what it is given, like writing straight to etcd, but still stamps the
    system metadata and emits the same watch events.
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

    def count(self, resource: str) -> int:
        return len(self._state(resource).objects)

    def window_start(self, resource: str) -> int:
        """Oldest RV a watch/continue on ``resource`` may still start from (older -> 410)."""
        return self._state(resource).window_start

    def _make(self, rt: ResourceType, d: dict[str, Any], rv: int) -> StoredObject:
        md = d["metadata"]
        md["resourceVersion"] = str(rv)
        labels = md.get("labels") or _EMPTY_LABELS
        fields = extract_fields(d, rt.field_labels) if rt.field_labels else ()
        return StoredObject(make_key(md.get("namespace", ""), md["name"]), rv, _dumps(d), labels, fields)

    # ---- reads -----------------------------------------------------------------------

    def get_object(self, resource: str | ResourceType, name: str, namespace: str | None = None) -> StoredObject:
        rs = self._state(resource)
        obj = rs.objects.get(make_key((namespace or "") if rs.rt.namespaced else "", name))
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
        snap_rv, start = self._list_snapshot(rs, resource_version, resource_version_match, limit, continue_)
        try:
            overrides = self._overrides(rs, snap_rv)
        except ApiError:
            rs.stats.list_expired += 1
            if continue_:
                # Like etcd3's store: tell the client how to continue inconsistently.
                assert start is not None
                raise errors.expired(errors.CONTINUE_EXPIRED_MSG, {"continue": encode_continue(-1, start)}) from None
            raise
        return self._page(rs, snap_rv, start, namespace, lsel, fsel, limit, overrides)

    def list_objects(
        self, resource: str, namespace: str | None = None, label_selector: str | None = None
    ) -> builtins.list[dict[str, Any]]:
        """Convenience: every current object (decoded), optionally filtered."""
        return [o.to_dict() for o in self.list(resource, namespace, label_selector=label_selector).items]

    def _lsel(self, sel: str | LabelSelector | None) -> LabelSelector:
        return sel if isinstance(sel, LabelSelector) else parse_label_selector(sel)

    def _fsel(self, rt: ResourceType, sel: str | FieldSelector | None) -> FieldSelector:
        return sel if isinstance(sel, FieldSelector) else parse_field_selector(sel, rt.field_labels, rt.namespaced)

    def _list_snapshot(
        self, rs: _ResourceState, rv_s: str | None, match: str | None, limit: int | None, continue_: str | None
    ) -> tuple[int, Key | None]:
        current = self._rv
        if continue_:
            if match:
                raise errors.invalid(
                    None,
                    "",
                    "resourceVersionMatch",
                    "Forbidden: resourceVersionMatch is forbidden when continue is provided",
                )
            if rv_s not in (None, "", "0"):
                raise errors.bad_request("specifying resource version is not allowed when using continue")
            rv, start = decode_continue(continue_)
            return (current if rv <= 0 else rv), start  # rv -1: the "inconsistent" continuation
        if match and not rv_s:
            raise errors.invalid(
                None,
                "",
                "resourceVersionMatch",
                "Forbidden: resourceVersionMatch is forbidden unless resourceVersion is provided",
            )
        if match not in (None, "", "NotOlderThan", "Exact"):
            raise errors.invalid(
                None,
                "",
                "resourceVersionMatch",
                f'Unsupported value: "{match}": supported values: "Exact", "NotOlderThan"',
            )
        if not rv_s:
            return current, None  # "Most Recent": a consistent read at the current revision
        rv = parse_rv(rv_s)
        if match == "Exact" or (not match and limit and rv != 0):
            # Exact (explicit, or legacy "RV + limit"): the state at exactly rv.
            if rv == 0:
                raise errors.invalid(
                    None,
                    "",
                    "resourceVersionMatch",
                    'Forbidden: resourceVersionMatch "exact" is forbidden for resourceVersion "0"',
                )
            if rv > current:
                raise TooLargeResourceVersion(rv, current)
            if rv < rs.window_start:
                raise errors.too_old_rv(rv, rs.window_start)
            return rv, None
        # "0" = Any, else NotOlderThan: serving the newest state satisfies both.
        if rv > current:
            raise TooLargeResourceVersion(rv, current)
        return current, None

    def _overrides(self, rs: _ResourceState, snap_rv: int) -> dict[Key, StoredObject | None]:
        """State at ``snap_rv`` for keys changed since then (None = did not exist)."""
        if snap_rv < rs.window_start:
            raise errors.too_old_rv(snap_rv, rs.window_start)
        ov: dict[Key, StoredObject | None] = {}
        for ev in reversed(rs.window):
            if ev.rv <= snap_rv:
                break
            # Newest-to-oldest, so the last write per key is the earliest event's prev.
            ov[ev.obj.key] = ev.prev
        return ov

    def _page(
        self,
        rs: _ResourceState,
        snap_rv: int,
        start: Key | None,
        ns: str | None,
        lsel: LabelSelector,
        fsel: FieldSelector,
        limit: int | None,
        overrides: dict[Key, StoredObject | None],
    ) -> ListResult:
        keys = rs.sorted_keys()
        objects = rs.objects
        lo, hi = rs.ns_range(keys, ns)
        if start is not None:
            lo = max(lo, bisect_right(keys, start, lo, hi))
        # Keys deleted since the snapshot are not in `keys` but existed at snap_rv.
        prefix = "" if ns is None else ns + "\x00"
        extra = sorted(
            k for k in overrides if k not in objects and k.startswith(prefix) and (start is None or k > start)
        )
        it: Iterator[Key] = map(keys.__getitem__, range(lo, hi))
        if extra:
            it = heapq.merge(it, extra)
        filtered = not (lsel.empty and fsel.empty)
        items: builtins.list[StoredObject] = []
        more = False
        for k in it:
            obj = overrides[k] if k in overrides else objects[k]
            if obj is None:
                continue
            if limit is not None and len(items) >= limit:
                more = True
                break
            if filtered and not (
                (lsel.empty or lsel.matches(obj.labels))
                and (fsel.empty or fsel.matches(obj.name, obj.namespace, obj.fields))
            ):
                continue
            items.append(obj)
        token = remaining = None
        if more:
            last = items[-1].key
            token = encode_continue(snap_rv, last)
            if not filtered:
                # kube reports remainingItemCount only for unfiltered lists.
                remaining = hi - bisect_right(keys, last, lo, hi)
                for k, o in overrides.items():
                    if k > last and k.startswith(prefix):
                        remaining += (o is not None) - (k in objects)
        rs.stats.list_requests += 1
        rs.stats.list_items_sent += len(items)
        return ListResult(rs.rt, items, snap_rv, token, remaining)

    # ---- writes ----------------------------------------------------------------------

    def _commit(self, rs: _ResourceState, etype: str, obj: StoredObject, prev: StoredObject | None) -> Event:
        key = obj.key
        if etype == DELETED:
            del rs.objects[key]
            rs.remove_key(key)
        else:
            if prev is None:
                rs.add_key(key)
            rs.objects[key] = obj
        ev = Event(etype, obj.rv, obj, prev)
        win = rs.window
        if win.maxlen == 0:
            rs.window_start = ev.rv
        else:
            if len(win) == win.maxlen:
                rs.window_start = win[0].rv  # about to be evicted: history before it is gone
            win.append(ev)
        rs.stats.events_generated += 1
        if rs.nwatchers:
            self._dispatch(rs, ev)
        for cb in self._listeners:
            cb(ev.rv)
        return ev

    def _dispatch(self, rs: _ResourceState, ev: Event) -> None:
        for w in rs.unindexed:
            w.offer(ev)
        if not rs.index:
            return
        index = rs.index
        ns = ev.obj.key.partition("\x00")[0]
        if ns:
            ws = index.get(("ns", ns))
            if ws:
                for w in ws:
                    w.offer(ev)
        slot = rs.index_slot
        if slot >= 0:
            new_v = ev.obj.fields[slot] or ""
            ws = index.get(("f", new_v))
            if ws:
                for w in ws:
                    w.offer(ev)
            if ev.prev is not None:
                old_v = ev.prev.fields[slot] or ""
                if old_v != new_v:
                    ws = index.get(("f", old_v))
                    if ws:
                        for w in ws:
                            w.offer(ev)

    def _next_rv(self) -> int:
        self._rv += 1
        return self._rv

    def _prepare_new(
        self, rt: ResourceType, obj: Mapping[str, Any], namespace: str | None, strategy: bool
    ) -> dict[str, Any]:
        if type(obj) is not dict and not isinstance(obj, Mapping):  # ABC check is slow; dicts skip it
            raise errors.bad_request("the body of the request must be a JSON object")
        if obj.get("kind") not in (None, "", rt.kind):
            raise errors.bad_request(
                f"the kind in the data ({obj.get('kind')}) does not match the expected kind ({rt.kind})"
            )
        if obj.get("apiVersion") not in (None, "", rt.api_version):
            raise errors.bad_request(
                f"the API version in the data ({obj.get('apiVersion')}) does not match the expected API version ({rt.api_version})"
            )
        md = dict(obj.get("metadata") or {})
        d: dict[str, Any] = {"kind": rt.kind, "apiVersion": rt.api_version, "metadata": md}
        for k, v in obj.items():
            if k not in d:
                d[k] = v
        if rt.namespaced:
            body_ns = md.get("namespace")
            if namespace and body_ns and body_ns != namespace:
                raise errors.bad_request(
                    "the namespace of the provided object does not match the namespace sent on the request"
                )
            ns = namespace or body_ns
            if not ns:
                raise errors.invalid(rt, md.get("name", ""), "metadata.namespace", "Required value")
            md["namespace"] = ns
        else:
            md.pop("namespace", None)
        return d

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
        d = self._prepare_new(rt, obj, namespace, strategy)
        md = d["metadata"]
        name = md.get("name")
        if not name and md.get("generateName"):
            name = md["generateName"] + "".join(random.choices(_GEN_CHARS, k=5))
            md["name"] = name
        if not name:
            raise errors.invalid(rt, "", "metadata.name", "Required value: name or generateName is required")
        if len(name) > 253 or not _NAME_RE.match(name):
            raise errors.invalid(
                rt,
                name,
                "metadata.name",
                f"Invalid value: \"{name}\": a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.'",
            )
        ns = md.get("namespace", "")
        if strategy and md.get("resourceVersion"):
            raise errors.ApiError(500, "InternalError", "resourceVersion should not be set on objects to be created")
        key = make_key(ns, name)
        if key in rs.objects:
            raise errors.already_exists(rt, name)
        if ns and self.require_namespace and make_key("", ns) not in self._states["namespaces"].objects:
            raise errors.namespace_not_found(ns)
        md["uid"] = str(uuid.uuid4())
        md["creationTimestamp"] = _now()
        md["generation"] = 1
        for f in ("deletionTimestamp", "deletionGracePeriodSeconds", "managedFields"):
            md.pop(f, None)
        self._apply_create_strategy(rt, d, strategy)
        stored = self._make(rt, d, self._next_rv())
        self._commit(rs, ADDED, stored, None)
        rs.stats.creates += 1
        return stored

    def _apply_create_strategy(self, rt: ResourceType, d: dict[str, Any], strategy: bool) -> None:
        if rt.key == "namespaces":
            d.setdefault("spec", {}).setdefault("finalizers", ["kubernetes"])
            d.setdefault("status", {}).setdefault("phase", "Active")
        elif strategy and rt.key == "pods":
            d["status"] = {"phase": "Pending"}  # PodStrategy.PrepareForCreate resets status

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
        d = self._prepare_new(rt, obj, namespace, strategy)
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
        cur = rs.objects.get(make_key(md.get("namespace", ""), name))
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
        old_md = old["metadata"]
        md = d["metadata"]
        if md.get("uid") and md["uid"] != old_md.get("uid"):
            raise errors.conflict(
                rt,
                cur.name,
                f"Precondition failed: UID in precondition: {md['uid']}, UID in object meta: {old_md.get('uid')}",
            )
        if subresource is not None:
            if subresource != "status" or not rt.status_subresource:
                raise errors.path_not_found()
            # /status: only status changes; everything else stays as stored.
            new = dict(old)
            if "status" in d:
                new["status"] = d["status"]
            else:
                new.pop("status", None)
        else:
            new = d
            if strategy and rt.status_subresource:
                # Main-resource PUT/PATCH ignores status (the status strategy owns it).
                if "status" in old:
                    new["status"] = old["status"]
                else:
                    new.pop("status", None)
            # System fields are not writable by clients.
            for f in ("uid", "creationTimestamp", "deletionTimestamp", "deletionGracePeriodSeconds", "generation"):
                if f in old_md:
                    md[f] = old_md[f]
                else:
                    md.pop(f, None)
        new["metadata"]["resourceVersion"] = old_md.get("resourceVersion")
        if new == old:
            return cur  # no-op update: no new revision, no event (as kube-apiserver)
        spec_keys = ("metadata", "status") if rt.status_subresource else ("metadata",)
        if any(new.get(k) != old.get(k) for k in set(new) | set(old) if k not in spec_keys):
            new["metadata"]["generation"] = int(old_md.get("generation", 1)) + 1
        nmd = new["metadata"]
        if nmd.get("deletionTimestamp") and not nmd.get("finalizers"):
            # Last finalizer removed from an object being deleted: it goes away now.
            return self._delete_now(rs, cur, new)
        stored = self._make(rt, new, self._next_rv())
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
        """Apply a merge / strategic-merge (as merge) / JSON patch."""
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
        new = apply_patch(cur.to_dict(), patch, content_type)
        md = new.get("metadata")
        if not isinstance(md, dict):
            raise errors.invalid(rt, name, "metadata", "Required value")
        if md.get("name") != name or (rt.namespaced and md.get("namespace") != cur.namespace):
            raise errors.bad_request("metadata.name and metadata.namespace are immutable")
        # A resourceVersion in the patch is an optimistic-concurrency precondition.
        if str(md.get("resourceVersion", "")) != str(cur.rv):
            raise errors.conflict(rt, name, errors.STALE_RV)
        d = self._prepare_new(rt, new, cur.namespace or None, strategy)
        stored = self._update_from(rs, cur, d, subresource, strategy)
        rs.stats.patches += 1
        return stored

    def upsert(self, resource: str, obj: Mapping[str, Any], *, namespace: str | None = None) -> dict[str, Any]:
        """Create, or unconditionally replace (ignoring resourceVersion). Load-test helper."""
        rt = self.resource(resource)
        md = obj.get("metadata") or {}
        ns = (namespace or md.get("namespace") or "") if rt.namespaced else ""
        if make_key(ns, md.get("name") or "") in self._states[rt.key].objects:
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
            md["deletionTimestamp"] = _now()
            md["deletionGracePeriodSeconds"] = 0
            stored = self._make(rt, d, self._next_rv())
            self._commit(rs, MODIFIED, stored, cur)
            return stored, False
        return self._delete_now(rs, cur, d), True

    def _delete_now(self, rs: _ResourceState, cur: StoredObject, final: dict[str, Any]) -> StoredObject:
        # The DELETED event carries the last state stamped with the deletion's revision.
        tomb = self._make(rs.rt, final, self._next_rv())
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
        ts = _now()
        for o in objs:
            d = self._prepare_new(rt, o, namespace, False)
            md = d["metadata"]
            key = make_key(md.get("namespace", ""), md.get("name", ""))
            if not md.get("name"):
                raise errors.invalid(rt, "", "metadata.name", "Required value")
            if key in rs.objects:
                raise errors.already_exists(rt, md["name"])
            md["uid"] = str(uuid.uuid4())
            md["creationTimestamp"] = ts
            md["generation"] = 1
            self._apply_create_strategy(rt, d, False)
            stored = self._make(rt, d, self._next_rv())
            rs.objects[key] = stored
            rs.add_key(key)
            n += 1
        rs.stats.creates += n
        rs.window.clear()
        rs.window_start = self._rv
        self.cut_watches(rt.key, reason="reload")
        for cb in self._listeners:
            cb(self._rv)
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
            if namespace is None:
                snapshot = list(rs.objects.values())
            else:
                keys = rs.sorted_keys()
                lo, hi = rs.ns_range(keys, namespace)
                objects = rs.objects
                snapshot = [objects[keys[i]] for i in range(lo, hi)]
            if send_initial_events:
                end_bookmark = self.bookmark_bytes(rt, current, initial_events_end=True)
            start_rv = current
        else:
            rv = parse_rv(resource_version)
            if rv > current:
                raise TooLargeResourceVersion(rv, current)
            if rv < rs.window_start:
                rs.stats.watches_expired += 1
                raise errors.too_old_rv(rv, rs.window_start)
            for ev in reversed(rs.window):
                if ev.rv <= rv:
                    break
                replay.append(ev)
            replay.reverse()
            start_rv = rv
        w = Watcher(rt, namespace, lsel, fsel, max_queue or self.max_watch_queue, rs.stats, start_rv)
        w.set_notify(notify)
        if snapshot or replay or end_bookmark:
            w._initial = self._initial_lines(w, snapshot, replay, end_bookmark)
        self._register(rs, w)
        return w

    @staticmethod
    def _initial_lines(
        w: Watcher, snapshot: builtins.list[StoredObject], replay: builtins.list[Event], end_bookmark: bytes | None
    ) -> Iterator[bytes]:
        for o in snapshot:
            if w.matches(o):
                yield encode_event(ADDED, o.raw)
        for ev in replay:
            data = w.render(ev)
            if data is not None:
                yield data
        if end_bookmark is not None:
            yield end_bookmark

    def _register(self, rs: _ResourceState, w: Watcher) -> None:
        key: tuple[str, str] | None = None
        if rs.index_slot >= 0:
            v = w.field_selector.equality_value(rs.index_slot)
            if v is not None:
                key = ("f", v)
        if key is None and w.namespace is not None:
            key = ("ns", w.namespace)
        w.index_key = key
        if key is None:
            rs.unindexed.add(w)
        else:
            rs.index.setdefault(key, set()).add(w)
        rs.nwatchers += 1
        rs.stats.open_watches += 1
        rs.stats.watches_total += 1

    def unwatch(self, w: Watcher) -> None:
        """Deregister (idempotent). Call when the watch stream ends for any reason."""
        rs = self._states[w.rt.key]
        if w.index_key is None:
            if w not in rs.unindexed:
                return
            rs.unindexed.discard(w)
        else:
            bucket = rs.index.get(w.index_key)
            if not bucket or w not in bucket:
                return
            bucket.discard(w)
            if not bucket:
                del rs.index[w.index_key]
        rs.nwatchers -= 1
        rs.stats.open_watches -= 1
        if not w.closed:
            w.close("stopped")

    def watchers(self, resource: str | None = None) -> builtins.list[Watcher]:
        out: builtins.list[Watcher] = []
        for rs in [self._state(resource)] if resource else self._states.values():
            out.extend(rs.unindexed)
            for b in rs.index.values():
                out.extend(b)
        return out

    def bookmark_bytes(self, rt: ResourceType, rv: int | None = None, initial_events_end: bool = False) -> bytes:
        md: dict[str, Any] = {"resourceVersion": str(self._rv if rv is None else rv)}
        if initial_events_end:
            md["annotations"] = {"k8s.io/initial-events-end": "true"}
        obj = {"kind": rt.kind, "apiVersion": rt.api_version, "metadata": md}
        return encode_event(BOOKMARK, orjson.dumps(obj))

    def push_bookmark(self, w: Watcher) -> None:
        """Queue a BOOKMARK at the current RV behind everything already queued for ``w``
        (all events <= current RV were pushed synchronously, so the promise holds)."""
        w.push(self.bookmark_bytes(w.rt))

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
            for cb in self._listeners:
                cb(self._rv)
        target = self._rv if rv is None else min(rv, self._rv)
        for rs in [self._state(resource)] if resource else self._states.values():
            while rs.window and rs.window[0].rv <= target:
                rs.window.popleft()
            rs.window_start = max(rs.window_start, target)
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
    "decode_continue",
    "encode_continue",
    "encode_event",
]
