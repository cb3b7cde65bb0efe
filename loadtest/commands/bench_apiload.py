"""`loadtest bench apiload` and `loadtest bench ingest`: what typha saves the API server, and how fast
typha ingests.

apiload runs the same cluster and churn twice against the API-server emulator (which runs in this
process, so this process's CPU is the emulator's, plus the churn writer common to both modes):
- typha: one typha process watches the emulator and serves N agents;
- direct: N agents each list and watch every resource themselves, as Felix would without typha.
It reports watches opened, bytes and events the emulator sent, and the emulator's CPU, side by side.

ingest measures typha alone: the initial list+projection of the whole cluster, then a burst of
events written as fast as the emulator takes them (the default churn mix: pods, their IPAM blocks, a few
policies and nodes), then a burst of pod events only (label and status changes), each as objects (or
events) per second of typha CPU, which is the per-core ingest rate.
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
from loadtest.fleets.direct import DirectFleet, DirectSpec
from loadtest.run.measure import api_totals, open_watches
from loadtest.support.cluster import apply_events, churn_at_rate, seed
from loadtest.support.console import err_console, out_console
from loadtest.support.histogram import arrival_latency
from loadtest.support.host import self_cpu
from loadtest.support.processes import TyphaProcess
from typha.k8s.projection import resources_for_syncer
from typha.simcluster import SyntheticCluster


@dataclass
class ApiLoadOptions:
    agents: int = 200
    processes: int = 2
    nodes: int = 200
    pods_per_node: int = 30
    churn: float = 50.0
    seconds: float = 20.0
    modes: tuple[str, ...] = ("typha", "direct")


def _emulator_totals(api: Any) -> dict[str, int]:
    c = api_totals(api)
    return {
        "watches_opened": c.watches_total,
        "events_sent": c.events_sent,
        "watch_bytes": c.bytes_sent,
        "list_bytes": c.list_bytes_sent,
        "requests": c.requests,
    }


async def _one_mode(mode: str, opts: ApiLoadOptions, console: Console) -> dict[str, Any]:
    api = await start_apiserver(bookmark_interval=60)
    cluster = SyntheticCluster(nodes=opts.nodes, pods_per_node=opts.pods_per_node, seed=1)
    seed(api.store, cluster)
    workdir = tempfile.TemporaryDirectory(prefix="pytypha-apiload-")
    out: dict[str, Any] = {"mode": mode}
    typha: TyphaProcess | None = None
    fleet: AgentFleet | DirectFleet | None = None
    try:
        cpu0 = self_cpu()
        t0 = time.monotonic()
        if mode == "typha":
            kc = str(Path(workdir.name) / "kubeconfig")
            api.write_kubeconfig(kc)
            typha = TyphaProcess(["--datastore", "kubernetes", "--kubeconfig", kc, "--log-level", "WARNING"])
            await typha.start()
            fleet = AgentFleet(
                FleetSpec([("127.0.0.1", typha.port)], agents=opts.agents, processes=opts.processes, full_decode=2)
            )
            fleet.start()
            ok = await fleet.wait(lambda f: f.total("in_sync") == opts.agents, 300)
        else:
            paths = [r.path() for r in resources_for_syncer("felix")]
            ca = api.ca_pem.decode() if isinstance(api.ca_pem, bytes) else api.ca_pem
            fleet = DirectFleet(DirectSpec(api.url, api.token, ca, paths, opts.agents, opts.processes))
            fleet.start()
            want = opts.agents * len(paths)
            ok = await fleet.wait(lambda f: f.total("listed") == opts.agents and f.total("watches_open") == want, 300)
        out["startup_seconds"] = time.monotonic() - t0
        out["all_agents_synced"] = ok
        startup = _emulator_totals(api)
        cpu1 = self_cpu()
        out["emulator_cpu_startup"] = cpu1 - cpu0
        console.print(
            f"  {mode}: {opts.agents} agents synced in {out['startup_seconds']:.1f}s; churning {opts.churn:g}/s for {opts.seconds:g}s"
        )
        rv_times: dict[int, int] = {}
        typha_cpu0 = typha.cpu_seconds() if typha else 0.0
        churner = asyncio.create_task(churn_at_rate(api.store, cluster, opts.churn, opts.seconds, rv_times))
        max_watches = 0
        while not churner.done():
            fleet.poll()
            max_watches = max(max_watches, open_watches(api))
            await asyncio.sleep(0.25)
        out["changes_written"] = churner.result()
        await asyncio.sleep(2)  # let the last events drain
        fleet.poll()
        steady = _emulator_totals(api)
        out["emulator_cpu_steady"] = self_cpu() - cpu1
        out["open_watches_max"] = max_watches
        out["startup"] = startup
        out["steady"] = {k: steady[k] - startup[k] for k in steady}
        # API write -> arrival at the last agent that reports revisions (all direct agents; the
        # decoding sample of typha agents: cheap agents see sequence numbers, not revisions).
        out["write_to_agent_latency"] = arrival_latency(fleet.rv_last_arrival, rv_times).summary()
        if typha is not None:
            out["typha_cpu_steady"] = typha.cpu_seconds() - typha_cpu0
            out["typha_rss"] = typha.rss_bytes()
            assert isinstance(fleet, AgentFleet)
            out["typha_to_last_agent_latency"] = fleet.last_agent_latency().summary()
    finally:
        if fleet is not None:
            await fleet.stop()
        if typha is not None:
            await typha.stop()
        await api.stop()
        workdir.cleanup()
    return out


async def run_apiload(opts: ApiLoadOptions, console: Console | None = None) -> dict[str, Any]:
    console = console or err_console()
    console.print(
        f"[bold]API-server load[/]: {opts.agents} agents, {opts.nodes} nodes x {opts.pods_per_node} pods, modes {', '.join(opts.modes)}"
    )
    results = {m: await _one_mode(m, opts, console) for m in opts.modes}
    t = Table(title="API-server load: through typha vs agents watching directly")
    t.add_column("measure")
    for m in opts.modes:
        t.add_column(m, justify="right")
    rows = [
        ("watches opened (startup)", lambda r: f"{r['startup']['watches_opened']:,}"),
        ("open watches (max, steady)", lambda r: f"{r['open_watches_max']:,}"),
        ("list bytes (startup)", lambda r: f"{r['startup']['list_bytes'] / 1e6:,.1f} MB"),
        ("watch events sent (steady)", lambda r: f"{r['steady']['events_sent']:,}"),
        ("watch bytes sent (steady)", lambda r: f"{r['steady']['watch_bytes'] / 1e6:,.1f} MB"),
        ("emulator CPU, startup", lambda r: f"{r['emulator_cpu_startup']:.1f} s"),
        ("emulator CPU, steady churn", lambda r: f"{r['emulator_cpu_steady']:.1f} s"),
        ("agents synced in", lambda r: f"{r['startup_seconds']:.1f} s"),
        (
            "API write -> agent p50 / p99",
            lambda r: (
                f"{r['write_to_agent_latency']['p50'] * 1e3:.0f} / {r['write_to_agent_latency']['p99'] * 1e3:.0f} ms"
            ),
        ),
    ]
    for name, fmt in rows:
        t.add_row(name, *(fmt(results[m]) for m in opts.modes))
    out_console().print(t)
    return results


async def decode_comparison(pods: int = 1000) -> dict[str, float]:
    """Microseconds per pod to decode one list body: the client's generated models, json, orjson, and
    msgspec into only the fields typha projects (what typha uses)."""
    import json

    import orjson
    from kubernetes_asyncio.client import ApiClient

    from typha.k8s.wire import decode_list

    cluster = SyntheticCluster(nodes=max(1, pods // 10), pods_per_node=10, seed=2)
    items = [o for r, o in cluster.initial_objects() if r == "pods"][:pods]
    body = orjson.dumps({"kind": "PodList", "apiVersion": "v1", "metadata": {"resourceVersion": "1"}, "items": items})

    class _Response:  # what ApiClient.deserialize reads
        data = body

    out: dict[str, float] = {"pod_bytes": len(body) / len(items)}
    async with ApiClient() as api:
        for name, decode in (
            ("models_us", lambda: api.deserialize(_Response(), "V1PodList")),
            ("json_us", lambda: json.loads(body)),
            ("orjson_us", lambda: orjson.loads(body)),
            ("msgspec_us", lambda: decode_list("pods", body)),
        ):
            t0 = time.perf_counter()
            decode()
            out[name] = (time.perf_counter() - t0) / len(items) * 1e6
    return out


async def _burst(api: Any, typha: TyphaProcess, events: list[Any]) -> tuple[int, float, float]:
    """Write `events` at once; (events, KV updates typha produced, typha CPU seconds until it was done)."""
    m0 = await typha.metrics()
    cpu0 = typha.cpu_seconds()
    apply_events(api.store, events)
    # typha is done when its updates counter stops moving.
    last, still = -1.0, 0
    while still < 4:
        await asyncio.sleep(0.25)
        cur = (await typha.metrics()).counters().updates
        still = still + 1 if cur == last else 0
        last = cur
    return len(events), last - m0.counters().updates, typha.cpu_seconds() - cpu0


async def run_ingest(nodes: int, pods_per_node: int, burst: int, console: Console | None = None) -> dict[str, Any]:
    console = console or err_console()
    dec = await decode_comparison()
    console.print(
        f"decoding a pod list ({dec['pod_bytes']:.0f} B per pod): generated models {dec['models_us']:.0f} us/pod, "
        f"json {dec['json_us']:.0f} us/pod, orjson {dec['orjson_us']:.0f} us/pod, "
        f"msgspec into the projected fields (typha) {dec['msgspec_us']:.1f} us/pod"
    )
    api = await start_apiserver(window_size=max(10_000, burst * 2))
    cluster = SyntheticCluster(nodes=nodes, pods_per_node=pods_per_node, seed=1)
    objects = seed(api.store, cluster)
    workdir = tempfile.TemporaryDirectory(prefix="pytypha-ingest-")
    kc = str(Path(workdir.name) / "kubeconfig")
    api.write_kubeconfig(kc)
    typha = TyphaProcess(
        ["--datastore", "kubernetes", "--kubeconfig", kc, "--log-level", "WARNING", "--k8s-page-size", "1000"]
    )
    out: dict[str, Any] = {"objects": objects, "decode": dec}
    try:
        t0 = time.monotonic()
        await typha.start(ready_timeout=600)
        out["initial_seconds"] = time.monotonic() - t0
        out["initial_typha_cpu"] = typha.cpu_seconds()
        out["initial_objects_per_cpu_second"] = objects / out["initial_typha_cpu"]
        console.print(
            f"initial list+project of {objects:,} objects: {out['initial_seconds']:.1f}s wall, {out['initial_typha_cpu']:.1f}s typha CPU"
        )
        for name, mix in (("burst", None), ("pod_burst", {"pod_label": 1.0, "pod_status": 1.0})):
            events = cluster.churn(burst, mix, count_events=True)
            n, kv_updates, cpu = await _burst(api, typha, events)
            out[f"{name}_events"] = n
            out[f"{name}_kv_updates"] = kv_updates
            out[f"{name}_typha_cpu"] = cpu
            out[f"{name}_events_per_cpu_second"] = n / cpu if cpu else 0.0
            what = "events (the default churn mix)" if mix is None else "pod events (labels and status)"
            console.print(
                f"burst of {n:,} {what}: {cpu:.2f}s typha CPU -> "
                f"{out[f'{name}_events_per_cpu_second']:,.0f} per CPU-second"
            )
        out["typha_rss"] = typha.rss_bytes()
    finally:
        await typha.stop()
        await api.stop()
        workdir.cleanup()
    return out
