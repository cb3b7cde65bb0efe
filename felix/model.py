"""Felix's view of the datastore: parse Typha key/value updates into typed records.

Design note
-----------
Felix receives ``(key, value)`` pairs from Typha, where ``value`` is canonical JSON bytes or
``None`` for a delete (see docs/datastore.md for the exact keys and values).  This module turns
the pairs the route calculation needs into small frozen records and ignores every other key.
Keys are parsed by the stream's key schema (``protocol.keys``), the same module typha builds them
with; this module only decides which kinds route calculation reads and parses their values.

Addresses are held as :class:`Net` -- ``(version, int address, prefix length)`` -- rather than
``ipaddress`` objects.  The calculation graph masks and hashes millions of these during a
snapshot; a tuple of ints hashes and compares in C, masks with one ``&`` and is parsed with
``inet_pton`` at a fraction of ``ipaddress``'s cost.

A value that cannot be used raises :class:`MalformedUpdate` (a ``ValueError``) naming the key.
The caller counts it and treats the key as absent: keeping the previous value instead would
make Felix's state depend on the order of updates rather than on the datastore's contents.
That rule, and the primitives every reader of the stream shares (a value's JSON object, a key the
schema rejects), are here once: :class:`Intake` is how the route and policy calculations take
updates in, :func:`load_object` and :func:`parse_update_key` serve them and the BGP view.
"""

from __future__ import annotations

import re
import socket
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Generic, NamedTuple, TypeVar

import orjson

from protocol.keys import (
    BlockAffinityKey,
    BlockKey,
    IPPoolKey,
    Key,
    MalformedKey,
    ResourceKey,
    WorkloadKey,
    parse_key,
)

__all__ = [
    "AFFINITY",
    "BLOCK",
    "NODE",
    "POOL",
    "WORKLOAD",
    "Block",
    "BlockAffinity",
    "IPPool",
    "Intake",
    "MalformedUpdate",
    "Net",
    "Node",
    "Parsed",
    "WorkloadEndpoint",
    "load_object",
    "parse_addr",
    "parse_kv",
    "parse_net",
    "parse_update_key",
]

WORKLOAD = "workload"
POOL = "pool"
BLOCK = "block"
AFFINITY = "affinity"
NODE = "node"

ENCAP_MODES = ("Never", "Always", "CrossSubnet")

# Linux interface names: at most 15 bytes, no '/', never '.' or '..'.  Checked here because the
# name ends up in /proc/sys paths and netlink requests.
_IFNAME = re.compile(r"^[A-Za-z0-9_.:@-]{1,15}$")
_MAC = re.compile(r"^[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}$")

_BITS = {4: 32, 6: 128}
_FAMILY = {4: socket.AF_INET, 6: socket.AF_INET6}
# _MASKS[version][plen] -> network mask as an int
_MASKS = {v: [((1 << bits) - 1) ^ ((1 << (bits - p)) - 1) for p in range(bits + 1)] for v, bits in _BITS.items()}


class MalformedUpdate(ValueError):
    """A value Felix cannot use.  Count it, log it, treat the key as absent."""

    def __init__(self, key: str, reason: str) -> None:
        super().__init__(f"{key}: {reason}")
        self.key = key
        self.reason = reason


def load_object(key: str, raw: bytes) -> dict[str, Any]:
    """The JSON object ``raw`` holds; MalformedUpdate naming ``key`` if it is not JSON or not an object."""
    try:
        v = orjson.loads(raw)
    except orjson.JSONDecodeError as e:
        raise MalformedUpdate(key, f"invalid JSON: {e}") from None
    if not isinstance(v, dict):
        raise MalformedUpdate(key, "value is not a JSON object")
    return v


def parse_update_key(key: str) -> Key | None:
    """``protocol.keys.parse_key``, with a key of a known layout but unusable parts as MalformedUpdate."""
    try:
        return parse_key(key)
    except MalformedKey as e:
        raise MalformedUpdate(key, e.reason) from None


P = TypeVar("P")


class Intake(Generic[P]):
    """Typha's updates as a calculation takes them in: parsed by ``parse``, counted, bad values made absent.

    ``parse(key, value)`` returns the calculation's record of one update (``value`` None for a
    delete), None for a key the calculation does not read, or raises MalformedUpdate. Iterating
    ``intake(kvs, malformed)`` yields the record of every update the calculation reads. An unusable
    value is reported in ``malformed`` as (key, reason) and yields the key's delete instead, so the
    previous value is forgotten too; an unusable key yields nothing (nothing can be stored under it).
    """

    __slots__ = ("ignored", "malformed", "parse", "updates")

    def __init__(self, parse: Callable[[str, bytes | None], P | None]) -> None:
        self.parse = parse
        self.updates = 0  # every update seen
        self.ignored = 0  # updates of keys the calculation does not read
        self.malformed = 0  # updates whose key or value could not be used

    def __call__(self, kvs: Iterable[Sequence[Any]], malformed: list[tuple[str, str]]) -> Iterator[P]:
        parse = self.parse
        for kv in kvs:
            key, value = kv[0], kv[1]
            self.updates += 1
            try:
                p = parse(key, value)
            except MalformedUpdate as e:
                self.malformed += 1
                malformed.append((key, e.reason))
                try:
                    p = parse(key, None)
                except MalformedUpdate:
                    continue
            if p is None:
                self.ignored += 1
            else:
                yield p


class Net(NamedTuple):
    """An IP network as ints; host bits are always clear (see :func:`parse_net`)."""

    version: int
    addr: int
    plen: int

    def __str__(self) -> str:
        return f"{self.ip}/{self.plen}"

    @property
    def ip(self) -> str:
        return socket.inet_ntop(_FAMILY[self.version], self.addr.to_bytes(_BITS[self.version] // 8, "big"))

    def contains(self, other: Net) -> bool:
        return (
            other.version == self.version
            and other.plen >= self.plen
            and other.addr & _MASKS[self.version][self.plen] == self.addr
        )

    def supernet_addr(self, plen: int) -> int:
        """This net's address masked to ``plen`` bits (the key of its /plen supernet)."""
        return self.addr & _MASKS[self.version][plen]

    def host(self, offset: int) -> Net:
        """The ``offset``-th address of this net as a host net."""
        return Net(self.version, self.addr + offset, _BITS[self.version])

    def size(self) -> int:
        return 1 << (_BITS[self.version] - self.plen)


def _parse_ip(text: str) -> tuple[int, int]:
    """(version, int) of an IP address; ValueError if it is not one."""
    version = 6 if ":" in text else 4  # one inet_pton instead of trying both families
    try:
        return version, int.from_bytes(socket.inet_pton(_FAMILY[version], text), "big")
    except OSError:
        raise ValueError(f"not an IP address: {text!r}") from None


def _split(text: str) -> tuple[int, int, int]:
    """(version, address int, prefix length) of ``"ip[/plen]"``."""
    if not isinstance(text, str):
        raise ValueError("not a string")
    addr, sep, plen_s = text.strip().partition("/")
    version, value = _parse_ip(addr)
    bits = _BITS[version]
    if sep:
        if not plen_s.isdigit() or int(plen_s) > bits:
            raise ValueError(f"bad prefix length in {text!r}")
        return version, value, int(plen_s)
    return version, value, bits


def parse_addr(text: str) -> tuple[Net, str]:
    """``"10.0.0.5/24"`` -> (Net(4, 10.0.0.0, 24), "10.0.0.5"); a bare IP is a host net.

    An interface address (a node's ``ipv4Address``) yields both its subnet and its own address.
    """
    version, value, plen = _split(text)
    ip = socket.inet_ntop(_FAMILY[version], value.to_bytes(_BITS[version] // 8, "big"))
    return Net(version, value & _MASKS[version][plen], plen), ip


def parse_net(text: str) -> Net:
    """``"10.0.0.5/24"`` -> Net(4, 10.0.0.0, 24) (host bits cleared); a bare IP is a host net."""
    version, value, plen = _split(text)
    return Net(version, value & _MASKS[version][plen], plen)


def _net(key: str, text: Any, what: str) -> Net:
    try:
        return parse_net(text)
    except ValueError as e:
        raise MalformedUpdate(key, f"{what}: {e}") from None


def _ip(key: str, text: Any, what: str) -> str | None:
    """Canonical text of an optional bare IP (tunnel addresses)."""
    if text is None or text == "":
        return None
    if not isinstance(text, str):
        raise MalformedUpdate(key, f"{what} is not a string")
    try:
        return parse_addr(text.partition("/")[0])[1]
    except ValueError as e:
        raise MalformedUpdate(key, f"{what}: {e}") from None


# --- records ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class WorkloadEndpoint:
    node: str
    orchestrator: str
    namespace: str
    pod: str
    endpoint: str
    iface: str
    ipv4_nets: tuple[Net, ...]
    ipv6_nets: tuple[Net, ...]
    mac: str | None

    @property
    def nets(self) -> tuple[Net, ...]:
        return self.ipv4_nets + self.ipv6_nets


@dataclass(frozen=True, slots=True)
class IPPool:
    cidr: Net
    ipip_mode: str
    vxlan_mode: str
    disabled: bool
    block_size: int
    nat_outgoing: bool
    disable_bgp_export: bool = False  # BIRD does not advertise its blocks (felix routes them itself)

    @property
    def routed_by_bgp(self) -> bool:
        """With BGP on, BIRD owns this pool's remote routes: it is native and BGP exports it."""
        return self.ipip_mode == "Never" and self.vxlan_mode == "Never" and not self.disable_bgp_export


@dataclass(frozen=True, slots=True)
class Block:
    cidr: Net
    affinity: str | None  # node name from "host:<node>", else None
    borrowed: tuple[tuple[int, str, str | None], ...]  # (ordinal, node, handle)


@dataclass(frozen=True, slots=True)
class BlockAffinity:
    node: str
    cidr: Net
    state: str  # confirmed | pending | pendingDeletion


@dataclass(frozen=True, slots=True)
class Node:
    """Only the fields that route calculation reads (labels etc. are not kept)."""

    name: str
    ipv4_ip: str | None = None  # the node's own IPv4 address
    ipv4_subnet: Net | None = None  # its subnet, from the address's prefix (CrossSubnet decisions)
    ipv6_ip: str | None = None
    ipv6_subnet: Net | None = None
    ipip_tunnel_addr: str | None = None
    vxlan_tunnel_addr: str | None = None
    vxlan_mac: str | None = None
    vxlan_tunnel_addr_v6: str | None = None
    vxlan_mac_v6: str | None = None


class Parsed(NamedTuple):
    """One update: ``kind`` (WORKLOAD, POOL, ...), the record's identity, and the record or None."""

    kind: str
    ident: Any
    record: Any


# --- key parsing --------------------------------------------------------------------------------


def _parse_key(key: str) -> tuple[str, Any] | None:
    """(kind, identity) of the keys route calculation reads; None for any other key."""
    k = parse_update_key(key)
    if type(k) is WorkloadKey:
        return WORKLOAD, k
    if type(k) is BlockKey:
        return BLOCK, _net(key, k.cidr, "key CIDR")
    if type(k) is BlockAffinityKey:
        return AFFINITY, (k.node, _net(key, k.cidr, "key CIDR"))
    if type(k) is IPPoolKey:
        return POOL, _net(key, k.cidr, "key CIDR")
    if type(k) is ResourceKey and k.plural == "nodes" and k.namespace is None:
        return NODE, k.name
    return None


# --- value parsing -------------------------------------------------------------------------------


def _str(key: str, v: dict, field: str, default: str | None = None) -> str | None:
    x = v.get(field, default)
    if x is not None and not isinstance(x, str):
        raise MalformedUpdate(key, f"{field} is not a string")
    return x or default


def _workload(key: str, k: WorkloadKey, v: dict) -> WorkloadEndpoint:
    iface = v.get("name")
    if not isinstance(iface, str) or not _IFNAME.match(iface) or iface in (".", ".."):
        raise MalformedUpdate(key, f"bad interface name {iface!r}")
    nets = v.get("ipNetworks") or []
    if "ipv4Nets" in v or "ipv6Nets" in v:  # Calico's own v1 field names
        nets = [*nets, *(v.get("ipv4Nets") or []), *(v.get("ipv6Nets") or [])]
    if not isinstance(nets, list):
        raise MalformedUpdate(key, "ipNetworks is not a list")
    parsed = [_net(key, n, "ipNetworks") for n in nets]
    if len(parsed) > 1:
        parsed = sorted(set(parsed))
    mac = v.get("mac")
    if mac is not None and (not isinstance(mac, str) or not _MAC.match(mac)):
        raise MalformedUpdate(key, f"bad MAC {mac!r}")
    return WorkloadEndpoint(
        node=k.node,
        orchestrator=k.orchestrator,
        namespace=k.namespace,
        pod=k.pod,
        endpoint=k.endpoint,
        iface=iface,
        ipv4_nets=tuple(n for n in parsed if n.version == 4),
        ipv6_nets=tuple(n for n in parsed if n.version == 6),
        mac=mac.lower() if mac else None,
    )


def _mode(key: str, v: dict, field: str) -> str:
    mode = v.get(field) or "Never"
    if not isinstance(mode, str):
        raise MalformedUpdate(key, f"{field} is not a string")
    for m in ENCAP_MODES:  # Calico accepts these case-insensitively
        if mode.lower() == m.lower():
            return m
    raise MalformedUpdate(key, f"unknown {field} {mode!r}")


def _pool(key: str, cidr: Net, v: dict) -> IPPool:
    if "cidr" in v and _net(key, v["cidr"], "cidr") != cidr:
        raise MalformedUpdate(key, "value cidr does not match the key")
    bs = v.get("blockSize") or (26 if cidr.version == 4 else 122)
    if not isinstance(bs, int) or isinstance(bs, bool) or not cidr.plen <= bs <= _BITS[cidr.version]:
        raise MalformedUpdate(key, f"bad blockSize {bs!r}")
    return IPPool(
        cidr=cidr,
        ipip_mode=_mode(key, v, "ipipMode"),
        vxlan_mode=_mode(key, v, "vxlanMode"),
        disabled=bool(v.get("disabled")),
        block_size=bs,
        nat_outgoing=bool(v.get("natOutgoing")),
        disable_bgp_export=bool(v.get("disableBGPExport")),
    )


def _block(key: str, cidr: Net, v: dict) -> Block:
    if "cidr" in v and _net(key, v["cidr"], "cidr") != cidr:
        raise MalformedUpdate(key, "value cidr does not match the key")
    aff = v.get("affinity")
    if aff is not None and not isinstance(aff, str):
        raise MalformedUpdate(key, "affinity is not a string")
    # Only host affinities route; other kinds ("virtual:...") own no node's traffic.
    node = aff[5:] if aff and aff.startswith("host:") and len(aff) > 5 else None
    borrowed = []
    raw = v.get("borrowed") or []
    if not isinstance(raw, list):
        raise MalformedUpdate(key, "borrowed is not a list")
    size = cidr.size()
    for entry in raw:
        if (
            not isinstance(entry, list)
            or len(entry) < 2
            or not isinstance(entry[0], int)
            or isinstance(entry[0], bool)
            or not isinstance(entry[1], str)
            or not entry[1]
        ):
            raise MalformedUpdate(key, f"bad borrowed entry {entry!r}")
        if not 0 <= entry[0] < size:
            raise MalformedUpdate(key, f"borrowed ordinal {entry[0]} outside the block")
        handle = entry[2] if len(entry) > 2 and isinstance(entry[2], str) else None
        borrowed.append((entry[0], entry[1], handle))
    return Block(cidr=cidr, affinity=node, borrowed=tuple(sorted(borrowed)))


def _affinity(key: str, ident: tuple[str, Net], v: dict) -> BlockAffinity:
    node, cidr = ident
    state = _str(key, v, "state", "confirmed")
    assert state is not None
    return BlockAffinity(node=node, cidr=cidr, state=state)


def _node(key: str, name: str, v: dict) -> Node:
    fields: dict[str, Any] = {}
    for field, ip_attr, subnet_attr, version in (
        ("ipv4Address", "ipv4_ip", "ipv4_subnet", 4),
        ("ipv6Address", "ipv6_ip", "ipv6_subnet", 6),
    ):
        text = v.get(field)
        if not text:
            continue
        if not isinstance(text, str):
            raise MalformedUpdate(key, f"{field} is not a string")
        try:
            subnet, ip = parse_addr(text)
        except ValueError as e:
            raise MalformedUpdate(key, f"{field}: {e}") from None
        if subnet.version != version:
            raise MalformedUpdate(key, f"{field} is not an IPv{version} address")
        fields[ip_attr], fields[subnet_attr] = ip, subnet
    fields["ipip_tunnel_addr"] = _ip(key, v.get("ipv4IPIPTunnelAddr"), "ipv4IPIPTunnelAddr")
    fields["vxlan_tunnel_addr"] = _ip(key, v.get("ipv4VXLANTunnelAddr"), "ipv4VXLANTunnelAddr")
    fields["vxlan_tunnel_addr_v6"] = _ip(key, v.get("ipv6VXLANTunnelAddr"), "ipv6VXLANTunnelAddr")
    for field, attr in (("vxlanTunnelMACAddr", "vxlan_mac"), ("vxlanTunnelMACAddrV6", "vxlan_mac_v6")):
        mac = _str(key, v, field)
        if mac is not None:
            if not _MAC.match(mac):
                raise MalformedUpdate(key, f"bad {field} {mac!r}")
            fields[attr] = mac.lower()
    return Node(name=name, **fields)


def parse_kv(key: str, value: bytes | None) -> Parsed | None:
    """Parse one update.  None if route calculation does not read this key.

    ``record`` is None for a delete.  Raises :class:`MalformedUpdate` for a key or value of a
    known kind that cannot be used.
    """
    found = _parse_key(key)
    if found is None:
        return None
    kind, ident = found
    if kind == WORKLOAD:
        # Route calculation identifies endpoints by their key string; the parts build the record.
        if value is None:
            return Parsed(kind, key, None)
        return Parsed(kind, key, _workload(key, ident, load_object(key, value)))
    if value is None:
        return Parsed(kind, ident, None)
    v = load_object(key, value)
    if kind == BLOCK:
        return Parsed(kind, ident, _block(key, ident, v))
    if kind == POOL:
        return Parsed(kind, ident, _pool(key, ident, v))
    if kind == AFFINITY:
        return Parsed(kind, ident, _affinity(key, ident, v))
    return Parsed(kind, ident, _node(key, ident, v))
