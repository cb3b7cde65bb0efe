"""Sans-I/O connection state machines for both ends of a sync connection.

Design note
-----------
Like h11, these objects never touch a socket or a clock: you feed them the bytes you received and
they hand back validated messages, or raise ProtocolError naming the rule the peer broke. The asyncio
client in `client` and the server in `typha.syncserver` are thin shells around them, and the ordering
rules (hello first, snapshot chunks in order, no sequence gaps) are unit-tested without any I/O.

The client side enforces the stream invariants that make a Typha client safe to trust:
- the server hello must pick a version, syncer type and compression the client offered;
- snapshot chunks arrive with consecutive indexes for one seq, ending with a FINAL chunk;
- every UPDATES / SYNC_STATUS frame continues exactly from the previous one (base == last seq).
A gap therefore can never go unnoticed: it is a protocol error and the client resyncs.

A reconcile (docs/protocol.md 12.2) is one more phase between the hellos and streaming: the server's
DIGESTS set the seq the stream continues from, the client answers with one WANT, and what follows is
breadcrumbs (continuing from that seq) and then a PARTIAL snapshot as of the last of them; its FINAL
chunk starts streaming. Each end checks that the other keeps to this order.
"""

from __future__ import annotations

import enum
from collections.abc import Collection

from .codec import Decompressor, decode, encode
from .errors import HandshakeRejected, ProtocolError
from .framing import DEFAULT_MAX_CLIENT_FRAME, DEFAULT_MAX_SERVER_FRAME, KNOWN_FLAGS, FrameReader
from .messages import (
    COMPRESSION_ZSTD,
    SUPPORTED_VERSIONS,
    ClientHello,
    Digests,
    Goodbye,
    GoodbyeCode,
    Message,
    MsgType,
    Ping,
    Pong,
    ServerHello,
    SnapshotChunk,
    SyncStatusChange,
    Updates,
    Want,
)


class ConnState(enum.Enum):
    """The phases of a sync connection, the same at both ends (docs/protocol.md, sections 7 and 8).

    A connection moves forward only: HANDSHAKE -> [QUEUED ->] SNAPSHOT -> STREAMING -> CLOSED, where a
    granted resume goes from HANDSHAKE straight to STREAMING, a reconcile through RECONCILE (the server
    then passes through SNAPSHOT for the partial snapshot), and any phase may end in CLOSED.
    """

    HANDSHAKE = "handshake"  # connected; the hellos have not both been exchanged
    QUEUED = "queued"  # server only: hello answered, waiting for a free snapshot slot (pinged meanwhile)
    RECONCILE = "reconcile"  # hello answered with `reconcile`: digests, want, catch-up, partial snapshot
    SNAPSHOT = "snapshot"  # snapshot chunks are being sent / received
    STREAMING = "streaming"  # breadcrumbs follow, each continuing from the previous one
    CLOSED = "closed"  # a GOODBYE was sent or received, or the transport is gone


class ClientConnection:
    """Client end: validates what a server sends."""

    def __init__(
        self,
        hello: ClientHello,
        max_frame: int = DEFAULT_MAX_SERVER_FRAME,
        decode_kvs: bool = True,
    ) -> None:
        self.hello = hello
        self.decode_kvs = decode_kvs
        self.state = ConnState.HANDSHAKE
        self.server_hello: ServerHello | None = None
        self.seq = 0  # last breadcrumb seq applied (valid once STREAMING)
        self.snapshot_seq = 0
        self._next_chunk = 0
        self.digests: Digests | None = None  # reconcile: the server's digests, once received
        self._wanted = False
        self._reader = FrameReader(max_frame, headers_only=not decode_kvs)
        self._decompressor: Decompressor | None = None
        self._max_frame = max_frame

    @property
    def bytes_received(self) -> int:
        return self._reader.bytes_received

    def initiate(self) -> bytes:
        """The bytes to send first: our hello."""
        return encode(self.hello)

    @staticmethod
    def pong(ping: Ping) -> bytes:
        return encode(Pong(ping.timestamp_ns))

    @staticmethod
    def goodbye(code: str, reason: str = "") -> bytes:
        return encode(Goodbye(code, reason))

    def want(self, leaves: bytes) -> bytes:
        """The WANT answering the server's DIGESTS (a reconcile sends exactly one)."""
        if self.state is not ConnState.RECONCILE or self.digests is None or self._wanted:
            raise ProtocolError("WANT is sent once, after the server's DIGESTS")
        self._wanted = True
        return encode(Want(leaves))

    def receive_data(self, data: bytes | bytearray | memoryview) -> list[Message]:
        self._reader.feed(data)
        out: list[Message] = []
        while (frame := self._reader.next_frame()) is not None:
            msg = decode(frame, self._decompressor, self.decode_kvs)
            self._check(msg)
            out.append(msg)
        return out

    def _check(self, msg: Message) -> None:
        if isinstance(msg, Goodbye):
            self.state = ConnState.CLOSED
            return
        if isinstance(msg, (Ping, Pong)):
            if self.state is ConnState.HANDSHAKE:
                raise ProtocolError(f"{type(msg).__name__} before the server hello")
            return
        if self.state is ConnState.HANDSHAKE:
            if not isinstance(msg, ServerHello):
                raise ProtocolError(f"expected a server hello, got {type(msg).__name__}")
            self._accept_server_hello(msg)
            return
        if isinstance(msg, ServerHello):
            raise ProtocolError("second server hello")
        if self.state is ConnState.RECONCILE:
            self._check_reconcile(msg)
            return
        if self.state is ConnState.SNAPSHOT:
            if not isinstance(msg, SnapshotChunk):
                raise ProtocolError(f"expected a snapshot chunk, got {type(msg).__name__}")
            if msg.partial:
                raise ProtocolError("a PARTIAL snapshot chunk outside a reconcile")
            if msg.index != self._next_chunk:
                raise ProtocolError(f"snapshot chunk {msg.index} out of order; expected {self._next_chunk}")
            if msg.index and msg.seq != self.snapshot_seq:
                raise ProtocolError(f"snapshot chunk for seq {msg.seq} inside snapshot {self.snapshot_seq}")
            self.snapshot_seq = msg.seq
            self._next_chunk += 1
            if msg.final:
                self.seq = msg.seq
                self.state = ConnState.STREAMING
            return
        if self.state is ConnState.STREAMING:
            if not isinstance(msg, (Updates, SyncStatusChange)):
                raise ProtocolError(f"unexpected {type(msg).__name__} while streaming")
            if msg.prev_seq != self.seq:
                raise ProtocolError(f"sequence gap: frame continues from {msg.prev_seq}, we are at {self.seq}")
            self.seq = msg.seq
            return
        raise ProtocolError(f"{type(msg).__name__} after the connection closed")

    def _check_reconcile(self, msg: Message) -> None:
        if self.digests is None:
            if not isinstance(msg, Digests):
                raise ProtocolError(f"expected DIGESTS after a reconcile hello, got {type(msg).__name__}")
            self.digests = msg
            self.seq = msg.seq
            return
        if isinstance(msg, (Updates, SyncStatusChange)):
            if self._next_chunk:
                raise ProtocolError(f"{type(msg).__name__} inside the reconcile's snapshot")
            if msg.prev_seq != self.seq:
                raise ProtocolError(f"sequence gap: frame continues from {msg.prev_seq}, we are at {self.seq}")
            self.seq = msg.seq
            return
        if not isinstance(msg, SnapshotChunk):
            raise ProtocolError(f"unexpected {type(msg).__name__} during a reconcile")
        if not self._wanted:
            raise ProtocolError("snapshot chunk before the client's WANT")
        if not msg.partial:
            raise ProtocolError("a reconcile's snapshot chunks must be PARTIAL")
        if msg.index != self._next_chunk:
            raise ProtocolError(f"snapshot chunk {msg.index} out of order; expected {self._next_chunk}")
        if msg.seq != self.seq:
            raise ProtocolError(f"partial snapshot as of seq {msg.seq}, but the stream is at {self.seq}")
        self._next_chunk += 1
        if msg.final:
            self.snapshot_seq = msg.seq
            self.state = ConnState.STREAMING

    def _accept_server_hello(self, sh: ServerHello) -> None:
        if sh.version not in self.hello.versions:
            raise HandshakeRejected(f"server chose protocol version {sh.version}; we offered {self.hello.versions}")
        if sh.syncer_type != self.hello.syncer_type:
            raise HandshakeRejected(f"server serves syncer {sh.syncer_type!r}; we asked for {self.hello.syncer_type!r}")
        if sh.resumed and (not self.hello.resume_epoch or sh.epoch != self.hello.resume_epoch):
            raise HandshakeRejected("server resumed a stream we did not ask to resume")
        if sh.reconcile and (not self.hello.summary or sh.resumed):
            raise HandshakeRejected("server offered a reconcile we did not ask for (or with a resume)")
        if sh.compression is not None:
            if sh.compression not in self.hello.compression:
                raise HandshakeRejected(f"server chose compression {sh.compression!r} we did not offer")
            if sh.compression != COMPRESSION_ZSTD:
                raise HandshakeRejected(f"server chose compression {sh.compression!r}; only zstd is implemented")
            self._decompressor = Decompressor(self._max_frame)
        self.server_hello = sh
        if sh.resumed:
            # No snapshot: the stream continues right after the seq we had.
            self.seq = self.hello.resume_seq
            self.state = ConnState.STREAMING
        elif sh.reconcile:
            self.state = ConnState.RECONCILE
        else:
            self.state = ConnState.SNAPSHOT


def negotiate(
    hello: ClientHello,
    syncer_types: Collection[str],
    compression_enabled: bool = True,
    server_id: str = "",
    ping_interval: float = 10.0,
    epoch: str = "",
    resumed: bool = False,
    reconcile: bool = False,
) -> ServerHello:
    """Pick version and compression for a client hello, or raise HandshakeRejected with the reason."""
    common = set(hello.versions) & set(SUPPORTED_VERSIONS)
    if not common:
        raise HandshakeRejected(
            f"unsupported protocol version(s) {list(hello.versions)}; this server speaks {list(SUPPORTED_VERSIONS)}",
            GoodbyeCode.UNSUPPORTED_VERSION,
        )
    if hello.syncer_type not in syncer_types:
        raise HandshakeRejected(
            f"unknown syncer type {hello.syncer_type!r}; this server serves {sorted(syncer_types)}",
            GoodbyeCode.UNKNOWN_SYNCER,
        )
    compression = COMPRESSION_ZSTD if compression_enabled and COMPRESSION_ZSTD in hello.compression else None
    reconcile = reconcile and not resumed and bool(hello.summary)
    return ServerHello(max(common), hello.syncer_type, compression, server_id, ping_interval, epoch, resumed, reconcile)


class ServerConnection:
    """Server end: validates what a client sends (hello first, then only ping/pong/goodbye, and one WANT
    if the server granted a reconcile).

    Each frame's type is checked against the connection's phase from its header, before its body is
    buffered or decoded, and the frame limit is `max_hello_frame` until the hello has arrived (a
    hello is small) and `max_frame` after it: a peer that has proved nothing can make the server hold
    or decode only a small frame.
    """

    _BEFORE_HELLO = frozenset({MsgType.CLIENT_HELLO, MsgType.GOODBYE})
    _AFTER_HELLO = frozenset({MsgType.PING, MsgType.PONG, MsgType.GOODBYE})

    def __init__(self, max_frame: int = DEFAULT_MAX_CLIENT_FRAME, max_hello_frame: int | None = None) -> None:
        self.state = ConnState.HANDSHAKE
        self.hello: ClientHello | None = None
        self._max_frame = max_frame
        self._reader = FrameReader(max_hello_frame or max_frame)
        self._want_allowed = False

    def expect_want(self) -> None:
        """The server granted a reconcile and sent DIGESTS: the client may now send one WANT."""
        self._want_allowed = True

    @property
    def bytes_received(self) -> int:
        return self._reader.bytes_received

    @property
    def buffered(self) -> int:
        """Bytes of a partial frame held."""
        return self._reader.buffered

    def _check_type(self) -> None:
        header = self._reader.peek_header()
        if header is None:
            return
        length, msg_type, flags = header
        if length > self._reader.max_body or flags & ~KNOWN_FLAGS:
            return  # the reader reports these first (docs/protocol.md section 2)
        if self.state is ConnState.HANDSHAKE:
            allowed = msg_type in self._BEFORE_HELLO
        else:
            allowed = msg_type in self._AFTER_HELLO or (msg_type == MsgType.WANT and self._want_allowed)
        if allowed:
            return
        try:
            name = MsgType(msg_type).name
        except ValueError:
            raise ProtocolError(f"unknown message type {msg_type}") from None
        if self.state is ConnState.HANDSHAKE:
            raise ProtocolError(f"expected a client hello, got {name}")
        if msg_type == MsgType.WANT:
            raise ProtocolError("WANT without a reconcile (or a second WANT)")
        raise ProtocolError(f"clients may not send {name} after the hello")

    def receive_data(self, data: bytes | bytearray | memoryview) -> list[Message]:
        self._reader.feed(data)
        out: list[Message] = []
        while True:
            self._check_type()
            frame = self._reader.next_frame()
            if frame is None:
                break
            msg = decode(frame)
            if isinstance(msg, Goodbye):
                self.state = ConnState.CLOSED
            elif self.state is ConnState.HANDSHAKE:
                if not isinstance(msg, ClientHello):  # pragma: no cover - the header check sees it first
                    raise ProtocolError(f"expected a client hello, got {type(msg).__name__}")
                self.hello = msg
                self.state = ConnState.STREAMING
                self._reader.max_body = self._max_frame
            elif isinstance(msg, Want):
                if not self._want_allowed:  # pragma: no cover - the header check sees it first
                    raise ProtocolError("WANT without a reconcile (or a second WANT)")
                self._want_allowed = False
            elif not isinstance(msg, (Ping, Pong)):  # pragma: no cover - the header check sees it first
                raise ProtocolError(f"clients may not send {type(msg).__name__} after the hello")
            out.append(msg)
        return out
