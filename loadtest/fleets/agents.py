"""Simulated node agents, spread over worker processes, each speaking the real protocol.

Design note
-----------
Thousands of agents cannot all decode a full snapshot on two cores, and should not need to: the
protocol's frame headers carry sequence numbers, and the client library enforces their continuity
even when it skips decoding values. So most agents run the real `SyncClient` in cheap mode
(`decode_kvs=False`: a sequence gap is still a protocol error), and a sample decodes everything and
keeps the full view, which is checked against the truth at the end.

Each worker process runs its agents on one uvloop loop and reports cumulative figures over a pipe
every `report_interval`: connection counts, bytes, frames, a latency histogram (breadcrumb creation
to receipt, same host clock), and for every breadcrumb seq the latest time any of its agents
received it, so the parent can compute latency to the *last* agent across all processes. Workers use
the spawn start method: forking a process that runs an event loop copies its state into the child.

A real agent that reconnects to another replica offers the summary of its view and receives only the
buckets that differ (protocol.summary). A cheap agent holds no view, but the state at an (epoch, seq)
of a stream is the same for every agent that followed it: so each worker's decoding agents record the
summary of every state they pass through (`BorrowedSummaries`, bounded), and a cheap agent offers the
one of the state it stopped at. Without this, every moved agent of a load test would take a full
snapshot where a real one reconciles, and the test would measure the wrong fleet.
"""

from __future__ import annotations

import asyncio
import os
import time
import zlib
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any

from loadtest.support.histogram import LogHistogram, arrival_latency, merge_arrivals
from protocol import Message, SnapshotChunk, SyncStatus, SyncStatusChange, Updates
from protocol.client import SyncClient
from protocol.digest import state_digest
from protocol.summary import StateSummary
from protocol.tls import CertReloader, TLSFiles

from .workers import WorkerFleet


@dataclass(slots=True)
class FleetSpec:
    addresses: list[tuple[str, int]]
    agents: int
    processes: int = 2
    full_decode: int = 4  # agents (in total) that decode values and keep the whole view
    syncer_type: str = "felix"
    hostname_prefix: str = "agent"
    connect_spread: float = 1.0  # seconds over which each worker staggers its connects
    compression: bool = True
    report_interval: float = 0.5
    track_seq_arrivals: bool = True
    # Additions for `loadtest run` (defaults keep the original behaviour):
    rotate_addresses: bool = False  # agent i starts at addresses[i % n] (spreads agents over replicas)
    decode_ids: list[int] | None = None  # exactly these agent ids decode (instead of every Nth)
    # "seq": arrivals keyed by breadcrumb seq; "created": by the breadcrumb's creation time (ns), which
    # stays unique across several typha replicas and restarts, whose seq numbers collide.
    arrival_key: str = "seq"
    state_hashes: bool = False  # final report carries key -> crc32(value) of every decoding agent
    tls: TLSFiles | None = None  # mutual TLS: every agent presents this certificate, checks typha's


@dataclass(slots=True)
class _AgentProbe:
    client: SyncClient
    started: float
    snapshot_done: float = 0.0
    snapshot_done_ns: int = 1 << 62  # until the first snapshot completes, nothing counts as live
    disconnected_at: float = 0.0  # monotonic time of the last disconnect, until back in sync (0: none)
    resnapshotted: bool = False  # a snapshot completed since that disconnect
    seen_revisions: set[int] | None = (
        None  # with arrival_key "created": revisions this (decoding) agent already received
    )
    decoding: bool = False  # holds a full view: lends the summaries of its states to the cheap agents


@dataclass(slots=True)
class WorkerReport:
    worker: int
    agents: int = 0
    connected: int = 0
    streaming: int = 0
    in_sync: int = 0
    bytes: int = 0
    frames: int = 0
    kvs: int = 0
    disconnects: int = 0
    snapshots: int = 0  # full snapshots received, first ones included
    reconciles: int = 0  # reconnects that received only the buckets that differed
    min_seq: int = 0
    max_seq: int = 0
    latency: LogHistogram = field(default_factory=LogHistogram)
    snapshot_seconds: LogHistogram = field(default_factory=LogHistogram)
    seq_last_arrival: dict[int, int] = field(default_factory=dict)  # seq -> latest receipt (ns)
    seq_created: dict[int, int] = field(default_factory=dict)  # seq -> breadcrumb creation (ns)
    rv_last_arrival: dict[int, int] = field(default_factory=dict)  # KV revision -> latest receipt by a decoding agent
    digests: dict[str, tuple[int, str]] = field(default_factory=dict)  # hostname -> (keys, digest)
    disconnect_reasons: dict[str, int] = field(default_factory=dict)  # first words of each agent's last error
    final: bool = False
    # Additions for `loadtest run`:
    reconnect_seconds: LogHistogram = field(default_factory=LogHistogram)  # disconnect -> next snapshot + in-sync
    seqs_by_server: dict[str, dict[int, int]] = field(default_factory=dict)  # "host:port" -> {seq: agents}
    not_connected: int = 0
    rv_keys: list[tuple[int, int]] = field(
        default_factory=list
    )  # (KV revision, arrival key of its breadcrumb), since last report
    state_hashes: dict[str, dict[str, int]] = field(default_factory=dict)  # hostname -> key -> crc32(value)


class BorrowedSummaries:
    """Summaries of the states this worker's decoding agents passed through, by epoch and seq, for the
    cheap agents to offer when they reconnect (see the design note). Bounded: `capacity` states, the
    oldest dropped first (each is 129 KiB; 600 hold the last ~10 s of two streams at 100 events/s).

    A cheap agent asks for the state it stopped at. When a replica drains, its decoding agent may be
    dropped before some of its cheap agents, which then stopped at states it never saw: they get the
    latest recorded state of that stream before theirs. Offering an older state than one holds makes
    the server send the buckets that changed in between as well, so it can only overstate what a real
    agent would receive.
    """

    def __init__(self, capacity: int = 600) -> None:
        self.capacity = capacity
        self._book: OrderedDict[tuple[str, int], StateSummary] = OrderedDict()

    def record(self, client: SyncClient) -> None:
        """The state `client` holds now (call before it applies a message, and when it disconnects)."""
        summary = client.view.summary
        if summary is None or not client.epoch or not client.view.state:
            return
        key = (client.epoch, client.seq)
        if key in self._book:
            return
        self._book[key] = summary.copy()
        if len(self._book) > self.capacity:
            self._book.popitem(last=False)

    def __call__(self, epoch: str, seq: int) -> StateSummary | None:
        summary = self._book.get((epoch, seq))
        if summary is None:
            earlier = [(s, summ) for (e, s), summ in self._book.items() if e == epoch and s < seq]
            if not earlier:
                return None
            summary = max(earlier, key=lambda pair: pair[0])[1]
        return summary.copy()  # the client keeps what it offered; the book keeps its own


def _worker_main(spec: FleetSpec, worker: int, agent_ids: list[int], conn: Connection) -> None:
    import uvloop

    uvloop.run(_worker(spec, worker, agent_ids, conn))


async def _worker(spec: FleetSpec, worker: int, agent_ids: list[int], conn: Connection) -> None:
    report = WorkerReport(worker, agents=len(agent_ids))
    probes: list[_AgentProbe] = []
    tasks: list[asyncio.Task[None]] = []
    decode_every = max(1, spec.agents // max(1, spec.full_decode)) if spec.full_decode else 0
    decode_ids = set(spec.decode_ids) if spec.decode_ids is not None else None
    by_created = spec.arrival_key == "created"
    tls = CertReloader.for_client(spec.tls) if spec.tls is not None else None  # one context for all agents
    borrowed = BorrowedSummaries()

    def on_message_for(probe_index: int) -> Callable[[Message], None]:
        def on_message(msg: Message) -> None:
            now = time.time_ns()
            if probes[probe_index].decoding:
                borrowed.record(probes[probe_index].client)  # the state before `msg` is applied
            if isinstance(msg, (Updates, SyncStatusChange)):
                probe = probes[probe_index]
                if probe.disconnected_at and probe.resnapshotted and msg.status is SyncStatus.IN_SYNC:
                    report.reconnect_seconds.add(time.monotonic() - probe.disconnected_at)
                    probe.disconnected_at = 0.0
                # Breadcrumbs older than this agent's snapshot are catch-up after joining (a reused
                # snapshot may be up to a second old), not the latency of a live update.
                if msg.created_ns < probe.snapshot_done_ns:
                    return
                report.latency.add(max(0, now - msg.created_ns) / 1e9)
                key = msg.created_ns if by_created else msg.seq
                if isinstance(msg, Updates) and msg.kvs:
                    arrivals = report.rv_last_arrival
                    seen = probe.seen_revisions
                    for kv in msg.kvs:
                        if kv.revision.isdigit():
                            rev = int(kv.revision)
                            if seen is not None:
                                # A revision sent again (a restarted replica's relist streamed as updates)
                                # is not a new arrival: only the first receipt measures latency.
                                if rev in seen:
                                    continue
                                seen.add(rev)
                            arrivals[rev] = now
                            if by_created:
                                report.rv_keys.append((rev, key))
                if spec.track_seq_arrivals:
                    if report.seq_last_arrival.get(key, 0) < now:
                        report.seq_last_arrival[key] = now
                    report.seq_created[key] = msg.created_ns
            elif isinstance(msg, SnapshotChunk):
                probe = probes[probe_index]
                if probe.seen_revisions is not None and msg.kvs:
                    probe.seen_revisions.update(int(kv.revision) for kv in msg.kvs if kv.revision.isdigit())
                if not msg.final:
                    return
                first = probe.snapshot_done == 0.0
                probe.snapshot_done = time.monotonic()
                probe.snapshot_done_ns = now
                if first:  # a resync after a reconnect is measured by reconnect_seconds instead
                    report.snapshot_seconds.add(probe.snapshot_done - probe.started)
                if probe.disconnected_at:
                    probe.resnapshotted = True
                    if msg.status is SyncStatus.IN_SYNC:
                        report.reconnect_seconds.add(probe.snapshot_done - probe.disconnected_at)
                        probe.disconnected_at = 0.0

        return on_message

    def on_connection_for(probe_index: int) -> Callable[[bool, str], None]:
        def on_connection(up: bool, _detail: str) -> None:
            probe = probes[probe_index]
            if not up and probe.decoding:
                borrowed.record(probe.client)  # the state it stopped at
            if not up and not probe.disconnected_at and probe.snapshot_done:
                probe.disconnected_at = time.monotonic()
                probe.resnapshotted = False

        return on_connection

    for n, agent_id in enumerate(agent_ids):
        if decode_ids is not None:
            decode = agent_id in decode_ids
        else:
            decode = bool(decode_every) and agent_id % decode_every == 0 and agent_id // decode_every < spec.full_decode
        addresses = list(spec.addresses)
        if spec.rotate_addresses and addresses:
            r = agent_id % len(addresses)
            addresses = addresses[r:] + addresses[:r]
        client = SyncClient(
            addresses,
            spec.syncer_type,
            hostname=f"{spec.hostname_prefix}-{agent_id:05d}",
            info=f"loadtest worker {worker} pid {os.getpid()}",
            decode_kvs=decode,
            compression=spec.compression,
            on_message=on_message_for(n),
            on_connection=on_connection_for(n),
            backoff_initial=0.2,
            backoff_max=5.0,
            tls=tls,
            summary_source=None if decode else borrowed,
        )
        probes.append(
            _AgentProbe(
                client, time.monotonic(), seen_revisions=set() if decode and by_created else None, decoding=decode
            )
        )
    spread = spec.connect_spread / max(1, len(probes))
    for probe in probes:
        probe.started = time.monotonic()
        tasks.append(asyncio.create_task(probe.client.run()))
        if spread:
            await asyncio.sleep(spread)

    def fill(final: bool) -> WorkerReport:
        clients = [p.client for p in probes]
        report.connected = sum(1 for c in clients if c.connected_to is not None)
        report.streaming = sum(1 for c in clients if c._streaming.is_set())
        report.in_sync = sum(1 for c in clients if c.in_sync)
        report.bytes = sum(c.bytes_received for c in clients)
        report.frames = sum(c.stats.frames for c in clients)
        report.kvs = sum(c.stats.kvs_received for c in clients)
        report.disconnects = sum(c.stats.disconnects for c in clients)
        report.snapshots = sum(c.stats.snapshots for c in clients)
        report.reconciles = sum(c.stats.reconciles for c in clients)
        seqs = [c.seq for c in clients]
        report.min_seq, report.max_seq = (min(seqs), max(seqs)) if seqs else (0, 0)
        report.final = final
        reasons: dict[str, int] = {}
        for c in clients:
            if c.stats.disconnects:
                why = " ".join(c.stats.last_error.split()[:4])
                reasons[why] = reasons.get(why, 0) + 1
        report.disconnect_reasons = reasons
        by_server: dict[str, dict[int, int]] = {}
        not_connected = 0
        for c in clients:
            if c.connected_to is None:
                not_connected += 1
                continue
            seqs_here = by_server.setdefault(f"{c.connected_to[0]}:{c.connected_to[1]}", {})
            seqs_here[c.seq] = seqs_here.get(c.seq, 0) + 1
        report.seqs_by_server = by_server
        report.not_connected = not_connected
        if final:
            for c in clients:
                if c.decode_kvs:
                    items = [(k, kv.value) for k, kv in c.state.items()]
                    report.digests[c.hostname] = (len(items), state_digest(items))
                    if spec.state_hashes:
                        report.state_hashes[c.hostname] = {k: zlib.crc32(v or b"") for k, v in items}
        return report

    try:
        while True:
            if conn.poll():
                cmd = conn.recv()
                if cmd == "stop":
                    break
            conn.send(fill(False))
            report.seq_last_arrival = {}
            report.seq_created = {}
            report.rv_last_arrival = {}
            report.rv_keys = []
            await asyncio.sleep(spec.report_interval)
    finally:
        final = fill(True)
        for probe in probes:
            probe.client.stop()
        await asyncio.gather(*tasks, return_exceptions=True)
        conn.send(final)
        conn.close()


class AgentFleet(WorkerFleet[WorkerReport]):
    """Parent-side handle: starts the agent workers and merges their reports."""

    name = "agents"

    def __init__(self, spec: FleetSpec) -> None:
        super().__init__(spec.processes, spec.agents)
        self.spec = spec
        self.seq_last_arrival: dict[int, int] = {}
        self.seq_created: dict[int, int] = {}
        self.rv_last_arrival: dict[int, int] = {}
        self.rv_keys: dict[int, set[int]] = {}  # KV revision -> arrival keys of the breadcrumbs that carried it

    def worker_target(self) -> Callable[..., None]:
        return _worker_main

    def worker_args(self, worker: int, agent_ids: list[int]) -> tuple[Any, ...]:
        return (self.spec, worker, agent_ids)

    def absorb(self, rep: WorkerReport) -> None:
        # Latency histograms are cumulative per worker; arrivals are deltas since the last report.
        merge_arrivals(self.seq_last_arrival, rep.seq_last_arrival)
        merge_arrivals(self.rv_last_arrival, rep.rv_last_arrival)
        self.seq_created.update(rep.seq_created)
        for rv, key in rep.rv_keys:
            self.rv_keys.setdefault(rv, set()).add(key)
        self.reports[rep.worker] = rep

    def merged(self, attr: str) -> LogHistogram:
        h = LogHistogram()
        for r in self.reports.values():
            h.merge(getattr(r, attr))
        return h

    def last_agent_latency(self, since_ns: int = 0) -> LogHistogram:
        """For each breadcrumb: creation to its receipt by the last agent (over all workers)."""
        return arrival_latency(self.seq_last_arrival, self.seq_created, since_ns)

    def disconnect_reasons(self) -> dict[str, int]:
        """Agents by the first words of their last disconnect's reason, over all workers."""
        reasons: dict[str, int] = {}
        for r in self.reports.values():
            for why, n in r.disconnect_reasons.items():
                reasons[why] = reasons.get(why, 0) + n
        return reasons

    def digests(self) -> dict[str, tuple[int, str]]:
        out: dict[str, tuple[int, str]] = {}
        for r in self.reports.values():
            out.update(r.digests)
        return out

    def describe(self) -> dict[str, Any]:
        return {
            "agents": self.spec.agents,
            "connected": self.total("connected"),
            "streaming": self.total("streaming"),
            "in_sync": self.total("in_sync"),
            "bytes": self.total("bytes"),
            "frames": self.total("frames"),
            "kvs": self.total("kvs"),
            "disconnects": self.total("disconnects"),
        }
