"""Tests for felix.model and felix.calc: the route calculation graph (pure, no kernel).

Keys are built with typha's own key builders and some values with typha's projection, so these
tests also prove that felix parses exactly what typha sends. The property that incremental
calculation equals a fresh one: tests/test_felix_calc_properties.py.
"""

from __future__ import annotations

import pytest

from felix.calc import Neighbor, Route, RouteCalculator
from felix.model import MalformedUpdate, Net, parse_kv, parse_net
from protocol import KV
from protocol import keys as K
from tests.support.felix_kvs import affinity, block, delete, j, node, pool, wep
from typha.k8s.projection import interface_name, project

ME = "node-a"


def calc(*kvs: tuple[str, bytes | None], me: str = ME, mtu: int = 1500) -> RouteCalculator:
    c = RouteCalculator(me, network_mtu=mtu)
    c.apply(list(kvs))
    return c


BASE = [
    pool("10.64.0.0/16"),
    node(ME, "192.168.1.1/24"),
    node("node-b", "192.168.1.2/24"),
    node("node-c", "192.168.2.3/24"),  # another subnet
]


def native(dst: str, gw: str) -> Route:
    return Route(dst, gateway=gw)


def ipip(dst: str, gw: str, mtu: int = 1480) -> Route:
    return Route(dst, dev="tunl0", gateway=gw, onlink=True, mtu=mtu, encap="ipip")


def vxlan(dst: str, vtep: str, mtu: int = 1450) -> Route:
    return Route(dst, dev="vxlan.calico", gateway=vtep, onlink=True, mtu=mtu, encap="vxlan")


# --- model ----------------------------------------------------------------------------------------


def test_model_parses_typha_keys_and_ignores_others() -> None:
    key, raw = wep(ME, "web-1", ["10.64.0.5", "fd00::5"])
    p = parse_kv(key, raw)
    assert p is not None and p.kind == "workload"
    ep = p.record
    assert (ep.node, ep.namespace, ep.pod, ep.endpoint) == (ME, "shop", "web-1", "eth0")
    assert ep.iface == interface_name("shop", "web-1")
    assert [str(n) for n in ep.ipv4_nets] == ["10.64.0.5/32"] and [str(n) for n in ep.ipv6_nets] == ["fd00::5/128"]
    assert parse_kv(*block("10.64.0.0/26", "node-b", [(3, "node-c")])).record.borrowed == ((3, "node-c", "h-node-c-3"),)
    assert parse_kv(*affinity("node-b", "10.64.0.0/26")).ident == ("node-b", parse_net("10.64.0.0/26"))
    n = parse_kv(*node("node-b", "192.168.1.2/24", ipip="10.64.0.1")).record
    assert n.ipv4_ip == "192.168.1.2" and str(n.ipv4_subnet) == "192.168.1.0/24" and n.ipip_tunnel_addr == "10.64.0.1"
    assert parse_kv(*pool("fd00::/48", vxlan="always")).record.vxlan_mode == "Always"
    # Keys route calculation does not read.
    for k in (
        K.profile_key("kns.shop"),
        K.policy_key("p"),
        K.host_endpoint_key(ME, "eth0"),
        K.felix_configuration_key("default"),
        "/calico/whatever",
    ):
        assert parse_kv(k, b"{}") is None
    assert parse_kv(key, None) == ("workload", key, None)


@pytest.mark.parametrize(
    "kv",
    [
        (wep(ME, "p", ["10.0.0.1"])[0], b"{not json"),
        (wep(ME, "p", ["10.0.0.1"])[0], b"[1, 2]"),
        (wep(ME, "p", ["10.0.0.1"])[0], j({"name": "../../etc", "ipNetworks": ["10.0.0.1/32"]})),
        (wep(ME, "p", ["10.0.0.1"])[0], j({"name": "cali1", "ipNetworks": ["10.0.0.300/32"]})),
        (block("10.64.0.0/26", "x")[0], j({"cidr": "10.64.0.64/26", "affinity": None, "borrowed": []})),
        (block("10.64.0.0/26", "x")[0], j({"cidr": "10.64.0.0/26", "affinity": None, "borrowed": [[64, "n", "h"]]})),
        (pool("10.64.0.0/16")[0], j({"cidr": "10.64.0.0/16", "ipipMode": "Sometimes"})),
        (node("n")[0], j({"name": "n", "ipv4Address": "not-an-ip/24"})),
        (node("n")[0], j({"name": "n", "vxlanTunnelMACAddr": "zz:00"})),
    ],
)
def test_model_rejects_malformed_values(kv: tuple[str, bytes]) -> None:
    with pytest.raises(MalformedUpdate) as exc:
        parse_kv(*kv)
    assert exc.value.key == kv[0]


def test_net_helpers() -> None:
    n = parse_net("10.64.0.77/26")
    assert str(n) == "10.64.0.64/26" and n.contains(parse_net("10.64.0.70")) and not n.contains(parse_net("10.64.0.1"))
    assert str(n.host(5)) == "10.64.0.69/32"
    assert isinstance(n, Net) and str(parse_net("fd00::1")) == "fd00::1/128"


# --- the rules ---------------------------------------------------------------------------------------


def test_local_workload_routes_v4_and_v6() -> None:
    c = calc(*BASE, wep(ME, "web-1", ["10.64.0.5", "fd00::5"]))
    iface = interface_name("shop", "web-1")
    assert c.desired() == {
        "10.64.0.5/32": Route("10.64.0.5/32", dev=iface, scope="link"),
        "fd00::5/128": Route("fd00::5/128", dev=iface, scope="link"),
    }


def test_own_block_is_blackholed_and_local_pods_inside_it_still_route() -> None:
    c = calc(*BASE, block("10.64.0.0/26", ME), wep(ME, "web-1", ["10.64.0.5"]))
    d = c.desired()
    assert d["10.64.0.0/26"] == Route("10.64.0.0/26", type="blackhole")
    assert d["10.64.0.5/32"].dev == interface_name("shop", "web-1")
    # A remote pod inside a remote node's own block needs no /32: the block route covers it.
    c2 = calc(*BASE, block("10.64.0.64/26", "node-b"), wep("node-b", "web-2", ["10.64.0.70"]))
    assert set(c2.desired()) == {"10.64.0.64/26"}


def test_remote_block_native_ipip_vxlan() -> None:
    blocks = [block("10.64.0.64/26", "node-b")]
    assert calc(*BASE, *blocks).desired() == {"10.64.0.64/26": native("10.64.0.64/26", "192.168.1.2")}
    c = calc(*BASE, *blocks, pool("10.64.0.0/16", ipip="Always"))
    assert c.desired() == {"10.64.0.64/26": ipip("10.64.0.64/26", "192.168.1.2")}
    c = calc(
        *BASE,
        *blocks,
        pool("10.64.0.0/16", vxlan="Always"),
        node("node-b", "192.168.1.2/24", vtep="10.64.0.65", mac="66:00:00:00:00:0b"),
    )
    assert c.desired() == {"10.64.0.64/26": vxlan("10.64.0.64/26", "10.64.0.65")}
    assert c.desired_neighbors() == {"10.64.0.65": Neighbor("66:00:00:00:00:0b", "192.168.1.2")}


@pytest.mark.parametrize("mode_field", ["ipip", "vxlan"])
def test_cross_subnet_encapsulates_only_across_subnets(mode_field: str) -> None:
    kw = {mode_field: "CrossSubnet"}
    c = calc(
        *BASE,
        pool("10.64.0.0/16", **kw),
        node("node-b", "192.168.1.2/24", vtep="10.64.0.65", mac="66:00:00:00:00:0b"),
        node("node-c", "192.168.2.3/24", vtep="10.64.0.129", mac="66:00:00:00:00:0c"),
        block("10.64.0.64/26", "node-b"),
        block("10.64.0.128/26", "node-c"),
    )
    d = c.desired()
    assert d["10.64.0.64/26"] == native("10.64.0.64/26", "192.168.1.2")  # same /24 as us
    expect = ipip("10.64.0.128/26", "192.168.2.3") if mode_field == "ipip" else vxlan("10.64.0.128/26", "10.64.0.129")
    assert d["10.64.0.128/26"] == expect


def test_cross_subnet_uses_our_prefix_and_follows_our_address() -> None:
    kvs = [
        pool("10.64.0.0/16", ipip="CrossSubnet"),
        node("node-c", "192.168.2.3/24"),
        block("10.64.0.128/26", "node-c"),
    ]
    c = RouteCalculator(ME)
    c.apply(kvs)
    # Our own address unknown: encapsulate (works across subnets as well).
    assert c.desired()["10.64.0.128/26"].encap == "ipip"
    d = c.apply([node(ME, "192.168.1.1/16")])  # a /16 holds 192.168.2.3: same subnet
    assert d.routes == {"10.64.0.128/26": native("10.64.0.128/26", "192.168.2.3")}
    d = c.apply([node(ME, "192.168.1.1/24")])
    assert d.routes == {"10.64.0.128/26": ipip("10.64.0.128/26", "192.168.2.3")}
    d = c.apply([node(ME, "192.168.1.1/24", ipip="10.64.0.1")])  # nothing routing-relevant for others
    assert not d


def test_mtu_per_encapsulation() -> None:
    kvs = [
        *BASE,
        block("10.64.0.64/26", "node-b"),
        node(
            "node-b",
            "192.168.1.2/24",
            vtep="10.64.0.65",
            mac="66:00:00:00:00:0b",
            ip6="fd00:1::2/64",
            vtep6="fd00:64::65",
            mac6="66:00:00:00:01:0b",
        ),
        pool("fd00:64::/48", vxlan="Always"),
        block("fd00:64::/122", "node-b"),
    ]
    assert calc(*kvs, mtu=9000).desired()["10.64.0.64/26"].mtu is None  # native: no MTU set
    assert calc(*kvs, pool("10.64.0.0/16", ipip="Always"), mtu=9000).desired()["10.64.0.64/26"].mtu == 8980
    c = calc(*kvs, pool("10.64.0.0/16", vxlan="Always"), mtu=9000)
    assert c.desired()["10.64.0.64/26"].mtu == 8950
    assert c.desired()["fd00:64::/122"] == Route(
        "fd00:64::/122", dev="vxlan-v6.calico", gateway="fd00:64::65", onlink=True, mtu=8930, encap="vxlan"
    )
    assert c.desired_neighbors()["fd00:64::65"] == Neighbor("66:00:00:00:01:0b", "fd00:1::2")


def test_ipv6_remote_block_native() -> None:
    c = calc(
        *BASE,
        pool("fd00:64::/48"),
        node("node-b", "192.168.1.2/24", ip6="fd00:1::2/64"),
        block("fd00:64::40/122", "node-b"),
    )
    assert c.desired() == {"fd00:64::40/122": native("fd00:64::40/122", "fd00:1::2")}


# --- borrowed addresses (seed 000: a new node borrows from a full block) -------------------------------------


def _ipam_block_obj(cidr: str, affinity: str | None, owners: dict[int, str]) -> dict:
    """An IPAMBlock as the API server returns it, to go through typha's projection."""
    allocations: list = [None] * 64
    attributes = []
    for ordinal, n in sorted(owners.items()):
        allocations[ordinal] = len(attributes)
        attributes.append({"handle_id": f"k8s-pod-network.{ordinal}", "secondary": {"node": n, "pod": f"p{ordinal}"}})
    return {
        "apiVersion": "crd.projectcalico.org/v1",
        "kind": "IPAMBlock",
        "metadata": {"name": cidr.replace(".", "-").replace("/", "-"), "resourceVersion": "1"},
        "spec": {
            "cidr": cidr,
            "affinity": affinity,
            "allocations": allocations,
            "attributes": attributes,
            "unallocated": [],
            "strictAffinity": False,
        },
    }


def test_borrowed_address_seed_000_scenario() -> None:
    # node-a's block is full of its own pods except .7, which node-c (new, no free block) borrowed.
    owners = dict.fromkeys(range(64), ME)
    owners[7] = "node-c"
    [(bkey, bval)] = project("ipamblocks", _ipam_block_obj("10.64.0.0/26", f"host:{ME}", owners))
    kvs = [
        *BASE,
        (bkey, j(bval)),
        block("10.64.0.64/26", "node-b"),
        wep(ME, "a-pod", ["10.64.0.3"]),
        wep("node-c", "c-pod", ["10.64.0.7"]),
    ]
    on_a, on_b, on_c = (calc(*kvs, me=n).desired() for n in (ME, "node-b", "node-c"))
    # The owner blackholes its block but routes the borrowed /32 to the node that hosts it.
    assert on_a["10.64.0.0/26"].type == "blackhole"
    assert on_a["10.64.0.7/32"] == native("10.64.0.7/32", "192.168.2.3")
    # A bystander routes the block to its owner and the borrowed /32 to its host.
    assert on_b["10.64.0.0/26"] == native("10.64.0.0/26", "192.168.1.1")
    assert on_b["10.64.0.7/32"] == native("10.64.0.7/32", "192.168.2.3")
    assert "10.64.0.3/32" not in on_b  # node-a's own pod is covered by the block route
    # The borrower has its local route and never a route to itself.
    assert on_c["10.64.0.7/32"] == Route("10.64.0.7/32", dev=interface_name("shop", "c-pod"), scope="link")
    assert on_c["10.64.0.0/26"] == native("10.64.0.0/26", "192.168.1.1")


def test_borrowed_from_block_list_alone_and_from_endpoint_alone() -> None:
    # Only the block's borrowed list (e.g. a tunnel address, which has no endpoint).
    c = calc(*BASE, block("10.64.0.0/26", ME, [(9, "node-b")]))
    assert c.desired()["10.64.0.9/32"] == native("10.64.0.9/32", "192.168.1.2")
    # Only the endpoint (its block's value has not caught up yet).
    c = calc(*BASE, block("10.64.0.0/26", ME), wep("node-b", "x", ["10.64.0.10"]))
    assert c.desired()["10.64.0.10/32"] == native("10.64.0.10/32", "192.168.1.2")
    # Borrowed from a third node's block, seen by us: /32 via the borrower, encapsulated per pool.
    c = calc(
        *BASE,
        pool("10.64.0.0/16", ipip="CrossSubnet"),
        block("10.64.0.128/26", "node-c"),
        wep("node-b", "x", ["10.64.0.130"]),
    )
    assert c.desired()["10.64.0.130/32"] == native("10.64.0.130/32", "192.168.1.2")
    assert c.desired()["10.64.0.128/26"] == ipip("10.64.0.128/26", "192.168.2.3")


def test_borrowed_entry_released() -> None:
    c = calc(*BASE, block("10.64.0.0/26", ME, [(9, "node-b")]))
    d = c.apply([block("10.64.0.0/26", ME)])
    assert d.removed == {"10.64.0.9/32"} and not d.routes


# --- changes ----------------------------------------------------------------------------------------------


def test_pod_moves_between_nodes() -> None:
    c = calc(*BASE, block("10.64.0.64/26", "node-b"), wep("node-b", "web", ["10.64.0.70"]))
    assert set(c.desired()) == {"10.64.0.64/26"}
    # Rescheduled onto us with the same IP (old endpoint deleted in the same batch).
    d = c.apply([delete(wep("node-b", "web", ["10.64.0.70"])), wep(ME, "web", ["10.64.0.70"])])
    assert d.routes == {"10.64.0.70/32": Route("10.64.0.70/32", dev=interface_name("shop", "web"), scope="link")}
    assert not d.removed
    # A bystander sees it as borrowed from node-b's block now.
    bystander = calc(*BASE, block("10.64.0.64/26", "node-b"), wep(ME, "web", ["10.64.0.70"]), me="node-c")
    assert bystander.desired()["10.64.0.70/32"] == native("10.64.0.70/32", "192.168.1.1")
    # Moves on to node-c: we route it there; the overlap window (both endpoints) prefers local.
    d = c.apply([wep("node-c", "web2", ["10.64.0.70"])])
    assert not d  # still ours locally
    d = c.apply([delete(wep(ME, "web", ["10.64.0.70"]))])
    assert d.routes == {"10.64.0.70/32": native("10.64.0.70/32", "192.168.2.3")}


def test_block_affinity_changes() -> None:
    c = calc(*BASE, block("10.64.0.64/26", "node-b"), wep("node-c", "p", ["10.64.0.66"]))
    assert c.desired()["10.64.0.66/32"] == native("10.64.0.66/32", "192.168.2.3")  # borrowed from b
    d = c.apply([block("10.64.0.64/26", "node-c")])  # node-c now owns the block its pod is in
    assert d.routes == {"10.64.0.64/26": native("10.64.0.64/26", "192.168.2.3")}
    assert d.removed == {"10.64.0.66/32"}  # no longer borrowed: the block route covers it
    d = c.apply([block("10.64.0.64/26", ME)])
    assert d.routes["10.64.0.64/26"] == Route("10.64.0.64/26", type="blackhole")
    assert d.routes["10.64.0.66/32"] == native("10.64.0.66/32", "192.168.2.3")  # borrowed from us now
    d = c.apply([block("10.64.0.64/26", None)])  # released; node-c's pod still there
    assert d.removed == {"10.64.0.64/26"} and "10.64.0.66/32" not in d.routes
    assert c.desired()["10.64.0.66/32"] == native("10.64.0.66/32", "192.168.2.3")


def test_block_arriving_after_its_pods() -> None:
    c = calc(*BASE, wep("node-b", "p", ["10.64.0.66"]), wep("node-c", "q", ["10.64.0.67"]))
    assert set(c.desired()) == {"10.64.0.66/32", "10.64.0.67/32"}  # in no known block: routed singly
    d = c.apply([block("10.64.0.64/26", "node-b")])
    assert d.removed == {"10.64.0.66/32"}  # now covered by node-b's block route; node-c's is borrowed
    assert d.routes == {"10.64.0.64/26": native("10.64.0.64/26", "192.168.1.2")}


def test_block_deleted_under_its_owners_pod() -> None:
    # node-b's pod needs no /32 while node-b owns the block; once the block is gone it does.
    c = calc(*BASE, block("10.64.0.64/26", "node-b"), wep("node-b", "p", ["10.64.0.66"]))
    d = c.apply([delete(block("10.64.0.64/26", "node-b"))])
    assert d.removed == {"10.64.0.64/26"}
    assert d.routes == {"10.64.0.66/32": native("10.64.0.66/32", "192.168.1.2")}


def test_block_affinity_resource_stands_in_only_without_a_block() -> None:
    c = calc(*BASE, affinity("node-b", "10.64.1.0/26", state="pending"))
    assert c.desired() == {}
    d = c.apply([affinity("node-b", "10.64.1.0/26")])
    assert d.routes == {"10.64.1.0/26": native("10.64.1.0/26", "192.168.1.2")}
    d = c.apply([block("10.64.1.0/26", "node-c")])  # the block's own affinity wins
    assert d.routes == {"10.64.1.0/26": native("10.64.1.0/26", "192.168.2.3")}
    d = c.apply([delete(block("10.64.1.0/26", "node-c"))])
    assert d.routes == {"10.64.1.0/26": native("10.64.1.0/26", "192.168.1.2")}
    d = c.apply([affinity("node-b", "10.64.1.0/26", state="pendingDeletion")])
    assert d.removed == {"10.64.1.0/26"}


def test_node_address_changes_and_removal() -> None:
    c = calc(
        *BASE,
        block("10.64.0.64/26", "node-b"),
        block("10.64.0.128/26", "node-c"),
        block("10.64.1.0/26", ME, [(5, "node-b")]),
    )
    before = c.recomputed
    d = c.apply([node("node-b", "192.168.1.22/24")])
    assert d.routes == {
        "10.64.0.64/26": native("10.64.0.64/26", "192.168.1.22"),
        "10.64.1.5/32": native("10.64.1.5/32", "192.168.1.22"),
    }
    assert c.recomputed - before == 2  # only node-b's routes were looked at
    d = c.apply([delete(node("node-b"))])
    assert d.removed == {"10.64.0.64/26", "10.64.1.5/32"}
    assert c.unresolved() == {"10.64.0.64/26": "node node-b is unknown", "10.64.1.5/32": "node node-b is unknown"}
    d = c.apply([node("node-b")])  # back, but without an address yet
    assert not d and c.unresolved()["10.64.0.64/26"] == "node node-b has no IPv4 address"
    d = c.apply([node("node-b", "192.168.1.2/24")])
    assert set(d.routes) == {"10.64.0.64/26", "10.64.1.5/32"} and c.unresolved() == {}


def test_pool_mode_switch_updates_every_affected_route() -> None:
    kvs = [
        *BASE,
        pool("10.80.0.0/16"),
        block("10.64.0.64/26", "node-b"),
        block("10.64.0.128/26", "node-c"),
        block("10.64.1.0/26", ME, [(5, "node-b")]),
        block("10.80.0.0/26", "node-b"),
        wep(ME, "web", ["10.64.1.9"]),
    ]
    c = calc(*kvs)
    d = c.apply([pool("10.64.0.0/16", ipip="Always")])
    assert d.routes == {
        "10.64.0.64/26": ipip("10.64.0.64/26", "192.168.1.2"),
        "10.64.0.128/26": ipip("10.64.0.128/26", "192.168.2.3"),
        "10.64.1.5/32": ipip("10.64.1.5/32", "192.168.1.2"),
    }  # other pool and local untouched
    c.apply(
        [
            node("node-b", "192.168.1.2/24", vtep="10.64.0.65", mac="66:00:00:00:00:0b"),
            node("node-c", "192.168.2.3/24", vtep="10.64.0.129", mac="66:00:00:00:00:0c"),
        ]
    )
    d = c.apply([pool("10.64.0.0/16", vxlan="Always")])
    assert {dst: r.encap for dst, r in d.routes.items()} == {
        "10.64.0.64/26": "vxlan",
        "10.64.0.128/26": "vxlan",
        "10.64.1.5/32": "vxlan",
    }
    d = c.apply([pool("10.64.0.0/16")])
    assert d.routes["10.64.0.128/26"] == native("10.64.0.128/26", "192.168.2.3")


def test_unknown_and_disabled_pools() -> None:
    c = calc(*BASE[1:], block("10.64.0.64/26", "node-b"), block("10.64.1.0/26", ME))
    # No pool: remote routes cannot choose an encapsulation -> unresolved; our blackhole stays.
    assert c.desired() == {"10.64.1.0/26": Route("10.64.1.0/26", type="blackhole")}
    assert c.unresolved() == {"10.64.0.64/26": "no IP pool contains 10.64.0.64/26"}
    # Disabled only stops new allocations: existing pods keep their routes.
    d = c.apply([pool("10.64.0.0/16", disabled=True)])
    assert d.routes == {"10.64.0.64/26": native("10.64.0.64/26", "192.168.1.2")}
    d = c.apply([delete(pool("10.64.0.0/16"))])
    assert d.removed == {"10.64.0.64/26"}


def test_vxlan_needs_the_vtep() -> None:
    c = calc(*BASE, pool("10.64.0.0/16", vxlan="Always"), block("10.64.0.64/26", "node-b"))
    assert c.desired() == {} and "VXLAN" in c.unresolved()["10.64.0.64/26"]
    d = c.apply([node("node-b", "192.168.1.2/24", vtep="10.64.0.65", mac="66:00:00:00:00:0b")])
    assert d.routes == {"10.64.0.64/26": vxlan("10.64.0.64/26", "10.64.0.65")}
    assert d.neighbors == {"10.64.0.65": Neighbor("66:00:00:00:00:0b", "192.168.1.2")}


def test_neighbors_follow_nodes_and_exclude_ourselves() -> None:
    c = calc(
        node(ME, "192.168.1.1/24", vtep="10.64.0.1", mac="66:00:00:00:00:0a"),
        node("node-b", "192.168.1.2/24", vtep="10.64.0.65", mac="66:00:00:00:00:0b"),
    )
    assert c.desired_neighbors() == {"10.64.0.65": Neighbor("66:00:00:00:00:0b", "192.168.1.2")}
    d = c.apply([node("node-b", "192.168.1.2/24", vtep="10.64.0.65", mac="66:00:00:00:00:bb")])
    assert d.neighbors == {"10.64.0.65": Neighbor("66:00:00:00:00:bb", "192.168.1.2")}
    d = c.apply([node("node-b", "192.168.1.2/24", vtep="10.64.0.66", mac="66:00:00:00:00:bb")])
    assert d.neighbors_removed == {"10.64.0.65"} and set(d.neighbors) == {"10.64.0.66"}
    d = c.apply([delete(node("node-b"))])
    assert d.neighbors_removed == {"10.64.0.66"} and c.desired_neighbors() == {}


def test_deletes_remove_routes() -> None:
    kvs = [*BASE, block("10.64.0.0/26", ME), block("10.64.0.64/26", "node-b"), wep(ME, "web", ["10.64.0.5"])]
    c = calc(*kvs)
    assert len(c.desired()) == 3
    d = c.apply([delete(kvs[-1]), delete(kvs[-2]), delete(kvs[-3])])
    assert d.removed == {"10.64.0.5/32", "10.64.0.64/26", "10.64.0.0/26"} and c.desired() == {}
    assert not c.apply([delete(kvs[-1])])  # deleting an unknown key is a no-op


def test_malformed_values_are_counted_and_treated_as_absent() -> None:
    c = calc(*BASE, wep(ME, "web", ["10.64.0.5"]))
    key = wep(ME, "web", ["10.64.0.5"])[0]
    bad_key = "/calico/v1/host/x/workload/k8s/bad/endpoint/eth0"  # workload without "<ns>%2f<pod>"
    d = c.apply([(key, b"{garbage"), (K.profile_key("kns.shop"), b"{}"), (bad_key, b"{}")])
    assert [k for k, _ in d.malformed] == [key, bad_key]
    assert d.removed == {"10.64.0.5/32"}  # state follows the datastore, not update order
    assert c.malformed == 2 and c.ignored == 1


def test_accepts_protocol_kvs_and_merges_deltas() -> None:
    c = RouteCalculator(ME)
    d1 = c.apply([KV(k, v, "1") for k, v in (*BASE, wep(ME, "web", ["10.64.0.5"]))])
    d2 = c.apply([KV(wep(ME, "web", [])[0], None, "2")])
    d1.merge(d2)
    assert d1.routes == {} and d1.removed == {"10.64.0.5/32"}


def test_one_event_touches_few_routes() -> None:
    """Incrementality: a pod start in a 200-node cluster looks at its own address only."""
    kvs = [pool("10.64.0.0/16", ipip="CrossSubnet"), node(ME, "192.168.0.1/20")]
    for i in range(200):
        name = f"n{i}"
        kvs.append(node(name, f"192.168.{i // 16}.{10 + i % 16}/20"))
        kvs.append(block(f"10.64.{i // 4}.{(i % 4) * 64}/26", name))
        kvs += [wep(name, f"p{i}-{k}", [f"10.64.{i // 4}.{(i % 4) * 64 + k + 1}"]) for k in range(20)]
    c = calc(*kvs)
    assert len(c.desired()) == 200
    before = c.recomputed
    d = c.apply([wep("n7", "new", ["10.64.1.220"])])  # inside n7's block: nothing to do
    assert not d and c.recomputed - before == 1
    d = c.apply([wep("n9", "borrower", ["10.64.1.221"])])  # borrowed from n7
    assert set(d.routes) == {"10.64.1.221/32"} and c.recomputed - before == 2
    # An affinity move looks at the block and the 22 addresses inside it, not at the cluster.
    d = c.apply([block("10.64.1.192/26", "n8")])
    assert c.recomputed - before == 2 + 1 + 22
    # n7's 21 pods are borrowed from n8's block now; n9's borrowed /32 is unchanged.
    assert d.routes["10.64.1.192/26"].gateway == "192.168.0.18"
    assert {r.gateway for dst, r in d.routes.items() if dst.endswith("/32")} == {"192.168.0.17"}
    assert len(d.routes) == 1 + 21 and not d.removed
