"""Codec: messages <-> frame bodies (msgpack, optionally zstd-compressed).

Design note
-----------
Control messages (hellos, ping, pong, goodbye) are msgpack maps with string keys: self-describing, so
either side can add fields without a version bump (unknown fields are ignored). State-carrying frames
(UPDATES, SNAPSHOT) carry a msgpack array of ``[key, value-or-nil, revision]`` triples after the binary
preamble. Values are opaque bytes to this layer.

Encoding is split so a server can do the expensive part once: `encode_kv_payload` packs (and maybe
compresses) a batch, `framing.encode_sequenced_frame` wraps it, and the resulting bytes are shared by
every client. Decoding validates shapes and types strictly, because the input may be garbage from a
socket: anything unexpected becomes a ProtocolError with a message saying what was wrong.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

import msgpack
import zstandard

from .errors import ProtocolError
from .framing import (
    FLAG_COMPRESSED,
    FLAG_FINAL,
    FLAG_PARTIAL,
    PREAMBLE_SIZE,
    SEQUENCED_TYPES,
    Frame,
    encode_frame,
    encode_sequenced_frame,
    parse_preamble,
)
from .messages import (
    KV,
    ClientHello,
    Digests,
    Goodbye,
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
from .summary import LEAF_BITMAP_BYTES, LEAF_DIGESTS_PER_TOP_BYTES, SUMMARY_VERSION, TOP_DIGESTS_BYTES, valid_tops

#: zstd level 1 compresses KV batches of JSON about 5-8x at several hundred MB/s: the snapshot is built
#: on the event loop, so speed matters more than the last few percent of ratio.
ZSTD_LEVEL = 1

_packer = msgpack.Packer(use_bin_type=True, autoreset=True)


def _pack(obj: Any) -> bytes:
    packed: bytes = _packer.pack(obj)
    return packed


class Compressor:
    """A zstd compressor with the project's settings (content size always written)."""

    def __init__(self, level: int = ZSTD_LEVEL) -> None:
        self._c = zstandard.ZstdCompressor(level=level, write_content_size=True)

    def compress(self, data: bytes) -> bytes:
        return self._c.compress(data)


class Decompressor:
    """zstd decompression with a hard bound on the output size (no decompression bombs)."""

    def __init__(self, max_output: int) -> None:
        self._d = zstandard.ZstdDecompressor()
        self.max_output = max_output

    def decompress(self, data: bytes | memoryview) -> bytes:
        try:
            size = zstandard.frame_content_size(data)
        except zstandard.ZstdError as exc:
            raise ProtocolError(f"compressed payload is not a zstd frame: {exc}") from None
        if size < 0:
            raise ProtocolError("compressed payload does not declare its content size")
        if size > self.max_output:
            raise ProtocolError(f"compressed payload expands to {size} bytes; the limit is {self.max_output}")
        try:
            # One frame, nothing after it: trailing bytes (or a second frame) would otherwise be ignored.
            return self._d.decompress(data, max_output_size=self.max_output, allow_extra_data=False)
        except zstandard.ZstdError as exc:
            raise ProtocolError(f"corrupt zstd payload: {exc}") from None


# ---------------------------------------------------------------------------------------------------
# Encoding


def encode_kv_payload(
    kvs: Iterable[tuple[str, bytes | None, str]], compressor: Compressor | None = None
) -> tuple[bytes, int, int]:
    """Pack KV triples. Returns (payload, flags, raw_size); compressed only if that saves bytes."""
    raw = _pack(kvs if isinstance(kvs, (list, tuple)) else list(kvs))
    if compressor is not None:
        packed = compressor.compress(raw)
        if len(packed) < len(raw):
            return packed, FLAG_COMPRESSED, len(raw)
    return raw, 0, len(raw)


def encode_updates(
    prev_seq: int,
    seq: int,
    created_ns: int,
    status: int,
    kvs: Sequence[tuple[str, bytes | None, str]],
    compressor: Compressor | None = None,
) -> bytes:
    payload, flags, _ = encode_kv_payload(kvs, compressor)
    return encode_sequenced_frame(MsgType.UPDATES, prev_seq, seq, created_ns, len(kvs), status, payload, flags)


def encode_snapshot_chunk(
    seq: int,
    index: int,
    created_ns: int,
    status: int,
    kvs: Sequence[tuple[str, bytes | None, str]],
    final: bool,
    compressor: Compressor | None = None,
    partial: bool = False,
) -> bytes:
    payload, flags, _ = encode_kv_payload(kvs, compressor)
    if final:
        flags |= FLAG_FINAL
    if partial:
        flags |= FLAG_PARTIAL
    return encode_sequenced_frame(MsgType.SNAPSHOT, index, seq, created_ns, len(kvs), status, payload, flags)


def encode_sync_status(prev_seq: int, seq: int, created_ns: int, status: int) -> bytes:
    return encode_sequenced_frame(MsgType.SYNC_STATUS, prev_seq, seq, created_ns, 0, status)


def encode(msg: Message, compressor: Compressor | None = None) -> bytes:
    """Encode any message to a complete frame."""
    if isinstance(msg, ClientHello):
        return encode_frame(
            MsgType.CLIENT_HELLO,
            _pack(
                {
                    "versions": list(msg.versions),
                    "hostname": msg.hostname,
                    "info": msg.info,
                    "syncer_type": msg.syncer_type,
                    "compression": list(msg.compression),
                    "connection_id": msg.connection_id,
                    # Optional fields are written only when used, so older peers see the hello they know.
                    **({"resume_epoch": msg.resume_epoch, "resume_seq": msg.resume_seq} if msg.resume_epoch else {}),
                    **({"summary_version": msg.summary_version, "summary": msg.summary} if msg.summary else {}),
                }
            ),
        )
    if isinstance(msg, ServerHello):
        return encode_frame(
            MsgType.SERVER_HELLO,
            _pack(
                {
                    "version": msg.version,
                    "syncer_type": msg.syncer_type,
                    "compression": msg.compression,
                    "server_id": msg.server_id,
                    "ping_interval": float(msg.ping_interval),
                    **({"epoch": msg.epoch} if msg.epoch else {}),
                    **({"resumed": True} if msg.resumed else {}),
                    **({"reconcile": True} if msg.reconcile else {}),
                }
            ),
        )
    if isinstance(msg, Ping):
        return encode_frame(MsgType.PING, _pack({"ts": msg.timestamp_ns}))
    if isinstance(msg, Pong):
        return encode_frame(MsgType.PONG, _pack({"ts": msg.timestamp_ns}))
    if isinstance(msg, Goodbye):
        return encode_frame(MsgType.GOODBYE, _pack({"code": msg.code, "reason": msg.reason}))
    if isinstance(msg, Digests):
        return encode_frame(
            MsgType.DIGESTS, _pack({"seq": msg.seq, "tops": list(msg.tops), "leaves": msg.leaf_digests})
        )
    if isinstance(msg, Want):
        return encode_frame(MsgType.WANT, _pack({"leaves": msg.leaves}))
    if isinstance(msg, Updates):
        return encode_updates(msg.prev_seq, msg.seq, msg.created_ns, msg.status, msg.kvs or [], compressor)
    if isinstance(msg, SnapshotChunk):
        return encode_snapshot_chunk(
            msg.seq, msg.index, msg.created_ns, msg.status, msg.kvs or [], msg.final, compressor, msg.partial
        )
    if isinstance(msg, SyncStatusChange):
        return encode_sync_status(msg.prev_seq, msg.seq, msg.created_ns, msg.status)
    raise TypeError(f"not a protocol message: {msg!r}")


# ---------------------------------------------------------------------------------------------------
# Decoding


def _unpack_map(body: bytes, what: str) -> dict[str, Any]:
    try:
        obj = msgpack.unpackb(body, raw=False, strict_map_key=True)
    except Exception as exc:  # msgpack raises a zoo of exception types for garbage
        raise ProtocolError(f"{what}: body is not valid msgpack ({type(exc).__name__})") from None
    if not isinstance(obj, dict):
        raise ProtocolError(f"{what}: body must be a map, got {type(obj).__name__}")
    # strict_map_key admits str and bin keys; a bin key can never name a field, so it is malformed too.
    if not all(type(k) is str for k in obj):
        raise ProtocolError(f"{what}: map keys must be msgpack str")
    return obj


def _field(obj: dict[str, Any], name: str, types: type | tuple[type, ...], what: str) -> Any:
    try:
        value = obj[name]
    except KeyError:
        raise ProtocolError(f"{what}: missing field {name!r}") from None
    if not isinstance(value, types) or (isinstance(value, bool) and types is not bool):
        raise ProtocolError(f"{what}: field {name!r} has type {type(value).__name__}")
    return value


def _opt_field(obj: dict[str, Any], name: str, types: type | tuple[type, ...], default: Any, what: str) -> Any:
    if name not in obj:
        return default
    return _field(obj, name, types, what)


def _str_list(value: Any, name: str, what: str) -> tuple[Any, ...]:
    if not isinstance(value, list):
        raise ProtocolError(f"{what}: field {name!r} must be a list")
    return tuple(value)


def _summary_fields(obj: dict[str, Any], what: str) -> tuple[int, bytes]:
    """CLIENT_HELLO's (summary_version, summary). A summary in a layout we do not know is ignored (an older
    server simply sends a snapshot); one in a layout we know must have its exact size."""
    version = _opt_field(obj, "summary_version", int, 0, what)
    summary = _opt_field(obj, "summary", bytes, b"", what)
    if not summary:
        return 0, b""
    if version != SUMMARY_VERSION:
        return 0, b""  # the same as offering none: the server answers with a snapshot
    if len(summary) != TOP_DIGESTS_BYTES:
        raise ProtocolError(f"{what}: a version {version} 'summary' is {TOP_DIGESTS_BYTES} bytes, got {len(summary)}")
    return version, summary


def _status(raw: int) -> SyncStatus:
    try:
        return SyncStatus(raw)
    except ValueError:
        raise ProtocolError(f"unknown sync status {raw}") from None


def decode_kv_payload(
    payload: bytes | memoryview, flags: int, count: int, decompressor: Decompressor | None
) -> list[KV]:
    if flags & FLAG_COMPRESSED:
        if decompressor is None:
            raise ProtocolError("compressed payload but compression was not negotiated")
        payload = decompressor.decompress(payload)
    try:
        entries = msgpack.unpackb(payload, raw=False, use_list=False)
    except Exception as exc:
        raise ProtocolError(f"KV payload is not valid msgpack ({type(exc).__name__})") from None
    if not isinstance(entries, tuple):
        raise ProtocolError("KV payload must be an array")
    if len(entries) != count:
        raise ProtocolError(f"KV payload holds {len(entries)} entries, preamble says {count}")
    # Each entry must itself be an array: unpacking a 3-entry *map* would silently yield its keys.
    if not all(type(e) is tuple and len(e) == 3 for e in entries):
        raise ProtocolError("KV entries must be [key, value, revision] arrays")
    kvs = [KV(k, v, r) for k, v, r in entries]
    for kv in kvs:
        if (
            type(kv.key) is not str
            or type(kv.revision) is not str
            or (kv.value is not None and type(kv.value) is not bytes)
        ):
            raise ProtocolError(f"malformed KV entry for key {kv.key!r}")
    return kvs


def decode(frame: Frame, decompressor: Decompressor | None = None, decode_kvs: bool = True) -> Message:
    """Decode one frame. With decode_kvs False, state frames keep kvs=None (header-only check)."""
    t, flags, body = frame
    try:
        mtype = MsgType(t)
    except ValueError:
        raise ProtocolError(f"unknown message type {t}") from None
    if mtype in SEQUENCED_TYPES:
        pre = parse_preamble(body)
        status = _status(pre.status)
        if mtype is not MsgType.SNAPSHOT and pre.seq <= pre.base:
            raise ProtocolError(f"{mtype.name} frame with seq {pre.seq} not after base {pre.base}")
        if mtype is MsgType.SYNC_STATUS:
            if len(body) != PREAMBLE_SIZE or pre.count:
                raise ProtocolError("SYNC_STATUS frame must carry no payload")
            return SyncStatusChange(pre.base, pre.seq, pre.created_ns, status)
        kvs = None
        if decode_kvs:
            kvs = decode_kv_payload(memoryview(body)[PREAMBLE_SIZE:], flags, pre.count, decompressor)
        if mtype is MsgType.UPDATES:
            return Updates(pre.base, pre.seq, pre.created_ns, status, pre.count, kvs)
        if flags & FLAG_PARTIAL and mtype is not MsgType.SNAPSHOT:
            raise ProtocolError(f"{mtype.name} frame with the PARTIAL flag")
        final, partial = bool(flags & FLAG_FINAL), bool(flags & FLAG_PARTIAL)
        return SnapshotChunk(pre.seq, pre.base, pre.created_ns, status, pre.count, final, kvs, partial)

    what = mtype.name
    obj = _unpack_map(body, what)
    if mtype is MsgType.CLIENT_HELLO:
        versions = _str_list(_field(obj, "versions", list, what), "versions", what)
        if not versions or not all(type(v) is int for v in versions):
            raise ProtocolError(f"{what}: 'versions' must be a non-empty list of integers")
        compression = _str_list(_opt_field(obj, "compression", list, [], what), "compression", what)
        if not all(isinstance(c, str) for c in compression):
            raise ProtocolError(f"{what}: 'compression' must list strings")
        resume_epoch = _opt_field(obj, "resume_epoch", str, "", what)
        resume_seq = _opt_field(obj, "resume_seq", int, None, what)
        if resume_seq is None:
            # Required with an epoch: a forgotten seq must not quietly mean "I hold the state of seq 0".
            if resume_epoch:
                raise ProtocolError(f"{what}: 'resume_epoch' without 'resume_seq'")
            resume_seq = 0
        elif resume_seq < 0:
            raise ProtocolError(f"{what}: 'resume_seq' must not be negative, got {resume_seq}")
        elif not resume_epoch:
            resume_seq = 0  # meaningless without an epoch (and never re-encoded without one)
        summary_version, summary = _summary_fields(obj, what)
        return ClientHello(
            hostname=_field(obj, "hostname", str, what),
            syncer_type=_field(obj, "syncer_type", str, what),
            versions=versions,
            info=_opt_field(obj, "info", str, "", what),
            compression=compression,
            connection_id=_opt_field(obj, "connection_id", str, "", what),
            resume_epoch=resume_epoch,
            resume_seq=resume_seq,
            summary=summary,
            summary_version=summary_version,
        )
    if mtype is MsgType.SERVER_HELLO:
        chosen = obj.get("compression")
        if chosen is not None and not isinstance(chosen, str):
            raise ProtocolError(f"{what}: 'compression' must be a string or nil")
        ping_interval = float(_opt_field(obj, "ping_interval", (int, float), 10.0, what))
        if not 0.0 < ping_interval < math.inf:  # also rejects NaN; clients derive read timeouts from it
            raise ProtocolError(f"{what}: 'ping_interval' must be a positive number, got {ping_interval}")
        return ServerHello(
            version=_field(obj, "version", int, what),
            syncer_type=_field(obj, "syncer_type", str, what),
            compression=chosen,
            server_id=_opt_field(obj, "server_id", str, "", what),
            ping_interval=ping_interval,
            epoch=_opt_field(obj, "epoch", str, "", what),
            resumed=_opt_field(obj, "resumed", bool, False, what),
            reconcile=_opt_field(obj, "reconcile", bool, False, what),
        )
    if mtype is MsgType.DIGESTS:
        seq = _field(obj, "seq", int, what)
        tops = _field(obj, "tops", list, what)
        leaves = _field(obj, "leaves", bytes, what)
        if seq < 0:
            raise ProtocolError(f"{what}: 'seq' must not be negative, got {seq}")
        if not valid_tops(tops):
            raise ProtocolError(f"{what}: 'tops' must be strictly ascending top indexes")
        if len(leaves) != len(tops) * LEAF_DIGESTS_PER_TOP_BYTES:
            raise ProtocolError(f"{what}: {len(tops)} tops need {len(tops) * LEAF_DIGESTS_PER_TOP_BYTES} digest bytes")
        return Digests(seq, tuple(tops), leaves)
    if mtype is MsgType.WANT:
        leaves = _field(obj, "leaves", bytes, what)
        if len(leaves) != LEAF_BITMAP_BYTES:
            raise ProtocolError(f"{what}: 'leaves' must be a {LEAF_BITMAP_BYTES}-byte bitmap")
        return Want(leaves)
    if mtype is MsgType.PING:
        return Ping(_field(obj, "ts", int, what))
    if mtype is MsgType.PONG:
        return Pong(_field(obj, "ts", int, what))
    # GOODBYE
    return Goodbye(_field(obj, "code", str, what), _opt_field(obj, "reason", str, "", what))
