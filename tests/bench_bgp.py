"""BGP benchmark: N real BIRDs in network namespaces, full mesh against two route reflectors.

    sudo .venv/bin/python -m tests.bench_bgp --nodes 20 [--blocks 5]

Per topology, on a fresh lab (tests/bgp_lab.py, no top-of-rack router): every node's configuration is
rendered by felix's renderer from the bgp syncer's view and applied by felix's BirdManager (the code
felix runs; the typha hop is left out, it is benchmarked by `loadtest bench`). Prints:

* sessions established, against N(N-1)/2 for the mesh and 2N-3 with two reflectors;
* cold start: from starting N BIRDs to every kernel holding every other node's block;
* a new block: from the owner's new render to the route in each other kernel (`ip monitor route`
  timestamps, median and slowest node), repeated --blocks times;
* BIRD's memory (RSS summed over the N daemons);
* configuration changes on every node at once -- a new BGPPeer, then a new IP pool (which changes
  the filters) -- counting pool routes deleted from any kernel and sessions restarted meanwhile.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable

from felix.bgp.bird import BirdManager

from . import bgp_fixtures as F
from .bgp_lab import NET, Lab, lab_unavailable


class RouteWatch:
    """`ip monitor route` in every node namespace; the first time each node sees a line matching."""

    def __init__(self, lab: Lab, nodes: list[int]) -> None:
        self.events: list[tuple[float, int, str]] = []
        self._lock = threading.Lock()
        self.procs = []
        for i in nodes:
            p = subprocess.Popen(
                ["ip", "-n", lab.node_ns(i), "monitor", "route"], stdout=subprocess.PIPE, text=True, bufsize=1
            )
            self.procs.append(p)
            threading.Thread(target=self._read, args=(i, p), daemon=True).start()
        time.sleep(0.3)  # the monitors are subscribed before anything changes

    def _read(self, i: int, p: subprocess.Popen[str]) -> None:
        assert p.stdout is not None
        for line in p.stdout:
            with self._lock:
                self.events.append((time.monotonic(), i, line.strip()))

    def first(self, match: Callable[[str], bool], since: float) -> dict[int, float]:
        out: dict[int, float] = {}
        with self._lock:
            for t, i, line in self.events:
                if t >= since and i not in out and match(line):
                    out[i] = t - since
        return out

    def count(self, match: Callable[[str], bool], since: float) -> int:
        with self._lock:
            return sum(1 for t, _, line in self.events if t >= since and match(line))

    def close(self) -> None:
        for p in self.procs:
            p.terminate()
            p.wait()


def rss_kb(pid: int | None) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
    except (OSError, StopIteration):
        return 0


class Bench:
    def __init__(self, n: int, topology: str) -> None:
        self.n, self.topology = n, topology
        self.nodes = list(range(1, n + 1))
        self.lab = Lab()
        self.objects: list[F.Obj] = []
        self.managers: dict[int, BirdManager] = {}

    def cluster(self) -> list[F.Obj]:
        if self.topology == "mesh":
            return F.nodes_and_blocks(self.n)
        rr = {"rr": "244.0.0.1", "labels": {"route-reflector": "true"}}
        return [
            *F.nodes_and_blocks(self.n, node1=rr, node2=rr),
            F.bgp_config(nodeToNodeMeshEnabled=False),
            F.bgp_peer("rrs", nodeSelector="all()", peerSelector="route-reflector == 'true'"),
        ]

    def config(self, i: int) -> str:
        return F.bird_config(self.objects, f"node{i}")

    async def apply_all(self, nodes: list[int] | None = None) -> None:
        oks = await asyncio.gather(*(self.managers[i].apply(self.config(i)) for i in nodes or self.nodes))
        assert all(oks), [m.last_error for m in self.managers.values() if m.last_error]

    async def sessions(self) -> tuple[int, dict[tuple[int, str], str]]:
        established, since = 0, {}
        for i, m in self.managers.items():
            for p in await m.protocols():
                if p.proto == "BGP":
                    since[(i, p.name)] = p.since
                    established += p.established
        return established // 2, since

    def kernels_complete(self) -> bool:
        for i in self.nodes:
            routes = self.lab.routes(self.lab.node_ns(i))
            if sum(f"198.19.{j}.0/26 via" in routes for j in self.nodes if j != i) != self.n - 1:
                return False
        return True

    async def run(self, blocks: int) -> dict[str, object]:
        self.lab.up(tor=False)
        for i in self.nodes:
            self.lab.add_node(i)
            self.managers[i] = BirdManager(self.lab.run_dir(i), netns=self.lab.node_ns(i))
        self.objects = self.cluster()
        res: dict[str, object] = {"topology": self.topology, "nodes": self.n}
        t0 = time.monotonic()
        await self.apply_all()
        while not self.kernels_complete():
            assert time.monotonic() - t0 < 120, "no convergence within 120 s"
            await asyncio.sleep(0.2)
        res["cold start s"] = round(time.monotonic() - t0, 2)
        await asyncio.sleep(3)  # let the last sessions settle
        sessions, since = await self.sessions()
        res["sessions"] = sessions
        res["expected"] = self.n * (self.n - 1) // 2 if self.topology == "mesh" else 2 * self.n - 3
        res["BIRD RSS MB"] = round(sum(rss_kb(m.pid) for m in self.managers.values()) / 1024, 1)

        watch = RouteWatch(self.lab, self.nodes)
        try:
            medians, slowest = [], []
            for b in range(blocks):
                owner = self.nodes[(b * 7 + 3) % self.n]
                cidr = f"198.19.{200 + b}.0/26"
                self.objects.append(F.affinity(f"node{owner}", cidr))
                t = time.monotonic()
                await self.apply_all([owner])
                while len(seen := watch.first(lambda line, c=cidr: line.startswith(c), t)) < self.n - 1:
                    assert time.monotonic() - t < 30, f"{cidr} reached only {sorted(seen)}"
                    await asyncio.sleep(0.01)
                medians.append(statistics.median(seen.values()) * 1000)
                slowest.append(max(seen.values()) * 1000)
            res["new block median ms"] = round(statistics.median(medians), 1)
            res["new block slowest node ms"] = round(max(slowest), 1)

            await asyncio.sleep(1.0)  # a quiet second: "since" is compared at one-second granularity
            t = time.monotonic()
            self.objects.append(F.bgp_peer("router", peerIP=f"{NET}.254", asNumber=65000))
            await self.apply_all()
            self.objects.append(F.pool("second", "10.250.0.0/16"))
            await self.apply_all()
            await asyncio.sleep(3)
            res["change: pool routes deleted"] = watch.count(lambda line: line.startswith("Deleted 198.19."), t)
            _, after = await self.sessions()
            # BIRD's "since" is wall-clock HH:MM:SS.mmm; a session restarted if it changed state after t.
            began = time.strftime("%H:%M:%S", time.localtime(time.time() - (time.monotonic() - t)))
            res["change: sessions restarted"] = sum(1 for k in since if (after.get(k) or "") >= began)
        finally:
            watch.close()
        return res

    async def close(self) -> None:
        for m in self.managers.values():
            await m.stop()
        self.lab.down()


async def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--nodes", type=int, default=20)
    ap.add_argument("--blocks", type=int, default=5, help="new blocks to time per topology")
    ap.add_argument("--topologies", default="mesh,reflectors")
    args = ap.parse_args(argv)
    if why := lab_unavailable():
        print(f"cannot run: {why}", file=sys.stderr)
        return 2
    rows = []
    for topology in args.topologies.split(","):
        bench = Bench(args.nodes, "mesh" if topology == "mesh" else "reflectors")
        try:
            rows.append(await bench.run(args.blocks))
        finally:
            await bench.close()
        print(rows[-1], flush=True)
    keys = list(rows[0])
    print("\n| " + " | ".join(keys) + " |\n|" + " --- |" * len(keys))
    for r in rows:
        print("| " + " | ".join(str(r[k]) for k in keys) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
