"""Network policy end to end on a real kernel: a truth table of real TCP and UDP per scenario.

Two nodes and six pods (tests/test_felix_cluster.py's harness: namespaces and veths; objects
written to the API-server emulator over HTTPS, a real `typha --datastore kubernetes` process
watching it, a real felix process per node programming iptables and ip sets), three Kubernetes
namespaces x, y, z.
Every pod serves TCP 80, TCP 81 and UDP 53. For each scenario the test applies policies, then
probes every ordered pair of pods on every port concurrently, and waits (with a timeout, never a
sleep) until the observed table equals the scenario's truth table; a mismatch at the deadline
prints the differing cells. Scenarios run in order on one cluster (one fixture for the module):
each starts from "everything allowed" and its table differs from it, so a table that matches
really shows the new policy enforced on both nodes.

Scenarios: the upstream Kubernetes network-policy e2e cases (default deny each direction, allow
from a namespace, pod and namespace selector in one peer, ipBlock with except, named ports resolved
per destination pod, numeric ports and ranges, egress only to DNS, policies edited and removed
while traffic flows), Calico order, Pass and Log across tiers, the reference architecture's
order-2000 global deny with order-1000 namespace overrides (DNS included), and natOutgoing seen
from the destination.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator, Callable

import pytest
import pytest_asyncio

from felix.dataplane.netns import run_in_netns
from loadtest.apiserver.fixtures import make_calico_object, make_namespace
from typha.ingest import ADDED, DELETED, MODIFIED

from .conftest import wait_for
from .test_felix_cluster import POOL, Cluster, pool_object, running_cluster, sh

pytestmark = [pytest.mark.kernel, pytest.mark.slow, pytest.mark.asyncio(loop_scope="module")]

PORTS = (("tcp", 80), ("tcp", 81), ("udp", 53))
# name -> (namespace, app label, node, ip, port number of the named port "web")
PODS = {
    "x-a": ("x", "a", "node1", "198.19.1.10", 80),
    "x-b": ("x", "b", "node2", "198.19.2.10", 81),  # "web" differs per pod: resolved per destination
    "y-a": ("y", "a", "node1", "198.19.1.11", 80),
    "y-b": ("y", "b", "node2", "198.19.2.11", 80),
    "z-a": ("z", "a", "node1", "198.19.1.12", 80),
    "z-b": ("z", "b", "node2", "198.19.2.12", 80),
}
PROBE_TIMEOUT = 0.6
Cell = tuple[str, str, str, int]  # src pod, dst pod, protocol, port
Truth = Callable[[str, str, str, int], bool]


def ns(pod: str) -> str:
    return PODS[pod][0]


def app(pod: str) -> str:
    return PODS[pod][1]


def ip(pod: str) -> str:
    return PODS[pod][3]


class _Echo(asyncio.DatagramProtocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.transport.sendto(data, addr)  # type: ignore[attr-defined]


class _Reply(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.got: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        if not self.got.done():
            self.got.set_result(data)


class Net:
    """Servers in every pod and the prober; records the peers each TCP server saw (for NAT)."""

    def __init__(self, cluster: Cluster) -> None:
        self.c = cluster
        self.closers: list[Callable[[], object]] = []
        self.peers: dict[str, set[str]] = {}

    def ns_of(self, pod: str) -> str:
        return self.c.pods[pod][2]

    async def serve(self, name: str, netns: str | None, host: str = "0.0.0.0") -> None:
        loop = asyncio.get_running_loop()
        seen = self.peers.setdefault(name, set())

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            seen.add(writer.get_extra_info("peername")[0])
            writer.close()

        for proto, port in PORTS:

            def make(proto: str = proto, port: int = port) -> socket.socket:
                s = socket.socket(socket.AF_INET, socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM)
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                s.bind((host, port))
                if proto == "tcp":
                    s.listen(128)
                s.setblocking(False)
                return s

            sock = run_in_netns(netns, make)
            if proto == "tcp":
                server = await asyncio.start_server(handle, sock=sock)
                self.closers.append(server.close)
            else:
                transport, _ = await loop.create_datagram_endpoint(_Echo, sock=sock)
                self.closers.append(transport.close)

    async def probe(self, src: str, dst_ip: str, proto: str, port: int) -> bool:
        loop = asyncio.get_running_loop()
        kind = socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM
        sock = run_in_netns(self.ns_of(src), lambda: socket.socket(socket.AF_INET, kind))
        sock.setblocking(False)
        try:
            if proto == "tcp":
                await asyncio.wait_for(loop.sock_connect(sock, (dst_ip, port)), PROBE_TIMEOUT)
                return True
            sock.connect((dst_ip, port))
            transport, reply = await loop.create_datagram_endpoint(_Reply, sock=sock)
            try:
                transport.sendto(b"ping")
                return await asyncio.wait_for(reply.got, PROBE_TIMEOUT) == b"ping"
            finally:
                transport.close()
        except (OSError, TimeoutError):
            return False
        finally:
            sock.close()

    async def table(self) -> dict[Cell, bool]:
        cells = [(s, d, proto, port) for s in PODS for d in PODS if s != d for proto, port in PORTS]
        results = await asyncio.gather(*(self.probe(s, ip(d), proto, port) for s, d, proto, port in cells))
        return dict(zip(cells, results))

    async def expect(self, truth: Truth, what: str, timeout: float = 30.0) -> float:
        """Wait until every cell matches ``truth``; returns the seconds it took."""
        want = {(s, d, p, n): truth(s, d, p, n) for s in PODS for d in PODS if s != d for p, n in PORTS}
        t0 = time.monotonic()
        while True:
            got = await self.table()
            if got == want:
                return time.monotonic() - t0
            if time.monotonic() - t0 > timeout:
                wrong = sorted(k for k in want if got[k] != want[k])
                lines = [
                    f"  {s} -> {d} {p}/{n}: expected {'allow' if want[(s, d, p, n)] else 'deny'}"
                    for s, d, p, n in wrong
                ]
                raise AssertionError(f"{what}: {len(wrong)} cells differ after {timeout}s:\n" + "\n".join(lines[:40]))


def everything(s: str, d: str, p: str, n: int) -> bool:
    return True


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def net() -> AsyncIterator[Net]:
    async with running_cluster(via_api=True) as c:
        for i in (1, 2):
            node = c.add_node(i)
            c.add_block(node, f"198.19.{i}.0/26")
        for name in ("x", "y", "z"):
            c.apply((ADDED, "namespaces", make_namespace(name, {"ns": name})))
        for name, (namespace, label, node, addr, web) in PODS.items():
            ports = (
                {"name": "web", "containerPort": web, "protocol": "TCP"},
                {"name": "dns", "containerPort": 53, "protocol": "UDP"},
            )
            c.add_pod(name, node, addr, namespace=namespace, labels={"app": label}, ports=ports)
        c.mark_in_sync()
        for node in c.nodes:
            c.start_felix(node)
        n = Net(c)
        for name in PODS:
            await n.serve(name, n.ns_of(name))
        try:
            await n.expect(everything, "all pods reach each other before any policy", timeout=60)
            yield n
        finally:
            for close in n.closers:
                close()


def knp(namespace: str, name: str, spec: dict) -> dict:
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": name, "namespace": namespace},
        "spec": spec,
    }


def gnp(name: str, spec: dict) -> dict:
    return make_calico_object("GlobalNetworkPolicy", name, spec)


def cnp(namespace: str, name: str, spec: dict) -> dict:
    return make_calico_object("NetworkPolicy", name, spec, namespace=namespace)


async def reset(n: Net, *deleted: tuple[str, dict]) -> None:
    n.c.apply(*((DELETED, resource, obj) for resource, obj in deleted))
    await n.expect(everything, "everything allowed again once the policies are deleted")


async def test_kubernetes_ingress_scenarios_edited_while_traffic_flows(net: Net) -> None:
    deny = knp("x", "default-deny", {"podSelector": {}, "policyTypes": ["Ingress"]})
    net.c.apply((ADDED, "networkpolicies", deny))
    took = await net.expect(lambda s, d, p, n: ns(d) != "x", "default deny ingress in x")
    print(f"default deny reached both nodes in {took:.2f}s")

    def allow(peer_or_ports: dict) -> dict:
        return knp("x", "allow", {"podSelector": {}, "ingress": [peer_or_ports]})

    net.c.apply((ADDED, "networkpolicies", allow({"from": [{"namespaceSelector": {"matchLabels": {"ns": "y"}}}]})))
    await net.expect(lambda s, d, p, n: ns(d) != "x" or ns(s) == "y", "allow from namespace y")

    both = {"from": [{"namespaceSelector": {"matchLabels": {"ns": "y"}}, "podSelector": {"matchLabels": {"app": "b"}}}]}
    net.c.apply((MODIFIED, "networkpolicies", allow(both)))
    await net.expect(lambda s, d, p, n: ns(d) != "x" or s == "y-b", "pod AND namespace selector in one peer")

    block = {"from": [{"ipBlock": {"cidr": POOL, "except": [f"{ip('y-b')}/32"]}}]}
    net.c.apply((MODIFIED, "networkpolicies", allow(block)))
    await net.expect(lambda s, d, p, n: ns(d) != "x" or s != "y-b", "ipBlock with except")

    net.c.apply((MODIFIED, "networkpolicies", allow({"ports": [{"port": "web"}]})))
    await net.expect(
        lambda s, d, p, n: ns(d) != "x" or (p == "tcp" and n == PODS[d][4]), "named port, resolved per destination pod"
    )

    net.c.apply((MODIFIED, "networkpolicies", allow({"ports": [{"port": 80, "endPort": 81}]})))
    await net.expect(lambda s, d, p, n: ns(d) != "x" or p == "tcp", "numeric port range 80-81")

    net.c.apply((MODIFIED, "networkpolicies", allow({"ports": [{"protocol": "UDP", "port": 53}]})))
    await net.expect(lambda s, d, p, n: ns(d) != "x" or p == "udp", "numeric UDP port")

    await reset(net, ("networkpolicies", deny), ("networkpolicies", allow({})))


async def test_kubernetes_egress_default_deny_then_only_dns(net: Net) -> None:
    deny = knp("x", "deny-egress", {"podSelector": {}, "policyTypes": ["Egress"]})
    net.c.apply((ADDED, "networkpolicies", deny))
    await net.expect(lambda s, d, p, n: ns(s) != "x", "default deny egress in x")
    dns = knp(
        "x",
        "deny-egress",
        {
            "podSelector": {},
            "policyTypes": ["Egress"],
            "egress": [
                {
                    "to": [{"namespaceSelector": {"matchLabels": {"ns": "z"}}}],
                    "ports": [{"protocol": "UDP", "port": 53}],
                }
            ],
        },
    )
    net.c.apply((MODIFIED, "networkpolicies", dns))
    await net.expect(lambda s, d, p, n: ns(s) != "x" or (ns(d) == "z" and p == "udp"), "egress only to DNS in z")
    await reset(net, ("networkpolicies", dns))


async def test_calico_order_decides_between_deny_and_allow(net: Net) -> None:
    in_x = "projectcalico.org/namespace == 'x'"
    deny = gnp(
        "deny-yb",
        {
            "order": 10,
            "selector": in_x,
            "types": ["Ingress"],
            "ingress": [{"action": "Deny", "source": {"selector": "app == 'b' && projectcalico.org/namespace == 'y'"}}],
        },
    )
    allow = gnp(
        "allow-b",
        {
            "order": 20,
            "selector": in_x,
            "types": ["Ingress"],
            "ingress": [{"action": "Allow", "source": {"selector": "app == 'b'"}}],
        },
    )
    net.c.apply((ADDED, "globalnetworkpolicies", deny), (ADDED, "globalnetworkpolicies", allow))
    # From y-b: the deny comes first. From other b pods: allowed. From a pods: the tier's end deny.
    await net.expect(
        lambda s, d, p, n: ns(d) != "x" or (app(s) == "b" and s != "y-b"), "deny at order 10 before allow at 20"
    )
    allow["spec"]["order"] = 5
    net.c.apply((MODIFIED, "globalnetworkpolicies", allow))
    await net.expect(lambda s, d, p, n: ns(d) != "x" or app(s) == "b", "allow at order 5 before deny at 10")
    await reset(net, ("globalnetworkpolicies", deny), ("globalnetworkpolicies", allow))


async def test_pass_hands_over_to_the_next_tier_and_log_does_not_decide(net: Net) -> None:
    in_x = "projectcalico.org/namespace == 'x'"
    first = gnp(
        "pass-a",
        {
            "order": 1,
            "selector": in_x,
            "types": ["Ingress"],
            "ingress": [
                {"action": "Log"},
                {"action": "Pass", "source": {"selector": "app == 'a'"}},
                {"action": "Allow"},
            ],
        },
    )
    later = gnp(
        "deny-rest",
        {"tier": "security", "order": 1, "selector": in_x, "types": ["Ingress"], "ingress": [{"action": "Deny"}]},
    )
    net.c.apply((ADDED, "globalnetworkpolicies", first), (ADDED, "globalnetworkpolicies", later))
    await net.expect(lambda s, d, p, n: ns(d) != "x" or app(s) != "a", "a pods passed to the next tier, which denies")
    # The Log rule matched the probes (it logs and lets the next rule decide) on both nodes of x.
    for node in ("node1", "node2"):
        saved = sh("ip", "netns", "exec", net.c.node_ns(node), "iptables-save", "-c", "-t", "filter").stdout
        logged = [
            int(line[1:].split(":")[0]) for line in saved.splitlines() if " -j LOG " in line and line.startswith("[")
        ]
        assert logged and max(logged) > 0, f"no LOG rule counted packets on {node}"
    await reset(net, ("globalnetworkpolicies", first), ("globalnetworkpolicies", later))


async def test_reference_architecture_global_deny_with_namespace_overrides(net: Net) -> None:
    base = gnp(
        "default-deny",
        {
            "order": 2000,
            "selector": "has(projectcalico.org/namespace) && projectcalico.org/namespace != 'z'",
            "types": ["Ingress", "Egress"],
            "egress": [
                {
                    "action": "Allow",
                    "protocol": "UDP",
                    "destination": {"selector": "projectcalico.org/namespace == 'z'", "ports": [53]},
                }
            ],
        },
    )
    web_in = cnp(
        "x",
        "allow-web-from-y",
        {
            "order": 1000,
            "selector": "all()",
            "types": ["Ingress"],
            "ingress": [
                {
                    "action": "Allow",
                    "protocol": "TCP",
                    "source": {"namespaceSelector": "ns == 'y'"},
                    "destination": {"ports": [80]},
                }
            ],
        },
    )
    web_out = cnp(
        "y",
        "allow-web-to-x",
        {
            "order": 1000,
            "selector": "all()",
            "types": ["Egress"],
            "egress": [
                {"action": "Allow", "protocol": "TCP", "destination": {"namespaceSelector": "ns == 'x'", "ports": [80]}}
            ],
        },
    )
    net.c.apply(
        (ADDED, "globalnetworkpolicies", base),
        (ADDED, "calico-networkpolicies", web_in),
        (ADDED, "calico-networkpolicies", web_out),
    )

    def truth(s: str, d: str, p: str, n: int) -> bool:
        if ns(s) == "z" and ns(d) == "z":
            return True  # z (the DNS namespace) is outside the global policy
        if ns(d) == "z":
            return p == "udp" and n == 53  # DNS only, from x and y
        if ns(s) == "y" and ns(d) == "x":
            return p == "tcp" and n == 80  # opened by both namespaces' order-1000 policies
        return False

    await net.expect(truth, "order-2000 global deny, order-1000 namespace overrides, DNS allowed")
    await reset(
        net,
        ("globalnetworkpolicies", base),
        ("calico-networkpolicies", web_in),
        ("calico-networkpolicies", web_out),
    )


async def test_nat_outgoing_seen_from_the_destination(net: Net) -> None:
    outside = net.c.ip(254)  # the bridge in the root namespace: outside every pool
    await net.serve("outside", None, host=outside)
    src = "x-a"
    assert not await net.probe(src, outside, "tcp", 81)  # no route back to the pool without NAT
    net.c.apply((MODIFIED, "ippools", pool_object(nat_outgoing=True)))

    async def reaches() -> bool:
        return await net.probe(src, outside, "tcp", 81)

    deadline = time.monotonic() + 30
    while not await reaches():
        assert time.monotonic() < deadline, "natOutgoing never let the pod reach outside the pool"
    node_ip = net.c.ip(1)  # x-a runs on node1
    await wait_for(lambda: node_ip in net.peers["outside"], 5, "the node's address seen by the destination")
    assert ip(src) not in net.peers["outside"]
    # Traffic inside the pool is not masqueraded: another pod sees the pod's own address.
    net.peers["y-b"].clear()
    assert await net.probe(src, ip("y-b"), "tcp", 80)
    await wait_for(lambda: bool(net.peers["y-b"]), 5, "the pod-to-pod connection recorded")
    assert net.peers["y-b"] == {ip(src)}
    net.c.apply((MODIFIED, "ippools", pool_object(nat_outgoing=False)))
