"""The fan-out server: accepts agents, sends each a snapshot, then follows the breadcrumb chain.

Design note
-----------
Connections are `asyncio.Protocol` objects, not a task and a StreamWriter each: at thousands of
connections a task's frame and a stream's buffers cost more memory than the connection itself, and a
wake-up per client per update costs more CPU than the write. Instead the cache calls back when it
publishes a breadcrumb, and the server schedules *one* fan-out pass (`call_soon`) per loop iteration:
however many breadcrumbs appeared in the meantime, each caught-up client gets them in one write of
already-encoded bytes (joined once per pass and shared by every client at the same position). That is
the coalescing Typha does for lagging clients, applied always, because one write costs microseconds
while a join of shared bytes costs nanoseconds per KV. Passes are spaced by the fleet's size within
`fanout_latency_budget` (`typha.fanpace`), so each agent gets at most one write per interval and the
writes per second stay bounded however many agents follow.

Each agent is a `typha.syncconn.SyncConnection`; its backpressure (stop writing while the transport
is paused, catch up in joined writes) and what a peer may cost before it proves anything are
described there. A client that stays behind is dropped by the housekeeping pass here: when its
oldest unsent breadcrumb is older than `max_fall_behind` (after a grace period for new connections,
so slow snapshot sends do not cause a reconnect loop), or when a write has been blocked for
`write_timeout`.

Snapshot chunks are encoded lazily by whichever client first needs them; a client that had to encode
a chunk yields to the loop before continuing, so building a large snapshot never stalls the fan-out to
everybody else for more than one chunk's worth of work.

A cache that has never been in sync (typha just started and is still listing) is not served: the
client gets GOODBYE `not-ready` and tries another replica (or this one again after its backoff). A
snapshot of a half-listed cache would make a reconnecting agent delete everything it knows that the
listing has not reached yet, and holding the agent until the listing ends (tens of seconds for a
large cluster) would keep it from a replica that could serve it now. Later dips out of in-sync (the
API server unreachable) are served as usual: the cache then holds the last good state, and the
status travelling with it tells agents how current it is.

Snapshot streams (full ones, and the partial ones that answer a reconcile) are admitted and paced by
`typha.snapsched`: a stream starts while the streams going hold less than `snapshot_buffer_bytes` in
their transport buffers, reconciles before full snapshots, and one writer sends at most
`snapshot_pass_bytes` per pass of the event loop, so a storm of arriving agents is bounded in memory
and the agents already following keep getting their updates between two rounds of snapshot writes.
Later agents wait their turn (kept alive by pings).

This module knows nothing about the datastore: it serves whatever `SnapCache`s it is given.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
import uuid
from collections.abc import Mapping

from protocol import (
    ClientHello,
    Digests,
    GoodbyeCode,
    HandshakeRejected,
    Ping,
    SyncStatus,
    Want,
    encode,
    negotiate,
)
from protocol.summary import bitmap_to_leaves
from protocol.tls import CertReloader

from .config import ServerConfig
from .fanpace import FanoutPacer
from .metrics import ServerMetrics
from .peerbudget import keepable
from .peerguard import PeerGuard
from .snapcache import Breadcrumb, PendingWrite, SnapCache
from .snapsched import SnapshotScheduler
from .syncconn import CLOSED, HANDSHAKE, QUEUED, RECONCILE, SNAPSHOT, STREAMING, SyncConnection
from .tls import server_tls

log = logging.getLogger("typha.server")


class SyncServer:
    """Serves `caches` (syncer type -> cache) to agents over TCP."""

    def __init__(
        self,
        caches: Mapping[str, SnapCache],
        config: ServerConfig | None = None,
        metrics: ServerMetrics | None = None,
        tls: CertReloader | None = None,
    ) -> None:
        """`tls` defaults to the certificates the config names (a file that does not load raises
        common.runtime.StartupError naming its setting); without any, the server is plaintext."""
        self.caches = dict(caches)
        self.config = config or ServerConfig()
        if not self.config.server_id:
            self.config.server_id = uuid.uuid4().hex[:12]
        self.metrics = metrics or ServerMetrics()
        self.guard = PeerGuard(self.config, self.metrics, tls if tls is not None else server_tls(self.config))
        self.connections: set[SyncConnection] = set()
        self._following: dict[str, set[SyncConnection]] = {name: set() for name in self.caches}
        self._fanout_scheduled: dict[str, bool] = dict.fromkeys(self.caches, False)
        self._pacers = {
            name: FanoutPacer(self.config.fanout_latency_budget, self.config.fanout_write_rate) for name in self.caches
        }
        self._fanned = {name: cache.head for name, cache in self.caches.items()}  # the last pass's head
        self._server: asyncio.base_events.Server | None = None
        self._housekeeper: asyncio.Task[None] | None = None
        self.loop: asyncio.AbstractEventLoop = None  # type: ignore[assignment]
        self.shutting_down = False
        self.last_housekeeping = time.monotonic()
        self.rebalance_target: int | None = None
        self._synced_once = {name for name, cache in self.caches.items() if cache.status is SyncStatus.IN_SYNC}
        cfg = self.config
        self.snapshots: SnapshotScheduler[SyncConnection] = SnapshotScheduler(
            cfg.snapshot_buffer_bytes,
            cfg.snapshot_pass_bytes,
            cfg.write_high_water,  # what a stream holds once its agent reads slower than we write
            cfg.max_concurrent_snapshots,
            on_admit=self._admitted,
            on_wake=self._schedule_snapshot_pass,
            on_change=self._snapshot_gauges,
        )
        for name, cache in self.caches.items():
            cache.on_breadcrumb = self._make_notifier(name)

    # -- lifecycle -----------------------------------------------------------------------------------
    async def start(self) -> None:
        self.loop = asyncio.get_running_loop()
        self._fanned = {name: cache.head for name, cache in self.caches.items()}  # what was published before
        self.guard.start()
        self._server = await self.loop.create_server(
            lambda: SyncConnection(self), self.config.host, self.config.port, backlog=4096, reuse_address=True
        )
        self._housekeeper = asyncio.create_task(self._housekeeping(), name="typha-housekeeping")
        log.info("serving syncers %s on %s", sorted(self.caches), self.addresses)

    @property
    def addresses(self) -> list[tuple[str, int]]:
        if self._server is None:
            return []
        return [s.getsockname()[:2] for s in self._server.sockets]

    @property
    def port(self) -> int:
        return self.addresses[0][1]

    @property
    def accepting(self) -> bool:
        return self._server is not None and self._server.is_serving() and not self.shutting_down

    async def shutdown(self, drain_seconds: float = 0.0) -> None:
        """Stop accepting, then close connections one at a time so agents spread over other replicas.

        Closes are spaced ``drain_seconds / connections`` apart, but never more than
        ``shutdown_max_drop_interval`` (Calico's ShutdownConnectionDropIntervalMaxSecs): a replica with
        few agents exits in seconds instead of holding them for the whole grace period.
        """
        self.shutting_down = True
        if self._server is not None:
            self._server.close()
        conns = list(self.connections)
        random.shuffle(conns)
        interval = self.drop_interval(drain_seconds, len(conns))
        log.info(
            "shutting down: closing %d connections, %.2fs apart (%.1fs in all)",
            len(conns),
            interval,
            interval * max(0, len(conns) - 1),
        )
        for i, conn in enumerate(conns):
            if i and interval:
                await asyncio.sleep(interval)
            conn.close(
                GoodbyeCode.SHUTTING_DOWN, "server shutting down; reconnect to another replica", level=logging.INFO
            )
        if self._housekeeper is not None:
            self._housekeeper.cancel()
            try:
                await self._housekeeper
            except asyncio.CancelledError:
                pass
        if self._server is not None:
            await self._server.wait_closed()

    def drop_interval(self, drain_seconds: float, connections: int) -> float:
        """Seconds between two connections closed at shutdown: the drain spread evenly, capped."""
        if connections <= 1:
            return 0.0
        return min(drain_seconds / connections, self.config.shutdown_max_drop_interval)

    # -- connection bookkeeping ----------------------------------------------------------------------
    def _connection_made(self, conn: SyncConnection) -> None:
        self.metrics.accepted.inc()
        self.connections.add(conn)
        self.metrics.active.set(len(self.connections))
        self.guard.admit(conn)  # the handshake budget, not max_connections, until its hello
        if conn.state == CLOSED:
            return
        conn.handshake_timer = self.loop.call_later(self.config.handshake_timeout, self._handshake_expired, conn)

    def _connection_lost(self, conn: SyncConnection) -> None:
        self.connections.discard(conn)
        self.guard.gone(conn)
        self._snapshot_slot_freed(conn)  # a stream, or a place in the queue
        if conn.syncer and conn in self._following.get(conn.syncer, ()):
            self._following[conn.syncer].discard(conn)
            self.metrics.streaming.dec()
        self.metrics.active.set(len(self.connections))

    def _is_gone(self, conn: SyncConnection) -> bool:
        return conn not in self.connections

    @property
    def agents(self) -> int:
        """Connections past their hello (the ones `max_connections` counts)."""
        return len(self.connections) - len(self.guard.handshakes)

    def _handshake_expired(self, conn: SyncConnection) -> None:
        if conn.state == HANDSHAKE:
            label = self.guard.expired_label(conn)
            conn.close(GoodbyeCode.HANDSHAKE_TIMEOUT, f"no hello within {self.config.handshake_timeout}s", label=label)

    def _handshake(self, conn: SyncConnection, hello: ClientHello) -> None:
        if conn.handshake_timer is not None:
            conn.handshake_timer.cancel()
            conn.handshake_timer = None
        if not self.guard.hello_received(conn, self.agents):  # conn itself still counts as handshaking
            return
        cache = self.caches.get(hello.syncer_type)
        resume_from = None
        if cache is not None and hello.resume_epoch and hello.resume_epoch == cache.epoch:
            resume_from = cache.find(hello.resume_seq)
        reconcile = self.config.reconcile and resume_from is None and bool(hello.summary)
        try:
            # Pings go out on housekeeping passes, so never promise them more often than those run.
            interval = max(self.config.ping_interval, self.config.housekeeping_interval)
            server_hello = negotiate(
                hello,
                self.caches.keys(),
                self.config.compression,
                self.config.server_id,
                interval,
                epoch=cache.epoch if cache is not None else "",
                resumed=resume_from is not None,
                reconcile=reconcile,
            )
        except HandshakeRejected as exc:
            conn.close(exc.code, str(exc))
            return
        if hello.syncer_type not in self._synced_once:
            conn.close(
                GoodbyeCode.NOT_READY,
                f"the {hello.syncer_type} cache has not synced with the datastore yet",
                level=logging.INFO,
            )
            return
        assert cache is not None
        conn.hello = keepable(hello)
        conn.syncer = hello.syncer_type
        conn.cache = cache
        conn._write(encode(server_hello))
        if resume_from is not None:
            # The agent already holds the state up to resume_from: continue from there, no snapshot.
            self.metrics.resumed.inc()
            conn.last = resume_from
            conn.state = STREAMING
            self._start_following(conn)
            conn.pump()
            return
        conn.compressed = server_hello.compression is not None
        if server_hello.reconcile:
            self._send_digests(conn, cache, hello.summary)
            return
        self._begin_snapshot(conn)

    # -- reconcile (docs/protocol.md 12.2) -----------------------------------------------------------
    def _send_digests(self, conn: SyncConnection, cache: SnapCache, their_tops: bytes) -> None:
        """Answer a summary with our leaf digests under the tops that differ; the agent's WANT follows."""
        tops, leaf_digests = cache.reconcile_digests(their_tops)
        conn.last = cache.head  # the agent continues from here: breadcrumbs after it come before the contents
        conn.state = RECONCILE
        conn.proto.expect_want()
        conn._write(encode(Digests(cache.head.seq, tuple(tops), leaf_digests)))
        self.metrics.reconcile_tops.observe(len(tops))
        conn.handshake_timer = self.loop.call_later(self.config.handshake_timeout, self._want_expired, conn)

    def _want_expired(self, conn: SyncConnection) -> None:
        if conn.state == RECONCILE:
            conn.close(GoodbyeCode.HANDSHAKE_TIMEOUT, f"no WANT within {self.config.handshake_timeout}s of DIGESTS")

    def _want(self, conn: SyncConnection, want: Want) -> None:
        """The agent named the leaves it lacks: catch it up to the head, then send their contents."""
        if conn.handshake_timer is not None:
            conn.handshake_timer.cancel()
            conn.handshake_timer = None
        assert conn.cache is not None and conn.state == RECONCILE  # ServerConnection allows one WANT, after DIGESTS
        conn.wanted = bitmap_to_leaves(want.leaves)
        self.metrics.reconciled.inc()
        self.metrics.reconcile_leaves.observe(len(conn.wanted))
        conn.state = QUEUED
        if self.snapshots.submit(conn, partial=True):
            self._admitted(conn, True)

    # -- snapshot streams (typha.snapsched) ----------------------------------------------------------
    def _begin_snapshot(self, conn: SyncConnection) -> None:
        conn.state = QUEUED
        if self.snapshots.submit(conn, partial=False):
            self._admitted(conn, False)

    def _admitted(self, conn: SyncConnection, partial: bool) -> None:
        """The scheduler lets `conn` stream: its snapshot (or a reconcile's partial one) is taken now."""
        if conn.state != QUEUED or conn.cache is None:
            return
        if partial:
            conn.snapshot = conn.cache.partial_snapshot(conn.wanted, conn.compressed)
            conn.wanted = []
        else:
            conn.snapshot = conn.cache.snapshot(conn.compressed)
        conn.snapshot_started = time.monotonic()
        conn.chunk = 0
        conn.state = SNAPSHOT

    def _schedule_snapshot_pass(self, delay: float) -> None:
        if delay > 0:
            self.loop.call_later(delay, self._snapshot_pass)
        else:
            self.loop.call_soon(self._snapshot_pass)

    def _snapshot_pass(self) -> None:
        held_back = self.snapshots.held_back
        done = self.snapshots.run_pass()
        if self.snapshots.held_back != held_back:
            self.metrics.snapshot_held_back.inc()
        for conn in done:
            if conn.state == SNAPSHOT and conn.snapshot is not None:
                conn._snapshot_done(conn.snapshot)
            else:
                self._snapshot_slot_freed(conn)

    def _snapshot_slot_freed(self, conn: SyncConnection) -> None:
        self.snapshots.finished(conn)

    def _snapshot_gauges(self, sched: SnapshotScheduler[SyncConnection]) -> None:
        self.metrics.snapshots_queued.set(sched.queued)
        self.metrics.snapshot_streams.set(len(sched.active))

    def _start_following(self, conn: SyncConnection) -> None:
        self._following[conn.syncer].add(conn)
        self.metrics.streaming.inc()

    # -- fan-out -------------------------------------------------------------------------------------
    def _make_notifier(self, syncer: str):
        pacer = self._pacers[syncer]
        following = self._following[syncer]

        def notify(bc: Breadcrumb) -> None:
            if bc.status is SyncStatus.IN_SYNC:
                self._synced_once.add(syncer)
            if not self._fanout_scheduled[syncer] and self.loop is not None:
                self._fanout_scheduled[syncer] = True
                delay = pacer.delay(time.monotonic(), len(following))
                if delay > 0:
                    self.loop.call_later(delay, self._fan_out, syncer)
                else:
                    self.loop.call_soon(self._fan_out, syncer)

        return notify

    def _fan_out(self, syncer: str) -> None:
        """One pass: every following agent ready to write gets what was published since the last pass."""
        self._fanout_scheduled[syncer] = False
        pacer = self._pacers[syncer]
        pacer.started(time.monotonic())
        metrics = self.metrics
        metrics.fanout_passes.inc()
        head = self.caches[syncer].head
        bc = self._fanned[syncer].next
        if bc is not None:
            metrics.next_breadcrumb_latency.observe(max(0.0, (time.time_ns() - bc.created_ns) / 1e9))
        joined: dict[int, PendingWrite] = {}
        for conn in list(self._following[syncer]):
            if not conn.paused:
                conn.pump(joined)
        # Typha's own latency per breadcrumb, to its last write in this pass (typha_fanout_latency_seconds).
        now_ns = time.time_ns()
        while bc is not None and self._following[syncer]:
            metrics.fanout_latency.observe(max(0.0, (now_ns - bc.created_ns) / 1e9))
            bc = None if bc is head else bc.next
        self._fanned[syncer] = head
        pacer.ended(time.monotonic())

    # -- housekeeping --------------------------------------------------------------------------------
    async def _housekeeping(self) -> None:
        while True:
            await asyncio.sleep(self.config.housekeeping_interval)
            try:
                self.housekeep()
            except Exception:  # never let a bug here stop keepalives for everyone
                log.exception("housekeeping pass failed")

    def housekeep(self) -> None:
        """Pings, ping timeouts, slow and blocked clients, rebalancing. Runs once a second."""
        cfg = self.config
        now = time.monotonic()
        now_ns = time.time_ns()
        self.last_housekeeping = now
        for conn in list(self.connections):
            if conn.state in (HANDSHAKE, CLOSED):
                continue
            if conn.paused and now - conn.paused_since > cfg.write_timeout:
                conn.close(GoodbyeCode.TOO_SLOW, f"write blocked for over {cfg.write_timeout}s")
                continue
            if conn.ping_sent_at:
                if now - conn.ping_sent_at > cfg.ping_timeout:
                    conn.close(GoodbyeCode.PING_TIMEOUT, f"no pong within {cfg.ping_timeout}s")
                    continue
            elif not conn.paused and now - conn.last_ping_at >= cfg.ping_interval:
                conn.ping_ns = now_ns
                conn.ping_sent_at = conn.last_ping_at = now
                conn._write(encode(Ping(now_ns)))
            if now - conn.connected_at > cfg.new_client_grace:
                behind = self._behind_seconds(conn, now_ns)
                if behind > cfg.max_fall_behind:
                    conn.close(GoodbyeCode.TOO_SLOW, f"{behind:.0f}s behind (limit {cfg.max_fall_behind}s)")
        self.guard.housekeep(now, self.snapshots)
        target = self.rebalance_target
        if target is not None and len(self.connections) > target:
            # Count only connections still open: one closed by the last pass stays in the set until its
            # transport reports it lost, and counting it would shed a second agent for the same excess.
            live = [c for c in self.connections if c.state is not CLOSED]
            if len(live) > target:
                victim = random.choice(live)
                victim.close(GoodbyeCode.REBALANCE, f"shedding load: {len(live)} connections > target {target}")

    @staticmethod
    def _behind_seconds(conn: SyncConnection, now_ns: int) -> float:
        if conn.state == SNAPSHOT and conn.snapshot is not None:
            oldest = conn.snapshot.breadcrumb.next
        elif conn.last is not None:
            oldest = conn.last.next
        else:
            return 0.0
        return 0.0 if oldest is None else (now_ns - oldest.created_ns) / 1e9
