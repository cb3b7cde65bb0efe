"""The RouteManager shell on the in-memory kernel (felix.dataplane.fakenetlink): no root needed.

The kernel tests (test_felix_routes.py) prove the same behaviour on a real kernel; these cover the
paths a real kernel makes hard to provoke: lost acknowledgements, permission errors on every write.
"""

from __future__ import annotations

import errno
import socket

from felix.calc import Route, RouteDelta
from felix.dataplane.fakenetlink import FakeKernel
from felix.dataplane.netlink import RTN_UNICAST, RTPROT_FELIX, KernelRoute
from felix.dataplane.routes import RouteManager

LOCAL = Route("10.64.0.5/32", dev="cali1", scope="link")
BLACKHOLE = Route("10.64.0.0/26", type="blackhole")
REMOTE = Route("10.64.0.64/26", gateway="192.168.50.2")


def node(now: list[float] | None = None) -> tuple[FakeKernel, RouteManager]:
    k = FakeKernel()
    k.add_link("eth0")
    k.add_addr("eth0", "192.168.50.1/24")
    clock = (lambda: now[0]) if now is not None else (lambda: 0.0)
    return k, RouteManager(netlink=k.socket, clock=clock)


def delta(*routes: Route) -> RouteDelta:
    return RouteDelta(routes={r.dst: r for r in routes})


def test_programs_only_after_start_and_resync_finds_no_drift() -> None:
    k, mgr = node()
    k.add_link("cali1")
    mgr.apply(delta(LOCAL, BLACKHOLE, REMOTE))
    assert k.routes == {} and k.requests_seen == 0
    assert mgr.start_programming().total == 0
    assert {r.dst for r in k.routes.values()} == {LOCAL.dst, BLACKHOLE.dst, REMOTE.dst}
    got = k.route(REMOTE.dst)
    assert got is not None and got.proto == RTPROT_FELIX and got.oif == k.link("eth0").ifindex
    assert mgr.resync().total == 0 and mgr.stats.created == 3 and mgr.stats.programmed == 3


def test_a_route_waits_for_its_interface_and_follows_link_events() -> None:
    k, mgr = node()
    mgr.start_programming()
    mgr.apply(delta(LOCAL))
    assert mgr.pending() == {LOCAL.dst: "interface cali1 does not exist yet"}
    k.add_link("cali1", up=False)
    assert mgr.process_link_events() == 1 and mgr.pending() == {LOCAL.dst: "interface cali1 is down"}
    k.set_up("cali1")
    mgr.process_link_events()
    assert k.route(LOCAL.dst) is not None and mgr.pending() == {}
    k.del_link("cali1")  # the pod went: the kernel drops the route
    mgr.process_link_events()
    assert k.route(LOCAL.dst) is None and LOCAL.dst in mgr.pending()
    assert mgr.resync().total == 0  # the shell knew: no drift


def test_lost_acks_reopen_the_socket_and_a_resync_finds_out() -> None:
    now = [100.0]
    k, mgr = node(now)
    mgr.start_programming()
    k.lose_acks = 1
    mgr.apply(delta(BLACKHOLE, REMOTE))
    assert mgr.stats.netlink_errors == 1 and "timed out" in mgr.stats.last_error
    assert set(mgr.failing()) == {BLACKHOLE.dst, REMOTE.dst}
    mgr.tick()  # the resync it asked for: the kernel did apply both
    assert mgr.failing() == {} and mgr.stats.programmed == 2 and mgr.stats.created == 0


def test_writes_denied_are_retried_with_backoff_and_counted() -> None:
    now = [100.0]
    k, mgr = node(now)
    mgr.start_programming()
    k.deny = errno.EPERM
    mgr.apply(delta(BLACKHOLE))
    assert mgr.failing() == {BLACKHOLE.dst: f"create {BLACKHOLE.dst}: Operation not permitted"}
    assert mgr.retry_due() == 0  # backing off
    now[0] += 0.05
    assert mgr.retry_due() == 1 and mgr.stats.netlink_errors == 2
    k.deny = 0
    now[0] += 0.1
    assert mgr.retry_due() == 1 and mgr.failing() == {} and k.route(BLACKHOLE.dst) is not None
    assert mgr.stats.retries == 2


def test_a_device_is_in_use_until_our_last_route_has_moved_off_it() -> None:
    now = [100.0]
    k, mgr = node(now)
    k.add_link("vxlan.calico", kind="vxlan")
    mgr.start_programming()
    over_vxlan = Route(REMOTE.dst, dev="vxlan.calico", gateway="10.64.0.65", onlink=True, mtu=1450, encap="vxlan")
    mgr.apply(delta(over_vxlan, BLACKHOLE))
    assert mgr.devices_in_use(["vxlan.calico", "tunl0"]) == {"vxlan.calico"}
    k.fail[REMOTE.dst] = errno.ENOBUFS  # the move to native routing fails: the route stays where it was
    mgr.apply(delta(REMOTE))
    assert REMOTE.dst in mgr.failing() and mgr.devices_in_use(["vxlan.calico"]) == {"vxlan.calico"}
    del k.fail[REMOTE.dst]
    now[0] += 0.05
    assert mgr.retry_due() == 1 and mgr.devices_in_use(["vxlan.calico", "tunl0"]) == set()


def test_foreign_routes_are_reported_not_overwritten_and_never_deleted() -> None:
    k, mgr = node()
    theirs = KernelRoute(REMOTE.dst, socket.AF_INET, RTN_UNICAST, 4, 0, 1, "192.168.50.9", False, None, 0, False)
    k.add_route(theirs)
    mgr.apply(delta(REMOTE))
    mgr.start_programming()
    assert k.route(REMOTE.dst) == theirs and "protocol 4" in mgr.pending()[REMOTE.dst]
    mgr.apply(RouteDelta(removed={REMOTE.dst}))
    assert k.route(REMOTE.dst) == theirs and mgr.pending() == {}
