"""`loadtest demo`: a real typha process serving a cluster to hundreds of simulated agents.

The newcomer's first look. By default it starts the Kubernetes API-server emulator with a synthetic
cluster, runs `typha --datastore kubernetes` against it over HTTPS, drives churn through the API for a
bounded time, connects the agents from worker processes, shows live progress, and ends with a summary
and a verification: every agent reached typha's final sequence number, and the sampled agents that
decoded everything hold exactly the projection of the API server's contents. With `--kubeconfig`
typha follows that cluster instead (no churn is written); with `--datastore synthetic` it uses its
embedded generator and no API server at all.
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.live import Live
from rich.table import Table

from loadtest.apiserver import start_apiserver
from loadtest.fleets.agents import AgentFleet, FleetSpec
from loadtest.support.cluster import churn_at_rate, seed, truth
from loadtest.support.console import kv_table
from loadtest.support.processes import TyphaProcess
from loadtest.support.typha_api import TyphaMetrics, TyphaStatus
from protocol.digest import state_digest
from typha.simcluster import SyntheticCluster


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


async def run_demo(opts: DemoOptions, console: Console | None = None) -> int:
    console = console or Console(stderr=True)
    api = None
    churner: asyncio.Task[int] | None = None
    workdir = tempfile.TemporaryDirectory(prefix="pytypha-demo-")
    if opts.kubeconfig:
        args = ["--datastore", "kubernetes", "--kubeconfig", opts.kubeconfig]
        where = f"the cluster in {opts.kubeconfig}"
    elif opts.datastore == "synthetic":
        args = [
            "--datastore",
            "synthetic",
            "--synthetic-nodes",
            str(opts.nodes),
            "--synthetic-pods-per-node",
            str(opts.pods_per_node),
            "--synthetic-churn-rate",
            str(opts.churn),
            "--synthetic-churn-seconds",
            str(opts.seconds),
        ]
        where = f"its embedded synthetic cluster ({opts.nodes} nodes x {opts.pods_per_node} pods)"
    else:
        api = await start_apiserver()
        cluster = SyntheticCluster(nodes=opts.nodes, pods_per_node=opts.pods_per_node, seed=1)
        t0 = time.monotonic()
        objects = seed(api.store, cluster)
        kubeconfig = str(Path(workdir.name) / "kubeconfig")
        api.write_kubeconfig(kubeconfig)
        args = ["--datastore", "kubernetes", "--kubeconfig", kubeconfig]
        where = f"the API-server emulator at {api.url} ({objects:,} objects, seeded in {time.monotonic() - t0:.1f}s)"
    typha = TyphaProcess([*args, "--log-level", "WARNING"])
    console.print(f"[bold]starting typha[/] on 127.0.0.1:{typha.port}, following {where}")
    fleet: AgentFleet | None = None
    try:
        t0 = time.monotonic()
        await typha.start()
        console.print(
            f"typha ready in {time.monotonic() - t0:.1f}s; connecting {opts.agents} agents from {opts.processes} processes"
        )
        fleet = AgentFleet(
            FleetSpec(
                [("127.0.0.1", typha.port)],
                agents=opts.agents,
                processes=opts.processes,
                full_decode=opts.full_decode,
                connect_spread=2.0,
            )
        )
        t1 = time.monotonic()
        fleet.start()
        if api is not None and opts.churn > 0:
            churner = asyncio.create_task(churn_at_rate(api.store, cluster, opts.churn, opts.seconds, tick=0.05))
        final_seq = -1
        with Live(console=console, refresh_per_second=4) as live:
            quiet_since = time.monotonic()
            last_seq = -1
            while True:
                fleet.poll()
                st = await typha.status()
                m = await typha.metrics()
                seq = st.syncer().seq
                table = _progress(f"demo {time.monotonic() - t1:5.1f}s", fleet, st, m)
                if api is not None:
                    watches = sum(r.open_watches for r in api.stats.resources.values())
                    table.add_row(
                        "API-server watches open / events sent",
                        f"{watches} / {sum(r.events_sent for r in api.stats.resources.values()):,}",
                    )
                live.update(table)
                # Done when churn is over (seq stable for a second) and every agent has the final seq.
                if seq != last_seq:
                    last_seq, quiet_since = seq, time.monotonic()
                elif (
                    time.monotonic() - t1 > opts.seconds
                    and (churner is None or churner.done())
                    and time.monotonic() - quiet_since > 1.0
                    and len(fleet.reports) == fleet.started
                    and all(r.min_seq >= seq for r in fleet.reports.values())
                    and fleet.total("in_sync") == opts.agents
                ):
                    final_seq = seq
                    break
                if time.monotonic() - t1 > opts.seconds + 120:
                    break
                await asyncio.sleep(0.25)
        served = await typha.status(digest=True)
        metrics = await typha.metrics()
        elapsed = time.monotonic() - t1
        await fleet.stop()
        felix = served.syncer()
        expected = felix.digest
        if api is not None:
            expected = state_digest(truth(api.store).items())
        digests = fleet.digests()
        matching = sum(1 for _, d in digests.values() if d == expected)
        d = fleet.describe()
        lat = fleet.merged("latency")
        last = fleet.last_agent_latency()
        snap = fleet.merged("snapshot_seconds")
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
        if api is not None:
            res = api.stats.resources.values()
            watched = [r for r in res if r.watches_total]
            t.add_row("API-server watches opened by typha", f"{sum(r.watches_total for r in watched)}")
            t.add_row(
                "... if agents watched directly",
                f"{opts.agents * len(watched):,} ({opts.agents} x {len(watched)} resources)",
            )
            t.add_row("API-server watch bytes sent", f"{sum(r.bytes_sent for r in res) / 1e6:,.1f} MB")
        source = "the API server's contents" if api is not None else "typha's state"
        t.add_row(f"sampled agents matching {source}", f"{matching}/{len(digests)}")
        console.print(t)
        fleet = None
        ok = final_seq >= 0 and matching == len(digests) and len(digests) > 0
        console.print(
            "[bold green]PASS[/]" if ok else "[bold red]FAIL[/]: not every agent converged on the expected state"
        )
        return 0 if ok else 1
    finally:
        if churner is not None:
            churner.cancel()
        if fleet is not None:
            await fleet.stop()
        await typha.stop()
        if api is not None:
            await api.stop()
        workdir.cleanup()
