"""Message types of the Typha sync protocol: plain, immutable values.

Design note
-----------
These are the "events" of the protocol in the h11 sense: what a peer says, with no knowledge of bytes
or sockets. Encoding lives in `framing` and `codec`; ordering rules live in `connection`. Keeping them
apart lets the cache pre-encode a breadcrumb once and hand the same bytes to every client, while tests
and tools can still reason about messages as values.

KVs are NamedTuples rather than dataclasses: a snapshot holds hundreds of thousands of them, and a
tuple is both the smallest Python object that can carry three fields and what msgpack decodes into
cheaply.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import NamedTuple

#: Protocol versions this implementation speaks, newest last.
SUPPORTED_VERSIONS: tuple[int, ...] = (1,)
PROTOCOL_VERSION = SUPPORTED_VERSIONS[-1]

COMPRESSION_ZSTD = "zstd"


class MsgType(enum.IntEnum):
    CLIENT_HELLO = 1
    SERVER_HELLO = 2
    SYNC_STATUS = 3
    UPDATES = 4
    SNAPSHOT = 5
    PING = 6
    PONG = 7
    GOODBYE = 8
    # The reconcile extension (docs/protocol.md 12.2): only after a SERVER_HELLO with `reconcile`.
    DIGESTS = 9
    WANT = 10


class SyncStatus(enum.IntEnum):
    """Sync status of one cache, in the order a cache passes through them."""

    UNKNOWN = 0
    WAIT_FOR_DATASTORE = 1
    RESYNC_IN_PROGRESS = 2
    IN_SYNC = 3


class GoodbyeCode(enum.StrEnum):
    """Machine-readable reasons carried by GOODBYE; the human text goes in `reason`."""

    UNSUPPORTED_VERSION = "unsupported-version"
    UNKNOWN_SYNCER = "unknown-syncer-type"
    PROTOCOL_ERROR = "protocol-error"
    FRAME_TOO_LARGE = "frame-too-large"
    HANDSHAKE_TIMEOUT = "handshake-timeout"
    PING_TIMEOUT = "ping-timeout"
    TOO_SLOW = "too-slow"
    SERVER_FULL = "server-full"
    NOT_READY = "not-ready"
    REBALANCE = "rebalance"
    SHUTTING_DOWN = "shutting-down"
    CLIENT_CLOSING = "client-closing"
    UNAUTHORIZED = "unauthorized"  # TLS: the client's certificate does not name an allowed identity


class KV(NamedTuple):
    """One key/value update. `value` None means the key was deleted."""

    key: str
    value: bytes | None
    revision: str


@dataclass(frozen=True, slots=True)
class ClientHello:
    hostname: str
    syncer_type: str
    versions: tuple[int, ...] = SUPPORTED_VERSIONS
    info: str = ""
    compression: tuple[str, ...] = (COMPRESSION_ZSTD,)
    connection_id: str = ""
    # Resume: the cache epoch and last seq of a stream this client followed before; empty = none.
    resume_epoch: str = ""
    resume_seq: int = 0
    # Reconcile on any replica: the top digests of the client's complete view (protocol.summary), in
    # summary layout `summary_version`; empty = the client holds no complete view (or does not reconcile).
    summary: bytes = b""
    summary_version: int = 0


@dataclass(frozen=True, slots=True)
class ServerHello:
    version: int
    syncer_type: str
    compression: str | None
    server_id: str = ""
    ping_interval: float = 10.0
    # The identity of this incarnation of the cache (sequence numbers are only meaningful within it),
    # and whether the requested resume was granted: then no snapshot follows, only breadcrumbs.
    epoch: str = ""
    resumed: bool = False
    # The client's summary was accepted: a DIGESTS message follows, then the differing leaves' contents.
    reconcile: bool = False


@dataclass(frozen=True, slots=True)
class Updates:
    """A batch of KV updates covering breadcrumbs (prev_seq, seq].

    `kvs` is None when the receiver chose not to decode values (cheap verification); `count` is always
    set from the frame preamble.
    """

    prev_seq: int
    seq: int
    created_ns: int
    status: SyncStatus
    count: int
    kvs: list[KV] | None = None


@dataclass(frozen=True, slots=True)
class SnapshotChunk:
    """One chunk of the snapshot of the cache as of breadcrumb `seq`."""

    seq: int
    index: int
    created_ns: int
    status: SyncStatus
    count: int
    final: bool
    kvs: list[KV] | None = None
    # A reconcile's snapshot: it covers only the leaves the client asked for (docs/protocol.md 12.2).
    partial: bool = False


@dataclass(frozen=True, slots=True)
class Digests:
    """Server -> client (reconcile): the server's leaf digests under the top buckets that differ, as of `seq`."""

    seq: int
    tops: tuple[int, ...]
    leaf_digests: bytes  # 1 KiB per top, in the order of `tops`


@dataclass(frozen=True, slots=True)
class Want:
    """Client -> server (reconcile): the leaves whose contents the client needs, as a 2 KiB bitmap."""

    leaves: bytes


@dataclass(frozen=True, slots=True)
class SyncStatusChange:
    """The cache moved to `status` at breadcrumb `seq` (which carries no KVs)."""

    prev_seq: int
    seq: int
    created_ns: int
    status: SyncStatus


@dataclass(frozen=True, slots=True)
class Ping:
    timestamp_ns: int


@dataclass(frozen=True, slots=True)
class Pong:
    timestamp_ns: int


@dataclass(frozen=True, slots=True)
class Goodbye:
    code: str
    reason: str = ""


Message = (
    ClientHello | ServerHello | Updates | SnapshotChunk | SyncStatusChange | Ping | Pong | Goodbye | Digests | Want
)
