"""Baseline agents that watch the API server directly, as every Felix would without typha.

Each simulated agent lists and then watches every resource the felix syncer needs, over HTTPS with
its own connections, exactly the load pattern typha exists to remove. They run in worker processes
(spawned, like the typha agents) and report what they received, so the load test can put the API
server's cost in both modes side by side. Agents resume from the last resourceVersion and relist on
410, as a well-behaved informer does.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any

import aiohttp
import orjson

from loadtest.support.histogram import merge_arrivals

from .workers import WorkerFleet


@dataclass(slots=True)
class DirectSpec:
    url: str
    token: str
    ca_pem: str
    paths: list[str]  # collection paths, e.g. /api/v1/pods
    agents: int
    processes: int = 2
    connect_spread: float = 2.0
    report_interval: float = 0.5


@dataclass(slots=True)
class DirectReport:
    worker: int
    agents: int = 0
    listed: int = 0  # agents that finished their initial lists
    watches_open: int = 0
    events: int = 0
    bytes: int = 0
    relists: int = 0
    errors: int = 0
    rv_last_arrival: dict[int, int] = field(
        default_factory=dict
    )  # resourceVersion -> latest receipt (ns), since last report
    final: bool = False


async def _agent(
    spec: DirectSpec, session: aiohttp.ClientSession, ctx: ssl.SSLContext, rep: DirectReport, stop: asyncio.Event
) -> None:
    headers = {"Authorization": f"Bearer {spec.token}", "Accept": "application/json"}
    versions: dict[str, str] = {}

    async def list_all(path: str) -> str:
        """A full paginated list, as an informer does; only the bytes are kept, not the objects."""
        cont = ""
        while True:
            params = {"limit": "500", **({"continue": cont} if cont else {})}
            async with session.get(spec.url + path, headers=headers, ssl=ctx, params=params) as r:
                body = await r.read()
            rep.bytes += len(body)
            md = orjson.loads(body)["metadata"]
            cont = md.get("continue") or ""
            if not cont:
                return md["resourceVersion"]

    for path in spec.paths:
        versions[path] = await list_all(path)
    rep.listed += 1

    async def follow(path: str) -> None:
        while not stop.is_set():
            params = {
                "watch": "1",
                "resourceVersion": versions[path],
                "allowWatchBookmarks": "true",
                "timeoutSeconds": "300",
            }
            try:
                async with session.get(
                    spec.url + path, headers=headers, ssl=ctx, params=params, timeout=aiohttp.ClientTimeout(total=None)
                ) as r:
                    rep.watches_open += 1
                    try:
                        async for line in r.content:
                            rep.bytes += len(line)
                            ev = orjson.loads(line)
                            rv = ev["object"].get("metadata", {}).get("resourceVersion")
                            if ev.get("type") == "ERROR":
                                rep.relists += 1
                                versions[path] = await list_all(path)
                                break
                            if rv:
                                versions[path] = rv
                            if ev.get("type") != "BOOKMARK":
                                rep.events += 1
                                if rv:
                                    now = time.time_ns()
                                    if rep.rv_last_arrival.get(int(rv), 0) < now:
                                        rep.rv_last_arrival[int(rv)] = now
                    finally:
                        rep.watches_open -= 1
            except (TimeoutError, aiohttp.ClientError, ValueError):
                rep.errors += 1
                await asyncio.sleep(0.5)

    await asyncio.gather(*(follow(p) for p in spec.paths))


def _worker_main(spec: DirectSpec, worker: int, count: int, conn: Connection) -> None:
    import uvloop

    uvloop.run(_worker(spec, worker, count, conn))


async def _worker(spec: DirectSpec, worker: int, count: int, conn: Connection) -> None:
    rep = DirectReport(worker, agents=count)
    ctx = ssl.create_default_context(cadata=spec.ca_pem)  # PEM text
    stop = asyncio.Event()
    connector = aiohttp.TCPConnector(limit=0)
    tasks = []
    async with aiohttp.ClientSession(connector=connector) as session:
        for _ in range(count):
            tasks.append(asyncio.create_task(_agent(spec, session, ctx, rep, stop)))
            await asyncio.sleep(spec.connect_spread / max(1, count))
        while True:
            while conn.poll():
                msg = conn.recv()
                if msg == "stop":
                    stop.set()
                    for t in tasks:
                        t.cancel()
                    await asyncio.gather(*tasks, return_exceptions=True)
                    rep.final = True
                    conn.send(rep)
                    return
            conn.send(rep)
            rep.rv_last_arrival = {}
            await asyncio.sleep(spec.report_interval)


class DirectFleet(WorkerFleet[DirectReport]):
    name = "direct"

    def __init__(self, spec: DirectSpec) -> None:
        super().__init__(spec.processes, spec.agents)
        self.spec = spec
        self.rv_last_arrival: dict[int, int] = {}

    def worker_target(self) -> Callable[..., None]:
        return _worker_main

    def worker_args(self, worker: int, agent_ids: list[int]) -> tuple[Any, ...]:
        return (self.spec, worker, len(agent_ids))

    def absorb(self, rep: DirectReport) -> None:
        self.reports[rep.worker] = rep
        merge_arrivals(self.rv_last_arrival, rep.rv_last_arrival)
