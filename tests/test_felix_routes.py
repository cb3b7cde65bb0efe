"""Kernel tests for felix.dataplane.routes (RouteManager) and its sysctls, each in a fresh network namespace.

What the kernel holds is read back with iproute2 (``ip -j``), not with the manager's own
netlink parser, so a bug in that parser cannot hide a bug in the programming.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import socket
import struct
import subprocess
import time
from collections.abc import Callable, Iterator

import pytest

from felix.calc import Neighbor, Route, RouteCalculator, RouteDelta
from felix.dataplane.netns import run_in_netns
from felix.dataplane.routes import RTPROT_FELIX, RouteManager
from felix.dataplane.sysctl import InterfaceMissing, configure_workload_interface, read_sysctl
from tests.conftest import kernel_skip
from tests.support.felix_kvs import block, node, pool, wep
from typha.k8s.projection import interface_name

pytestmark = [pytest.mark.kernel, pytest.mark.slow]  # network namespaces via ip(8)

ME = "node-a"
_counter = itertools.count()


# --- namespace plumbing ----------------------------------------------------------------------------


def ip(ns: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", "-n", ns, *args], capture_output=True, text=True, check=check)


def try_ip(ns: str, *args: str) -> bool:
    return ip(ns, *args, check=False).returncode == 0


def veth(ns: str, name: str, up: bool = True) -> None:
    peer = f"p{next(_counter)}x{os.getpid() % 1000}"
    ip(ns, "link", "add", name, "type", "veth", "peer", "name", peer)
    ip(ns, "link", "set", peer, "up")
    if up:
        ip(ns, "link", "set", name, "up")


@pytest.fixture
def ns() -> Iterator[str]:
    """A fresh namespace with an uplink ``eth0`` at 192.168.50.1/24 (so .2/.3 are on-link)."""
    if os.geteuid() != 0:
        kernel_skip("kernel tests need root")
    if shutil.which("ip") is None:
        kernel_skip("iproute2 (ip) is not installed")
    name = f"felixt-{os.getpid()}-{next(_counter)}"
    r = subprocess.run(["ip", "netns", "add", name], capture_output=True, text=True)
    if r.returncode != 0:
        kernel_skip(f"cannot create a network namespace: {r.stderr.strip()}")
    try:
        ip(name, "link", "set", "lo", "up")
        ip(name, "link", "add", "eth0", "type", "veth", "peer", "name", "eth0p")
        ip(name, "addr", "add", "192.168.50.1/24", "dev", "eth0")
        ip(name, "link", "set", "eth0", "up")
        ip(name, "link", "set", "eth0p", "up")
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], capture_output=True)


@pytest.fixture
def mgr(ns: str) -> Iterator[RouteManager]:
    m = RouteManager(ns)
    try:
        yield m
    finally:
        m.close()


def kernel_routes(ns: str, proto: str | None = None) -> dict[str, dict]:
    """Main-table routes by destination CIDR, as iproute2 reports them (JSON)."""
    out: dict[str, dict] = {}
    for fam in ("-4", "-6"):
        for r in json.loads(ip(ns, "-j", "-d", fam, "route", "show", "table", "main").stdout or "[]"):
            dst = r["dst"]
            if dst == "default":
                continue
            if "/" not in dst:
                dst += "/128" if ":" in dst else "/32"
            if proto is None or str(r.get("protocol")) == proto:
                out[dst] = r
    return out


def ours(ns: str) -> dict[str, dict]:
    return kernel_routes(ns, str(RTPROT_FELIX))


def wait_until(cond: Callable[[], object], timeout: float = 5.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.01)


def vxlan_device(ns: str, mac: str = "66:00:00:00:00:0a", local: str | None = None) -> bool:
    """Make vxlan.calico by hand (felix's device manager is tested elsewhere); False without vxlan."""
    made = try_ip(
        ns,
        "link",
        "add",
        "vxlan.calico",
        "address",
        mac,
        "type",
        "vxlan",
        "id",
        "4096",
        "dstport",
        "4789",
        *(("local", local) if local else ()),
        "nolearning",
    )
    if made:
        ip(ns, "link", "set", "vxlan.calico", "up")
    return made


# --- datastore values (built with typha's key builders) -----------------------------------------------


def cluster(mode: str = "Never") -> list[tuple[str, bytes]]:
    return [
        pool("10.64.0.0/16", ipip=mode),
        node(ME, "192.168.50.1/24"),
        node("node-b", "192.168.50.2/24"),
        block("10.64.0.0/26", ME),
        block("10.64.0.64/26", "node-b"),
    ]


# --- routes -----------------------------------------------------------------------------------------------


def test_nothing_programmed_before_start_programming(ns: str, mgr: RouteManager) -> None:
    calc = RouteCalculator(ME)
    mgr.apply(calc.apply(cluster()))
    assert mgr.resync().total == 0 and mgr.retry_due() == 0
    mgr.tick()
    assert ours(ns) == {} and mgr.stats.created == 0
    mgr.start_programming()
    assert set(ours(ns)) == {"10.64.0.0/26", "10.64.0.64/26"}


def test_calculated_routes_in_the_kernel(ns: str, mgr: RouteManager) -> None:
    pod = "web-1"
    iface = interface_name("shop", pod)
    veth(ns, iface)
    calc = RouteCalculator(ME)
    mgr.apply(calc.apply([*cluster(), wep(ME, pod, ["10.64.0.5"])]))
    mgr.start_programming()
    got = ours(ns)
    assert got["10.64.0.5/32"]["dev"] == iface and got["10.64.0.5/32"]["scope"] == "link"
    assert got["10.64.0.0/26"]["type"] == "blackhole"
    assert got["10.64.0.64/26"]["gateway"] == "192.168.50.2" and got["10.64.0.64/26"]["dev"] == "eth0"
    assert set(got) == {"10.64.0.5/32", "10.64.0.0/26", "10.64.0.64/26"}
    assert mgr.stats.programmed == 3 and mgr.stats.created == 3 and mgr.pending() == {}
    # IPv6 local route too.
    mgr.apply(RouteDelta(routes={"fd00:64::5/128": Route("fd00:64::5/128", dev=iface, scope="link")}))
    assert ours(ns)["fd00:64::5/128"]["dev"] == iface


def test_foreign_routes_are_left_alone(ns: str, mgr: RouteManager) -> None:
    ip(ns, "route", "add", "10.64.0.0/16", "via", "192.168.50.9", "proto", "static")
    ip(ns, "route", "add", "10.64.0.9/32", "via", "192.168.50.9", "proto", "static")  # inside our blackhole
    ip(ns, "route", "add", "10.64.0.64/26", "via", "192.168.50.9", "proto", "static")  # exactly one of ours
    foreign_before = {d: r for d, r in kernel_routes(ns).items() if r.get("protocol") == "static"}
    calc = RouteCalculator(ME)
    mgr.apply(calc.apply(cluster()))
    mgr.start_programming()
    assert set(ours(ns)) == {"10.64.0.0/26"}
    assert "protocol 4" in mgr.pending()["10.64.0.64/26"]  # reported, not overwritten
    # Someone takes over one of our routes behind our back; we then stop wanting it.  Our stale
    # belief must not delete their route: deletes carry our protocol and the kernel matches it.
    ip(ns, "route", "replace", "10.64.0.0/26", "via", "192.168.50.9", "proto", "static")
    foreign_before["10.64.0.0/26"] = kernel_routes(ns)["10.64.0.0/26"]
    mgr.apply(calc.apply([(k, None) for k, _ in cluster()[3:]]))  # all our routes go away
    assert ours(ns) == {} and mgr.stats.deleted == 0
    mgr.resync()
    now = kernel_routes(ns)
    assert {d: now[d] for d in foreign_before} == foreign_before
    # An unknown conflict found at create time (no dump yet) is reported the same way.
    ip(ns, "route", "add", "10.70.0.0/26", "via", "192.168.50.9", "proto", "static")
    mgr.apply(RouteDelta(routes={"10.70.0.0/26": Route("10.70.0.0/26", type="blackhole")}))
    assert mgr.stats.conflicts == 1 and "10.70.0.0/26" in mgr.pending()
    assert kernel_routes(ns)["10.70.0.0/26"]["gateway"] == "192.168.50.9"


def test_resync_repairs_drift(ns: str, mgr: RouteManager) -> None:
    calc = RouteCalculator(ME)
    mgr.apply(calc.apply(cluster()))
    mgr.start_programming()
    assert mgr.resync().total == 0  # a clean table has no drift
    ip(ns, "route", "del", "10.64.0.64/26")
    d = mgr.resync()
    assert (d.missing, d.wrong, d.extra, d.repaired) == (1, 0, 0, 1)
    assert ours(ns)["10.64.0.64/26"]["gateway"] == "192.168.50.2"
    ip(ns, "route", "replace", "10.64.0.64/26", "via", "192.168.50.3", "proto", str(RTPROT_FELIX))
    d = mgr.resync()
    assert (d.missing, d.wrong, d.extra, d.repaired) == (0, 1, 0, 1)
    assert ours(ns)["10.64.0.64/26"]["gateway"] == "192.168.50.2"
    ip(ns, "route", "add", "10.99.0.0/24", "via", "192.168.50.3", "proto", str(RTPROT_FELIX))
    d = mgr.resync()
    assert (d.missing, d.wrong, d.extra, d.repaired) == (0, 0, 1, 1)
    assert set(ours(ns)) == {"10.64.0.0/26", "10.64.0.64/26"}
    assert mgr.stats.drift_repaired == 3


def test_route_waits_for_its_interface(ns: str, mgr: RouteManager) -> None:
    pod = "late"
    iface = interface_name("shop", pod)
    calc = RouteCalculator(ME)
    mgr.start_programming()
    mgr.apply(calc.apply([*cluster(), wep(ME, pod, ["10.64.0.7"])]))
    assert "10.64.0.7/32" not in ours(ns)
    assert mgr.pending() == {"10.64.0.7/32": f"interface {iface} does not exist yet"}
    veth(ns, iface, up=False)
    wait_until(
        lambda: mgr.process_link_events() and "down" in mgr.pending().get("10.64.0.7/32", ""),
        what="the interface to be seen (down)",
    )
    ip(ns, "link", "set", iface, "up")
    wait_until(
        lambda: mgr.process_link_events() is not None and "10.64.0.7/32" in ours(ns),
        what="the route to be programmed once the interface is up",
    )
    assert mgr.pending() == {}
    # Pod restart: interface deleted (kernel drops the route) and re-created with a new index.
    ip(ns, "link", "del", iface)
    wait_until(
        lambda: mgr.process_link_events() is not None and "10.64.0.7/32" in mgr.pending(),
        what="the route to go pending",
    )
    veth(ns, iface)
    wait_until(
        lambda: mgr.process_link_events() is not None and "10.64.0.7/32" in ours(ns),
        what="the route to come back on the new interface",
    )
    assert mgr.resync().total == 0


def test_changes_replace_in_place(ns: str, mgr: RouteManager) -> None:
    calc = RouteCalculator(ME)
    mgr.apply(calc.apply(cluster()))
    mgr.start_programming()
    # Watch route notifications: a replace shows as one RTM_NEWROUTE and never an RTM_DELROUTE.
    RTMGRP_IPV4_ROUTE = 0x40

    def monitor_socket() -> socket.socket:
        s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 0)
        s.bind((0, RTMGRP_IPV4_ROUTE))
        return s

    mon = run_in_netns(ns, monitor_socket)
    try:
        mgr.apply(calc.apply([node("node-b", "192.168.50.3/24")]))  # node-b's address changes
        assert ours(ns)["10.64.0.64/26"]["gateway"] == "192.168.50.3"
        mon.setblocking(False)
        types = []
        while True:
            try:
                data = mon.recv(65536)
            except BlockingIOError:
                break
            off = 0
            while off + 16 <= len(data):
                mlen, mtype = struct.unpack_from("=IH", data, off)
                types.append(mtype)
                off += (mlen + 3) & ~3
        assert types == [24]  # RTM_NEWROUTE only
    finally:
        mon.close()
    assert (mgr.stats.replaced, mgr.stats.deleted, mgr.stats.created) == (1, 0, 2)


def test_netlink_errors_back_off_and_recover(ns: str) -> None:
    now = [1000.0]
    mgr = RouteManager(ns, clock=lambda: now[0])
    try:
        mgr.start_programming()
        r = Route("10.77.0.0/26", gateway="10.200.0.1")  # gateway not on any connected subnet
        mgr.apply(RouteDelta(routes={r.dst: r}))
        assert mgr.stats.netlink_errors == 1 and "10.77.0.0/26" in mgr.stats.last_error
        assert "10.77.0.0/26" in mgr.failing() and r.dst not in ours(ns)
        assert mgr.retry_due() == 0  # backing off
        now[0] += 0.06
        assert mgr.retry_due() == 1 and mgr.stats.netlink_errors == 2  # still unreachable
        first, second = mgr.next_deadline(), None
        ip(ns, "addr", "add", "10.200.0.5/24", "dev", "eth0")
        now[0] += 0.06
        assert mgr.retry_due() == 0  # the second backoff is twice as long
        now[0] += 0.1
        mgr.tick()
        second = mgr.next_deadline()
        assert ours(ns)[r.dst]["gateway"] == "10.200.0.1" and mgr.failing() == {}
        assert mgr.stats.retries == 2 and first is not None and second is not None
    finally:
        mgr.close()


def test_cold_start_10k_routes(ns: str, mgr: RouteManager) -> None:
    for name in ("cali0000000001", "cali0000000002"):
        veth(ns, name)
    routes = {}
    for i in range(10_000):
        dst = f"10.{64 + i // 65536}.{(i // 256) % 256}.{i % 256}/32"
        routes[dst] = Route(dst, dev="cali000000000" + str(1 + i % 2), scope="link")
    for k in range(50):
        dst = f"10.100.{k}.0/26"
        routes[dst] = Route(dst, type="blackhole") if k % 2 else Route(dst, gateway="192.168.50.2")
    mgr.apply(RouteDelta(routes=routes))
    t0 = time.perf_counter()
    mgr.start_programming()
    cold = time.perf_counter() - t0
    t0 = time.perf_counter()
    drift = mgr.resync()
    warm = time.perf_counter() - t0
    print(f"\n10,050-route cold start: {cold * 1000:.0f} ms; full resync (no drift): {warm * 1000:.0f} ms")
    got = ours(ns)
    assert len(got) == len(routes) and drift.total == 0
    assert got["10.64.39.15/32"]["dev"] == "cali0000000002" and got["10.100.3.0/26"]["type"] == "blackhole"
    assert mgr.stats.created == len(routes) and mgr.stats.netlink_errors == 0


def test_encapsulated_routes_wait_for_their_devices(ns: str, mgr: RouteManager) -> None:
    calc = RouteCalculator(ME)
    mgr.start_programming()
    # IP-in-IP
    mgr.apply(calc.apply([*cluster("Always")]))
    assert mgr.pending() == {"10.64.0.64/26": "encapsulation device tunl0 does not exist"}
    assert set(ours(ns)) == {"10.64.0.0/26"}
    if try_ip(ns, "link", "add", "tunl0", "type", "ipip") or try_ip(ns, "link", "show", "tunl0"):
        ip(ns, "link", "set", "tunl0", "up")
        wait_until(
            lambda: mgr.process_link_events() is not None and "10.64.0.64/26" in ours(ns),
            what="the IP-in-IP route once tunl0 exists",
        )
        r = ours(ns)["10.64.0.64/26"]
        assert r["dev"] == "tunl0" and "onlink" in r["flags"] and r["metrics"] == [{"mtu": 1480}]
    # VXLAN: route, ARP entry and FDB entry for node-b's VTEP.
    mac = "66:00:00:00:00:0b"
    mgr.apply(
        calc.apply(
            [
                pool("10.64.0.0/16", vxlan="Always"),
                node("node-b", "192.168.50.2/24", vtep="10.64.0.65", mac=mac),
            ]
        )
    )
    assert mgr.pending() == {
        "10.64.0.64/26": "encapsulation device vxlan.calico does not exist",
        "neigh:10.64.0.65": "encapsulation device vxlan.calico does not exist",
    }
    if not vxlan_device(ns, local="192.168.50.1"):
        return  # no vxlan support in this kernel: pending with a reason is the whole story
    wait_until(
        lambda: mgr.process_link_events() is not None and "10.64.0.64/26" in ours(ns),
        what="the VXLAN route once vxlan.calico exists",
    )
    r = ours(ns)["10.64.0.64/26"]
    assert (r["dev"], r["gateway"], r["metrics"]) == ("vxlan.calico", "10.64.0.65", [{"mtu": 1450}])
    assert "onlink" in r["flags"] and mgr.pending() == {}
    neigh = json.loads(ip(ns, "-j", "neigh", "show", "dev", "vxlan.calico").stdout)
    assert [(n["dst"], n["lladdr"], n["state"]) for n in neigh] == [("10.64.0.65", mac, ["PERMANENT"])]
    fdb = json.loads(
        subprocess.run(
            ["bridge", "-n", ns, "-j", "fdb", "show", "dev", "vxlan.calico"], capture_output=True, text=True, check=True
        ).stdout
    )
    assert [(f["mac"], f.get("dst")) for f in fdb if f.get("dst")] == [(mac, "192.168.50.2")]
    # Drift in neighbours is repaired too; a removed node's entries go away.
    ip(ns, "neigh", "del", "10.64.0.65", "dev", "vxlan.calico")
    assert mgr.resync().neighbors == 1
    assert json.loads(ip(ns, "-j", "neigh", "show", "dev", "vxlan.calico").stdout)[0]["dst"] == "10.64.0.65"
    mgr.apply(RouteDelta(neighbors_removed={"10.64.0.65"}))
    assert json.loads(ip(ns, "-j", "neigh", "show", "dev", "vxlan.calico").stdout) == []
    fdb = json.loads(
        subprocess.run(
            ["bridge", "-n", ns, "-j", "fdb", "show", "dev", "vxlan.calico"], capture_output=True, text=True, check=True
        ).stdout
    )
    assert [f for f in fdb if f.get("dst")] == []
    assert mgr.stats.neighbors_programmed == 0


def test_set_desired_replaces_the_whole_plan(ns: str, mgr: RouteManager) -> None:
    mgr.start_programming()
    a = Route("10.90.0.0/26", type="blackhole")
    b = Route("10.90.0.64/26", gateway="192.168.50.2")
    mgr.set_desired({a.dst: a, b.dst: b}, {})
    assert set(ours(ns)) == {a.dst, b.dst}
    mgr.set_desired({b.dst: b})
    assert set(ours(ns)) == {b.dst}
    assert mgr.desired() == {b.dst: b}
    assert isinstance(Neighbor("66:00:00:00:00:01", "192.168.50.2"), tuple)


# --- sysctls ------------------------------------------------------------------------------------------


def test_workload_interface_sysctls(ns: str) -> None:
    iface = interface_name("shop", "web-1")
    veth(ns, iface)

    def val(path: str) -> str:  # read back through `ip netns exec`, independent of our helper
        return subprocess.run(
            ["ip", "netns", "exec", ns, "cat", path], capture_output=True, text=True, check=True
        ).stdout.strip()

    changed = configure_workload_interface(iface, netns=ns)
    assert f"/proc/sys/net/ipv4/conf/{iface}/proxy_arp" in changed
    assert val(f"/proc/sys/net/ipv4/conf/{iface}/proxy_arp") == "1"
    assert val(f"/proc/sys/net/ipv4/neigh/{iface}/proxy_delay") == "0"
    assert val(f"/proc/sys/net/ipv4/conf/{iface}/forwarding") == "1"
    if os.path.exists("/proc/sys/net/ipv6"):
        assert val(f"/proc/sys/net/ipv6/conf/{iface}/proxy_ndp") == "1"
        assert val(f"/proc/sys/net/ipv6/conf/{iface}/accept_ra") == "0"
    assert read_sysctl(f"/proc/sys/net/ipv4/conf/{iface}/proxy_arp", netns=ns) == "1"
    assert configure_workload_interface(iface, netns=ns) == []  # idempotent: nothing rewritten
    # The host's own namespace was not touched.
    assert not os.path.exists(f"/proc/sys/net/ipv4/conf/{iface}")
    with pytest.raises(InterfaceMissing):
        configure_workload_interface("cali-gone", netns=ns)
    with pytest.raises(ValueError):
        configure_workload_interface("../../x", netns=ns)


# --- adoption: what is already right is taken over, not counted as drift or conflict ------------------------


def test_a_cni_plugins_route_for_a_local_pod_is_adopted_not_pending(ns: str, mgr: RouteManager) -> None:
    # The CNI plugin installs the pod's route before felix hears of the pod (protocol boot, as
    # `ip route add` writes): same destination, same interface. That is the route felix wants.
    iface = interface_name("shop", "web-1")
    veth(ns, iface)
    ip(ns, "route", "add", "10.64.0.5/32", "dev", iface, "scope", "link", "proto", "boot")
    # A CNI route on *another* interface is a real conflict and stays one.
    other = interface_name("shop", "web-2")
    veth(ns, other)
    veth(ns, interface_name("shop", "web-3"))
    veth(ns, interface_name("shop", "web-4"))
    ip(ns, "route", "add", "10.64.0.6/32", "dev", other, "scope", "link", "proto", "boot")
    calc = RouteCalculator(ME)
    mgr.apply(calc.apply([*cluster(), wep(ME, "web-1", ["10.64.0.5"])]))
    mgr.start_programming()
    assert mgr.pending() == {} and mgr.stats.adopted == 1 and mgr.stats.conflicts == 0
    assert ours(ns)["10.64.0.5/32"]["dev"] == iface  # ours now (protocol 80), in place
    assert "10.64.0.5/32" not in kernel_routes(ns, "boot")
    # Later pods: the CNI route appears first, then felix's update arrives (no resync in between).
    ip(ns, "route", "add", "10.64.0.7/32", "dev", interface_name("shop", "web-3"), "scope", "link", "proto", "boot")
    mgr.apply(calc.apply([wep(ME, "web-3", ["10.64.0.7"]), wep(ME, "web-4", ["10.64.0.6"])]))
    mgr.resync()
    assert "10.64.0.7/32" in ours(ns) and "10.64.0.7/32" not in mgr.pending()
    assert "protocol" in mgr.pending()["10.64.0.6/32"]  # web-4's interface is not the CNI route's
    assert kernel_routes(ns, "boot")["10.64.0.6/32"]["dev"] == other
    assert mgr.resync().total == 0


def test_start_up_adopts_a_previous_runs_state_without_counting_drift(ns: str) -> None:
    if not vxlan_device(ns):
        kernel_skip("this kernel cannot create a vxlan device")
    mac = "66:00:00:00:00:0b"
    kvs = [
        pool("10.64.0.0/16", vxlan="Always"),
        node(ME, "192.168.50.1/24"),
        node("node-b", "192.168.50.2/24", vtep="10.64.0.65", mac=mac),
        block("10.64.0.0/26", ME),
        block("10.64.0.64/26", "node-b"),
    ]
    first = RouteManager(ns)
    try:
        first.apply(RouteCalculator(ME).apply(kvs))
        first.start_programming()
        assert first.pending() == {} and first.stats.neighbors_programmed == 1
    finally:
        first.close()
    # A restart: everything the new run wants is already in the kernel.
    second = RouteManager(ns)
    try:
        second.apply(RouteCalculator(ME).apply(kvs))
        drift = second.start_programming()
        assert (drift.total, drift.repaired, second.stats.drift_repaired) == (0, 0, 0)
        assert (second.stats.created, second.stats.neighbor_ops) == (0, 0)
        # Real drift is still counted once the state is believed.
        ip(ns, "neigh", "del", "10.64.0.65", "dev", "vxlan.calico")
        drift = second.resync()
        assert (drift.neighbors, drift.repaired) == (1, 1)
    finally:
        second.close()
