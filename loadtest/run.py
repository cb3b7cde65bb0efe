"""`loadtest run`: a whole cluster on one machine, measured end to end.

What it stands up (everything on loopback, every phase bounded in time):
- the Kubernetes API-server emulator, in this process, seeded with a `SyntheticCluster`;
- `--replicas` real `typha` processes following it (`--datastore kubernetes`), each with its own ports;
- thousands of simulated agents in spawned worker processes (`agents.AgentFleet`), speaking the real
  protocol through `SyncClient`; agent i tries replica i % R first, then the others in turn. Most
  agents verify cheaply (sequence continuity from frame headers); a sample decodes and keeps the full
  state, at least one per replica;
- then churn written into the emulator at `--rate` events/s (or a `--ramp`), with faults on schedule.

With `--mode direct` the same cluster and churn go to agents that list and watch the API server
themselves (`direct.DirectFleet`), the load typha exists to remove; `--mode both` runs typha, then
direct, and the report puts them side by side.

Measurements (see docs of `results.json` in `report.py`): a time series sampled every
`--sample-interval` (typha /status, /metrics, CPU and RSS per replica; the emulator's counters and open
watches; agent counts), snapshot time of all agents, update latencies, RSS per connection, bytes on the
wire, dedup ratio, reconnect times and per-fault recovery. Latencies are wall-clock differences on
one host:
- ``write_to_sampled_agents``: API write (the parent records the time of each resourceVersion) to its
  arrival at the last decoding agent (exact, revisions are visible only to decoding agents);
- ``breadcrumb_to_last_agent``: a breadcrumb's creation in typha to its arrival at the last of all agents;
- ``write_to_last_agent``: API write to the arrival, at the last of all agents, of the breadcrumb that
  carried it (decoding agents map revisions to breadcrumbs; every agent reports breadcrumb arrivals);
- direct mode: API write to the last direct agent that received the event.

Verification (the pass condition): after churn, every agent connected, in sync and at the final
sequence number of the replica it is connected to; every decoding agent's state equal to the
projection of the emulator's final contents (zero missing, stale or extra keys); every replica's own
state digest equal to that projection too.
"""

from __future__ import annotations

import asyncio
import json
import os
import platform
import resource
import sys
import tempfile
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.live import Live
from rich.table import Table

from protocol.digest import state_digest
from typha.k8s.projection import resources_for_syncer
from typha.synthetic import SyntheticCluster

from .agents import AgentFleet, FleetSpec
from .apiserver import start_apiserver
from .cluster import apply_timed, seed, store_key, truth
from .direct import DirectFleet, DirectSpec
from .histogram import LogHistogram
from .processes import TyphaProcess, process_cpu_seconds
from .scenario import TYPHA_FAULTS, Fault, Scenario, format_mix

RESULTS_VERSION = 1
# Metrics kept in the time series (flattened names, as TyphaProcess.metrics returns them).
_METRICS = {
    "updates": "typha_updates_total{syncer=felix}",
    "skipped": "typha_updates_skipped_total{syncer=felix}",
    "breadcrumbs": "typha_breadcrumbs_total{syncer=felix}",
    "breadcrumb_bytes": "typha_breadcrumb_bytes_total{syncer=felix}",
    "bytes_sent": "typha_bytes_sent_total",
    "snapshots_generated": "typha_snapshots_generated_total{syncer=felix}",
    "snapshots_reused": "typha_snapshots_reused_total{syncer=felix}",
    "snapshot_wire_bytes": "typha_snapshot_wire_bytes_total{syncer=felix}",
    "connections_active": "typha_connections_active",
    "connections_streaming": "typha_connections_streaming",
    "accepted": "typha_connections_accepted_total",
}
_API_FIELDS = (
    "open_watches",
    "watches_total",
    "watches_cut",
    "watches_expired",
    "events_sent",
    "bytes_sent",
    "list_requests",
    "list_bytes_sent",
    "list_expired",
    "events_generated",
)
_MAX_POINTS = 50_000


def _self_cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def _host_cpu() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine since boot, summed over CPUs (from /proc/stat)."""
    try:
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return 0.0, 0.0
    hz = os.sysconf("SC_CLK_TCK")
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return (sum(fields) - idle) / hz, sum(fields) / hz


def _workers_cpu(fleet: Any) -> float:
    total = 0.0
    for p in getattr(fleet, "_procs", []):
        try:
            total += process_cpu_seconds(p.pid)
        except (OSError, ValueError, IndexError, TypeError):
            pass
    return total


def histogram_quantiles(buckets: dict[float, float], qs: tuple[float, ...] = (50, 99)) -> dict[str, float | None]:
    """Quantiles (upper bucket bounds) of a cumulative Prometheus histogram {le: count}."""
    bounds = sorted(buckets)
    total = buckets[bounds[-1]] if bounds else 0.0
    out: dict[str, float | None] = {"count": total}
    for q in qs:
        want = total * q / 100
        out[f"p{q:g}"] = next((b for b in bounds if buckets[b] >= want), None) if total else None
    return out


def _latency_buckets(
    metrics: dict[str, float], name: str = "typha_client_latency_seconds_bucket"
) -> dict[float, float]:
    out = {}
    for k, v in metrics.items():
        if k.startswith(name + "{le="):
            out[float(k[len(name) + 4 : -1])] = v
    return out


def _meminfo() -> tuple[int, int]:
    """(available, total) bytes of machine memory."""
    vals = {}
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                k, _, v = line.partition(":")
                vals[k] = int(v.split()[0]) * 1024
    except (OSError, ValueError, IndexError):
        return 1, 1
    return vals.get("MemAvailable", 1), vals.get("MemTotal", 1)


MEMORY_GUARD = 0.10  # abort a mode when the machine has less than this fraction of its memory available


def list_bytes_estimate(store: Any, key: str) -> int:
    """Bytes of a full list of `key` in the emulator (average of a 200-object page x count)."""
    n = store.count(key)
    if not n:
        return 0
    items = store.list(key, limit=200).items
    return int(sum(len(o.raw) for o in items) / max(1, len(items)) * n)


def _api_totals(api: Any) -> dict[str, int]:
    res = list(api.stats.resources.values())
    out = {f: sum(getattr(r, f) for r in res) for f in _API_FIELDS}
    out["requests"] = api.stats.requests_total
    return out


def _delta(a: dict[str, int], b: dict[str, int]) -> dict[str, int]:
    return {k: b[k] - a.get(k, 0) for k in b if k != "open_watches"}


class Replica:
    """One typha replica: a TyphaProcess plus what survives its restarts (CPU of earlier incarnations)."""

    def __init__(self, index: int, args: list[str], ready_timeout: float) -> None:
        self.index = index
        self.proc = TyphaProcess(args)
        self.ready_timeout = ready_timeout
        self.cpu_before = 0.0  # CPU seconds of earlier incarnations
        self.restarts = 0
        self.up = False
        self.rss_baseline = 0

    @property
    def port(self) -> int:
        return self.proc.port

    async def start(self) -> None:
        await self.proc.start(ready_timeout=self.ready_timeout)
        self.up = True

    def _alive(self) -> bool:
        p = self.proc.proc
        return p is not None and p.returncode is None

    def cpu(self) -> float:
        """CPU seconds of every incarnation (a starting replica's listing counts as it happens)."""
        if not self._alive():
            return self.cpu_before
        try:
            return self.cpu_before + self.proc.cpu_seconds()
        except (OSError, ValueError, IndexError):
            return self.cpu_before

    def rss(self) -> int:
        if not self._alive():
            return 0
        try:
            return self.proc.rss_bytes()
        except (OSError, ValueError, IndexError):
            return 0

    async def restart(self, kill: bool) -> dict[str, float]:
        """Stop (SIGTERM, graceful drain; or SIGKILL) and start again on the same ports."""
        t0 = time.monotonic()
        self.cpu_before = self.cpu()
        self.up = False
        p = self.proc.proc
        if kill and p is not None and p.returncode is None:
            p.kill()
            await p.wait()
            if self.proc.session is not None:
                await self.proc.session.close()
        else:
            await self.proc.stop()
        t_down = time.monotonic()
        self.restarts += 1
        await self.start()
        return {"stopped_after": t_down - t0, "ready_after": time.monotonic() - t0}

    async def stop(self) -> None:
        if self.proc.proc is not None:
            self.cpu_before = self.cpu()
        self.up = False
        await self.proc.stop()

    async def observe(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "replica": self.index,
            "up": self.up,
            "cpu": round(self.cpu(), 3),
            "rss": self.rss(),
            "restarts": self.restarts,
        }
        if not self.up:
            return out
        try:
            st, m = await asyncio.wait_for(asyncio.gather(self.proc.status(), self.proc.metrics()), 3.0)
        except Exception as exc:  # replica busy, restarting or gone: record the gap, not an error
            out["error"] = type(exc).__name__
            return out
        felix = st.get("syncers", {}).get("felix", {})
        out.update(
            connections=st.get("connections", 0),
            seq=felix.get("seq", 0),
            keys=felix.get("keys", 0),
            status=felix.get("status", ""),
        )
        for short, name in _METRICS.items():
            out[short] = m.get(name, 0.0)
        return out


def counter_increase(values: list[float]) -> float:
    """Total increase of a counter sampled over time, across resets (a restarted replica starts at 0)."""
    total = 0.0
    prev: float | None = None
    for v in values:
        if prev is not None:
            total += v - prev if v >= prev else v
        prev = v
    return total


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


def _points(pairs: list[tuple[float, float]]) -> list[list[float]]:
    pairs.sort()
    if len(pairs) > _MAX_POINTS:
        stride = len(pairs) / _MAX_POINTS
        pairs = [pairs[int(i * stride)] for i in range(_MAX_POINTS)]
    return [[round(t, 4), round(v, 5)] for t, v in pairs]


def _hist(values: list[float]) -> LogHistogram:
    h = LogHistogram()
    h.extend(values)
    return h


@dataclass
class Recorder:
    """Time series and timeline of one mode's run (t in seconds since the mode started)."""

    t0: float = field(default_factory=time.monotonic)
    samples: list[dict[str, Any]] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)
    phase: str = "starting"

    def now(self) -> float:
        return round(time.monotonic() - self.t0, 3)

    def mark(self, name: str, **detail: Any) -> None:
        self.events.append({"t": self.now(), "event": name, **detail})


class ModeRun:
    """Shared machinery for one mode: emulator, cluster, churn, faults, sampling and progress."""

    mode = ""

    def __init__(self, sc: Scenario, console: Console, live: Live | None) -> None:
        self.sc = sc
        self.console = console
        self.live = live
        self.rec = Recorder()
        self.api: Any = None
        self.cluster: SyntheticCluster | None = None
        self.rv_times: dict[int, int] = {}
        self.events_written = 0
        self.noop_writes = 0
        self.writes = 0
        self.churn_cpu = 0.0  # this process's CPU spent generating churn (not the emulator's work)
        self.churn_start_ns = 0
        self.churn_start_t = 0.0
        self.churn_end_t = 0.0
        self.churn_done = False
        self.faults_log: list[dict[str, Any]] = []
        self.result: dict[str, Any] = {"mode": self.mode}
        self._last_sample: dict[str, Any] = {}
        self.progress_every = 0  # without a terminal: log one line every this many samples (0: never)
        self.main_task: asyncio.Task[Any] | None = None
        self.aborted = ""

    # -- emulator and cluster ------------------------------------------------------------------------
    async def finish(self, res: dict[str, Any], tasks: list[asyncio.Task[Any]], stop_fleet: bool) -> None:
        """Teardown common to both modes: stop the background tasks, keep the time series, stop the agents."""
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        res["faults"] = self.faults_log
        res["samples"] = self.rec.samples
        res["events"] = self.rec.events
        res["churn_start_t"] = self.churn_start_t
        res["churn_end_t"] = self.churn_end_t
        if stop_fleet and self.fleet is not None:
            try:
                await self.fleet.stop()
            except Exception as exc:
                res.setdefault("errors", []).append(f"stopping agents: {exc!r}")

    async def start_api(self) -> None:
        sc = self.sc
        self.rec.phase = "seeding"
        self.api = await start_apiserver(window_size=sc.window_size, bookmark_interval=60.0)
        t0 = time.monotonic()
        self.cluster = SyntheticCluster(
            nodes=sc.nodes, pods_per_node=sc.pods_per_node, namespaces=sc.namespaces, policies=sc.policies, seed=sc.seed
        )
        objects = seed(self.api.store, self.cluster)
        self.result["objects"] = objects
        self.result["seed_seconds"] = time.monotonic() - t0
        self.rec.mark("seeded", objects=objects)
        self.console.log(
            f"[{self.mode}] emulator at {self.api.url}: {objects:,} objects seeded in {self.result['seed_seconds']:.1f}s"
        )

    # -- churn ---------------------------------------------------------------------------------------
    async def churn(self) -> None:
        sc = self.sc
        assert self.cluster is not None
        store = self.api.store
        self.churn_start_ns = time.time_ns()
        start = time.monotonic()
        self.churn_start_t = start - self.rec.t0
        self.rec.mark("churn start")
        target = 0.0
        last = start
        per_step: list[int] = [0] * max(1, len(sc.ramp))
        step_len = sc.duration / max(1, len(sc.ramp))
        while (now := time.monotonic()) - start < sc.duration:
            elapsed = now - start
            target += sc.rate_at(elapsed) * (now - last)
            last = now
            due = int(target) - self.events_written
            if due > 0:
                c0 = time.thread_time()
                events = self.cluster.churn(due, sc.mix, count_events=True)
                self.churn_cpu += time.thread_time() - c0
                self.noop_writes += apply_timed(store, events, self.rv_times)
                self.events_written += len(events)
                per_step[min(len(per_step) - 1, int(elapsed / step_len))] += len(events)
            await asyncio.sleep(0.01)
        self.churn_end_t = time.monotonic() - self.rec.t0
        self.churn_done = True
        self.result["churn"] = {
            "events_written": self.events_written,
            "seconds": time.monotonic() - start,
            "rate_target": sc.rate,
            "rate_achieved": self.events_written / max(1e-9, time.monotonic() - start),
            "per_step_events": per_step if sc.ramp else None,
            "generation_cpu_seconds": self.churn_cpu,
            "noop_writes": self.noop_writes,
            "mix": sc.mix,
        }
        self.rec.mark("churn end", events=self.events_written)

    # -- faults --------------------------------------------------------------------------------------
    async def run_faults(self) -> None:
        """Inject each fault at its time (independently: a slow recovery does not delay the next fault)."""
        start = time.monotonic()

        async def one(f: Fault, n: int) -> None:
            await asyncio.sleep(max(0.0, start + f.at - time.monotonic()))
            entry: dict[str, Any] = {
                "at": f.at,
                "kind": f.kind,
                "arg": f.arg,
                "t": self.rec.now(),
                "t_churn": round(time.monotonic() - start, 3),
            }
            self.faults_log.append(entry)
            try:
                if f.kind in TYPHA_FAULTS:
                    await self.typha_fault(f, n, entry)
                else:
                    await self.api_fault(f, entry)
            except Exception as exc:
                entry["error"] = repr(exc)

        faults = sorted(self.sc.faults, key=lambda f: f.at)
        restart_no = [sum(1 for g in faults[:i] if g.kind in TYPHA_FAULTS) for i in range(len(faults))]
        await asyncio.gather(*(one(f, n) for f, n in zip(faults, restart_no)))

    async def typha_fault(self, f: Fault, n: int, entry: dict[str, Any]) -> None:
        entry["skipped"] = "no typha in direct mode"
        self.rec.mark(f"{f.kind} (skipped)")

    async def api_fault(self, f: Fault, entry: dict[str, Any]) -> None:
        before = _api_totals(self.api)
        self.rec.mark(f.kind if f.arg is None else f"{f.kind}:{f.arg}")
        if f.kind == "compact":
            self.api.compact()
            entry["watches_cut"] = self.api.cut_watches()
        else:
            entry["watches_cut"] = self.api.cut_watches(f.arg)
        t0 = time.monotonic()
        ok = await self.wait_recovered(before["open_watches"], 30.0 + self.sc.drain_timeout)
        after = _api_totals(self.api)
        entry["recovered_seconds"] = time.monotonic() - t0 if ok else None
        entry["relists_410"] = (
            after["watches_expired"] - before["watches_expired"] + after["list_expired"] - before["list_expired"]
        )
        entry["list_requests"] = after["list_requests"] - before["list_requests"]
        entry["list_bytes"] = after["list_bytes_sent"] - before["list_bytes_sent"]

    async def wait_recovered(self, watches: int, timeout: float) -> bool:
        raise NotImplementedError

    # -- sampling and progress -------------------------------------------------------------------------
    async def sampler(self) -> None:
        while True:
            t_next = time.monotonic() + self.sc.sample_interval
            avail, total = _meminfo()
            if avail < MEMORY_GUARD * total and self.main_task is not None and not self.aborted:
                self.aborted = (
                    f"memory guard: only {avail / 2**30:.1f} of {total / 2**30:.1f} GiB left "
                    f"during '{self.rec.phase}'; mode aborted"
                )
                self.rec.mark("aborted", reason=self.aborted)
                self.console.log(f"[red]{self.aborted}[/]")
                self.main_task.cancel()
            try:
                s = await self.sample()
                self.rec.samples.append(s)
                self._last_sample = s
                if self.live is not None:
                    self.live.update(self.progress(s), refresh=True)
                elif self.progress_every and len(self.rec.samples) % self.progress_every == 0:
                    self.console.log(self.progress_line(s))
            except Exception as exc:  # a sample must never end the run
                self.rec.mark("sample error", error=repr(exc))
            await asyncio.sleep(max(0.05, t_next - time.monotonic()))

    async def sample(self) -> dict[str, Any]:
        api = _api_totals(self.api) if self.api is not None else {}
        busy, total = _host_cpu()
        return {
            "t": self.rec.now(),
            "phase": self.rec.phase,
            "api": api,
            "driver_cpu": round(_self_cpu(), 3),
            "agents_cpu": round(_workers_cpu(getattr(self, "fleet", None)), 3),
            "host_busy": round(busy, 2),
            "host_total": round(total, 2),
            "churn_cpu": round(self.churn_cpu, 3),
            "events_written": self.events_written,
            "rate_target": self.sc.rate_at(max(0.0, self.rec.now() - self.churn_start_t))
            if self.churn_start_t and not self.churn_done
            else 0.0,
        }

    def progress_line(self, s: dict[str, Any]) -> str:
        a = s.get("agents") or {}
        api = s.get("api") or {}
        bits = [
            f"[{self.mode}] {s['t']:.0f}s {s['phase']}",
            f"written {s['events_written']:,}",
            f"API watches {api.get('open_watches', 0):,}",
        ]
        if "in_sync" in a:
            bits.append(f"agents connected {a['connected']:,} in sync {a['in_sync']:,}")
        if "listed" in a:
            bits.append(f"agents listed {a['listed']:,} watches {a['watches_open']:,}")
        if s.get("typha"):
            bits.append(
                "typha conns "
                + "/".join(f"{r.get('connections', 0):,}" if r["up"] else "down" for r in s["typha"])
                + ", RSS "
                + "/".join(f"{r['rss'] / 1e6:.0f}" for r in s["typha"])
                + " MB"
            )
        return "; ".join(bits)

    def progress(self, s: dict[str, Any]) -> Table:
        t = Table(
            title=f"loadtest run [{self.mode}] {s['t']:6.1f}s  phase: {s['phase']}", show_header=False, expand=False
        )
        t.add_column("what")
        t.add_column("value", justify="right")
        api = s.get("api", {})
        prev = self.rec.samples[-2] if len(self.rec.samples) > 1 else None
        dt = (s["t"] - prev["t"]) if prev else 0.0
        if prev and dt > 0:
            t.add_row(
                "churn written / rate",
                f"{s['events_written']:,} ev / {(s['events_written'] - prev['events_written']) / dt:,.0f} ev/s (target {s['rate_target']:g})",
            )
            t.add_row(
                "API events sent / s", f"{(api.get('events_sent', 0) - prev['api'].get('events_sent', 0)) / dt:,.0f}"
            )
        t.add_row("API watches open / opened", f"{api.get('open_watches', 0):,} / {api.get('watches_total', 0):,}")
        t.add_row(
            "API bytes sent (watch + list)",
            f"{(api.get('bytes_sent', 0) + api.get('list_bytes_sent', 0)) / 1e6:,.1f} MB",
        )
        return t


class TyphaRun(ModeRun):
    mode = "typha"

    def __init__(self, sc: Scenario, console: Console, live: Live | None) -> None:
        super().__init__(sc, console, live)
        self.replicas: list[Replica] = []
        self.fleet: AgentFleet | None = None
        self.agents = sc.typha_agents
        self.fleet_stopped = False
        self.workdir = tempfile.TemporaryDirectory(prefix="pytypha-run-")

    # -- replicas ------------------------------------------------------------------------------------
    async def start_typhas(self) -> None:
        sc = self.sc
        self.rec.phase = "typha starting"
        kc = str(Path(self.workdir.name) / "kubeconfig")
        self.api.write_kubeconfig(kc)
        args = [
            "--datastore",
            "kubernetes",
            "--kubeconfig",
            kc,
            "--log-level",
            "ERROR",
            "--k8s-page-size",
            "1000",
            *sc.typha_args,
        ]
        self.replicas = [
            Replica(i, [*args, "--server-id", f"typha-{i}"], sc.typha_ready_timeout()) for i in range(sc.replicas)
        ]
        t0 = time.monotonic()
        await asyncio.gather(*(r.start() for r in self.replicas))
        self.result["typha_ready_seconds"] = time.monotonic() - t0
        await asyncio.sleep(1.0)  # let the post-sync GC freeze settle before taking the baseline
        for r in self.replicas:
            r.rss_baseline = r.rss()
        self.result["typha_rss_baseline"] = [r.rss_baseline for r in self.replicas]
        self.result["typha_cpu_startup"] = [r.cpu() for r in self.replicas]
        self.rec.mark("typha ready", seconds=self.result["typha_ready_seconds"])
        self.console.log(
            f"[typha] {sc.replicas} replica(s) ready in {self.result['typha_ready_seconds']:.1f}s "
            f"(ports {', '.join(str(r.port) for r in self.replicas)}), RSS {sum(r.rss_baseline for r in self.replicas) / 1e6:.0f} MB"
        )

    async def typha_fault(self, f: Fault, n: int, entry: dict[str, Any]) -> None:
        idx = int(f.arg) if f.arg is not None else n % len(self.replicas)
        rep = self.replicas[idx]
        entry["replica"] = idx
        self.rec.mark(f"{f.kind} {idx}")
        self.console.log(f"[typha] fault at {f.at:g}s: {f.kind} replica {idx}")
        assert self.fleet is not None
        disc0 = self.fleet.total("disconnects")
        t0 = time.monotonic()
        timing = await rep.restart(kill=f.kind == "kill-typha")
        entry.update(timing)
        self.rec.mark(f"typha {idx} ready again", seconds=timing["ready_after"])
        ok = await self.wait_recovered(0, self.sc.agent_sync_timeout(self.agents))
        entry["recovered_seconds"] = time.monotonic() - t0 if ok else None
        entry["agents_disconnected"] = self.fleet.total("disconnects") - disc0
        self.rec.mark(f"agents recovered from {f.kind} {idx}", ok=ok)

    async def wait_recovered(self, watches: int, timeout: float) -> bool:
        """All replicas up, the API watches back, every agent connected and in sync."""
        assert self.fleet is not None
        deadline = time.monotonic() + timeout
        await asyncio.sleep(0.3)  # let the agents notice the fault first
        while time.monotonic() < deadline:
            self.fleet.poll()
            reps = self.fleet.reports.values()
            if (
                all(r.up for r in self.replicas)
                and sum(r.open_watches for r in self.api.stats.resources.values()) >= watches
                and self.fleet.total("in_sync") == self.agents
                and sum(r.not_connected for r in reps) == 0
            ):
                return True
            await asyncio.sleep(0.1)
        return False

    # -- sampling ------------------------------------------------------------------------------------
    async def sample(self) -> dict[str, Any]:
        s = await super().sample()
        s["typha"] = list(await asyncio.gather(*(r.observe() for r in self.replicas)))
        if self.fleet is not None:
            self.fleet.poll()
            d = self.fleet.describe()
            d["not_connected"] = sum(r.not_connected for r in self.fleet.reports.values())
            d["reporting"] = len(self.fleet.reports)
            s["agents"] = d
        return s

    def progress(self, s: dict[str, Any]) -> Table:
        t = super().progress(s)
        a = s.get("agents")
        if a:
            t.add_row(
                "agents connected / in sync",
                f"{a['connected']:,} / {a['in_sync']:,} of {self.agents:,} (disconnects {a['disconnects']:,})",
            )
            t.add_row("agents: bytes / KVs received", f"{a['bytes'] / 1e6:,.1f} MB / {a['kvs']:,}")
        prev = self.rec.samples[-2] if len(self.rec.samples) > 1 else None
        for r in s.get("typha", []):
            cpu = ""
            if prev is not None:
                pr = prev["typha"][r["replica"]]
                dt = s["t"] - prev["t"]
                if dt > 0:
                    cpu = f", CPU {(r['cpu'] - pr['cpu']) / dt:.0%}"
            state = "down" if not r["up"] else r.get("status", "?")
            t.add_row(
                f"typha-{r['replica']}",
                f"{state}, {r.get('connections', 0):,} conns, seq {r.get('seq', 0):,}, "
                f"RSS {r['rss'] / 1e6:,.0f} MB{cpu}",
            )
        if self.fleet is not None and self.churn_start_ns:
            lat = self.fleet.last_agent_latency(self.churn_start_ns)
            if lat.count:
                t.add_row(
                    "breadcrumb -> last agent p50/p99/max",
                    f"{lat.percentile(50) * 1e3:.0f} / {lat.percentile(99) * 1e3:.0f} / {lat.max * 1e3:.0f} ms",
                )
        if self.sc.faults:
            t.add_row("faults done", f"{len(self.faults_log)} of {len(self.sc.faults)}")
        return t

    # -- the run -------------------------------------------------------------------------------------
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
        out = {}
        for r in self.replicas:
            st = await asyncio.wait_for(r.proc.status(), 10)
            out[r.port] = st["syncers"]["felix"]["seq"]
        return out

    async def drain(self) -> tuple[bool, dict[int, int]]:
        """After churn: wait for every replica's seq to settle and every agent to reach it."""
        assert self.fleet is not None
        self.rec.phase = "draining"
        deadline = time.monotonic() + self.sc.drain_timeout
        last: dict[int, int] = {}
        stable_since = time.monotonic()
        while time.monotonic() < deadline:
            try:
                finals = await self.final_seqs()
            except Exception:
                await asyncio.sleep(0.25)
                continue
            if finals != last:
                last, stable_since = finals, time.monotonic()
            self.fleet.poll()
            ok, _ = self.converged(finals)
            if ok and time.monotonic() - stable_since >= 1.5:
                return True, finals
            await asyncio.sleep(0.25)
        return False, last

    async def run(self) -> dict[str, Any]:
        sc = self.sc
        res = self.result
        res["agents"] = self.agents
        res["replicas"] = sc.replicas
        tasks: list[asyncio.Task[Any]] = []
        self.main_task = asyncio.current_task()
        try:
            await self.start_api()
            api_before_typha = _api_totals(self.api)
            await self.start_typhas()
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
            )
            res["decoding_agents"] = ids
            res["processes"] = min(sc.processes, self.agents)
            self.fleet = AgentFleet(spec)
            self.rec.phase = "agents syncing"
            self.rec.mark("agents connecting", agents=self.agents)
            tasks.append(asyncio.create_task(self.sampler()))
            t0 = time.monotonic()
            self.fleet.start()
            self.console.log(
                f"[typha] {self.agents:,} agents connecting from {self.fleet.processes} processes "
                f"({len(ids)} decoding: ids {ids})"
            )
            synced = await self.fleet.wait(
                lambda f: f.total("in_sync") == self.agents, sc.agent_sync_timeout(self.agents)
            )
            res["snapshot"] = {
                "all_agents_synced": synced,
                "all_agents_seconds": time.monotonic() - t0 if synced else None,
                "in_sync": self.fleet.total("in_sync"),
                "per_agent_seconds": self.fleet.merged("snapshot_seconds").summary(),
                "agent_bytes": self.fleet.total("bytes"),
            }
            self.rec.mark("all agents in sync" if synced else "agents sync timed out", seconds=time.monotonic() - t0)
            if not synced:
                raise RuntimeError(
                    f"only {self.fleet.total('in_sync')} of {self.agents} agents synced within "
                    f"{sc.agent_sync_timeout(self.agents):.0f}s"
                )
            self.console.log(
                f"[typha] all {self.agents:,} agents in sync after {res['snapshot']['all_agents_seconds']:.1f}s"
            )
            await asyncio.sleep(2.0)  # cached snapshots expire (1 s) and the agents settle
            rss_loaded = [r.rss() for r in self.replicas]
            conns = [(await r.observe()).get("connections", 0) for r in self.replicas]
            res["rss_after_sync"] = rss_loaded
            res["connections_after_sync"] = conns
            api_synced = _api_totals(self.api)
            res["api_startup"] = _delta(api_before_typha, api_synced)
            res["api_startup"]["open_watches"] = api_synced["open_watches"]
            cpu0 = [r.cpu() for r in self.replicas]
            lat0 = await self.write_latency_buckets()
            host0 = _host_cpu()
            workers0 = _workers_cpu(self.fleet)
            self_cpu0 = _self_cpu()
            agents_bytes0 = self.fleet.total("bytes")

            self.rec.phase = "churn"
            churn = asyncio.create_task(self.churn())
            tasks.append(churn)
            faults = asyncio.create_task(self.run_faults())
            tasks.append(faults)
            await churn
            self.console.log(f"[typha] churn done: {self.events_written:,} events in {sc.duration:g}s")
            await asyncio.wait_for(faults, sc.drain_timeout + sc.agent_sync_timeout(self.agents))
            converged, finals = await self.drain()
            drained_t = self.rec.now()
            host1, workers1, self_cpu1 = _host_cpu(), _workers_cpu(self.fleet), _self_cpu()
            typha_cpu = [r.cpu() - c for r, c in zip(self.replicas, cpu0)]
            self.rec.mark("drained" if converged else "drain timed out")
            self.fleet.poll()
            api_end = _api_totals(self.api)
            res["api_churn"] = _delta(api_synced, api_end)
            res["api_churn"]["open_watches_end"] = api_end["open_watches"]
            churn_samples = [s for s in self.rec.samples if self.churn_start_t <= s["t"] <= self.churn_end_t]
            res["api_churn"]["open_watches_max"] = max(
                (s["api"]["open_watches"] for s in churn_samples), default=api_end["open_watches"]
            )
            res["api_churn"]["open_watches_min"] = min(
                (s["api"]["open_watches"] for s in churn_samples), default=api_end["open_watches"]
            )
            span = max(1e-9, drained_t - self.churn_start_t)
            res["emulator_cpu"] = {
                "churn_window_seconds": span,
                "cpu_seconds": self_cpu1 - self_cpu0 - self.churn_cpu,
                "churn_generation_cpu_seconds": self.churn_cpu,
            }
            lat1 = await self.write_latency_buckets()
            res["host_cpu_churn"] = {
                "busy_fraction": (host1[0] - host0[0]) / max(1e-9, host1[1] - host0[1]),
                "cpus": os.cpu_count(),
                "agent_workers_cpu_fraction": (workers1 - workers0) / span,
            }
            rss_end = [r.rss() for r in self.replicas]
            t_from = self.churn_start_t - sc.sample_interval
            first_fault = min((f.at for f in sc.faults), default=None)
            metric_totals = self.metric_increase(t_from, None)
            steady = (
                self.metric_increase(t_from, self.churn_start_t + first_fault)
                if first_fault is not None
                else metric_totals
            )
            res["typha"] = {
                "cpu_seconds_churn": typha_cpu,
                "cpu_fraction_churn": [c / span for c in typha_cpu],
                "rss_baseline": [r.rss_baseline for r in self.replicas],
                "rss_after_sync": rss_loaded,
                "rss_end": rss_end,
                "rss_per_agent_bytes": (sum(rss_loaded) - sum(r.rss_baseline for r in self.replicas)) / self.agents,
                "rss_per_agent_bytes_end": (sum(rss_end) - sum(r.rss_baseline for r in self.replicas)) / self.agents,
                "restarts": [r.restarts for r in self.replicas],
                "churn_metrics": metric_totals,
                "dedup_ratio": metric_totals["skipped"] / metric_totals["updates"]
                if metric_totals["updates"]
                else None,
                # Before the first fault: relists after a 410 or a restart re-deliver every object,
                # all of them unchanged, which inflates the ratio above.
                "dedup_ratio_before_faults": steady["skipped"] / steady["updates"] if steady["updates"] else None,
                # typha's own view (typha_client_latency_seconds): breadcrumb creation to its write into
                # each client's socket, during churn; bucket bounds, so coarse. Unaffected by how fast the
                # simulated agents read, unlike the arrival latencies.
                "write_latency": histogram_quantiles({b: lat1.get(b, 0) - lat0.get(b, 0) for b in lat1})
                if not any(r.restarts for r in self.replicas)
                else histogram_quantiles(lat1),
            }
            res["wire"] = {
                "agents_bytes_total": self.fleet.total("bytes"),
                "agents_bytes_churn": self.fleet.total("bytes") - agents_bytes0,
                "api_bytes_startup": res["api_startup"]["bytes_sent"] + res["api_startup"]["list_bytes_sent"],
                "api_bytes_churn": res["api_churn"]["bytes_sent"] + res["api_churn"]["list_bytes_sent"],
            }
            self.latencies()
            await self.verify(converged, finals)
        finally:
            await self.finish(res, tasks, stop_fleet=not self.fleet_stopped)
            for r in self.replicas:
                try:
                    await r.stop()
                except Exception as exc:
                    res.setdefault("errors", []).append(f"stopping typha {r.index}: {exc!r}")
            if self.api is not None:
                await self.api.stop()
            self.workdir.cleanup()
        return res

    async def write_latency_buckets(self) -> dict[float, float]:
        """typha_client_latency_seconds buckets summed over replicas ({} if unavailable)."""
        total: dict[float, float] = {}
        for r in self.replicas:
            try:
                m = await asyncio.wait_for(r.proc.metrics(), 10)
            except Exception:
                continue
            for b, v in _latency_buckets(m).items():
                total[b] = total.get(b, 0.0) + v
        return total

    def metric_increase(self, t_from: float, t_to: float | None) -> dict[str, float]:
        """Increase of typha's counters between two times, summed over replicas, across restarts."""
        out = {}
        for k in ("updates", "skipped", "breadcrumbs", "bytes_sent", "snapshots_generated", "snapshot_wire_bytes"):
            total = 0.0
            for r in self.replicas:
                vals = [
                    s["typha"][r.index][k]
                    for s in self.rec.samples
                    if s["t"] >= t_from and (t_to is None or s["t"] <= t_to) and k in s["typha"][r.index]
                ]
                total += counter_increase(vals)
            out[k] = total
        return out

    def latencies(self) -> None:
        assert self.fleet is not None
        f = self.fleet
        res = self.result
        since = self.churn_start_ns
        base = since
        points: dict[str, list[tuple[float, float]]] = {
            "breadcrumb_to_last_agent": [],
            "write_to_sampled_agents": [],
            "write_to_last_agent": [],
        }
        for key, arrival in f.seq_last_arrival.items():
            created = f.seq_created.get(key)
            if created is not None and created >= since:
                points["breadcrumb_to_last_agent"].append(((created - base) / 1e9, max(0, arrival - created) / 1e9))
        # A restarted replica relists and re-sends everything. A write made before the restart whose
        # first delivery came in a breadcrumb created after the old process had stopped was not
        # delivered live: it is either a change that typha dropped as a duplicate at the time (and the
        # relist sent with its new revision), or one the restart interrupted. Neither measures latency.
        cuts = [
            (since + int(e["t_churn"] * 1e9), since + int((e["t_churn"] + e["stopped_after"]) * 1e9))
            for e in self.faults_log
            if "stopped_after" in e
        ]
        covered = redelivered = 0
        for rv, written in self.rv_times.items():
            keys = f.rv_keys.get(rv)
            if keys and any(written < injected and min(keys) > stopped for injected, stopped in cuts):
                redelivered += 1
                continue
            got = f.rv_last_arrival.get(rv)
            if got is not None:
                points["write_to_sampled_agents"].append(((written - base) / 1e9, max(0, got - written) / 1e9))
            if keys:
                arrivals = [f.seq_last_arrival[k] for k in keys if k in f.seq_last_arrival]
                if arrivals:
                    covered += 1
                    points["write_to_last_agent"].append(
                        ((written - base) / 1e9, max(0, max(arrivals) - written) / 1e9)
                    )
        res["latency"] = {k: _hist([v for _, v in p]).summary() for k, p in points.items()}
        res["latency"]["per_delivery"] = f.merged("latency").summary()
        res["latency_points"] = {k: _points(p) for k, p in points.items()}
        res["histograms"] = {
            "per_delivery": f.merged("latency").to_dict(),
            "reconnect_seconds": f.merged("reconnect_seconds").to_dict(),
            "snapshot_seconds": f.merged("snapshot_seconds").to_dict(),
        }
        res["writes"] = {
            "written": len(self.rv_times),
            "reached_agents": covered,
            "redelivered_after_restart": redelivered,
            "not_fanned_out": len(self.rv_times) - covered - redelivered,
        }
        res["reconnect"] = f.merged("reconnect_seconds").summary()
        reasons: dict[str, int] = {}
        for r in f.reports.values():
            for why, n in r.disconnect_reasons.items():
                reasons[why] = reasons.get(why, 0) + n
        res["disconnect_reasons"] = reasons

    async def verify(self, converged: bool, finals: dict[int, int]) -> None:
        assert self.fleet is not None
        self.rec.phase = "verifying"
        v: dict[str, Any] = {"converged": converged, "final_seqs": {str(k): s for k, s in finals.items()}}
        statuses = []
        for r in self.replicas:
            try:
                statuses.append(await asyncio.wait_for(r.proc.status(digest=True), 60))
            except Exception as exc:
                statuses.append({"error": repr(exc)})
        t0 = time.monotonic()
        expected = truth(self.api.store)
        expected_digest = state_digest(expected.items())
        expected_hashes = {k: zlib.crc32(v) for k, v in expected.items()}
        v["truth_keys"] = len(expected)
        v["truth_seconds"] = time.monotonic() - t0
        v["replicas"] = [
            {
                "replica": i,
                "keys": st.get("syncers", {}).get("felix", {}).get("keys"),
                "matches_truth": st.get("syncers", {}).get("felix", {}).get("digest") == expected_digest,
            }
            for i, st in enumerate(statuses)
        ]
        self.fleet.poll()
        ok_seq, at_final = self.converged(finals)
        v["agents"] = self.agents
        v["agents_at_final_seq"] = at_final
        v["agents_in_sync"] = self.fleet.total("in_sync")
        v["agents_not_connected"] = sum(r.not_connected for r in self.fleet.reports.values())
        await self.fleet.stop()
        self.fleet_stopped = True
        # The final reports were filled before the clients stopped: recount from them.
        ok_seq, at_final = self.converged(finals)
        v["agents_at_final_seq"] = at_final
        digests = self.fleet.digests()
        sampled = []
        for rep in self.fleet.reports.values():
            for host, hashes in rep.state_hashes.items():
                missing = sum(1 for k in expected_hashes if k not in hashes)
                extra = sum(1 for k in hashes if k not in expected_hashes)
                stale = sum(1 for k, h in hashes.items() if k in expected_hashes and expected_hashes[k] != h)
                sampled.append(
                    {
                        "agent": host,
                        "keys": len(hashes),
                        "missing": missing,
                        "stale": stale,
                        "extra": extra,
                        "digest_matches": digests.get(host, (0, ""))[1] == expected_digest,
                    }
                )
        sampled.sort(key=lambda x: x["agent"])
        v["sampled"] = sampled
        v["sampled_agents"] = len(sampled)
        v["sampled_matching"] = sum(
            1 for s in sampled if s["digest_matches"] and not (s["missing"] or s["stale"] or s["extra"])
        )
        v["missing"] = sum(s["missing"] for s in sampled)
        v["stale"] = sum(s["stale"] for s in sampled)
        v["extra"] = sum(s["extra"] for s in sampled)
        v["passed"] = bool(
            converged
            and ok_seq
            and at_final == self.agents
            and sampled
            and v["sampled_matching"] == len(sampled)
            and all(r["matches_truth"] for r in v["replicas"])
        )
        self.result["verification"] = v


class DirectRun(ModeRun):
    mode = "direct"

    def __init__(self, sc: Scenario, console: Console, live: Live | None) -> None:
        super().__init__(sc, console, live)
        self.fleet: DirectFleet | None = None
        self.agents = sc.baseline_agents
        self.paths = [r.path() for r in resources_for_syncer("felix")]

    async def api_fault(self, f: Fault, entry: dict[str, Any]) -> None:
        if f.kind != "compact":
            return await super().api_fault(f, entry)
        # Every direct agent relists every compacted resource at once, and the emulator builds each
        # list body in memory: 100 agents x a 100 MB pod list would need 10+ GB. Compact only the
        # resources whose relist herd fits a quarter of the machine's memory; say which were left out.
        _, total = _meminfo()
        budget = total // 4
        keys = [store_key(r.name) for r in resources_for_syncer("felix")]
        cost = sorted((list_bytes_estimate(self.api.store, k) * self.agents * 8, k) for k in keys)
        chosen, used = [], 0
        for c, k in cost:
            if used + c <= budget:
                chosen.append(k)
                used += c
        left_out = [k for _, k in cost if k not in chosen]
        before = _api_totals(self.api)
        self.rec.mark("compact" + (f" (without {', '.join(left_out)})" if left_out else ""))
        for k in chosen:
            self.api.compact(k)
        entry["watches_cut"] = self.api.cut_watches()
        if left_out:
            entry["left_out"] = left_out
            entry["note"] = (
                f"not compacted: {', '.join(left_out)} (relisting them from {self.agents} agents at once "
                f"would put ~{sum(c for c, k in cost if k in left_out) / 8 / 2**30:.1f} GiB of list bodies in flight)"
            )
        t0 = time.monotonic()
        ok = await self.wait_recovered(before["open_watches"], 30.0 + self.sc.drain_timeout)
        after = _api_totals(self.api)
        entry["recovered_seconds"] = time.monotonic() - t0 if ok else None
        entry["relists_410"] = (
            after["watches_expired"] - before["watches_expired"] + after["list_expired"] - before["list_expired"]
        )
        entry["list_requests"] = after["list_requests"] - before["list_requests"]
        entry["list_bytes"] = after["list_bytes_sent"] - before["list_bytes_sent"]
        return None

    async def wait_recovered(self, watches: int, timeout: float) -> bool:
        assert self.fleet is not None
        deadline = time.monotonic() + timeout
        await asyncio.sleep(0.3)
        want = self.agents * len(self.paths)
        while time.monotonic() < deadline:
            self.fleet.poll()
            if (
                self.fleet.total("watches_open") >= want
                and sum(r.open_watches for r in self.api.stats.resources.values()) >= want
            ):
                return True
            await asyncio.sleep(0.1)
        return False

    async def sample(self) -> dict[str, Any]:
        s = await super().sample()
        if self.fleet is not None:
            self.fleet.poll()
            s["agents"] = {
                k: self.fleet.total(k) for k in ("listed", "watches_open", "events", "bytes", "relists", "errors")
            }
        return s

    def progress(self, s: dict[str, Any]) -> Table:
        t = super().progress(s)
        a = s.get("agents")
        if a:
            t.add_row(
                "agents listed / watches open",
                f"{a['listed']:,} of {self.agents:,} / {a['watches_open']:,} of {self.agents * len(self.paths):,}",
            )
            t.add_row(
                "agents: events / bytes / relists", f"{a['events']:,} / {a['bytes'] / 1e6:,.1f} MB / {a['relists']:,}"
            )
        return t

    async def run(self) -> dict[str, Any]:
        sc = self.sc
        res = self.result
        res["agents"] = self.agents
        res["resources_watched"] = len(self.paths)
        tasks: list[asyncio.Task[Any]] = []
        self.main_task = asyncio.current_task()
        try:
            await self.start_api()
            ca = self.api.ca_pem.decode() if isinstance(self.api.ca_pem, bytes) else self.api.ca_pem
            spread = max(2.0, self.agents / 50)
            self.fleet = DirectFleet(
                DirectSpec(
                    self.api.url, self.api.token, ca, self.paths, self.agents, sc.processes, connect_spread=spread
                )
            )
            api0 = _api_totals(self.api)
            cpu_a = _self_cpu()
            self.rec.phase = "agents listing"
            self.rec.mark("agents connecting", agents=self.agents)
            tasks.append(asyncio.create_task(self.sampler()))
            t0 = time.monotonic()
            self.fleet.start()
            want = self.agents * len(self.paths)
            self.console.log(
                f"[direct] {self.agents:,} agents each listing and watching {len(self.paths)} resources ({want:,} watches)"
            )
            ok = await self.fleet.wait(
                lambda f: f.total("listed") == self.agents and f.total("watches_open") == want,
                sc.agent_sync_timeout(self.agents),
            )
            res["snapshot"] = {
                "all_agents_synced": ok,
                "all_agents_seconds": time.monotonic() - t0 if ok else None,
                "listed": self.fleet.total("listed"),
            }
            self.rec.mark("all agents watching" if ok else "agents timed out", seconds=time.monotonic() - t0)
            if not ok:
                raise RuntimeError(
                    f"only {self.fleet.total('listed')} of {self.agents} direct agents listed and watching in time"
                )
            api1 = _api_totals(self.api)
            res["api_startup"] = _delta(api0, api1)
            res["api_startup"]["open_watches"] = api1["open_watches"]
            res["emulator_cpu_startup"] = _self_cpu() - cpu_a
            self.console.log(f"[direct] all agents watching after {res['snapshot']['all_agents_seconds']:.1f}s")
            events0 = self.fleet.total("events")
            host0, workers0 = _host_cpu(), _workers_cpu(self.fleet)
            cpu0 = _self_cpu()
            self.rec.phase = "churn"
            churn = asyncio.create_task(self.churn())
            tasks.append(churn)
            faults = asyncio.create_task(self.run_faults())
            tasks.append(faults)
            await churn
            await asyncio.wait_for(faults, sc.drain_timeout + 60)
            self.rec.phase = "draining"
            # Drained when the agents' event count stops moving (bounded).
            deadline = time.monotonic() + sc.drain_timeout
            last, still = -1, 0
            while time.monotonic() < deadline and still < 6:
                await asyncio.sleep(0.25)
                self.fleet.poll()
                cur = self.fleet.total("events")
                still = still + 1 if cur == last else 0
                last = cur
            drained_t = self.rec.now()
            host1, workers1 = _host_cpu(), _workers_cpu(self.fleet)
            self.rec.mark("drained")
            api2 = _api_totals(self.api)
            res["api_churn"] = _delta(api1, api2)
            res["api_churn"]["open_watches_end"] = api2["open_watches"]
            churn_samples = [s for s in self.rec.samples if self.churn_start_t <= s["t"] <= self.churn_end_t]
            res["api_churn"]["open_watches_max"] = max(
                (s["api"]["open_watches"] for s in churn_samples), default=api2["open_watches"]
            )
            res["api_churn"]["open_watches_min"] = min(
                (s["api"]["open_watches"] for s in churn_samples), default=api2["open_watches"]
            )
            span = max(1e-9, drained_t - self.churn_start_t)
            res["emulator_cpu"] = {
                "churn_window_seconds": span,
                "cpu_seconds": _self_cpu() - cpu0 - self.churn_cpu,
                "churn_generation_cpu_seconds": self.churn_cpu,
            }
            res["host_cpu_churn"] = {
                "busy_fraction": (host1[0] - host0[0]) / max(1e-9, host1[1] - host0[1]),
                "cpus": os.cpu_count(),
                "agent_workers_cpu_fraction": (workers1 - workers0) / span,
            }
            res["wire"] = {
                "agents_bytes_total": self.fleet.total("bytes"),
                "api_bytes_startup": res["api_startup"]["bytes_sent"] + res["api_startup"]["list_bytes_sent"],
                "api_bytes_churn": res["api_churn"]["bytes_sent"] + res["api_churn"]["list_bytes_sent"],
            }
            pts = [
                ((w - self.churn_start_ns) / 1e9, max(0, self.fleet.rv_last_arrival[rv] - w) / 1e9)
                for rv, w in self.rv_times.items()
                if rv in self.fleet.rv_last_arrival
            ]
            res["latency"] = {"write_to_last_agent": _hist([v for _, v in pts]).summary()}
            res["latency_points"] = {"write_to_last_agent": _points(pts)}
            received = self.fleet.total("events") - events0
            v = {
                "agents": self.agents,
                "agents_listed": self.fleet.total("listed"),
                "watches_open_end": self.fleet.total("watches_open"),
                "watches_wanted": want,
                "events_received_churn": received,
                "events_sent_churn": res["api_churn"]["events_sent"],
                "relists": self.fleet.total("relists"),
                "errors": self.fleet.total("errors"),
                "writes_seen": len(pts),
                "writes": len(self.rv_times),
            }
            v["passed"] = bool(v["agents_listed"] == self.agents and v["watches_open_end"] == want)
            res["verification"] = v
        finally:
            await self.finish(res, tasks, stop_fleet=True)
            if self.api is not None:
                await self.api.stop()
        return res


def _host() -> dict[str, Any]:
    return {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "memory_bytes": os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"),
    }


async def run_scenario(
    sc: Scenario, console: Console | None = None, progress: bool = True, command: str | None = None
) -> dict[str, Any]:
    """Run every mode of the scenario, write `results.json` and the report into `sc.out`; return the results."""
    sc.validate()
    from .report import make_console, render

    console = console or make_console()
    out = Path(sc.out)
    out.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {
        "version": RESULTS_VERSION,
        "scenario": sc.to_dict(),
        "command": command or " ".join(sys.argv),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "host": _host(),
        "runs": {},
    }
    budget = sc.total_budget()
    console.log(
        f"[bold]loadtest run[/]: {sc.describe()}; mix: {format_mix(sc.mix)}; bounded at {budget:.0f}s; output in {out}"
    )
    t_start = time.monotonic()
    live = Live(console=console, auto_refresh=False, transient=True) if progress and console.is_terminal else None
    try:
        if live is not None:
            live.start()
        for mode in sc.modes:
            runner: ModeRun = TyphaRun(sc, console, live) if mode == "typha" else DirectRun(sc, console, live)
            if progress and live is None:
                runner.progress_every = max(1, round(10 / sc.sample_interval))
            remaining = budget - (time.monotonic() - t_start)
            try:
                await asyncio.wait_for(runner.run(), max(1.0, remaining))
            except asyncio.CancelledError:
                if not runner.aborted:
                    raise
                runner.result["error"] = runner.aborted
            except TimeoutError:
                runner.result["error"] = f"time budget of {budget:.0f}s exhausted"
                console.log(f"[red]{mode}: time budget exhausted[/]")
            except Exception as exc:
                runner.result["error"] = f"{type(exc).__name__}: {exc}"
                console.log(f"[red]{mode} failed: {exc!r}[/]")
            runner.result.setdefault("verification", {"passed": False})
            results["runs"][mode] = runner.result
    finally:
        if live is not None:
            live.stop()
    results["seconds"] = time.monotonic() - t_start
    results["passed"] = bool(results["runs"]) and all(
        r.get("verification", {}).get("passed") and not r.get("error") for r in results["runs"].values()
    )
    with open(out / "results.json", "w") as f:
        json.dump(results, f, indent=1, default=_json_default)
    render(out, console)
    return results


def _json_default(o: Any) -> Any:
    if isinstance(o, (set, frozenset, tuple)):
        return list(o)
    if isinstance(o, LogHistogram):
        return o.to_dict()
    raise TypeError(f"not JSON serializable: {type(o).__name__}")
