"""An agent's view of one cache: key -> KV, its state summary, and the three ways it is brought up to date.

Design note
-----------
The view changes in three ways, and each must tell its consumer exactly what changed, no more:
- *deltas* (UPDATES): applied in order, reported as they come (an unchanged value is not reported);
- a *full snapshot* after a reconnect (docs/protocol.md 12): the old view is kept while the chunks
  stream in, a key is reported only if its value differs, and at the FINAL chunk every key the snapshot
  did not carry is deleted and reported as such;
- a *reconcile* (12.2): the client asks for the leaves whose digests differ; breadcrumbs arrive first,
  then the leaves' contents as of the last of them, which replace whatever the view holds in those
  leaves. Between the two, a breadcrumb can delete a key the contents then bring back: so nothing is
  reported until the FINAL chunk, and then only the net difference from the view as it was before the
  reconcile began (the old value of every key touched is kept until then).

The summary (protocol.summary) is kept current with every change, so it is ready whenever the
connection drops. It costs two or three BLAKE2b hashes per changed key; a view that is only used to
verify a stream can be created without one (`summarize=False`).

Pure: no I/O. `SyncClient` owns one view and feeds it validated messages.
"""

from __future__ import annotations

from .errors import ProtocolError
from .messages import KV
from .summary import StateSummary, leaf_of


class View:
    """key -> KV, plus its summary; reports what changed as lists of KVs (value None: deleted)."""

    __slots__ = ("_covered", "_original", "_seen", "state", "summary")

    def __init__(self, summarize: bool = True) -> None:
        self.state: dict[str, KV] = {}
        self.summary: StateSummary | None = StateSummary() if summarize else None
        self._seen: set[str] | None = None  # keys of the full snapshot being received (a resync)
        self._covered: set[int] | None = None  # leaves the reconcile's contents replace
        self._original: dict[str, KV | None] = {}  # reconcile: each touched key's value before it began

    def __len__(self) -> int:
        return len(self.state)

    def replace(self, kvs: dict[str, KV]) -> None:
        """Hold `kvs` (deleted entries dropped) instead of the current contents, summary recomputed."""
        self.state = {k: kv for k, kv in kvs.items() if kv.value is not None}
        if self.summary is not None:
            self.summary = StateSummary.of((k, kv.value) for k, kv in self.state.items() if kv.value is not None)
        self.abandon()

    def _set(self, kv: KV) -> None:
        old = self.state.get(kv.key)
        self.state[kv.key] = kv
        if self.summary is not None:
            self.summary.change(kv.key, old.value if old is not None else None, kv.value)

    def _delete(self, key: str) -> KV | None:
        old = self.state.pop(key, None)
        if old is not None and self.summary is not None:
            self.summary.change(key, old.value, None)
        return old

    def _remember(self, key: str) -> None:
        if key not in self._original:
            self._original[key] = self.state.get(key)

    # -- deltas ----------------------------------------------------------------------------------------
    def apply_updates(self, kvs: list[KV]) -> list[KV]:
        """Apply one UPDATES frame's KVs in order; returns what to report (nothing during a reconcile)."""
        reconciling = self._covered is not None
        changed: list[KV] = []
        for kv in kvs:
            if reconciling:
                self._remember(kv.key)
            if kv.value is None:
                if self._delete(kv.key) is None:
                    continue
            else:
                old = self.state.get(kv.key)
                if old is not None and old.value == kv.value:
                    self.state[kv.key] = kv  # the newer revision; the value (and the summary) is unchanged
                    continue
                self._set(kv)
            changed.append(kv)
        return [] if reconciling else changed

    # -- a full snapshot -------------------------------------------------------------------------------
    def begin_snapshot(self) -> None:
        """Chunk 0 of a full snapshot: keep the old view and diff against it (first sync: all is new)."""
        self._seen = set() if self.state else None

    def snapshot_chunk(self, kvs: list[KV]) -> list[KV]:
        state = self.state
        seen = self._seen
        changed: list[KV] = []
        for kv in kvs:
            if kv.value is None:
                continue  # never sent by a correct server; "absent" (the final chunk deletes it if held)
            if seen is not None:
                seen.add(kv.key)
                old = state.get(kv.key)
                if old is not None and old.value == kv.value:
                    continue
            self._set(kv)
            changed.append(kv)
        return changed

    def end_snapshot(self) -> list[KV]:
        """The FINAL chunk: delete (and report) every key the snapshot did not carry."""
        seen, self._seen = self._seen, None
        if seen is None:
            return []
        gone = [k for k in self.state if k not in seen]
        for k in gone:
            self._delete(k)
        return [KV(k, None, "") for k in gone]

    # -- a reconcile -----------------------------------------------------------------------------------
    def begin_reconcile(self, leaves: list[int]) -> None:
        """The client asked for `leaves`: what follows replaces their contents (docs/protocol.md 12.2)."""
        self._covered = set(leaves)
        self._original = {}
        self._seen = set()

    def partial_chunk(self, kvs: list[KV]) -> None:
        covered, seen = self._covered, self._seen
        if covered is None or seen is None:
            raise ProtocolError("a partial snapshot chunk outside a reconcile")
        for kv in kvs:
            if kv.value is None:
                continue
            if leaf_of(kv.key) not in covered:
                raise ProtocolError(f"the partial snapshot carries {kv.key!r}, outside the leaves we asked for")
            seen.add(kv.key)
            self._remember(kv.key)
            old = self.state.get(kv.key)
            if old is not None and old.value == kv.value:
                self.state[kv.key] = kv
                continue
            self._set(kv)

    def end_reconcile(self) -> list[KV]:
        """The FINAL partial chunk: drop what the covered leaves held and the server did not send; returns
        the net difference from the view before the reconcile."""
        covered, seen = self._covered, self._seen
        if covered is None or seen is None:
            raise ProtocolError("the end of a reconcile that did not begin")
        if covered:
            for key in [k for k in self.state if k not in seen and leaf_of(k) in covered]:
                self._remember(key)
                self._delete(key)
        report: list[KV] = []
        for key, before in self._original.items():
            now = self.state.get(key)
            if now is None:
                if before is not None:
                    report.append(KV(key, None, ""))
            elif before is None or before.value != now.value:
                report.append(now)
        self._covered, self._seen, self._original = None, None, {}
        return report

    def abandon(self) -> None:
        """The connection ended mid-snapshot or mid-reconcile: forget the bookkeeping, keep the view.

        The keys stored so far hold newer values than before; the next complete snapshot or reconcile
        settles them (and the summary, kept exact throughout, says so)."""
        self._seen, self._covered, self._original = None, None, {}
