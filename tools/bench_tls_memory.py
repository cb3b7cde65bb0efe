"""What one TLS connection holds in typha's heap (docs/security.md, "What TLS costs the fan-out").

    .venv/bin/python tools/bench_tls_memory.py [--connections 300]

Builds typha's server end (`typha.tls.TLSSession`) and a client for each connection over memory BIOs,
runs the mutual handshake, sends a 1 MiB snapshot through `encrypt` and a few small frames back, then
drops the clients and reports the heap bytes still in use per connection (glibc's mallinfo2, which
counts OpenSSL's allocations too, unlike tracemalloc) after the handshake and after the data. RSS is
not used: it also holds the allocator's free memory, which depends on everything else the process did.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import os
import ssl
import tempfile

from loadtest.support.certs import write_cluster
from protocol.tls import TLSFiles, client_context, server_context
from typha.tls import TLSSession


class _MallInfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in (
            "arena",
            "ordblks",
            "smblks",
            "hblks",
            "hblkhd",
            "usmblks",
            "fsmblks",
            "uordblks",
            "fordblks",
            "keepcost",
        )
    ]


_libc = ctypes.CDLL("libc.so.6")
_libc.mallinfo2.restype = _MallInfo2


def heap_in_use() -> int:
    gc.collect()
    info = _libc.mallinfo2()
    return int(info.uordblks + info.hblkhd)


def _pump(client: ssl.SSLObject, incoming: ssl.MemoryBIO, data: bytes) -> None:
    """Give the client ciphertext a record at a time (so its own buffers stay small) and read it all."""
    with memoryview(data) as view:
        for i in range(0, len(data), 16 * 1024):
            incoming.write(view[i : i + 16 * 1024])
            while True:
                try:
                    if not client.read(64 * 1024):
                        break
                except ssl.SSLWantReadError:
                    break


def measure(connections: int, payload: int) -> float:
    """Heap bytes typha's end of one connection holds, after the handshake and `payload` bytes sent."""
    with tempfile.TemporaryDirectory() as tmp:
        c = write_cluster(tmp)
        sctx = server_context(TLSFiles(c.ca, c.typha_cert, c.typha_key, c.felix_cn))
        cctx = client_context(TLSFiles(c.ca, c.felix_cert, c.felix_key, c.typha_cn))
    data = os.urandom(payload)
    servers: list[TLSSession] = []
    clients: list[tuple[ssl.SSLObject, ssl.MemoryBIO, ssl.MemoryBIO]] = []
    before = heap_in_use()
    for _ in range(connections):
        server = TLSSession(sctx)
        incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        client = cctx.wrap_bio(incoming, outgoing, server_side=False)
        while not server.handshake_done:
            try:
                client.do_handshake()
            except ssl.SSLWantReadError:
                pass
            _, reply = server.receive(outgoing.read())
            incoming.write(reply)
        client.do_handshake()  # takes the server's last flight (and TLS 1.3 session tickets)
        if data:
            _pump(client, incoming, server.encrypt(data))
        for _ in range(3):  # PONGs and the like, client -> server
            client.write(b"\0" * 24)
            server.receive(outgoing.read())
        servers.append(server)
        clients.append((client, incoming, outgoing))
    clients.clear()
    return (heap_in_use() - before) / connections


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--connections", type=int, default=300)
    args = p.parse_args()
    for payload, what in ((0, "after the handshake"), (1 << 20, "after a 1 MiB snapshot and 3 small frames back")):
        per = measure(args.connections, payload)
        print(f"typha's heap per TLS connection, {what}: {per / 1024:.1f} KiB ({args.connections} connections)")


if __name__ == "__main__":
    main()
