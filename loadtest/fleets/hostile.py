"""Hostile peers: connections that try to make typha spend memory, CPU, file descriptors or log lines.

Design note
-----------
Each kind is one way a peer that has proved nothing (or, after a hello, a misbehaving agent) could
cost the server; `loadtest hostile` runs one kind at a time against a real typha while well-behaved
agents watch, and reports what it cost. The attacker runs in a worker process of its own, so its CPU
and file descriptors are not typha's or the agents'. It keeps `connections` of its kind open for the
whole attack: a connection typha closes is dialled again (at most `concurrency` dials in flight),
because a real attacker would do the same, and a budget that only holds until the first eviction
proves nothing.

Every connection is an `asyncio.Protocol` with no task of its own, so ten thousand of them cost the
attacker a few tens of MB; reading is paused for the kinds that never read, so their bytes stay in the
kernel buffers the attack is about.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any, cast

from protocol import ClientHello, Goodbye, MsgType, Ping, encode
from protocol.framing import HEADER

from .workers import WorkerFleet


@dataclass(frozen=True)
class Kind:
    name: str
    port: str  # "sync" or "health"
    hello: bool  # says a valid hello first
    help: str


KINDS: dict[str, Kind] = {
    k.name: k
    for k in (
        Kind("idle", "sync", False, "connect and send nothing (the handshake budget, file descriptors)"),
        Kind(
            "partial-hello", "sync", False, "a hello frame header at the size limit, then all of its body but one byte"
        ),
        Kind("big-frame", "sync", False, "a 1 MiB UPDATES frame before any hello (refused from its header)"),
        Kind("tls-silent", "sync", False, "the first bytes of a TLS ClientHello, then nothing"),
        Kind("partial-after-hello", "sync", True, "a valid hello, then a partial 4 KiB frame; reads what it is sent"),
        Kind("no-read", "sync", True, "a valid hello, then never reads (kernel socket memory, snapshot slots)"),
        Kind("slow-read", "sync", True, "a valid hello, then reads about 1 KiB/s (snapshot slots)"),
        Kind("ping-flood", "sync", True, "a valid hello, then PINGs as fast as it can, never reading"),
        Kind(
            "log-forge", "sync", True, "a 16 KiB hostname full of newlines and a long GOODBYE reason, again and again"
        ),
        Kind("health-idle", "health", False, "idle sockets on the health port"),
        Kind("status-digest", "health", False, "GET /status?digest=1 in a loop on every connection"),
    )
}


@dataclass(slots=True)
class HostileSpec:
    kind: str
    host: str
    port: int
    connections: int
    concurrency: int = 200  # dials in flight at once
    max_hello_frame: int = 16 * 1024
    max_frame: int = 4 * 1024
    report_interval: float = 0.5


@dataclass(slots=True)
class HostileReport:
    worker: int
    open: int = 0  # connections currently established
    dialled: int = 0  # connections established in all
    closed_by_peer: int = 0  # closed by typha (EOF or reset)
    refused: int = 0  # dials that failed
    bytes_sent: int = 0
    bytes_received: int = 0
    lifetimes: list[float] = field(default_factory=list)  # seconds each connection typha closed had lived
    final: bool = False


_FORGED = "node\n2026-01-01 00:00:00,000 ERROR typha: forged line \x1b[2J"


class _Peer(asyncio.Protocol):
    """One hostile connection; what it does depends on the kind."""

    def __init__(self, attack: _Attack) -> None:
        self.attack = attack
        self.transport: asyncio.Transport | None = None
        self.opened = 0.0
        self.handle: asyncio.TimerHandle | None = None
        self.writable = True

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = t = cast(asyncio.Transport, transport)
        self.opened = time.monotonic()
        a = self.attack
        a.report.open += 1
        a.report.dialled += 1
        kind, spec = a.kind.name, a.spec
        if kind in ("no-read", "ping-flood", "idle", "partial-hello", "health-idle", "tls-silent"):
            t.pause_reading()
        if a.kind.hello:
            hostname = (_FORGED * 300)[: spec.max_hello_frame - 200] if kind == "log-forge" else f"hostile-{id(self)}"
            # No compression: the snapshot it is sent is as large as it can be made.
            self.send(encode(ClientHello(hostname, "felix", info="loadtest hostile", compression=())))
        if kind == "partial-hello":
            self.send(
                HEADER.pack(spec.max_hello_frame, MsgType.CLIENT_HELLO, 0, 0) + b"\0" * (spec.max_hello_frame - 1)
            )
        elif kind == "big-frame":
            self.send(HEADER.pack(1 << 20, MsgType.UPDATES, 0, 0) + b"\0" * (1 << 20))
        elif kind == "tls-silent":
            self.send(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + os.urandom(40))
        elif kind == "partial-after-hello":
            self.send(HEADER.pack(spec.max_frame, MsgType.GOODBYE, 0, 0) + b"\0" * (spec.max_frame - 1))
        elif kind == "ping-flood":
            self.flood()
        elif kind == "log-forge":
            self.send(encode(Goodbye("client-closing", (_FORGED * 200)[: spec.max_frame - 100])))
            t.close()
        elif kind == "slow-read":
            sock = t.get_extra_info("socket")
            if sock is not None:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        elif kind == "status-digest":
            self.ask_status()

    def send(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)
            self.attack.report.bytes_sent += len(data)

    def flood(self) -> None:
        """PINGs until the socket pushes back, then again as soon as it drains."""
        burst = encode(Ping(1)) * 1000
        while self.writable and self.transport is not None and not self.transport.is_closing():
            self.send(burst)

    def ask_status(self) -> None:
        self.send(b"GET /status?digest=1 HTTP/1.1\r\nHost: typha\r\n\r\n")

    def pause_writing(self) -> None:
        self.writable = False

    def resume_writing(self) -> None:
        self.writable = True
        if self.attack.kind.name == "ping-flood":
            self.flood()

    def data_received(self, data: bytes) -> None:
        a = self.attack
        a.report.bytes_received += len(data)
        if a.kind.name == "slow-read" and self.transport is not None:
            self.transport.pause_reading()  # about 1 KiB/s: resume after len(data) / 1024 seconds
            self.handle = asyncio.get_running_loop().call_later(len(data) / 1024, self._resume)
        elif a.kind.name == "status-digest" and data.endswith(b"}"):
            self.ask_status()  # the JSON answer is complete: ask again

    def _resume(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        a = self.attack
        a.report.open -= 1
        if not a.stopping:
            a.report.closed_by_peer += 1
            if len(a.report.lifetimes) < 100_000:
                a.report.lifetimes.append(time.monotonic() - self.opened)
        if self.handle is not None:
            self.handle.cancel()
        a.peers.discard(self)
        a.wake.set()


class _Attack:
    def __init__(self, spec: HostileSpec, worker: int) -> None:
        self.spec = spec
        self.kind = KINDS[spec.kind]
        self.report = HostileReport(worker)
        self.peers: set[_Peer] = set()
        self.stopping = False
        self.wake = asyncio.Event()
        self.dialling = 0
        self.dials: set[asyncio.Future[None]] = set()

    async def dial(self) -> None:
        loop = asyncio.get_running_loop()
        peer = _Peer(self)
        self.peers.add(peer)
        try:
            await asyncio.wait_for(loop.create_connection(lambda: peer, self.spec.host, self.spec.port), 10)
        except (OSError, TimeoutError):
            self.report.refused += 1
            self.peers.discard(peer)
            await asyncio.sleep(0.05)
        finally:
            self.dialling -= 1
            self.wake.set()

    async def run(self) -> None:
        while not self.stopping:
            self.wake.clear()
            want = self.spec.connections - len(self.peers)
            room = self.spec.concurrency - self.dialling
            for _ in range(max(0, min(want, room))):
                self.dialling += 1
                dial = asyncio.ensure_future(self.dial())
                self.dials.add(dial)
                dial.add_done_callback(self.dials.discard)
            try:
                await asyncio.wait_for(self.wake.wait(), 0.2)
            except TimeoutError:
                pass

    def stop(self) -> None:
        self.stopping = True
        for peer in list(self.peers):
            if peer.transport is not None:
                peer.transport.abort()


def _worker_main(spec: HostileSpec, worker: int, _ids: list[int], conn: Connection) -> None:
    import resource

    import uvloop

    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    uvloop.run(_worker(spec, worker, conn))


async def _worker(spec: HostileSpec, worker: int, conn: Connection) -> None:
    attack = _Attack(spec, worker)
    runner = asyncio.ensure_future(attack.run())
    try:
        while True:
            if conn.poll() and conn.recv() == "stop":
                break
            conn.send(attack.report)
            attack.report.lifetimes = []
            await asyncio.sleep(spec.report_interval)
    finally:
        attack.stop()
        runner.cancel()
        await asyncio.gather(runner, return_exceptions=True)
        attack.report.final = True
        conn.send(attack.report)
        conn.close()


class HostileFleet(WorkerFleet[HostileReport]):
    """Parent-side handle of the attacker process."""

    name = "hostile"

    def __init__(self, spec: HostileSpec) -> None:
        super().__init__(1, 1)
        self.spec = spec
        self.lifetimes: list[float] = []

    def worker_target(self) -> Callable[..., None]:
        return _worker_main

    def worker_args(self, worker: int, agent_ids: list[int]) -> tuple[Any, ...]:
        return (self.spec, worker, agent_ids)

    def absorb(self, report: HostileReport) -> None:
        self.lifetimes.extend(report.lifetimes)
        self.reports[report.worker] = report
