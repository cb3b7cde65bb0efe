"""The breadcrumb cache, without sockets: dedup, deletes, batching, snapshots and freeing."""

from __future__ import annotations

import gc
import sys
import weakref

from protocol import ClientConnection, ClientHello, SyncStatus, encode, negotiate
from typha.snapcache import SnapCache, collect_pending


class FakeClock:
    def __init__(self) -> None:
        self.now = 1_000_000_000

    def __call__(self) -> int:
        return self.now


def decode_all(cache: SnapCache, snap_compressed: bool = False) -> ClientConnection:
    conn = ClientConnection(ClientHello("t", cache.syncer_type))
    conn.receive_data(encode(negotiate(conn.hello, [cache.syncer_type], snap_compressed)))
    snap = cache.snapshot(snap_compressed)
    for frame in snap.frames():
        conn.receive_data(frame)
    return conn


def test_identical_values_and_unknown_deletes_are_dropped_and_counted() -> None:
    c = SnapCache("felix")
    assert c.apply([("a", b"1", "1"), ("b", b"2", "1")]) == 1
    seq = c.head.seq
    assert c.apply([("a", b"1", "2"), ("zz", None, "3")]) == 0  # revision alone is no change
    assert c.head.seq == seq
    assert c.stats.updates_skipped == 2 and c.stats.updates_total == 4
    assert c.get("a") == ("a", b"1", "1")  # state keeps the revision that was published
    c.apply([("a", None, "4")])
    assert c.get("a") is None and c.head.count == 1


def test_batches_split_at_max_batch() -> None:
    c = SnapCache("felix", max_batch=100)
    created = c.apply([(f"k{i}", b"v", "1") for i in range(250)])
    assert created == 3
    bc = c.head
    assert bc.count == 50 and bc.prev_seq == bc.seq - 1


def test_status_changes_are_breadcrumbs_in_order() -> None:
    c = SnapCache("felix")
    assert c.status is SyncStatus.WAIT_FOR_DATASTORE
    assert c.set_status(SyncStatus.RESYNC_IN_PROGRESS)
    assert not c.set_status(SyncStatus.RESYNC_IN_PROGRESS)
    c.apply([("k", b"v", "1")])
    c.set_status(SyncStatus.IN_SYNC)
    assert [c.head.seq, c.head.status, c.head.count] == [3, SyncStatus.IN_SYNC, 0]


def test_breadcrumb_wire_bytes_decode_to_the_updates() -> None:
    c = SnapCache("felix")
    conn = decode_all(c)
    start = c.head
    c.apply([("a", b"1", "r1"), ("b", b"2", "r2")])
    c.apply([("a", None, "r3")])
    c.set_status(SyncStatus.IN_SYNC)
    pending = collect_pending(start, 1 << 20)
    assert pending is not None and pending.breadcrumbs == 3 and pending.kvs == 3
    msgs = conn.receive_data(pending.data)
    kvs = [kv for m in msgs if getattr(m, "kvs", None) for kv in m.kvs]
    assert [(k.key, k.value, k.revision) for k in kvs] == [("a", b"1", "r1"), ("b", b"2", "r2"), ("a", None, "r3")]
    assert msgs[-1].status is SyncStatus.IN_SYNC and conn.seq == c.head.seq


def test_collect_pending_respects_max_bytes_but_always_progresses() -> None:
    c = SnapCache("felix")
    start = c.head
    for i in range(10):
        c.apply([(f"k{i}", b"x" * 1000, "1")])
    p = collect_pending(start, 1)
    assert p is not None and p.breadcrumbs == 1
    frame = len(start.next.wire)
    p = collect_pending(start, 3500)
    assert p is not None and 3500 <= len(p.data) < 3500 + frame  # stops at the first frame past the limit
    assert collect_pending(c.head, 1 << 20) is None


def test_snapshot_chunks_cover_state_and_are_reused() -> None:
    clock = FakeClock()
    c = SnapCache("felix", snapshot_chunk=1000, clock_ns=clock)
    c.apply([(f"k{i:05d}", b"v%d" % i, "1") for i in range(2500)])
    c.set_status(SyncStatus.IN_SYNC)
    s1 = c.snapshot(True)
    assert len(list(s1.frames())) == 3
    assert c.snapshot(True) is s1  # same head: reused
    clock.now += 500_000_000
    c.apply([("new", b"1", "2")])
    assert c.snapshot(True) is s1  # newer breadcrumb, but young enough: reused
    clock.now += 600_000_000
    s2 = c.snapshot(True)
    assert s2 is not s1 and s2.seq == c.head.seq
    assert c.stats.snapshots_generated == 2 and c.stats.snapshots_reused == 2
    conn = decode_all(c, snap_compressed=True)
    assert conn.seq == c.head.seq


def test_empty_cache_snapshot_is_one_final_chunk() -> None:
    c = SnapCache("bgp")
    snap = c.snapshot(False)
    assert len(list(snap.frames())) == 1
    conn = decode_all(c)
    assert conn.state.name == "STREAMING"


def test_snapshot_is_consistent_while_state_changes() -> None:
    c = SnapCache("felix", snapshot_chunk=10)
    c.apply([(f"k{i:03d}", b"old", "1") for i in range(50)])
    snap = c.snapshot(False)
    snap.chunk(0)
    c.apply([(f"k{i:03d}", b"new", "2") for i in range(50)])  # after the snapshot was taken
    conn = ClientConnection(ClientHello("t", "felix"))
    conn.receive_data(encode(negotiate(conn.hello, ["felix"], False)))
    values = set()
    for frame in snap.frames():
        for m in conn.receive_data(frame):
            values.update(kv.value for kv in m.kvs)
    assert values == {b"old"}  # the snapshot is the state as of its breadcrumb, whatever happens later


def test_old_breadcrumbs_are_freed_when_nobody_needs_them() -> None:
    clock = FakeClock()
    c = SnapCache("felix", clock_ns=clock, resume_window_ns=0)  # no resume window pinning them
    c.apply([("k", b"0", "0")])
    first = weakref.ref(c.head)
    holder = c.head  # a slow client pinned here
    for i in range(1, 1000):
        c.apply([("k", b"%d" % i, str(i))])
    gc.collect()
    assert first() is not None  # still needed by the slow client
    del holder
    assert first() is None  # freed by reference counting, no GC pass needed


def test_cached_snapshot_releases_its_breadcrumb_once_stale() -> None:
    clock = FakeClock()
    c = SnapCache("felix", clock_ns=clock, resume_window_ns=0)
    c.apply([("k", b"0", "0")])
    snap_bc = weakref.ref(c.head)
    c.snapshot(False)
    clock.now += 2_000_000_000
    c.apply([("k", b"1", "1")])
    assert snap_bc() is None


def test_long_chain_frees_without_recursion_error() -> None:
    c = SnapCache("felix", resume_window_ns=0)
    holder = c.head
    for i in range(200_000):
        c.apply([("k", b"%d" % i, "1")])
    del holder  # frees 200k breadcrumbs in one cascade
    assert sys.getrecursionlimit() < 200_000


def test_snapshot_chunks_end_early_for_large_values() -> None:
    c = SnapCache("felix", snapshot_chunk=1000)
    big = b"v" * (1 << 20)
    c.apply([(f"k{i}", big, "1") for i in range(10)])
    frames = list(c.snapshot(False).frames())
    assert len(frames) == 3  # 4 MiB per chunk: 4 + 4 + 2 values, not one 10 MiB frame
    conn = decode_all(c)
    assert conn.seq == c.head.seq


def test_resume_window_keeps_recent_breadcrumbs_findable_and_frees_older_ones() -> None:
    clock = FakeClock()
    c = SnapCache("felix", clock_ns=clock, resume_window_ns=10_000_000_000)
    c.apply([("k", b"0", "0")])
    old = weakref.ref(c.head)
    assert c.find(1) is c.head and c.find(0) is not None and c.find(99) is None
    clock.now += 5_000_000_000
    c.apply([("k", b"1", "1")])
    assert c.find(1) is not None  # 5 s old: still resumable
    clock.now += 6_000_000_000
    c.apply([("k", b"2", "2")])
    assert c.find(1) is None and c.find(2) is not None and c.find(3) is c.head
    assert old() is None  # out of the window and held by nobody: freed
    other = SnapCache("felix")
    assert other.epoch != c.epoch  # sequence numbers of different caches never mix
