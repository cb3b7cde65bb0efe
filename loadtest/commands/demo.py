"""`loadtest demo`: a real typha process serving a cluster to hundreds of simulated agents.

The newcomer's first look. By default it starts the Kubernetes API-server emulator with a synthetic
cluster, runs `typha --datastore kubernetes` against it over HTTPS, drives churn through the API for a
bounded time, connects the agents from worker processes, shows live progress, and ends with a summary
and a verification: every agent reached typha's final sequence number, and the sampled agents that
decoded everything hold exactly the projection of the API server's contents. With `--kubeconfig`
typha follows that cluster instead (no churn is written); with `--datastore synthetic` it uses its
embedded generator and no API server at all.

Progress goes to stderr (a live table on a terminal, a line every few seconds elsewhere); the summary
and the verdict go to stdout. Every phase is bounded: the agents must converge within `--seconds`
plus `SETTLE_SECONDS`, or the demo says which condition was not met. Cancelled (Ctrl-C, SIGTERM),
it kills typha and the agent workers instead of draining them, so it ends within about a second.
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from loadtest.apiserver import start_apiserver
from loadtest.fleets.agents import AgentFleet, FleetSpec
from loadtest.support.cluster import churn_at_rate, seed, truth
from loadtest.support.console import err_console, kv_table, live_or_none, out_console
from loadtest.support.processes import TyphaProcess
from loadtest.support.typha_api import TyphaMetrics, TyphaStatus
from protocol.digest import state_digest
from typha.simcluster import SyntheticCluster

SETTLE_SECONDS = 120.0  # after --seconds, how long the agents may take to reach typha's final state
LOG_EVERY = 5.0  # seconds between progress lines off a terminal


@dataclass
class DemoOptions:
    agents: int = 300
    processes: int = 2
    nodes: int = 300
    pods_per_node: int = 30
    churn: float = 100.0
    seconds: float = 20.0
    full_decode: int = 4
    datastore: str = "emulator"  # "emulator" or "synthetic"; ignored when kubeconfig is given
    kubeconfig: str | None = None

    def problems(self) -> list[str]:
        """What is wrong with these options (empty when they can run)."""
        out = []
        if self.agents < 1:
            out.append("--agents must be at least 1 (the demo verifies what the agents received)")
        if self.processes < 1:
            out.append("--processes must be at least 1")
        if self.nodes < 1 or self.pods_per_node < 0:
            out.append("--nodes must be at least 1 and --pods-per-node at least 0")
        if self.seconds <= 0 or self.churn < 0:
            out.append("--seconds must be positive and --churn at least 0")
        return out


def _progress(title: str, fleet: AgentFleet, typha: TyphaStatus, metrics: TyphaMetrics) -> Table:
    d = fleet.describe()
    lat = fleet.merged("latency")
    felix = typha.syncer()
    counters = metrics.counters()
    t = kv_table(title)
    t.add_row("agents connected / in sync", f"{d['connected']:,} / {d['in_sync']:,} of {d['agents']:,}")
    t.add_row("typha keys (felix) / seq", f"{felix.keys:,} / {felix.seq:,}")
    t.add_row("updates in / skipped as duplicates", f"{counters.updates:,.0f} / {counters.skipped:,.0f}")
    t.add_row("KVs delivered to agents", f"{d['kvs']:,}")
    t.add_row("bytes delivered", f"{d['bytes'] / 1e6:,.1f} MB")
    t.add_row("update latency p50 / p99", f"{lat.percentile(50) * 1e3:.1f} / {lat.percentile(99) * 1e3:.1f} ms")
    return t


class Demo:
    def __init__(self, opts: DemoOptions, out: Console, log: Console) -> None:
        self.opts = opts
        self.out = out
        self.log = log
        self.workdir = tempfile.TemporaryDirectory(prefix="pytypha-demo-")
        self.api: Any = None
        self.cluster: SyntheticCluster | None = None
        self.typha: TyphaProcess | None = None
        self.fleet: AgentFleet | None = None
        self.churner: asyncio.Task[int] | None = None

    async def source(self) -> tuple[list[str], str]:
        """typha's datastore flags, and a description of what it follows."""
        opts = self.opts
        if opts.kubeconfig:
            return ["--datastore", "kubernetes", "--kubeconfig", opts.kubeconfig], f"the cluster in {opts.kubeconfig}"
        if opts.datastore == "synthetic":
            args = ["--datastore", "synthetic", "--synthetic-nodes", str(opts.nodes)]
            args += ["--synthetic-pods-per-node", str(opts.pods_per_node), "--synthetic-churn-rate", str(opts.churn)]
            args += ["--synthetic-churn-seconds", str(opts.seconds)]
            return args, f"its embedded synthetic cluster ({opts.nodes} nodes x {opts.pods_per_node} pods)"
        self.api = await start_apiserver()
        self.cluster = SyntheticCluster(nodes=opts.nodes, pods_per_node=opts.pods_per_node, seed=1)
        t0 = time.monotonic()
        objects = seed(self.api.store, self.cluster)
        kubeconfig = str(Path(self.workdir.name) / "kubeconfig")
        self.api.write_kubeconfig(kubeconfig)
        where = (
            f"the API-server emulator at {self.api.url} ({objects:,} objects, seeded in {time.monotonic() - t0:.1f}s)"
        )
        return ["--datastore", "kubernetes", "--kubeconfig", kubeconfig], where

    async def run(self) -> int:
        try:
            return await self._run()
        finally:
            task = asyncio.current_task()
            await self.teardown(kill=task is not None and task.cancelling() > 0)

    async def _run(self) -> int:
        opts, log = self.opts, self.log
        args, where = await self.source()
        self.typha = typha = TyphaProcess([*args, "--log-level", "WARNING"])
        log.print(f"[bold]starting typha[/] on 127.0.0.1:{typha.port}, following {where}")
        t0 = time.monotonic()
        await typha.start()
        log.print(
            f"typha ready in {time.monotonic() - t0:.1f}s; connecting {opts.agents} agents from {opts.processes} processes"
        )
        spec = FleetSpec(
            [("127.0.0.1", typha.port)],
            agents=opts.agents,
            processes=opts.processes,
            full_decode=opts.full_decode,
            connect_spread=2.0,
        )
        self.fleet = fleet = AgentFleet(spec)
        t1 = time.monotonic()
        fleet.start()
        if self.api is not None and self.cluster is not None and opts.churn > 0:
            self.churner = asyncio.create_task(
                churn_at_rate(self.api.store, self.cluster, opts.churn, opts.seconds, tick=0.05)
            )
        converged, why = await self.follow(t1)
        return await self.summary(time.monotonic() - t1, converged, why)

    async def follow(self, t1: float) -> tuple[bool, str]:
        """Show progress until churn is over (seq stable for a second) and every agent holds the final
        seq; bounded by --seconds + SETTLE_SECONDS. Returns (converged, what was missing if not)."""
        opts, fleet, typha = self.opts, self.fleet, self.typha
        assert fleet is not None and typha is not None
        live = live_or_none(self.log)
        last_seq, quiet_since, last_line = -1, time.monotonic(), time.monotonic()
        why = ""
        try:
            if live is not None:
                live.start()
            while (elapsed := time.monotonic() - t1) <= opts.seconds + SETTLE_SECONDS:
                fleet.poll()
                if dead := fleet.dead_workers():
                    return False, "agent workers died: " + "; ".join(dead)
                st, m = await typha.status(), await typha.metrics()
                seq = st.syncer().seq
                table = _progress(f"demo {elapsed:5.1f}s", fleet, st, m)
                if self.api is not None:
                    res = self.api.stats.resources.values()
                    table.add_row(
                        "API-server watches open / events sent",
                        f"{sum(r.open_watches for r in res)} / {sum(r.events_sent for r in res):,}",
                    )
                if live is not None:
                    live.update(table, refresh=True)
                elif time.monotonic() - last_line >= LOG_EVERY:
                    last_line = time.monotonic()
                    d = fleet.describe()
                    self.log.log(
                        f"demo {elapsed:.0f}s: {d['in_sync']:,}/{opts.agents:,} agents in sync, typha seq {seq:,}"
                    )
                if seq != last_seq:
                    last_seq, quiet_since = seq, time.monotonic()
                waiting = {
                    "churn to end": elapsed <= opts.seconds or (self.churner is not None and not self.churner.done()),
                    "typha's seq to settle": time.monotonic() - quiet_since <= 1.0,
                    "every worker to report": len(fleet.reports) < fleet.started,
                    "every agent to reach the final seq": not all(r.min_seq >= seq for r in fleet.reports.values()),
                    "every agent to be in sync": fleet.total("in_sync") != opts.agents,
                }
                why = ", ".join(k for k, v in waiting.items() if v)
                if not why:
                    return True, ""
                await asyncio.sleep(0.25)
        finally:
            if live is not None:
                live.stop()
        return False, f"not converged {opts.seconds + SETTLE_SECONDS:.0f}s after the start; still waiting for {why}"

    async def summary(self, elapsed: float, converged: bool, why: str) -> int:
        opts, fleet, typha = self.opts, self.fleet, self.typha
        assert fleet is not None and typha is not None
        served = await typha.status(digest=True)
        metrics = await typha.metrics()
        await fleet.stop()
        self.fleet = None  # stopped
        felix = served.syncer()
        expected = state_digest(truth(self.api.store).items()) if self.api is not None else felix.digest
        digests = fleet.digests()
        matching = sum(1 for _, d in digests.values() if d == expected)
        d = fleet.describe()
        lat, last, snap = fleet.merged("latency"), fleet.last_agent_latency(), fleet.merged("snapshot_seconds")
        counters = metrics.counters()
        updates, skipped = counters.updates, counters.skipped
        t = kv_table("demo summary")
        t.add_row("agents (processes)", f"{opts.agents:,} ({opts.processes})")
        t.add_row(
            "agents at typha's final seq",
            f"{sum(r.agents for r in fleet.reports.values() if r.min_seq >= felix.seq):,}",
        )
        t.add_row("keys in typha's felix cache", f"{felix.keys:,}")
        t.add_row("KVs delivered (all agents)", f"{d['kvs']:,}")
        t.add_row("bytes delivered", f"{d['bytes'] / 1e6:,.1f} MB in {elapsed:.1f}s")
        t.add_row(
            "updates in / dropped as unchanged", f"{updates:,.0f} / {skipped:,.0f} ({skipped / max(updates, 1):.0%})"
        )
        t.add_row(
            "snapshot time per agent p50 / p99", f"{snap.percentile(50) * 1e3:.0f} / {snap.percentile(99) * 1e3:.0f} ms"
        )
        t.add_row(
            "update latency p50 / p99 / max",
            f"{lat.percentile(50) * 1e3:.1f} / {lat.percentile(99) * 1e3:.1f} / {lat.max * 1e3:.1f} ms",
        )
        t.add_row(
            "update to last agent p50 / p99", f"{last.percentile(50) * 1e3:.1f} / {last.percentile(99) * 1e3:.1f} ms"
        )
        t.add_row("reconnects", f"{d['disconnects']:,}")
        if self.api is not None:
            res = self.api.stats.resources.values()
            watched = [r for r in res if r.watches_total]
            t.add_row("API-server watches opened by typha", f"{sum(r.watches_total for r in watched)}")
            t.add_row(
                "... if agents watched directly",
                f"{opts.agents * len(watched):,} ({opts.agents} x {len(watched)} resources)",
            )
            t.add_row("API-server watch bytes sent", f"{sum(r.bytes_sent for r in res) / 1e6:,.1f} MB")
        source = "the API server's contents" if self.api is not None else "typha's state"
        t.add_row(f"sampled agents matching {source}", f"{matching}/{len(digests)}")
        self.out.print(t)
        ok = converged and matching == len(digests) and len(digests) > 0
        if ok:
            self.out.print("[bold green]PASS[/]")
        else:
            reason = why or f"{matching} of {len(digests)} sampled agents hold the expected state"
            self.out.print(f"[bold red]FAIL[/]: {reason}")
        return 0 if ok else 1

    async def teardown(self, kill: bool) -> None:
        """Stop everything started; `kill` (when cancelled) ends processes at once instead of draining."""
        if self.churner is not None:
            self.churner.cancel()
            await asyncio.gather(self.churner, return_exceptions=True)
        if self.fleet is not None:
            if kill:
                self.fleet.kill()
            else:
                await self.fleet.stop()
        if self.typha is not None:
            await self.typha.stop(kill=kill)
        if self.api is not None:
            await self.api.stop()
        self.workdir.cleanup()


async def run_demo(opts: DemoOptions, out: Console | None = None, log: Console | None = None) -> int:
    """Run the demo; the summary goes to `out` (stdout), progress to `log` (stderr). 0 when it verified."""
    return await Demo(opts, out or out_console(), log or err_console()).run()
