"""`loadtest bench fanout`: snapshot throughput, update latency to the last agent, memory per agent.

The server runs in its own process (`benchserver`), the agents in worker processes (`agents`), so the
figures are the server's, measured the way an operator would: wall time for every agent to hold the
snapshot, the time from a breadcrumb's creation to its arrival at the last agent, and the server's
RSS growth per connected, caught-up agent. All traffic is on loopback.

`--tls on` runs the same benchmark over mutual TLS (generated certificates); `--tls both` runs it in
plaintext and then over TLS in one invocation and prints the ratios. With TLS the snapshot is
encrypted once per agent (TLS has a key per connection), but it is still encoded and zstd-compressed
once, before encryption, and written in large pieces, so what TLS adds is the cipher's work on the
bytes actually sent.
"""

from __future__ import annotations

import asyncio
import json
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.live import Live

from loadtest.fleets.agents import AgentFleet, FleetSpec
from loadtest.support.certs import ClusterCerts, write_cluster
from loadtest.support.console import err_console, kv_table, out_console
from protocol.tls import TLSFiles

TLS_MODES = ("off", "on", "both")


@dataclass
class FanoutOptions:
    agents: int = 1000
    processes: int = 2
    kvs: int = 100_000
    value_size: int = 500
    rate: float = 1000.0
    seconds: float = 10.0
    compression: bool = True
    full_decode: int = 2
    timeout: float = 600.0
    output: str | None = None
    tls: str = "off"  # off | on | both (plaintext, then TLS, in one invocation)


class BenchServer:
    """The benchserver subprocess and its JSON-lines control channel."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.info: dict[str, Any] = {}

    @classmethod
    async def start(cls, kvs: int, value_size: int, certs: ClusterCerts | None = None) -> BenchServer:
        tls = ["--tls-dir", str(Path(certs.ca).parent)] if certs is not None else []
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "loadtest.commands.benchserver",
            "--kvs",
            str(kvs),
            "--value-size",
            str(value_size),
            *tls,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            limit=1 << 20,
        )
        self = cls(proc)
        self.info = await self._read()
        return self

    async def _read(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = await self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"bench server exited with {await self.proc.wait()}")
        return json.loads(line)

    async def call(self, **cmd: Any) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write((json.dumps(cmd) + "\n").encode())
        await self.proc.stdin.drain()
        return await self._read()

    async def stop(self, kill: bool = False) -> None:
        if self.proc.returncode is None:
            if kill:
                self.proc.kill()
            else:
                try:
                    await asyncio.wait_for(self.call(cmd="quit"), 10)
                except (OSError, TimeoutError, RuntimeError, ValueError) as exc:  # no answer: end it
                    print(f"bench server did not quit ({exc!r}); killed", file=sys.stderr)
                    self.proc.kill()
            await self.proc.wait()


async def run_fanout(opts: FanoutOptions, console: Console | None = None) -> dict[str, Any]:
    """The benchmark in plaintext, over TLS, or both (then `results["plaintext"]`, `["tls"]`, the ratios,
    and a `verification` covering both runs)."""
    console = console or err_console()
    if opts.tls != "both":
        results = await _run_once(opts, opts.tls == "on", console)
    else:
        plain = await _run_once(opts, False, console)
        tls = await _run_once(opts, True, console)
        results = {"options": opts.__dict__.copy(), "plaintext": plain, "tls": tls, "tls_cost": tls_cost(plain, tls)}
        vp, vt = plain["verification"], tls["verification"]
        results["verification"] = {
            "final_seq": vt["final_seq"],
            "agents_at_final_seq": min(vp["agents_at_final_seq"], vt["agents_at_final_seq"]),
            "sampled_agents": vp["sampled_agents"] + vt["sampled_agents"],
            "sampled_agents_matching": vp["sampled_agents_matching"] + vt["sampled_agents_matching"],
        }
        print_comparison(results)
    if opts.output:
        with open(opts.output, "w") as f:
            json.dump(results, f, indent=2)
    return results


def tls_cost(plain: dict[str, Any], tls: dict[str, Any]) -> dict[str, float]:
    """TLS's figures over plaintext's, measured in the same invocation."""
    ps, ts = plain["snapshot"], tls["snapshot"]
    pc, tc = plain["churn"], tls["churn"]
    return {
        "snapshot_seconds_ratio": ts["seconds_all_agents"] / ps["seconds_all_agents"],
        "snapshot_wire_rate_ratio": ts["wire_gbps"] / ps["wire_gbps"],
        "update_p50_ratio": tc["last_agent_latency"]["p50"] / max(1e-9, pc["last_agent_latency"]["p50"]),
        "update_p99_ratio": tc["last_agent_latency"]["p99"] / max(1e-9, pc["last_agent_latency"]["p99"]),
        "server_cpu_during_churn_ratio": tc["server_cpu_fraction"] / max(1e-9, pc["server_cpu_fraction"]),
        "rss_per_agent_ratio": tls["memory"]["rss_per_agent_bytes"] / max(1.0, plain["memory"]["rss_per_agent_bytes"]),
    }


def print_comparison(results: dict[str, Any]) -> None:
    p, t, c = results["plaintext"], results["tls"], results["tls_cost"]
    rows = [
        ("snapshot to all agents", "seconds_all_agents", "snapshot", 1.0, "s", "snapshot_seconds_ratio"),
        ("aggregate wire rate", "wire_gbps", "snapshot", 1.0, "GB/s", "snapshot_wire_rate_ratio"),
    ]
    table = [
        (name, f"{p[sec][key] * k:.2f} {unit}", f"{t[sec][key] * k:.2f} {unit}", f"{c[ratio]:.2f}x")
        for name, key, sec, k, unit, ratio in rows
    ]
    for q in ("p50", "p99"):
        table.append(
            (
                f"update -> last agent {q}",
                f"{p['churn']['last_agent_latency'][q] * 1e3:.1f} ms",
                f"{t['churn']['last_agent_latency'][q] * 1e3:.1f} ms",
                f"{c[f'update_{q}_ratio']:.2f}x",
            )
        )
    table.append(
        (
            "server CPU during churn",
            f"{p['churn']['server_cpu_fraction'] * 100:.0f} %",
            f"{t['churn']['server_cpu_fraction'] * 100:.0f} %",
            f"{c['server_cpu_during_churn_ratio']:.2f}x",
        )
    )
    table.append(
        (
            "server RSS per agent",
            f"{p['memory']['rss_per_agent_bytes'] / 1024:.1f} KiB",
            f"{t['memory']['rss_per_agent_bytes'] / 1024:.1f} KiB",
            f"{c['rss_per_agent_ratio']:.2f}x",
        )
    )
    from rich.table import Table

    out = Table(title="TLS cost, same invocation (plaintext then mutual TLS)")
    for col in ("", "plaintext", "TLS", "TLS / plaintext"):
        out.add_column(col, justify="right" if col else "left")
    for row in table:
        out.add_row(*row)
    out_console().print(out)


async def _run_once(opts: FanoutOptions, use_tls: bool, console: Console) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="pytypha-fanout-") as tmp:
        certs = write_cluster(tmp) if use_tls else None
        return await _measure(opts, certs, console)


async def _measure(opts: FanoutOptions, certs: ClusterCerts | None, console: Console) -> dict[str, Any]:
    results: dict[str, Any] = {"options": opts.__dict__.copy(), "tls": certs is not None}
    how = "mutual TLS" if certs is not None else "plaintext"
    console.print(
        f"[bold]fan-out benchmark[/] ({how}): {opts.agents} agents in {opts.processes} processes, {opts.kvs:,} KVs"
    )
    tls = TLSFiles(certs.ca, certs.felix_cert, certs.felix_key, certs.typha_cn) if certs is not None else None
    server = await BenchServer.start(opts.kvs, opts.value_size, certs)
    port = server.info["port"]
    fleet: AgentFleet | None = None
    try:
        # Warm-up: one agent builds the first snapshot, so the baseline RSS includes the cache's peak.
        warm = AgentFleet(
            FleetSpec(
                [("127.0.0.1", port)], agents=1, processes=1, full_decode=0, compression=opts.compression, tls=tls
            )
        )
        warm.start()
        await warm.wait(lambda f: f.total("streaming") == 1, 120)
        await warm.stop()
        base = await server.call(cmd="release")
        await asyncio.sleep(1.1)
        base = await server.call(cmd="stats")
        results["server_rss_baseline"] = base["rss"]
        snap_before = base

        # Phase 1: every agent receives the snapshot.
        spec = FleetSpec(
            [("127.0.0.1", port)],
            agents=opts.agents,
            processes=opts.processes,
            full_decode=opts.full_decode,
            compression=opts.compression,
            connect_spread=0.5,
            tls=tls,
        )
        fleet = agents = AgentFleet(spec)
        t0 = time.monotonic()
        fleet.start()
        with Live(console=console, refresh_per_second=4) as live:

            def tick() -> None:
                d = agents.describe()
                el = time.monotonic() - t0
                live.update(
                    kv_table(
                        f"snapshot phase {el:5.1f}s",
                        [
                            ("agents streaming", f"{d['streaming']:,}/{opts.agents:,}"),
                            ("bytes received", f"{d['bytes'] / 1e9:,.2f} GB"),
                            ("rate", f"{d['bytes'] / 1e9 / max(el, 1e-9):,.2f} GB/s"),
                        ],
                    )
                )

            ok = await fleet.wait(lambda f: f.total("streaming") == opts.agents, opts.timeout, tick)
        t_snap = time.monotonic() - t0
        if not ok:
            raise RuntimeError(f"only {fleet.total('streaming')} of {opts.agents} agents finished the snapshot")
        st = await server.call(cmd="stats")
        snap_times = fleet.merged("snapshot_seconds")
        wire = fleet.total("bytes")
        raw_per_agent = (st["snapshot_raw_bytes"] - snap_before["snapshot_raw_bytes"]) or snap_before[
            "snapshot_raw_bytes"
        ]
        results["snapshot"] = {
            "seconds_all_agents": t_snap,
            "wire_bytes": wire,
            "wire_gbps": wire / t_snap / 1e9,
            "raw_equivalent_gbps": raw_per_agent * opts.agents / t_snap / 1e9,
            "per_agent_seconds": snap_times.summary(),
            "snapshots_generated": st["snapshots_generated"] - snap_before["snapshots_generated"],
            "snapshots_reused": st["snapshots_reused"] - snap_before["snapshots_reused"],
        }

        # Phase 2: churn; latency from breadcrumb creation to the last agent.
        cpu0 = st["cpu"]
        churn_start_ns = time.time_ns()
        churn = asyncio.create_task(server.call(cmd="churn", rate=opts.rate, seconds=opts.seconds))
        t1 = time.monotonic()
        with Live(console=console, refresh_per_second=4) as live:

            def tick2() -> None:
                lat = agents.merged("latency")
                live.update(
                    kv_table(
                        f"churn phase {time.monotonic() - t1:5.1f}s / {opts.seconds:.0f}s",
                        [
                            ("updates/s", f"{opts.rate:,.0f}"),
                            ("agent latency p50", f"{lat.percentile(50) * 1e3:.1f} ms"),
                            ("agent latency p99", f"{lat.percentile(99) * 1e3:.1f} ms"),
                        ],
                    )
                )

            while not churn.done():
                fleet.poll()
                tick2()
                await asyncio.sleep(0.25)
        done = churn.result()
        final_seq = done["seq"]
        await fleet.wait(lambda f: all(r.min_seq >= final_seq for r in f.reports.values()), 60)
        st2 = await server.call(cmd="stats")
        fleet.poll()
        last = fleet.last_agent_latency(since_ns=churn_start_ns)
        results["churn"] = {
            "updates": done["updates"],
            "breadcrumbs": st2["breadcrumbs"] - st["breadcrumbs"],
            "server_cpu_seconds": st2["cpu"] - cpu0,
            "server_cpu_fraction": (st2["cpu"] - cpu0) / opts.seconds,
            "last_agent_latency": last.summary(),
            "any_agent_latency": fleet.merged("latency").summary(),
        }

        # Phase 3: memory per idle, caught-up agent (cached snapshots released first).
        await asyncio.sleep(1.1)
        await server.call(cmd="release")
        st3 = await server.call(cmd="stats")
        results["memory"] = {
            "server_rss_with_agents": st3["rss"],
            "rss_per_agent_bytes": (st3["rss"] - base["rss"]) / opts.agents,
            "connections": st3["connections"],
        }
        truth = await server.call(cmd="digest")
        await fleet.stop()
        fleet_digests = fleet.digests()
        results["disconnect_reasons"] = fleet.disconnect_reasons()
        results["verification"] = {
            "final_seq": truth["seq"],
            "agents_at_final_seq": sum(r.agents for r in fleet.reports.values() if r.min_seq >= truth["seq"]),
            "sampled_agents": len(fleet_digests),
            "sampled_agents_matching": sum(1 for n, d in fleet_digests.values() if d == truth["digest"]),
        }
        fleet = None
    finally:
        task = asyncio.current_task()
        kill = task is not None and task.cancelling() > 0  # interrupted: end the processes now
        if fleet is not None:
            if kill:
                fleet.kill()
            else:
                await fleet.stop()
        await server.stop(kill=kill)

    s, c, m = results["snapshot"], results["churn"], results["memory"]
    out_console().print(
        kv_table(
            f"fan-out results ({how})",
            [
                ("snapshot to all agents", f"{s['seconds_all_agents']:.2f} s"),
                ("aggregate wire rate", f"{s['wire_gbps']:.2f} GB/s"),
                ("aggregate raw-equivalent rate", f"{s['raw_equivalent_gbps']:.2f} GB/s"),
                ("snapshots built / reused", f"{s['snapshots_generated']} / {s['snapshots_reused']}"),
                ("update -> last agent p50", f"{c['last_agent_latency']['p50'] * 1e3:.1f} ms"),
                ("update -> last agent p99", f"{c['last_agent_latency']['p99'] * 1e3:.1f} ms"),
                ("update -> last agent max", f"{c['last_agent_latency']['max'] * 1e3:.1f} ms"),
                ("server CPU during churn", f"{c['server_cpu_fraction'] * 100:.0f} % of a core"),
                ("server RSS per agent", f"{m['rss_per_agent_bytes'] / 1024:.1f} KiB"),
                (
                    "sampled agents matching truth",
                    f"{results['verification']['sampled_agents_matching']}/{results['verification']['sampled_agents']}",
                ),
            ],
        )
    )
    return results
