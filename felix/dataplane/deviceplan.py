"""Tunnel device planning: which encapsulation devices the node needs, and how to get there.

Design note
-----------
Felix makes its own encapsulation devices, as Calico's does, from what typha tells it:

* ``vxlan.calico`` while any IPv4 pool uses VXLAN (``Always`` or ``CrossSubnet``, disabled pools
  included: they still route): VNI 4096, UDP port 4789, learning off (the FDB is programmed), the
  node's address as the underlay source, the Node's VXLAN tunnel address (``/32``) and MAC from its
  annotations, MTU = network MTU - 50.  ``vxlan-v6.calico`` likewise for IPv6 pools: VNI 6096,
  MTU - 70.  Both are removed when no pool needs them.
* ``tunl0`` while any IPv4 pool uses IP-in-IP: MTU - 20 and the node's IP-in-IP tunnel address.
  It is the ``ipip`` module's fallback device, shared with anything else on the node, so it is
  created when missing but never deleted.  A kernel without the module refuses it, and the routes
  through it stay pending with that reason.

Same shape as the route manager: :func:`desired_devices` (pools + our node -> device specs, or why
one cannot be made yet) and :func:`plan_devices` (specs + what the kernel has -> operations) are
pure; :class:`felix.dataplane.devices.DeviceManager` carries the operations out.  A device whose
fixed attributes differ (kind, VNI, port, underlay address, learning) is deleted and re-created --
the kernel cannot change them in place; MTU, MAC, up and addresses are changed in place.

A device no pool needs any more is deleted only once none of felix's routes goes through it
(``in_use``, from what the route manager knows the kernel holds): the kernel drops a device's routes
with it, so deleting it under a route that has not moved yet -- its replace failed, or is backing
off -- would leave that destination with no route at all until the retry.  Make before use, remove
after last use.

The MAC matters: other nodes program ARP and FDB entries pointing at the MAC in our Node's
annotation, so our device must carry exactly that one.  A Node without a MAC annotation gets a
device with a kernel-chosen MAC (Calico would write one back; felix does not write to the
datastore) and other nodes cannot reach us by VXLAN until the annotation exists.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from typing import Literal

from felix.calc import DEV_IPIP, DEV_VXLAN, DEV_VXLAN_V6, encap_overhead
from felix.model import IPPool, Node

from .netlink import KernelLink, VxlanAttrs
from .routeplan import NO_DEVICE, Pending

__all__ = [
    "MANAGED",
    "VNI_V4",
    "VNI_V6",
    "VXLAN_PORT",
    "DeviceOp",
    "DeviceSpec",
    "desired_devices",
    "plan_devices",
    "unwanted",
]

VNI_V4, VNI_V6, VXLAN_PORT = 4096, 6096, 4789
MANAGED = (DEV_VXLAN, DEV_VXLAN_V6, DEV_IPIP)
_DELETABLE = (DEV_VXLAN, DEV_VXLAN_V6)


@dataclass(frozen=True, slots=True)
class DeviceSpec:
    name: str
    kind: str  # "vxlan" | "ipip"
    mtu: int
    mac: str | None = None
    vxlan: VxlanAttrs | None = None
    address: tuple[str, int] | None = None  # the tunnel address and its prefix length


Action = Literal["create", "delete", "set", "addr-add", "addr-del"]


@dataclass(frozen=True, slots=True)
class DeviceOp:
    action: Action
    name: str
    spec: DeviceSpec | None = None
    address: tuple[str, int] | None = None  # for addr-add / addr-del


def desired_devices(
    pools: Iterable[IPPool], me: Node | None, nodename: str, network_mtu: int
) -> tuple[dict[str, DeviceSpec], dict[str, Pending]]:
    """(devices to have, devices needed but not makeable yet with the reason)."""
    vxlan4 = vxlan6 = ipip = False
    for pool in pools:
        if pool.vxlan_mode != "Never":
            vxlan4 |= pool.cidr.version == 4
            vxlan6 |= pool.cidr.version == 6
        if pool.ipip_mode != "Never" and pool.cidr.version == 4:
            ipip = True
    wanted: dict[str, DeviceSpec] = {}
    waiting: dict[str, Pending] = {}
    if (vxlan4 or vxlan6 or ipip) and me is None:
        why = Pending(NO_DEVICE, f"node {nodename} is unknown, so its tunnel addresses are too")
        for name, needed in ((DEV_VXLAN, vxlan4), (DEV_VXLAN_V6, vxlan6), (DEV_IPIP, ipip)):
            if needed:
                waiting[name] = why
        return wanted, waiting
    none: tuple[str | None, str | None, str | None] = (None, None, None)
    v4 = (me.ipv4_ip, me.vxlan_tunnel_addr, me.vxlan_mac) if me else none
    v6 = (me.ipv6_ip, me.vxlan_tunnel_addr_v6, me.vxlan_mac_v6) if me else none
    for name, needed, v, vni, (under, vtep, mac) in (
        (DEV_VXLAN, vxlan4, 4, VNI_V4, v4),
        (DEV_VXLAN_V6, vxlan6, 6, VNI_V6, v6),
    ):
        if not needed:
            continue
        if not under:
            waiting[name] = Pending(NO_DEVICE, f"node {nodename} has no IPv{v} address for {name} to send from")
        elif not vtep:
            waiting[name] = Pending(NO_DEVICE, f"node {nodename} has no IPv{v} VXLAN tunnel address for {name}")
        else:
            overhead = encap_overhead("vxlan", v)
            attrs = VxlanAttrs(vni, VXLAN_PORT, under, False)
            wanted[name] = DeviceSpec(name, "vxlan", network_mtu - overhead, mac, attrs, (vtep, 32 if v == 4 else 128))
    if ipip:
        tunnel = me.ipip_tunnel_addr if me else None
        wanted[DEV_IPIP] = DeviceSpec(
            DEV_IPIP, "ipip", network_mtu - encap_overhead("ipip"), address=(tunnel, 32) if tunnel else None
        )
    return wanted, waiting


def _compatible(have: KernelLink, spec: DeviceSpec) -> bool:
    """Can ``have`` become ``spec`` in place?  (Kind and VXLAN parameters are fixed at creation.)"""
    if have.kind != spec.kind:
        return False
    return spec.vxlan is None or have.vxlan == spec.vxlan


def unwanted(wanted: Mapping[str, DeviceSpec], links: Mapping[str, KernelLink]) -> set[str]:
    """Felix's devices in the kernel that nothing wants any more (never ``tunl0``: it is shared)."""
    return {name for name in _DELETABLE if name in links and name not in wanted}


def plan_devices(
    wanted: Mapping[str, DeviceSpec],
    links: Mapping[str, KernelLink],
    addrs: Mapping[int, set[tuple[str, int]]],
    leave: Iterable[str] = (),
    in_use: Collection[str] = (),
) -> list[DeviceOp]:
    """Operations bringing felix's devices to ``wanted``.

    ``links``: the kernel's interfaces by name; ``addrs``: global addresses by interface index;
    ``leave``: devices to keep as they are (needed, but not makeable yet); ``in_use``: devices
    felix's routes still go through -- an unwanted one is deleted only once it is not in use.  A
    create is not followed by its address or changes: plan again once the device exists.
    """
    ops: list[DeviceOp] = []
    for name in MANAGED:
        spec, have = wanted.get(name), links.get(name)
        if name in leave:
            continue
        if spec is None:
            if have is not None and name in _DELETABLE and name not in in_use:
                ops.append(DeviceOp("delete", name))
            continue
        if have is None or not _compatible(have, spec):
            if have is not None:
                ops.append(DeviceOp("delete", name))
            ops.append(DeviceOp("create", name, spec))
            continue
        if have.mtu != spec.mtu or not have.up or (spec.mac is not None and have.mac != spec.mac):
            ops.append(DeviceOp("set", name, spec))
        held = addrs.get(have.ifindex, set())
        want = {spec.address} if spec.address else set()
        ops += [DeviceOp("addr-del", name, spec, a) for a in sorted(held - want)]
        ops += [DeviceOp("addr-add", name, spec, a) for a in sorted(want - held)]
    return ops
