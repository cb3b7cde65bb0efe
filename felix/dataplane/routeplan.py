"""Route and neighbour planning: what the kernel must be told, decided without touching it.

Design note
-----------
The route manager is split the sans-I/O way.  This module is the pure core: given what felix wants
(routes from :mod:`felix.calc`), what it believes the kernel holds (its own routes, foreign routes
at the same destinations, the interfaces), it returns *operations* -- create, replace,
adopt, delete -- and, for the destinations that cannot be programmed now, a :class:`Pending` reason.  It
also classifies each operation's netlink result (:func:`outcome`) and works out drift after a dump
(:func:`find_drift`).  :class:`felix.dataplane.routes.RouteManager` is the thin shell that encodes
the operations, sends them, and records the outcomes as its new beliefs.

Why a pure function and not a reconciler object that also does I/O: every decision here (never
overwrite a foreign route, remove a stale route rather than let it route to a device that vanished,
adopt a CNI plugin's identical route, which results leave a route pending and which back off) can
be tested with plain values in microseconds, exhaustively and without root; the kernel tests then
only need to prove that the shell carries the decisions out.

Rules, per destination (``plan_routes``):

* unwanted: delete it if we hold it or might (``uncertain``: its link went down);
* wanted but its interface is missing or down, or its tunnel device is missing: pending; a route
  we hold there is deleted (it is no longer the plan: e.g. the pool switched encapsulation);
* wanted and what we hold already implements it: nothing to do;
* a foreign route (another protocol, same metric) is there: if it is exactly the local workload
  route we want, on the very interface we want (a CNI plugin installed the pod's route before
  felix heard of the pod), we *adopt* it: a replace that only changes its protocol to ours, so
  nothing changes for traffic and we own it from then on (as Calico's Felix owns every route on
  its workload interfaces).  Otherwise it is a conflict and stays pending -- never overwritten;
* otherwise create it (``NLM_F_EXCL``: never silently overwrite) or replace ours in place.

Reasons are a small closed set (:data:`REASONS`), because they label metrics; the ``detail`` says
which interface or device, for people.
"""

from __future__ import annotations

import errno
import socket
from collections.abc import Container, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Literal, NamedTuple

from felix.calc import DEV_IPIP, DEV_VXLAN, DEV_VXLAN_V6, Neighbor, Route

from .netlink import (
    OUR_PRIORITY,
    RT_SCOPE_LINK,
    RT_SCOPE_UNIVERSE,
    RTN_BLACKHOLE,
    RTN_UNICAST,
    KernelRoute,
)

__all__ = [
    "CONFLICT",
    "ENCAP_DEVICES",
    "INTERFACE_DOWN",
    "NO_DEVICE",
    "NO_INTERFACE",
    "REASONS",
    "Drift",
    "Link",
    "NeighborOp",
    "NeighborPlan",
    "Pending",
    "RouteOp",
    "RoutePlan",
    "backoff_delay",
    "belief",
    "find_drift",
    "implements",
    "neighbor_drift",
    "outcome",
    "plan_neighbors",
    "plan_routes",
    "target",
    "vxlan_device",
]

ENCAP_DEVICES = (DEV_IPIP, DEV_VXLAN, DEV_VXLAN_V6)

# Why a route waits (metric label values).
NO_INTERFACE = "interface-missing"
INTERFACE_DOWN = "interface-down"
NO_DEVICE = "device-missing"
CONFLICT = "conflict"
REASONS = (NO_INTERFACE, INTERFACE_DOWN, NO_DEVICE, CONFLICT)

BACKOFF_MIN, BACKOFF_MAX = 0.05, 30.0


class Link(NamedTuple):
    """What planning needs of an interface."""

    ifindex: int
    up: bool


@dataclass(frozen=True, slots=True)
class Pending:
    reason: str  # one of REASONS
    detail: str

    def __str__(self) -> str:
        return self.detail


Action = Literal["create", "replace", "adopt", "delete"]


@dataclass(frozen=True, slots=True)
class RouteOp:
    action: Action
    dst: str
    route: Route | None = None  # what to program (None for delete)
    oif: int | None = None


@dataclass(slots=True)
class RoutePlan:
    ops: list[RouteOp] = field(default_factory=list)
    pending: dict[str, Pending] = field(default_factory=dict)  # examined destinations that must wait
    settled: set[str] = field(default_factory=set)  # examined destinations already right
    examined: set[str] = field(default_factory=set)  # all destinations planned (not backing off)


@dataclass(slots=True)
class Drift:
    """What a resync found different from what we believed, and repaired."""

    missing: int = 0  # our route vanished from the kernel
    wrong: int = 0  # our route was changed behind our back
    extra: int = 0  # a route with our protocol that we do not want
    neighbors: int = 0  # neighbour/FDB entries missing, wrong or extra
    repaired: int = 0  # how many of the above were fixed by this resync

    @property
    def total(self) -> int:
        return self.missing + self.wrong + self.extra + self.neighbors


def backoff_delay(attempts: int) -> float:
    """Seconds before retry number ``attempts`` (1, 2, ...): 50 ms doubling up to 30 s."""
    return float(min(BACKOFF_MAX, BACKOFF_MIN * 2 ** (attempts - 1)))


# --- routes -------------------------------------------------------------------------------------------


def target(r: Route, links: Mapping[str, Link]) -> tuple[int | None, Pending | None]:
    """(interface index or None when the route names none, reason the route must wait)."""
    if r.dev is None:
        return None, None
    link = links.get(r.dev)
    if link is None:
        if r.dev in ENCAP_DEVICES:
            return None, Pending(NO_DEVICE, f"encapsulation device {r.dev} does not exist")
        return None, Pending(NO_INTERFACE, f"interface {r.dev} does not exist yet")
    if not link.up:
        return None, Pending(INTERFACE_DOWN, f"interface {r.dev} is down")
    return link.ifindex, None


def implements(k: KernelRoute, r: Route, oif: int | None) -> bool:
    """Does the kernel's route ``k`` implement ``r``?  (``oif`` None: any interface will do.)"""
    if r.type == "blackhole":
        return k.rtype == RTN_BLACKHOLE
    if k.rtype != RTN_UNICAST or k.multipath:
        return False
    if oif is not None and k.oif != oif:
        return False
    if k.gateway != r.gateway or k.onlink != r.onlink or k.mtu != r.mtu:
        return False
    # IPv6 reports every route with universe scope.
    return k.family == socket.AF_INET6 or k.scope == (RT_SCOPE_LINK if r.scope == "link" else RT_SCOPE_UNIVERSE)


def belief(r: Route, oif: int | None, proto: int) -> KernelRoute:
    """The kernel route that programming ``r`` through ``oif`` leaves behind."""
    family = socket.AF_INET6 if ":" in r.dst else socket.AF_INET
    rtype = RTN_BLACKHOLE if r.type == "blackhole" else RTN_UNICAST
    scope = RT_SCOPE_LINK if r.scope == "link" else RT_SCOPE_UNIVERSE
    return KernelRoute(
        r.dst, family, rtype, proto, scope, oif or 0, r.gateway, r.onlink, r.mtu, OUR_PRIORITY[family], False
    )


def plan_routes(
    dsts: Iterable[str],
    desired: Mapping[str, Route],
    kernel: Mapping[str, KernelRoute],
    links: Mapping[str, Link],
    *,
    foreign: Mapping[str, KernelRoute],
    uncertain: Container[str],
    backing_off: Container[str] = (),
) -> RoutePlan:
    """Operations that bring ``dsts`` in line with ``desired`` (see the module note for the rules).

    ``kernel``: our routes as we believe the kernel holds them; ``foreign``: routes of other
    protocols at our metric; ``uncertain``: destinations that may or may not still hold our route;
    ``backing_off``: destinations to leave alone for now (retry pending after an error).
    """
    plan = RoutePlan()
    for dst in dsts:
        if dst in backing_off:
            continue
        plan.examined.add(dst)
        want = desired.get(dst)
        have = kernel.get(dst)
        held = have is not None or dst in uncertain
        if want is None:
            if held:
                plan.ops.append(RouteOp("delete", dst))
            else:
                plan.settled.add(dst)
            continue
        oif, waiting = target(want, links)
        if waiting is not None:
            plan.pending[dst] = waiting
            if held:  # what the kernel holds is no longer the plan: remove it rather than route stale
                plan.ops.append(RouteOp("delete", dst))
            continue
        if have is not None and implements(have, want, oif):
            plan.settled.add(dst)
            continue
        other = foreign.get(dst)
        if have is None and other is not None:
            if want.scope == "link" and oif is not None and implements(other, want, oif):
                plan.ops.append(RouteOp("adopt", dst, want, oif))  # a CNI plugin's route: the same route
            else:
                plan.pending[dst] = Pending(CONFLICT, f"a route with protocol {other.proto} already exists here")
            continue
        plan.ops.append(RouteOp("replace" if held else "create", dst, want, oif))
    return plan


Outcome = Literal["programmed", "gone", "conflict", "pending", "failed"]


def outcome(op: RouteOp, err: int) -> tuple[Outcome, Pending | None]:
    """What a netlink result means for ``op``: the new state, and the reason if it now waits."""
    if op.action == "delete":
        return ("gone", None) if err in (0, errno.ESRCH, errno.ENOENT) else ("failed", None)
    if err == 0:
        return "programmed", None
    if err == errno.EEXIST:
        # Someone else's route at this destination (or one of ours we lost track of).
        return "conflict", Pending(CONFLICT, "a route with another protocol already exists here")
    dev = op.route.dev if op.route is not None else None
    if err == errno.ENETDOWN:
        return "pending", Pending(INTERFACE_DOWN, f"interface {dev} is down")
    if err == errno.ENODEV:
        reason = NO_DEVICE if dev in ENCAP_DEVICES else NO_INTERFACE
        return "pending", Pending(reason, f"interface {dev} is gone")
    return "failed", None


def find_drift(
    believed: Mapping[str, KernelRoute],
    actual: Mapping[str, KernelRoute],
    desired: Mapping[str, Route],
    links: Mapping[str, Link],
    uncertain: Container[str],
) -> tuple[Drift, set[str]]:
    """Where a dump of our routes (``actual``) differs from what we believed; (counts, destinations).

    A route we never believed in but want is not drift, whatever its state: it is either adopted
    (right already) or programmed for the first time.
    """
    drift = Drift()
    drifted: set[str] = set()
    for dst in set(believed) | set(actual):
        was, real = believed.get(dst), actual.get(dst)
        want = desired.get(dst)
        if real is None:
            if was is not None and want is not None and dst not in uncertain:
                drift.missing += 1
                drifted.add(dst)
        elif want is None:
            drift.extra += 1
            drifted.add(dst)
        elif was is not None:
            oif, _ = target(want, links)
            if not implements(real, want, oif) and implements(was, want, oif):
                drift.wrong += 1
                drifted.add(dst)
    return drift, drifted


# --- VXLAN neighbours ---------------------------------------------------------------------------------


def vxlan_device(ip: str) -> str:
    return DEV_VXLAN_V6 if ":" in ip else DEV_VXLAN


class NeighborOp(NamedTuple):
    action: Literal["arp", "arp-del", "fdb", "fdb-del"]
    dev: str
    ip: str  # the VTEP address (arp) or the underlay address (fdb)
    mac: str


@dataclass(slots=True)
class NeighborPlan:
    ops: list[NeighborOp] = field(default_factory=list)
    pending: dict[str, Pending] = field(default_factory=dict)  # vtep ip -> why it waits


def plan_neighbors(
    desired: Mapping[str, Neighbor],
    arp: Mapping[str, str],
    fdb: Mapping[tuple[str, str], str],
    links: Container[str],
) -> NeighborPlan:
    """Full comparison of the wanted ARP/FDB entries with those believed held (a few per node).

    ``arp``: vtep ip -> mac; ``fdb``: (device, mac) -> underlay ip; ``links``: devices present.
    """
    plan = NeighborPlan()
    want_fdb: dict[tuple[str, str], str] = {}
    for ip, n in desired.items():
        dev = vxlan_device(ip)
        if dev not in links:
            plan.pending[ip] = Pending(NO_DEVICE, f"encapsulation device {dev} does not exist")
            continue
        want_fdb[(dev, n.mac)] = n.node_ip
        if arp.get(ip) != n.mac:
            plan.ops.append(NeighborOp("arp", dev, ip, n.mac))
    for ip, mac in arp.items():
        dev = vxlan_device(ip)
        if ip not in desired and dev in links:
            plan.ops.append(NeighborOp("arp-del", dev, ip, mac))
    for (dev, mac), under in want_fdb.items():
        if fdb.get((dev, mac)) != under:
            plan.ops.append(NeighborOp("fdb", dev, under, mac))
    for (dev, mac), under in fdb.items():
        if (dev, mac) not in want_fdb and dev in links:
            plan.ops.append(NeighborOp("fdb-del", dev, under, mac))
    return plan


def neighbor_drift(
    believed_arp: Mapping[str, str],
    believed_fdb: Mapping[tuple[str, str], str],
    arp: Mapping[str, str],
    fdb: Mapping[tuple[str, str], str],
    desired: Mapping[str, Neighbor],
) -> int:
    """Neighbour entries that drifted: believed but changed or gone, or present but unwanted.

    As for routes, an entry we never believed in is not drift if we want it: at start-up the
    entries a previous run left are adopted, not "repaired".
    """
    wanted_fdb = {(vxlan_device(ip), n.mac) for ip, n in desired.items()}
    drifted = 0
    for ip in set(believed_arp) | set(arp):
        if ip not in desired:
            drifted += ip in arp  # ours on our device, unwanted
        elif ip in believed_arp and believed_arp[ip] != arp.get(ip):
            drifted += 1
    for key in set(believed_fdb) | set(fdb):
        if key not in wanted_fdb:
            drifted += key in fdb
        elif key in believed_fdb and believed_fdb[key] != fdb.get(key):
            drifted += 1
    return drifted
