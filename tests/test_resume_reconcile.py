"""Reconcile on any replica (docs/protocol.md 12.2): any two states end as the server's, exactly.

The property test runs both ends' real code (the server's cache and its digests and partial snapshots,
the client's connection state machine and view) through the wire codec, without sockets, so hypothesis
can try thousands of pairs of states; the tests after it run the real server and client over TCP.
"""

from __future__ import annotations

import asyncio
from functools import cache

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol import (
    KV,
    ClientConnection,
    ClientHello,
    ConnState,
    Digests,
    ProtocolError,
    ServerConnection,
    SnapshotChunk,
    SyncStatus,
    SyncStatusChange,
    Updates,
    encode,
    negotiate,
)
from protocol.client import SyncClient
from protocol.codec import encode_snapshot_chunk
from protocol.summary import SUMMARY_VERSION, StateSummary, bitmap_to_leaves, leaf_of, leaves_to_bitmap
from protocol.view import View
from tests.conftest import make_cache, wait_for
from typha.snapcache import SnapCache, collect_pending


@cache
def key_pool() -> list[str]:
    """Keys that share leaves (six in each of three), so states differ *inside* a leaf, plus loners."""
    targets = {leaf_of(f"/calico/k{i}") for i in range(3)}
    by_leaf: dict[int, list[str]] = {t: [] for t in targets}
    i = 3
    while any(len(v) < 6 for v in by_leaf.values()):
        k = f"/calico/k{i}"
        leaf = leaf_of(k)
        if leaf in by_leaf and len(by_leaf[leaf]) < 6:
            by_leaf[leaf].append(k)
        i += 1
    return [k for v in by_leaf.values() for k in v] + [f"/calico/k{j}" for j in range(3)] + ["/x/a", "/x/b"]


values = st.sampled_from([b"1", b"2", b'{"a":1}', b""])
changes = st.lists(st.tuples(st.sampled_from(range(23)), st.none() | values), max_size=40)


def state_of(changes: list[tuple[int, bytes | None]]) -> dict[str, bytes]:
    pool = key_pool()
    out: dict[str, bytes] = {}
    for i, v in changes:
        if v is None:
            out.pop(pool[i], None)
        else:
            out[pool[i]] = v
    return out


def client_view(state: dict[str, bytes]) -> View:
    view = View()
    view.snapshot_chunk([KV(k, v, "c") for k, v in state.items()])
    return view


def reconcile(view: View, cache: SnapCache, between: list[tuple[str, bytes | None, str]], compressed: bool):
    """One reconcile through the wire codec: hello, DIGESTS, WANT, breadcrumbs, PARTIAL chunks."""
    assert view.summary is not None
    summary = view.summary.copy()
    hello = ClientHello("n", "felix", summary=summary.top_digests(), summary_version=SUMMARY_VERSION)
    conn = ClientConnection(hello)
    server = ServerConnection()
    assert server.receive_data(encode(hello)) == [hello]  # the summary survives the codec
    conn.receive_data(encode(negotiate(hello, ["felix"], compressed, epoch=cache.epoch, reconcile=True)))
    assert conn.state is ConnState.RECONCILE
    tops, leaf_digests = cache.reconcile_digests(hello.summary)
    start = cache.head
    server.expect_want()
    (digests,) = conn.receive_data(encode(Digests(start.seq, tuple(tops), leaf_digests)))
    assert isinstance(digests, Digests)
    leaves = summary.differing_leaves(list(digests.tops), digests.leaf_digests)
    view.begin_reconcile(leaves)
    (want,) = server.receive_data(conn.want(leaves_to_bitmap(leaves)))
    cache.apply(between)  # changes while the WANT was on its way: breadcrumbs go first
    snap = cache.partial_snapshot(bitmap_to_leaves(want.leaves), compressed)
    pending = collect_pending(start, 1 << 30, until=snap.breadcrumb)
    report: list[KV] = []
    for msg in conn.receive_data((pending.data if pending else b"") + b"".join(snap.frames())):
        if isinstance(msg, Updates):
            assert msg.kvs is not None and view.apply_updates(msg.kvs) == []  # held back until the end
        elif isinstance(msg, SnapshotChunk):
            assert msg.partial and msg.kvs is not None
            view.partial_chunk(msg.kvs)
            if msg.final:
                report = view.end_reconcile()
        else:
            assert isinstance(msg, SyncStatusChange)
    assert conn.state is ConnState.STREAMING and conn.seq == cache.head.seq
    return report, leaves


@settings(max_examples=400, deadline=None)
@given(changes, changes, st.lists(st.tuples(st.sampled_from(range(23)), st.none() | values), max_size=8), st.booleans())
def test_any_two_states_reconcile_to_the_servers_exactly(client, server, between, compressed) -> None:
    pool = key_pool()
    before = state_of(client)
    view = client_view(before)
    cache = SnapCache("felix", max_batch=3)
    cache.apply([(k, v, "s") for k, v in state_of(server).items()])
    report, _ = reconcile(view, cache, [(pool[i], v, "b") for i, v in between], compressed)
    truth = {k: u[1] for k, u in cache.items().items()}
    assert {k: kv.value for k, kv in view.state.items()} == truth
    assert view.summary == StateSummary.of(truth.items()) == cache.summary
    # The consumer hears the net difference, once per key: no flapping, nothing unchanged.
    expected = {k: truth.get(k) for k in before.keys() | truth.keys() if before.get(k) != truth.get(k)}
    assert {kv.key: kv.value for kv in report} == expected and len(report) == len(expected)


def test_identical_states_exchange_only_digests() -> None:
    cache = make_cache(2000)
    view = client_view({k: u[1] for k, u in cache.items().items()})
    report, leaves = reconcile(view, cache, [], True)
    assert report == [] and leaves == [] and cache.stats.partial_kvs == 0


def test_one_changed_key_costs_one_leaf() -> None:
    cache = make_cache(20_000)
    state = {k: u[1] for k, u in cache.items().items()}
    state["/calico/test/000123"] = b"stale"
    view = client_view(state)
    report, leaves = reconcile(view, cache, [], True)
    assert leaves == [leaf_of("/calico/test/000123")]
    assert [kv.key for kv in report] == ["/calico/test/000123"]
    assert cache.stats.partial_kvs < 10  # the keys of one leaf, not 20,000


def test_the_client_refuses_a_reconcile_out_of_order() -> None:
    hello = ClientHello("n", "felix", summary=bytes(1024), summary_version=1)

    def reconciling() -> ClientConnection:
        conn = ClientConnection(hello)
        conn.receive_data(encode(negotiate(hello, ["felix"], epoch="e", reconcile=True)))
        return conn

    chunk = encode_snapshot_chunk(5, 0, 1, SyncStatus.IN_SYNC, [], True, partial=True)
    with pytest.raises(ProtocolError, match="expected DIGESTS"):
        reconciling().receive_data(chunk)
    conn = reconciling()
    conn.receive_data(encode(Digests(5, (), b"")))
    with pytest.raises(ProtocolError, match="before the client's WANT"):
        conn.receive_data(chunk)
    conn = reconciling()
    conn.receive_data(encode(Digests(5, (), b"")))
    conn.want(bytes(2048))
    with pytest.raises(ProtocolError, match="WANT is sent once"):
        conn.want(bytes(2048))
    with pytest.raises(ProtocolError, match="must be PARTIAL"):
        conn.receive_data(encode_snapshot_chunk(5, 0, 1, SyncStatus.IN_SYNC, [], True))
    conn = reconciling()
    conn.receive_data(encode(Digests(5, (), b"")))
    conn.want(bytes(2048))
    with pytest.raises(ProtocolError, match="stream is at 5"):
        conn.receive_data(encode_snapshot_chunk(6, 0, 1, SyncStatus.IN_SYNC, [], True, partial=True))
    # A server may not offer a reconcile nobody asked for, nor a PARTIAL chunk in a plain snapshot.
    plain = ClientConnection(ClientHello("n", "felix"))
    with pytest.raises(ProtocolError, match="did not ask"):
        plain.receive_data(encode(negotiate(hello, ["felix"], reconcile=True)))
    plain = ClientConnection(ClientHello("n", "felix"))
    plain.receive_data(encode(negotiate(plain.hello, ["felix"])))
    with pytest.raises(ProtocolError, match="outside a reconcile"):
        plain.receive_data(chunk)


def test_the_server_accepts_one_want_and_only_after_digests() -> None:
    server = ServerConnection()
    server.receive_data(encode(ClientHello("n", "felix")))
    want = encode(__import__("protocol").Want(bytes(2048)))
    with pytest.raises(ProtocolError, match="WANT without a reconcile"):
        server.receive_data(want)
    server = ServerConnection()
    server.receive_data(encode(ClientHello("n", "felix")))
    server.expect_want()
    server.receive_data(want)
    with pytest.raises(ProtocolError, match="second WANT"):
        server.receive_data(want)


def test_a_summary_in_an_unknown_layout_is_ignored_and_a_known_one_checked() -> None:
    from protocol.codec import decode
    from protocol.framing import FrameReader

    def decode_after_reencoding(msg: ClientHello) -> ClientHello:
        from protocol.codec import encode

        reader = FrameReader()
        reader.feed(encode(msg))
        again = decode(reader.frames()[0])
        assert isinstance(again, ClientHello)
        return again

    def decoded(**fields: object) -> ClientHello:
        import msgpack

        from protocol.framing import encode_frame
        from protocol.messages import MsgType

        body = {"versions": [1], "hostname": "n", "syncer_type": "felix", **fields}
        reader = FrameReader()
        reader.feed(encode_frame(MsgType.CLIENT_HELLO, msgpack.packb(body, use_bin_type=True)))
        msg = decode(reader.frames()[0])
        assert isinstance(msg, ClientHello)
        return msg

    later = decoded(summary_version=2, summary=b"\1" * 5000)  # a later layout: a snapshot, as if none
    assert (later.summary, later.summary_version) == (b"", 0)
    assert decode_after_reencoding(later) == later  # what the fuzzer found: the version used to survive alone
    assert decoded(summary_version=1, summary=b"\1" * 1024).summary == b"\1" * 1024
    with pytest.raises(ProtocolError, match="1024 bytes"):
        decoded(summary_version=1, summary=b"\1" * 1000)
    with pytest.raises(ProtocolError):
        decoded(summary_version=1, summary="text")


# -- over TCP: the real server and client -----------------------------------------------------------
async def _follow(addresses: list[tuple[str, int]], **kw: object) -> tuple[SyncClient, asyncio.Task[None], list[KV]]:
    reports: list[KV] = []
    client = SyncClient(
        addresses,
        "felix",
        hostname="n",
        backoff_initial=0.0,
        on_updates=reports.extend,
        **kw,  # type: ignore[arg-type]
    )
    return client, asyncio.create_task(client.run()), reports


def _diverge(cache: SnapCache) -> None:
    cache.apply(
        [("/calico/test/000005", b'{"v":"changed"}', "x"), ("/calico/test/000007", None, "y"), ("/new", b"1", "z")]
    )


def _random_cache(n: int) -> SnapCache:
    """A cache of values that compress like real ones do not: what a snapshot costs shows."""
    import random

    rnd = random.Random(7)
    cache = make_cache(0)
    cache.apply([(f"/calico/test/{i:06d}", rnd.randbytes(60).hex().encode(), "1") for i in range(n)])
    return cache


async def test_an_agent_moving_to_another_replica_receives_only_what_differs(server_factory) -> None:
    a, b = _random_cache(5000), _random_cache(5000)
    _diverge(b)
    sa, sb = await server_factory(a), await server_factory(b)
    client, task, reports = await _follow([("127.0.0.1", sa.port), ("127.0.0.1", sb.port)])
    try:
        await client.wait_in_sync(10)
        first_bytes = client.bytes_received
        reports.clear()
        await sa.shutdown()
        await wait_for(lambda: client.stats.reconciles == 1 and client.in_sync, 10, "a reconcile with replica B")
        assert {k: kv.value for k, kv in client.state.items()} == {k: u[1] for k, u in b.items().items()}
        assert sorted((kv.key, kv.value) for kv in reports) == [
            ("/calico/test/000005", b'{"v":"changed"}'),
            ("/calico/test/000007", None),
            ("/new", b"1"),
        ]
        assert client.stats.snapshots == 1  # the first connection's only
        assert client.bytes_received - first_bytes < first_bytes / 50  # 3 KiB of digests, 3 leaves
        assert sb.metrics.reconciled._value.get() == 1 and b.stats.snapshots_generated == 0
        # Later changes stream as usual, and a drop from B now resumes by seq (same epoch) instead.
        b.apply([("/later", b"2", "w")])
        await wait_for(lambda: "/later" in client.state, 5, "a streamed update after the reconcile")
        client.disconnect()
        await wait_for(lambda: client.stats.resumes == 1 and client.in_sync, 10, "a seq resume on B")
    finally:
        client.stop()
        await task


async def test_old_peers_fall_back_to_a_full_snapshot(server_factory) -> None:
    """A server that does not reconcile (or predates it) sends a snapshot; a client that does not offer a
    summary gets one: both still end exactly at the server's state."""
    a, b = make_cache(300), make_cache(300)
    _diverge(b)
    sa, sb = await server_factory(a), await server_factory(b, reconcile=False)
    client, task, _ = await _follow([("127.0.0.1", sa.port), ("127.0.0.1", sb.port)])
    try:
        await client.wait_in_sync(10)
        await sa.shutdown()
        await wait_for(lambda: client.stats.snapshots == 2 and client.in_sync, 10, "a snapshot from B")
        assert client.stats.reconciles == 0
        assert {k: kv.value for k, kv in client.state.items()} == {k: u[1] for k, u in b.items().items()}
    finally:
        client.stop()
        await task
    c = make_cache(300)
    sc = await server_factory(c)
    client, task, _ = await _follow([("127.0.0.1", sc.port)], reconcile=False)
    try:
        await client.wait_in_sync(10)
        client.disconnect()
        c.apply([("/moved", b"1", "1")])
        await wait_for(lambda: "/moved" in client.state and client.in_sync, 10, "back in sync")
        assert client.stats.reconciles == 0 and sc.metrics.reconciled._value.get() == 0
    finally:
        client.stop()
        await task


async def test_a_cheap_agent_reconciles_with_a_borrowed_summary(server_factory) -> None:
    """The load test's agents decode no values; they borrow the summary of the stream they followed."""
    a, b = make_cache(2000), make_cache(2000)
    _diverge(b)
    sa, sb = await server_factory(a), await server_factory(b)
    asked: list[tuple[str, int]] = []

    def source(epoch: str, seq: int) -> StateSummary | None:
        asked.append((epoch, seq))
        return a.summary.copy() if epoch == a.epoch and seq == a.head.seq else None

    client, task, _ = await _follow(
        [("127.0.0.1", sa.port), ("127.0.0.1", sb.port)], decode_kvs=False, summary_source=source
    )
    try:
        await client.wait_in_sync(10)
        await sa.shutdown()
        await wait_for(lambda: client.stats.reconciles == 1 and client.in_sync, 10, "a reconcile")
        assert asked == [(a.epoch, a.head.seq)] and client.stats.leaves_wanted == 3
        assert client.seq == b.head.seq and b.stats.partial_kvs <= 10
    finally:
        client.stop()
        await task
