"""Typha's key/value updates for felix's route tests: keys from typha's own key builders, values
as typha writes them (canonical JSON), so the tests prove felix parses exactly what typha sends.

Each builder returns one ``(key, value bytes)`` pair; ``delete`` turns one into its delete.
"""

from __future__ import annotations

from collections.abc import Sequence

import orjson

from protocol import keys as K
from typha.k8s.projection import interface_name

__all__ = ["affinity", "block", "delete", "j", "node", "pool", "wep"]


def j(v: object) -> bytes:
    return orjson.dumps(v, option=orjson.OPT_SORT_KEYS)


def pool(
    cidr: str, ipip: str = "Never", vxlan: str = "Never", disabled: bool = False, block_size: int | None = None
) -> tuple[str, bytes]:
    v6 = ":" in cidr
    return K.ip_pool_key(cidr), j(
        {
            "cidr": cidr,
            "ipipMode": ipip,
            "vxlanMode": vxlan,
            "natOutgoing": True,
            "disabled": disabled,
            "disableBGPExport": False,
            "blockSize": block_size or (122 if v6 else 26),
        }
    )


def node(
    name: str,
    ip: str | None = None,
    ipip: str | None = None,
    vtep: str | None = None,
    mac: str | None = None,
    ip6: str | None = None,
    vtep6: str | None = None,
    mac6: str | None = None,
) -> tuple[str, bytes]:
    v: dict = {"name": name, "labels": {"kubernetes.io/hostname": name}}
    for field, x in (
        ("ipv4Address", ip),
        ("ipv4IPIPTunnelAddr", ipip),
        ("ipv4VXLANTunnelAddr", vtep),
        ("vxlanTunnelMACAddr", mac),
        ("ipv6Address", ip6),
        ("ipv6VXLANTunnelAddr", vtep6),
        ("vxlanTunnelMACAddrV6", mac6),
    ):
        if x is not None:
            v[field] = x
    return K.node_key(name), j(v)


def block(cidr: str, owner: str | None, borrowed: Sequence[tuple[int, str]] = ()) -> tuple[str, bytes]:
    return K.ipam_block_key(cidr), j(
        {
            "cidr": cidr,
            "affinity": f"host:{owner}" if owner else None,
            "borrowed": [[o, n, f"h-{n}-{o}"] for o, n in borrowed],
        }
    )


def affinity(name: str, cidr: str, state: str = "confirmed") -> tuple[str, bytes]:
    return K.block_affinity_key(name, cidr), j({"node": name, "cidr": cidr, "state": state})


def wep(name: str, pod: str, ips: list[str], ns: str = "shop") -> tuple[str, bytes]:
    nets = [ip + ("/128" if ":" in ip else "/32") for ip in ips]
    return K.workload_key(name, ns, pod), j(
        {
            "name": interface_name(ns, pod),
            "node": name,
            "orchestrator": "k8s",
            "workload": f"{ns}/{pod}",
            "endpoint": "eth0",
            "ipNetworks": nets,
            "profiles": [f"kns.{ns}"],
            "labels": {"projectcalico.org/namespace": ns},
            "mac": "ee:ee:ee:ee:ee:01",
        }
    )


def delete(kv: tuple[str, bytes]) -> tuple[str, None]:
    return kv[0], None
