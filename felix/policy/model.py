"""The policy calculation's view of the datastore: the keys and values it reads, parsed and checked.

Design note
-----------
Typha sends ``(key, canonical JSON)`` pairs (docs/datastore.md); keys are parsed by the stream's
key schema (``protocol.keys``), the module typha builds them with. Routes read a few of them
(``felix.model``); policy reads more: workload endpoints *with* labels, profiles and named ports,
policies, profiles, network sets, IP pools. Parsing lives here, apart from the route model, so each
calculation keeps only the fields it uses and neither grows the other's records.

Two kinds of bad input, treated differently on purpose:

* a value that is not the shape typha writes (not JSON, labels not a string map, a bad address) is
  :class:`felix.model.MalformedUpdate`: the caller counts it and treats the key as absent, exactly
  as the route calculation does;
* a policy or profile whose *rules* cannot be rendered is kept as a value here and rejected later
  by :mod:`felix.policy.rules` with a reason the user can act on (``PolicyRejected``).
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

from felix.model import MalformedUpdate, Net, load_object, parse_net, parse_update_key
from protocol.keys import (
    IPPoolKey,
    NetworkSetKey,
    PolicyKey,
    ProfileKey,
    WorkloadKey,
)

from .messages import PolicyID

__all__ = [
    "ENDPOINT",
    "NETSET",
    "POLICY",
    "POOL",
    "PROFILE",
    "Endpoint",
    "NamedPort",
    "NetworkSet",
    "Parsed",
    "Pool",
    "Profile",
    "parse_kv",
]

ENDPOINT = "endpoint"
POLICY = "policy"
PROFILE = "profile"
NETSET = "netset"
POOL = "pool"

_NS_LABEL = "projectcalico.org/namespace"
_PORT_PROTOCOLS = ("tcp", "udp", "sctp")


class NamedPort(NamedTuple):
    name: str
    protocol: str  # tcp | udp | sctp
    port: int


@dataclass(frozen=True, slots=True)
class Endpoint:
    """A workload endpoint anywhere in the cluster (rule selectors see every node's pods)."""

    node: str
    iface: str
    ipv4_nets: tuple[str, ...]  # canonical "10.0.0.1/32"
    ipv6_nets: tuple[str, ...]
    mac: str
    labels: Mapping[str, str]
    profiles: tuple[str, ...]
    ports: tuple[NamedPort, ...]  # named ports only: the only ones policy reads

    @property
    def nets(self) -> tuple[str, ...]:
        return self.ipv4_nets + self.ipv6_nets


@dataclass(frozen=True, slots=True)
class NetworkSet:
    labels: Mapping[str, str]
    nets: tuple[str, ...]
    parents: tuple[str, ...]  # namespaced sets inherit their namespace profile's labels


@dataclass(frozen=True, slots=True)
class Profile:
    labels: Mapping[str, str]
    value: Mapping[str, Any]  # rules, rendered by felix.policy.rules


@dataclass(frozen=True, slots=True)
class Pool:
    cidr: str
    masquerade: bool


class Parsed(NamedTuple):
    kind: str
    ident: Any  # endpoint key | PolicyID | profile name | netset name | pool cidr
    record: Any  # None for a delete; a policy's record is its raw value (a dict)


def _labels(key: str, v: Any) -> dict[str, str]:
    """Label names and values interned: a cluster repeats a few dozen names and values across every
    endpoint, so each is held once instead of once per endpoint (about a third of the memory)."""
    if v is None:
        return {}
    if not isinstance(v, dict) or not all(isinstance(k, str) and isinstance(x, str) for k, x in v.items()):
        raise MalformedUpdate(key, "labels are not a map of strings")
    return {sys.intern(k): sys.intern(x) for k, x in v.items()}


def _nets(key: str, v: Any, what: str) -> list[Net]:
    if v is None:
        return []
    if not isinstance(v, list):
        raise MalformedUpdate(key, f"{what} is not a list")
    out = []
    for n in v:
        try:
            out.append(parse_net(n))
        except ValueError as e:
            raise MalformedUpdate(key, f"{what}: {e}") from None
    return out


def _str_list(key: str, v: Any, what: str) -> tuple[str, ...]:
    if v is None:
        return ()
    if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
        raise MalformedUpdate(key, f"{what} is not a list of strings")
    return tuple(v)


def _ports(key: str, v: Any) -> tuple[NamedPort, ...]:
    if v is None:
        return ()
    if not isinstance(v, list):
        raise MalformedUpdate(key, "ports is not a list")
    out = []
    for p in v:
        if not isinstance(p, dict):
            raise MalformedUpdate(key, "a port is not an object")
        name, proto, port = p.get("name"), p.get("protocol", "tcp"), p.get("port")
        if not name:
            continue  # a hostPort-only entry: nothing for policy
        if not isinstance(name, str) or not isinstance(proto, str):
            raise MalformedUpdate(key, f"bad named port {p!r}")
        if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
            raise MalformedUpdate(key, f"bad port number in {p!r}")
        proto = proto.lower()
        if proto in _PORT_PROTOCOLS:
            out.append(NamedPort(name, proto, port))
    return tuple(sorted(set(out)))


def _endpoint(key: str, wk: WorkloadKey, v: dict[str, Any]) -> Endpoint:
    iface = v.get("name")
    if not isinstance(iface, str) or not iface:
        raise MalformedUpdate(key, f"bad interface name {iface!r}")
    nets = sorted(set(_nets(key, v.get("ipNetworks"), "ipNetworks")))
    mac = v.get("mac") or ""
    if not isinstance(mac, str):
        raise MalformedUpdate(key, "mac is not a string")
    return Endpoint(
        node=wk.node,
        iface=iface,
        ipv4_nets=tuple(str(n) for n in nets if n.version == 4),
        ipv6_nets=tuple(str(n) for n in nets if n.version == 6),
        mac=mac.lower(),
        labels=_labels(key, v.get("labels")),
        profiles=_str_list(key, v.get("profiles"), "profiles"),
        ports=_ports(key, v.get("ports")),
    )


def _netset(key: str, v: dict[str, Any]) -> NetworkSet:
    labels = _labels(key, v.get("labels"))
    ns = labels.get(_NS_LABEL)
    return NetworkSet(
        labels=labels,
        nets=tuple(sorted({str(n) for n in _nets(key, v.get("nets"), "nets")})),
        parents=(f"kns.{ns}",) if ns else (),
    )


def _key(key: str) -> tuple[str, Any, Any] | None:
    """(kind, ident, the parsed key) of a key policy reads, else None."""
    k = parse_update_key(key)
    if type(k) is WorkloadKey:
        return ENDPOINT, key, k
    if type(k) is PolicyKey:
        return POLICY, PolicyID(k.tier, f"{k.namespace}/{k.name}" if k.namespace else k.name), k
    if type(k) is ProfileKey:
        return PROFILE, k.name, k
    if type(k) is NetworkSetKey:
        return NETSET, f"{k.namespace}/{k.name}" if k.namespace else k.name, k
    if type(k) is IPPoolKey:
        try:
            return POOL, str(parse_net(k.cidr)), k
        except ValueError as e:
            raise MalformedUpdate(key, f"pool CIDR: {e}") from None
    return None  # host endpoints and everything policy does not read


def parse_kv(key: str, value: bytes | None) -> Parsed | None:
    """One update; None if policy does not read the key. Raises MalformedUpdate for bad values."""
    found = _key(key)
    if found is None:
        return None
    kind, ident, parsed_key = found
    if value is None:
        return Parsed(kind, ident, None)
    v = load_object(key, value)
    if kind == ENDPOINT:
        return Parsed(kind, ident, _endpoint(key, parsed_key, v))
    if kind == POLICY:
        return Parsed(kind, ident, v)
    if kind == PROFILE:
        return Parsed(kind, ident, Profile(labels=_labels(key, v.get("labels")), value=v))
    if kind == NETSET:
        return Parsed(kind, ident, _netset(key, v))
    return Parsed(kind, ident, Pool(cidr=ident, masquerade=bool(v.get("natOutgoing"))))
