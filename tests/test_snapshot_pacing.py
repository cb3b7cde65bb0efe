"""Snapshot storms bounded by bytes (typha.snapsched): admission, order, and bytes per pass of the loop."""

from __future__ import annotations

import asyncio
import random
import socket
import time

from protocol import ClientHello, Updates, encode
from protocol.client import SyncClient
from tests.conftest import make_cache, wait_for
from typha.snapcache import SnapCache
from typha.snapsched import SnapshotScheduler


class FakeStream:
    """A stream of `chunks` chunks of `size` bytes whose transport keeps what it was given until drained,
    and pauses once it holds `high_water` bytes (as asyncio's does)."""

    def __init__(self, name: str, chunks: int, size: int = 100, high_water: int = 1 << 30) -> None:
        self.name, self.left, self.size, self.high_water = name, chunks, size, high_water
        self.paused = False
        self.buffer = 0
        self.fresh = False  # the next chunk is encoded now

    def __repr__(self) -> str:
        return self.name

    def buffered_bytes(self) -> int:
        return self.buffer

    def drain(self) -> None:
        """Its agent read everything."""
        self.buffer, self.paused = 0, False

    def write_snapshot_step(self, max_bytes: int) -> tuple[int, bool, bool]:
        assert not self.paused and self.left
        self.left -= 1
        self.buffer += self.size
        self.paused = self.buffer >= self.high_water
        return self.size, self.fresh, self.left == 0


def scheduler(
    buffer_bytes: int, pass_bytes: int = 10_000, reserve: int = 100, **kw
) -> tuple[SnapshotScheduler[FakeStream], list[str]]:
    log: list[str] = []
    sched: SnapshotScheduler[FakeStream] = SnapshotScheduler(
        buffer_bytes,
        pass_bytes,
        reserve,
        on_admit=lambda s, partial: log.append(f"{s}{'(partial)' if partial else ''}"),
        **kw,
    )
    return sched, log


def test_streams_start_while_their_bytes_in_flight_are_under_the_budget() -> None:
    sched, log = scheduler(buffer_bytes=250, reserve=100)
    a, b, c, d = (FakeStream(n, 5, high_water=100) for n in "abcd")
    # Nothing written yet, so each is charged its reserve: a burst cannot all start against empty buffers.
    assert sched.submit(a, partial=False) and sched.submit(b, partial=False) and sched.submit(c, partial=False)
    assert not sched.submit(d, partial=False) and sched.queued == 1
    assert sched.in_flight() == 300
    sched.run_pass()  # each writes a chunk, which its agent has not read yet: its transport pauses
    assert log == [] and sched.in_flight() == 300
    a.drain()
    b.drain()
    sched.admit_waiting()
    assert log == ["d"] and list(sched.active) == [a, b, c, d]


def test_reconciles_go_before_full_snapshots_and_never_wait_for_the_count_limit() -> None:
    sched, log = scheduler(buffer_bytes=450, reserve=100, max_streams=1)
    full1, full2, part = FakeStream("full1", 3, high_water=100), FakeStream("full2", 3), FakeStream("part", 1)
    assert sched.submit(full1, partial=False)
    assert not sched.submit(full2, partial=False)  # the count limit
    assert sched.submit(part, partial=True)  # a reconcile jumps the queue of full snapshots
    assert sched.run_pass() == [part]
    full1.buffer = 500  # its agent reads slowly: over the byte budget now
    late = FakeStream("late", 1)
    assert not sched.submit(late, partial=True)  # the byte budget holds everyone
    full1.buffer = 0
    sched.finished(full1)
    assert log == ["late(partial)", "full2"]


def _recording(*streams: FakeStream) -> list[str]:
    writes: list[str] = []
    for s in streams:
        step = s.write_snapshot_step
        s.write_snapshot_step = lambda n, s=s, step=step: (writes.append(s.name), step(n))[1]  # type: ignore[method-assign]
    return writes


def test_a_pass_writes_partials_first_then_the_oldest_full_stream_within_its_bytes() -> None:
    sched, _ = scheduler(buffer_bytes=1 << 30, pass_bytes=250)
    f1, f2, f3 = FakeStream("f1", 10), FakeStream("f2", 10), FakeStream("f3", 10)
    for f in (f1, f2, f3):
        sched.submit(f, partial=False)
    p = FakeStream("p", 1)
    sched.submit(p, partial=True)
    writes = _recording(f1, f2, f3, p)
    done = sched.run_pass()
    assert writes == ["p", "f1", "f1"] and done == [p]  # 300 bytes >= 250: the pass ends
    writes.clear()
    sched.run_pass()
    assert writes == ["f1", "f1", "f1"]  # the oldest goes on while its agent reads
    f1.paused = True  # its agent stopped reading: the next one goes, f1 costs nothing
    writes.clear()
    sched.run_pass()
    assert writes == ["f2", "f2", "f2"]
    f1.paused = False
    f1.fresh = True  # encoding a chunk is a pass's work: it ends the pass
    writes.clear()
    sched.run_pass()
    assert writes == ["f1"]


def test_a_pass_writes_nothing_while_the_buffers_hold_the_budget() -> None:
    wakes: list[float] = []
    sched, _ = scheduler(buffer_bytes=250, pass_bytes=1000, on_wake=wakes.append)
    a, b = FakeStream("a", 10), FakeStream("b", 10)
    sched.submit(a, partial=False)
    sched.submit(b, partial=False)
    writes = _recording(a, b)
    sched.run_pass()
    assert writes == ["a", "a", "a"]  # the pass stops once the buffers hold the budget
    writes.clear()
    wakes.clear()
    sched.run_pass()  # the agents read nothing: no more bytes queue for them
    assert writes == [] and sched.held_back == 1
    assert wakes and wakes[-1] > 0  # no transport is paused, so nothing would wake the writer: it looks again
    a.drain()
    b.drain()
    sched.run_pass()
    assert writes


def test_a_pass_is_scheduled_only_while_an_unpaused_stream_has_work() -> None:
    wakes: list[float] = []
    sched, _ = scheduler(1 << 20, 100, on_wake=wakes.append)
    s = FakeStream("s", 2)
    sched.submit(s, partial=False)
    assert wakes == [0.0]
    sched.run_pass()
    assert wakes == [0.0, 0.0]  # one chunk left
    s.paused = True
    sched.run_pass()
    assert wakes == [0.0, 0.0]  # paused: its transport's resume_writing wakes the writer
    s.paused = False
    sched.wake()
    assert sched.run_pass() == [s]
    sched.finished(s)
    assert len(wakes) == 3 and not sched.active


# -- the real server ---------------------------------------------------------------------------------


def _big_cache(n: int, size: int = 600) -> SnapCache:
    rnd = random.Random(3)
    cache = make_cache(0)
    cache.apply([(f"/calico/test/{i:06d}", rnd.randbytes(size // 2).hex().encode(), "1") for i in range(n)])
    return cache


async def test_a_storm_of_snapshots_leaves_followers_streaming(server_factory) -> None:
    """Thirty agents take a 24 MB snapshot at once while one agent follows updates: the follower's updates
    arrive between rounds of snapshot writes, and no pass of the writer runs long."""
    cache = _big_cache(40_000)
    server = await server_factory(cache, snapshot_pass_bytes=256 * 1024)
    delays: list[float] = []

    def on_message(msg: object) -> None:
        if isinstance(msg, Updates) and msg.kvs:
            delays.append(time.time() - int(msg.kvs[0].value or b"0") / 1e9)

    follower = SyncClient([("127.0.0.1", server.port)], "felix", hostname="f", on_message=on_message)
    tasks = [asyncio.create_task(follower.run())]
    await follower.wait_in_sync(20)
    longest = 0.0
    run_pass = server.snapshots.run_pass

    def timed_pass() -> list:
        nonlocal longest
        t0 = time.perf_counter()
        try:
            return run_pass()
        finally:
            longest = max(longest, time.perf_counter() - t0)

    server.snapshots.run_pass = timed_pass  # type: ignore[method-assign]
    storm = [SyncClient([("127.0.0.1", server.port)], "felix", hostname=f"s{i}", decode_kvs=False) for i in range(30)]
    tasks += [asyncio.create_task(c.run()) for c in storm]
    try:
        await wait_for(lambda: server.snapshots.active, 10, "snapshots streaming")
        while not all(c.in_sync for c in storm):
            cache.apply([("/calico/tick", str(time.time_ns()).encode(), "t")])
            await asyncio.sleep(0.01)
            if len(delays) > 400:
                break
        assert all(c.in_sync for c in storm) or len(delays) > 400
        assert len(delays) >= 5 and server.snapshots.passes > 30
        delays.sort()
        # Generous for a shared two-core machine; without pacing a follower waited for whole snapshots.
        assert delays[len(delays) // 2] < 0.25 and delays[-1] < 1.0, delays
        assert longest < 0.5, longest
    finally:
        for c in [follower, *storm]:
            c.stop()
        await asyncio.gather(*tasks, return_exceptions=True)


def _stuck_agent(port: int, name: str) -> socket.socket:
    """An agent that says hello and never reads: its snapshot stream stalls and keeps its place."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", port))
    sock.sendall(encode(ClientHello(name, "felix", compression=())))
    return sock


async def test_reconciling_agents_are_served_before_queued_snapshots(server_factory) -> None:
    a, b = _big_cache(8000), _big_cache(8000)
    b.apply([("/calico/test/000001", b"changed", "2")])
    sa = await server_factory(a)
    sb = await server_factory(b, max_concurrent_snapshots=1)
    movers = [SyncClient([("127.0.0.1", sa.port), ("127.0.0.1", sb.port)], "felix", hostname=f"m{i}") for i in range(3)]
    tasks = [asyncio.create_task(c.run()) for c in movers]
    stuck: list[socket.socket] = []
    try:
        await asyncio.gather(*(c.wait_in_sync(20) for c in movers))
        # Agents that never read take b's one full-snapshot stream and queue behind it...
        stuck = [_stuck_agent(sb.port, f"stuck{i}") for i in range(3)]
        await wait_for(lambda: sb.snapshots.queued == 2, 10, "a queue of full snapshots")
        # ...and the movers from a, reconciling, go ahead of them.
        await sa.shutdown()
        await wait_for(lambda: all(c.stats.reconciles == 1 and c.in_sync for c in movers), 20, "movers reconciled")
        assert sb.snapshots.queued == 2
        for c in movers:
            assert {k: kv.value for k, kv in c.state.items()} == {k: u[1] for k, u in b.items().items()}
    finally:
        for c in movers:
            c.stop()
        for sock in stuck:
            sock.close()
        await asyncio.gather(*tasks, return_exceptions=True)
