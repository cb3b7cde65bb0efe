"""Rendering BIRD's configuration from the bgp syncer: golden files per topology, Calico's semantics, purity.

Regenerate the golden files after an intended change with PYTYPHA_UPDATE_GOLDEN=1 and review the diff.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from felix.bgp.render import Rendered, render
from felix.bgp.view import BgpView, parse_as_number
from protocol import KV

from . import bgp_fixtures as F
from .conftest import kernel_skip

GOLDEN = Path(__file__).parent / "golden" / "bgp"
UPDATE = os.environ.get("PYTYPHA_UPDATE_GOLDEN") == "1"


def options_topology() -> list[F.Obj]:
    """Most knobs at once: AS precedence, listen port, per-peer options, pools BIRD must not export."""
    return [
        *F.nodes_and_blocks(node1={"asn": 65001, "labels": {"rack": "r1"}}, node2={"labels": {"rack": "r1"}}),
        F.bgp_config(asNumber=65100, listenPort=1790),
        F.bgp_config("node.node1", logSeverityScreen="Debug"),
        F.pool("vxlan", "10.244.0.0/16", vxlanMode="Always"),
        F.pool("quiet", "10.245.0.0/16", disableBGPExport=True),
        F.affinity("node1", "10.245.0.0/26"),  # in a pool BGP does not export: not originated
        F.affinity("node1", "198.19.100.0/26", state="pending"),  # not confirmed: not originated
        F.bgp_peer(
            "edge",
            node="node1",
            peerIP="203.0.113.9:1179",
            asNumber="1.10",
            keepOriginalNextHop=True,
            numAllowedLocalASNumbers=1,
            maxRestartTime="2m",
            sourceAddress="None",
        ),
        F.bgp_peer("rack-router", nodeSelector="rack == 'r1'", peerIP="198.18.9.253", asNumber=65200),
        F.bgp_peer("secret", peerIP="198.18.9.252", asNumber=65200, password={"secretKeyRef": {"name": "s"}}),
        F.bgp_peer("tor-again", node="node1", peerIP=F.TOR_IP, asNumber=F.TOR_AS),  # the global one wins
        F.tor_peer(),
    ]


CASES = {
    "mesh-node1": (F.mesh_topology, "node1"),
    "mesh-node3": (F.mesh_topology, "node3"),
    "rr-reflector-node1": (F.route_reflector_topology, "node1"),
    "rr-client-node2": (F.route_reflector_topology, "node2"),
    "external-only-node2": (F.external_only_topology, "node2"),
    "borrowed-node3": (F.borrowed_topology, "node3"),
    "options-node1": (options_topology, "node1"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_golden(case: str) -> None:
    topology, nodename = CASES[case]
    r = F.rendered(topology(), nodename)
    assert r.config is not None
    path = GOLDEN / f"{case}.cfg"
    if UPDATE:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(r.config)
    assert r.config == path.read_text(), f"{case} changed: review, then PYTYPHA_UPDATE_GOLDEN=1"


def test_same_inputs_same_bytes_whatever_the_order() -> None:
    for topology, nodename in CASES.values():
        first = F.rendered(topology(), nodename).config
        for seed in range(5):
            assert F.rendered(topology(), nodename, shuffle=seed).config == first


@pytest.mark.slow
def test_golden_files_are_valid_bird_configurations(tmp_path: Path) -> None:
    if shutil.which("bird") is None:
        kernel_skip("bird2 is not installed (the README's commands install it)")
    for case in sorted(CASES):
        res = subprocess.run(["bird", "-p", "-c", str(GOLDEN / f"{case}.cfg")], capture_output=True, text=True)
        assert res.returncode == 0, f"{case}: {res.stderr}"


def peers(r: Rendered) -> dict[str, tuple[str, int]]:
    return {p.name: (p.kind, p.as_number) for p in r.peers}


def test_full_mesh_is_one_session_per_pair_and_the_lower_address_connects() -> None:
    rs = {n: F.rendered(F.mesh_topology(), n) for n in ("node1", "node2", "node3")}
    assert peers(rs["node2"]) == {
        "Global_198_18_9_254": ("global", 65000),
        "Mesh_198_18_9_1": ("mesh", 64512),
        "Mesh_198_18_9_3": ("mesh", 64512),
    }
    passive = {(n, p.address) for n, r in rs.items() for p in r.peers if p.passive}
    assert passive == {("node1", "198.18.9.2"), ("node1", "198.18.9.3"), ("node2", "198.18.9.3")}
    assert rs["node1"].originated == ("198.19.1.0/26",)


def test_route_reflector_reflects_for_its_clients_and_the_mesh_is_off() -> None:
    rr, client = F.rendered(F.route_reflector_topology(), "node1"), F.rendered(F.route_reflector_topology(), "node3")
    assert rr.route_reflector == "244.0.0.1"
    assert {p.address: (p.rr_client, p.reflect) for p in rr.peers} == {
        "198.18.9.254": (False, False),  # eBGP: never reflected to, never a client
        "198.18.9.2": (True, True),
        "198.18.9.3": (True, True),
    }
    assert peers(client) == {"Global_198_18_9_254": ("global", 65000), "Node_198_18_9_1": ("node", 64512)}
    assert not any(p.reflect for p in client.peers), "a client must not re-advertise what it learns"


def test_two_reflectors_in_one_cluster_peer_as_equals_not_as_clients() -> None:
    rr = {"rr": "244.0.0.1", "labels": {"route-reflector": "true"}}
    objs = [
        *F.nodes_and_blocks(4, node1=rr, node2=rr),
        F.bgp_config(nodeToNodeMeshEnabled=False),
        F.bgp_peer("rrs", nodeSelector="all()", peerSelector="route-reflector == 'true'"),
    ]
    r = F.rendered(objs, "node1")
    assert {p.address: p.rr_client for p in r.peers} == {"198.18.9.2": False, "198.18.9.3": True, "198.18.9.4": True}
    assert [p.address for p in F.rendered(objs, "node4").peers] == ["198.18.9.1", "198.18.9.2"]


def test_as_number_precedence_and_forms() -> None:
    assert F.rendered(F.mesh_topology(), "node1").as_number == 64512  # Calico's default
    objs = [*F.nodes_and_blocks(node2={"asn": 65002}), F.bgp_config(asNumber=65100)]
    assert F.rendered(objs, "node1").as_number == 65100
    r = F.rendered(objs, "node2")
    assert r.as_number == 65002
    assert {p.address: p.as_number for p in r.peers} == {"198.18.9.1": 65100, "198.18.9.3": 65100}
    assert parse_as_number("1.10") == 65546 and parse_as_number("64512") == 64512
    for bad in ("0", "1.70000", "x", True, 1 << 32):
        with pytest.raises(ValueError):
            parse_as_number(bad)


def test_only_confirmed_blocks_of_exported_pools_and_hosted_borrowed_addresses_are_originated() -> None:
    r = F.rendered(options_topology(), "node1")
    assert r.originated == ("198.19.1.0/26",)
    assert "route 10.245.0.0/26" not in (r.config or "")
    b = F.rendered(F.borrowed_topology(), "node3")
    assert b.originated == ("198.19.3.0/26", "198.19.1.40/32")
    assert F.rendered(F.borrowed_topology(), "node1").originated == ("198.19.1.0/26",), "the lender exports its block"


def test_peer_options_and_problems() -> None:
    r = F.rendered(options_topology(), "node1")
    by_name = {p.name: p for p in r.peers}
    edge = by_name["Node_203_0_113_9_port_1179"]
    assert (edge.as_number, edge.keep_next_hop, edge.allowed_local_as, edge.restart_time) == (65546, True, 1, 120)
    assert not edge.use_node_ip
    assert by_name["Global_198_18_9_254"].source == "BGPPeer tor", "a global peer beats a node-specific one"
    assert "Node_198_18_9_253" in by_name
    assert not any(p.address == "198.18.9.252" for p in r.peers)
    assert any("password" in why for why in r.problems)
    assert "local port 1790 as 65001;" in (r.config or "")
    assert "debug all;" in (r.config or "")
    mesh3 = by_name["Mesh_198_18_9_3"]
    assert (mesh3.port, mesh3.as_number) == (1790, 65100)
    assert "rack-router" not in str(F.rendered(options_topology(), "node3").peers), "nodeSelector excludes node3"


def test_explicit_peering_replaces_the_mesh_session_to_the_same_node() -> None:
    objs = [*F.mesh_topology(), F.bgp_peer("pin", node="node1", peerIP="198.18.9.2", asNumber=64512)]
    r = F.rendered(objs, "node1")
    assert [p.name for p in r.peers if p.address == "198.18.9.2"] == ["Node_198_18_9_2"]
    assert [p.name for p in F.rendered(objs, "node2").peers if p.address == "198.18.9.1"] == ["Node_198_18_9_1"]


def test_no_config_until_this_node_has_an_address() -> None:
    view = BgpView()
    assert render(view, "node1").config is None
    view.apply(F.kvs([F.node("node1", "198.18.9.1")]))
    assert render(view, "node1").config is not None
    view.apply(F.kvs([F.node("node1", "198.18.9.1")], deleted=True))
    r = render(view, "node1")
    assert r.config is None and "not in the bgp syncer" in r.problems[0]


def test_bad_objects_are_reported_and_absent_not_fatal() -> None:
    view = BgpView()
    view.apply(F.kvs(F.mesh_topology()))
    good = render(view, "node1").config
    bad = F.kvs(
        [
            F.bgp_peer("broken-selector", nodeSelector="has(", peerIP="198.18.9.200", asNumber=1),
            F.bgp_peer("no-target"),
            F.bgp_peer("no-as", peerIP="198.18.9.201"),
            F.bgp_peer("bad-ip", peerIP="198.18.9.999", asNumber=1),
            F.bgp_peer("bad-restart", peerIP="198.18.9.202", asNumber=1, maxRestartTime="soon"),
        ]
    )
    bad.append(KV("/calico/resources/v3/projectcalico.org/bgpconfigurations/default", b"[1]", "1"))
    reasons = dict(view.apply(bad))
    assert len(reasons) == 6 and "nodeSelector" in str(reasons)
    assert render(view, "node1").config == good
