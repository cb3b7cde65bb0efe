"""Counters the emulator keeps per resource, readable in-process and at GET /emulator/stats.

Design note
-----------
Plain integer attributes on a slotted object per resource: incrementing them is the
cheapest thing Python can do, which matters because ``events_sent``/``bytes_sent`` are
bumped on every watch write for thousands of watchers. ``snapshot()`` builds the JSON view
(per resource plus totals) only when someone asks.
"""

from __future__ import annotations

from typing import Any

_FIELDS = (
    "open_watches",  # watch streams currently open
    "watches_total",  # watch streams ever started
    "watches_closed_slow",  # closed because the watcher's queue overflowed
    "watches_cut",  # closed by cut_watches()/shutdown
    "watches_expired",  # watch requests answered with a 410 ERROR event
    "watches_failed",  # closed because serving them raised (the others carry on)
    "events_sent",  # ADDED/MODIFIED/DELETED/ERROR events written to sockets
    "bookmarks_sent",
    "bytes_sent",  # watch stream bytes written (events + bookmarks)
    "list_requests",
    "list_items_sent",
    "list_bytes_sent",
    "list_expired",  # lists/continues answered 410
    "get_requests",
    "creates",
    "updates",
    "patches",
    "deletes",
    "events_generated",  # store-level events (independent of watcher count)
)


class ResourceStats:
    """Counters for one resource (see the field list above for meanings)."""

    __slots__ = _FIELDS
    open_watches: int
    watches_total: int
    watches_closed_slow: int
    watches_cut: int
    watches_expired: int
    watches_failed: int
    events_sent: int
    bookmarks_sent: int
    bytes_sent: int
    list_requests: int
    list_items_sent: int
    list_bytes_sent: int
    list_expired: int
    get_requests: int
    creates: int
    updates: int
    patches: int
    deletes: int
    events_generated: int

    def __init__(self) -> None:
        for f in _FIELDS:
            setattr(self, f, 0)

    def as_dict(self) -> dict[str, int]:
        return {f: getattr(self, f) for f in _FIELDS}


class Stats:
    """Per-resource counters, keyed by resource key ("pods", "ippools.crd.projectcalico.org")."""

    def __init__(self) -> None:
        self.resources: dict[str, ResourceStats] = {}
        self.requests_total = 0
        self.unauthorized = 0
        self.forbidden = 0
        self.internal_errors = 0  # requests answered 500: a bug in the emulator, logged with a traceback

    def resource(self, key: str) -> ResourceStats:
        rs = self.resources.get(key)
        if rs is None:
            rs = self.resources[key] = ResourceStats()
        return rs

    def total(self, field: str) -> int:
        return sum(getattr(r, field) for r in self.resources.values())

    def snapshot(self) -> dict[str, Any]:
        return {
            "requests_total": self.requests_total,
            "unauthorized": self.unauthorized,
            "forbidden": self.forbidden,
            "internal_errors": self.internal_errors,
            "totals": {f: self.total(f) for f in _FIELDS},
            "resources": {k: v.as_dict() for k, v in sorted(self.resources.items())},
        }
