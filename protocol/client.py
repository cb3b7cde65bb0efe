"""The asyncio client library: follow a Typha server, keep the view, survive reconnects.

Design note
-----------
`SyncClient` is a thin asyncio shell around the sans-I/O `ClientConnection`: a Protocol feeds it
bytes, and the client applies the validated messages to its view and reports changes through
callbacks. Felix and the load test both use it, the load test in "cheap" mode (`decode_kvs=False`),
where only frame headers are read and sequence continuity is still enforced.

Reconnects are where naive clients go wrong. A reconnect first asks to *resume*: the client names the
cache epoch and the last seq it applied, and a server that still holds that point of the same cache
sends only the breadcrumbs missed since (docs/protocol.md 12.1); the view is then already right and
the stream simply continues. Otherwise (another replica, a restarted typha, a seq outside the resume
window) the client offers the *summary* of its view instead (protocol.summary), and a server that
speaks the reconcile extension sends only the contents of the buckets that differ (12.2); an older
server sends a full snapshot. The client keeps its old view while a snapshot streams in, reports only
keys whose value actually differs, and when the final chunk arrives reports a deletion for every key
the new snapshot lacks. Either way the caller sees exactly the difference between its old view and
the server's, never a flood of unchanged keys and never a stale key left behind (protocol.view does
the bookkeeping).

A client that does not decode values (the load test's cheap agents) holds no view to summarise; it
may be given a `summary_source` that returns the summary of the state at a given epoch and seq, which
every client that followed that stream holds (the load test keeps one per stream and per process).

`stop()` must end `run()` wherever it is waiting: on a live stream (goodbye and close), in a dial
(address lookup or TCP connect, abandoned) or in the backoff before the next dial (cut short). The
dial therefore races a stop event instead of being awaited alone, so an agent exits within a moment of
SIGTERM whether or not typha is reachable.

A connection that goes quiet for `read_timeout` (3 x the server's ping interval unless set) is
dropped and redialled: the server pings every interval, so silence means a black-holed connection.

With `tls` (a `protocol.tls.CertReloader`) every dial is mutual TLS, and nothing else: the server's
certificate must be signed by the CA *and* name the expected CN or URI SAN before the hello is sent,
so a client configured for TLS never gives its view's requests to, or takes routes from, a server it
could not authenticate. The files are re-checked before each dial, so a rotated certificate is used
from the next connection on.
"""

from __future__ import annotations

import asyncio
import logging
import random
import socket
import ssl
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, cast

from .connection import ClientConnection, ConnState
from .errors import ProtocolError
from .framing import DEFAULT_MAX_SERVER_FRAME
from .messages import (
    KV,
    ClientHello,
    Digests,
    Goodbye,
    GoodbyeCode,
    Message,
    Ping,
    ServerHello,
    SnapshotChunk,
    SyncStatus,
    SyncStatusChange,
    Updates,
)
from .summary import SUMMARY_VERSION, StateSummary, leaves_to_bitmap
from .tls import FAILED, RELOADED, CertReloader
from .view import View

log = logging.getLogger("protocol.client")

#: How a refused TLS peer is reported (`SyncClient.stats.last_error`, the log): its certificate failed
#: our checks (CA, validity, identity), or the handshake itself failed (a plaintext server, an alert).
TLS_REJECTED = "typha's TLS certificate rejected"
TLS_FAILED = "TLS handshake failed"

Address = tuple[str, int]
AddressSource = Sequence[Address] | Callable[[], Awaitable[Sequence[Address]]]
#: (epoch, seq) of the stream a cheap client followed -> the summary of that state, if known.
SummarySource = Callable[[str, int], StateSummary | None]


@dataclass(slots=True)
class ClientStats:
    connects: int = 0
    disconnects: int = 0
    snapshots: int = 0
    frames: int = 0
    kvs_received: int = 0
    bytes_received: int = 0
    updates_reported: int = 0
    deletes_synthesized: int = 0
    resumes: int = 0  # reconnects that continued the old stream instead of taking a snapshot
    reconciles: int = 0  # reconnects that received only the buckets that differed (completed)
    leaves_wanted: int = 0  # leaves asked for over all reconciles
    last_error: str = ""


class _StreamProtocol(asyncio.Protocol):
    """Feeds bytes from one TCP connection into the client; reports the end through `done`."""

    def __init__(self, client: SyncClient, conn: ClientConnection) -> None:
        self.client = client
        self.conn = conn
        self.transport: asyncio.Transport | None = None
        self.done: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self.last_data = time.monotonic()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport = cast(asyncio.Transport, transport)
        tls = self.client.tls
        if tls is not None:
            problem = tls.identity_problem(transport.get_extra_info("peercert"))
            if problem is not None:
                # Not the server we were told to trust: say nothing to it, not even a goodbye.
                self.finish(f"{TLS_REJECTED}: {problem}")
                return
        transport.write(self.conn.initiate())

    def data_received(self, data: bytes) -> None:
        self.last_data = time.monotonic()
        try:
            messages = self.conn.receive_data(data)
            for msg in messages:
                self.client._handle(self, msg)
        except ProtocolError as exc:
            self.finish(f"protocol error from server: {exc}", goodbye=exc.code)
        except Exception as exc:  # a callback blew up: do not leave a half-applied stream running
            log.exception("error handling server message")
            self.finish(f"client error: {exc!r}", goodbye=GoodbyeCode.PROTOCOL_ERROR)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            self.done.set_result(f"connection lost: {exc}" if exc else "connection closed by server")

    def send(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def finish(self, reason: str, goodbye: str | None = None) -> None:
        if goodbye is not None:
            self.send(self.conn.goodbye(goodbye, reason))
        if self.transport is not None:
            self.transport.close()
        if not self.done.done():
            self.done.set_result(reason)


class SyncClient:
    """Follows one syncer type on a Typha server, reconnecting (to the next address) as needed."""

    def __init__(
        self,
        addresses: AddressSource,
        syncer_type: str,
        *,
        hostname: str | None = None,
        info: str = "",
        on_updates: Callable[[list[KV]], None] | None = None,
        on_status: Callable[[SyncStatus], None] | None = None,
        on_connection: Callable[[bool, str], None] | None = None,
        on_message: Callable[[Message], None] | None = None,
        compression: bool = True,
        decode_kvs: bool = True,
        connect_timeout: float = 10.0,
        read_timeout: float | None = None,
        backoff_initial: float = 0.1,
        backoff_max: float = 10.0,
        max_frame: int = DEFAULT_MAX_SERVER_FRAME,
        resume: bool = True,
        reconcile: bool = True,
        summary_source: SummarySource | None = None,
        tls: CertReloader | None = None,
    ) -> None:
        self._addresses = addresses
        self.tls = tls
        self.resume = resume
        self.reconcile = reconcile  # offer our view's summary to a server that cannot resume our stream
        self.summary_source = summary_source
        self.syncer_type = syncer_type
        self.hostname = hostname or socket.gethostname()
        self.info = info
        self.on_updates = on_updates
        self.on_status = on_status
        self.on_connection = on_connection
        self.on_message = on_message
        self.compression = compression
        self.decode_kvs = decode_kvs
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self.max_frame = max_frame
        self.view = View(summarize=decode_kvs and reconcile)
        self.status = SyncStatus.UNKNOWN
        self.seq = 0
        self.server_id = ""
        self.connected_to: Address | None = None
        self.stats = ClientStats()
        self._summary: StateSummary | None = None  # what the current connection offered (reconcile)
        self._synced = asyncio.Event()  # snapshot complete and status in-sync
        self._streaming = asyncio.Event()  # snapshot complete on the current connection
        self._stopping = False
        self._stop_requested = asyncio.Event()  # wakes a dial or a backoff sleep in flight
        self._proto: _StreamProtocol | None = None
        self._address_index = 0
        self._epoch = ""  # epoch of the cache our view (up to self.seq) came from; "" = not resumable
        self._pending_epoch = ""

    # -- public API ----------------------------------------------------------------------------------
    @property
    def state(self) -> dict[str, KV]:
        """The view: key -> KV (read it; it changes under the callbacks)."""
        return self.view.state

    @state.setter
    def state(self, kvs: dict[str, KV]) -> None:
        """Start from a view held from before (a restarted agent's, or a test's)."""
        self.view.replace(kvs)

    @property
    def bytes_received(self) -> int:
        """Bytes received over all connections, including the current one."""
        live = self._proto.conn.bytes_received if self._proto is not None else 0
        return self.stats.bytes_received + live

    @property
    def in_sync(self) -> bool:
        return self._synced.is_set()

    async def wait_in_sync(self, timeout: float | None = None) -> None:
        await asyncio.wait_for(self._synced.wait(), timeout)

    async def wait_streaming(self, timeout: float | None = None) -> None:
        await asyncio.wait_for(self._streaming.wait(), timeout)

    def stop(self) -> None:
        """Make `run()` return promptly, wherever it is: following (the connection is closed with a
        goodbye), dialling (the dial is abandoned) or waiting to redial (the backoff is cut short)."""
        self._stopping = True
        self._stop_requested.set()
        if self._proto is not None:
            self._proto.finish("client stopping", goodbye=GoodbyeCode.CLIENT_CLOSING)

    def disconnect(self, reason: str = "disconnect requested") -> None:
        """Drop the current connection; `run()` reconnects (tests and rebalancing use this)."""
        if self._proto is not None:
            self._proto.finish(reason, goodbye=GoodbyeCode.CLIENT_CLOSING)

    async def run(self) -> None:
        """Connect, follow, and reconnect with jittered exponential backoff until `stop()`."""
        attempt = 0
        warned = ""  # the last TLS refusal logged as a warning
        while not self._stopping:
            connects = self.stats.connects
            reason = await self._connect_once()
            if self._stopping:
                break
            self.stats.disconnects += 1
            self.stats.last_error = reason
            if self.on_connection is not None and self.stats.connects > connects:
                self.on_connection(False, reason)
            if self._streaming.is_set():
                attempt = 0  # we had a healthy stream: retry promptly
            self._streaming.clear()
            self._synced.clear()  # the view may be stale until the next snapshot completes
            delay = random.uniform(0, min(self.backoff_max, self.backoff_initial * (2**attempt)))
            attempt += 1
            # A server we cannot authenticate is worth one warning; the same refusal again is routine.
            refused = reason.startswith((TLS_REJECTED, TLS_FAILED))
            level = logging.WARNING if refused and reason != warned else logging.INFO
            warned = reason if refused else ""
            log.log(level, "%s: disconnected (%s); reconnecting in %.2fs", self.hostname, reason, delay)
            try:
                await asyncio.wait_for(self._stop_requested.wait(), delay)
            except TimeoutError:
                pass

    # -- one connection ------------------------------------------------------------------------------
    async def _next_address(self) -> Address:
        source = self._addresses
        addrs = list(await source()) if callable(source) else list(source)
        if not addrs:
            raise OSError("no typha addresses known")
        addr = addrs[self._address_index % len(addrs)]
        self._address_index += 1
        return addr

    @property
    def epoch(self) -> str:
        """The epoch of the cache our view (up to `seq`) came from; "" while we hold no complete view."""
        return self._epoch

    def _offer_summary(self) -> StateSummary | None:
        """The summary to offer in the next hello: our own view's, or (cheap mode) that of the stream we
        followed; None if there is nothing worth reconciling (an empty view takes a plain snapshot)."""
        if not self.reconcile:
            return None
        if self.view.summary is not None:
            return self.view.summary.copy() if self.view.state else None
        if self.summary_source is not None and self._epoch:
            return self.summary_source(self._epoch, self.seq)
        return None

    async def _connect_once(self) -> str:
        self._summary = summary = self._offer_summary()
        hello = ClientHello(
            hostname=self.hostname,
            syncer_type=self.syncer_type,
            info=self.info,
            compression=("zstd",) if self.compression else (),
            connection_id=uuid.uuid4().hex,
            # Ask to continue where the last stream left off; the server decides if it can.
            resume_epoch=self._epoch if self.resume else "",
            resume_seq=self.seq if self.resume and self._epoch else 0,
            summary=summary.top_digests() if summary is not None else b"",
            summary_version=SUMMARY_VERSION if summary is not None else 0,
        )
        conn = ClientConnection(hello, self.max_frame, self.decode_kvs)
        # The dial (address lookup, TCP connect) races stop(): a stop must never wait for a dial to end.
        dial = asyncio.ensure_future(self._dial(conn))
        stop = asyncio.ensure_future(self._stop_requested.wait())
        waiters: tuple[asyncio.Future[Any], ...] = (dial, stop)
        done: set[asyncio.Future[Any]] = set()
        try:
            done, _ = await asyncio.wait(waiters, timeout=self.connect_timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop.cancel()
            if dial not in done:
                dial.cancel()  # timed out, stopped, or run() itself cancelled: _dial closes what it opened
        if dial not in done:
            return "stopped while connecting" if self._stopping else f"connect timed out after {self.connect_timeout}s"
        if (exc := dial.exception()) is not None:
            if isinstance(exc, ssl.SSLCertVerificationError):
                return f"{TLS_REJECTED}: {exc.verify_message}"
            if isinstance(exc, ssl.SSLError):
                return f"{TLS_FAILED}: {exc.reason or exc}"
            if isinstance(exc, (ConnectionResetError, ConnectionAbortedError)) and self.tls is not None:
                return f"{TLS_FAILED}: the server closed the connection ({exc!r}; is it serving TLS?)"
            if isinstance(exc, OSError):
                return f"connect failed: {exc!r}"
            raise exc
        host, port, transport, proto = dial.result()
        if self._stopping:  # stop() came while the dial was completing: it had no connection to close yet
            proto.finish("client stopping", goodbye=GoodbyeCode.CLIENT_CLOSING)
            return "stopped while connecting"
        self._proto = proto
        self.connected_to = (host, port)
        self.stats.connects += 1
        if self.on_connection is not None:
            self.on_connection(True, f"{host}:{port}")
        watchdog = asyncio.ensure_future(self._watch_reads(proto, conn))
        try:
            return await proto.done
        finally:
            watchdog.cancel()
            transport.close()
            self.stats.bytes_received += conn.bytes_received
            self._proto = None
            self.connected_to = None

    async def _dial(self, conn: ClientConnection) -> tuple[str, int, asyncio.Transport, _StreamProtocol]:
        host, port = await self._next_address()
        loop = asyncio.get_running_loop()
        made: list[_StreamProtocol] = []

        def factory() -> _StreamProtocol:
            made.append(_StreamProtocol(self, conn))
            return made[-1]

        ssl_context = None
        if self.tls is not None:
            outcome = self.tls.check()
            if outcome == RELOADED:
                log.info("%s: TLS certificate files changed: reloaded", self.hostname)
            elif outcome == FAILED:
                log.warning(
                    "%s: TLS certificate files changed but do not load (%s); keeping the previous ones",
                    self.hostname,
                    self.tls.last_error,
                )
            ssl_context = self.tls.context
        try:
            if ssl_context is None:
                transport, proto = await loop.create_connection(factory, host, port)
            else:
                transport, proto = await loop.create_connection(
                    factory,
                    host,
                    port,
                    ssl=ssl_context,
                    server_hostname=host,  # sent as SNI only: identity is checked by name, not address
                    ssl_handshake_timeout=self.connect_timeout,
                )
        except asyncio.CancelledError:
            # Cancelled just as the connection was made: the transport exists but nobody will own it.
            for p in made:
                if p.transport is not None:
                    p.transport.abort()
            raise
        return host, port, transport, proto

    async def _watch_reads(self, proto: _StreamProtocol, conn: ClientConnection) -> None:
        while not proto.done.done():
            if conn.state is ConnState.HANDSHAKE:
                limit = self.connect_timeout
            else:
                ping = conn.server_hello.ping_interval if conn.server_hello else 10.0
                limit = self.read_timeout or 3 * ping
            idle = time.monotonic() - proto.last_data
            if idle > limit:
                # A busy event loop (thousands of agents in one process) can wake this timer before
                # it gets round to reads already waiting in the kernel: let one loop pass run them
                # before calling the connection dead.
                await asyncio.sleep(0)
                idle = time.monotonic() - proto.last_data
            if idle > limit:
                proto.finish(f"read timeout: nothing from the server for {idle:.1f}s", goodbye=GoodbyeCode.PING_TIMEOUT)
                return
            await asyncio.sleep(max(0.05, min(limit - idle, limit / 3)))

    # -- applying messages ---------------------------------------------------------------------------
    def _handle(self, proto: _StreamProtocol, msg: Message) -> None:
        self.stats.frames += 1
        if self.on_message is not None:
            self.on_message(msg)
        if isinstance(msg, Updates):
            self.seq = msg.seq
            self.stats.kvs_received += msg.count
            if msg.kvs is not None:
                self._apply_deltas(msg.kvs)
            self._set_status(msg.status)
        elif isinstance(msg, SyncStatusChange):
            self.seq = msg.seq
            self._set_status(msg.status)
        elif isinstance(msg, SnapshotChunk):
            if msg.partial:
                self._apply_partial_chunk(msg)
            else:
                self._apply_snapshot_chunk(msg)
        elif isinstance(msg, Digests):
            self._answer_digests(proto, msg)
        elif isinstance(msg, Ping):
            proto.send(proto.conn.pong(msg))
        elif isinstance(msg, Goodbye):
            proto.finish(f"server said goodbye: {msg.code}: {msg.reason}")
        elif isinstance(msg, ServerHello):
            self.server_id = msg.server_id
            if msg.resumed:
                # Our view is the server's as of our last seq; what follows is what we missed.
                self.stats.resumes += 1
                self.view.abandon()
                self._epoch = msg.epoch
                self._streaming.set()
                self._set_status(self.status)
            else:
                self._epoch = ""  # a snapshot follows: until it completes, we have nothing to resume
            self._pending_epoch = msg.epoch
            self.view.abandon()  # whatever a broken earlier connection left half done

    def _report(self, kvs: list[KV]) -> None:
        if kvs:
            self.stats.updates_reported += len(kvs)
            if self.on_updates is not None:
                self.on_updates(kvs)

    def _apply_snapshot_chunk(self, chunk: SnapshotChunk) -> None:
        self.stats.kvs_received += chunk.count
        if chunk.index == 0:
            self.stats.snapshots += 1
            self.view.begin_snapshot()
        if chunk.kvs is not None:
            self._report(self.view.snapshot_chunk(chunk.kvs))
        if chunk.final:
            gone = self.view.end_snapshot()
            self.stats.deletes_synthesized += len(gone)
            self._report(gone)
            self._stream_complete(chunk)
        self._set_status(chunk.status)

    def _answer_digests(self, proto: _StreamProtocol, digests: Digests) -> None:
        """Ask for the leaves whose digests differ from ours (docs/protocol.md 12.2)."""
        summary = self._summary
        assert summary is not None  # the connection only accepts a reconcile we offered
        try:
            leaves = summary.differing_leaves(list(digests.tops), digests.leaf_digests)
        except ValueError as exc:  # the codec checked the sizes; this is a second line of defence
            raise ProtocolError(str(exc)) from None
        self.seq = digests.seq
        self.stats.leaves_wanted += len(leaves)
        if self.view.summary is not None:
            self.view.begin_reconcile(leaves)
        proto.send(proto.conn.want(leaves_to_bitmap(leaves)))

    def _apply_partial_chunk(self, chunk: SnapshotChunk) -> None:
        self.stats.kvs_received += chunk.count
        if chunk.kvs is not None and self.view.summary is not None:
            self.view.partial_chunk(chunk.kvs)
        if chunk.final:
            self.stats.reconciles += 1
            if self.view.summary is not None:
                changed = self.view.end_reconcile()
                self.stats.deletes_synthesized += sum(1 for kv in changed if kv.value is None)
                self._report(changed)
            self._stream_complete(chunk)
        self._set_status(chunk.status)

    def _stream_complete(self, chunk: SnapshotChunk) -> None:
        """The FINAL chunk of a snapshot or a reconcile: the view is the server's as of `chunk.seq`."""
        self.seq = chunk.seq
        self._epoch = self._pending_epoch
        self._streaming.set()

    def _apply_deltas(self, kvs: list[KV]) -> None:
        self._report(self.view.apply_updates(kvs))

    def _set_status(self, status: SyncStatus) -> None:
        if status is not self.status:
            self.status = status
            if self.on_status is not None:
                self.on_status(status)
        if status is SyncStatus.IN_SYNC and self._streaming.is_set():
            self._synced.set()
        elif status is not SyncStatus.IN_SYNC:
            self._synced.clear()
