"""The Typha sync protocol: wire format, sans-I/O connection state machines and the client library.

This package depends on nothing else in the project. `docs/protocol.md` specifies the wire format.
"""

from .codec import Compressor, Decompressor, decode, encode
from .connection import ClientConnection, ConnState, ServerConnection, negotiate
from .errors import FrameTooLarge, HandshakeRejected, ProtocolError, RemoteGoodbye
from .framing import (
    DEFAULT_MAX_CLIENT_FRAME,
    DEFAULT_MAX_SERVER_FRAME,
    Frame,
    FrameReader,
    encode_frame,
)
from .keys import SYNCER_BGP, SYNCER_FELIX  # the key schema owns the syncer names
from .messages import (
    COMPRESSION_ZSTD,
    KV,
    PROTOCOL_VERSION,
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
    SyncStatus,
    SyncStatusChange,
    Updates,
    Want,
)

__all__ = [
    "COMPRESSION_ZSTD",
    "DEFAULT_MAX_CLIENT_FRAME",
    "DEFAULT_MAX_SERVER_FRAME",
    "KV",
    "PROTOCOL_VERSION",
    "SUPPORTED_VERSIONS",
    "SYNCER_BGP",
    "SYNCER_FELIX",
    "ClientConnection",
    "ClientHello",
    "Compressor",
    "ConnState",
    "Decompressor",
    "Digests",
    "Frame",
    "FrameReader",
    "FrameTooLarge",
    "Goodbye",
    "GoodbyeCode",
    "HandshakeRejected",
    "Message",
    "MsgType",
    "Ping",
    "Pong",
    "ProtocolError",
    "RemoteGoodbye",
    "ServerConnection",
    "ServerHello",
    "SnapshotChunk",
    "SyncStatus",
    "SyncStatusChange",
    "Updates",
    "Want",
    "decode",
    "encode",
    "encode_frame",
    "negotiate",
]
