"""The per-peer budgets as the server applies them, over real loopback sockets.

`test_hostile_budgets` checks each budget as a plain object and `test_hostile_peers` what a whole
attack costs a typha process; these check that the server really applies each rule, so that removing
it fails a test: connections before their hello live in their own budget (oldest closed first) and not
in --max-connections; a connection whose writes are paused is not read from (its PINGs stay in the
kernel, no PONG is queued); the kernel send buffer is capped; a PING flood from a peer that reads is
closed; client-supplied text reaches the log escaped, truncated, and at a bounded rate.
"""

from __future__ import annotations

import array
import asyncio
import fcntl
import logging
import socket
import termios

import pytest

from protocol import ClientHello, ConnState, Goodbye, GoodbyeCode, Ping, encode
from typha.syncserver import SyncConnection, SyncServer

from .conftest import make_cache, wait_for
from .test_syncserver import dropped, raw_connect, read_until_goodbye, start_clients, stop_clients

pytestmark = pytest.mark.slow  # every test runs a typha server on loopback


def _kernel_queue(conn: SyncConnection, request: int) -> int:
    """Bytes in the kernel queue of the server's end of `conn`: FIONREAD (unread), TIOCOUTQ (unsent)."""
    assert conn.transport is not None
    buf = array.array("i", [0])
    fcntl.ioctl(conn.transport.get_extra_info("socket").fileno(), request, buf)
    return buf[0]


def _agent_conn(server: SyncServer) -> SyncConnection:
    [conn] = [c for c in server.connections if c.hello is not None]
    return conn


async def _non_reading_agent(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A hello without compression (the largest snapshot) from a socket with a small receive window,
    whose reader is never read: the server's writes to it pause within a few hundred KB."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 * 1024)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
    reader, writer = await asyncio.open_connection(sock=sock, limit=1 << 30)
    writer.transport.pause_reading()
    writer.write(encode(ClientHello("never-reads", "felix", compression=())))
    return reader, writer


async def test_connections_before_their_hello_have_their_own_budget_oldest_closed_first(server_factory) -> None:
    server = await server_factory(make_cache(10), max_connections=3, max_handshakes=5)
    idle = [await raw_connect(server.port) for _ in range(12)]
    await wait_for(lambda: dropped(server, "handshake-budget") == 7, 5, "the oldest idle sockets closed")
    assert len(server.guard.handshakes) == 5
    # The first ones opened are the ones closed (each gets EOF); the newest are still held.
    for reader, _ in idle[:7]:
        assert await asyncio.wait_for(reader.read(), 5) is not None
        assert reader.at_eof()
    assert not any(reader.at_eof() for reader, _ in idle[7:])
    # Twelve idle sockets did not use up --max-connections=3: three agents get in, and each new
    # connection pushes out one more idle socket (the oldest), never an agent.
    clients, tasks = await start_clients(server.port, 3)
    await asyncio.gather(*(c.wait_in_sync(10) for c in clients))
    idle_left = len(server.guard.handshakes)  # 2 to 4: how many agents dialled before the others' hellos
    assert server.agents == 3 and 2 <= idle_left <= 4
    assert dropped(server, "handshake-budget") == 7 + 5 - idle_left and dropped(server, "server-full") == 0
    await stop_clients(clients, tasks)
    for _, writer in idle:
        writer.close()


async def test_a_peer_whose_writes_are_paused_is_not_read_from(server_factory) -> None:
    """A peer that never reads and floods PINGs: its PINGs stay in the kernel, unread, so they cost
    neither CPU nor queued PONGs; read, they would close it as a PING flood within ten."""
    cap = 32 * 1024
    server = await server_factory(make_cache(20_000), socket_send_buffer=cap, compression=False)
    _, writer = await _non_reading_agent(server.port)
    await wait_for(lambda: any(c.paused for c in server.connections), 10, "the server's writes to pause")
    conn = _agent_conn(server)
    # The kernel send buffer is capped (Linux reports twice what was asked, its bookkeeping included),
    # so what a peer that stops reading holds in typha's kernel is bounded by it, not by autotuning
    # (without the cap this whole snapshot fits in the kernel's buffers and the writes never pause).
    sock = conn.transport.get_extra_info("socket")  # type: ignore[union-attr]
    assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF) == 2 * cap
    assert _kernel_queue(conn, termios.TIOCOUTQ) <= 3 * cap  # the last write may overshoot by one
    queued = conn.transport.get_write_buffer_size()  # type: ignore[union-attr]
    flood = encode(Ping(1)) * 200
    writer.write(flood)
    await wait_for(lambda: _kernel_queue(conn, termios.FIONREAD) >= len(flood), 5, "the PINGs to reach typha")
    # Give typha many loop iterations in which it could read them: another agent's whole snapshot.
    clients, tasks = await start_clients(server.port, 1)
    await clients[0].wait_in_sync(10)
    await stop_clients(clients, tasks)
    assert conn.state is ConnState.SNAPSHOT and dropped(server, "ping-flood") == 0
    assert _kernel_queue(conn, termios.FIONREAD) >= len(flood)  # still unread
    assert conn.transport.get_write_buffer_size() == queued  # type: ignore[union-attr]
    writer.transport.abort()


async def test_a_ping_flood_from_a_reading_peer_is_closed(server_factory) -> None:
    server = await server_factory(make_cache(10))
    reader, writer = await raw_connect(server.port)
    writer.write(encode(ClientHello("flood", "felix")) + encode(Ping(1)) * 50)
    goodbye = await read_until_goodbye(reader, 5)
    assert goodbye is not None and goodbye.code == GoodbyeCode.PROTOCOL_ERROR.value
    assert "PINGs" in goodbye.reason
    assert dropped(server, "ping-flood") == 1
    writer.close()


async def test_client_text_reaches_the_log_escaped_truncated_and_rate_limited(server_factory, caplog) -> None:
    caplog.set_level(logging.INFO, logger="typha.server")
    server = await server_factory(make_cache(10))
    forged_host = "node-1\n2026-12-06 INFO typha.server forged line " + "h" * 10_000
    forged_reason = "bye\n2026-12-06 ERROR forged " + "r" * 3_000
    peers = 60
    conns = [await raw_connect(server.port) for _ in range(peers)]
    for _, writer in conns:
        writer.write(encode(ClientHello(forged_host, "felix")) + encode(Goodbye("client-closing", forged_reason)))
    for reader, _ in conns:
        await asyncio.wait_for(reader.read(), 10)  # EOF: the server closed its end after the goodbye
    goodbyes = [r.getMessage() for r in caplog.records if "said goodbye" in r.getMessage()]
    assert goodbyes, "the goodbyes are logged"
    # Sixty goodbyes within a second or two: the limiter lets 20 a second of a kind through.
    assert len(goodbyes) < peers * 3 // 4, len(goodbyes)
    for line in (r.getMessage() for r in caplog.records):
        assert "\n" not in line
        assert len(line) < 800, line[:200]
    assert any("node-1\\n2026" in line and "chars)" in line for line in goodbyes)
    for _, writer in conns:
        writer.close()
