"""The snapshot cache: current state plus a chain of breadcrumbs. Pure: no sockets, no event loop.

Design note
-----------
A cache holds the current key -> (key, value, revision) map and a singly linked list of
*breadcrumbs*. Each breadcrumb is one batch of at most `max_batch` changes (or one sync-status
change), with a sequence number, a creation time, and its wire bytes, encoded once when it is created.
The cache keeps a reference only to the newest breadcrumb (`head`); each breadcrumb points forward to
the next.

A client is nothing more than a pointer to the last breadcrumb it was sent. Catching up means walking
`.next` to the head and writing the already-encoded bytes. So:
- a caught-up client costs one reference, never a copy of the state or a queue of its own;
- the bytes of an update exist once, however many clients receive them;
- a breadcrumb is freed by reference counting the moment the slowest client (or snapshot) holding an
  earlier point moves past it: there is no cleanup pass and no per-client channel to drain.
The obvious alternative, a queue per client fed by a broadcaster, costs O(clients) work and memory
per update and makes "drop the slow ones" a race between queues; the chain makes both O(1) per client.

Snapshots are taken from the live map when a client needs one: the cache copies the map's values into
a list (pointer copies only; the value bytes are shared) and encodes chunks of `snapshot_chunk` KVs
lazily, as the first client that needs each chunk asks for it. Later clients reuse the same encoded
chunks as long as no newer breadcrumb exists or the snapshot is younger than `snapshot_reuse_ns`;
the snapshot pins its breadcrumb, so every reuser can continue from exactly where it stands.

Identical values are dropped here (a changed revision alone is not a change) and so are deletions of
keys we do not hold: that is what stops a pod-status heartbeat fanning out to every node.

Resume. The cache also keeps the breadcrumbs of the last `resume_window_ns` in a deque (a bounded
cost: churn rate x window), so an agent that reconnects to the same cache incarnation (`epoch`, a
random id: sequence numbers mean nothing across restarts) can continue right after the last seq it
saw instead of receiving the whole snapshot again, which is what makes a brief disconnect cheap for
both sides.

Reconcile. An agent from another replica or epoch offers the summary of its view instead
(protocol.summary). The cache keeps its own summary current in `apply` (one or two BLAKE2b hashes per
*published* change; dropped duplicates cost nothing), indexed by leaf, so `reconcile_digests` answers
with the leaf digests under the tops that differ and `partial_snapshot` lists exactly the keys of the
leaves the agent then asks for. A partial snapshot belongs to one agent and is not shared or cached.
"""

from __future__ import annotations

import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

from protocol import SyncStatus
from protocol.codec import Compressor, encode_snapshot_chunk, encode_sync_status, encode_updates
from protocol.summary import IndexedSummary

#: (key, value bytes or None for a delete, revision)
Update = tuple[str, bytes | None, str]

DEFAULT_MAX_BATCH = 100
DEFAULT_SNAPSHOT_CHUNK = 1000
#: Raw KV bytes after which a snapshot chunk ends early (well under clients' 64 MiB frame limit).
DEFAULT_SNAPSHOT_CHUNK_BYTES = 4 << 20
DEFAULT_SNAPSHOT_REUSE_NS = 1_000_000_000
DEFAULT_RESUME_WINDOW_NS = 60_000_000_000


class Breadcrumb:
    """One step of the cache's history; immutable once published except for `next`."""

    __slots__ = ("__weakref__", "count", "created_ns", "next", "prev_seq", "seq", "status", "wire")

    def __init__(self, seq: int, prev_seq: int, created_ns: int, status: SyncStatus, count: int, wire: bytes) -> None:
        self.seq = seq
        self.prev_seq = prev_seq
        self.created_ns = created_ns
        self.status = status
        self.count = count  # KVs carried (0 for a status change)
        self.wire = wire
        self.next: Breadcrumb | None = None

    def __repr__(self) -> str:
        return f"<Breadcrumb seq={self.seq} kvs={self.count} status={self.status.name}>"


@dataclass(slots=True)
class PendingWrite:
    """Wire bytes covering breadcrumbs (first.prev_seq, last.seq], ready for a single write."""

    data: bytes
    last: Breadcrumb
    breadcrumbs: int
    kvs: int
    oldest_created_ns: int


def collect_pending(after: Breadcrumb, max_bytes: int, until: Breadcrumb | None = None) -> PendingWrite | None:
    """Join the wire bytes of breadcrumbs after `after`, stopping once `max_bytes` is reached (or at
    `until`, which is included).

    Always includes at least one breadcrumb if there is any, so progress never stalls on a large one.
    """
    bc = after.next
    if bc is None or after is until:
        return None
    first = bc
    parts = [bc.wire]
    size = len(bc.wire)
    kvs = bc.count
    last = bc
    while size < max_bytes and last is not until and (bc := last.next) is not None:
        parts.append(bc.wire)
        size += len(bc.wire)
        kvs += bc.count
        last = bc
    data = parts[0] if len(parts) == 1 else b"".join(parts)
    return PendingWrite(data, last, len(parts), kvs, first.created_ns)


class Snapshot:
    """The cache's state as of one breadcrumb, encoded lazily into shared chunk frames.

    A chunk holds up to `chunk_size` KVs and stops early once it passes `chunk_bytes` of raw KV data,
    so a cache of unusually large values can never produce a frame a client must refuse.
    """

    __slots__ = (
        "_chunk_bytes",
        "_chunk_size",
        "_compressor",
        "_next",
        "_on_chunk",
        "_values",
        "breadcrumb",
        "built_ns",
        "chunks",
        "compressed",
        "kv_count",
        "partial",
        "raw_bytes",
        "wire_bytes",
    )

    def __init__(
        self,
        breadcrumb: Breadcrumb,
        values: list[Update],
        built_ns: int,
        chunk_size: int,
        compressor: Compressor | None,
        on_chunk: Callable[[int, int], None] | None = None,
        chunk_bytes: int = DEFAULT_SNAPSHOT_CHUNK_BYTES,
        partial: bool = False,
    ) -> None:
        self.breadcrumb = breadcrumb
        self.partial = partial  # a reconcile's: only the leaves one agent asked for
        self.built_ns = built_ns
        self.compressed = compressor is not None
        self.kv_count = len(values)
        self.chunks: list[bytes] = []
        self.raw_bytes = 0
        self.wire_bytes = 0
        self._values: list[Update] | None = values
        self._next = 0  # index of the first value not yet encoded
        self._chunk_size = chunk_size
        self._chunk_bytes = chunk_bytes
        self._compressor = compressor
        self._on_chunk = on_chunk

    @property
    def seq(self) -> int:
        return self.breadcrumb.seq

    @property
    def complete(self) -> bool:
        """True once the final chunk is encoded."""
        return self._values is None

    def chunk(self, index: int) -> bytes | None:
        """Chunk `index`, encoding it (and any before it) on first request; None past the end.

        An empty cache still has one (empty, final) chunk, so the client knows the snapshot ended.
        """
        while len(self.chunks) <= index and self._values is not None:
            self._encode_next()
        return self.chunks[index] if index < len(self.chunks) else None

    def frames(self) -> Iterator[bytes]:
        """Every chunk frame in order (encoding as needed)."""
        i = 0
        while (data := self.chunk(i)) is not None:
            yield data
            i += 1

    def _encode_next(self) -> None:
        values = self._values
        assert values is not None
        start = self._next
        stop = min(len(values), start + self._chunk_size)
        raw = 0
        end = start
        while end < stop:
            k, v, r = values[end]
            raw += len(k) + (len(v) if v else 0) + len(r)
            end += 1
            if raw >= self._chunk_bytes:
                break
        final = end == len(values)
        bc = self.breadcrumb
        frame = encode_snapshot_chunk(
            bc.seq, len(self.chunks), bc.created_ns, bc.status, values[start:end], final, self._compressor, self.partial
        )
        self.chunks.append(frame)
        self._next = end
        self.wire_bytes += len(frame)
        self.raw_bytes += raw
        if final:
            self._values = None  # the chunks now hold everything; drop the pointer copy
        if self._on_chunk is not None:
            self._on_chunk(raw, len(frame))


@dataclass(slots=True)
class CacheStats:
    updates_total: int = 0
    updates_skipped: int = 0  # identical value, or delete of an unknown key
    breadcrumbs: int = 0
    snapshots_generated: int = 0
    snapshots_reused: int = 0
    snapshot_raw_bytes: int = 0
    snapshot_wire_bytes: int = 0
    breadcrumb_bytes: int = 0
    partial_snapshots: int = 0  # reconciles answered
    partial_kvs: int = 0  # KVs those carried


class SnapCache:
    """State plus breadcrumbs for one syncer type."""

    def __init__(
        self,
        syncer_type: str,
        max_batch: int = DEFAULT_MAX_BATCH,
        snapshot_chunk: int = DEFAULT_SNAPSHOT_CHUNK,
        snapshot_reuse_ns: int = DEFAULT_SNAPSHOT_REUSE_NS,
        clock_ns: Callable[[], int] = time.time_ns,
        resume_window_ns: int = DEFAULT_RESUME_WINDOW_NS,
    ) -> None:
        if max_batch < 1 or snapshot_chunk < 1:
            raise ValueError("max_batch and snapshot_chunk must be positive")
        self.syncer_type = syncer_type
        self.max_batch = max_batch
        self.snapshot_chunk = snapshot_chunk
        self.snapshot_reuse_ns = snapshot_reuse_ns
        self._clock_ns = clock_ns
        self._state: dict[str, Update] = {}
        self.status = SyncStatus.WAIT_FOR_DATASTORE
        self.head = Breadcrumb(0, 0, clock_ns(), self.status, 0, b"")
        self.stats = CacheStats()
        # Called once per new breadcrumb; the server uses it to schedule a fan-out pass.
        self.on_breadcrumb: Callable[[Breadcrumb], None] | None = None
        self._snapshots: dict[bool, Snapshot] = {}
        self._compressor = Compressor()
        self.epoch = uuid.uuid4().hex[:16]
        self.resume_window_ns = resume_window_ns
        self._recent: deque[Breadcrumb] = deque([self.head])
        self.summary = IndexedSummary()

    # -- reading -------------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._state)

    def get(self, key: str) -> Update | None:
        return self._state.get(key)

    def find(self, seq: int) -> Breadcrumb | None:
        """The breadcrumb with sequence number `seq`, if it is still inside the resume window."""
        recent = self._recent
        if not recent:
            return None
        i = seq - recent[0].seq
        if 0 <= i < len(recent):
            bc = recent[i]
            return bc if bc.seq == seq else None
        return None

    def items(self) -> dict[str, Update]:
        """A copy of the current state (for tests and debugging; clients use snapshots)."""
        return dict(self._state)

    # -- writing -------------------------------------------------------------------------------------
    def apply(self, updates: Iterable[Update]) -> int:
        """Apply updates in order; returns the number of breadcrumbs created."""
        state = self._state
        stats = self.stats
        summarise = self.summary.set
        batch: list[Update] = []
        created = 0
        for upd in updates:
            key, value, _rev = upd
            stats.updates_total += 1
            old = state.get(key)
            if value is None:
                if old is None:
                    stats.updates_skipped += 1
                    continue
                del state[key]
            else:
                if old is not None and old[1] == value:
                    stats.updates_skipped += 1
                    continue
                state[key] = upd
            summarise(key, value)
            batch.append(upd)
            if len(batch) >= self.max_batch:
                self._publish(batch, self.status)
                created += 1
                batch = []
        if batch:
            self._publish(batch, self.status)
            created += 1
        return created

    def set_status(self, status: SyncStatus) -> bool:
        """Move to `status`; returns False (and publishes nothing) if it is unchanged."""
        if status == self.status:
            return False
        self.status = status
        self._publish(None, status)
        return True

    def _publish(self, batch: list[Update] | None, status: SyncStatus) -> None:
        prev = self.head
        seq = prev.seq + 1
        now = self._clock_ns()
        if batch is None:
            wire = encode_sync_status(prev.seq, seq, now, status)
            count = 0
        else:
            wire = encode_updates(prev.seq, seq, now, status, batch)
            count = len(batch)
        bc = Breadcrumb(seq, prev.seq, now, status, count, wire)
        prev.next = bc
        self.head = bc
        recent = self._recent
        recent.append(bc)
        horizon = now - self.resume_window_ns
        while len(recent) > 1 and recent[0].created_ns <= horizon:
            recent.popleft()
        self.stats.breadcrumbs += 1
        self.stats.breadcrumb_bytes += len(wire)
        if self._snapshots:
            # A cached snapshot pins the chain from its breadcrumb on: let go once it is too old to reuse.
            for key, snap in list(self._snapshots.items()):
                if now - snap.built_ns >= self.snapshot_reuse_ns:
                    del self._snapshots[key]
        if self.on_breadcrumb is not None:
            self.on_breadcrumb(bc)

    # -- snapshots -----------------------------------------------------------------------------------
    def snapshot(self, compressed: bool) -> Snapshot:
        """A snapshot at the head, or a recent one reused (see the design note)."""
        now = self._clock_ns()
        snap = self._snapshots.get(compressed)
        if snap is not None and (snap.breadcrumb is self.head or now - snap.built_ns < self.snapshot_reuse_ns):
            self.stats.snapshots_reused += 1
            return snap
        snap = Snapshot(
            self.head,
            list(self._state.values()),
            now,
            self.snapshot_chunk,
            self._compressor if compressed else None,
            self._count_snapshot_chunk,
        )
        self._snapshots[compressed] = snap
        self.stats.snapshots_generated += 1
        return snap

    def _count_snapshot_chunk(self, raw: int, wire: int) -> None:
        self.stats.snapshot_raw_bytes += raw
        self.stats.snapshot_wire_bytes += wire

    # -- reconcile -----------------------------------------------------------------------------------
    def reconcile_digests(self, their_tops: bytes) -> tuple[list[int], bytes]:
        """(tops whose digest differs from an agent's, our leaf digests under them), as of the head."""
        tops = self.summary.differing_tops(their_tops)
        return tops, self.summary.leaf_digests(tops)

    def partial_snapshot(self, leaves: list[int], compressed: bool) -> Snapshot:
        """The contents of `leaves` at the head, as one agent's PARTIAL snapshot (never shared)."""
        state = self._state
        values = [state[k] for k in self.summary.keys_in(leaves)]
        self.stats.partial_snapshots += 1
        self.stats.partial_kvs += len(values)
        return Snapshot(
            self.head,
            values,
            self._clock_ns(),
            self.snapshot_chunk,
            self._compressor if compressed else None,
            self._count_snapshot_chunk,
            partial=True,
        )

    def release_snapshots(self) -> None:
        """Forget cached snapshots so their breadcrumbs can be freed (tests, memory pressure)."""
        self._snapshots.clear()
