"""One agent's connection to the fan-out server: its protocol callbacks, writes, snapshot steps, close.

Design note
-----------
A connection is an `asyncio.Protocol`, not a task with a StreamWriter: at thousands of connections a
task's frame and a stream's buffers cost more memory than the connection itself. It decides what it
can alone (decoding a frame, answering a PING, writing what the transport will take) and hands
everything that involves other connections or the caches to its `SyncServer` (typha.syncserver):
handshakes, admission to a snapshot stream, fan-out passes, housekeeping.

Backpressure is the transport's own: when a client's socket buffer passes the high-water mark the
transport calls `pause_writing` and we simply stop writing to it. The client keeps its pointer into the
chain; when `resume_writing` arrives it catches up in large joined writes. Buffered bytes per client
are therefore bounded by the high-water mark plus one write; a client that stays behind for too long
is dropped by the server's housekeeping pass.

A peer that has proved nothing costs a bounded amount (`peerbudget`): connections still in their
handshake (TLS and hello) have a budget of their own, oldest closed first, and do not count toward
`max_connections`; frames are small until the hello and tiny after it, and checked by type before
they are decoded; a peer that sends more than a hello and a trickle of PONGs is closed; a connection
whose writes are paused is not read from (so a PING flood from a peer that never reads queues no
PONGs) and its kernel send buffer is capped; a snapshot stream that makes no progress for
`snapshot_stall_timeout` gives its slot up; and client-supplied text is escaped and truncated before it
is logged, with log lines about peers rate-limited. With TLS configured (`typha.tls`), every
connection is mutual TLS from its first byte, its record layer run by the connection itself.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, cast

from protocol import (
    ClientHello,
    ConnState,
    Goodbye,
    GoodbyeCode,
    Ping,
    Pong,
    ProtocolError,
    ServerConnection,
    Want,
    encode,
)

from .peerbudget import InboundBudget, printable
from .snapcache import Breadcrumb, PendingWrite, SnapCache, Snapshot, collect_pending
from .tls import TLSSession

if TYPE_CHECKING:
    from .syncserver import SyncServer

__all__ = ["CLOSED", "HANDSHAKE", "QUEUED", "RECONCILE", "SNAPSHOT", "STREAMING", "SyncConnection"]

# The connection phases (protocol.ConnState), bound to module names: the fan-out tests every
# connection's phase on every pass, and a module global costs ~10 ns where an Enum class attribute
# costs ~140 ns (Python 3.11).
HANDSHAKE, QUEUED, RECONCILE, SNAPSHOT, STREAMING, CLOSED = (
    ConnState.HANDSHAKE,
    ConnState.QUEUED,
    ConnState.RECONCILE,
    ConnState.SNAPSHOT,
    ConnState.STREAMING,
    ConnState.CLOSED,
)


class SyncConnection(asyncio.Protocol):
    """One agent's connection. All decisions about it are made here or by the server's passes."""

    __slots__ = (
        "__weakref__",
        "bytes_sent",
        "cache",
        "chunk",
        "close_reason",
        "compressed",
        "connected_at",
        "first_data",
        "handshake_timer",
        "hello",
        "inbound",
        "last",
        "last_ping_at",
        "paused",
        "paused_since",
        "peer",
        "ping_ns",
        "ping_sent_at",
        "pings",
        "proto",
        "server",
        "snapshot",
        "snapshot_started",
        "state",
        "syncer",
        "tls",
        "transport",
        "wanted",
    )

    def __init__(self, server: SyncServer) -> None:
        self.server = server
        self.transport: asyncio.Transport | None = None
        self.peer = "?"
        self.state = HANDSHAKE
        cfg = server.config
        self.proto = ServerConnection(cfg.max_frame, cfg.max_hello_frame)
        self.syncer = ""
        self.cache: SnapCache | None = None
        self.hello: ClientHello | None = None
        self.snapshot: Snapshot | None = None
        self.chunk = 0
        self.last: Breadcrumb | None = None
        self.paused = False
        self.paused_since = 0.0
        self.connected_at = time.monotonic()
        self.snapshot_started = 0.0
        self.ping_sent_at = 0.0  # monotonic time of the unanswered ping, 0 when none is outstanding
        self.ping_ns = 0
        self.last_ping_at = self.connected_at
        self.handshake_timer: asyncio.TimerHandle | None = None
        self.close_reason = ""
        self.bytes_sent = 0
        self.compressed = False
        self.tls: TLSSession | None = None
        # Until its hello a peer may send a TLS handshake and a hello; `PeerGuard` tightens this after.
        self.inbound = InboundBudget(
            cfg.max_hello_frame + cfg.inbound_handshake_slack, cfg.inbound_rate, self.connected_at
        )
        self.first_data = True
        self.pings: InboundBudget | None = None  # PINGs it may send; set at its hello
        self.wanted: list[int] = []  # a reconcile's WANT, until its partial snapshot is taken

    def __repr__(self) -> str:
        # Hostname and syncer come from the client: escaped and truncated, so they cannot forge log lines.
        who = printable(self.hello.hostname) if self.hello else "?"
        return f"<conn {self.peer} host={who} syncer={printable(self.syncer) or '?'}>"

    # -- asyncio callbacks ---------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport = cast(asyncio.Transport, transport)
        peer = transport.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)
        transport.set_write_buffer_limits(high=self.server.config.write_high_water)
        self.server._connection_made(self)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.handshake_timer is not None:
            self.handshake_timer.cancel()
        self.server._connection_lost(self)
        self.state = CLOSED
        self.snapshot = None
        self.last = None

    def pause_writing(self) -> None:
        self.paused = True
        self.paused_since = time.monotonic()
        # A peer that does not read is not read from either: nothing it sends can queue replies.
        if self.transport is not None:
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        self.paused = False
        transport = self.transport
        if transport is not None and not transport.is_closing():
            transport.resume_reading()
        self.pump()

    def data_received(self, data: bytes) -> None:
        if self.state == CLOSED:
            return
        server = self.server
        plain = server.guard.receive(self, data)  # budget, transport check, TLS: plaintext or None
        if not plain:
            return
        data = plain
        try:
            messages = self.proto.receive_data(data)
        except ProtocolError as exc:
            self.close(exc.code, str(exc))
            return
        for msg in messages:
            if self.state == CLOSED:
                return
            if isinstance(msg, ClientHello):
                self.server._handshake(self, msg)
            elif isinstance(msg, Pong):
                if self.ping_sent_at and msg.timestamp_ns == self.ping_ns:
                    self.server.metrics.ping_latency.observe(time.monotonic() - self.ping_sent_at)
                    self.ping_sent_at = 0.0
            elif isinstance(msg, Ping):
                if not server.guard.ping_allowed(self):
                    return
                if not self.paused:  # a pong it will not read is not worth queueing
                    self._write(encode(Pong(msg.timestamp_ns)))
            elif isinstance(msg, Want):
                self.server._want(self, msg)
            elif isinstance(msg, Goodbye):
                server.guard.log_peer(
                    logging.INFO,
                    "goodbye",
                    "%r said goodbye: %s %s",
                    self,
                    printable(msg.code),
                    printable(msg.reason, 200),
                )
                self.close(GoodbyeCode.CLIENT_CLOSING, "", send=False, count=False)

    def eof_received(self) -> bool:
        return False  # close our side too

    # -- writing -------------------------------------------------------------------------------------
    def _write(self, data: bytes) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        t0 = time.perf_counter()
        if self.tls is not None:
            data = self.tls.encrypt(data)  # the plaintext is shared by every agent; the records are ours
        transport.write(data)
        self.server.metrics.write_latency.observe(time.perf_counter() - t0)
        self.bytes_sent += len(data)
        self.server.metrics.bytes_sent.inc(len(data))

    def _send_raw(self, data: bytes) -> None:
        """Bytes for the socket as they are (TLS handshake records, alerts)."""
        transport = self.transport
        if transport is not None and not transport.is_closing():
            transport.write(data)

    def pump(self, joined: dict[int, PendingWrite] | None = None) -> None:
        """Write what the transport will take: pending breadcrumbs now; snapshot chunks through the
        scheduler's writer (typha.snapsched), which paces them with everyone else's."""
        if self.state == SNAPSHOT:
            self.server.snapshots.wake()
        elif self.state == STREAMING and not self.paused:
            self._pump_breadcrumbs(joined)

    # -- snapshot streaming (typha.snapsched.SnapshotStream) -----------------------------------------
    def buffered_bytes(self) -> int:
        transport = self.transport
        return transport.get_write_buffer_size() if transport is not None else 0

    def write_snapshot_step(self, max_bytes: int) -> tuple[int, bool, bool]:
        """One step of this connection's snapshot: (bytes written, encoded a fresh chunk, complete).

        A reconcile's agent is at the seq of its DIGESTS: the breadcrumbs up to the partial snapshot's seq
        go first (docs/protocol.md 12.2). A full snapshot's agent has no position (`last` is None)."""
        snap = self.snapshot
        if self.state != SNAPSHOT or snap is None:
            return 0, False, True  # closed meanwhile: nothing more to write
        wrote = 0
        while self.last is not None and self.last is not snap.breadcrumb:
            if self.paused or wrote >= max_bytes:
                return wrote, False, False
            pending = collect_pending(self.last, max_bytes - wrote, until=snap.breadcrumb)
            assert pending is not None
            self._write(pending.data)
            wrote += len(pending.data)
            self.last = pending.last
        fresh = self.chunk >= len(snap.chunks)
        data = snap.chunk(self.chunk)
        if data is not None:
            self.chunk += 1
            self._write(data)
            wrote += len(data)
        return wrote, fresh and data is not None, snap.complete and self.chunk >= len(snap.chunks)

    def _snapshot_done(self, snap: Snapshot) -> None:
        self.server.metrics.snapshot_send.observe(time.monotonic() - self.snapshot_started)
        self.snapshot = None
        self.last = snap.breadcrumb
        self.state = STREAMING
        self.server._start_following(self)
        self.server._snapshot_slot_freed(self)
        if not self.paused:
            self._pump_breadcrumbs(None)  # what was published while the snapshot streamed

    def _pump_breadcrumbs(self, joined: dict[int, PendingWrite] | None) -> None:
        metrics = self.server.metrics
        max_bytes = self.server.config.max_write_bytes
        while not self.paused:
            last = self.last
            assert last is not None
            if last.next is None:
                return
            pending = joined.get(id(last)) if joined is not None else None
            if pending is None:
                pending = collect_pending(last, max_bytes)
                assert pending is not None
                if joined is not None:
                    joined[id(last)] = pending
            self._write(pending.data)
            self.last = pending.last
            metrics.client_latency.observe(max(0.0, (time.time_ns() - pending.oldest_created_ns) / 1e9))
            metrics.kvs_per_msg.observe(pending.kvs)

    # -- closing -------------------------------------------------------------------------------------
    def close(
        self,
        code: str,
        reason: str,
        send: bool = True,
        count: bool = True,
        level: int = logging.WARNING,
        label: str = "",
    ) -> None:
        """Say goodbye (if the socket can take it) and close; abort if the peer will not drain.

        `label` names the reason in typha_connections_dropped when it is finer than the GOODBYE code."""
        if self.state == CLOSED or self.transport is None:
            return
        server = self.server
        if count:
            server.metrics.dropped.labels(label or code).inc()
            server.guard.log_peer(level, label or code, "closing %r: %s: %s", self, code, printable(reason, 200))
        self.close_reason = code
        self.state = CLOSED
        server.guard.gone(self)
        if self.handshake_timer is not None:
            self.handshake_timer.cancel()
            self.handshake_timer = None
        self.snapshot = None  # a closed connection holds nothing but its socket until the socket is gone
        transport = self.transport
        if self.paused:
            transport.abort()  # its buffer is full already: a goodbye would never arrive
            return
        if server.guard.serving_tls and (self.tls is None or not self.tls.handshake_done):
            send = False  # no TLS session to carry it
        if send:
            self._write(encode(Goodbye(code, reason[:1024])))
        transport.close()
        # In the timer slot, so connection_lost cancels it: a closed connection must not be kept alive
        # (with its buffers) for close_timeout after its socket is gone.
        self.handshake_timer = server.loop.call_later(server.config.close_timeout, self._abort_if_open)

    def _abort_if_open(self) -> None:
        if self.transport is not None and not self.server._is_gone(self):
            self.transport.abort()
