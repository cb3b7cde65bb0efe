"""Kernel tests of the policy dataplane: real iptables, real ip sets, real TCP, in network namespaces.

Topology (all namespaces created here and removed afterwards):
  node  ``<tag>-node``: forwarding on; ``eth0`` 192.168.77.1/24 towards ``<tag>-out`` (192.168.77.2),
        default route via it (so proxy ARP answers for the pods' gateway); one ``cali...`` veth per pod
  pods  ``<tag>-p<k>``: ``eth0`` = 10.65.0.<k>/32, default via 169.254.1.1 (proxy ARP), a TCP listener
        on ports 80 and 8080
  out   ``<tag>-out``: the world outside the node (natOutgoing is seen from there)
What the kernel holds is read back with the real tools (iptables-save, ipset save), and what it does
is checked with real connections, not with felix's own view of itself.
"""

from __future__ import annotations

import itertools
import os
import select
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest

from felix.dataplane.iptables import names as N
from felix.dataplane.iptables.manager import PolicyConfig, PolicyDataplane
from felix.dataplane.netns import run_in_netns
from felix.policy.messages import (
    ActivePolicyRemove,
    ActivePolicyUpdate,
    ActiveProfileUpdate,
    IPAMPoolUpdate,
    IpSetDeltaUpdate,
    IpSetRemove,
    IpSetUpdate,
    Message,
    Policy,
    PolicyID,
    PortRange,
    Rule,
    TierInfo,
    WorkloadEndpoint,
    WorkloadEndpointRemove,
    WorkloadEndpointUpdate,
)

from .conftest import kernel_skip

pytestmark = [pytest.mark.kernel, pytest.mark.slow]  # network namespaces, iptables and ipset processes

_count = itertools.count()
ALLOW_ALL = Policy(inbound_rules=(Rule("allow"),), outbound_rules=(Rule("allow"),))
PROFILE = ActiveProfileUpdate("kns.default", ALLOW_ALL)


def sh(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    r = subprocess.run(list(args), capture_output=True, text=True, check=False)
    if check and r.returncode != 0:
        raise AssertionError(f"{' '.join(args)}: {r.stderr.strip()}")
    return r


def listener(ns: str, ip: str, port: int) -> socket.socket:
    def make() -> socket.socket:
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((ip, port))
        s.listen(64)
        return s

    return run_in_netns(ns, make)


def connect(ns: str, ip: str, port: int, timeout: float) -> socket.socket | None:
    """A connected socket from ``ns`` to ip:port, or None if the handshake did not finish in time."""

    def make() -> socket.socket | None:
        s = socket.socket()
        s.setblocking(False)
        try:
            s.connect((ip, port))
        except BlockingIOError:
            pass
        _, w, _ = select.select([], [s], [], timeout)
        if w and s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0:
            s.setblocking(True)
            s.settimeout(3)
            return s
        s.close()
        return None

    return run_in_netns(ns, make)


@dataclass
class Node:
    tag: str
    pods: dict[str, tuple[str, str, str]] = field(default_factory=dict)  # pod -> (ns, ip, iface)
    sockets: list[socket.socket] = field(default_factory=list)
    listeners: dict[tuple[str, int], socket.socket] = field(default_factory=dict)  # (pod or "out", port)

    @property
    def ns(self) -> str:
        return f"{self.tag}-node"

    @property
    def out(self) -> str:
        return f"{self.tag}-out"

    def add_pod(self, k: int) -> str:
        name, ns, ip, iface = f"p{k}", f"{self.tag}-p{k}", f"10.65.0.{k}", f"cali{self.tag[-6:]}{k:05d}"
        sh("ip", "netns", "add", ns)
        sh("ip", "-n", self.ns, "link", "add", iface, "type", "veth", "peer", "name", "eth0", "netns", ns)
        sh("ip", "-n", self.ns, "link", "set", iface, "up")
        sh("ip", "netns", "exec", self.ns, "sysctl", "-qw", f"net.ipv4.conf.{iface}.proxy_arp=1")
        sh("ip", "netns", "exec", self.ns, "sysctl", "-qw", f"net.ipv4.neigh.{iface}.proxy_delay=0")
        sh("ip", "-n", self.ns, "route", "add", f"{ip}/32", "dev", iface)
        for cmd in (
            ("link", "set", "lo", "up"),
            ("addr", "add", f"{ip}/32", "dev", "eth0"),
            ("link", "set", "eth0", "up"),
            ("route", "add", "169.254.1.1", "dev", "eth0", "scope", "link"),
            ("route", "add", "default", "via", "169.254.1.1", "dev", "eth0"),
        ):
            sh("ip", "-n", ns, *cmd)
        self.pods[name] = (ns, ip, iface)
        for port in (80, 8080):
            self.listeners[(name, port)] = listener(ns, ip, port)
            self.listeners[(name, port)].settimeout(5)
            self.sockets.append(self.listeners[(name, port)])
        return name

    def can(self, src: str, dst: str, port: int = 80, expect: bool = True) -> bool:
        """Whether ``src`` (a pod or "out") completes a TCP handshake to pod ``dst`` (or an IP)."""
        ns = self.out if src == "out" else self.pods[src][0]
        ip = self.pods[dst][1] if dst in self.pods else dst
        s = connect(ns, ip, port, timeout=3.0 if expect else 0.4)
        if s is not None:
            s.close()
        return s is not None

    def ep(self, pod: str, *tiers: TierInfo, profiles: tuple[str, ...] = ("kns.default",)) -> WorkloadEndpointUpdate:
        _, ip, iface = self.pods[pod]
        return WorkloadEndpointUpdate(pod, WorkloadEndpoint(iface, profiles, tiers, (f"{ip}/32",)))

    def save(self, tool: str = "iptables-save") -> str:
        return sh("ip", "netns", "exec", self.ns, tool).stdout

    def ipsets(self) -> dict[str, set[str]]:
        out: dict[str, set[str]] = {}
        for line in sh("ip", "netns", "exec", self.ns, "ipset", "save").stdout.splitlines():
            parts = line.split()
            if parts[0] == "create" and parts[1].startswith("cali"):
                out[parts[1]] = set()
            elif parts[0] == "add" and parts[1] in out:
                out[parts[1]].add(parts[2])
        return out

    def dataplane(self, **cfg: object) -> PolicyDataplane:
        return PolicyDataplane(self.ns, PolicyConfig(**cfg))  # type: ignore[arg-type]


@pytest.fixture
def node() -> Iterator[Node]:
    if os.geteuid() != 0:
        kernel_skip("kernel tests need root")
    for tool in ("ip", "iptables-restore", "ipset"):
        if shutil.which(tool) is None:
            kernel_skip(f"{tool} is not installed")
    n = Node(f"ipt{os.getpid() % 10000}x{next(_count)}")
    created = []
    try:
        for ns in (n.ns, n.out):
            r = sh("ip", "netns", "add", ns, check=False)
            if r.returncode != 0:
                kernel_skip(f"cannot create a network namespace: {r.stderr.strip()}")
            created.append(ns)
        sh("ip", "-n", n.ns, "link", "add", "eth0", "type", "veth", "peer", "name", "eth0", "netns", n.out)
        for ns, ip in ((n.ns, "192.168.77.1"), (n.out, "192.168.77.2")):
            sh("ip", "-n", ns, "addr", "add", f"{ip}/24", "dev", "eth0")
            sh("ip", "-n", ns, "link", "set", "eth0", "up")
            sh("ip", "-n", ns, "link", "set", "lo", "up")
        sh("ip", "-n", n.ns, "route", "add", "default", "via", "192.168.77.2")
        sh("ip", "netns", "exec", n.ns, "sysctl", "-qw", "net.ipv4.ip_forward=1")
        n.listeners[("out", 80)] = listener(n.out, "192.168.77.2", 80)
        n.listeners[("out", 80)].settimeout(5)
        n.sockets.append(n.listeners[("out", 80)])
        for k in (1, 2, 3):
            n.add_pod(k)
        created += [ns for ns, _, _ in n.pods.values()]
        yield n
    finally:
        for s in n.sockets:
            s.close()
        for ns in created:
            sh("ip", "netns", "del", ns, check=False)


def only_from(set_id: str, *ports: int) -> Policy:
    dst = tuple(PortRange(p, p) for p in ports)
    return Policy(inbound_rules=(Rule("allow", protocol="tcp", src_ip_set_ids=(set_id,), dst_ports=dst),))


def setup(node: Node, dp: PolicyDataplane, *extra: Message) -> None:
    dp.apply([PROFILE, *(node.ep(p) for p in node.pods), *extra])
    report = dp.start_programming()
    assert report.ok and dp.ready, dp.stats.last_error


def test_apply_then_incremental_updates_enforced_on_real_traffic(node: Node) -> None:
    dp = node.dataplane()
    setup(node, dp)
    assert node.can("p1", "p2") and node.can("p3", "p2")
    # p2 admits only the pods in set "frontend" (p1), on port 80.
    pid = PolicyID("default", "web")
    tier = TierInfo("default", ingress_policies=("web",))
    dp.apply(
        [
            IpSetUpdate("frontend", "hash:net", frozenset({"10.65.0.1/32"})),
            ActivePolicyUpdate(pid, only_from("frontend", 80)),
            node.ep("p2", tier),
        ]
    )
    assert node.can("p1", "p2") and not node.can("p3", "p2", expect=False)
    assert not node.can("p1", "p2", 8080, expect=False)
    assert node.can("p2", "p3"), "p2's egress is still its profile's"
    # A label change: p3 joins the frontend set. No chain is written, one member is added.
    report = dp.apply([IpSetDeltaUpdate("frontend", added=frozenset({"10.65.0.3/32"}))])
    assert report is not None and (report.chains_written, report.rule_ops, report.members_added) == (0, 0, 1)
    assert node.can("p3", "p2")
    # A policy edit: port 8080 instead of 80. Only the policy's chain is rewritten.
    report = dp.apply([ActivePolicyUpdate(pid, only_from("frontend", 8080))])
    assert report is not None and report.chains_written == 1
    assert node.can("p1", "p2", 8080) and not node.can("p1", "p2", 80, expect=False)
    # The endpoint goes (its pod's interface is still there): traffic to it is dropped (fail closed).
    dp.apply([WorkloadEndpointRemove("p2"), ActivePolicyRemove(pid)])
    assert not node.can("p1", "p2", 8080, expect=False)
    saved = node.save()
    assert f"cali-tw-{node.pods['p2'][2]}" not in saved and N.policy_chain_name(True, "default", "web") not in saved
    assert dp.stats.restore_failures == 0 and dp.programmed()[0][(4, "filter")][1] > 0


def test_drift_and_a_foreign_rule_above_the_hook_are_repaired(node: Node) -> None:
    dp = node.dataplane()
    setup(
        node,
        dp,
        IpSetUpdate("frontend", "hash:net", frozenset({"10.65.0.1/32"})),
        ActivePolicyUpdate(PolicyID("default", "web"), only_from("frontend", 80)),
        node.ep("p2", TierInfo("default", ingress_policies=("web",))),
    )
    assert not node.can("p3", "p2", expect=False)
    ipt = ("ip", "netns", "exec", node.ns)
    # Someone puts an ACCEPT above felix's hook, deletes a rule of ours, and empties our ip set.
    sh(*ipt, "iptables", "-I", "FORWARD", "1", "-s", "10.65.0.3/32", "-j", "ACCEPT")
    sh(*ipt, "iptables", "-D", f"cali-tw-{node.pods['p2'][2]}", "1")
    sh(*ipt, "ipset", "flush", N.set_name(4, "frontend"))
    assert node.can("p3", "p2"), "the foreign rule bypasses policy"
    drift = dp.resync()
    assert drift == 3 and dp.stats.drift_repaired == 3
    assert not node.can("p3", "p2", expect=False) and node.can("p1", "p2")
    forward = [line for line in node.save().splitlines() if line.startswith("-A FORWARD")]
    assert "cali-FORWARD" in forward[0] and "10.65.0.3" in forward[1], "foreign rule kept, below our hook"
    assert dp.resync() == 0


def test_restart_adopts_rules_and_keeps_established_connections(node: Node) -> None:
    dp = node.dataplane()
    setup(node, dp)
    conn = connect(node.pods["p1"][0], node.pods["p2"][1], 80, timeout=3.0)
    assert conn is not None
    server = node.listeners[("p2", 80)].accept()[0]
    # A restart with the same view writes nothing at all.
    again = node.dataplane()
    again.apply([PROFILE, *(node.ep(p) for p in node.pods)])
    report = again.start_programming()
    assert report.ok and (report.chains_written, report.rule_ops, report.sets_created) == (0, 0, 0)
    # A restart into a view that denies p1 -> p2: new connections stop, the established one lives.
    deny = PolicyID("default", "deny-all")
    third = node.dataplane()
    third.apply(
        [
            PROFILE,
            ActivePolicyUpdate(deny, Policy()),
            *(node.ep(p) for p in ("p1", "p3")),
            node.ep("p2", TierInfo("default", ingress_policies=("deny-all",))),
        ]
    )
    assert third.start_programming().ok
    conn.sendall(b"ping")
    assert server.recv(4) == b"ping"
    server.sendall(b"pong")
    assert conn.recv(4) == b"pong"
    assert not node.can("p1", "p2", expect=False)
    conn.close()
    server.close()
    del dp, again, third  # felix stopping leaves its rules in place
    assert "cali-FORWARD" in node.save()


def test_ip_sets_are_added_to_deleted_from_swapped_and_destroyed(node: Node) -> None:
    dp = node.dataplane()
    big = frozenset(f"10.66.{i // 250}.{i % 250}/32" for i in range(500))
    setup(
        node,
        dp,
        IpSetUpdate("s", "hash:net", big),
        ActivePolicyUpdate(PolicyID("default", "p"), only_from("s", 80)),
        node.ep("p2", TierInfo("default", ingress_policies=("p",))),
    )
    name = N.set_name(4, "s")
    assert len(node.ipsets()[name]) == 500
    report = dp.apply([IpSetDeltaUpdate("s", added=frozenset({"10.65.0.1/32"}), removed=frozenset({"10.66.0.0/32"}))])
    assert report is not None and (report.members_added, report.members_removed, report.sets_swapped) == (1, 1, 0)
    assert "10.65.0.1" in node.ipsets()[name] and "10.66.0.0" not in node.ipsets()[name]
    assert node.can("p1", "p2")
    # A whole new membership (a relist, say) goes into a scratch set that is swapped in.
    report = dp.apply([IpSetUpdate("s", "hash:net", frozenset({"10.65.0.3/32"}))])
    assert report is not None and report.sets_swapped == 1
    sets = node.ipsets()
    assert sets[name] == {"10.65.0.3"} and not [n for n in sets if n.startswith("cali4t")]
    assert node.can("p3", "p2") and not node.can("p1", "p2", expect=False)
    # The policy and its set go: the set is destroyed after the rules stopped using it, by the
    # tick that follows the write (off the update's critical path).
    report = dp.apply([node.ep("p2"), ActivePolicyRemove(PolicyID("default", "p")), IpSetRemove("s")])
    assert report is not None and report.sets_destroyed == 1 and name in node.ipsets()
    deadline = dp.next_deadline()
    assert deadline is not None and deadline <= time.monotonic()
    dp.tick()
    assert name not in node.ipsets() and (dp.next_deadline() or 1e18) > time.monotonic() + 60  # next: the read-back


def test_nat_outgoing_masquerades_only_pool_traffic_leaving_the_pools(node: Node) -> None:
    sh("ip", "-n", node.out, "route", "add", "10.65.0.0/24", "via", "192.168.77.1")
    dp = node.dataplane()
    setup(node, dp, IPAMPoolUpdate("10.65.0.0/24", "10.65.0.0/24", True))

    def peer(src: str, dst: str) -> str:
        """The source address ``dst``'s server sees for a connection from pod ``src``."""
        ip = "192.168.77.2" if dst == "out" else node.pods[dst][1]
        c = connect(node.pods[src][0], ip, 80, timeout=3.0)
        assert c is not None
        s, addr = node.listeners[(dst, 80)].accept()
        s.close()
        c.close()
        return addr[0]

    assert peer("p1", "out") == "192.168.77.1"  # masqueraded
    assert peer("p1", "p2") == "10.65.0.1"  # pool to pool: not
    dp.apply([IPAMPoolUpdate("10.65.0.0/24", "10.65.0.0/24", False)])
    assert peer("p1", "out") == "10.65.0.1"  # natOutgoing off


@pytest.mark.parametrize("backend", ["legacy", "nft"])
def test_backends_and_append_mode(node: Node, backend: str) -> None:
    ipt = "iptables-legacy" if backend == "legacy" else "iptables-nft"
    if shutil.which(ipt) is None:
        kernel_skip(f"{ipt} is not installed")
    sh("ip", "netns", "exec", node.ns, ipt, "-A", "FORWARD", "-s", "10.99.0.0/16", "-j", "DROP")
    dp = node.dataplane(backend=backend, chain_insert_mode="append")
    assert dp.backend.name == backend
    setup(node, dp, node.ep("p2", profiles=()))
    assert node.can("p1", "p3") and not node.can("p1", "p2", expect=False)
    forward = [line for line in node.save(f"{ipt}-save").splitlines() if line.startswith("-A FORWARD")]
    assert "10.99.0.0/16" in forward[0] and "cali-FORWARD" in forward[1], "appended after the existing rule"
    other = "iptables-nft-save" if backend == "legacy" else "iptables-legacy-save"
    if shutil.which(other):
        assert "cali-" not in node.save(other)


def test_ipv6_tables_and_sets_are_programmed_when_enabled(node: Node) -> None:
    if shutil.which("ip6tables-restore") is None:
        kernel_skip("ip6tables is not installed")
    dp = node.dataplane(ipv6=True)
    setup(
        node,
        dp,
        IpSetUpdate("mixed", "hash:net", frozenset({"10.65.0.1/32", "fd00::1/128"})),
        ActivePolicyUpdate(PolicyID("default", "p"), only_from("mixed", 80)),
        node.ep("p2", TierInfo("default", ingress_policies=("p",))),
    )
    assert N.policy_chain_name(True, "default", "p") in node.save("ip6tables-save")
    sets = node.ipsets()
    assert sets[N.set_name(6, "mixed")] == {"fd00::1"} and sets[N.set_name(4, "mixed")] == {"10.65.0.1"}
    assert node.can("p1", "p2") and not node.can("p3", "p2", expect=False)
