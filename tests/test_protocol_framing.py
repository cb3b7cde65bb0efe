"""Property tests of the frame layer and the codec: round trips, stream splitting, limits, and the
worked examples of docs/protocol.md. Malformed and hostile input: tests/test_protocol_malformed.py.
"""

from __future__ import annotations

import re
import struct
from dataclasses import replace
from pathlib import Path

import msgpack
import pytest
import zstandard
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from protocol import (
    KV,
    ClientHello,
    Compressor,
    Decompressor,
    Frame,
    FrameReader,
    FrameTooLarge,
    Goodbye,
    GoodbyeCode,
    MsgType,
    Ping,
    Pong,
    ProtocolError,
    ServerHello,
    SnapshotChunk,
    SyncStatus,
    SyncStatusChange,
    Updates,
    decode,
    encode,
    encode_frame,
)
from protocol.codec import decode_kv_payload, encode_kv_payload, encode_snapshot_chunk, encode_updates
from protocol.framing import (
    FLAG_COMPRESSED,
    FLAG_FINAL,
    HEADER,
    HEADER_SIZE,
    KNOWN_FLAGS,
    PREAMBLE_SIZE,
    SEQUENCED_TYPES,
    encode_sequenced_frame,
    parse_preamble,
)
from tests.support.wire import BIG, FAST, messages, pieces, read_all, snapshot_chunks, updates

# ---------------------------------------------------------------------------------------------------
# Round trips


@FAST
@given(messages)
def test_every_message_round_trips(msg) -> None:
    wire = encode(msg)
    (frame,) = read_all(wire)
    assert frame.msg_type == _expected_type(msg)
    assert decode(frame) == msg
    # A decompressor being available changes nothing for uncompressed frames.
    assert decode(frame, Decompressor(BIG)) == msg


@FAST
@given(st.one_of(updates(), snapshot_chunks()))
def test_state_frames_round_trip_with_compression(msg) -> None:
    plain = encode(msg)
    wire = encode(msg, Compressor())
    (frame,) = read_all(wire)
    assert decode(frame, Decompressor(BIG)) == msg
    # Compression is used only when it makes the payload smaller, and never touches the preamble.
    assert len(wire) <= len(plain)
    assert (frame.flags & FLAG_COMPRESSED) == (FLAG_COMPRESSED if len(wire) < len(plain) else 0)
    assert wire[HEADER_SIZE : HEADER_SIZE + PREAMBLE_SIZE] == plain[HEADER_SIZE : HEADER_SIZE + PREAMBLE_SIZE]


@FAST
@given(st.one_of(updates(), snapshot_chunks()))
def test_decode_kvs_false_reads_only_the_preamble(msg) -> None:
    (frame,) = read_all(encode(msg, Compressor()))
    cheap = decode(frame, None, decode_kvs=False)  # no decompressor needed: the payload is not read
    assert cheap.kvs is None
    assert cheap.count == msg.count
    assert cheap.seq == msg.seq


def test_repetitive_batch_is_compressed_and_decodes() -> None:
    kvs = [KV(f"/calico/v1/host/node-{i}/metadata", b'{"ip": "10.0.0.%d"}' % i, str(i)) for i in range(200)]
    wire = encode_updates(1, 2, 3, SyncStatus.IN_SYNC, kvs, Compressor())
    (frame,) = read_all(wire)
    assert frame.flags == FLAG_COMPRESSED
    assert len(wire) < len(encode_updates(1, 2, 3, SyncStatus.IN_SYNC, kvs)) / 3
    assert decode(frame, Decompressor(BIG)).kvs == kvs


def test_tiny_batch_is_not_compressed() -> None:
    payload, flags, raw = encode_kv_payload([("k", b"v", "1")], Compressor())
    assert flags == 0 and len(payload) == raw
    assert msgpack.unpackb(payload) == [["k", b"v", "1"]]


def test_final_flag_and_chunk_index_on_the_wire() -> None:
    wire = encode_snapshot_chunk(7, 3, 99, SyncStatus.RESYNC_IN_PROGRESS, [("k", b"v", "1")], True)
    body_len, mtype, flags, reserved = HEADER.unpack_from(wire)
    assert (body_len, mtype, flags, reserved) == (len(wire) - 8, MsgType.SNAPSHOT, FLAG_FINAL, 0)
    assert parse_preamble(wire[8:]) == (3, 7, 99, 1, SyncStatus.RESYNC_IN_PROGRESS)
    chunk = decode(Frame(mtype, flags, wire[8:]))
    assert (chunk.seq, chunk.index, chunk.final) == (7, 3, True)


def test_unknown_fields_in_control_messages_are_ignored() -> None:
    body = msgpack.packb(
        {"versions": [1, 7], "hostname": "h", "syncer_type": "felix", "future": {"x": [1, 2]}, "n": None}
    )
    hello = decode(Frame(MsgType.CLIENT_HELLO, 0, body))
    assert hello == ClientHello("h", "felix", (1, 7), "", (), "")  # optional fields take their defaults
    sh = decode(Frame(MsgType.SERVER_HELLO, 0, msgpack.packb({"version": 1, "syncer_type": "bgp", "more": 1})))
    assert sh == ServerHello(1, "bgp", None, "", 10.0)
    assert decode(Frame(MsgType.GOODBYE, 0, msgpack.packb({"code": "x", "extra": 1}))) == Goodbye("x", "")
    assert decode(Frame(MsgType.PING, 0, msgpack.packb({"ts": 5, "extra": "y"}))) == Ping(5)


# ---------------------------------------------------------------------------------------------------
# Stream splitting


@FAST
@given(st.lists(messages, min_size=1, max_size=8), st.lists(st.integers(0, 10_000), max_size=30))
def test_frame_reader_is_independent_of_how_the_stream_is_split(msgs, cuts) -> None:
    stream = b"".join(encode(m) for m in msgs)
    reader = FrameReader(BIG)
    frames = []
    for piece in pieces(stream, cuts):
        reader.feed(piece)
        frames.extend(reader.frames())
    assert frames == read_all(stream)
    assert [decode(f) for f in frames] == msgs
    assert reader.buffered == 0
    assert reader.bytes_received == len(stream)
    assert reader.frames_received == len(msgs)


@FAST
@given(st.lists(messages, min_size=1, max_size=8), st.lists(st.integers(0, 10_000), max_size=30))
def test_headers_only_reader_skips_payloads_but_keeps_every_preamble(msgs, cuts) -> None:
    stream = b"".join(encode(m) for m in msgs)
    reader = FrameReader(BIG, headers_only=True)
    frames = []
    for piece in pieces(stream, cuts):
        reader.feed(piece)
        frames.extend(reader.frames())
    full = read_all(stream)
    assert [(f.msg_type, f.flags) for f in frames] == [(f.msg_type, f.flags) for f in full]
    for cheap, whole in zip(frames, full):
        if whole.msg_type in SEQUENCED_TYPES:
            assert cheap.body == whole.body[:PREAMBLE_SIZE]
            assert decode(cheap, decode_kvs=False) == decode(whole, decode_kvs=False)
        else:
            assert cheap.body == whole.body
    assert reader.buffered == 0 and reader.bytes_received == len(stream)


@settings(max_examples=15, deadline=None)
@given(st.integers(500, 20_000), st.integers(0, 3))
def test_frame_reader_compaction_keeps_large_streams_intact(piece_size, seed) -> None:
    # Frames big enough that the reader compacts its buffer (consumed prefix >= 64 KiB) mid-stream.
    msgs = [
        Updates(i, i + 1, i, SyncStatus.IN_SYNC, 1, [KV(f"k{i}", bytes([i + seed]) * (30_000 + 997 * i), "r")])
        for i in range(12)
    ]
    stream = b"".join(encode(m) for m in msgs)
    reader = FrameReader(BIG)
    out = []
    for pos in range(0, len(stream), piece_size):
        reader.feed(stream[pos : pos + piece_size])
        out.extend(decode(f) for f in reader.frames())
    assert out == msgs
    assert reader.buffered == 0


def test_incomplete_frame_waits_for_more_bytes() -> None:
    wire = encode(Ping(1))
    reader = FrameReader()
    for i in range(len(wire) - 1):
        reader.feed(wire[i : i + 1])
        assert reader.next_frame() is None
    reader.feed(wire[-1:])
    assert decode(reader.next_frame()) == Ping(1)
    assert reader.next_frame() is None


# ---------------------------------------------------------------------------------------------------
# Limits


@given(st.integers(0, 1 << 20), st.integers(1, 2**32 - 1), st.integers(0, 255))
def test_oversized_frame_rejected_from_the_header_alone(limit, excess, mtype) -> None:
    announced = min(limit + excess, 2**32 - 1)
    assume(announced > limit)
    reader = FrameReader(limit)
    header = HEADER.pack(announced, mtype, 0, 0)
    reader.feed(header[:7])
    assert reader.next_frame() is None  # a partial header proves nothing yet
    reader.feed(header[7:])
    with pytest.raises(FrameTooLarge) as info:
        reader.next_frame()
    assert info.value.code is GoodbyeCode.FRAME_TOO_LARGE
    assert isinstance(info.value, ProtocolError)


def test_frame_at_the_limit_is_accepted() -> None:
    reader = FrameReader(100)
    reader.feed(encode_frame(MsgType.PING, b"\x00" * 100))
    frame = reader.next_frame()
    assert frame is not None and len(frame.body) == 100


def test_default_limits() -> None:
    from protocol import DEFAULT_MAX_CLIENT_FRAME, DEFAULT_MAX_SERVER_FRAME

    assert FrameReader().max_body == DEFAULT_MAX_CLIENT_FRAME == 1 << 20
    assert DEFAULT_MAX_SERVER_FRAME == 64 << 20


@given(st.integers(0, 255).filter(lambda f: f & ~KNOWN_FLAGS), st.integers(1, 8))
def test_unknown_flags_rejected_before_the_body_arrives(flags, mtype) -> None:
    reader = FrameReader()
    reader.feed(HEADER.pack(1000, mtype, flags, 0))  # body not sent
    with pytest.raises(ProtocolError, match="unknown flags"):
        reader.next_frame()


@given(st.integers(0, 255).filter(lambda t: t not in set(MsgType)))
def test_unknown_message_types_rejected(mtype) -> None:
    (frame,) = read_all(encode_frame(mtype, msgpack.packb({"ts": 1})))
    with pytest.raises(ProtocolError, match="unknown message type"):
        decode(frame)


def test_encode_rejects_non_messages() -> None:
    with pytest.raises(TypeError):
        encode("hello")  # type: ignore[arg-type]


def test_sequenced_frame_layout() -> None:
    wire = encode_sequenced_frame(MsgType.UPDATES, 1, 2, 3, 4, 3, b"PAYLOAD", FLAG_COMPRESSED)
    assert wire[:8] == struct.pack("!IBBH", 32 + 7, 4, 1, 0)
    assert wire[8:40] == struct.pack("!QQQIBBH", 1, 2, 3, 4, 3, 0, 0)
    assert wire[40:] == b"PAYLOAD"


def _expected_type(msg) -> MsgType:
    return {
        ClientHello: MsgType.CLIENT_HELLO,
        ServerHello: MsgType.SERVER_HELLO,
        SyncStatusChange: MsgType.SYNC_STATUS,
        Updates: MsgType.UPDATES,
        SnapshotChunk: MsgType.SNAPSHOT,
        Ping: MsgType.PING,
        Pong: MsgType.PONG,
        Goodbye: MsgType.GOODBYE,
    }[type(msg)]


def test_decode_kv_payload_direct() -> None:
    payload, _, _ = encode_kv_payload([("a", None, ""), ("ü/🙂", b"\x00\xff", "r")])
    assert decode_kv_payload(payload, 0, 2, None) == [KV("a", None, ""), KV("ü/🙂", b"\x00\xff", "r")]


# ---------------------------------------------------------------------------------------------------
# The worked examples in docs/protocol.md section 13 are the exact output of the encoder.

_T = 1_700_000_000_000_000_000
SPEC_EXAMPLES = [
    (
        ClientHello(
            hostname="node-1",
            syncer_type="felix",
            versions=(1,),
            info="felix 0.1",
            compression=("zstd",),
            connection_id="c1",
        ),
        """00 00 00 60 01 00 00 00 86 a8 76 65 72 73 69 6f 6e 73 91 01 a8 68 6f 73 74 6e 61 6d 65 a6 6e 6f
           64 65 2d 31 a4 69 6e 66 6f a9 66 65 6c 69 78 20 30 2e 31 ab 73 79 6e 63 65 72 5f 74 79 70 65 a5
           66 65 6c 69 78 ab 63 6f 6d 70 72 65 73 73 69 6f 6e 91 a4 7a 73 74 64 ad 63 6f 6e 6e 65 63 74 69
           6f 6e 5f 69 64 a2 63 31""",
    ),
    (
        ServerHello(
            version=1,
            syncer_type="felix",
            compression="zstd",
            server_id="srv1",
            ping_interval=10.0,
            epoch="5d1f0c8a9b3e4f27",
        ),
        """00 00 00 6a 02 00 00 00 86 a7 76 65 72 73 69 6f 6e 01 ab 73 79 6e 63 65 72 5f 74 79 70 65 a5 66
           65 6c 69 78 ab 63 6f 6d 70 72 65 73 73 69 6f 6e a4 7a 73 74 64 a9 73 65 72 76 65 72 5f 69 64 a4
           73 72 76 31 ad 70 69 6e 67 5f 69 6e 74 65 72 76 61 6c cb 40 24 00 00 00 00 00 00 a5 65 70 6f 63
           68 b0 35 64 31 66 30 63 38 61 39 62 33 65 34 66 32 37""",
    ),
    (
        Updates(
            41,
            42,
            _T,
            SyncStatus.IN_SYNC,
            1,
            [KV("/calico/v1/host/node-1/config/LogSeverityScreen", b'"Info"', "1234")],
        ),
        """00 00 00 60 04 00 00 00 00 00 00 00 00 00 00 29 00 00 00 00 00 00 00 2a 17 97 9c fe 36 2a 00 00
           00 00 00 01 03 00 00 00 91 93 d9 2f 2f 63 61 6c 69 63 6f 2f 76 31 2f 68 6f 73 74 2f 6e 6f 64 65
           2d 31 2f 63 6f 6e 66 69 67 2f 4c 6f 67 53 65 76 65 72 69 74 79 53 63 72 65 65 6e c4 06 22 49 6e
           66 6f 22 a4 31 32 33 34""",
    ),
    (
        SyncStatusChange(42, 43, _T + 1, SyncStatus.IN_SYNC),
        """00 00 00 20 03 00 00 00 00 00 00 00 00 00 00 2a 00 00 00 00 00 00 00 2b 17 97 9c fe 36 2a 00 01
           00 00 00 00 03 00 00 00""",
    ),
    (
        SnapshotChunk(7, 0, _T, SyncStatus.RESYNC_IN_PROGRESS, 2, True, [KV("k", b"v", "1"), KV("k2", b"{}", "2")]),
        """00 00 00 33 05 02 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 07 17 97 9c fe 36 2a 00 00
           00 00 00 02 02 00 00 00 92 93 a1 6b c4 01 76 a1 31 93 a2 6b 32 c4 02 7b 7d a1 32""",
    ),
    (Ping(_T), "00 00 00 0d 06 00 00 00 81 a2 74 73 cf 17 97 9c fe 36 2a 00 00"),
    (Pong(_T), "00 00 00 0d 07 00 00 00 81 a2 74 73 cf 17 97 9c fe 36 2a 00 00"),
]


@pytest.mark.parametrize(
    ("msg", "hexdump"), SPEC_EXAMPLES, ids=lambda v: type(v).__name__ if not isinstance(v, str) else ""
)
def test_spec_examples(msg, hexdump) -> None:
    wire = bytes.fromhex(hexdump)
    assert encode(msg) == wire
    (frame,) = read_all(wire)
    assert decode(frame) == msg


def test_spec_document_shows_the_encoder_bytes() -> None:
    # The hex dumps in docs/protocol.md section 13 are the bytes above (13.1-13.5 as offset dumps, 13.6 inline).
    doc = (Path(__file__).resolve().parents[1] / "docs" / "protocol.md").read_text()
    section13 = doc[doc.index("## 13. Worked examples") : doc.index("## 14.")]
    dumps = []
    for block in re.findall(r"```\n(0000:.*?)```", section13, re.S):
        dumps.append(bytes.fromhex("".join(line.split(":", 1)[1] for line in block.strip().splitlines())))
    dumps.append(bytes.fromhex(re.search(r"`(00 00 00 0d 06 [0-9a-f ]+)`", section13)[1]))
    assert dumps == [bytes.fromhex(h) for _, h in SPEC_EXAMPLES[:6]]
    # "Granting a resume adds a seventh entry at the end, a7 "resumed" c3: map header 87, length field 115."
    plain = encode(SPEC_EXAMPLES[1][0])
    resumed = encode(replace(SPEC_EXAMPLES[1][0], resumed=True))
    assert resumed == (115).to_bytes(4, "big") + plain[4:8] + b"\x87" + plain[9:] + b"\xa7resumed\xc3"


def test_spec_compressed_example_prefix() -> None:
    kvs = [
        KV(
            f"/calico/v1/host/node-1/workload/k8s/default%2fpod-{i}/endpoint/eth0",
            b'{"state":"active","name":"cali%05d","profile_ids":["kns.default"]}' % i,
            str(1000 + i),
        )
        for i in range(20)
    ]
    wire = encode_snapshot_chunk(10, 0, _T, SyncStatus.IN_SYNC, kvs, True, Compressor())
    assert len(encode_snapshot_chunk(10, 0, _T, SyncStatus.IN_SYNC, kvs, True)) == 2893
    # The compressed size (and so the length field) depends on the zstd library version; the rest is fixed.
    assert int.from_bytes(wire[:4], "big") == len(wire) - 8 < 1000
    assert wire[4:47] == bytes.fromhex(
        "05 03 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 0a 17 97 9c fe 36 2a 00 00"
        "00 00 00 14 03 00 00 00 28 b5 2f fd 60 25 0a"
    )
    assert zstandard.frame_content_size(wire[40:]) == 2853
    (frame,) = read_all(wire)
    assert decode(frame, Decompressor(1 << 20)).kvs == kvs
