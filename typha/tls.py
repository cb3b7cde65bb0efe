"""The sync server's TLS: one record layer per connection over memory buffers, and its configuration.

Design note
-----------
The obvious way to serve TLS from asyncio is `create_server(ssl=context)`. We do not, for three
reasons. The event loop would own each connection until its handshake ends, so a connection that
opens TLS and goes silent would be invisible to the server's per-peer budgets (handshake budget,
inbound bytes, file descriptors) for the whole handshake timeout. The context is fixed when the
listener starts, so a rotated certificate could only be taken by restarting it. And the loop's
SSL transport encrypts everything written to it at once into an unbounded buffer, outside the
flow control the fan-out relies on.

Instead the server accepts plain TCP and each `SyncConnection` owns a `TLSSession`: an
`ssl.SSLObject` between two `MemoryBIO`s, made from whatever context the `CertReloader` holds at
accept time. Bytes read from the socket go in, plaintext comes out; plaintext written goes in,
ciphertext for the socket comes out, and the socket's own flow control (`pause_writing`) applies
to exactly the bytes on the wire. A frame written to N agents is encrypted N times (TLS has a key
per connection) but encoded and compressed once, before encryption, and written in large pieces
(up to a snapshot chunk or ~1 MiB of joined updates), so the per-write overhead stays small. OpenSSL
is fed one record's worth at a time, because its memory buffers keep their largest size.

The handshake runs inside the same connection object, under the same handshake timer that bounds
the hello: a TLS client has `handshake_timeout` seconds for the TLS handshake *and* its hello, as
in Calico. When the handshake fails, OpenSSL's alert (unknown CA, certificate required, expired)
is flushed to the peer before the close, so a misconfigured agent logs why.
"""

from __future__ import annotations

import ssl

from common.runtime import StartupError
from protocol.framing import HEADER, HEADER_SIZE
from protocol.messages import MsgType
from protocol.tls import TLS_HANDSHAKE_RECORD, CertReloader, TLSFiles

from .config import ServerConfig

_READ_CHUNK = 256 * 1024
_RECORD = 16 * 1024  # the most plaintext one TLS record carries


class TLSSession:
    """The server end of one TLS connection, sans I/O: `receive` ciphertext, `encrypt` plaintext."""

    __slots__ = ("_in", "_obj", "_out", "handshake_done", "peer_closed")

    def __init__(self, context: ssl.SSLContext) -> None:
        self._in = ssl.MemoryBIO()
        self._out = ssl.MemoryBIO()
        self._obj = context.wrap_bio(self._in, self._out, server_side=True)
        self.handshake_done = False
        self.peer_closed = False  # the peer sent close_notify

    def receive(self, data: bytes) -> tuple[bytes, bytes]:
        """Feed bytes read from the socket; returns (plaintext received, bytes to send back).

        Raises ssl.SSLError when the peer fails the handshake or sends a bad record; `pending()`
        then holds the alert to send before closing.
        """
        self._in.write(data)
        if not self.handshake_done:
            try:
                self._obj.do_handshake()
            except ssl.SSLWantReadError:
                return b"", self._out.read()
            self.handshake_done = True
        chunks = []
        while True:
            try:
                chunk = self._obj.read(_READ_CHUNK)
            except ssl.SSLWantReadError:
                break
            except ssl.SSLZeroReturnError:
                self.peer_closed = True
                break
            if not chunk:
                break
            chunks.append(chunk)
        return b"".join(chunks), self._out.read()

    def encrypt(self, data: bytes) -> bytes:
        """The TLS records carrying `data`.

        Fed to OpenSSL one record's worth at a time: its memory BIO keeps the capacity of the largest
        output it ever held, so encrypting a 1 MiB write at once would leave every connection holding
        a megabyte (measured: 988 KB per connection after one such write, 25 KB this way)."""
        if len(data) <= _RECORD:
            self._obj.write(data)
            return self._out.read()
        obj, out = self._obj, self._out
        parts = []
        with memoryview(data) as view:
            for i in range(0, len(data), _RECORD):
                obj.write(view[i : i + _RECORD])
                parts.append(out.read())
        return b"".join(parts)

    def pending(self) -> bytes:
        """Bytes OpenSSL has queued for the peer (an alert after a failed handshake)."""
        return self._out.read()

    def peer_certificate(self) -> dict[str, object] | None:
        return self._obj.getpeercert() if self.handshake_done else None  # type: ignore[return-value]

    @property
    def version(self) -> str | None:
        return self._obj.version()


def looks_like_tls(data: bytes) -> bool:
    """Does a connection's first data start a TLS handshake record (``16 03 0x``)?"""
    return len(data) >= 2 and data[0] == TLS_HANDSHAKE_RECORD and data[1] == 3


def looks_like_plaintext_hello(data: bytes) -> bool:
    """Does a connection's first data start one of our CLIENT_HELLO frames (a plaintext agent)?"""
    if len(data) < HEADER_SIZE:
        return False
    _length, msg_type, flags, _ = HEADER.unpack_from(data, 0)
    return msg_type == MsgType.CLIENT_HELLO and flags == 0


def tls_files(cfg: ServerConfig) -> TLSFiles | None:
    """The server's TLS settings as `TLSFiles`, or None when none is set (plaintext)."""
    if not (cfg.ca_file or cfg.server_cert_file or cfg.server_key_file):
        return None
    return TLSFiles(cfg.ca_file, cfg.server_cert_file, cfg.server_key_file, cfg.client_cn, cfg.client_uri_san)


def server_tls(cfg: ServerConfig) -> CertReloader | None:
    """Load the server's certificates; a file that does not load is a start-up error naming its setting."""
    try:
        files = tls_files(cfg)
        if files is None:
            return None
        return CertReloader.load(files, True, ("TYPHA_CAFILE", "TYPHA_SERVERCERTFILE", "TYPHA_SERVERKEYFILE"))
    except ValueError as exc:  # TLSConfigError, or TLSFiles refusing half a configuration
        raise StartupError(str(exc)) from None
