"""The bgp syncer's state as felix's BGP side needs it: typed, validated, indexed by node.

Design note
-----------
Typha's ``bgp`` syncer carries Nodes (address, labels, AS number, route reflector cluster ID),
BGPPeers, BGPConfigurations, IP pools, block affinities and IPAM blocks (for borrowed addresses).
:class:`BgpView` applies those key/value updates and keeps exactly what rendering reads; it does no
I/O and knows nothing of BIRD. Pools, blocks, affinities and node addresses are parsed by
:mod:`felix.model` (one parser for the route calculation and for BGP); this module adds the
BGP-only fields and resources.

Rendering is a pure function of the whole view (``felix.bgp.render``), so the view does not try to
say *what* changed: BIRD's configuration for one node is small, re-rendering it per batch costs
well under a millisecond at a few hundred nodes, and comparing the bytes says whether BIRD needs
to hear about it. An incremental renderer would be faster at 5,000 nodes in a full mesh -- a
topology Calico itself advises against above ~100 nodes.

A value that cannot be used (bad selector, AS number out of range) makes its key absent, counted
and reported, as in :mod:`felix.model`: state must follow the datastore, not the order of updates.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from felix.model import (
    AFFINITY,
    BLOCK,
    NODE,
    POOL,
    Block,
    BlockAffinity,
    IPPool,
    MalformedUpdate,
    Net,
    Node,
    load_object,
    parse_addr,
    parse_kv,
)
from felix.policy.selector import Selector, SelectorError
from felix.policy.selector import parse as parse_selector
from protocol.keys import ResourceKey, parse_key

__all__ = [
    "DEFAULT_AS",
    "BgpConfig",
    "BgpNode",
    "BgpPeer",
    "BgpView",
    "parse_as_number",
]

DEFAULT_AS = 64512  # Calico's default when neither the node nor BGPConfiguration sets one

_DURATION = re.compile(r"(\d+(?:\.\d+)?)(h|ms|m|s)")


@dataclass(frozen=True, slots=True)
class BgpNode:
    name: str
    ipv4: str | None  # the node's own address (BGP source address and router id)
    ipv4_subnet: Net | None
    as_number: int | None  # None: the global default applies
    rr_cluster_id: str | None  # set on route reflectors
    labels: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class BgpPeer:
    """A BGPPeer: which nodes it applies to, and whom they peer with (an address or a node selector)."""

    name: str
    node: str | None = None
    node_selector: Selector | None = None
    peer_ip: str | None = None
    peer_port: int | None = None
    as_number: int | None = None
    peer_selector: Selector | None = None
    keep_next_hop: bool = False
    allowed_local_as: int = 0
    use_node_ip: bool = True  # sourceAddress UseNodeIP (default) vs None
    restart_time: int | None = None  # from maxRestartTime, seconds
    password: bool = False  # a password is set (its secret is not in the bgp syncer)

    @property
    def is_global(self) -> bool:
        return self.node is None and self.node_selector is None


@dataclass(frozen=True, slots=True)
class BgpConfig:
    as_number: int | None = None
    mesh: bool | None = None  # nodeToNodeMeshEnabled
    listen_port: int | None = None
    log_severity: str | None = None


def parse_as_number(v: Any) -> int:
    """An AS number: an int, a decimal string, or Calico's dotted form ``"1.10"`` (= 65546)."""
    if isinstance(v, bool):
        raise ValueError(f"bad AS number {v!r}")
    if isinstance(v, str):
        hi, dot, lo = v.strip().partition(".")
        if dot and hi.isdigit() and lo.isdigit() and int(hi) < 65536 and int(lo) < 65536:
            return int(hi) * 65536 + int(lo)
        if not v.strip().isdigit():
            raise ValueError(f"bad AS number {v!r}")
        v = int(v)
    if not isinstance(v, int) or not 0 < v < 1 << 32:
        raise ValueError(f"AS number {v!r} out of range")
    return v


def _duration_seconds(text: Any) -> int:
    """Go duration ("120s", "2m30s") -> whole seconds (BIRD's graceful restart time)."""
    if not isinstance(text, str) or not text:
        raise ValueError(f"bad duration {text!r}")
    pos, total = 0, 0.0
    for m in _DURATION.finditer(text):
        if m.start() != pos:
            break
        total += float(m.group(1)) * {"h": 3600, "m": 60, "s": 1, "ms": 0.001}[m.group(2)]
        pos = m.end()
    if pos != len(text) or not 0 < total < 65536:
        raise ValueError(f"bad duration {text!r}")
    return max(1, int(total))


def _selector(key: str, v: Mapping[str, Any], name: str) -> Selector | None:
    text = v.get(name)
    if text is None or text == "":
        return None
    try:
        return parse_selector(text)
    except SelectorError as e:
        raise MalformedUpdate(key, f"{name}: {e}") from None


def _peer(key: str, name: str, v: Mapping[str, Any]) -> BgpPeer:
    peer_ip, port = None, None
    raw_ip = v.get("peerIP")
    try:
        if raw_ip:
            if not isinstance(raw_ip, str):
                raise ValueError("peerIP is not a string")
            host, port = raw_ip, None
            if raw_ip.count(":") == 1 or raw_ip.startswith("["):  # "ip:port" or "[v6]:port"
                host, _, port_s = raw_ip.rpartition(":")
                host, port = host.strip("[]"), int(port_s)
                if not 0 < port < 65536:
                    raise ValueError(f"bad port in peerIP {raw_ip!r}")
            net, peer_ip = parse_addr(host)
            if net.plen != (32 if net.version == 4 else 128):
                raise ValueError(f"peerIP {raw_ip!r} is not an address")
        as_number = parse_as_number(v["asNumber"]) if v.get("asNumber") not in (None, "", 0) else None
        restart = _duration_seconds(v["maxRestartTime"]) if v.get("maxRestartTime") else None
        allowed = int(v.get("numAllowedLocalASNumbers") or 0)
        if not 0 <= allowed <= 10:
            raise ValueError(f"numAllowedLocalASNumbers {allowed} out of range")
    except (ValueError, TypeError) as e:
        raise MalformedUpdate(key, str(e)) from None
    node = v.get("node") or None
    if node is not None and not isinstance(node, str):
        raise MalformedUpdate(key, "node is not a string")
    peer_selector = _selector(key, v, "peerSelector")
    if peer_ip is None and peer_selector is None:
        raise MalformedUpdate(key, "neither peerIP nor peerSelector is set")
    if peer_ip is not None and as_number is None:
        raise MalformedUpdate(key, "peerIP without asNumber")
    return BgpPeer(
        name=name,
        node=node,
        node_selector=_selector(key, v, "nodeSelector"),
        peer_ip=peer_ip,
        peer_port=port,
        as_number=as_number,
        peer_selector=peer_selector,
        keep_next_hop=bool(v.get("keepOriginalNextHop")),
        allowed_local_as=allowed,
        use_node_ip=v.get("sourceAddress", "UseNodeIP") != "None",
        restart_time=restart,
        password=bool(v.get("password")),
    )


def _config(key: str, v: Mapping[str, Any]) -> BgpConfig:
    try:
        as_number = parse_as_number(v["asNumber"]) if v.get("asNumber") not in (None, "", 0) else None
        port = v.get("listenPort")
        if port is not None and (not isinstance(port, int) or isinstance(port, bool) or not 0 < port < 65536):
            raise ValueError(f"bad listenPort {port!r}")
    except ValueError as e:
        raise MalformedUpdate(key, str(e)) from None
    mesh = v.get("nodeToNodeMeshEnabled")
    severity = v.get("logSeverityScreen")
    return BgpConfig(
        as_number=as_number,
        mesh=None if mesh is None else bool(mesh),
        listen_port=port,
        log_severity=severity if isinstance(severity, str) else None,
    )


def _bgp_node(key: str, node: Node, v: Mapping[str, Any]) -> BgpNode:
    labels = v.get("labels") or {}
    if not isinstance(labels, dict) or not all(isinstance(x, str) for kv in labels.items() for x in kv):
        raise MalformedUpdate(key, "labels is not a string map")
    try:
        as_number = parse_as_number(v["asNumber"]) if v.get("asNumber") not in (None, "", 0) else None
    except ValueError as e:
        raise MalformedUpdate(key, str(e)) from None
    rr = v.get("routeReflectorClusterID") or None
    return BgpNode(
        name=node.name,
        ipv4=node.ipv4_ip,
        ipv4_subnet=node.ipv4_subnet,
        as_number=as_number,
        rr_cluster_id=rr if isinstance(rr, str) else None,
        labels=labels,
    )


class BgpView:
    """Everything the BIRD configuration of any node depends on."""

    def __init__(self) -> None:
        self.nodes: dict[str, BgpNode] = {}
        self.peers: dict[str, BgpPeer] = {}
        self.configs: dict[str, BgpConfig] = {}
        self.pools: dict[Net, IPPool] = {}
        self.blocks: dict[Net, Block] = {}
        self.affinities: dict[str, dict[Net, BlockAffinity]] = {}  # node -> block -> affinity
        self.borrowed: dict[str, dict[Net, Net]] = {}  # node -> borrowed /32 -> its block
        self.malformed = 0

    def apply(self, kvs: Iterable[Sequence[Any]]) -> list[tuple[str, str]]:
        """Apply ``(key, value-or-None)`` updates; returns the (key, reason) of unusable ones."""
        bad: list[tuple[str, str]] = []
        for kv in kvs:
            key, value = kv[0], kv[1]
            try:
                self._apply_one(key, value)
            except MalformedUpdate as e:
                self.malformed += 1
                bad.append((key, e.reason))
                try:
                    self._apply_one(key, None)  # unusable: the key is absent
                except MalformedUpdate:
                    pass
        return bad

    def _apply_one(self, key: str, value: bytes | None) -> None:
        rk = parse_key(key) if key.startswith("/calico/resources/") else None
        if isinstance(rk, ResourceKey) and rk.plural in ("bgppeers", "bgpconfigurations"):
            table: dict = self.peers if rk.plural == "bgppeers" else self.configs
            if value is None:
                table.pop(rk.name, None)
            elif rk.plural == "bgppeers":
                table[rk.name] = _peer(key, rk.name, load_object(key, value))
            else:
                table[rk.name] = _config(key, load_object(key, value))
            return
        p = parse_kv(key, value)
        if p is None:
            return
        if p.kind == NODE:
            if p.record is None:
                self.nodes.pop(p.ident, None)
            else:
                self.nodes[p.ident] = _bgp_node(key, p.record, load_object(key, value or b""))
        elif p.kind == POOL:
            if p.record is None:
                self.pools.pop(p.ident, None)
            else:
                self.pools[p.ident] = p.record
        elif p.kind == AFFINITY:
            node, cidr = p.ident
            affs = self.affinities.setdefault(node, {})
            if p.record is None:
                affs.pop(cidr, None)
                if not affs:
                    del self.affinities[node]
            else:
                affs[cidr] = p.record
        elif p.kind == BLOCK:
            self._set_block(p.ident, p.record)

    def _set_block(self, cidr: Net, blk: Block | None) -> None:
        old = self.blocks.pop(cidr, None)
        if old is not None:
            for ordinal, node, _ in old.borrowed:
                hosted = self.borrowed[node]
                hosted.pop(cidr.host(ordinal), None)
                if not hosted:
                    del self.borrowed[node]
        if blk is not None:
            self.blocks[cidr] = blk
            for ordinal, node, _ in blk.borrowed:
                self.borrowed.setdefault(node, {})[cidr.host(ordinal)] = cidr

    # -- what rendering asks ---------------------------------------------------------------------

    def config(self, name: str) -> BgpConfig:
        return self.configs.get(name) or BgpConfig()

    def global_as(self) -> int:
        return self.config("default").as_number or DEFAULT_AS

    def node_as(self, node: BgpNode) -> int:
        return node.as_number or self.global_as()

    def mesh_enabled(self) -> bool:
        mesh = self.config("default").mesh
        return True if mesh is None else mesh

    def listen_port(self, nodename: str) -> int:
        return self.config(f"node.{nodename}").listen_port or self.config("default").listen_port or 179

    def log_severity(self, nodename: str) -> str:
        return (self.config(f"node.{nodename}").log_severity or self.config("default").log_severity or "Info").lower()

    def node_by_ip(self, ip: str) -> BgpNode | None:
        for n in self.nodes.values():
            if n.ipv4 == ip:
                return n
        return None
