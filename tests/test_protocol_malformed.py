"""Malformed and hostile input to the frame layer and the codec.

The invariant: whatever bytes arrive, the frame reader and the decoder either produce well-formed
messages or raise ProtocolError, never any other exception type (an IndexError or a zstd/msgpack
exception escaping would take down a server's event loop callback). Compressed payloads are checked
before they are decompressed, so a zstd bomb costs nothing.
"""

from __future__ import annotations

import msgpack
import pytest
import zstandard
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from protocol import (
    KV,
    ClientHello,
    Compressor,
    Decompressor,
    Frame,
    FrameReader,
    MsgType,
    ProtocolError,
    ServerHello,
    SyncStatus,
    decode,
    encode,
    encode_frame,
)
from protocol.codec import encode_kv_payload, encode_updates
from protocol.framing import (
    FLAG_COMPRESSED,
    HEADER_SIZE,
    KNOWN_FLAGS,
    PREAMBLE,
    PREAMBLE_SIZE,
)
from tests.support.wire import BIG, FAST, decode_only_protocol_errors, kvs_st, messages, msgpack_int, read_all, u64

# ---------------------------------------------------------------------------------------------------
# Malformed bodies


@FAST
@given(messages, st.data())
def test_truncated_bodies_raise_protocol_error(msg, data) -> None:
    wire = encode(msg)
    body = wire[HEADER_SIZE:]
    assume(body)
    cut = data.draw(st.integers(0, len(body) - 1))
    with pytest.raises(ProtocolError):
        decode(Frame(wire[4], wire[5], body[:cut]), Decompressor(BIG))


@pytest.mark.parametrize(
    "mtype", [MsgType.CLIENT_HELLO, MsgType.SERVER_HELLO, MsgType.PING, MsgType.PONG, MsgType.GOODBYE]
)
@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"\xc1",  # never-used msgpack byte
        b"\x81",  # map header with no entries following
        msgpack.packb([1, 2, 3]),
        msgpack.packb("text"),
        msgpack.packb({1: 2}),  # non-string map key
        msgpack.packb({"ts": 1, b"ts": 2}, use_bin_type=True),  # a bin key is not a str key either
        msgpack.packb({b"code": "x"}, use_bin_type=True),
        msgpack.packb({}) + b"\x00",  # trailing bytes
        b"\xdf\xff\xff\xff\xff",  # map claiming 4G entries
    ],
)
def test_garbage_control_bodies_raise_protocol_error(mtype, body) -> None:
    with pytest.raises(ProtocolError):
        decode(Frame(mtype, 0, body))


HELLO_OK = {
    "versions": [1],
    "hostname": "h",
    "syncer_type": "felix",
    "compression": ["zstd"],
    "info": "",
    "connection_id": "",
}
SERVER_HELLO_OK = {"version": 1, "syncer_type": "felix", "compression": "zstd", "server_id": "s", "ping_interval": 10.0}


@pytest.mark.parametrize(
    ("mtype", "fields"),
    [
        (MsgType.CLIENT_HELLO, {**HELLO_OK, "versions": 1}),
        (MsgType.CLIENT_HELLO, {**HELLO_OK, "versions": []}),
        (MsgType.CLIENT_HELLO, {**HELLO_OK, "versions": ["1"]}),
        (MsgType.CLIENT_HELLO, {**HELLO_OK, "versions": [True]}),
        (MsgType.CLIENT_HELLO, {**HELLO_OK, "versions": [1.0]}),
        (MsgType.CLIENT_HELLO, {**HELLO_OK, "hostname": b"h"}),
        (MsgType.CLIENT_HELLO, {**HELLO_OK, "hostname": None}),
        (MsgType.CLIENT_HELLO, {k: v for k, v in HELLO_OK.items() if k != "hostname"}),
        (MsgType.CLIENT_HELLO, {k: v for k, v in HELLO_OK.items() if k != "syncer_type"}),
        (MsgType.CLIENT_HELLO, {k: v for k, v in HELLO_OK.items() if k != "versions"}),
        (MsgType.CLIENT_HELLO, {**HELLO_OK, "syncer_type": 3}),
        (MsgType.CLIENT_HELLO, {**HELLO_OK, "compression": "zstd"}),
        (MsgType.CLIENT_HELLO, {**HELLO_OK, "compression": [1]}),
        (MsgType.CLIENT_HELLO, {**HELLO_OK, "info": 5}),
        (MsgType.CLIENT_HELLO, {**HELLO_OK, "connection_id": ["x"]}),
        (MsgType.CLIENT_HELLO, {**HELLO_OK, "resume_epoch": "e"}),  # resume_seq omitted: not silently 0
        (MsgType.CLIENT_HELLO, {**HELLO_OK, "resume_epoch": "e", "resume_seq": -1}),
        (MsgType.CLIENT_HELLO, {**HELLO_OK, "resume_epoch": "e", "resume_seq": "7"}),
        (MsgType.CLIENT_HELLO, {**HELLO_OK, "resume_epoch": 7, "resume_seq": 7}),
        (MsgType.CLIENT_HELLO, {**HELLO_OK, "resume_seq": "7"}),  # wrong type even where it is unused
        (MsgType.SERVER_HELLO, {**SERVER_HELLO_OK, "resumed": 1}),
        (MsgType.SERVER_HELLO, {**SERVER_HELLO_OK, "epoch": None}),
        (MsgType.SERVER_HELLO, {**SERVER_HELLO_OK, "version": "1"}),
        (MsgType.SERVER_HELLO, {**SERVER_HELLO_OK, "version": True}),
        (MsgType.SERVER_HELLO, {**SERVER_HELLO_OK, "version": 1.0}),
        (MsgType.SERVER_HELLO, {k: v for k, v in SERVER_HELLO_OK.items() if k != "version"}),
        (MsgType.SERVER_HELLO, {k: v for k, v in SERVER_HELLO_OK.items() if k != "syncer_type"}),
        (MsgType.SERVER_HELLO, {**SERVER_HELLO_OK, "compression": ["zstd"]}),
        (MsgType.SERVER_HELLO, {**SERVER_HELLO_OK, "server_id": 1}),
        (MsgType.SERVER_HELLO, {**SERVER_HELLO_OK, "ping_interval": "10"}),
        (MsgType.SERVER_HELLO, {**SERVER_HELLO_OK, "ping_interval": True}),
        (MsgType.SERVER_HELLO, {**SERVER_HELLO_OK, "ping_interval": 0}),
        (MsgType.SERVER_HELLO, {**SERVER_HELLO_OK, "ping_interval": -1.0}),
        (MsgType.SERVER_HELLO, {**SERVER_HELLO_OK, "ping_interval": float("nan")}),
        (MsgType.SERVER_HELLO, {**SERVER_HELLO_OK, "ping_interval": float("inf")}),
        (MsgType.PING, {}),
        (MsgType.PING, {"ts": "1"}),
        (MsgType.PING, {"ts": 1.5}),
        (MsgType.PING, {"ts": False}),
        (MsgType.PONG, {"ts": None}),
        (MsgType.GOODBYE, {}),
        (MsgType.GOODBYE, {"code": 1}),
        (MsgType.GOODBYE, {"code": "x", "reason": 2}),
    ],
)
def test_wrong_field_types_raise_protocol_error(mtype, fields) -> None:
    body = msgpack.packb(fields, use_bin_type=True)
    with pytest.raises(ProtocolError):
        decode(Frame(mtype, 0, body))


def test_valid_control_fixtures_decode() -> None:
    # Guards the parametrized negative cases above: the unmodified fixtures are accepted.
    assert decode(Frame(MsgType.CLIENT_HELLO, 0, msgpack.packb(HELLO_OK))) == ClientHello(
        "h", "felix", (1,), "", ("zstd",), ""
    )
    assert decode(Frame(MsgType.SERVER_HELLO, 0, msgpack.packb(SERVER_HELLO_OK))) == ServerHello(
        1, "felix", "zstd", "s", 10.0
    )
    assert (
        decode(Frame(MsgType.SERVER_HELLO, 0, msgpack.packb({**SERVER_HELLO_OK, "ping_interval": 3}))).ping_interval
        == 3.0
    )
    resuming = {**HELLO_OK, "resume_epoch": "e", "resume_seq": 0}
    assert decode(Frame(MsgType.CLIENT_HELLO, 0, msgpack.packb(resuming))).resume_seq == 0
    stray_seq = {**HELLO_OK, "resume_seq": 5}  # without an epoch there is nothing to resume: ignored
    assert decode(Frame(MsgType.CLIENT_HELLO, 0, msgpack.packb(stray_seq))) == decode(
        Frame(MsgType.CLIENT_HELLO, 0, msgpack.packb(HELLO_OK))
    )


def _updates_frame(payload: bytes, count: int, flags: int = 0, base: int = 1, seq: int = 2) -> Frame:
    return Frame(MsgType.UPDATES, flags, PREAMBLE.pack(base, seq, 0, count, SyncStatus.IN_SYNC, 0, 0) + payload)


@pytest.mark.parametrize(
    ("entries", "count"),
    [
        ({"k": ["a", b"b", "c"]}, 1),  # payload a map, not an array
        ("abc", 1),
        ([["k", b"v"]], 1),  # two-element entry
        ([["k", b"v", "r", "x"]], 1),  # four-element entry
        ([{"k": 0, b"v": 0, "r": 0}], 1),  # a 3-entry map is not a [key, value, revision] array
        ([[b"k", b"v", "r"]], 1),  # key must be str
        ([["k", "v", "r"]], 1),  # value must be bin or nil
        ([["k", b"v", 1]], 1),  # revision must be str
        ([["k", b"v", None]], 1),
        ([None], 1),
        ([5], 1),
        ([["k", b"v", "r"]], 2),  # count mismatch
        ([["k", b"v", "r"], ["k2", None, "r"]], 1),
        ([], 1),
    ],
)
def test_malformed_kv_payloads_raise_protocol_error(entries, count) -> None:
    with pytest.raises(ProtocolError):
        decode(_updates_frame(msgpack.packb(entries, use_bin_type=True), count))


def test_invalid_utf8_key_raises_protocol_error() -> None:
    payload = b"\x91\x93\xa2\xff\xfe\xc4\x01v\xa1r"  # [[<str with invalid UTF-8>, b"v", "r"]]
    with pytest.raises(ProtocolError):
        decode(_updates_frame(payload, 1))
    assert decode(_updates_frame(payload.replace(b"\xff\xfe", b"ok"), 1)).kvs == [KV("ok", b"v", "r")]


@given(kvs_st, st.integers(0, 2**32 - 1))
def test_count_mismatch_between_preamble_and_payload(kvs, count) -> None:
    assume(count != len(kvs))
    payload, _, _ = encode_kv_payload(kvs)
    with pytest.raises(ProtocolError, match="preamble says"):
        decode(_updates_frame(payload, count))


@pytest.mark.parametrize("mtype", [MsgType.UPDATES, MsgType.SNAPSHOT, MsgType.SYNC_STATUS])
@pytest.mark.parametrize("size", [0, 1, PREAMBLE_SIZE - 1])
def test_sequenced_body_shorter_than_preamble(mtype, size) -> None:
    with pytest.raises(ProtocolError, match="shorter than its preamble"):
        decode(Frame(mtype, 0, b"\x00" * size))


@pytest.mark.parametrize("status", [4, 5, 255])
def test_unknown_sync_status_rejected(status) -> None:
    body = PREAMBLE.pack(1, 2, 0, 0, status, 0, 0)
    with pytest.raises(ProtocolError, match="unknown sync status"):
        decode(Frame(MsgType.SYNC_STATUS, 0, body))


@pytest.mark.parametrize(("base", "seq"), [(5, 5), (6, 5), (2**64 - 1, 0)])
@pytest.mark.parametrize("mtype", [MsgType.UPDATES, MsgType.SYNC_STATUS])
def test_seq_must_advance_past_base(mtype, base, seq) -> None:
    payload = msgpack.packb([]) if mtype is MsgType.UPDATES else b""
    with pytest.raises(ProtocolError, match="not after base"):
        decode(Frame(mtype, 0, PREAMBLE.pack(base, seq, 0, 0, SyncStatus.IN_SYNC, 0, 0) + payload))


def test_snapshot_chunk_seq_is_free_of_the_base_rule() -> None:
    # In SNAPSHOT frames the base field is the chunk index, so index > seq is legal.
    chunk = decode(Frame(MsgType.SNAPSHOT, 0, PREAMBLE.pack(9, 3, 0, 0, 0, 0, 0) + msgpack.packb([])))
    assert (chunk.index, chunk.seq, chunk.final) == (9, 3, False)


@pytest.mark.parametrize("extra", [b"\x90", b"\x00"])
def test_sync_status_with_a_payload_rejected(extra) -> None:
    with pytest.raises(ProtocolError, match="no payload"):
        decode(Frame(MsgType.SYNC_STATUS, 0, PREAMBLE.pack(1, 2, 0, 0, 3, 0, 0) + extra))
    with pytest.raises(ProtocolError, match="no payload"):
        decode(Frame(MsgType.SYNC_STATUS, 0, PREAMBLE.pack(1, 2, 0, 1, 3, 0, 0)))


# ---------------------------------------------------------------------------------------------------
# Compression abuse


def _compressed_frame(zpayload: bytes, count: int) -> Frame:
    return _updates_frame(zpayload, count, FLAG_COMPRESSED)


def test_compressed_payload_without_negotiated_compression() -> None:
    kvs = [KV(f"key-{i}", b"x" * 100, "1") for i in range(50)]
    wire = encode_updates(1, 2, 0, SyncStatus.IN_SYNC, kvs, Compressor())
    (frame,) = read_all(wire)
    assert frame.flags & FLAG_COMPRESSED
    with pytest.raises(ProtocolError, match="not negotiated"):
        decode(frame, None)
    assert decode(frame, Decompressor(BIG)).kvs == kvs


def test_zstd_bomb_rejected_from_declared_content_size() -> None:
    raw = msgpack.packb([["k", b"\x00" * 200_000, "r"]])
    bomb = zstandard.ZstdCompressor(write_content_size=True).compress(raw)
    assert len(bomb) < 1000
    assert zstandard.frame_content_size(bomb) == len(raw)
    with pytest.raises(ProtocolError, match="expands to"):
        decode(_compressed_frame(bomb, 1), Decompressor(100_000))
    assert decode(_compressed_frame(bomb, 1), Decompressor(len(raw))).kvs[0].value == b"\x00" * 200_000


def test_forged_huge_content_size_rejected_without_decompressing() -> None:
    # A zstd frame header declaring 2**40 bytes (single-segment, 8-byte content size), then junk.
    forged = b"\x28\xb5\x2f\xfd" + bytes([0xE0]) + (1 << 40).to_bytes(8, "little") + b"\x01\x00\x00"
    assert zstandard.frame_content_size(forged) == 1 << 40
    with pytest.raises(ProtocolError, match="expands to"):
        Decompressor(BIG).decompress(forged)
    with pytest.raises(ProtocolError):
        decode(_compressed_frame(forged, 1), Decompressor(BIG))


def test_zstd_frame_without_content_size_rejected() -> None:
    raw = msgpack.packb([["k", b"v" * 1000, "r"]])
    z = zstandard.ZstdCompressor(write_content_size=False).compress(raw)
    assert zstandard.frame_content_size(z) == -1
    with pytest.raises(ProtocolError, match="content size"):
        decode(_compressed_frame(z, 1), Decompressor(BIG))


def _patch_content_size(z: bytes, new_size: int) -> bytes:
    """Rewrite the Frame_Content_Size field of a single-segment zstd frame with a 2-byte FCS field."""
    fhd = z[4]
    assert fhd >> 6 == 1 and fhd & 0x20 and not fhd & 0x03  # 2-byte FCS, single segment, no dict id
    return z[:5] + (new_size - 256).to_bytes(2, "little") + z[7:]


@pytest.mark.parametrize("delta", [-1, +1, -500])
def test_zstd_frame_lying_about_its_content_size_rejected(delta) -> None:
    raw = msgpack.packb([["k", bytes(range(256)) * 4, "r"]])
    z = zstandard.ZstdCompressor(write_content_size=True).compress(raw)
    lie = _patch_content_size(z, len(raw) + delta)
    assert zstandard.frame_content_size(lie) == len(raw) + delta
    with pytest.raises(ProtocolError):
        decode(_compressed_frame(lie, 1), Decompressor(BIG))


@pytest.mark.parametrize(
    "payload",
    [
        b"",
        b"\x00",
        b"\x28\xb5\x2f",  # truncated magic
        b"not zstd at all",
        b"\x50\x2a\x4d\x18\x04\x00\x00\x00abcd",  # a skippable frame: declares no content
        zstandard.ZstdCompressor().compress(msgpack.packb([["k", b"v" * 300, "r"]]))[:-3],  # truncated
    ],
)
def test_corrupt_compressed_payloads_raise_protocol_error(payload) -> None:
    with pytest.raises(ProtocolError):
        decode(_compressed_frame(payload, 1), Decompressor(BIG))


def test_trailing_bytes_after_the_zstd_frame_rejected() -> None:
    raw = msgpack.packb([["k", b"v" * 300, "r"]])
    z = Compressor().compress(raw)
    assert decode(_compressed_frame(z, 1), Decompressor(BIG)).kvs == [KV("k", b"v" * 300, "r")]
    for tail in (b"\x00", b"garbage", z):  # junk, or a second frame smuggled after the first
        with pytest.raises(ProtocolError, match="corrupt"):
            decode(_compressed_frame(z + tail, 1), Decompressor(BIG))


def test_compressed_payload_that_is_not_a_kv_array() -> None:
    z = Compressor().compress(msgpack.packb({"not": "an array"}) * 10)
    with pytest.raises(ProtocolError):
        decode(_compressed_frame(z, 0), Decompressor(BIG))


# ---------------------------------------------------------------------------------------------------
# Hostile input: only ProtocolError, ever


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400), st.booleans())
def test_random_bytes_only_ever_raise_protocol_error(data, decode_kvs) -> None:
    reader = FrameReader(4096)
    reader.feed(data)
    try:
        frames = reader.frames()
    except ProtocolError:
        return
    decode_only_protocol_errors(frames, Decompressor(1 << 16), decode_kvs)


_ZSTD = zstandard.ZstdCompressor()
_msgpack_objects = st.recursive(
    st.none() | st.booleans() | msgpack_int | st.floats() | st.text(max_size=10) | st.binary(max_size=10),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=12,
)
_bodies = st.one_of(
    st.binary(max_size=200),
    _msgpack_objects.map(lambda o: msgpack.packb(o, use_bin_type=True)),
    st.binary(max_size=50).map(_ZSTD.compress),
)


@st.composite
def random_frames(draw):
    """Frames with a valid header, a known type and flags, and a body that is part-valid at best."""
    mtype = draw(st.integers(0, 9))
    flags = draw(st.integers(0, KNOWN_FLAGS))
    if draw(st.booleans()):
        preamble = PREAMBLE.pack(
            draw(u64), draw(u64), draw(u64), draw(st.integers(0, 5)), draw(st.integers(0, 5)), 0, 0
        )
    else:
        preamble = b""
    tail = draw(_bodies)
    return encode_frame(mtype, preamble + tail, flags)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(random_frames(), min_size=1, max_size=5), st.booleans())
def test_structured_garbage_only_ever_raises_protocol_error(frames, decode_kvs) -> None:
    decode_only_protocol_errors(read_all(b"".join(frames)), Decompressor(1 << 16), decode_kvs)
    decode_only_protocol_errors(read_all(b"".join(frames)), None, decode_kvs)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    messages, st.booleans(), st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), min_size=1, max_size=4)
)
def test_mutated_valid_frames_only_ever_raise_protocol_error(msg, compress, mutations) -> None:
    wire = bytearray(encode(msg, Compressor() if compress else None))
    for pos, byte in mutations:
        wire[pos % len(wire)] = byte
    reader = FrameReader(1 << 16)
    reader.feed(bytes(wire))
    try:
        frames = reader.frames()
    except ProtocolError:
        return
    decode_only_protocol_errors(frames, Decompressor(1 << 16))
    decode_only_protocol_errors(frames, None, decode_kvs=False)
