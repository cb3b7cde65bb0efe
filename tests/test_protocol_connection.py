"""The sans-I/O connection state machines, without sockets: handshake, ordering and sequence rules,
and ``negotiate``. A SnapCache's bytes decoded by a client, and the client's resync rule:
tests/test_protocol_cache_client.py.
"""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocol import (
    KV,
    PROTOCOL_VERSION,
    SUPPORTED_VERSIONS,
    ClientConnection,
    ClientHello,
    Compressor,
    ConnState,
    FrameTooLarge,
    Goodbye,
    GoodbyeCode,
    HandshakeRejected,
    Ping,
    Pong,
    ProtocolError,
    ServerConnection,
    ServerHello,
    SnapshotChunk,
    SyncStatus,
    SyncStatusChange,
    Updates,
    decode,
    encode,
    negotiate,
)
from protocol.codec import encode_sync_status
from protocol.framing import HEADER, FrameReader
from tests.support.wire import HELLO, IN_SYNC, SERVER_HELLO, chunk, upd


def streaming_client(snapshot_seq: int = 5, decode_kvs: bool = True, hello: ClientHello = HELLO) -> ClientConnection:
    conn = ClientConnection(hello, decode_kvs=decode_kvs)
    conn.receive_data(encode(SERVER_HELLO) + chunk(snapshot_seq, 0, final=True))
    assert conn.state is ConnState.STREAMING and conn.seq == snapshot_seq
    return conn


# ---------------------------------------------------------------------------------------------------
# Client: handshake


def test_client_initiates_with_its_hello() -> None:
    conn = ClientConnection(HELLO)
    reader = FrameReader()
    reader.feed(conn.initiate())
    (frame,) = reader.frames()
    assert decode(frame) == HELLO
    assert conn.state is ConnState.HANDSHAKE


def test_client_accepts_matching_server_hello() -> None:
    conn = ClientConnection(HELLO)
    assert conn.receive_data(encode(SERVER_HELLO)) == [SERVER_HELLO]
    assert conn.state is ConnState.SNAPSHOT
    assert conn.server_hello == SERVER_HELLO


@pytest.mark.parametrize(
    ("hello", "server_hello", "match"),
    [
        (HELLO, ServerHello(PROTOCOL_VERSION + 1, "felix", None), "version"),
        (ClientHello("h", "felix", versions=(1,)), ServerHello(0, "felix", None), "version"),
        (HELLO, ServerHello(PROTOCOL_VERSION, "bgp", None), "syncer"),
        (ClientHello("h", "felix", compression=()), ServerHello(PROTOCOL_VERSION, "felix", "zstd"), "did not offer"),
        (HELLO, ServerHello(PROTOCOL_VERSION, "felix", "lz4"), "did not offer"),
        # Offered, but not something this implementation can decompress.
        (
            ClientHello("h", "felix", compression=("lz4", "zstd")),
            ServerHello(PROTOCOL_VERSION, "felix", "lz4"),
            "only zstd",
        ),
    ],
)
def test_client_rejects_a_server_hello_it_did_not_ask_for(hello, server_hello, match) -> None:
    conn = ClientConnection(hello)
    with pytest.raises(HandshakeRejected, match=match):
        conn.receive_data(encode(server_hello))
    assert conn.state is ConnState.HANDSHAKE and conn.server_hello is None


def test_handshake_rejection_is_a_protocol_error_with_protocol_error_code() -> None:
    conn = ClientConnection(HELLO)
    with pytest.raises(ProtocolError) as info:
        conn.receive_data(encode(ServerHello(99, "felix", None)))
    assert isinstance(info.value, HandshakeRejected)
    assert info.value.code is GoodbyeCode.PROTOCOL_ERROR


@pytest.mark.parametrize(
    "first",
    [
        chunk(1, 0, final=True),
        upd(0, 1),
        encode_sync_status(0, 1, 0, IN_SYNC),
        encode(Ping(1)),
        encode(Pong(1)),
        encode(HELLO),  # a client hello echoed back
    ],
)
def test_client_rejects_anything_but_server_hello_or_goodbye_first(first) -> None:
    conn = ClientConnection(HELLO)
    with pytest.raises(ProtocolError):
        conn.receive_data(first)


def test_goodbye_instead_of_server_hello_closes_cleanly() -> None:
    # What a full server, or one refusing our version, sends before (instead of) its hello.
    conn = ClientConnection(HELLO)
    bye = Goodbye(GoodbyeCode.SERVER_FULL.value, "at limit")
    assert conn.receive_data(encode(bye)) == [bye]
    assert conn.state is ConnState.CLOSED
    with pytest.raises(ProtocolError):
        conn.receive_data(upd(0, 1))


def test_second_server_hello_rejected() -> None:
    conn = ClientConnection(HELLO)
    conn.receive_data(encode(SERVER_HELLO))
    with pytest.raises(ProtocolError, match="second server hello"):
        conn.receive_data(encode(SERVER_HELLO))
    conn = streaming_client()
    with pytest.raises(ProtocolError, match="second server hello"):
        conn.receive_data(encode(SERVER_HELLO))


# ---------------------------------------------------------------------------------------------------
# Client: snapshot


def test_snapshot_chunks_then_streaming() -> None:
    conn = ClientConnection(HELLO)
    data = (
        encode(SERVER_HELLO)
        + chunk(7, 0, [("a", b"1", "r")], status=SyncStatus.RESYNC_IN_PROGRESS)
        + encode(Ping(42))  # pings may interleave with chunks
        + chunk(7, 1, [("b", b"2", "r")], final=True, status=SyncStatus.RESYNC_IN_PROGRESS)
        + upd(7, 8, [("a", None, "r2")], status=IN_SYNC)
    )
    msgs = conn.receive_data(data)
    assert [type(m) for m in msgs] == [ServerHello, SnapshotChunk, Ping, SnapshotChunk, Updates]
    assert [m.index for m in msgs if isinstance(m, SnapshotChunk)] == [0, 1]
    assert msgs[3].final and not msgs[1].final
    assert msgs[4].kvs == [KV("a", None, "r2")]
    assert conn.state is ConnState.STREAMING and conn.seq == 8 and conn.snapshot_seq == 7


def test_empty_snapshot_is_one_final_chunk() -> None:
    conn = ClientConnection(HELLO)
    msgs = conn.receive_data(encode(SERVER_HELLO) + chunk(0, 0, final=True, status=SyncStatus.WAIT_FOR_DATASTORE))
    assert msgs[1] == SnapshotChunk(0, 0, 0, SyncStatus.WAIT_FOR_DATASTORE, 0, True, [])
    assert conn.state is ConnState.STREAMING and conn.seq == 0


@pytest.mark.parametrize(
    ("chunks", "match"),
    [
        ([chunk(5, 1)], "out of order"),
        ([chunk(5, 0), chunk(5, 2)], "out of order"),
        ([chunk(5, 0), chunk(5, 0)], "out of order"),
        ([chunk(5, 0), chunk(6, 1)], "inside snapshot"),
        ([chunk(5, 0), upd(5, 6)], "expected a snapshot chunk"),
        ([chunk(5, 0), encode_sync_status(5, 6, 0, IN_SYNC)], "expected a snapshot chunk"),
        ([upd(0, 1)], "expected a snapshot chunk"),
        ([chunk(5, 0, final=True), chunk(5, 1)], "while streaming"),
        ([chunk(5, 0, final=True), chunk(6, 0, final=True)], "while streaming"),
    ],
)
def test_snapshot_order_violations(chunks, match) -> None:
    conn = ClientConnection(HELLO)
    conn.receive_data(encode(SERVER_HELLO))
    with pytest.raises(ProtocolError, match=match):
        for c in chunks:
            conn.receive_data(c)


# ---------------------------------------------------------------------------------------------------
# Client: streaming and sequence gaps


def test_continuous_stream_accepted() -> None:
    conn = streaming_client(5)
    msgs = conn.receive_data(
        upd(5, 6) + encode_sync_status(6, 7, 0, SyncStatus.RESYNC_IN_PROGRESS) + upd(7, 8) + encode(Ping(3)) + upd(8, 9)
    )
    assert [type(m) for m in msgs] == [Updates, SyncStatusChange, Updates, Ping, Updates]
    assert msgs[1].status is SyncStatus.RESYNC_IN_PROGRESS
    assert conn.seq == 9


@pytest.mark.parametrize("decode_kvs", [True, False])
@pytest.mark.parametrize(
    ("frame", "what"),
    [
        (upd(6, 7), "gap"),  # breadcrumb 6 skipped
        (upd(4, 5), "replay"),  # already applied
        (upd(0, 6), "wrong base"),
        (encode_sync_status(6, 7, 0, IN_SYNC), "status gap"),
        (encode_sync_status(4, 5, 0, IN_SYNC), "status replay"),
    ],
)
def test_sequence_gap_detected(frame, what, decode_kvs) -> None:
    conn = streaming_client(5, decode_kvs=decode_kvs)
    with pytest.raises(ProtocolError, match="sequence gap"):
        conn.receive_data(frame)


def test_gap_after_several_good_frames_detected_in_one_buffer() -> None:
    conn = streaming_client(5)
    with pytest.raises(ProtocolError, match="continues from 8, we are at 7"):
        conn.receive_data(upd(5, 6) + upd(6, 7) + upd(8, 9))


def test_status_frame_must_advance_the_sequence() -> None:
    # A SYNC_STATUS that does not advance (or goes back) would let a replayed UPDATES through next.
    conn = streaming_client(5)
    with pytest.raises(ProtocolError, match="not after base"):
        conn.receive_data(encode_sync_status(5, 5, 0, IN_SYNC))
    conn = streaming_client(5)
    with pytest.raises(ProtocolError, match="not after base"):
        conn.receive_data(encode_sync_status(5, 3, 0, IN_SYNC))


def test_goodbye_while_streaming_closes() -> None:
    conn = streaming_client(5)
    bye = Goodbye(GoodbyeCode.SHUTTING_DOWN.value, "bye")
    msgs = conn.receive_data(upd(5, 6) + encode(bye))
    assert msgs[-1] == bye and conn.state is ConnState.CLOSED
    with pytest.raises(ProtocolError, match="after the connection closed"):
        conn.receive_data(upd(6, 7))


def test_decode_kvs_false_still_checks_everything_but_values() -> None:
    conn = ClientConnection(HELLO, decode_kvs=False)
    z = Compressor()
    msgs = conn.receive_data(
        encode(SERVER_HELLO)
        + chunk(3, 0, [("a", b"x" * 500, "1")] * 10, compressor=z)
        + chunk(3, 1, [("b", b"y", "1")], final=True)
        + upd(3, 4, [("c", b"z" * 500, "1")] * 7, compressor=z)
    )
    assert [m.kvs for m in msgs[1:]] == [None, None, None]
    assert [m.count for m in msgs[1:]] == [10, 1, 7]
    assert conn.seq == 4
    with pytest.raises(ProtocolError, match="out of order"):
        c2 = ClientConnection(HELLO, decode_kvs=False)
        c2.receive_data(encode(SERVER_HELLO) + chunk(3, 1))
    with pytest.raises(ProtocolError, match="sequence gap"):
        conn.receive_data(upd(5, 6))


def test_compressed_frames_rejected_when_compression_was_not_negotiated() -> None:
    conn = ClientConnection(ClientHello("h", "felix", compression=()))
    conn.receive_data(encode(ServerHello(PROTOCOL_VERSION, "felix", None)) + chunk(1, 0, final=True))
    with pytest.raises(ProtocolError, match="not negotiated"):
        conn.receive_data(upd(1, 2, [("k", b"a" * 1000, "1")] * 20, compressor=Compressor()))


def test_compressed_stream_decodes_after_negotiation() -> None:
    kvs = [KV(f"/calico/v1/host/n/{i}", b'{"x": %d}' % i, str(i)) for i in range(300)]
    conn = ClientConnection(HELLO)
    z = Compressor()
    msgs = conn.receive_data(
        encode(SERVER_HELLO) + chunk(1, 0, kvs, final=True, compressor=z) + upd(1, 2, kvs[:50], compressor=z)
    )
    assert msgs[1].kvs == kvs and msgs[2].kvs == kvs[:50]


def test_client_frame_limit_and_byte_counter() -> None:
    conn = ClientConnection(HELLO, max_frame=1000)
    conn.receive_data(encode(SERVER_HELLO))
    with pytest.raises(FrameTooLarge) as info:
        conn.receive_data(HEADER.pack(1001, 4, 0, 0))
    assert info.value.code is GoodbyeCode.FRAME_TOO_LARGE
    assert conn.bytes_received == len(encode(SERVER_HELLO)) + 8


def test_byte_at_a_time_gives_the_same_messages() -> None:
    data = (
        encode(SERVER_HELLO) + chunk(2, 0, [("a", b"1", "r")]) + chunk(2, 1, final=True) + upd(2, 3) + encode(Ping(9))
    )
    whole = ClientConnection(HELLO).receive_data(data)
    conn = ClientConnection(HELLO)
    trickled = list(itertools.chain.from_iterable(conn.receive_data(data[i : i + 1]) for i in range(len(data))))
    assert trickled == whole and len(whole) == 5
    assert conn.seq == 3


def test_client_helpers() -> None:
    assert decode(_one_frame(ClientConnection.pong(Ping(77)))) == Pong(77)
    assert decode(_one_frame(ClientConnection.goodbye("client-closing", "stop"))) == Goodbye("client-closing", "stop")


@pytest.mark.parametrize("code", list(GoodbyeCode))
def test_goodbye_codes_go_on_the_wire_as_their_plain_string(code: GoodbyeCode) -> None:
    assert ClientConnection.goodbye(code, "r") == ClientConnection.goodbye(code.value, "r")
    decoded = decode(_one_frame(ClientConnection.goodbye(code, "r")))
    assert isinstance(decoded, Goodbye) and type(decoded.code) is str and decoded.code == code


def test_both_ends_walk_the_same_phases() -> None:
    client = ClientConnection(HELLO)
    server = ServerConnection()
    assert client.state is server.state is ConnState.HANDSHAKE
    server.receive_data(client.initiate())
    assert server.state is ConnState.STREAMING  # the server shell keeps QUEUED/SNAPSHOT itself
    client.receive_data(encode(SERVER_HELLO))
    assert client.state is ConnState.SNAPSHOT
    client.receive_data(chunk(5, 0, final=True))
    assert client.state is ConnState.STREAMING
    client.receive_data(encode(Goodbye(GoodbyeCode.REBALANCE)))
    server.receive_data(encode(Goodbye(GoodbyeCode.CLIENT_CLOSING)))
    assert client.state is server.state is ConnState.CLOSED


def _one_frame(data: bytes):
    reader = FrameReader()
    reader.feed(data)
    (frame,) = reader.frames()
    return frame


# ---------------------------------------------------------------------------------------------------
# Server connection


def test_server_requires_hello_first() -> None:
    for first in (encode(Ping(1)), encode(Pong(1)), upd(0, 1), encode(SERVER_HELLO)):
        with pytest.raises(ProtocolError, match="expected a client hello"):
            ServerConnection().receive_data(first)


def test_server_accepts_hello_then_ping_pong_goodbye() -> None:
    conn = ServerConnection()
    msgs = conn.receive_data(encode(HELLO) + encode(Pong(5)) + encode(Ping(6)))
    assert msgs == [HELLO, Pong(5), Ping(6)]
    assert conn.hello == HELLO and conn.state is ConnState.STREAMING
    assert conn.receive_data(encode(Goodbye("client-closing"))) == [Goodbye("client-closing")]
    assert conn.state is ConnState.CLOSED


@pytest.mark.parametrize(
    "frame",
    [
        encode(HELLO),
        encode(SERVER_HELLO),
        upd(0, 1),
        chunk(1, 0, final=True),
        encode_sync_status(0, 1, 0, IN_SYNC),
    ],
)
def test_server_rejects_client_sending_anything_else_after_hello(frame) -> None:
    conn = ServerConnection()
    conn.receive_data(encode(HELLO))
    with pytest.raises(ProtocolError, match="may not send"):
        conn.receive_data(frame)


def test_server_accepts_goodbye_before_hello() -> None:
    conn = ServerConnection()
    assert conn.receive_data(encode(Goodbye("client-closing"))) == [Goodbye("client-closing")]
    assert conn.state is ConnState.CLOSED


def test_server_rejects_large_client_frame_from_header() -> None:
    conn = ServerConnection()
    with pytest.raises(FrameTooLarge):
        conn.receive_data(HEADER.pack((1 << 20) + 1, 1, 0, 0))
    ok = ServerConnection()
    hello = ClientHello("h" * ((1 << 20) - 200), "felix")
    assert ok.receive_data(encode(hello)) == [hello]
    assert ok.bytes_received == len(encode(hello))


def test_server_decodes_hello_with_unknown_fields_and_old_clients() -> None:
    import msgpack

    from protocol.framing import encode_frame

    body = msgpack.packb({"versions": [1], "hostname": "old", "syncer_type": "bgp", "new_field": [1, 2]})
    (hello,) = ServerConnection().receive_data(encode_frame(1, body))
    assert hello == ClientHello("old", "bgp", (1,), "", (), "")


# ---------------------------------------------------------------------------------------------------
# negotiate()


def test_negotiate_success_picks_zstd_and_echoes_settings() -> None:
    sh = negotiate(HELLO, ["felix", "bgp"], True, "srv-1", 2.5)
    assert sh == ServerHello(PROTOCOL_VERSION, "felix", "zstd", "srv-1", 2.5)
    # The client accepts what negotiate() picks for its own hello.
    conn = ClientConnection(HELLO)
    conn.receive_data(encode(sh))
    assert conn.state is ConnState.SNAPSHOT


def test_negotiate_picks_highest_common_version() -> None:
    assert negotiate(ClientHello("h", "felix", versions=(0, *SUPPORTED_VERSIONS, 99)), ["felix"]).version == max(
        SUPPORTED_VERSIONS
    )


@pytest.mark.parametrize(
    ("compression", "enabled", "expected"),
    [
        (("zstd",), True, "zstd"),
        (("lz4", "zstd"), True, "zstd"),
        (("zstd",), False, None),
        ((), True, None),
        (("lz4",), True, None),
    ],
)
def test_negotiate_compression(compression, enabled, expected) -> None:
    assert negotiate(ClientHello("h", "felix", compression=compression), ["felix"], enabled).compression == expected


def test_negotiate_rejects_unsupported_version_before_syncer() -> None:
    with pytest.raises(HandshakeRejected) as info:
        negotiate(ClientHello("h", "nope", versions=(99, 100)), ["felix"])
    assert info.value.code is GoodbyeCode.UNSUPPORTED_VERSION


def test_negotiate_rejects_unknown_syncer() -> None:
    with pytest.raises(HandshakeRejected) as info:
        negotiate(ClientHello("h", "bgp"), ["felix"])
    assert info.value.code is GoodbyeCode.UNKNOWN_SYNCER
    assert "bgp" in str(info.value)


@given(
    st.lists(st.integers(-5, 5), min_size=1, max_size=4).map(tuple),
    st.sampled_from(["felix", "bgp", "x"]),
    st.lists(st.sampled_from(["zstd", "lz4", "gzip"]), max_size=3).map(tuple),
    st.booleans(),
)
def test_negotiate_outcome_is_always_acceptable_to_the_client(versions, syncer, compression, enabled) -> None:
    hello = ClientHello("h", syncer, versions, compression=compression)
    try:
        sh = negotiate(hello, ["felix", "bgp"], enabled)
    except HandshakeRejected as exc:
        assert exc.code in (GoodbyeCode.UNSUPPORTED_VERSION, GoodbyeCode.UNKNOWN_SYNCER)
        assert not set(versions) & set(SUPPORTED_VERSIONS) or syncer == "x"
        return
    conn = ClientConnection(hello)
    conn.receive_data(encode(sh))  # never HandshakeRejected
    assert sh.version in versions and sh.syncer_type == syncer
    assert sh.compression == ("zstd" if enabled and "zstd" in compression else None)
