"""Route calculation: datastore updates in, desired kernel routes (and VXLAN neighbours) out.

Design note
-----------
Pure: no I/O, no clocks, no threads.  ``RouteCalculator.apply(kvs)`` takes a batch of Typha
updates and returns a :class:`RouteDelta` holding only the routes whose value changed because
of that batch; ``desired()`` is the whole answer.  ``felix.dataplane.routes`` turns deltas into netlink
calls.

How it stays incremental.  Every route is keyed by its destination (a :class:`Net`), and the
route for a destination is a *pure function of the current indexes* (``_compute``).  Applying
an update therefore means (1) updating the indexes and (2) marking the destinations whose inputs
may have changed as dirty, then recomputing only those, once per batch.  Because ``_compute``
never looks at history, the result equals a fresh calculator fed the final state (a hypothesis
test checks exactly this); correctness rests only on the dirty-marking being complete:

* an endpoint changes  -> its old and new addresses;
* a block or affinity at C changes -> C and every candidate address inside C (whether an
  address is borrowed depends on its block's owner), plus the block's old and new borrowed
  addresses.  "Addresses inside C" is an O(1) lookup: candidate addresses are grouped by their
  supernet at every block prefix length in use (normally just /26);
* a pool changes -> everything inside it (rare, and an encapsulation switch really does touch
  every route in the pool);
* a remote node changes -> the destinations whose last computation used that node, recorded
  as a dependency while computing (so a node appearing fixes the routes that waited for it);
* our own node's subnet changes -> every remote route (CrossSubnet decisions move).

The obvious alternative -- recompute the route table from scratch per event -- costs O(cluster)
per pod start; at 1,000 updates/s on a 150k-pod cluster that is not an option.

Rules (Calico's, see docs/felix-routes.md for the choices where we differ):

* local workload: ``<ip>/32 dev <iface> scope link``; wins over anything else for that address;
* own block (affinity to this node): ``blackhole <block>``;
* remote block: via the owner node -- IP-in-IP ``via <node ip> dev tunl0 onlink``, VXLAN
  ``via <owner VTEP> dev vxlan.calico onlink`` (+ neighbour and FDB entries), else native
  ``via <node ip>``.  ``CrossSubnet`` encapsulates only when the owner's address is outside our
  node's subnet.  MTU: network MTU minus 20 (IP-in-IP) or 50 (VXLAN; 70 over IPv6) on
  encapsulated routes;
* borrowed address (a workload on node B whose IP is in a block owned by another node, or an
  entry in a block's ``borrowed`` list): a /32 via B on every node but B, so the owner's
  blackhole and the other nodes' block routes never swallow it;
* with BGP on (``bgp=True``, Calico's ``bird`` backend), remote routes -- blocks and borrowed
  /32s -- of native pools that BGP exports are BIRD's (``IPPool.routed_by_bgp``, which the BIRD
  configuration's kernel filter mirrors): felix leaves them out, and keeps local routes,
  blackholes and every encapsulated or unexported pool.

A block's owner is its ``affinity``; only when no IPAMBlock exists for a CIDR does a *confirmed*
BlockAffinity stand in (the BGP-style view BIRD would use).  Remote routes need the containing
IP pool to choose an encapsulation; without one the destination is reported as unresolved, as
is a route whose node is unknown or has no address.  Disabled pools still route: disabling a
pool only stops new allocations and must not cut off the pods already in it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from felix.model import (
    AFFINITY,
    BLOCK,
    NODE,
    POOL,
    WORKLOAD,
    Block,
    BlockAffinity,
    Intake,
    IPPool,
    Net,
    Node,
    WorkloadEndpoint,
    parse_kv,
    parse_net,
)
from felix.netindex import NO_NETS, Lpm, Within

__all__ = [
    "DEV_IPIP",
    "DEV_VXLAN",
    "DEV_VXLAN_V6",
    "Neighbor",
    "Route",
    "RouteCalculator",
    "RouteDelta",
    "encap_overhead",
]

DEV_IPIP = "tunl0"
DEV_VXLAN = "vxlan.calico"
DEV_VXLAN_V6 = "vxlan-v6.calico"


def encap_overhead(encap: str, version: int = 4) -> int:
    """Bytes an encapsulation adds: IP-in-IP 20, VXLAN 50 over IPv4 and 70 over IPv6."""
    if encap == "ipip":
        return 20
    if encap == "vxlan":
        return 50 if version == 4 else 70
    return 0


@dataclass(frozen=True, slots=True)
class Route:
    dst: str
    type: str = "unicast"  # "unicast" | "blackhole"
    dev: str | None = None
    gateway: str | None = None
    onlink: bool = False
    scope: str = "universe"  # "link" | "universe"
    mtu: int | None = None
    encap: str = "none"  # "none" | "ipip" | "vxlan"


class Neighbor(NamedTuple):
    """What a remote VTEP needs: ARP/NDP ``vtep ip -> mac`` and FDB ``mac -> node ip``."""

    mac: str
    node_ip: str


@dataclass(slots=True)
class RouteDelta:
    """Changes caused by one ``apply``: upserts by destination, removals, neighbour changes."""

    routes: dict[str, Route] = field(default_factory=dict)
    removed: set[str] = field(default_factory=set)
    neighbors: dict[str, Neighbor] = field(default_factory=dict)
    neighbors_removed: set[str] = field(default_factory=set)
    malformed: list[tuple[str, str]] = field(default_factory=list)  # (key, reason), skipped

    def __bool__(self) -> bool:
        return bool(self.routes or self.removed or self.neighbors or self.neighbors_removed)

    def merge(self, later: RouteDelta) -> None:
        """Fold a later delta into this one (to coalesce batches before programming)."""
        for dst, r in later.routes.items():
            self.routes[dst] = r
            self.removed.discard(dst)
        for dst in later.removed:
            self.routes.pop(dst, None)
            self.removed.add(dst)
        for ip, n in later.neighbors.items():
            self.neighbors[ip] = n
            self.neighbors_removed.discard(ip)
        for ip in later.neighbors_removed:
            self.neighbors.pop(ip, None)
            self.neighbors_removed.add(ip)
        self.malformed.extend(later.malformed)


# --- the calculator ------------------------------------------------------------------------------


class RouteCalculator:
    """Incremental route calculation for node ``nodename`` (see the module note)."""

    def __init__(self, nodename: str, network_mtu: int = 1500, bgp: bool = False) -> None:
        self.nodename = nodename
        self.network_mtu = network_mtu
        self.bgp = bgp  # BIRD programs remote routes of pools it carries (felix.bgp); felix the rest
        # inputs
        self._eps: dict[str, WorkloadEndpoint] = {}
        self._eps_at: dict[Net, set[str]] = {}
        self._pools: dict[Net, IPPool] = {}
        self._pool_lpm = Lpm()
        self._blocks: dict[Net, Block] = {}
        self._affs: dict[Net, dict[str, BlockAffinity]] = {}
        self._known = Lpm()  # CIDRs with a block or an affinity
        self._borrowed_at: dict[Net, set[tuple[Net, str]]] = {}
        self._members = Within()  # endpoint addresses + borrowed addresses
        self._nodes: dict[str, Node] = {}
        self._vtep_nodes: dict[str, set[str]] = {}
        # outputs
        self._routes: dict[Net, Route] = {}
        self._unresolved: dict[Net, str] = {}
        self._neighbors: dict[str, Neighbor] = {}
        # dependencies: destination -> the remote node its route was computed from
        self._dep: dict[Net, str] = {}
        self._deps_of: dict[str, set[Net]] = {}
        self._intake = Intake(parse_kv)  # parses and counts updates (malformed values make keys absent)
        self.recomputed = 0

    # --- public API --------------------------------------------------------------------------

    def apply(self, kvs: Iterable[Sequence[Any]]) -> RouteDelta:
        """Apply ``(key, value-bytes-or-None)`` updates (``protocol.KV`` works too)."""
        delta = RouteDelta()
        dirty: set[Net] = set()
        vteps: set[str] = set()
        for p in self._intake(kvs, delta.malformed):
            if p.kind == WORKLOAD:
                self._on_workload(p.ident, p.record, dirty)
            elif p.kind == BLOCK:
                self._on_block(p.ident, p.record, dirty)
            elif p.kind == AFFINITY:
                self._on_affinity(p.ident, p.record, dirty)
            elif p.kind == POOL:
                self._on_pool(p.ident, p.record, dirty)
            elif p.kind == NODE:
                self._on_node(p.ident, p.record, dirty, vteps)
        for d in dirty:
            self._recompute(d, delta)
        for ip in vteps:
            n = self._neighbor(ip)
            old = self._neighbors.get(ip)
            if n is None:
                if old is not None:
                    del self._neighbors[ip]
                    delta.neighbors_removed.add(ip)
            elif n != old:
                self._neighbors[ip] = n
                delta.neighbors[ip] = n
        return delta

    @property
    def updates(self) -> int:
        return self._intake.updates

    @property
    def ignored(self) -> int:
        return self._intake.ignored

    @property
    def malformed(self) -> int:
        return self._intake.malformed

    def desired(self) -> dict[str, Route]:
        return {r.dst: r for r in self._routes.values()}

    def desired_neighbors(self) -> dict[str, Neighbor]:
        return dict(self._neighbors)

    def node(self, name: str) -> Node | None:
        """The Node record typha sent for ``name``, if any."""
        return self._nodes.get(name)

    def pools(self) -> list[IPPool]:
        return list(self._pools.values())

    def unresolved(self) -> dict[str, str]:
        """Destinations that should have a route but cannot yet, with the reason."""
        return {str(d): why for d, why in self._unresolved.items()}

    # --- index maintenance ---------------------------------------------------------------------

    def _on_workload(self, key: str, ep: WorkloadEndpoint | None, dirty: set[Net]) -> None:
        old = self._eps.pop(key, None)
        if old is not None:
            for n in old.nets:
                keys = self._eps_at[n]
                keys.discard(key)
                if not keys:
                    del self._eps_at[n]
                self._members.remove(n)
                dirty.add(n)
        if ep is not None:
            self._eps[key] = ep
            for n in ep.nets:
                self._eps_at.setdefault(n, set()).add(key)
                self._members.add(n)
                dirty.add(n)

    def _sync_known(self, c: Net) -> None:
        known = c in self._blocks or c in self._affs
        if known and c not in self._known:
            self._known.add(c)
            self._members.add_plen(c.version, c.plen)
        elif not known and c in self._known:
            self._known.remove(c)
            self._members.remove_plen(c.version, c.plen)

    def _inside(self, c: Net) -> Iterable[Net]:
        return self._members.within(c) if c in self._known else NO_NETS

    def _on_block(self, c: Net, blk: Block | None, dirty: set[Net]) -> None:
        dirty.update(self._inside(c))  # their owner may change...
        old = self._blocks.pop(c, None)
        if old is not None:
            for ordinal, node, _ in old.borrowed:
                ip = c.host(ordinal)
                entries = self._borrowed_at[ip]
                entries.discard((c, node))
                if not entries:
                    del self._borrowed_at[ip]
                self._members.remove(ip)
                dirty.add(ip)
        if blk is not None:
            self._blocks[c] = blk
            for ordinal, node, _ in blk.borrowed:
                ip = c.host(ordinal)
                self._borrowed_at.setdefault(ip, set()).add((c, node))
                self._members.add(ip)
                dirty.add(ip)
        self._sync_known(c)
        dirty.add(c)
        dirty.update(self._inside(c))  # ...both those inside before and after

    def _on_affinity(self, ident: tuple[str, Net], aff: BlockAffinity | None, dirty: set[Net]) -> None:
        node, c = ident
        dirty.update(self._inside(c))
        affs = self._affs.get(c)
        if affs is not None:
            affs.pop(node, None)
        if aff is not None:
            self._affs.setdefault(c, {})[node] = aff
        elif affs is not None and not affs:
            del self._affs[c]
        self._sync_known(c)
        dirty.add(c)
        dirty.update(self._inside(c))

    def _on_pool(self, p: Net, pool: IPPool | None, dirty: set[Net]) -> None:
        if self._pools.pop(p, None) is not None:
            self._pool_lpm.remove(p)
        if pool is not None:
            self._pools[p] = pool
            self._pool_lpm.add(p)
        # Rare and genuinely wide: every block and address in the pool may change encapsulation.
        dirty.update(n for n in self._members if p.contains(n))
        dirty.update(c for c in self._known.items if p.contains(c))

    def _on_node(self, name: str, node: Node | None, dirty: set[Net], vteps: set[str]) -> None:
        old = self._nodes.get(name)
        if old == node:
            return
        if node is None:
            del self._nodes[name]
        else:
            self._nodes[name] = node
        for n, add in ((old, False), (node, True)):
            if n is None:
                continue
            for ip in (n.vxlan_tunnel_addr, n.vxlan_tunnel_addr_v6):
                if ip is None:
                    continue
                vteps.add(ip)
                names = self._vtep_nodes.setdefault(ip, set())
                if add:
                    names.add(name)
                else:
                    names.discard(name)
                    if not names:
                        del self._vtep_nodes[ip]
        if name == self.nodename:

            def subnets(n: Node | None) -> tuple[Net | None, Net | None]:
                return (n.ipv4_subnet, n.ipv6_subnet) if n else (None, None)

            if subnets(old) != subnets(node):
                dirty.update(self._dep)  # every CrossSubnet decision may move
        else:
            dirty.update(self._deps_of.get(name, ()))

    # --- computation -----------------------------------------------------------------------------

    def _recompute(self, d: Net, delta: RouteDelta) -> None:
        self.recomputed += 1
        route, reason, dep = self._compute(d)
        old_dep = self._dep.get(d)
        if old_dep != dep:
            if old_dep is not None:
                deps = self._deps_of[old_dep]
                deps.discard(d)
                if not deps:
                    del self._deps_of[old_dep]
                del self._dep[d]
            if dep is not None:
                self._dep[d] = dep
                self._deps_of.setdefault(dep, set()).add(d)
        if reason is None:
            self._unresolved.pop(d, None)
        else:
            self._unresolved[d] = reason
        old = self._routes.get(d)
        if route is None:
            if old is not None:
                del self._routes[d]
                delta.routes.pop(old.dst, None)
                delta.removed.add(old.dst)
        elif route != old:
            self._routes[d] = route
            delta.removed.discard(route.dst)
            delta.routes[route.dst] = route

    def _owner(self, c: Net) -> str | None:
        blk = self._blocks.get(c)
        if blk is not None:
            return blk.affinity
        affs = self._affs.get(c)
        if affs:
            confirmed = [n for n, a in affs.items() if a.state == "confirmed"]
            if confirmed:
                return min(confirmed)
        return None

    def _owner_of(self, d: Net) -> str | None:
        c = self._known.lookup(d)
        return self._owner(c) if c is not None else None

    def _compute(self, d: Net) -> tuple[Route | None, str | None, str | None]:
        """(route, unresolved reason, remote node used) for destination ``d``; pure."""
        me = self.nodename
        keys = self._eps_at.get(d)
        if keys:
            local = [k for k in keys if self._eps[k].node == me]
            if local:  # our own workload wins over anything else at this address
                ep = self._eps[min(local)]
                return Route(str(d), dev=ep.iface, scope="link"), None, None
            ep = self._eps[min(keys)]
            if self._owner_of(d) != ep.node:  # borrowed: the block's owner is someone else
                return self._via(d, ep.node)
        else:
            entries = self._borrowed_at.get(d)
            if entries:
                _, node = min(entries)
                if node != me:
                    return self._via(d, node)
        if d in self._known:
            owner = self._owner(d)
            if owner == me:
                return Route(str(d), type="blackhole"), None, None
            if owner is not None:
                return self._via(d, owner)
        return None, None, None

    def _via(self, d: Net, name: str) -> tuple[Route | None, str | None, str | None]:
        dst = str(d)
        pool_net = self._pool_lpm.lookup(d)
        if pool_net is None:
            return None, f"no IP pool contains {dst}", name
        if self.bgp and self._pools[pool_net].routed_by_bgp:
            return None, None, None  # one owner per route: BIRD's, learned over BGP (proto bird)
        node = self._nodes.get(name)
        if node is None:
            return None, f"node {name} is unknown", name
        v = d.version
        node_ip = node.ipv4_ip if v == 4 else node.ipv6_ip
        if node_ip is None:
            return None, f"node {name} has no IPv{v} address", name
        encap = self._encap(self._pools[pool_net], node, v)
        if encap == "vxlan":
            vtep, mac = (
                (node.vxlan_tunnel_addr, node.vxlan_mac) if v == 4 else (node.vxlan_tunnel_addr_v6, node.vxlan_mac_v6)
            )
            if vtep is None or mac is None:
                return None, f"node {name} has no IPv{v} VXLAN tunnel address/MAC", name
            return (
                Route(
                    dst,
                    dev=DEV_VXLAN if v == 4 else DEV_VXLAN_V6,
                    gateway=vtep,
                    onlink=True,
                    mtu=self.network_mtu - encap_overhead("vxlan", v),
                    encap="vxlan",
                ),
                None,
                name,
            )
        if encap == "ipip":
            return (
                Route(
                    dst,
                    dev=DEV_IPIP,
                    gateway=node_ip,
                    onlink=True,
                    mtu=self.network_mtu - encap_overhead("ipip"),
                    encap="ipip",
                ),
                None,
                name,
            )
        return Route(dst, gateway=node_ip), None, name

    def _encap(self, pool: IPPool, node: Node, v: int) -> str:
        # VXLAN first: a pool with both modes set is invalid in Calico; be deterministic anyway.
        modes = (("vxlan", pool.vxlan_mode), ("ipip", pool.ipip_mode)) if v == 4 else (("vxlan", pool.vxlan_mode),)
        for encap, mode in modes:
            if mode == "Always" or (mode == "CrossSubnet" and not self._same_subnet(node, v)):
                return encap
        return "none"

    def _same_subnet(self, node: Node, v: int) -> bool:
        me = self._nodes.get(self.nodename)
        subnet = (me.ipv4_subnet if v == 4 else me.ipv6_subnet) if me else None
        ip = node.ipv4_ip if v == 4 else node.ipv6_ip
        if subnet is None or ip is None:
            return False  # unknown: encapsulate, which works across subnets too
        return subnet.contains(parse_net(ip))

    def _neighbor(self, ip: str) -> Neighbor | None:
        for name in sorted(self._vtep_nodes.get(ip, ())):
            if name == self.nodename:
                continue
            n = self._nodes[name]
            mac, under = (n.vxlan_mac, n.ipv4_ip) if ip == n.vxlan_tunnel_addr else (n.vxlan_mac_v6, n.ipv6_ip)
            if mac and under:
                return Neighbor(mac, under)
        return None
