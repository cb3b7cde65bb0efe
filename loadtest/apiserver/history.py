"""The retained window of one resource: recent events, each remembering the object before it.

Design note
-----------
kube-apiserver keeps two histories, etcd's MVCC revisions and the watch cache's ring of
events. The emulator keeps one: a deque of the last ``window_size`` :class:`Event`\\ s,
each with ``prev``, the object as it was before the change. That one structure does
three jobs:

- *replay*: a watch from resourceVersion X gets the retained events newer than X;
- *MVCC*: a list page at snapshot X is the current state with every retained change
  newer than X undone (the ``prev`` of the earliest such event per key);
- *expiry*: anything older than ``start`` is gone, so a watch or a continue token from
  before it gets 410 Expired, which is what forces clients to relist.

``start`` is the oldest revision a reader may still start from: every event with
``rv > start`` is retained. Evicting the oldest event moves it forward; ``compact``
moves it to a target, like etcd's compaction.
"""

from __future__ import annotations

from collections import deque

from . import errors
from .objects import Event, Key, StoredObject


class History:
    __slots__ = ("start", "window")

    def __init__(self, window_size: int, start_rv: int) -> None:
        self.window: deque[Event] = deque(maxlen=window_size)
        self.start = start_rv

    def record(self, ev: Event) -> None:
        win = self.window
        if win.maxlen == 0:
            self.start = ev.rv
            return
        if len(win) == win.maxlen:
            self.start = win[0].rv  # about to be evicted: history before it is gone
        win.append(ev)

    def check(self, rv: int) -> None:
        """410 Expired if a reader cannot start from ``rv`` any more."""
        if rv < self.start:
            raise errors.too_old_rv(rv, self.start)

    def since(self, rv: int) -> list[Event]:
        """The retained events newer than ``rv``, oldest first (caller checked ``rv``)."""
        out: list[Event] = []
        for ev in reversed(self.window):
            if ev.rv <= rv:
                break
            out.append(ev)
        out.reverse()
        return out

    def state_at(self, snap_rv: int) -> dict[Key, StoredObject | None]:
        """State at ``snap_rv`` of every key changed since then (None = did not exist)."""
        self.check(snap_rv)
        ov: dict[Key, StoredObject | None] = {}
        for ev in reversed(self.window):
            if ev.rv <= snap_rv:
                break
            # Newest to oldest, so the last write per key is the earliest event's prev.
            ov[ev.obj.key] = ev.prev
        return ov

    def compact(self, target: int) -> None:
        while self.window and self.window[0].rv <= target:
            self.window.popleft()
        self.start = max(self.start, target)

    def reset(self, rv: int) -> None:
        """Forget everything: only revision ``rv`` onwards can be read (an etcd restore)."""
        self.window.clear()
        self.start = rv


__all__ = ["History"]
