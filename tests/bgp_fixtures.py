"""Kubernetes/Calico objects for BGP tests, turned into the bgp syncer's KVs by typha's own projection.

Going through `typha.k8s.projection` (and only the resources the bgp syncer carries) proves that what
felix's BGP side reads is what typha serves: if a resource BIRD needs were missing from the syncer,
the renders below would miss it too. ``rendered`` is felix's BIRD configuration from such objects.
"""

from __future__ import annotations

import random
from typing import Any

from felix.bgp.render import Rendered, render
from felix.bgp.view import BgpView
from loadtest.apiserver.fixtures import make_calico_object
from protocol import KV
from protocol.keys import SYNCER_BGP
from typha.ingest import encode_value
from typha.k8s.projection import RESOURCES, project

Obj = tuple[str, dict[str, Any]]  # (resource name, object)

NODE_NET = "198.18.9"  # node i has 198.18.9.<i>/24; the top-of-rack router is .254
TOR_IP = f"{NODE_NET}.254"
TOR_AS = 65000
POOL = "198.19.0.0/16"


def node(
    name: str, ip: str, *, asn: int | None = None, rr: str | None = None, labels: dict[str, str] | None = None
) -> Obj:
    ann = {"projectcalico.org/IPv4Address": f"{ip}/24"}
    if asn is not None:
        ann["projectcalico.org/ASNumber"] = str(asn)
    if rr is not None:
        ann["projectcalico.org/RouteReflectorClusterID"] = rr
    return (
        "nodes",
        {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {
                "name": name,
                "labels": {"kubernetes.io/hostname": name, **(labels or {})},
                "annotations": ann,
            },
            "spec": {},
            "status": {"addresses": [{"type": "InternalIP", "address": ip}]},
        },
    )


def pool(name: str, cidr: str, **spec: Any) -> Obj:
    return ("ippools", make_calico_object("IPPool", name, {"cidr": cidr, "blockSize": 26, **spec}))


def affinity(node_name: str, cidr: str, state: str = "confirmed") -> Obj:
    name = f"{node_name}-{cidr.replace('.', '-').replace('/', '-')}"
    spec = {"node": node_name, "cidr": cidr, "state": state, "deleted": "false"}
    return ("blockaffinities", make_calico_object("BlockAffinity", name, spec))


def block(cidr: str, owner: str | None, borrowed: dict[int, str] | None = None) -> Obj:
    allocations: list[int | None] = [None] * 64
    attributes = []
    for ordinal, holder in sorted((borrowed or {}).items()):
        allocations[ordinal] = len(attributes)
        attributes.append({"handle_id": f"h-{ordinal}", "secondary": {"node": holder}})
    spec = {
        "cidr": cidr,
        "affinity": f"host:{owner}" if owner else None,
        "allocations": allocations,
        "attributes": attributes,
        "unallocated": [],
    }
    return ("ipamblocks", make_calico_object("IPAMBlock", cidr.replace(".", "-").replace("/", "-"), spec))


def bgp_peer(name: str, **spec: Any) -> Obj:
    return ("bgppeers", make_calico_object("BGPPeer", name, spec))


def bgp_config(name: str = "default", **spec: Any) -> Obj:
    return ("bgpconfigurations", make_calico_object("BGPConfiguration", name, spec))


def kvs(objects: list[Obj], deleted: bool = False, syncer: str = SYNCER_BGP) -> list[KV]:
    """The syncer's KVs for `objects` (resources that syncer does not carry are dropped)."""
    out = []
    for resource, obj in objects:
        if syncer not in RESOURCES[resource].syncers:
            continue
        for key, value in project(resource, obj):
            out.append(KV(key, None if deleted or value is None else encode_value(value), "1"))
    return out


def rendered(objects: list[Obj], nodename: str, shuffle: int | None = None) -> Rendered:
    """felix's BIRD configuration for ``nodename`` from these objects (their KVs in ``shuffle``'s order)."""
    updates = kvs(objects)
    if shuffle is not None:
        random.Random(shuffle).shuffle(updates)
    view = BgpView()
    assert view.apply(updates) == []
    return render(view, nodename)


def bird_config(objects: list[Obj], nodename: str) -> str:
    """The configuration BIRD runs on ``nodename`` (the objects give it one)."""
    text = rendered(objects, nodename).config
    assert text is not None
    return text


# --- the topologies of the golden files and the kernel tests -------------------------------------


def nodes_and_blocks(count: int = 3, **node_kw: Any) -> list[Obj]:
    objs: list[Obj] = [pool("default", POOL, ipipMode="Never", vxlanMode="Never")]
    for i in range(1, count + 1):
        objs.append(node(f"node{i}", f"{NODE_NET}.{i}", **node_kw.get(f"node{i}", {})))
        objs.append(affinity(f"node{i}", f"198.19.{i}.0/26"))
        objs.append(block(f"198.19.{i}.0/26", f"node{i}"))
    return objs


def tor_peer() -> Obj:
    return bgp_peer("tor", peerIP=TOR_IP, asNumber=TOR_AS)


def mesh_topology() -> list[Obj]:
    return [*nodes_and_blocks(), tor_peer()]


def route_reflector_topology() -> list[Obj]:
    """node1 reflects for node2 and node3; no mesh; every node also peers with the top-of-rack."""
    rr = {"rr": "244.0.0.1", "labels": {"route-reflector": "true"}}
    return [
        *nodes_and_blocks(node1=rr),
        bgp_config(nodeToNodeMeshEnabled=False),
        bgp_peer("peer-with-route-reflectors", nodeSelector="all()", peerSelector="route-reflector == 'true'"),
        tor_peer(),
    ]


def external_only_topology() -> list[Obj]:
    """No mesh: an AS per node, each peering only with the top-of-rack router (Calico's AS-per-rack design)."""
    per_node = {f"node{i}": {"asn": 64600 + i} for i in (1, 2, 3)}
    return [*nodes_and_blocks(**per_node), bgp_config(nodeToNodeMeshEnabled=False), tor_peer()]


def borrowed_topology() -> list[Obj]:
    """node3 hosts 198.19.1.40, borrowed from node1's block (seed 000)."""
    lent = block("198.19.1.0/26", "node1", {40: "node3"})
    return [lent if o[0] == "ipamblocks" and o[1]["spec"]["cidr"] == "198.19.1.0/26" else o for o in mesh_topology()]
