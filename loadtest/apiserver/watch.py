"""Watchers: bounded queues of encoded event lines, and the index that fans events out to them.

Design note
-----------
*A watcher is a queue, not a task.* :class:`Watcher` holds already-encoded lines; the
HTTP shell drains it onto the socket when ``notify`` says it has work. Committing an
event appends the *same* ``bytes`` object to every interested queue, so a fan-out to
thousands of watchers costs one encode plus an append each (see :mod:`.objects`).

*Bounded, like kube.* A watcher whose queue reaches ``max_queue`` is closed, as
kube-apiserver terminates a watcher it cannot keep fed; the client re-watches from its
last resourceVersion or relists on 410.

*Indexed fan-out.* :class:`WatcherSet` files a watcher under the one key that decides
most of its matches: the value of the resource's indexed field (a pod's
``spec.nodeName``, as the watch cache's node index does) when its field selector pins
it, else its namespace. An event then visits only the unindexed watchers plus the
buckets of its namespace and of its old and new indexed value, instead of every watcher.

*One bad watcher never hurts the others.* Rendering an event for a watcher runs user
selectors against stored objects; if it raises, that watcher alone is closed with reason
``"error"`` (counted as ``watches_failed``, logged at most once a second), and the
fan-out carries on. The same holds for the initial events of a watch.

*Initial events are lazy.* The synthetic ADDEDs of a watch from "0" and the replay of a
watch from N are a generator, so a watch over 150k pods does not build 150k lines before
the first one is written.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable, Iterator

import orjson

from .objects import ADDED, BOOKMARK, MODIFIED, Event, StoredObject, encode_event
from .resources import ResourceType
from .selectors import FieldSelector, LabelSelector
from .stats import ResourceStats

log = logging.getLogger("loadtest.apiserver.watch")

INITIAL_EVENTS_END = "k8s.io/initial-events-end"


def bookmark_bytes(rt: ResourceType, rv: int, initial_events_end: bool = False) -> bytes:
    """A BOOKMARK line at ``rv``; its object holds only kind, apiVersion and the RV."""
    md: dict[str, object] = {"resourceVersion": str(rv)}
    if initial_events_end:
        md["annotations"] = {INITIAL_EVENTS_END: "true"}
    return encode_event(BOOKMARK, orjson.dumps({"kind": rt.kind, "apiVersion": rt.api_version, "metadata": md}))


class _ErrorLog:
    """At most one log line per second for watcher failures, with the count in between."""

    def __init__(self, interval: float = 1.0) -> None:
        self.interval = interval
        self._next = 0.0
        self._suppressed = 0

    def __call__(self, w: Watcher, exc: BaseException) -> None:
        now = time.monotonic()
        if now < self._next:
            self._suppressed += 1
            return
        self._next = now + self.interval
        more = f" ({self._suppressed} more since the last report)" if self._suppressed else ""
        self._suppressed = 0
        log.error("closing a %s watch: rendering an event failed: %r%s", w.rt.key, exc, more)


_log_failure = _ErrorLog()


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
        return self.field_selector.empty or self.field_selector.matches(obj.name, obj.namespace, obj.fields)

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
        """Queue what this watcher should see of ``ev``; never raises (see the design note)."""
        if self.closed:
            return
        try:
            data = self.render(ev)
        except Exception as exc:
            self.fail(exc)
            return
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

    # ---- initial events --------------------------------------------------------------

    def set_initial(self, snapshot: list[StoredObject], replay: list[Event], end_bookmark: bytes | None) -> None:
        """Lines to send before live events: ADDED for ``snapshot``, then ``replay``, then the bookmark."""
        if snapshot or replay or end_bookmark:
            self._initial = self._initial_lines(snapshot, replay, end_bookmark)

    def _initial_lines(
        self, snapshot: list[StoredObject], replay: list[Event], end_bookmark: bytes | None
    ) -> Iterator[bytes]:
        for o in snapshot:
            if self.matches(o):
                yield encode_event(ADDED, o.raw)
        for ev in replay:
            data = self.render(ev)
            if data is not None:
                yield data
        if end_bookmark is not None:
            yield end_bookmark

    def has_initial(self) -> bool:
        return self._initial is not None

    def next_initial(self, n: int) -> list[bytes]:
        """Up to ``n`` more initial lines (synthetic ADDED / replayed events); [] when done."""
        if self._initial is None:
            return []
        out: list[bytes] = []
        try:
            for data in self._initial:
                out.append(data)
                if len(out) >= n:
                    return out
        except Exception as exc:
            self.fail(exc)
            return []
        self._initial = None
        return out

    # ---- closing ---------------------------------------------------------------------

    def fail(self, exc: BaseException) -> None:
        """Close this watcher because serving it raised; the others are not affected."""
        self._stats.watches_failed += 1
        _log_failure(self, exc)
        self.close("error")

    def close(self, reason: str) -> None:
        if self.closed:
            return
        self.closed = True
        self.close_reason = reason
        self.queue.clear()
        self._initial = None
        if self._notify is not None:
            self._notify()


class WatcherSet:
    """The open watchers of one resource, indexed for fan-out (see the design note)."""

    __slots__ = ("_index", "_slot", "_unindexed", "count")

    def __init__(self, rt: ResourceType) -> None:
        self._unindexed: set[Watcher] = set()
        self._index: dict[tuple[str, str], set[Watcher]] = {}
        self._slot = rt.field_labels.index(rt.indexed_field) if rt.indexed_field else -1
        self.count = 0

    def add(self, w: Watcher) -> None:
        key: tuple[str, str] | None = None
        if self._slot >= 0:
            v = w.field_selector.equality_value(self._slot)
            if v is not None:
                key = ("f", v)
        if key is None and w.namespace is not None:
            key = ("ns", w.namespace)
        w.index_key = key
        if key is None:
            self._unindexed.add(w)
        else:
            self._index.setdefault(key, set()).add(w)
        self.count += 1

    def discard(self, w: Watcher) -> bool:
        """Remove ``w``; False if it was not here (removal is idempotent)."""
        if w.index_key is None:
            if w not in self._unindexed:
                return False
            self._unindexed.discard(w)
        else:
            bucket = self._index.get(w.index_key)
            if not bucket or w not in bucket:
                return False
            bucket.discard(w)
            if not bucket:
                del self._index[w.index_key]
        self.count -= 1
        return True

    def __iter__(self) -> Iterator[Watcher]:
        yield from list(self._unindexed)
        for bucket in list(self._index.values()):
            yield from list(bucket)

    def dispatch(self, ev: Event) -> None:
        """Offer ``ev`` to every watcher that could match it. Never raises."""
        for w in self._unindexed:
            w.offer(ev)
        index = self._index
        if not index:
            return
        ns = ev.obj.key.partition("\x00")[0]
        if ns:
            ws = index.get(("ns", ns))
            if ws:
                for w in ws:
                    w.offer(ev)
        slot = self._slot
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


__all__ = ["INITIAL_EVENTS_END", "Watcher", "WatcherSet", "bookmark_bytes"]
