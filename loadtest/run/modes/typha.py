"""The typha mode: `--replicas` real typha processes follow the emulator; agents speak the protocol.

Agent i tries replica i % R first, then the others in turn. Most agents verify cheaply (sequence
continuity from frame headers); a sample decodes and keeps the full state, at least one per replica.

Verification (the pass condition): after churn, every agent connected, in sync and at the final
sequence number of the replica it is connected to; every decoding agent's state equal to the
projection of the emulator's final contents (zero missing, stale or extra keys); every replica's own
state digest equal to that projection too.
"""

from __future__ import annotations

import asyncio
import tempfile
import time
import zlib
from pathlib import Path

from rich.console import Console

from loadtest.fleets.agents import AgentFleet, FleetSpec
from loadtest.support.certs import ClusterCerts, write_cluster
from loadtest.support.cluster import truth
from loadtest.support.typha_api import CLIENT_LATENCY, FANOUT_LATENCY, FELIX, histogram_quantiles
from protocol.digest import state_digest
from protocol.tls import TLSFiles

from ..measure import api_totals, counter_increase, open_watches, restart_cuts, summary_of, typha_latencies
from ..progress import Progress, Rows, common_rows, typha_rows
from ..replicas import OBSERVE_ERRORS, Replica
from ..results import (
    AgentCounts,
    ApiCounters,
    BucketQuantiles,
    FaultRecord,
    HistogramData,
    ReplicaCheck,
    Sample,
    SampledAgent,
    SyncFigures,
    TyphaFigures,
    TyphaResult,
    TyphaVerification,
    WireFigures,
)
from ..scenario import Scenario
from .base import ModeError, ModeRun

# Counters whose increase over the churn is reported (TyphaCounters fields).
CHURN_COUNTERS = ("updates", "skipped", "breadcrumbs", "bytes_sent", "snapshots_generated", "snapshot_wire_bytes")


def decode_ids(agents: int, full_decode: int, replicas: int) -> list[int]:
    """Spread-out agent ids that decode, covering every replica (agent i starts at replica i % R)."""
    n = min(agents, max(full_decode, replicas if full_decode else 0))
    chosen: list[int] = []
    for j in range(n):
        want = j % replicas
        i = j * agents // max(1, n)
        while i < agents and (i % replicas != want or i in chosen):
            i += 1
        if i >= agents:
            i = next(x for x in range(agents) if x not in chosen)
        chosen.append(i)
    return sorted(chosen)


class TyphaRun(ModeRun):
    mode = "typha"
    has_typha = True
    result: TyphaResult
    fleet: AgentFleet | None

    def __init__(self, sc: Scenario, console: Console, progress: Progress) -> None:
        super().__init__(sc, console, progress)
        self.replicas: list[Replica] = []
        self.workdir = tempfile.TemporaryDirectory(prefix="pytypha-run-")
        self.lat0: dict[float, float] = {}
        self.fan0: dict[float, float] = {}
        self.cpu0: list[float] = []
        self.agents_bytes0 = 0
        self.api_before_typha = ApiCounters()
        self.finals: dict[int, int] = {}  # port -> final seq, once drained
        self.certs: ClusterCerts | None = None

    @property
    def use_tls(self) -> bool:
        return self.sc.tls == "on"

    def new_result(self) -> TyphaResult:
        return TyphaResult(mode=self.mode, agents=self.sc.typha_agents, replicas=self.sc.replicas)

    @property
    def agents(self) -> int:
        return self.sc.typha_agents

    # -- servers -------------------------------------------------------------------------------------
    async def start_servers(self) -> None:
        sc, res = self.sc, self.result
        self.phase = "typha starting"
        kc = str(Path(self.workdir.name) / "kubeconfig")
        self.api.write_kubeconfig(kc)
        args = ["--datastore", "kubernetes", "--kubeconfig", kc, "--log-level", "ERROR", "--k8s-page-size", "1000"]
        if self.use_tls:
            self.certs = c = write_cluster(Path(self.workdir.name) / "tls")
            args += ["--cafile", c.ca, "--servercertfile", c.typha_cert, "--serverkeyfile", c.typha_key]
            args += ["--clientcn", c.felix_cn]
        args += sc.typha_args
        self.replicas = [
            Replica(i, [*args, "--server-id", f"typha-{i}"], sc.typha_ready_timeout()) for i in range(sc.replicas)
        ]
        self.api_before_typha = api_totals(self.api)
        t0 = time.monotonic()
        await asyncio.gather(*(r.start() for r in self.replicas))
        res.typha_ready_seconds = time.monotonic() - t0
        await asyncio.sleep(1.0)  # let the post-sync GC freeze settle before taking the baseline
        for r in self.replicas:
            r.rss_baseline = r.rss()
        res.typha_rss_baseline = [r.rss_baseline for r in self.replicas]
        res.typha_cpu_startup = [r.cpu() for r in self.replicas]
        self.mark("typha ready", seconds=res.typha_ready_seconds)
        self.log(
            f"{sc.replicas} replica(s) ready in {res.typha_ready_seconds:.1f}s "
            f"(ports {', '.join(str(r.port) for r in self.replicas)}), "
            f"RSS {sum(r.rss_baseline for r in self.replicas) / 1e6:.0f} MB"
        )

    async def stop_servers(self, kill: bool) -> None:
        try:
            for r in self.replicas:
                try:
                    await r.stop(kill=kill)
                except Exception as exc:  # the others must still be stopped
                    self.result.errors.append(f"stopping typha {r.index}: {type(exc).__name__}: {exc}")
        finally:
            self.workdir.cleanup()

    async def restart_replica(self, index: int | None, n: int, kill: bool, record: FaultRecord) -> None:
        idx = index if index is not None else n % len(self.replicas)
        kind = "kill-typha" if kill else "restart-typha"
        rep = self.replicas[idx]
        record.replica = idx
        self.mark(f"{kind} {idx}")
        self.log(f"fault at {record.at:g}s: {kind} replica {idx}")
        assert self.fleet is not None
        before = self._agent_counts()
        t0 = time.monotonic()
        record.stopped_after, record.ready_after = await rep.restart(kill=kill)
        self.mark(f"typha {idx} ready again", seconds=record.ready_after)
        ok = await self.wait_recovered(0, self.sc.agent_sync_timeout(self.mode))
        record.recovered_seconds = time.monotonic() - t0 if ok else None
        self._record_agents(record, before)
        self.mark(f"agents recovered from {kind} {idx}", ok=ok)

    _AGENT_COUNTS = ("disconnects", "reconciles", "snapshots", "bytes")

    def _agent_counts(self) -> dict[str, int]:
        assert self.fleet is not None
        return {name: self.fleet.total(name) for name in self._AGENT_COUNTS}

    def _record_agents(self, record: FaultRecord, before: dict[str, int]) -> None:
        """How the agents came back from a replica fault: disconnects, reconciles against full snapshots,
        and the bytes they received meanwhile (churn included)."""
        now = self._agent_counts()
        record.agents_disconnected = now["disconnects"] - before["disconnects"]
        record.agents_reconciled = now["reconciles"] - before["reconciles"]
        record.agents_resnapshotted = now["snapshots"] - before["snapshots"]
        record.bytes_to_agents = now["bytes"] - before["bytes"]

    async def rolling_restart(self, record: FaultRecord) -> None:
        """Every replica in turn, the next as soon as the previous is ready again; then wait (bounded)
        until every agent is connected and in sync."""
        self.mark("rolling-restart")
        self.log(f"fault at {record.at:g}s: rolling restart of {len(self.replicas)} replicas")
        assert self.fleet is not None
        before = self._agent_counts()
        t0 = time.monotonic()
        steps = []
        for rep in self.replicas:
            self.mark(f"rolling-restart: typha {rep.index}")
            stopped, ready = await rep.restart(kill=False)
            steps.append(f"typha {rep.index} stopped after {stopped:.1f}s, ready after {ready:.1f}s")
            self.mark(f"typha {rep.index} ready again", seconds=ready)
        record.ready_after = time.monotonic() - t0
        ok = await self.wait_recovered(0, self.sc.agent_sync_timeout(self.mode))
        record.recovered_seconds = time.monotonic() - t0 if ok else None
        self._record_agents(record, before)
        record.note = "; ".join(steps)
        self.mark("agents recovered from rolling-restart", ok=ok)

    # -- agents --------------------------------------------------------------------------------------
    async def start_agents(self) -> None:
        sc, res = self.sc, self.result
        ids = decode_ids(self.agents, sc.full_decode, sc.replicas)
        spec = FleetSpec(
            [("127.0.0.1", r.port) for r in self.replicas],
            agents=self.agents,
            processes=sc.processes,
            full_decode=len(ids),
            compression=sc.compression,
            connect_spread=sc.connect_spread,
            rotate_addresses=True,
            decode_ids=ids,
            arrival_key="created",
            state_hashes=True,
            tls=self.tls_files(),
        )
        res.decoding_agents = ids
        res.processes = min(sc.processes, self.agents)
        self.fleet = fleet = AgentFleet(spec)
        self.phase = "agents syncing"
        self.mark("agents connecting", agents=self.agents)
        t0 = time.monotonic()
        fleet.start()
        self.log(f"{self.agents:,} agents connecting from {fleet.processes} processes ({len(ids)} decoding: ids {ids})")
        limit = sc.agent_sync_timeout(self.mode)
        synced = await fleet.wait(lambda f: f.total("in_sync") == self.agents, limit)
        res.snapshot = SyncFigures(
            all_agents_synced=synced,
            all_agents_seconds=time.monotonic() - t0 if synced else None,
            in_sync=fleet.total("in_sync"),
            per_agent_seconds=summary_of(fleet.merged("snapshot_seconds")),
            agent_bytes=fleet.total("bytes"),
        )
        self.mark("all agents in sync" if synced else "agents sync timed out", seconds=time.monotonic() - t0)
        if not synced:
            raise ModeError(
                f"only {fleet.total('in_sync')} of {self.agents} agents synced within {limit:.0f}s (--sync-timeout)"
            )
        self.log(f"all {self.agents:,} agents in sync after {res.snapshot.all_agents_seconds:.1f}s")

    async def before_churn(self) -> None:
        assert self.fleet is not None
        res = self.result
        await asyncio.sleep(2.0)  # cached snapshots expire (1 s) and the agents settle
        res.rss_after_sync = [r.rss() for r in self.replicas]
        res.connections_after_sync = [(await r.observe()).connections for r in self.replicas]
        synced = api_totals(self.api)
        res.api_startup = synced.minus(self.api_before_typha)
        self.cpu0 = [r.cpu() for r in self.replicas]
        self.lat0, self.fan0 = await self.latency_buckets(CLIENT_LATENCY, FANOUT_LATENCY)
        self.agents_bytes0 = self.fleet.total("bytes")

    def fault_grace(self) -> float:
        return self.sc.drain_timeout + self.sc.agent_sync_timeout(self.mode)

    def recovered(self, watches: int) -> bool:
        """All replicas up, the API watches back, every agent connected and in sync."""
        assert self.fleet is not None
        return (
            all(r.up for r in self.replicas)
            and open_watches(self.api) >= watches
            and self.fleet.total("in_sync") == self.agents
            and self.fleet.total("not_connected") == 0
        )

    # -- sampling ------------------------------------------------------------------------------------
    def agent_sample(self, s: Sample) -> None:
        if self.fleet is not None:
            self.fleet.poll()
            d = self.fleet.describe()
            s.agents = AgentCounts(
                **d, not_connected=self.fleet.total("not_connected"), reporting=len(self.fleet.reports)
            )

    async def sample(self) -> Sample:
        s = await super().sample()
        s.typha = list(await asyncio.gather(*(r.observe() for r in self.replicas)))
        return s

    def progress_rows(self, s: Sample, prev: Sample | None) -> Rows:
        rows = common_rows(s, prev) + typha_rows(s, prev, self.agents)
        if self.fleet is not None and self.churn_start_ns:
            lat = self.fleet.last_agent_latency(self.churn_start_ns)
            if lat.count:
                rows.append(
                    (
                        "breadcrumb -> last agent p50/p99/max",
                        f"{lat.percentile(50) * 1e3:.0f} / {lat.percentile(99) * 1e3:.0f} / {lat.max * 1e3:.0f} ms",
                    )
                )
        if self.sc.faults:
            rows.append(("faults done", f"{len(self.faults_log)} of {len(self.sc.faults)}"))
        return rows

    # -- drain, measure, verify ----------------------------------------------------------------------
    def converged(self, finals: dict[int, int]) -> tuple[bool, int]:
        """(every agent at its replica's final seq, and how many are)."""
        assert self.fleet is not None
        at_final = 0
        all_ok = len(self.fleet.reports) == self.fleet.started
        for rep in self.fleet.reports.values():
            if rep.not_connected:
                all_ok = False
            for server, seqs in rep.seqs_by_server.items():
                final = finals.get(int(server.rsplit(":", 1)[1]))
                for seq, n in seqs.items():
                    if final is not None and seq >= final:
                        at_final += n
                    else:
                        all_ok = False
        return all_ok and at_final == self.agents and self.fleet.total("in_sync") == self.agents, at_final

    async def final_seqs(self) -> dict[int, int]:
        """port -> head seq of each replica."""
        out = {}
        for r in self.replicas:
            st = await asyncio.wait_for(r.proc.status(), 10)
            out[r.port] = st.syncer(FELIX).seq
        return out

    async def drain(self) -> bool:
        """Wait for every replica's seq to settle and every agent to reach it."""
        assert self.fleet is not None
        self.phase = "draining"
        deadline = time.monotonic() + self.sc.drain_timeout
        last: dict[int, int] = {}
        stable_since = time.monotonic()
        while time.monotonic() < deadline:
            try:
                finals = await self.final_seqs()
            except OBSERVE_ERRORS:  # a replica busy or restarting: ask again
                await asyncio.sleep(0.25)
                continue
            if finals != last:
                last, stable_since = finals, time.monotonic()
            self.fleet.poll()
            ok, _ = self.converged(finals)
            if ok and time.monotonic() - stable_since >= 1.5:
                self.finals = finals
                return True
            await asyncio.sleep(0.25)
        self.finals = last
        self.log(
            f"not every agent at its replica's final seq {self.sc.drain_timeout:.0f}s after churn (--drain-timeout)",
            "yellow",
        )
        return False

    async def measure(self, span: float) -> None:
        assert self.fleet is not None
        sc, res, f = self.sc, self.result, self.fleet
        typha_cpu = [r.cpu() - c for r, c in zip(self.replicas, self.cpu0)]
        f.poll()
        lat1, fan1 = await self.latency_buckets(CLIENT_LATENCY, FANOUT_LATENCY)
        rss_end = [r.rss() for r in self.replicas]
        baseline = sum(r.rss_baseline for r in self.replicas)
        t_from = self.churn_start_t - sc.sample_interval
        first_fault = min((x.at for x in sc.faults), default=None)
        totals = self.metric_increase(t_from, None)
        steady = self.metric_increase(t_from, self.churn_start_t + first_fault) if first_fault is not None else totals
        restarted = any(r.restarts for r in self.replicas)
        write_latency = histogram_quantiles(lat1 if restarted else {b: lat1[b] - self.lat0.get(b, 0) for b in lat1})
        fanout_latency = histogram_quantiles(fan1 if restarted else {b: fan1[b] - self.fan0.get(b, 0) for b in fan1})
        res.typha = TyphaFigures(
            cpu_seconds_churn=typha_cpu,
            cpu_fraction_churn=[c / max(1e-9, span) for c in typha_cpu],
            rss_baseline=[r.rss_baseline for r in self.replicas],
            rss_after_sync=res.rss_after_sync,
            rss_end=rss_end,
            rss_per_agent_bytes=(sum(res.rss_after_sync) - baseline) / self.agents,
            rss_per_agent_bytes_end=(sum(rss_end) - baseline) / self.agents,
            restarts=[r.restarts for r in self.replicas],
            churn_metrics=totals,
            dedup_ratio=totals["skipped"] / totals["updates"] if totals["updates"] else None,
            dedup_ratio_before_faults=steady["skipped"] / steady["updates"] if steady["updates"] else None,
            write_latency=BucketQuantiles(**write_latency),  # type: ignore[arg-type]
            fanout_latency=BucketQuantiles(**fanout_latency),  # type: ignore[arg-type]
        )
        assert res.api_startup is not None and res.api_churn is not None
        res.wire = WireFigures(
            agents_bytes_total=f.total("bytes"),
            agents_bytes_churn=f.total("bytes") - self.agents_bytes0,
            api_bytes_startup=res.api_startup.bytes_out,
            api_bytes_churn=res.api_churn.bytes_out,
        )
        lat = typha_latencies(
            self.churn_start_ns,
            self.rv_times,
            f.seq_last_arrival,
            f.seq_created,
            f.rv_last_arrival,
            f.rv_keys,
            restart_cuts(self.faults_log, self.churn_start_ns),
        )
        res.latency = {**lat.summaries, "per_delivery": summary_of(f.merged("latency"))}
        res.latency_points = lat.points
        res.writes = lat.writes
        res.histograms = {
            name: HistogramData(**f.merged(name if name != "per_delivery" else "latency").to_dict())  # type: ignore[arg-type]
            for name in ("per_delivery", "reconnect_seconds", "snapshot_seconds")
        }
        res.reconnect = summary_of(f.merged("reconnect_seconds"))
        res.disconnect_reasons = f.disconnect_reasons()

    async def latency_buckets(self, *names: str) -> list[dict[float, float]]:
        """Latency histograms' buckets, each summed over replicas (a replica that cannot answer is left
        out, and said so)."""
        totals: list[dict[float, float]] = [{} for _ in names]
        for r in self.replicas:
            try:
                m = await asyncio.wait_for(r.proc.metrics(), 10)
            except OBSERVE_ERRORS as exc:
                self.log(f"typha-{r.index} metrics unavailable ({exc!r}): latencies without it", "yellow")
                continue
            for name, total in zip(names, totals):
                for b, v in m.latency_buckets(name).items():
                    total[b] = total.get(b, 0.0) + v
        return totals

    def metric_increase(self, t_from: float, t_to: float | None) -> dict[str, float]:
        """Increase of typha's counters between two times, summed over replicas, across restarts."""
        out = {}
        for k in CHURN_COUNTERS:
            total = 0.0
            for r in self.replicas:
                vals = [
                    getattr(c, k)
                    for s in self.samples
                    if s.t >= t_from and (t_to is None or s.t <= t_to) and r.index < len(s.typha)
                    for c in [s.typha[r.index].counters]
                    if c is not None
                ]
                total += counter_increase(vals)
            out[k] = total
        return out

    async def verify(self, converged: bool) -> None:
        assert self.fleet is not None
        self.phase = "verifying"
        finals = self.finals
        v = TyphaVerification(converged=converged, final_seqs={str(k): s for k, s in finals.items()})
        self.result.verification = v
        served: list[ReplicaCheck] = []
        digests: list[str | None] = []
        for r in self.replicas:
            try:
                st = (await asyncio.wait_for(r.proc.status(digest=True), 60)).syncer(FELIX)
                served.append(ReplicaCheck(r.index, keys=st.keys))
                digests.append(st.digest)
            except OBSERVE_ERRORS as exc:  # a replica that cannot answer fails the check, saying why
                served.append(ReplicaCheck(r.index, error=f"{type(exc).__name__}: {exc}"))
                digests.append(None)
        t0 = time.monotonic()
        expected = truth(self.api.store)
        expected_digest = state_digest(expected.items())
        expected_hashes = {k: zlib.crc32(x) for k, x in expected.items()}
        v.truth_keys = len(expected)
        v.truth_seconds = time.monotonic() - t0
        for check, digest in zip(served, digests):
            check.matches_truth = digest == expected_digest
        v.replicas = served
        self.fleet.poll()
        v.agents = self.agents
        v.agents_in_sync = self.fleet.total("in_sync")
        v.agents_not_connected = self.fleet.total("not_connected")
        await self.stop_fleet(kill=False)
        # The final reports were filled before the clients stopped: count from them.
        ok_seq, v.agents_at_final_seq = self.converged(finals)
        agent_digests = self.fleet.digests()
        for rep in self.fleet.reports.values():
            for host, hashes in rep.state_hashes.items():
                v.sampled.append(
                    SampledAgent(
                        agent=host,
                        keys=len(hashes),
                        missing=sum(1 for k in expected_hashes if k not in hashes),
                        extra=sum(1 for k in hashes if k not in expected_hashes),
                        stale=sum(1 for k, h in hashes.items() if k in expected_hashes and expected_hashes[k] != h),
                        digest_matches=agent_digests.get(host, (0, ""))[1] == expected_digest,
                    )
                )
        v.sampled.sort(key=lambda x: x.agent)
        v.sampled_agents = len(v.sampled)
        v.sampled_matching = sum(1 for s in v.sampled if s.exact)
        v.missing = sum(s.missing for s in v.sampled)
        v.stale = sum(s.stale for s in v.sampled)
        v.extra = sum(s.extra for s in v.sampled)
        v.passed = bool(
            converged
            and ok_seq
            and v.agents_at_final_seq == self.agents
            and v.sampled
            and v.sampled_matching == len(v.sampled)
            and all(r.matches_truth for r in v.replicas)
        )

    def tls_files(self) -> TLSFiles | None:
        c = self.certs
        return TLSFiles(c.ca, c.felix_cert, c.felix_key, c.typha_cn) if c is not None else None


class TyphaTlsRun(TyphaRun):
    """The typha mode over mutual TLS (`--tls both` runs it after the plaintext one, same scenario)."""

    mode = "typha-tls"

    @property
    def use_tls(self) -> bool:
        return True
