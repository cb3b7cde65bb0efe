"""One node's BIRD 2 configuration, rendered from the bgp syncer's view. Pure: same view, same bytes.

Design note
-----------
:func:`render` is Calico's confd templates (bird.cfg, bird_aggr.cfg, bird_ipam.cfg) re-thought as
one Python function over :class:`~felix.bgp.view.BgpView`, with these decisions:

* **Who programs what.** felix keeps the kernel's local workload routes, its own blocks'
  blackholes, and every route of an encapsulated (VXLAN / IP-in-IP) pool or of a pool with
  ``disableBGPExport``. BIRD programs only what it *learned over BGP* for native pools (and,
  as in Calico, prefixes outside every pool that peers send). The kernel export filter says
  exactly that, and ``felix.calc`` stops programming the same set, so every route has one owner.
  BIRD's routes are ``proto bird``, felix's ``proto 80``: each side can tell them apart.
* **What a node originates.** Its confirmed blocks and the borrowed addresses it hosts (an IPAM
  block lists them; seed 000), as ``blackhole`` routes of one static protocol, exported to BGP
  only. Naming that protocol in the export filter -- rather than listing blocks there, as
  Calico's ``calico_aggr`` does -- keeps the filters independent of blocks, so a new block
  reconfigures one static protocol and no session or filter.
* **Next hops.** Sessions are multihop with ``gateway recursive`` (Calico's choice), resolved
  through the connected subnets (``protocol direct``) and the infrastructure routes the kernel
  protocol learns (default route across a routed fabric). Without that igp table every iBGP
  route is ``unreachable`` in BIRD 2.
* **Peers.** Mesh (when ``nodeToNodeMeshEnabled`` and this node is no route reflector) with every
  other non-reflector node, one direction per pair (the lower address connects, the higher
  listens: no collision races); BGPPeers by ``node`` / ``nodeSelector`` and ``peerIP`` /
  ``peerSelector``, and -- as Calico's confd does -- the far end of a peering between two of our
  own nodes, so a selector peering needs configuring on one side only. One session per address,
  in Calico's precedence: global BGPPeers, node-specific ones, reverse sides, then the mesh (Calico
  would render a mesh session *and* an explicit one to the same node). A route reflector (``routeReflectorClusterID``) marks same-AS peers outside its
  cluster ``rr client`` and re-advertises BGP-learned pool routes on iBGP sessions; other nodes
  only ever advertise their own routes, so the fabric never learns a hairpin path.
* **Timers**: Calico's -- connect delay 1 s, retry 3 s, error wait 5-60 s, graceful restart
  (120 s on the mesh), kernel and device scans every 2 s; the kernel routes persist when BIRD
  stops, so a restarting felix does not cut traffic.

Protocol names follow Calico (``Mesh_10_0_0_2``, ``Global_...``, ``Node_...``), so what operators
know from ``birdc show protocols`` on calico-node still reads the same. Anything user-supplied that
reaches the text (addresses, AS numbers, cluster IDs) is validated first; names only appear in
comments, stripped to a safe alphabet. IPv4 only, for now.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from felix.model import Net, parse_addr, parse_net

from .view import BgpNode, BgpPeer, BgpView

__all__ = ["MESH_RESTART_TIME", "Peer", "Rendered", "render"]

MESH_RESTART_TIME = 120
_KIND_ORDER = {"global": 0, "node": 1, "mesh": 2}
_SAFE = re.compile(r"[^A-Za-z0-9_.:/@=,() -]")


@dataclass(frozen=True, slots=True)
class Peer:
    """One BGP session this node's BIRD should have."""

    name: str  # BIRD protocol name
    kind: str  # "mesh" | "global" | "node"
    address: str
    as_number: int
    source: str  # where it comes from, for /status and the config's comments
    port: int | None = None
    passive: bool = False
    rr_client: bool = False
    reflect: bool = False
    keep_next_hop: bool = False
    allowed_local_as: int = 0
    restart_time: int | None = None
    use_node_ip: bool = True


@dataclass(frozen=True, slots=True)
class Rendered:
    """The configuration (None when this node cannot run BGP yet), its peers, and what was skipped."""

    config: str | None
    peers: tuple[Peer, ...] = ()
    problems: tuple[str, ...] = ()
    as_number: int | None = None
    route_reflector: str | None = None  # cluster ID when this node reflects
    originated: tuple[str, ...] = ()


def _comment(text: str) -> str:
    return _SAFE.sub("?", text)[:200]


def _ip_key(ip: str) -> tuple[int, int]:
    n = parse_net(ip)
    return n.version, n.addr


def _valid_cluster_id(text: str | None) -> bool:
    if not text:
        return False
    try:
        net, _ = parse_addr(text)
    except ValueError:
        return False
    return net.version == 4 and net.plen == 32 and "/" not in text


def _local_side(view: BgpView, bp: BgpPeer) -> list[BgpNode]:
    """The nodes a BGPPeer configures: ``node``, else those ``nodeSelector`` matches, else all."""
    nodes = sorted(view.nodes.values(), key=lambda n: n.name)
    if bp.node is not None:
        return [n for n in nodes if n.name == bp.node]
    if bp.node_selector is not None:
        return [n for n in nodes if bp.node_selector.matches(n.labels)]
    return nodes


def _on_local_side(view: BgpView, bp: BgpPeer, me: BgpNode) -> bool:
    if bp.node is not None:
        return bp.node == me.name
    return bp.node_selector is None or bp.node_selector.matches(me.labels)


def _node_target(view: BgpView, n: BgpNode) -> tuple[str, int | None, int, str | None] | None:
    if n.ipv4 is None:
        return None
    port = view.listen_port(n.name)
    return n.ipv4, None if port == 179 else port, view.node_as(n), n.rr_cluster_id


def _remote_side(view: BgpView, bp: BgpPeer) -> list[tuple[str, int | None, int, str | None, str]]:
    """Whom a BGPPeer's nodes peer with: (address, port, AS, their cluster ID, which node)."""
    out: list[tuple[str, int | None, int, str | None, str]] = []
    if bp.peer_selector is not None:
        for n in sorted(view.nodes.values(), key=lambda n: n.name):
            t = _node_target(view, n) if bp.peer_selector.matches(n.labels) else None
            if t is not None:
                out.append((*t, n.name))
    elif bp.peer_ip is not None and ":" not in bp.peer_ip:  # IPv6 peers: not rendered yet
        assert bp.as_number is not None  # the view rejects peerIP without asNumber
        node = _calico_node_at(view, bp)
        port = bp.peer_port
        if port is None and node is not None and view.listen_port(node.name) != 179:
            port = view.listen_port(node.name)
        out.append((bp.peer_ip, port, bp.as_number, node.rr_cluster_id if node else None, node.name if node else ""))
    return out


def _calico_node_at(view: BgpView, bp: BgpPeer) -> BgpNode | None:
    """The node a peerIP BGPPeer points at (same address and AS), if it is one of ours."""
    node = view.node_by_ip(bp.peer_ip) if bp.peer_ip else None
    if node is None or view.node_as(node) != bp.as_number:
        return None
    if bp.peer_port is not None and view.listen_port(node.name) != bp.peer_port:
        return None
    return node


def _candidates(
    view: BgpView, me: BgpNode, my_ip: str, my_as: int, cluster: str | None, problems: list[str]
) -> list[Peer]:
    """Every session the datastore asks for, in Calico's precedence order (first one per address wins):
    global BGPPeers, node-specific ones, the reverse side of selector/node peerings, then the mesh."""
    out: list[Peer] = []

    def add(kind: str, bp: BgpPeer, target: tuple[str, int | None, int, str | None, str], reverse: bool) -> None:
        ip, port, peer_as, peer_cluster, node = target
        if ip == my_ip:
            return  # never peer with ourselves
        if bp.password:
            problems.append(f"BGPPeer {bp.name}: password secrets are not in the bgp syncer; peer {ip} skipped")
            return
        internal = peer_as == my_as
        via = f" (node {node}" + (", reverse side)" if reverse else ")") if node else ""
        out.append(
            Peer(
                name=f"{kind.capitalize()}_{ip.replace('.', '_')}" + (f"_port_{port}" if port else ""),
                kind=kind,
                address=ip,
                as_number=peer_as,
                source=f"BGPPeer {bp.name}{via}",
                port=port,
                rr_client=internal and cluster is not None and peer_cluster != cluster,
                reflect=internal and cluster is not None,
                keep_next_hop=bp.keep_next_hop and not internal,
                allowed_local_as=bp.allowed_local_as,
                restart_time=bp.restart_time,
                use_node_ip=bp.use_node_ip,
            )
        )

    bgp_peers = sorted(view.peers.values(), key=lambda p: p.name)
    for global_pass in (True, False):
        for bp in bgp_peers:
            if bp.is_global == global_pass and _on_local_side(view, bp, me):
                for target in _remote_side(view, bp):
                    add("global" if global_pass else "node", bp, target, False)
    for bp in bgp_peers:  # peerings are symmetric between our own nodes: configure the far end too
        mine = bp.peer_selector.matches(me.labels) if bp.peer_selector is not None else _calico_node_at(view, bp) is me
        if not mine:
            continue
        for n in _local_side(view, bp):
            t = _node_target(view, n)
            if t is not None:
                add("node", bp, (*t, n.name), True)
    if cluster is None and view.mesh_enabled():
        for other in view.nodes.values():
            t = _node_target(view, other)
            if t is None or other.name == me.name or t[0] == my_ip or _valid_cluster_id(other.rr_cluster_id):
                continue  # route reflectors are peered explicitly, never by the mesh
            out.append(
                Peer(
                    name="Mesh_" + t[0].replace(".", "_"),
                    kind="mesh",
                    address=t[0],
                    as_number=t[2],
                    source=f"node-to-node mesh (node {other.name})",
                    port=t[1],
                    passive=_ip_key(t[0]) > _ip_key(my_ip),
                    restart_time=MESH_RESTART_TIME,
                )
            )
    return out


def _dedupe(candidates: Iterable[Peer]) -> tuple[Peer, ...]:
    """One session per (address, port): the first candidate wins; sorted for a stable rendering."""
    chosen: dict[tuple[str, int | None], Peer] = {}
    for p in candidates:
        chosen.setdefault((p.address, p.port), p)
    return tuple(sorted(chosen.values(), key=lambda p: (_KIND_ORDER[p.kind], _ip_key(p.address), p.port or 179)))


def _originated(view: BgpView, me: BgpNode) -> tuple[list[tuple[Net, str]], list[Net], list[Net]]:
    """(routes this node originates with a comment, exported pools, felix-owned pools); IPv4 only."""
    exported = sorted(c for c, p in view.pools.items() if c.version == 4 and p.routed_by_bgp)
    felix_owned = sorted(c for c, p in view.pools.items() if c.version == 4 and not p.routed_by_bgp)

    def exported_pool(net: Net) -> bool:
        return any(p.contains(net) for p in exported)

    routes: list[tuple[Net, str]] = []
    for cidr, aff in sorted(view.affinities.get(me.name, {}).items()):
        if cidr.version == 4 and aff.state == "confirmed" and exported_pool(cidr):
            routes.append((cidr, "block affine to this node"))
    for ip, block in sorted(view.borrowed.get(me.name, {}).items()):
        if ip.version == 4 and exported_pool(ip):
            routes.append((ip, f"borrowed from block {block}"))
    return routes, exported, felix_owned


def _prefix_fn(name: str, nets: list[Net], what: str) -> list[str]:
    body = "net ~ [ " + ", ".join(f"{n}+" for n in nets) + " ]" if nets else "false"
    return [f"# {what}", f"function {name}() {{", f"  return {body};", "}", ""]


def _debug(severity: str) -> str:
    if severity == "debug":
        return "debug all;"
    if severity in ("info", ""):
        return "debug { states };"
    return "debug off;"


def _peer_block(p: Peer, source_ip: str, cluster: str | None) -> list[str]:
    lines = [f"# {_comment(p.source)}", f"protocol bgp {p.name} from bgp_template {{"]
    lines.append(f"  neighbor {p.address}" + (f" port {p.port}" if p.port else "") + f" as {p.as_number};")
    if p.use_node_ip:
        lines.append(f"  source address {source_ip};")
    if p.passive:
        lines.append("  passive on;  # the peer's address is higher: it connects, one session per pair")
    if p.restart_time:
        lines.append(f"  graceful restart time {p.restart_time};")
    if p.rr_client:
        lines += ["  rr client;", f"  rr cluster id {cluster};"]
    if p.allowed_local_as:
        lines.append(f"  allow local as {p.allowed_local_as};")
    channel = []
    if p.reflect:
        channel.append("    export filter { calico_export_to_bgp_peers(true); };  # reflect learned pool routes")
    if p.keep_next_hop:
        channel.append("    next hop keep;")
    if channel:
        lines += ["  ipv4 {", *channel, "  };"]
    return [*lines, "}", ""]


def render(view: BgpView, nodename: str) -> Rendered:
    """This node's BIRD configuration; ``config`` is None (with a reason) if it cannot have one yet."""
    me = view.nodes.get(nodename)
    if me is None:
        return Rendered(None, problems=(f"node {nodename} is not in the bgp syncer's view",))
    if me.ipv4 is None:
        return Rendered(None, problems=(f"node {nodename} has no IPv4 address",))
    my_ip = me.ipv4
    problems: list[str] = []
    my_as = view.node_as(me)
    cluster = me.rr_cluster_id if _valid_cluster_id(me.rr_cluster_id) else None
    if me.rr_cluster_id and cluster is None:
        problems.append(f"node {nodename}: routeReflectorClusterID {me.rr_cluster_id!r} is not an IPv4 address")
    peers = _dedupe(_candidates(view, me, my_ip, my_as, cluster, problems))
    routes, exported, felix_owned = _originated(view, me)
    port = view.listen_port(nodename)
    as_source = (
        "this node's" if me.as_number else "BGPConfiguration's" if view.config("default").as_number else "default"
    )

    out = [
        f"# BIRD 2 configuration for node {_comment(nodename)}, rendered by pyfelix from typha's bgp syncer.",
        "# Do not edit: felix rewrites it on every change (docs/bgp.md).",
        f"# AS {my_as} ({as_source}); node-to-node mesh "
        + ("off (route reflector)" if cluster else "on" if view.mesh_enabled() else "off")
        + (f"; route reflector, cluster {cluster}" if cluster else "")
        + f"; {len(peers)} peers.",
        "",
        f"router id {my_ip};",
        "log stderr all;",
        "",
        "protocol device {",
        "  scan time 2;",
        "}",
        "",
        "# Connected subnets: they resolve BGP next hops (gateway recursive). Never exported anywhere.",
        "protocol direct {",
        "  " + _debug(view.log_severity(nodename)),
        "  ipv4;",
        '  interface -"cali*", -"kube-ipvs*", "*";',
        "}",
        "",
        *_prefix_fn("calico_exported_pool", exported, "Native IP pools that BGP exports: BIRD routes them."),
        *_prefix_fn("calico_felix_pool", felix_owned, "Encapsulated or not exported pools: felix routes them."),
        "# Routes this node originates, to BGP peers only (in the kernel, blackholes and pods are felix's).",
        "protocol static calico_local {",
        "  ipv4;",
        *(f"  route {net} blackhole;  # {why}" for net, why in routes),
        "}",
        "",
        "# Own routes to every peer; routes learned over BGP only where this node reflects.",
        "function calico_export_to_bgp_peers(bool reflect) {",
        '  if proto = "calico_local" then accept;',
        "  if reflect && source = RTS_BGP && calico_exported_pool() then accept;",
        "  reject;",
        "}",
        "",
        "# Into the kernel: only what BGP learned, never a pool felix owns.",
        "filter calico_kernel_programming {",
        "  if source != RTS_BGP then reject;",
        "  if calico_felix_pool() then reject;",
        "  accept;",
        "}",
        "",
        "protocol kernel {",
        "  ipv4 {",
        "    # Learn infrastructure routes (a default route resolves next hops across a routed fabric).",
        "    import filter { if calico_exported_pool() || calico_felix_pool() then reject; accept; };",
        "    export filter calico_kernel_programming;",
        "  };",
        "  learn;",
        "  persist;  # keep the routes when BIRD stops: a restarting felix does not cut traffic",
        "  scan time 2;",
        "  graceful restart;",
        "  merge paths on;",
        "}",
        "",
        "template bgp bgp_template {",
        "  " + _debug(view.log_severity(nodename)),
        '  description "Connection to BGP peer";',
        "  local" + (f" port {port}" if port != 179 else "") + f" as {my_as};",
        "  multihop;",
        "  ipv4 {",
        "    gateway recursive;",
        "    import all;",
        "    export filter { calico_export_to_bgp_peers(false); };",
        "    add paths on;",
        "  };",
        "  graceful restart;",
        "  connect delay time 1;",
        "  connect retry time 3;",
        "  error wait time 5, 60;",
        "}",
        "",
    ]
    if cluster:
        out.append(f"# This node reflects routes for cluster {cluster}.")
        out.append("")
    for p in peers:
        out += _peer_block(p, my_ip, cluster)
    if not peers:
        out += ["# No BGP peers.", ""]
    return Rendered(
        config="\n".join(out),
        peers=peers,
        problems=tuple(problems),
        as_number=my_as,
        route_reflector=cluster,
        originated=tuple(str(n) for n, _ in routes),
    )
