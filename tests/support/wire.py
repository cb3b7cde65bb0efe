"""The wire format for tests: hypothesis strategies for every message, and small readers.

``messages`` draws any message the codec can encode (sequence numbers ordered as UPDATES and
SYNC_STATUS require); ``read_all`` frames a whole byte string; ``decode_only_protocol_errors`` is the
hostile-input contract (a frame decodes to a message or raises ProtocolError, nothing else);
``pieces`` cuts a stream where a test's drawn offsets say, as TCP may. ``HELLO``, ``SERVER_HELLO``,
``chunk`` and ``upd`` are a handshake and the sequenced frames that follow it, for state-machine tests.
"""

from __future__ import annotations

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from protocol import (
    COMPRESSION_ZSTD,
    KV,
    PROTOCOL_VERSION,
    ClientHello,
    Frame,
    FrameReader,
    Goodbye,
    GoodbyeCode,
    Ping,
    Pong,
    ProtocolError,
    ServerHello,
    SnapshotChunk,
    SyncStatus,
    SyncStatusChange,
    Updates,
    decode,
)
from protocol.codec import encode_snapshot_chunk, encode_updates

BIG = 64 << 20
FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# ---------------------------------------------------------------------------------------------------
# Strategies

u64 = st.integers(0, 2**64 - 1)
msgpack_int = st.integers(-(2**63), 2**64 - 1)
text = st.text(max_size=40)
statuses = st.sampled_from(list(SyncStatus))
kvs_st = st.lists(
    st.builds(KV, st.text(max_size=60), st.none() | st.binary(max_size=200), st.text(max_size=20)),
    max_size=25,
)


@st.composite
def ordered_pair(draw):
    """(base, seq) with base < seq, both u64, as UPDATES and SYNC_STATUS require."""
    base = draw(st.integers(0, 2**64 - 2))
    seq = draw(st.integers(base + 1, 2**64 - 1))
    return base, seq


client_hellos = st.builds(
    ClientHello,
    hostname=text,
    syncer_type=text,
    versions=st.lists(msgpack_int, min_size=1, max_size=5).map(tuple),
    info=text,
    compression=st.lists(text, max_size=4).map(tuple),
    connection_id=text,
)
server_hellos = st.builds(
    ServerHello,
    version=msgpack_int,
    syncer_type=text,
    compression=st.none() | text,
    server_id=text,
    ping_interval=st.floats(min_value=0.0, exclude_min=True, max_value=1e9, allow_nan=False),
)
pings = st.builds(Ping, msgpack_int)
pongs = st.builds(Pong, msgpack_int)
goodbyes = st.builds(Goodbye, st.sampled_from([c.value for c in GoodbyeCode]) | text, text)


@st.composite
def updates(draw):
    base, seq = draw(ordered_pair())
    kvs = draw(kvs_st)
    return Updates(base, seq, draw(u64), draw(statuses), len(kvs), kvs)


@st.composite
def snapshot_chunks(draw):
    kvs = draw(kvs_st)
    return SnapshotChunk(draw(u64), draw(u64), draw(u64), draw(statuses), len(kvs), draw(st.booleans()), kvs)


@st.composite
def status_changes(draw):
    base, seq = draw(ordered_pair())
    return SyncStatusChange(base, seq, draw(u64), draw(statuses))


messages = st.one_of(
    client_hellos, server_hellos, pings, pongs, goodbyes, updates(), snapshot_chunks(), status_changes()
)


def read_all(data: bytes, max_body: int = BIG) -> list[Frame]:
    reader = FrameReader(max_body)
    reader.feed(data)
    frames = reader.frames()
    assert reader.buffered == 0
    return frames


def decode_only_protocol_errors(frames, decompressor=None, decode_kvs=True) -> None:
    for frame in frames:
        try:
            msg = decode(frame, decompressor, decode_kvs)
        except ProtocolError:
            continue
        assert isinstance(
            msg, (ClientHello, ServerHello, Ping, Pong, Goodbye, Updates, SnapshotChunk, SyncStatusChange)
        )


def pieces(stream: bytes, cuts: list[int]) -> list[bytes]:
    """``stream`` cut at each of ``cuts`` (taken modulo its length): the pieces, in order."""
    points = sorted({c % (len(stream) + 1) for c in cuts})
    return [stream[a:b] for a, b in zip([0, *points], [*points, len(stream)])]


# --- a handshake and the frames after it ------------------------------------------------------------

HELLO = ClientHello("node-1", "felix", info="test", connection_id="c-1")
SERVER_HELLO = ServerHello(PROTOCOL_VERSION, "felix", COMPRESSION_ZSTD, "srv", 10.0)
IN_SYNC = SyncStatus.IN_SYNC


def chunk(seq: int, index: int, kvs=(), final: bool = False, status=IN_SYNC, compressor=None) -> bytes:
    return encode_snapshot_chunk(seq, index, 0, status, list(kvs), final, compressor)


def upd(prev: int, seq: int, kvs=(("k", b"v", "1"),), status=IN_SYNC, compressor=None) -> bytes:
    return encode_updates(prev, seq, 0, status, list(kvs), compressor)
