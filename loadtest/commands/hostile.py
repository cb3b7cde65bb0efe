"""`loadtest hostile`: what hostile connections cost a real typha while well-behaved agents watch.

For each kind (`loadtest.fleets.hostile.KINDS`) a fresh typha process serves a synthetic cluster with
churn, `--agents` agents follow it until they are all streaming, and then an attacker process holds
`--connections` hostile connections of that kind open for `--seconds` (redialling those typha closes).
Meanwhile, every half second: typha's RSS, CPU and open files, the kernel memory of typha's sockets
(`ss -tm` on its ports: send and receive queues), and a /liveness probe; halfway through, a few new
agents connect, and the time they take to receive their snapshot says whether newcomers still get
in. At the end: whether every agent stayed connected and reached typha's final sequence number
(sequence continuity is enforced by the client, so no update was lost), and the latency from each
update's creation to its arrival at the last agent during the attack.

The figures are typha's own (the attacker and the agents are other processes), but the machine is
shared with them: CPU figures and latencies include that contention.
"""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from loadtest.fleets.agents import AgentFleet, FleetSpec
from loadtest.fleets.hostile import KINDS, HostileFleet, HostileSpec
from loadtest.support.certs import write_cluster
from loadtest.support.console import err_console, out_console
from loadtest.support.histogram import LogHistogram
from loadtest.support.processes import TyphaProcess
from protocol.tls import TLSFiles

_SKMEM = re.compile(r"skmem:\(r(\d+),rb\d+,t(\d+),tb\d+,f\d+,w(\d+),")


@dataclass
class HostileOptions:
    kinds: tuple[str, ...] = tuple(KINDS)
    connections: int = 1000
    agents: int = 50
    late_agents: int = 5
    processes: int = 1
    seconds: float = 20.0
    nodes: int = 50
    pods_per_node: int = 20
    churn: float = 20.0
    tls: bool = False
    typha_nofile: int = 0  # 0: inherit; else typha's open-files limit (to attack it near its limit)
    typha_args: list[str] = field(default_factory=list)
    output: str | None = None

    def problems(self) -> list[str]:
        out = [f"--kind {k!r}: not one of {', '.join(KINDS)}" for k in self.kinds if k not in KINDS]
        if "tls-silent" in self.kinds and not self.tls:
            out.append("--kind tls-silent needs --tls")
        return out


def socket_memory(port: int) -> int:
    """Bytes the kernel holds in the queues of typha's sockets on `port` (send: allocated + queued; receive)."""
    try:
        text = subprocess.run(
            ["ss", "-tmnH", "state", "established", f"( sport = :{port} )"],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return 0
    return sum(int(r) + int(t) + int(w) for r, t, w in _SKMEM.findall(text))


def open_files(pid: int) -> int:
    try:
        return len(list(Path(f"/proc/{pid}/fd").iterdir()))
    except OSError:
        return 0


@dataclass
class Samples:
    rss: list[int] = field(default_factory=list)
    kernel: list[int] = field(default_factory=list)
    files: list[int] = field(default_factory=list)
    hostile_open: list[int] = field(default_factory=list)
    health_ms: list[float] = field(default_factory=list)
    health_failures: list[str] = field(default_factory=list)


async def _probe(session: aiohttp.ClientSession, port: int, samples: Samples) -> None:
    t0 = time.monotonic()
    try:
        async with session.get(f"http://127.0.0.1:{port}/liveness", timeout=aiohttp.ClientTimeout(total=5)) as r:
            await r.read()
            if r.status != 200:
                samples.health_failures.append(f"HTTP {r.status}")
    except (aiohttp.ClientError, TimeoutError) as exc:
        samples.health_failures.append(type(exc).__name__)
    samples.health_ms.append((time.monotonic() - t0) * 1e3)


async def run_kind(opts: HostileOptions, kind: str, workdir: Path) -> dict[str, Any]:
    console = err_console()
    files: TLSFiles | None = None
    env: dict[str, str] = {}
    if opts.tls:
        certs = write_cluster(workdir / "tls")
        env = certs.typha_env()
        files = TLSFiles(certs.ca, certs.felix_cert, certs.felix_key, certs.typha_cn)
    log_path = workdir / f"typha-{kind}.log"
    args = [
        "--datastore",
        "synthetic",
        "--synthetic-nodes",
        str(opts.nodes),
        "--synthetic-pods-per-node",
        str(opts.pods_per_node),
        "--synthetic-churn-rate",
        str(opts.churn),
        "--log-level",
        "INFO",
        *opts.typha_args,
    ]
    typha = TyphaProcess(args, env=env, stderr_path=str(log_path), nofile=opts.typha_nofile)
    await typha.start()
    agents = AgentFleet(
        FleetSpec(
            [("127.0.0.1", typha.port)], opts.agents, opts.processes, full_decode=2, tls=files, connect_spread=0.5
        )
    )
    late = AgentFleet(
        FleetSpec(
            [("127.0.0.1", typha.port)],
            opts.late_agents,
            1,
            full_decode=0,
            tls=files,
            hostname_prefix="late",
            connect_spread=0.0,
        )
    )
    attacker: HostileFleet | None = None
    result: dict[str, Any] = {"kind": kind, "connections": opts.connections, "tls": opts.tls}
    try:
        agents.start()
        if not await agents.wait(lambda f: f.total("streaming") == opts.agents, 120):
            raise RuntimeError(f"only {agents.total('streaming')} of {opts.agents} agents synced before the attack")
        await asyncio.sleep(1.0)
        base = Samples()
        rss0, cpu0, files0 = typha.rss_bytes(), typha.cpu_seconds(), open_files(typha.pid)
        kernel0 = socket_memory(typha.port)
        log0 = log_path.stat().st_size
        disconnects0 = agents.total("disconnects")
        target = typha.health_port if KINDS[kind].port == "health" else typha.port
        attacker = HostileFleet(HostileSpec(kind, "127.0.0.1", target, opts.connections))
        console.print(f"[bold]{kind}[/]: {opts.connections:,} connections for {opts.seconds:g}s ({KINDS[kind].help})")
        t_attack = time.monotonic()
        attack_ns = time.time_ns()
        attacker.start()
        late_started = late_synced = 0.0
        probes: list[asyncio.Task[None]] = []
        async with aiohttp.ClientSession() as session:
            tick = 0
            while (elapsed := time.monotonic() - t_attack) < opts.seconds:
                attacker.poll()
                agents.poll()
                base.rss.append(typha.rss_bytes())
                base.files.append(open_files(typha.pid))
                base.hostile_open.append(attacker.total("open"))
                if tick % 4 == 0:
                    base.kernel.append(await asyncio.to_thread(socket_memory, typha.port))
                probes.append(asyncio.create_task(_probe(session, typha.health_port, base)))
                if not late_started and elapsed >= opts.seconds / 2:
                    late.start()
                    late_started = time.monotonic()
                if late_started and not late_synced:
                    late.poll()
                    if len(late.reports) == late.started and late.total("streaming") == opts.late_agents:
                        late_synced = time.monotonic()
                tick += 1
                await asyncio.sleep(0.5)
            attacker.poll()
            peak_open = max(base.hostile_open, default=0)
            cpu_attack = typha.cpu_seconds() - cpu0
            log_bytes = log_path.stat().st_size - log0
            await attacker.stop()
            await asyncio.gather(*probes)
        if late_started and not late_synced and await late.wait(lambda f: f.total("streaming") == opts.late_agents, 30):
            late_synced = time.monotonic()
        await asyncio.sleep(2.0)
        rss_after = typha.rss_bytes()
        head = (await typha.status()).syncer().seq
        caught_up = await agents.wait(lambda f: all(r.min_seq >= head for r in f.reports.values()), 30)
        metrics = await typha.metrics()
        agents.poll()
        lat = agents.last_agent_latency(since_ns=attack_ns)
        rep = attacker.reports.get(0)
        result.update(
            {
                "hostile_open_peak": peak_open,
                "hostile_dialled": rep.dialled if rep else 0,
                "hostile_closed_by_typha": rep.closed_by_peer if rep else 0,
                "hostile_refused": rep.refused if rep else 0,
                "hostile_lifetime_seconds": _histogram(attacker.lifetimes).summary(),
                "typha_rss_baseline": rss0,
                "typha_rss_peak": max(base.rss, default=rss0),
                "typha_rss_after": rss_after,
                "typha_rss_growth_per_connection": (max(base.rss, default=rss0) - rss0) / max(1, peak_open),
                "typha_kernel_socket_bytes_baseline": kernel0,
                "typha_kernel_socket_bytes_peak": max(base.kernel, default=kernel0),
                "typha_open_files_baseline": files0,
                "typha_open_files_peak": max(base.files, default=files0),
                "typha_cpu_seconds_during_attack": cpu_attack,
                "typha_log_bytes_during_attack": log_bytes,
                "health_probe_seconds": _histogram([ms / 1e3 for ms in base.health_ms]).summary(),
                "health_probe_failures": len(base.health_failures),
                "agents": opts.agents,
                "agents_disconnects": agents.total("disconnects") - disconnects0,
                "agents_caught_up": caught_up,
                "update_to_last_agent_seconds": lat.summary(),
                "late_agents_sync_seconds": (late_synced - late_started) if late_synced else None,
                "typha_dropped": metrics.by_label("typha_connections_dropped_total", "reason"),
                "typha_tls_handshakes": metrics.by_label("typha_tls_handshakes_total", "result"),
            }
        )
        return result
    finally:
        for fleet in (attacker, late, agents):
            if fleet is not None and fleet.started:
                await fleet.stop()
        await typha.stop(kill=True)


def _histogram(values: list[float]) -> LogHistogram:
    h = LogHistogram()
    h.extend(values)
    return h


async def run_hostile(opts: HostileOptions) -> dict[str, Any]:
    results: dict[str, Any] = {"options": asdict(opts), "kinds": {}}
    with tempfile.TemporaryDirectory(prefix="pytypha-hostile-") as tmp:
        for kind in opts.kinds:
            results["kinds"][kind] = await run_kind(opts, kind, Path(tmp))
    print_table(results)
    if opts.output:
        with open(opts.output, "w") as f:
            json.dump(results, f, indent=2)
    return results


def print_table(results: dict[str, Any]) -> None:
    from rich.table import Table

    t = Table(title="hostile connections: what they cost typha (machine shared with attacker and agents)")
    for col in (
        "kind",
        "held",
        "RSS +MB (peak)",
        "kernel +MB",
        "files peak",
        "typha CPU s",
        "log KB",
        "health max ms",
        "p99 ms",
        "agents lost",
        "late sync s",
    ):
        t.add_column(col, justify="right" if col != "kind" else "left")
    for kind, r in results["kinds"].items():
        late = r["late_agents_sync_seconds"]
        t.add_row(
            kind,
            f"{r['hostile_open_peak']:,}",
            f"{(r['typha_rss_peak'] - r['typha_rss_baseline']) / 1e6:.0f}",
            f"{(r['typha_kernel_socket_bytes_peak'] - r['typha_kernel_socket_bytes_baseline']) / 1e6:.0f}",
            f"{r['typha_open_files_peak']:,}",
            f"{r['typha_cpu_seconds_during_attack']:.1f}",
            f"{r['typha_log_bytes_during_attack'] / 1e3:.0f}",
            f"{r['health_probe_seconds']['max'] * 1e3:.0f}"
            + (f" ({r['health_probe_failures']} failed)" if r["health_probe_failures"] else ""),
            f"{r['update_to_last_agent_seconds'].get('p99', 0) * 1e3:.0f}",
            f"{r['agents_disconnects']}" + ("" if r["agents_caught_up"] else " (behind)"),
            "-" if late is None else f"{late:.1f}",
        )
    out_console().print(t)
