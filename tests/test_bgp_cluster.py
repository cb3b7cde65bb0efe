"""BGP end to end on a real kernel: typha, a felix process and a BIRD per node, a top-of-rack BIRD.

Per scenario: the kernel routes on every node (BIRD's are ``proto bird``), what the top-of-rack router
learned, and TCP and UDP between every pair of pods. Topology in tests/bgp_lab.py; typha listens in
the fabric namespace, so nothing of a run is in the root namespace.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import AsyncIterator
from typing import Any

import pytest

from felix.dataplane.netns import run_in_netns
from felix.dataplane.routes import RTPROT_FELIX
from loadtest.apiserver.fixtures import make_namespace, make_pod
from protocol import SyncStatus
from protocol.keys import SYNCER_BGP, SYNCER_FELIX
from typha.ingest import ADDED, DELETED, Ingestor
from typha.snapcache import SnapCache
from typha.syncserver import ServerConfig, SyncServer

from . import bgp_fixtures as F
from .bgp_lab import FABRIC_IP, NET, Echo, Lab, lab_unavailable, listen_in, since_seconds, tcp_ok, udp_ok
from .conftest import kernel_skip, wait_for

pytestmark = [pytest.mark.kernel, pytest.mark.slow]  # network namespaces, BIRD, typha and felix processes

PORT = 7000


class Cluster:
    def __init__(self, lab: Lab, server: SyncServer, ingestor: Ingestor) -> None:
        self.lab, self.server, self.ingestor = lab, server, ingestor
        self.felix: dict[int, subprocess.Popen[bytes]] = {}
        self.echo: dict[str, Echo] = {}
        self.objects: dict[tuple[str, str], F.Obj] = {}

    def apply(self, *objs: F.Obj, deleted: bool = False) -> None:
        events = []
        for resource, obj in objs:
            key = (resource, obj["metadata"]["name"])
            if deleted:
                self.objects.pop(key, None)
            else:
                self.objects[key] = (resource, obj)
            events.append((DELETED if deleted else ADDED, resource, obj))
        self.ingestor.handle(events)

    def add_node(self, i: int, **node_kw: Any) -> None:
        self.lab.add_node(i)
        self.apply(
            F.node(f"node{i}", f"{NET}.{i}", **node_kw),
            F.affinity(f"node{i}", f"198.19.{i}.0/26"),
            F.block(f"198.19.{i}.0/26", f"node{i}"),
        )
        self.add_pod(f"p{i}", i, f"198.19.{i}.2")
        self.start_felix(i)

    def add_pod(self, name: str, i: int, ip: str) -> None:
        ns = self.lab.add_pod(name, i, ip)
        self.echo[name] = Echo(ns, PORT)
        self.apply(("pods", make_pod("default", name, f"node{i}", ip)))

    def start_felix(self, i: int) -> None:
        env = {
            **os.environ,
            "FELIX_NODENAME": f"node{i}",
            "FELIX_TYPHA_ADDRESSES": f"{FABRIC_IP}:{self.server.port}",
            "FELIX_HEALTH_PORT": "9099",
            "FELIX_METRICS_PORT": "0",
            "FELIX_NETWORKING_BACKEND": "bird",
            "FELIX_BIRD_RUN_DIR": self.lab.run_dir(i),
            "FELIX_BGP_STATUS_INTERVAL": "0.5",
            "FELIX_LOG_LEVEL": "INFO",
        }
        log = open(os.path.join(self.lab.dir, f"felix{i}.log"), "wb")  # noqa: SIM115 (closed with the lab)
        self.felix[i] = subprocess.Popen(
            ["ip", "netns", "exec", self.lab.node_ns(i), sys.executable, "-m", "felix"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )

    def stop_felix(self, i: int) -> None:
        proc = self.felix.pop(i)
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def remove_node(self, i: int) -> None:
        for name in [p for p, (n, _, _) in self.lab.pods.items() if n == i]:
            self.echo.pop(name).close()
            _, ip, _ = self.lab.pods[name]
            self.apply(("pods", make_pod("default", name, f"node{i}", ip)), deleted=True)
        self.apply(
            F.node(f"node{i}", f"{NET}.{i}"),
            F.affinity(f"node{i}", f"198.19.{i}.0/26"),
            F.block(f"198.19.{i}.0/26", f"node{i}"),
            deleted=True,
        )
        self.stop_felix(i)
        self.lab.remove_node(i)

    def status(self, i: int) -> dict[str, Any]:
        def get() -> dict[str, Any]:
            with urllib.request.urlopen("http://127.0.0.1:9099/status", timeout=2) as r:
                return json.loads(r.read())

        try:
            return run_in_netns(self.lab.node_ns(i), get)
        except OSError:
            return {}

    def peers(self, i: int) -> dict[str, str]:
        return {p["name"]: p["state"] for p in self.status(i).get("bgp", {}).get("peers", [])}

    def bird_routes(self, i: int) -> str:
        return self.lab.routes(self.lab.node_ns(i))

    def felix_routes(self, i: int) -> str:
        return self.lab.routes(self.lab.node_ns(i), str(RTPROT_FELIX))

    def logs(self) -> str:
        out = []
        for i in sorted(self.felix):
            with open(os.path.join(self.lab.dir, f"felix{i}.log"), errors="replace") as f:
                out.append(f"--- felix{i} ---\n" + f.read()[-4000:])
        return "\n".join(out)

    async def converge(self, expect: dict[int, list[str]], timeout: float = 30) -> None:
        """Wait until node i's kernel has every ``route`` in ``expect[i]`` (substring of `ip route`)."""
        for i, wanted in expect.items():
            for route in wanted:
                try:
                    await wait_for(lambda i=i, r=route: r in self.bird_routes(i), timeout, f"node{i}: {route}")
                except AssertionError:
                    raise AssertionError(
                        f"node{i} lacks {route!r}:\n{self.bird_routes(i)}\n{self.status(i)}\n{self.logs()}"
                    ) from None

    async def all_pairs_talk(self, timeout: float = 15) -> None:
        loop = asyncio.get_running_loop()
        pods = dict(self.lab.pods)
        for src, (_, _, src_ns) in pods.items():
            for dst, (_, ip, _) in pods.items():
                if src == dst:
                    continue
                for proto, check in (("tcp", tcp_ok), ("udp", udp_ok)):
                    deadline = loop.time() + timeout
                    while not await loop.run_in_executor(None, check, src_ns, ip, PORT, 0.5):
                        assert loop.time() < deadline, f"{src} cannot reach {dst} ({ip}) over {proto}"
                        await asyncio.sleep(0.1)


@pytest.fixture
async def cluster() -> AsyncIterator[Cluster]:
    if why := lab_unavailable():
        kernel_skip(why)
    lab = Lab()
    lab.up()
    caches = {SYNCER_FELIX: SnapCache(SYNCER_FELIX), SYNCER_BGP: SnapCache(SYNCER_BGP)}
    server = SyncServer(caches, ServerConfig(host=FABRIC_IP, port=0))
    with listen_in(lab.fabric):
        await server.start()
    c = Cluster(lab, server, Ingestor(caches))
    c.apply(("namespaces", make_namespace("default")), F.pool("default", F.POOL, ipipMode="Never", vxlanMode="Never"))
    for cache in caches.values():
        cache.set_status(SyncStatus.IN_SYNC)
    try:
        yield c
    finally:
        for i in list(c.felix):
            c.stop_felix(i)
        for e in c.echo.values():
            e.close()
        await server.shutdown()
        lab.down()


def own_blocks(nodes: list[int]) -> dict[int, list[str]]:
    """Every node learns every other node's block, via that node."""
    return {i: [f"198.19.{j}.0/26 via {NET}.{j}" for j in nodes if j != i] for i in nodes}


def tor_learned(c: Cluster, nodes: list[int]) -> list[str]:
    return [
        f"198.19.{j}.0/26 via {NET}.{j}" for j in nodes if f"198.19.{j}.0/26 via {NET}.{j}" not in c.lab.tor_routes()
    ]


async def start(c: Cluster, nodes: list[int], extra: list[F.Obj] | None = None, **node_kw: Any) -> None:
    c.apply(*(extra or []))
    for i in nodes:
        c.add_node(i, **node_kw.get(f"node{i}", {}))


async def test_full_mesh(cluster: Cluster) -> None:
    await start(cluster, [1, 2, 3], [F.tor_peer()])
    await cluster.converge(own_blocks([1, 2, 3]))
    for i in (1, 2, 3):
        mine = cluster.felix_routes(i)
        assert f"blackhole 198.19.{i}.0/26" in mine, "the own block's blackhole stays felix's"
        assert not [j for j in (1, 2, 3) if j != i and f"198.19.{j}.0/26" in mine], "remote blocks: BIRD's only"
    await wait_for(lambda: not tor_learned(cluster, [1, 2, 3]), 20, "the top-of-rack router to learn every block")
    await wait_for(
        lambda: (
            cluster.peers(1)
            == {
                "Global_198_18_9_254": "Established",
                "Mesh_198_18_9_2": "Established",
                "Mesh_198_18_9_3": "Established",
            }
        ),
        20,
        "node1's /status to list its three peers established",
    )
    await cluster.all_pairs_talk()
    fabric_reaches_pod = await asyncio.get_running_loop().run_in_executor(
        None, tcp_ok, cluster.lab.fabric, "198.19.2.2", PORT
    )
    assert fabric_reaches_pod, "the fabric routes to pods by what BGP taught it"


async def test_route_reflector(cluster: Cluster) -> None:
    rr = {"rr": "244.0.0.1", "labels": {"route-reflector": "true"}}
    extra = [
        F.bgp_config(nodeToNodeMeshEnabled=False),
        F.bgp_peer("peer-with-route-reflectors", nodeSelector="all()", peerSelector="route-reflector == 'true'"),
        F.tor_peer(),
    ]
    await start(cluster, [1, 2, 3], extra, node1=rr)
    await cluster.converge(own_blocks([1, 2, 3]))  # reflected routes keep the owner as next hop
    await wait_for(lambda: set(cluster.peers(2)) == {"Node_198_18_9_1", "Global_198_18_9_254"}, 20, "client peers")
    assert set(cluster.peers(1)) == {"Node_198_18_9_2", "Node_198_18_9_3", "Global_198_18_9_254"}
    await wait_for(lambda: not tor_learned(cluster, [1, 2, 3]), 20, "the top-of-rack router to learn every block")
    await cluster.all_pairs_talk()


async def test_mesh_disabled_with_only_the_external_peer(cluster: Cluster) -> None:
    per_node = {f"node{i}": {"asn": 64600 + i} for i in (1, 2, 3)}
    await start(cluster, [1, 2, 3], [F.bgp_config(nodeToNodeMeshEnabled=False), F.tor_peer()], **per_node)
    await wait_for(lambda: not tor_learned(cluster, [1, 2, 3]), 30, "the top-of-rack router to learn every block")
    # Nodes learn each other's blocks from the top-of-rack router only (third-party next hop).
    await cluster.converge({i: [f"198.19.{j}.0/26 via" for j in (1, 2, 3) if j != i] for i in (1, 2, 3)})
    assert set(cluster.peers(3)) == {"Global_198_18_9_254"}
    await cluster.all_pairs_talk()


async def test_borrowed_address(cluster: Cluster) -> None:
    await start(cluster, [1, 2, 3], [F.tor_peer()])
    cluster.add_pod("borrower", 3, "198.19.1.40")  # node3 borrows from node1's block (seed 000)
    cluster.apply(F.block("198.19.1.0/26", "node1", {40: "node3"}))
    await cluster.converge({1: [f"198.19.1.40 via {NET}.3"], 2: [f"198.19.1.40 via {NET}.3"]})
    await wait_for(lambda: f"198.19.1.40 via {NET}.3" in cluster.lab.tor_routes(), 20, "the ToR to learn the /32")
    assert "198.19.1.40" not in cluster.felix_routes(1), "the /32 to node3 is BIRD's, not felix's"
    await cluster.all_pairs_talk()


async def test_node_added_and_removed(cluster: Cluster) -> None:
    await start(cluster, [1, 2], [F.tor_peer()])
    await cluster.converge(own_blocks([1, 2]))
    cluster.add_node(3)
    await cluster.converge(own_blocks([1, 2, 3]))
    await cluster.all_pairs_talk()
    cluster.remove_node(3)
    for i in (1, 2):
        await wait_for(
            lambda i=i: "198.19.3.0/26" not in cluster.bird_routes(i), 20, f"node{i} to forget node3's block"
        )
        await wait_for(lambda i=i: "Mesh_198_18_9_3" not in cluster.peers(i), 10, f"node{i} to drop the session")
    await wait_for(lambda: "198.19.3.0/26" not in cluster.lab.tor_routes(), 20, "the ToR to forget node3's block")
    await cluster.all_pairs_talk()


async def test_bgp_peer_added_while_traffic_flows(cluster: Cluster) -> None:
    await start(cluster, [1, 2, 3])
    await cluster.converge(own_blocks([1, 2, 3]))
    await cluster.all_pairs_talk()
    for i in (1, 2, 3):
        await wait_for(lambda i=i: set(cluster.peers(i).values()) == {"Established"}, 20, f"node{i}'s sessions up")
    sessions = {i: {p["name"]: p["since"] for p in cluster.status(i)["bgp"]["peers"]} for i in (1, 2, 3)}
    failures: list[str] = []
    stop = threading.Event()

    def traffic() -> None:
        pods = list(cluster.lab.pods.items())
        while not stop.is_set():
            for src, (_, _, ns) in pods:
                for dst, (_, ip, _) in pods:
                    if src != dst and not tcp_ok(ns, ip, PORT, 1.0):
                        failures.append(f"{time.monotonic():.2f} {src}->{dst}")

    t = threading.Thread(target=traffic, daemon=True)
    t.start()
    try:
        cluster.apply(F.tor_peer())
        await wait_for(lambda: not tor_learned(cluster, [1, 2, 3]), 30, "the new peer to learn every block")
        await asyncio.sleep(1)
    finally:
        stop.set()
        t.join(10)
    assert not failures, f"pod traffic failed while a peer was added: {failures[:5]}"
    for i in (1, 2, 3):  # the existing sessions were not restarted by the new peer
        now = {p["name"]: p["since"] for p in cluster.status(i)["bgp"]["peers"]}
        # BIRD prints "since" converted from its monotonic clock: it jitters by a millisecond.
        moved = {k: (v, now[k]) for k, v in sessions[i].items() if abs(since_seconds(now[k]) - since_seconds(v)) > 0.1}
        assert not moved, f"node{i}: sessions restarted: {moved}"
        assert "Global_198_18_9_254" in now
