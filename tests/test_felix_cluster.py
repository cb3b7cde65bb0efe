"""Three 'nodes' on a real kernel, a real typha, a real felix process per node: pods reach each other.

Topology (every name prefixed, every namespace ours and removed afterwards):
  root ns:  bridge pt<tag>br 198.18.<n>.254/24; typha listens there
  node i:   netns pt<tag>-node<i>, eth0 198.18.<n>.<i>/24 on the bridge, default route via .254 (so proxy ARP
            answers for the pods' gateway), forwarding on; felix runs inside it
  pod:      netns pt-n<i>-<name>, eth0 = peer of cali<hash> in the node, <ip>/32,
            default via 169.254.1.1 (the fictitious gateway felix makes work with proxy ARP)
Addresses come from the benchmarking ranges 198.18.0.0/15 (RFC 2544): lab-only, never routed. The
underlay /24 (<n>) is drawn at random per cluster, because the bridge lives in the root namespace:
two test runs at once on one machine must not put the same subnet on two bridges.
Pool 198.19.0.0/16 with /26 blocks, native routing; one test switches it to VXLAN, where felix makes
vxlan.calico itself from each Node's annotations (this kernel has vxlan but no ipip).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import urllib.request
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest

from felix.dataplane.netlink import RTPROT_FELIX
from felix.dataplane.netns import run_in_netns
from loadtest.apiserver import Store, start_apiserver
from loadtest.apiserver.fixtures import make_calico_object, make_namespace, make_node, make_pod
from loadtest.support.cluster import apply_events
from protocol import SYNCER_FELIX, SyncStatus
from typha.ingest import ADDED, DELETED, MODIFIED, Ingestor
from typha.snapcache import SnapCache
from typha.syncserver import ServerConfig, SyncServer

from .conftest import kernel_skip, wait_for
from .support.netlab import add_pod_netns, sh, workload_iface

pytestmark = [pytest.mark.kernel, pytest.mark.slow]  # network namespaces, felix processes

POOL = "198.19.0.0/16"


def block_of(ip: str) -> str:
    a, b, c, d = (int(x) for x in ip.split("."))
    return f"{a}.{b}.{c}.{d & ~63}/26"


@dataclass
class Cluster:
    tag: str
    subnet: int  # the underlay is 198.18.<subnet>.0/24
    ingestor: Ingestor
    server: SyncServer | None  # in-process typha, or None with a typha process (via_api)
    nodes: list[str] = field(default_factory=list)
    pods: dict[str, tuple[str, str, str]] = field(default_factory=dict)  # name -> (node, ip, pod netns)
    felix: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    logdir: str = ""  # felix's stderr per node; printed at teardown (pytest shows it if the test fails)
    pod_meta: dict[str, tuple[str, tuple[dict, ...]]] = field(default_factory=dict)  # name -> (namespace, ports)
    store: Store | None = None  # via_api: objects are written to the API emulator, which typha watches
    typha_port: int = 0

    def ip(self, host: int) -> str:
        """An underlay address: node i is .i, the bridge (and typha) .254."""
        return f"198.18.{self.subnet}.{host}"

    def node_ns(self, node: str) -> str:
        return f"pt{self.tag}-{node}"

    def pod_ns(self, pod: str) -> str:
        return f"pt{self.tag}-p-{pod}"

    def apply(self, *events: tuple[str, str, dict]) -> None:
        if self.store is not None:
            apply_events(self.store, events)
        else:
            self.ingestor.handle(events)

    def mark_in_sync(self) -> None:
        """The in-process typha's datastore is in sync (a typha process gets there by itself)."""
        if self.store is None:
            self.ingestor.caches[SYNCER_FELIX].set_status(SyncStatus.IN_SYNC)

    def add_node(self, index: int, vxlan: bool = False) -> str:
        node = f"node{index}"
        ns = self.node_ns(node)
        ip = self.ip(index)
        host_if = f"pt{self.tag}n{index}"
        sh("ip", "netns", "add", ns)
        sh("ip", "link", "add", host_if, "type", "veth", "peer", "name", "eth0", "netns", ns)
        sh("ip", "link", "set", host_if, "master", f"pt{self.tag}br", "up")
        for cmd in (
            ["ip", "addr", "add", f"{ip}/24", "dev", "eth0"],
            ["ip", "link", "set", "eth0", "up"],
            ["ip", "link", "set", "lo", "up"],
            ["ip", "route", "add", "default", "via", self.ip(254)],
            ["sysctl", "-qw", "net.ipv4.ip_forward=1"],
        ):
            sh("ip", "netns", "exec", ns, *cmd)
        self.nodes.append(node)
        obj = make_node(node, ip)
        if vxlan:  # a VTEP address from the node's block, and a MAC, as Calico's IPAM would annotate
            obj["metadata"]["annotations"].update(
                {
                    "projectcalico.org/IPv4VXLANTunnelAddr": f"198.19.{index}.1",
                    "projectcalico.org/VXLANTunnelMACAddr": f"66:00:00:00:00:{index:02x}",
                }
            )
        self.apply((ADDED, "nodes", obj))
        return node

    def add_block(self, node: str, cidr: str) -> None:
        name = cidr.replace("/", "-")
        self.apply(
            (
                ADDED,
                "blockaffinities",
                make_calico_object(
                    "BlockAffinity",
                    f"{node}-{name}",
                    {"node": node, "cidr": cidr, "state": "confirmed", "deleted": "false"},
                ),
            ),
            (ADDED, "ipamblocks", self._block(cidr, node, {})),
        )

    @staticmethod
    def _block(cidr: str, owner: str, borrowed: dict[int, str]) -> dict:
        allocations: list[int | None] = [None] * 64
        attributes = []
        for ordinal, node in borrowed.items():
            allocations[ordinal] = len(attributes)
            attributes.append({"handle_id": f"h-{ordinal}", "secondary": {"node": node}})
        spec = {
            "cidr": cidr,
            "affinity": f"host:{owner}",
            "allocations": allocations,
            "attributes": attributes,
            "unallocated": [],
        }
        return make_calico_object("IPAMBlock", cidr.replace("/", "-"), spec)

    def borrow(self, cidr: str, owner: str, ip: str, node: str) -> None:
        ordinal = int(ip.split(".")[3]) & 63
        self.apply((ADDED, "ipamblocks", self._block(cidr, owner, {ordinal: node})))

    def add_pod(
        self,
        name: str,
        node: str,
        ip: str,
        namespace: str = "default",
        labels: dict[str, str] | None = None,
        ports: tuple[dict, ...] = (),
    ) -> None:
        """A pod netns wired to the node; ``ports`` are container ports (named ports for policy)."""
        pod_ns = self.pod_ns(name)
        add_pod_netns(self.node_ns(node), pod_ns, workload_iface(namespace, name), ip)
        self.pods[name] = (node, ip, pod_ns)
        self.pod_meta[name] = (namespace, ports)
        self.apply((ADDED, "pods", self.pod_object(name, labels)))

    def pod_object(self, name: str, labels: dict[str, str] | None = None) -> dict:
        node, ip, _ = self.pods[name]
        namespace, ports = self.pod_meta.get(name, ("default", ()))
        pod = make_pod(namespace, name, node, ip, labels)
        pod["spec"]["containers"][0]["ports"] = list(ports)
        return pod

    def remove_pod(self, name: str) -> None:
        pod = self.pod_object(name)
        _, _, pod_ns = self.pods.pop(name)
        self.pod_meta.pop(name, None)
        self.apply((DELETED, "pods", pod))
        sh("ip", "netns", "del", pod_ns, check=False)  # takes the veth pair with it

    def start_felix(self, node: str) -> None:
        env = {
            **os.environ,
            "FELIX_NODENAME": node,
            "FELIX_TYPHA_ADDRESSES": f"{self.ip(254)}:{self.typha_port}",
            "FELIX_HEALTH_PORT": "0",
            "FELIX_METRICS_PORT": "0",
            "FELIX_ROUTE_REFRESH_INTERVAL": "1",
            "FELIX_LOG_LEVEL": "INFO",
        }
        with open(os.path.join(self.logdir, f"{node}.log"), "ab") as log:
            self.felix[node] = subprocess.Popen(
                ["ip", "netns", "exec", self.node_ns(node), sys.executable, "-m", "felix"],
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=log,
            )

    def routes(self, node: str) -> str:
        return sh("ip", "netns", "exec", self.node_ns(node), "ip", "route", "show", "proto", str(RTPROT_FELIX)).stdout

    def set_pool(self, vxlan: str) -> None:
        spec = {"cidr": POOL, "ipipMode": "Never", "vxlanMode": vxlan, "blockSize": 26}
        self.apply((MODIFIED, "ippools", make_calico_object("IPPool", "default-pool", spec)))

    def link(self, node: str, dev: str) -> dict:
        out = sh("ip", "-n", self.node_ns(node), "-d", "-j", "link", "show", "dev", dev, check=False)
        return json.loads(out.stdout)[0] if out.returncode == 0 else {}


def can_connect(src_ns: str, dst_ip: str, port: int, timeout: float = 1.0) -> bool:
    def attempt() -> bool:
        s = socket.socket()
        s.settimeout(timeout)
        try:
            s.connect((dst_ip, port))
            return True
        except OSError:
            return False
        finally:
            s.close()

    return run_in_netns(src_ns, attempt)


def listen(ns: str, port: int) -> socket.socket:
    def make() -> socket.socket:
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("0.0.0.0", port))
        s.listen(16)
        return s

    return run_in_netns(ns, make)


async def eventually_connects(src_ns: str, ip: str, port: int, timeout: float = 15.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        if await loop.run_in_executor(None, can_connect, src_ns, ip, port, 0.5):
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"{src_ns} could not reach {ip}:{port} within {timeout}s")


def free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def start_typha_process(c: Cluster, kubeconfig: str, host: str) -> tuple[subprocess.Popen[bytes], int]:
    """`python -m typha --datastore kubernetes` against the emulator, serving on the bridge."""
    health = free_port("127.0.0.1")
    c.typha_port = free_port(host)
    env = {
        **os.environ,
        "TYPHA_DATASTORE": "kubernetes",
        "TYPHA_KUBECONFIG": kubeconfig,
        "TYPHA_LISTEN_HOST": host,
        "TYPHA_PORT": str(c.typha_port),
        "TYPHA_HEALTH_HOST": "127.0.0.1",
        "TYPHA_HEALTH_PORT": str(health),
        "TYPHA_METRICS_PORT": "0",
        "TYPHA_SHUTDOWN_TIMEOUT": "1",  # a test cluster: no agents to spread over minutes
    }
    with open(os.path.join(c.logdir, "typha.log"), "ab") as log:
        proc = subprocess.Popen([sys.executable, "-m", "typha"], env=env, stdout=subprocess.DEVNULL, stderr=log)
    return proc, health


def typha_ready(health: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{health}/readiness", timeout=1) as r:
            return bool(r.status == 200)
    except OSError:
        return False


@contextlib.asynccontextmanager
async def running_cluster(via_api: bool = False) -> AsyncIterator[Cluster]:
    """A bridge, a typha on it, the default namespace and pool; everything removed afterwards.

    ``via_api``: the whole path of production -- objects are written to the API-server emulator
    (HTTPS), a real `typha --datastore kubernetes` process watches it and serves the nodes' felix.
    Otherwise an in-process typha is fed directly (faster to start)."""
    if os.geteuid() != 0:
        kernel_skip("needs root for network namespaces")
    if shutil.which("ip") is None or sh("ip", "netns", "list", check=False).returncode != 0:
        kernel_skip("iproute2 with netns support is not available")
    tag = uuid.uuid4().hex[:4]
    bridge = f"pt{tag}br"
    sh("ip", "link", "add", bridge, "type", "bridge")
    subnet = random.randrange(1, 250)
    bridge_ip = f"198.18.{subnet}.254"
    sh("ip", "addr", "add", f"{bridge_ip}/24", "dev", bridge)
    sh("ip", "link", "set", bridge, "up")
    cache = SnapCache(SYNCER_FELIX)
    ingestor = Ingestor({SYNCER_FELIX: cache})
    logs = tempfile.TemporaryDirectory(prefix="pytypha-cluster-")
    server: SyncServer | None = None
    api = typha = None
    if via_api:
        api = await start_apiserver(bookmark_interval=1.0)
        kubeconfig = os.path.join(logs.name, "kubeconfig")
        api.write_kubeconfig(kubeconfig)
        c = Cluster(tag, subnet, ingestor, None, logdir=logs.name, store=api.store)
    else:
        server = SyncServer({SYNCER_FELIX: cache}, ServerConfig(host=bridge_ip, port=0))
        await server.start()
        c = Cluster(tag, subnet, ingestor, server, logdir=logs.name, typha_port=server.port)
    c.apply(
        (ADDED, "namespaces", make_namespace("default")),
        (ADDED, "ippools", pool_object(nat_outgoing=False)),
    )
    try:
        if api is not None:
            typha, health = start_typha_process(c, kubeconfig, bridge_ip)
            await wait_for(lambda: typha_ready(health), 30, "typha in sync with the API emulator")
        yield c
    finally:
        for proc in [*c.felix.values(), *([typha] if typha else [])]:
            proc.terminate()
        for proc in [*c.felix.values(), *([typha] if typha else [])]:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
        for name in [*c.felix, *(["typha"] if typha else [])]:
            with open(os.path.join(logs.name, f"{name}.log"), errors="replace") as f:
                print(f"--- {name} ---\n{f.read()[-4000:]}")
        logs.cleanup()
        if server is not None:
            await server.shutdown()
        if api is not None:
            await api.stop()
        for line in sh("ip", "netns", "list").stdout.splitlines():
            name = line.split()[0]
            if name.startswith(f"pt{tag}-"):
                sh("ip", "netns", "del", name, check=False)
        sh("ip", "link", "del", bridge, check=False)


def pool_object(nat_outgoing: bool) -> dict:
    spec = {"cidr": POOL, "ipipMode": "Never", "vxlanMode": "Never", "blockSize": 26, "natOutgoing": nat_outgoing}
    return make_calico_object("IPPool", "default-pool", spec)


@pytest.fixture
async def cluster() -> AsyncIterator[Cluster]:
    async with running_cluster() as c:
        yield c


async def three_nodes(c: Cluster, vxlan: bool = False) -> None:
    for i in (1, 2, 3):
        node = c.add_node(i, vxlan=vxlan)
        c.add_block(node, f"198.19.{i}.0/26")
    c.add_pod("a1", "node1", "198.19.1.2")
    c.add_pod("b2", "node2", "198.19.2.2")
    c.add_pod("c3", "node3", "198.19.3.2")
    c.mark_in_sync()
    for node in c.nodes:
        c.start_felix(node)
    for node in c.nodes:
        await wait_for(lambda n=node: "198.19." in c.routes(n), 20, f"felix on {node} to program routes")


async def all_pods_connect(cluster: Cluster, port: int) -> None:
    servers = {name: listen(ns, port) for name, (_, _, ns) in cluster.pods.items()}
    try:
        for src, (_, _, src_ns) in cluster.pods.items():
            for dst, (_, ip, _) in cluster.pods.items():
                if src != dst:
                    await eventually_connects(src_ns, ip, port)
    finally:
        for s in servers.values():
            s.close()


async def test_pods_on_different_nodes_reach_each_other(cluster: Cluster) -> None:
    await three_nodes(cluster)
    routes = cluster.routes("node1")
    assert "blackhole 198.19.1.0/26" in routes
    assert "198.19.1.2 dev " + workload_iface("default", "a1") + " scope link" in routes
    assert f"198.19.2.0/26 via {cluster.ip(2)} dev eth0" in routes
    await all_pods_connect(cluster, 8080)


async def test_vxlan_pool_felix_makes_vxlan_calico_and_pods_reach_each_other(cluster: Cluster) -> None:
    cluster.set_pool(vxlan="Always")
    await three_nodes(cluster, vxlan=True)
    for i, node in enumerate(cluster.nodes, 1):
        await wait_for(lambda n=node: "dev vxlan.calico" in cluster.routes(n), 15, f"VXLAN routes on {node}")
        dev = cluster.link(node, "vxlan.calico")
        info = dev["linkinfo"]["info_data"]
        assert (dev["mtu"], dev["address"]) == (1450, f"66:00:00:00:00:{i:02x}")
        assert (info["id"], info["port"], info["local"], info["learning"]) == (4096, 4789, cluster.ip(i), False)
    assert "198.19.2.0/26 via 198.19.2.1 dev vxlan.calico onlink" in cluster.routes("node1")
    await all_pods_connect(cluster, 8081)
    # No pool uses VXLAN any more: native routes again, and felix removes the device it made.
    cluster.set_pool(vxlan="Never")
    for i, node in enumerate(cluster.nodes, 1):
        await wait_for(lambda n=node: cluster.link(n, "vxlan.calico") == {}, 15, f"vxlan.calico removed on {node}")
        # Routes are moved off the device (replaced in place) before it is deleted: when it has
        # gone, the native routes are already there.
        routes = cluster.routes(node)
        other = 2 if i == 1 else 1
        assert f"198.19.{other}.0/26 via {cluster.ip(other)} dev eth0" in routes, routes
    await all_pods_connect(cluster, 8082)


async def test_borrowed_address_is_reachable_from_every_node(cluster: Cluster) -> None:
    await three_nodes(cluster)
    # node3 borrows an address from node1's block (seed 000): node1's blackhole must not eat it.
    cluster.add_pod("borrower", "node3", "198.19.1.40")
    cluster.borrow("198.19.1.0/26", "node1", "198.19.1.40", "node3")
    await wait_for(
        lambda: f"198.19.1.40 via {cluster.ip(3)}" in cluster.routes("node1"), 15, "borrowed /32 on the block owner"
    )
    srv = listen(cluster.pod_ns("borrower"), 9090)
    try:
        for src in ("a1", "b2", "c3"):
            await eventually_connects(cluster.pod_ns(src), "198.19.1.40", 9090)
    finally:
        srv.close()


async def test_drift_repaired_and_foreign_routes_left_alone(cluster: Cluster) -> None:
    await three_nodes(cluster)
    ns = cluster.node_ns("node1")
    sh("ip", "netns", "exec", ns, "ip", "route", "add", "203.0.113.0/24", "via", cluster.ip(254), "proto", "static")
    sh("ip", "netns", "exec", ns, "ip", "route", "del", "198.19.2.0/26")
    await wait_for(
        lambda: f"198.19.2.0/26 via {cluster.ip(2)}" in cluster.routes("node1"), 10, "deleted route repaired by resync"
    )
    assert "203.0.113.0/24" in sh("ip", "netns", "exec", ns, "ip", "route", "show", "proto", "static").stdout
    srv = listen(cluster.pod_ns("b2"), 7070)
    try:
        await eventually_connects(cluster.pod_ns("a1"), "198.19.2.2", 7070)
    finally:
        srv.close()


async def test_moving_a_pod_moves_its_route(cluster: Cluster) -> None:
    await three_nodes(cluster)
    # The pod's address moves from node2 to node1 (same IP, borrowed from node2's block).
    cluster.remove_pod("b2")
    cluster.add_pod("b2-moved", "node1", "198.19.2.2")
    cluster.borrow("198.19.2.0/26", "node2", "198.19.2.2", "node1")
    await wait_for(
        lambda: f"198.19.2.2 via {cluster.ip(1)}" in cluster.routes("node3"),
        15,
        "node3 to route the moved pod via node1",
    )
    await wait_for(
        lambda: "198.19.2.2 dev " + workload_iface("default", "b2-moved") in cluster.routes("node1"),
        15,
        "local route on node1",
    )
    srv = listen(cluster.pod_ns("b2-moved"), 6060)
    try:
        await eventually_connects(cluster.pod_ns("c3"), "198.19.2.2", 6060)
    finally:
        srv.close()
