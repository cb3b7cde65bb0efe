"""Frame layer: length-prefixed frames with a fixed binary header, and a receive buffer.

Design note
-----------
Every frame starts with an 8-byte header ``!IBBH`` = (body length, message type, flags, reserved).
Frames that carry cache state (UPDATES, SNAPSHOT, SYNC_STATUS) begin their body with a fixed 32-byte
*sequence preamble* ``!QQQIBBH`` = (base, seq, created_ns, count, status, reserved, reserved), and only
then the msgpack payload, which alone may be compressed.

Why a binary header and preamble instead of one msgpack map per frame: a reader can find frame
boundaries, reject an oversized frame before buffering a byte of it, and check sequence continuity and
KV counts without decompressing or decoding anything. That is what lets one load-test process verify
thousands of agents' streams cheaply, and lets a server refuse a 4 GiB "frame" after 8 bytes.

The receive buffer keeps one bytearray and a read offset, compacting only when the consumed prefix
is large, so a stream of small frames costs no quadratic copying.
"""

from __future__ import annotations

import struct
from typing import NamedTuple

from .errors import FrameTooLarge, ProtocolError
from .messages import MsgType

HEADER = struct.Struct("!IBBH")
HEADER_SIZE = HEADER.size  # 8
PREAMBLE = struct.Struct("!QQQIBBH")
PREAMBLE_SIZE = PREAMBLE.size  # 32

FLAG_COMPRESSED = 0x01  # payload after the preamble is a zstd frame
FLAG_FINAL = 0x02  # last chunk of a snapshot
FLAG_PARTIAL = 0x04  # a reconcile's snapshot: it covers only the leaves the client asked for
KNOWN_FLAGS = FLAG_COMPRESSED | FLAG_FINAL | FLAG_PARTIAL

#: Message types whose body starts with the sequence preamble.
SEQUENCED_TYPES = frozenset({MsgType.UPDATES, MsgType.SNAPSHOT, MsgType.SYNC_STATUS})

#: Servers refuse client frames above this by default (Typha's limit).
DEFAULT_MAX_CLIENT_FRAME = 1 << 20
#: Clients accept much larger frames from servers (snapshot chunks), and bound decompression too.
DEFAULT_MAX_SERVER_FRAME = 64 << 20

_MAX_BODY = (1 << 32) - 1


class Frame(NamedTuple):
    msg_type: int
    flags: int
    body: bytes


class Preamble(NamedTuple):
    base: int  # previous breadcrumb seq (UPDATES/SYNC_STATUS) or chunk index (SNAPSHOT)
    seq: int
    created_ns: int
    count: int  # type: ignore[assignment]  # a field named like tuple.count, on purpose: the wire name
    status: int


def encode_frame(msg_type: int, body: bytes, flags: int = 0) -> bytes:
    """Return the complete frame for `body`. Raises ValueError for a body too large to frame."""
    if len(body) > _MAX_BODY:
        raise ValueError(f"frame body of {len(body)} bytes exceeds the 32-bit length field")
    return HEADER.pack(len(body), msg_type, flags, 0) + body


def encode_sequenced_frame(
    msg_type: int,
    base: int,
    seq: int,
    created_ns: int,
    count: int,
    status: int,
    payload: bytes = b"",
    flags: int = 0,
) -> bytes:
    """Return a frame whose body is the sequence preamble followed by `payload`."""
    body_len = PREAMBLE_SIZE + len(payload)
    if body_len > _MAX_BODY:
        raise ValueError(f"frame body of {body_len} bytes exceeds the 32-bit length field")
    return b"".join(
        (
            HEADER.pack(body_len, msg_type, flags, 0),
            PREAMBLE.pack(base, seq, created_ns, count, status, 0, 0),
            payload,
        )
    )


def parse_preamble(body: bytes | memoryview) -> Preamble:
    if len(body) < PREAMBLE_SIZE:
        raise ProtocolError(f"sequenced frame body of {len(body)} bytes is shorter than its preamble")
    base, seq, created_ns, count, status, _, _ = PREAMBLE.unpack_from(body, 0)
    return Preamble(base, seq, created_ns, count, status)


class FrameReader:
    """Receive buffer that turns a byte stream into frames.

    `feed()` never raises; `next_frame()` raises ProtocolError as soon as the buffered bytes prove the
    stream invalid (an oversized length is detected from the header alone).

    With `headers_only`, the payload of a sequenced frame is skipped without ever being buffered: the
    frame is returned with only its preamble as body. That is the load test's cheap mode, where an
    agent checks sequence continuity and counts but has no use for the values.
    """

    __slots__ = ("_buf", "_pos", "_skip", "bytes_received", "frames_received", "headers_only", "max_body")

    def __init__(self, max_body: int = DEFAULT_MAX_CLIENT_FRAME, headers_only: bool = False) -> None:
        self._buf = bytearray()
        self._pos = 0
        self._skip = 0  # payload bytes still to discard (headers_only)
        self.max_body = max_body
        self.headers_only = headers_only
        self.bytes_received = 0
        self.frames_received = 0

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        n = len(data)
        self.bytes_received += n
        if self._skip and self._pos == len(self._buf):
            # Discarding a payload and nothing is buffered: drop bytes without copying them.
            if n <= self._skip:
                self._skip -= n
                return
            data = memoryview(data)[self._skip :]
            self._skip = 0
        if self._pos and self._pos == len(self._buf):
            # Everything consumed: restart cheaply instead of growing forever.
            self._buf.clear()
            self._pos = 0
        self._buf += data

    @property
    def buffered(self) -> int:
        return len(self._buf) - self._pos

    def peek_header(self) -> tuple[int, int, int] | None:
        """(body length, type, flags) of the next frame once its header has arrived, without taking it.

        Lets a reader refuse a frame by its type before buffering or decoding its body."""
        if self._skip or len(self._buf) - self._pos < HEADER_SIZE:
            return None
        body_len, msg_type, flags, _reserved = HEADER.unpack_from(self._buf, self._pos)
        return body_len, msg_type, flags

    def _consume(self, end: int) -> None:
        buf = self._buf
        if end >= 65536 and end * 2 >= len(buf):
            # Drop the consumed prefix once it dominates the buffer: amortised O(1) per byte.
            del buf[:end]
            self._pos = 0
        else:
            self._pos = end

    def next_frame(self) -> Frame | None:
        if self._skip:
            take = min(self._skip, len(self._buf) - self._pos)
            self._skip -= take
            self._consume(self._pos + take)
            if self._skip:
                return None
        buf, pos = self._buf, self._pos
        if len(buf) - pos < HEADER_SIZE:
            return None
        body_len, msg_type, flags, _reserved = HEADER.unpack_from(buf, pos)
        if body_len > self.max_body:
            raise FrameTooLarge(f"frame of type {msg_type} announces {body_len} bytes; the limit is {self.max_body}")
        if flags & ~KNOWN_FLAGS:
            raise ProtocolError(f"frame of type {msg_type} has unknown flags {flags:#04x}")
        start = pos + HEADER_SIZE
        if self.headers_only and body_len > PREAMBLE_SIZE and msg_type in SEQUENCED_TYPES:
            if len(buf) < start + PREAMBLE_SIZE:
                return None
            body = bytes(buf[start : start + PREAMBLE_SIZE])
            self._skip = body_len - PREAMBLE_SIZE
            self._consume(start + PREAMBLE_SIZE)
            self.frames_received += 1
            return Frame(msg_type, flags, body)
        end = start + body_len
        if len(buf) < end:
            return None
        with memoryview(buf) as view:
            body = bytes(view[start:end])  # one copy, not a bytearray slice and then a bytes copy
        self._consume(end)
        self.frames_received += 1
        return Frame(msg_type, flags, body)

    def frames(self) -> list[Frame]:
        """All complete frames buffered so far."""
        out = []
        while (frame := self.next_frame()) is not None:
            out.append(frame)
        return out
