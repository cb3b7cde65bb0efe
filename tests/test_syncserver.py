"""The fan-out server over real loopback sockets: convergence, reconnects, slow clients, bad input."""

from __future__ import annotations

import asyncio
import random
import time

import pytest

from protocol import (
    KV,
    ClientConnection,
    ClientHello,
    ConnState,
    Goodbye,
    GoodbyeCode,
    MsgType,
    SyncStatus,
    encode,
    encode_frame,
)
from protocol.client import SyncClient
from protocol.framing import HEADER
from typha.snapcache import SnapCache

from .conftest import make_cache, wait_for

pytestmark = pytest.mark.slow  # every test runs a typha server on loopback


def dropped(server, reason: str) -> float:
    return server.metrics.registry.get_sample_value("typha_connections_dropped_total", {"reason": reason}) or 0.0


async def start_clients(port: int, n: int, syncer: str = "felix", **kw) -> tuple[list[SyncClient], list[asyncio.Task]]:
    clients = [SyncClient([("127.0.0.1", port)], syncer, hostname=f"node-{i}", **kw) for i in range(n)]
    tasks = [asyncio.create_task(c.run()) for c in clients]
    return clients, tasks


async def stop_clients(clients: list[SyncClient], tasks: list[asyncio.Task]) -> None:
    for c in clients:
        c.stop()
    await asyncio.wait_for(asyncio.gather(*tasks), 10)


def values(state: dict[str, KV]) -> dict[str, bytes | None]:
    return {k: kv.value for k, kv in state.items()}


def cache_values(cache: SnapCache) -> dict[str, bytes | None]:
    return {k: v for k, (_, v, _) in cache.items().items()}


async def raw_connect(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", port)


async def read_until_goodbye(reader: asyncio.StreamReader, timeout: float) -> Goodbye | None:
    """Read frames until a GOODBYE or EOF; returns the goodbye (None on EOF without one)."""
    conn = ClientConnection(ClientHello("raw", "felix"), decode_kvs=False)
    conn.state = ConnState.STREAMING  # accept any order: we only look for the goodbye
    deadline = time.monotonic() + timeout
    buf = b""
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise AssertionError("server did not close the connection in time")
        data = await asyncio.wait_for(reader.read(65536), remaining)
        if not data:
            break
        buf += data
    # Parse the tail for a goodbye frame.
    pos = 0
    goodbye = None
    while pos + 8 <= len(buf):
        length, mtype, _, _ = HEADER.unpack_from(buf, pos)
        body = buf[pos + 8 : pos + 8 + length]
        if mtype == MsgType.GOODBYE:
            import msgpack

            obj = msgpack.unpackb(body)
            goodbye = Goodbye(obj["code"], obj.get("reason", ""))
        pos += 8 + length
    return goodbye


# ---------------------------------------------------------------------------------------------------


async def test_many_clients_converge_under_random_churn(server_factory) -> None:
    rng = random.Random(7)
    cache = make_cache(2000)
    server = await server_factory(cache)
    clients, tasks = await start_clients(server.port, 120)
    await asyncio.gather(*(c.wait_in_sync(20) for c in clients))
    # Random churn: adds, changes, identical rewrites (dropped), deletes of known and unknown keys.
    keys = [f"/calico/test/{i:06d}" for i in range(3000)]
    for round_ in range(40):
        batch = []
        for _ in range(rng.randint(1, 250)):
            k = rng.choice(keys)
            r = rng.random()
            if r < 0.3:
                batch.append((k, None, f"{round_}"))
            else:
                batch.append((k, b'{"v":%d}' % rng.randint(0, 5), f"{round_}"))
        cache.apply(batch)
        if round_ % 5 == 0:
            await asyncio.sleep(0)  # let some fan-out passes interleave with the churn
    want = cache_values(cache)
    await wait_for(lambda: all(c.seq == cache.head.seq for c in clients), 20, "all clients at the head")
    for c in clients:
        assert values(c.state) == want
    assert cache.stats.updates_skipped > 0  # identical rewrites and unknown deletes were dropped
    await stop_clients(clients, tasks)


async def test_client_joining_mid_stream_converges(server_factory) -> None:
    cache = make_cache(500)
    server = await server_factory(cache)
    early, t1 = await start_clients(server.port, 5)
    await asyncio.gather(*(c.wait_in_sync(10) for c in early))
    stop = False

    async def churn() -> None:
        i = 0
        while not stop:
            cache.apply(
                [
                    (f"/calico/test/{i % 700:06d}", b"%d" % i, str(i)),
                    (f"/calico/test/{(i * 7) % 700:06d}", None, str(i)),
                ]
            )
            i += 1
            await asyncio.sleep(0.001)

    churner = asyncio.create_task(churn())
    await wait_for(lambda: cache.head.seq > 50, 10, "churn to start")
    late, t2 = await start_clients(server.port, 5)
    await asyncio.gather(*(c.wait_in_sync(10) for c in late))
    await wait_for(lambda: cache.head.seq > 300, 10, "more churn")
    stop = True
    await churner
    want = cache_values(cache)
    await wait_for(lambda: all(c.seq == cache.head.seq for c in early + late), 10, "clients at head")
    for c in early + late:
        assert values(c.state) == want
    await stop_clients(early + late, t1 + t2)


async def test_reconnect_reports_exactly_the_difference(server_factory) -> None:
    a = SnapCache("felix")
    a.apply([("k/keep", b"same", "1"), ("k/change", b"old", "1"), ("k/vanish", b"x", "1")])
    a.set_status(SyncStatus.IN_SYNC)
    b = SnapCache("felix")
    b.apply([("k/keep", b"same", "9"), ("k/change", b"new", "9"), ("k/added", b"y", "9")])
    b.set_status(SyncStatus.IN_SYNC)
    sa = await server_factory(a)
    sb = await server_factory(b)
    reported: list[list[KV]] = []
    addrs = [("127.0.0.1", sa.port), ("127.0.0.1", sb.port)]
    client = SyncClient(addrs, "felix", hostname="n1", on_updates=reported.append, backoff_initial=0.01)
    task = asyncio.create_task(client.run())
    await client.wait_in_sync(10)
    assert sorted(kv.key for batch in reported for kv in batch) == ["k/change", "k/keep", "k/vanish"]
    reported.clear()
    await sa.shutdown()  # the client moves to the next address, which holds a different view
    await wait_for(lambda: client.connected_to == ("127.0.0.1", sb.port) and client.in_sync, 10, "resync to b")
    got = {kv.key: kv.value for batch in reported for kv in batch}
    assert got == {"k/change": b"new", "k/added": b"y", "k/vanish": None}
    assert values(client.state) == {"k/keep": b"same", "k/change": b"new", "k/added": b"y"}
    assert client.stats.deletes_synthesized == 1
    client.stop()
    await asyncio.wait_for(task, 5)


async def test_stalled_client_dropped_others_unaffected(server_factory) -> None:
    # Big values so a client that stops reading fills its socket buffers quickly.
    cache = make_cache(10)
    server = await server_factory(cache, write_timeout=1.0, write_high_water=64 * 1024, housekeeping_interval=0.1)
    clients, tasks = await start_clients(server.port, 20)
    await asyncio.gather(*(c.wait_in_sync(10) for c in clients))
    _reader, writer = await raw_connect(server.port)
    writer.write(encode(ClientHello("stalled", "felix", compression=())))
    await writer.drain()
    await wait_for(lambda: len(server._following["felix"]) == 21, 10, "stalled client to follow")
    latencies: list[float] = []
    blob = b"x" * 60_000
    for i in range(300):
        cache.apply([(f"big/{i % 50}", blob + b"%d" % i, str(i))])
        t0 = time.monotonic()
        seq = cache.head.seq
        await wait_for(lambda seq=seq: all(c.seq >= seq for c in clients), 5, "healthy clients to receive")
        latencies.append(time.monotonic() - t0)
        if dropped(server, "too-slow"):
            break
    await wait_for(lambda: dropped(server, "too-slow") == 1, 10, "stalled client dropped")
    await wait_for(lambda: len(server._following["felix"]) == 20, 5, "stalled connection released")
    latencies.sort()
    assert latencies[int(len(latencies) * 0.99) - 1] < 0.5, latencies[-5:]
    writer.close()
    await stop_clients(clients, tasks)


async def test_handshake_timeout(server_factory) -> None:
    server = await server_factory(make_cache(), handshake_timeout=0.3)
    reader, writer = await raw_connect(server.port)
    t0 = time.monotonic()
    goodbye = await read_until_goodbye(reader, 5)
    assert goodbye is not None and goodbye.code == GoodbyeCode.HANDSHAKE_TIMEOUT.value
    assert time.monotonic() - t0 < 3
    assert dropped(server, "handshake-timeout") == 1
    writer.close()


BAD_INPUTS = {
    "garbage": b"\xde\xad\xbe\xef" * 8,
    "oversized": HEADER.pack(2 << 20, MsgType.CLIENT_HELLO, 0, 0),
    "unknown-type": encode_frame(99, b"\x80"),
    "wrong-order": encode_frame(MsgType.PONG, b"\x81\xa2ts\x01") + encode_frame(MsgType.PONG, b""),
    "server-message-from-client": encode_frame(MsgType.SERVER_HELLO, b"\x80"),
    "bad-msgpack": encode_frame(MsgType.CLIENT_HELLO, b"\xc1\xc1\xc1"),
    "hello-missing-fields": encode_frame(MsgType.CLIENT_HELLO, b"\x80"),
    "unknown-flags": HEADER.pack(1, MsgType.CLIENT_HELLO, 0x80, 0) + b"\x80",
}


@pytest.mark.parametrize("name", sorted(BAD_INPUTS))
async def test_bad_input_disconnects_only_that_client(server_factory, name: str) -> None:
    cache = make_cache(100)
    server = await server_factory(cache)
    good, tasks = await start_clients(server.port, 3)
    await asyncio.gather(*(c.wait_in_sync(10) for c in good))
    reader, writer = await raw_connect(server.port)
    writer.write(BAD_INPUTS[name])
    await writer.drain()
    goodbye = await read_until_goodbye(reader, 5)
    assert goodbye is not None, "server should explain why it closes"
    assert goodbye.code in {GoodbyeCode.PROTOCOL_ERROR.value, GoodbyeCode.FRAME_TOO_LARGE.value}
    assert goodbye.reason
    assert dropped(server, goodbye.code) == 1
    # Everyone else still streams.
    cache.apply([("after/bad", b"1", "x")])
    await wait_for(lambda: all("after/bad" in c.state for c in good), 5, "others still served")
    assert all(c.stats.connects == 1 for c in good)
    writer.close()
    await stop_clients(good, tasks)


async def test_truncated_frame_then_eof_is_harmless(server_factory) -> None:
    server = await server_factory(make_cache(10))
    reader, writer = await raw_connect(server.port)
    hello = encode(ClientHello("trunc", "felix"))
    writer.write(hello[: len(hello) // 2])
    await writer.drain()
    writer.write_eof()
    await asyncio.wait_for(reader.read(), 5)  # server closes its side
    await wait_for(lambda: not server.connections, 5, "connection released")
    writer.close()


async def test_unsupported_version_and_syncer_get_clear_goodbye(server_factory) -> None:
    server = await server_factory(make_cache())
    for hello, code in [
        (ClientHello("old", "felix", versions=(99,)), GoodbyeCode.UNSUPPORTED_VERSION),
        (ClientHello("odd", "no-such-syncer"), GoodbyeCode.UNKNOWN_SYNCER),
    ]:
        reader, writer = await raw_connect(server.port)
        writer.write(encode(hello))
        goodbye = await read_until_goodbye(reader, 5)
        assert goodbye is not None and goodbye.code == code.value
        assert "speaks" in goodbye.reason or "serves" in goodbye.reason
        writer.close()


async def test_client_that_never_pongs_is_dropped(server_factory) -> None:
    server = await server_factory(make_cache(5), ping_interval=0.1, ping_timeout=0.4, housekeeping_interval=0.05)
    reader, writer = await raw_connect(server.port)
    writer.write(encode(ClientHello("mute", "felix", compression=())))
    goodbye = await read_until_goodbye(reader, 5)  # we read (so writes never block) but never answer
    assert goodbye is not None and goodbye.code == GoodbyeCode.PING_TIMEOUT.value
    writer.close()


async def test_keepalive_pings_answered_by_client(server_factory) -> None:
    server = await server_factory(make_cache(5), ping_interval=0.1, ping_timeout=0.5, housekeeping_interval=0.05)
    clients, tasks = await start_clients(server.port, 2)
    await asyncio.gather(*(c.wait_in_sync(5) for c in clients))
    registry = server.metrics.registry
    await wait_for(lambda: (registry.get_sample_value("typha_ping_latency_seconds_count") or 0) >= 6, 5, "pongs")
    assert all(c.stats.connects == 1 for c in clients)
    await stop_clients(clients, tasks)


async def test_client_read_timeout_redials_silent_server() -> None:
    # A "server" that completes the handshake and then goes silent (a black-holed connection).
    cache = make_cache(3)
    accepted = 0

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal accepted
        accepted += 1
        from protocol import ServerConnection, negotiate

        sc = ServerConnection()
        while sc.hello is None:
            sc.receive_data(await reader.read(65536))
        writer.write(encode(negotiate(sc.hello, ["felix"], False, "silent", ping_interval=0.1)))
        writer.write(cache.snapshot(False).chunk(0))
        await reader.read()  # never send anything else

    srv = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = srv.sockets[0].getsockname()[1]
    client = SyncClient([("127.0.0.1", port)], "felix", hostname="n", backoff_initial=0.01)
    task = asyncio.create_task(client.run())
    await wait_for(lambda: accepted >= 2, 5, "client to give up on the silent server and redial")
    assert "read timeout" in client.stats.last_error
    client.stop()
    await asyncio.wait_for(task, 5)
    srv.close()


async def test_max_connections(server_factory) -> None:
    """max_connections counts agents past their hello: the fourth agent's hello is refused."""
    server = await server_factory(make_cache(), max_connections=3)
    clients, tasks = await start_clients(server.port, 3)
    await asyncio.gather(*(c.wait_in_sync(5) for c in clients))
    reader, writer = await raw_connect(server.port)
    writer.write(encode(ClientHello("node-4", "felix")))
    goodbye = await read_until_goodbye(reader, 5)
    assert goodbye is not None and goodbye.code == GoodbyeCode.SERVER_FULL.value
    assert dropped(server, "server-full") == 1
    writer.close()
    await stop_clients(clients, tasks)


async def test_graceful_shutdown_paces_goodbyes(server_factory) -> None:
    server = await server_factory(make_cache(10))
    goodbyes: list[tuple[float, str]] = []
    clients, tasks = await start_clients(
        server.port,
        10,
        backoff_initial=5,
        on_connection=lambda up, why: None if up else goodbyes.append((time.monotonic(), why)),
    )
    await asyncio.gather(*(c.wait_in_sync(5) for c in clients))
    t0 = time.monotonic()
    await server.shutdown(drain_seconds=1.0)
    elapsed = time.monotonic() - t0
    await wait_for(lambda: len(goodbyes) == 10, 5, "all clients told")
    assert 0.8 <= elapsed < 3.0  # paced over the drain period, not all at once
    assert all("shutting-down" in why for _, why in goodbyes)
    spread = max(t for t, _ in goodbyes) - min(t for t, _ in goodbyes)
    assert spread > 0.5
    await stop_clients(clients, tasks)


async def test_rebalance_sheds_one_connection_per_pass(server_factory) -> None:
    server = await server_factory(make_cache(), housekeeping_interval=0.05)
    clients, tasks = await start_clients(server.port, 6, backoff_initial=30)
    await asyncio.gather(*(c.wait_in_sync(5) for c in clients))
    server.rebalance_target = 4
    await wait_for(lambda: len(server.connections) == 4, 5, "shed to target")
    assert dropped(server, "rebalance") == 2
    await stop_clients(clients, tasks)


async def test_rebalance_does_not_shed_again_for_a_connection_still_closing(server_factory) -> None:
    """A shed connection stays in the set until its transport reports it lost; a pass before that
    (a busy loop) must not count it and shed a second agent for the same excess."""
    server = await server_factory(make_cache(), housekeeping_interval=60)
    clients, tasks = await start_clients(server.port, 5, backoff_initial=30)
    await asyncio.gather(*(c.wait_in_sync(5) for c in clients))
    server.rebalance_target = 4
    server.housekeep()
    server.housekeep()  # no loop pass in between: the first victim has not been reported lost yet
    assert dropped(server, "rebalance") == 1
    await wait_for(lambda: len(server.connections) == 4, 5, "shed to target")
    await stop_clients(clients, tasks)


async def test_slow_snapshot_reader_is_not_dropped_during_grace(server_factory) -> None:
    cache = make_cache(20_000)
    server = await server_factory(cache, max_fall_behind=0.1, new_client_grace=30, housekeeping_interval=0.05)
    clients, tasks = await start_clients(server.port, 3)
    for i in range(20):
        cache.apply([(f"x/{i}", b"1", str(i))])
    await asyncio.gather(*(c.wait_in_sync(20) for c in clients))
    assert dropped(server, "too-slow") == 0
    await stop_clients(clients, tasks)


async def test_lagging_client_dropped_after_grace(server_factory) -> None:
    cache = make_cache(10)
    server = await server_factory(
        cache, max_fall_behind=0.2, new_client_grace=0, housekeeping_interval=0.05, write_high_water=16 * 1024
    )
    _reader, writer = await raw_connect(server.port)
    writer.write(encode(ClientHello("lagger", "felix", compression=())))
    await writer.drain()
    await wait_for(lambda: len(server._following["felix"]) == 1, 5, "following")
    blob = b"z" * 50_000
    for i in range(2000):  # never read: kernel buffers fill, the transport pauses, the client falls behind
        cache.apply([(f"k/{i % 100}", blob + b"%d" % i, str(i))])
        await asyncio.sleep(0.001)
        if dropped(server, "too-slow"):
            break
    await wait_for(lambda: dropped(server, "too-slow") == 1, 5, "lagging client dropped")
    writer.close()


async def test_compression_negotiated_and_optional(server_factory) -> None:
    cache = make_cache(3000)
    server = await server_factory(cache)
    zc = SyncClient([("127.0.0.1", server.port)], "felix", hostname="z", compression=True)
    pc = SyncClient([("127.0.0.1", server.port)], "felix", hostname="p", compression=False)
    tasks = [asyncio.create_task(zc.run()), asyncio.create_task(pc.run())]
    await asyncio.gather(zc.wait_in_sync(5), pc.wait_in_sync(5))
    assert values(zc.state) == values(pc.state) == cache_values(cache)
    # Compressed snapshot is smaller on the wire.
    await stop_clients([zc, pc], tasks)
    assert zc.stats.bytes_received < pc.stats.bytes_received


async def test_unchanged_heartbeat_updates_do_not_reach_clients(server_factory) -> None:
    cache = make_cache(10)
    server = await server_factory(cache)
    seen: list[KV] = []
    client = SyncClient([("127.0.0.1", server.port)], "felix", hostname="h", on_updates=seen.extend)
    task = asyncio.create_task(client.run())
    await client.wait_in_sync(5)
    seen.clear()
    seq = cache.head.seq
    cache.apply([(f"/calico/test/{i:06d}", b'{"v":%d}' % i, "newrev") for i in range(10)])
    assert cache.head.seq == seq and cache.stats.updates_skipped >= 10
    cache.apply([("/calico/test/000001", b"changed", "r2")])
    await wait_for(lambda: len(seen) == 1, 5, "the one real change")
    assert seen[0].key == "/calico/test/000001"
    client.stop()
    await asyncio.wait_for(task, 5)


async def test_no_snapshot_before_the_cache_was_ever_in_sync(server_factory) -> None:
    # A restarted typha still listing must not hand a reconnecting agent a partial view (the agent
    # would delete everything the listing has not reached yet): it says not-ready, and the agent
    # moves to another replica.
    cache = make_cache(0, in_sync=False)
    cache.apply([("half/listed", b"1", "1")])
    loading = await server_factory(cache)
    ready_cache = make_cache(0)
    ready_cache.apply([("full/view", b"1", "1")])
    ready = await server_factory(ready_cache)
    reported: list[KV] = []
    client = SyncClient(
        [("127.0.0.1", loading.port), ("127.0.0.1", ready.port)],
        "felix",
        hostname="n",
        on_updates=reported.extend,
        backoff_initial=0.01,
    )
    client.state = {"old/key": KV("old/key", b"x", "0")}  # a view from before a reconnect
    task = asyncio.create_task(client.run())
    await client.wait_in_sync(5)
    assert client.connected_to == ("127.0.0.1", ready.port)
    assert "not-ready" in client.stats.last_error
    assert dropped(loading, "not-ready") >= 1
    assert values(client.state) == {"full/view": b"1"}  # never saw the half-listed cache
    client.stop()
    await asyncio.wait_for(task, 5)
    # Once in sync, the first replica serves; later dips (API server lost) are served too, with status.
    cache.set_status(SyncStatus.IN_SYNC)
    cache.set_status(SyncStatus.WAIT_FOR_DATASTORE)
    late = SyncClient([("127.0.0.1", loading.port)], "felix", hostname="late")
    late_task = asyncio.create_task(late.run())
    await late.wait_streaming(5)
    assert late.status is SyncStatus.WAIT_FOR_DATASTORE and values(late.state) == {"half/listed": b"1"}
    late.stop()
    await asyncio.wait_for(late_task, 5)


async def test_reconnect_to_the_same_cache_resumes_without_a_snapshot(server_factory) -> None:
    cache = make_cache(2000)
    server = await server_factory(cache)
    reported: list[KV] = []
    gate = asyncio.Event()  # holds the client's next dial until the test has changed the world
    gate.set()

    async def addresses() -> list[tuple[str, int]]:
        await gate.wait()
        return [("127.0.0.1", server.port)]

    client = SyncClient(addresses, "felix", hostname="n", on_updates=reported.extend, backoff_initial=0.01)
    task = asyncio.create_task(client.run())
    await client.wait_in_sync(5)
    wire_before = client.bytes_received
    gate.clear()
    client.disconnect("testing resume")
    await wait_for(lambda: client.stats.disconnects == 1, 5, "disconnected")
    reported.clear()
    # Changes while the agent was away: an add, a change, a delete.
    cache.apply(
        [("new/key", b"n", "r1"), ("/calico/test/000001", b"changed", "r2"), ("/calico/test/000002", None, "r3")]
    )
    gate.set()
    await wait_for(lambda: client.stats.connects == 2 and client.seq == cache.head.seq, 5, "resumed and caught up")
    assert client.stats.resumes == 1 and client.stats.snapshots == 1  # no second snapshot
    assert values(client.state) == cache_values(cache)
    assert sorted(kv.key for kv in reported) == ["/calico/test/000001", "/calico/test/000002", "new/key"]
    assert client.bytes_received - wire_before < 2000  # only the missed updates crossed the wire
    assert server.metrics.registry.get_sample_value("typha_connections_resumed_total") == 1
    client.stop()
    await asyncio.wait_for(task, 5)


async def test_resume_refused_for_another_cache_or_an_expired_seq(server_factory) -> None:
    a, b = make_cache(50), make_cache(50)
    b.resume_window_ns = 0  # keeps only its newest breadcrumb
    sa, sb = await server_factory(a), await server_factory(b)
    # Another cache (a restarted typha has a new epoch even at the same address): snapshot + diff. (This
    # client offers no summary; one that does reconciles instead: tests/test_resume_reconcile.py.)
    client = SyncClient(
        [("127.0.0.1", sa.port), ("127.0.0.1", sb.port)], "felix", hostname="n", backoff_initial=0.01, reconcile=False
    )
    task = asyncio.create_task(client.run())
    await client.wait_in_sync(5)
    b.apply([("only/in/b", b"1", "1")])
    await sa.shutdown()
    await wait_for(lambda: client.connected_to == ("127.0.0.1", sb.port) and client.in_sync, 5, "moved to b")
    assert client.stats.resumes == 0 and client.stats.snapshots == 2
    assert values(client.state) == cache_values(b)
    # Same cache, but the seq fell out of its resume window (changes happened while away): snapshot.
    client._addresses = [("127.0.0.1", 1)]  # nothing listens there: the next dial fails
    client.disconnect("testing expiry")
    await wait_for(lambda: client.stats.disconnects >= 2, 5, "disconnected")
    b.apply([("later", b"2", "2")])
    client._addresses = [("127.0.0.1", sb.port)]
    await wait_for(lambda: client.stats.connects == 3 and client.in_sync and client.seq == b.head.seq, 5, "resynced")
    assert client.stats.resumes == 0 and client.stats.snapshots == 3
    assert values(client.state) == cache_values(b)
    client.stop()
    await asyncio.wait_for(task, 5)


async def test_snapshots_stream_a_bounded_number_at_a_time(server_factory) -> None:
    cache = make_cache(20_000)
    server = await server_factory(cache, max_concurrent_snapshots=2, ping_interval=0.1, housekeeping_interval=0.05)
    peak = 0
    queued_seen = 0

    def watch() -> bool:
        nonlocal peak, queued_seen
        states = [c.state for c in server.connections]
        peak = max(peak, sum(1 for s in states if s is ConnState.SNAPSHOT))
        queued_seen = max(queued_seen, sum(1 for s in states if s is ConnState.QUEUED))
        return False

    clients, tasks = await start_clients(server.port, 8)
    done = asyncio.gather(*(c.wait_in_sync(20) for c in clients))
    while not done.done():
        watch()
        await asyncio.sleep(0.002)
    await done
    assert peak <= 2 and queued_seen >= 1  # a queue really formed, and never more than 2 streamed
    for c in clients:
        assert values(c.state) == cache_values(cache)
    assert server.metrics.registry.get_sample_value("typha_snapshots_queued") == 0
    await stop_clients(clients, tasks)
