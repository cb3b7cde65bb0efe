"""The route planner (felix.dataplane.routeplan): decisions as plain values, no kernel, no root."""

from __future__ import annotations

import errno
import socket

from felix.calc import Neighbor, Route
from felix.dataplane.netlink import RT_SCOPE_LINK, RTN_BLACKHOLE, RTN_UNICAST, KernelRoute
from felix.dataplane.routeplan import (
    CONFLICT,
    INTERFACE_DOWN,
    NO_DEVICE,
    NO_INTERFACE,
    Link,
    NeighborOp,
    RouteOp,
    backoff_delay,
    belief,
    find_drift,
    implements,
    neighbor_drift,
    outcome,
    plan_neighbors,
    plan_routes,
)

PROTO = 80
LINKS = {"eth0": Link(2, True), "cali1": Link(5, True), "calidown": Link(6, False), "vxlan.calico": Link(9, True)}
LOCAL = Route("10.64.0.5/32", dev="cali1", scope="link")
BLACKHOLE = Route("10.64.0.0/26", type="blackhole")
REMOTE = Route("10.64.0.64/26", gateway="192.168.50.2")
VXLAN = Route("10.64.1.0/26", dev="vxlan.calico", gateway="10.64.1.1", onlink=True, mtu=1450, encap="vxlan")


def held(r: Route, oif: int | None = None, proto: int = PROTO) -> KernelRoute:
    return belief(r, oif, proto)


def plan(dsts: object, desired: dict[str, Route], kernel: dict[str, KernelRoute], **kw: object) -> object:
    kw.setdefault("foreign", {})
    kw.setdefault("uncertain", set())
    return plan_routes(dsts, desired, kernel, kw.pop("links", LINKS), **kw)  # type: ignore[arg-type]


def test_new_routes_are_created_exclusively_and_correct_ones_left_alone() -> None:
    desired = {r.dst: r for r in (LOCAL, BLACKHOLE, REMOTE)}
    p = plan(desired, desired, {BLACKHOLE.dst: held(BLACKHOLE)})
    assert sorted(p.ops, key=lambda op: op.dst) == [
        RouteOp("create", LOCAL.dst, LOCAL, 5),
        RouteOp("create", REMOTE.dst, REMOTE, None),
    ]
    assert p.settled == {BLACKHOLE.dst} and p.pending == {} and p.examined == set(desired)


def test_a_changed_route_of_ours_is_replaced_in_place() -> None:
    moved = Route(REMOTE.dst, gateway="192.168.50.3")
    p = plan([REMOTE.dst], {REMOTE.dst: moved}, {REMOTE.dst: held(REMOTE)})
    assert p.ops == [RouteOp("replace", REMOTE.dst, moved, None)]


def test_unwanted_routes_are_deleted_only_if_we_might_hold_them() -> None:
    p = plan([REMOTE.dst, "10.9.0.0/24", "10.8.0.0/24"], {}, {REMOTE.dst: held(REMOTE)}, uncertain={"10.8.0.0/24"})
    assert sorted(op.dst for op in p.ops if op.action == "delete") == ["10.64.0.64/26", "10.8.0.0/24"]
    assert p.settled == {"10.9.0.0/24"}


def test_routes_wait_for_interfaces_and_devices_with_a_reason() -> None:
    gone = Route("10.64.0.6/32", dev="cali-gone", scope="link")
    down = Route("10.64.0.7/32", dev="calidown", scope="link")
    tunnel = Route("10.64.2.0/26", dev="tunl0", gateway="192.168.50.3", onlink=True, mtu=1480)
    desired = {r.dst: r for r in (gone, down, tunnel)}
    p = plan(desired, desired, {})
    assert p.ops == []
    assert {d: (w.reason, w.detail) for d, w in p.pending.items()} == {
        gone.dst: (NO_INTERFACE, "interface cali-gone does not exist yet"),
        down.dst: (INTERFACE_DOWN, "interface calidown is down"),
        tunnel.dst: (NO_DEVICE, "encapsulation device tunl0 does not exist"),
    }


def test_a_route_we_hold_that_must_now_wait_is_removed_not_left_routing_stale() -> None:
    # The pool switched to VXLAN but vxlan.calico is missing: the old native route must go.
    links = {k: v for k, v in LINKS.items() if k != "vxlan.calico"}
    want = Route(VXLAN.dst, dev="vxlan.calico", gateway="10.64.1.1", onlink=True, mtu=1450)
    p = plan([VXLAN.dst], {VXLAN.dst: want}, {VXLAN.dst: held(Route(VXLAN.dst, gateway="192.168.50.4"))}, links=links)
    assert p.ops == [RouteOp("delete", VXLAN.dst)] and p.pending[VXLAN.dst].reason == NO_DEVICE


def test_a_foreign_route_is_a_conflict_never_overwritten() -> None:
    theirs = held(REMOTE, proto=4)._replace(gateway="192.168.50.9")
    p = plan([REMOTE.dst], {REMOTE.dst: REMOTE}, {}, foreign={REMOTE.dst: theirs})
    assert p.ops == [] and p.pending[REMOTE.dst].reason == CONFLICT
    assert "protocol 4" in p.pending[REMOTE.dst].detail


def test_destinations_backing_off_are_not_examined() -> None:
    p = plan([REMOTE.dst], {REMOTE.dst: REMOTE}, {}, backing_off={REMOTE.dst})
    assert p.ops == [] and p.examined == set() and p.settled == set()


def test_implements_compares_what_matters() -> None:
    k = held(VXLAN, 9)
    assert implements(k, VXLAN, 9) and implements(k, VXLAN, None)
    assert not implements(k, VXLAN, 10)  # another interface
    assert not implements(k._replace(mtu=1400), VXLAN, 9)
    assert not implements(k._replace(onlink=False), VXLAN, 9)
    assert not implements(k._replace(multipath=True), VXLAN, 9)
    assert not implements(k._replace(rtype=RTN_BLACKHOLE), VXLAN, 9)
    assert implements(held(BLACKHOLE)._replace(oif=3), BLACKHOLE, None)  # a blackhole is a blackhole
    local = held(LOCAL, 5)
    assert local.scope == RT_SCOPE_LINK and not implements(local._replace(scope=0), LOCAL, 5)
    v6 = belief(Route("fd00::5/128", dev="cali1", scope="link"), 5, PROTO)._replace(scope=0)
    assert v6.family == socket.AF_INET6 and implements(v6, Route("fd00::5/128", dev="cali1", scope="link"), 5)
    assert v6.priority == 1024 and held(LOCAL).priority == 0 and held(LOCAL).rtype == RTN_UNICAST


def test_outcomes_of_netlink_results() -> None:
    create = RouteOp("create", LOCAL.dst, LOCAL, 5)
    delete = RouteOp("delete", LOCAL.dst)
    assert outcome(create, 0) == ("programmed", None)
    assert outcome(delete, 0) == ("gone", None)
    assert outcome(delete, errno.ESRCH) == ("gone", None)  # already gone: fine
    assert outcome(delete, errno.EPERM) == ("failed", None)
    state, why = outcome(create, errno.EEXIST)
    assert state == "conflict" and why is not None and why.reason == CONFLICT
    state, why = outcome(create, errno.ENETDOWN)
    assert state == "pending" and why is not None and why.reason == INTERFACE_DOWN
    state, why = outcome(RouteOp("create", VXLAN.dst, VXLAN, 9), errno.ENODEV)
    assert state == "pending" and why is not None and why.reason == NO_DEVICE
    assert outcome(create, errno.ENETUNREACH) == ("failed", None)
    assert outcome(create, errno.EPERM) == ("failed", None)


def test_backoff_doubles_from_50ms_up_to_30s() -> None:
    assert [backoff_delay(n) for n in (1, 2, 3)] == [0.05, 0.1, 0.2]
    assert backoff_delay(30) == 30.0


def test_drift_is_counted_against_beliefs() -> None:
    desired = {r.dst: r for r in (LOCAL, BLACKHOLE, REMOTE)}
    believed = {LOCAL.dst: held(LOCAL, 5), BLACKHOLE.dst: held(BLACKHOLE), REMOTE.dst: held(REMOTE)}
    actual = {
        LOCAL.dst: held(LOCAL, 5),  # as believed
        REMOTE.dst: held(REMOTE)._replace(gateway="192.168.50.7"),  # changed behind our back
        "10.99.0.0/24": held(Route("10.99.0.0/24", gateway="192.168.50.3")),  # ours, unwanted
    }  # the blackhole vanished
    d, drifted = find_drift(believed, actual, desired, LINKS, set())
    assert (d.missing, d.wrong, d.extra) == (1, 1, 1)
    assert drifted == {BLACKHOLE.dst, REMOTE.dst, "10.99.0.0/24"}
    # A route we never believed in is not drift (start-up: it is adopted or programmed).
    d, drifted = find_drift({}, {LOCAL.dst: held(LOCAL, 5)._replace(oif=7)}, desired, LINKS, set())
    assert d.total == 0 and drifted == set()
    # A route that vanished while its link was down is not drift either.
    d, _ = find_drift({LOCAL.dst: held(LOCAL, 5)}, {}, desired, LINKS, {LOCAL.dst})
    assert d.total == 0


N1 = Neighbor("66:00:00:00:00:01", "192.168.50.2")
N2 = Neighbor("66:00:00:00:00:02", "192.168.50.3")


def test_neighbours_plan_arp_and_fdb_entries() -> None:
    p = plan_neighbors(
        {"10.64.1.1": N1, "10.64.2.1": N2},
        {"10.64.1.1": N1.mac, "10.64.9.1": "66:00:00:00:00:09"},
        {("vxlan.calico", "66:00:00:00:00:09"): "192.168.50.9", ("vxlan.calico", N1.mac): "192.168.50.2"},
        LINKS,
    )
    assert p.ops == [
        NeighborOp("arp", "vxlan.calico", "10.64.2.1", N2.mac),
        NeighborOp("arp-del", "vxlan.calico", "10.64.9.1", "66:00:00:00:00:09"),
        NeighborOp("fdb", "vxlan.calico", "192.168.50.3", N2.mac),
        NeighborOp("fdb-del", "vxlan.calico", "192.168.50.9", "66:00:00:00:00:09"),
    ]
    assert p.pending == {}
    waiting = plan_neighbors({"10.64.1.1": N1, "fd00::1": N1}, {}, {}, LINKS)
    assert waiting.pending["fd00::1"].reason == NO_DEVICE and "vxlan-v6.calico" in waiting.pending["fd00::1"].detail
    assert [op.action for op in waiting.ops] == ["arp", "fdb"]


def test_neighbour_drift_against_beliefs() -> None:
    fdb_key = ("vxlan.calico", N1.mac)
    want = {"10.64.1.1": N1}
    assert neighbor_drift({"10.64.1.1": N1.mac}, {fdb_key: N1.node_ip}, {}, {}, want) == 2  # both deleted
    assert neighbor_drift({"10.64.1.1": N1.mac}, {}, {"10.64.1.1": N2.mac}, {}, want) == 1  # changed


def test_a_cni_plugins_identical_local_route_is_adopted() -> None:
    cni = held(LOCAL, 5, proto=3)  # protocol boot, on the pod's interface
    p = plan([LOCAL.dst], {LOCAL.dst: LOCAL}, {}, foreign={LOCAL.dst: cni})
    assert p.ops == [RouteOp("adopt", LOCAL.dst, LOCAL, 5)] and p.pending == {}
    # Not on the pod's interface, or not the same route: a conflict, left alone.
    for other in (cni._replace(oif=6), cni._replace(gateway="192.168.50.9"), cni._replace(rtype=RTN_BLACKHOLE)):
        p = plan([LOCAL.dst], {LOCAL.dst: LOCAL}, {}, foreign={LOCAL.dst: other})
        assert p.ops == [] and p.pending[LOCAL.dst].reason == CONFLICT
    # Only local workload routes are adopted: a foreign route at a remote block stays a conflict.
    p = plan([REMOTE.dst], {REMOTE.dst: REMOTE}, {}, foreign={REMOTE.dst: held(REMOTE, proto=3)})
    assert p.ops == [] and p.pending[REMOTE.dst].reason == CONFLICT


def test_neighbours_found_at_start_up_are_adopted_not_drift() -> None:
    fdb_key = ("vxlan.calico", N1.mac)
    want = {"10.64.1.1": N1}
    assert neighbor_drift({}, {}, {"10.64.1.1": N1.mac}, {fdb_key: N1.node_ip}, want) == 0
    # ... but entries nobody wants are, believed or not.
    assert neighbor_drift({}, {}, {"10.64.9.9": N2.mac}, {("vxlan.calico", N2.mac): N2.node_ip}, want) == 2
