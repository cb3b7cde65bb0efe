"""Reading fields of untrusted Kubernetes objects: typed, validated, or a ProjectionError naming the field.

Every projector reads the objects the API server hands us through these few functions, so a field of
the wrong type (a list where a map belongs, a number for an address) becomes a `ProjectionError`
that says which field, never a crash deep inside a projector. Addresses and CIDRs are normalised to
one canonical spelling here, because typha drops an update whose encoded value did not change, and
``10.0.0.1`` and ``10.0.0.01/32`` must not look like a change.
"""

from __future__ import annotations

import functools
import ipaddress
import socket
from typing import Any

Value = dict[str, Any]
Update = tuple[str, Value | None]  # (key, value); None means "this key must not exist"


class ProjectionError(ValueError):
    """The object cannot be projected (missing identity, unparseable address, ...)."""


def field_dict(v: Any, what: str) -> dict:
    if v is None:
        return {}
    if not isinstance(v, dict):
        raise ProjectionError(f"{what} is not an object")
    return v


def field_list(v: Any, what: str) -> list:
    if v is None:
        return []
    if not isinstance(v, list):
        raise ProjectionError(f"{what} is not a list")
    return v


def identity(obj: Any, namespaced: bool) -> tuple[str, str | None, dict]:
    """(name, namespace, metadata) with the identity validated."""
    if not isinstance(obj, dict):
        raise ProjectionError("object is not a JSON object")
    md = obj.get("metadata")
    if not isinstance(md, dict):
        raise ProjectionError("object has no metadata")
    name = md.get("name")
    if not isinstance(name, str) or not name:
        raise ProjectionError("object has no metadata.name")
    ns = None
    if namespaced:
        ns = md.get("namespace")
        if not isinstance(ns, str) or not ns:
            raise ProjectionError(f"{name}: namespaced object has no metadata.namespace")
    return name, ns, md


def namespaced_identity(obj: Any) -> tuple[str, str, dict]:
    """(name, namespace, metadata) of an object of a namespaced resource."""
    name, ns, md = identity(obj, True)
    assert ns is not None  # identity() raised if it was missing
    return name, ns, md


def str_map(v: Any, what: str) -> dict[str, str]:
    d = field_dict(v, what)
    for k, x in d.items():
        if not isinstance(x, str):
            raise ProjectionError(f"{what}[{k!r}] is not a string")
    return d


def host_net(ip: Any, what: str) -> str:
    """A pod/endpoint address as a host network (``/32`` or ``/128``), canonically spelled."""
    if not isinstance(ip, str):
        raise ProjectionError(f"{what}: address is not a string")
    addr, _, plen = ip.strip().partition("/")
    if plen and not plen.isdigit():
        raise ProjectionError(f"{what}: bad address {ip!r}")
    # inet_pton/inet_ntop: strict parsing and canonical text at a tenth of ipaddress' cost.
    try:
        return socket.inet_ntop(socket.AF_INET, socket.inet_pton(socket.AF_INET, addr)) + "/32"
    except OSError:
        pass
    try:
        return socket.inet_ntop(socket.AF_INET6, socket.inet_pton(socket.AF_INET6, addr)) + "/128"
    except OSError:
        raise ProjectionError(f"{what}: bad address {ip!r}") from None


def network(cidr: Any, what: str) -> str:
    """A CIDR normalised to its network (host bits cleared); bare IPs become /32, /128."""
    if not isinstance(cidr, str):
        raise ProjectionError(f"{what}: CIDR is not a string")
    try:
        return _network(cidr)
    except ValueError as e:
        raise ProjectionError(f"{what}: bad CIDR {cidr!r}") from e


@functools.lru_cache(maxsize=1 << 16)
def _network(cidr: str) -> str:
    # Cached: the same few thousand CIDRs (IPAM blocks, pools, node podCIDRs) come back with every change
    # of their object, and ipaddress parses one in ~15 us. (A ValueError is not cached.)
    return ipaddress.ip_network(cidr.strip(), strict=False).with_prefixlen


def networks(v: Any, what: str) -> list[str]:
    return [network(c, what) for c in field_list(v, what)]


def compact(d: Value) -> Value:
    """Drop empty optional fields (None, [], {}, "") so absent and empty encode identically."""
    # `v or ...`: a truthy value is kept at once; a falsy one (0, False) unless it is one of the empties.
    return {k: v for k, v in d.items() if v or (v is not None and not isinstance(v, (list, dict, str)))}
