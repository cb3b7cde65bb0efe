"""A SnapCache and a ClientConnection together, and the reference client's resync rule.

The shared, pre-encoded breadcrumb and snapshot bytes, decoded by a client, must rebuild exactly the
state the cache holds; a resync reports only the difference and synthesizes deletes.
"""

from __future__ import annotations

import itertools
from dataclasses import replace

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from protocol import (
    KV,
    ClientConnection,
    ClientHello,
    ConnState,
    HandshakeRejected,
    ProtocolError,
    ServerHello,
    SnapshotChunk,
    SyncStatus,
    SyncStatusChange,
    Updates,
    decode,
    encode,
)
from protocol.codec import encode_sync_status
from protocol.framing import FrameReader
from tests.support.wire import HELLO, IN_SYNC, SERVER_HELLO, chunk
from typha.snapcache import SnapCache, collect_pending

# ---------------------------------------------------------------------------------------------------
# SnapCache + ClientConnection: the server's shared bytes, decoded by a client


class FakeClock:
    def __init__(self) -> None:
        self.now = 1_000

    def __call__(self) -> int:
        self.now += 1
        return self.now


def follow(
    cache: SnapCache, compressed: bool, hello: ClientHello = HELLO
) -> tuple[ClientConnection, object, bytes, list]:
    """Hello + snapshot for a new client of `cache`, decoded; returns the connection, snapshot, wire, msgs."""
    snap = cache.snapshot(compressed)
    wire = encode(ServerHello(1, cache.syncer_type, "zstd" if compressed else None)) + b"".join(
        frame for frame in snap.frames()
    )
    conn = ClientConnection(hello)
    msgs = conn.receive_data(wire)
    return conn, snap, wire, msgs


def apply_msgs(view: dict[str, bytes], msgs) -> None:
    for m in msgs:
        if isinstance(m, (SnapshotChunk, Updates)):
            for kv in m.kvs:
                if kv.value is None:
                    view.pop(kv.key, None)
                else:
                    view[kv.key] = kv.value


def test_breadcrumbs_decode_to_the_applied_updates() -> None:
    cache = SnapCache("felix", max_batch=3, snapshot_chunk=2, clock_ns=FakeClock())
    conn, snap, _, msgs = follow(cache, compressed=False)
    assert snap.seq == 0 and conn.seq == 0
    assert msgs[1] == SnapshotChunk(0, 0, snap.breadcrumb.created_ns, SyncStatus.WAIT_FOR_DATASTORE, 0, True, [])

    batch = [
        ("a", b"1", "r1"),
        ("b", b"2", "r2"),
        ("a", b"1", "r3"),
        ("c", b"3", "r4"),
        ("a", None, "r5"),
        ("d", b"4", "r6"),
    ]
    assert cache.apply(batch) == 2  # ("a", b"1") again is dropped: 5 changes, batches of 3
    cache.set_status(IN_SYNC)
    pending = collect_pending(snap.breadcrumb, 1 << 20)
    assert pending.breadcrumbs == 3
    msgs = conn.receive_data(pending.data)
    assert msgs == [
        Updates(
            0,
            1,
            msgs[0].created_ns,
            SyncStatus.WAIT_FOR_DATASTORE,
            3,
            [KV("a", b"1", "r1"), KV("b", b"2", "r2"), KV("c", b"3", "r4")],
        ),
        Updates(1, 2, msgs[1].created_ns, SyncStatus.WAIT_FOR_DATASTORE, 2, [KV("a", None, "r5"), KV("d", b"4", "r6")]),
        SyncStatusChange(2, 3, msgs[2].created_ns, IN_SYNC),
    ]
    # Each message carries its breadcrumb's creation time.
    bc = snap.breadcrumb.next
    for m in msgs:
        assert (m.seq, m.created_ns) == (bc.seq, bc.created_ns)
        bc = bc.next
    assert conn.seq == cache.head.seq == 3


@pytest.mark.parametrize("compressed", [False, True])
def test_snapshot_of_a_populated_cache(compressed) -> None:
    cache = SnapCache("bgp", max_batch=100, snapshot_chunk=7, clock_ns=FakeClock())
    cache.apply((f"/calico/bgp/v1/host/n{i}/ip_addr_v4", b'"10.0.%d.1"' % i, str(i)) for i in range(30))
    cache.set_status(IN_SYNC)
    conn, _snap, _, msgs = follow(cache, compressed, ClientHello("n", "bgp"))
    chunks = msgs[1:]
    assert [c.index for c in chunks] == [0, 1, 2, 3, 4] and [c.final for c in chunks] == [False] * 4 + [True]
    assert all(c.seq == cache.head.seq and c.status is IN_SYNC for c in chunks)
    assert [c.count for c in chunks] == [7, 7, 7, 7, 2]
    view: dict[str, bytes] = {}
    apply_msgs(view, msgs)
    assert view == {k: v for k, v, _ in cache.items().values()}
    assert conn.state is ConnState.STREAMING and conn.seq == cache.head.seq


def test_reused_snapshot_continues_from_its_own_breadcrumb() -> None:
    clock = FakeClock()
    cache = SnapCache("felix", snapshot_chunk=10, snapshot_reuse_ns=10**12, clock_ns=clock)
    cache.apply([("a", b"1", "1")])
    _first, snap, _, _ = follow(cache, False)
    cache.apply([("b", b"2", "2")])
    second, snap2, _, _ = follow(cache, False)
    assert snap2 is snap and second.seq == 1  # reused: the late client starts behind the head
    view: dict[str, bytes] = {"a": b"1"}
    apply_msgs(view, second.receive_data(collect_pending(snap2.breadcrumb, 1 << 20).data))
    assert view == {"a": b"1", "b": b"2"} and second.seq == cache.head.seq == 2


def test_skipping_a_breadcrumb_is_detected() -> None:
    cache = SnapCache("felix", max_batch=1, clock_ns=FakeClock())
    conn, snap, _, _ = follow(cache, False)
    cache.apply([("a", b"1", "1"), ("b", b"2", "2"), ("c", b"3", "3")])
    bc1 = snap.breadcrumb.next
    conn.receive_data(bc1.wire)
    with pytest.raises(ProtocolError, match="sequence gap"):
        conn.receive_data(bc1.next.next.wire)


ops = st.lists(
    st.one_of(
        st.lists(
            st.tuples(
                st.sampled_from("abcdefgh"),
                st.none() | st.sampled_from([b"1", b"2", b"", b"\xff" * 40]),
                st.text(max_size=3),
            ),
            max_size=12,
        ),
        st.sampled_from(list(SyncStatus)),
        st.just("snapshot"),
    ),
    max_size=12,
)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops, st.integers(1, 5), st.integers(1, 4), st.booleans(), st.lists(st.integers(1, 97), min_size=1, max_size=5))
def test_cache_and_client_agree(ops, max_batch, chunk_size, compressed, piece_sizes) -> None:
    """Clients joining at random points, fed the shared wire bytes in random pieces, end with the cache's state."""
    cache = SnapCache(
        "felix", max_batch=max_batch, snapshot_chunk=chunk_size, snapshot_reuse_ns=0, clock_ns=FakeClock()
    )
    clients: list[tuple[ClientConnection, object, dict[str, bytes]]] = []

    def join() -> None:
        conn, snap, wire, _ = follow(cache, compressed)
        conn = ClientConnection(HELLO)
        view: dict[str, bytes] = {}
        apply_msgs(view, _feed(conn, wire, piece_sizes))
        assert conn.state is ConnState.STREAMING and conn.seq == snap.seq
        clients.append((conn, snap.breadcrumb, view))

    join()
    for op in ops:
        if op == "snapshot":
            join()
        elif isinstance(op, SyncStatus):
            cache.set_status(op)
        else:
            cache.apply(op)
    expected = {k: v for k, v, _ in cache.items().values()}
    for conn, start, view in clients:
        pending = collect_pending(start, 1 << 30)
        if pending is not None:
            msgs = _feed(conn, pending.data, piece_sizes)
            apply_msgs(view, msgs)
            assert msgs[-1].status is cache.status
        assert view == expected
        assert conn.seq == cache.head.seq


def _feed(conn: ClientConnection, data: bytes, piece_sizes: list[int]) -> list:
    out, pos = [], 0
    for size in itertools.cycle(piece_sizes):
        if pos >= len(data):
            return out
        out.extend(conn.receive_data(data[pos : pos + size]))
        pos += size
    raise AssertionError("unreachable")


# ---------------------------------------------------------------------------------------------------
# The resync rule, as the reference client implements it (no sockets: messages are handed over directly)


class _FakeProto:
    """Stands in for the client's transport protocol: messages are handed to the client directly."""

    def __init__(self, conn: ClientConnection) -> None:
        self.conn = conn

    def send(self, data: bytes) -> None:
        pass

    def finish(self, reason: str, goodbye=None) -> None:
        pass


def _connect(client, data: bytes, hello: ClientHello = HELLO, server_hello: ServerHello = SERVER_HELLO) -> None:
    """One connection of `client`: the server hello, then `data`."""
    conn = ClientConnection(hello)
    proto = _FakeProto(conn)
    for msg in conn.receive_data(encode(server_hello) + data):
        client._handle(proto, msg)


def test_resync_reports_only_the_difference_and_synthesizes_deletes() -> None:
    from protocol.client import SyncClient

    reported: list[list[KV]] = []
    client = SyncClient([("127.0.0.1", 1)], "felix", hostname="h", on_updates=reported.append)
    _connect(client, chunk(4, 0, [("a", b"1", "1"), ("b", b"2", "1")]) + chunk(4, 1, [("c", b"3", "1")], final=True))
    assert sorted(kv.key for batch in reported for kv in batch) == ["a", "b", "c"]
    reported.clear()
    # Reconnect (maybe to another server: seqs are unrelated). "a" unchanged, "b" changed, "c" gone, "d" new.
    _connect(
        client, chunk(100, 0, [("a", b"1", "9"), ("b", b"22", "9")]) + chunk(100, 1, [("d", b"4", "9")], final=True)
    )
    flat = [kv for batch in reported for kv in batch]
    assert sorted((kv.key, kv.value) for kv in flat) == [("b", b"22"), ("c", None), ("d", b"4")]
    assert {k: kv.value for k, kv in client.state.items()} == {"a": b"1", "b": b"22", "d": b"4"}
    assert client.stats.deletes_synthesized == 1 and client.seq == 100


def test_a_nil_value_in_a_snapshot_means_the_key_is_absent() -> None:
    # Senders never put nil in a snapshot (section 5); a receiver that gets one treats the key as absent.
    from protocol.client import SyncClient

    reported: list[KV] = []
    client = SyncClient([("127.0.0.1", 1)], "felix", hostname="h", on_updates=reported.extend)
    _connect(client, chunk(4, 0, [("a", b"1", "1"), ("nil", None, "1")], final=True))
    assert set(client.state) == {"a"} and [kv.key for kv in reported] == ["a"]
    reported.clear()
    _connect(client, chunk(9, 0, [("a", None, "2"), ("b", b"2", "2")], final=True))  # resync: "a" now absent
    assert set(client.state) == {"b"}
    assert sorted((kv.key, kv.value) for kv in reported) == [("a", None), ("b", b"2")]


def test_a_resumed_connection_is_in_sync_without_a_snapshot() -> None:
    # Section 8.4: a granted resume stands in for the FINAL chunk; the status is the stream's last one.
    from protocol.client import SyncClient

    client = SyncClient([("127.0.0.1", 1)], "felix", hostname="h")
    _connect(client, chunk(4, 0, [("a", b"1", "1")], final=True), server_hello=replace(SERVER_HELLO, epoch="e1"))
    assert client.in_sync and client.seq == 4
    client._synced.clear()  # what run() does when the connection drops
    client._streaming.clear()
    resume = replace(HELLO, resume_epoch="e1", resume_seq=4)
    _connect(client, b"", hello=resume, server_hello=replace(SERVER_HELLO, epoch="e1", resumed=True))
    assert client.in_sync and client.stats.resumes == 1  # nothing was missed: in sync at the hello
    _connect(
        client,
        encode_sync_status(4, 5, 1, SyncStatus.RESYNC_IN_PROGRESS),
        hello=resume,
        server_hello=replace(SERVER_HELLO, epoch="e1", resumed=True),
    )
    assert not client.in_sync and client.seq == 5


def test_resume_fields_round_trip_and_resumed_hello_skips_the_snapshot() -> None:
    hello = ClientHello("n", "felix", resume_epoch="e1", resume_seq=41)
    assert decode(_frames(encode(hello))[0]) == hello
    conn = ClientConnection(hello)
    msgs = conn.receive_data(
        encode(ServerHello(1, "felix", None, epoch="e1", resumed=True))
        + encode_sync_status(41, 42, 1, SyncStatus.IN_SYNC)
    )
    assert conn.state is ConnState.STREAMING and conn.seq == 42 and len(msgs) == 2


def test_unsolicited_or_foreign_resume_is_rejected() -> None:
    with pytest.raises(HandshakeRejected):
        ClientConnection(ClientHello("n", "felix")).receive_data(
            encode(ServerHello(1, "felix", None, epoch="e", resumed=True))
        )
    with pytest.raises(HandshakeRejected):
        ClientConnection(ClientHello("n", "felix", resume_epoch="mine", resume_seq=3)).receive_data(
            encode(ServerHello(1, "felix", None, epoch="theirs", resumed=True))
        )


def _frames(data: bytes) -> list:
    reader = FrameReader(1 << 20)
    reader.feed(data)
    return reader.frames()
