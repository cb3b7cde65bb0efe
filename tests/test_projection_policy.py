"""typha.k8s.projection of policies: Kubernetes NetworkPolicy, Calico (global) network policies, and
the selector prefixes they are rewritten with."""

from __future__ import annotations

import copy

import pytest

from tests.support.k8s_objects import crd, enc, make_np, one
from typha.k8s.projection import ProjectionError, prefix_selector, project, project_delete

# --- Kubernetes NetworkPolicy ----------------------------------------------------------------------


def test_k8s_policy_default_deny() -> None:
    key, v = one("networkpolicies", make_np({"podSelector": {}}))
    assert key == "/calico/v1/policy/tier/default/policy/shop%2fknp.default.np"
    assert v["order"] == 1000.0
    assert v["selector"] == "(projectcalico.org/orchestrator == 'k8s') && projectcalico.org/namespace == 'shop'"
    assert v["types"] == ["ingress"]  # no policyTypes: ingress only
    assert v["inboundRules"] == [] and v["outboundRules"] == []
    assert v["namespace"] == "shop"


def test_k8s_policy_rules() -> None:
    spec = {
        "podSelector": {"matchLabels": {"app": "db", "tier": "data"}},
        "policyTypes": ["Ingress", "Egress"],
        "ingress": [
            {
                "from": [
                    {"podSelector": {"matchLabels": {"app": "web"}}},
                    {"namespaceSelector": {"matchLabels": {"team": "ops"}}},
                    {
                        "namespaceSelector": {},
                        "podSelector": {
                            "matchExpressions": [
                                {"key": "role", "operator": "In", "values": ["a", "b"]},
                                {"key": "x", "operator": "NotIn", "values": ["c"]},
                                {"key": "y", "operator": "Exists"},
                                {"key": "z", "operator": "DoesNotExist"},
                            ]
                        },
                    },
                ],
                "ports": [{"port": 5432}, {"protocol": "TCP", "port": 5433}, {"protocol": "UDP", "port": "dns"}],
            },
        ],
        "egress": [
            {
                "to": [{"ipBlock": {"cidr": "192.0.2.7/24", "except": ["192.0.2.128/25"]}}],
                "ports": [{"protocol": "TCP", "port": 8000, "endPort": 8010}],
            },
            {},
        ],
    }
    v = one("networkpolicies", make_np(spec))[1]
    assert v["selector"] == (
        "(projectcalico.org/orchestrator == 'k8s' && app == 'db' && tier == 'data')"
        " && projectcalico.org/namespace == 'shop'"
    )
    assert v["types"] == ["ingress", "egress"]
    ins = v["inboundRules"]
    # One rule per (protocol, peer): TCP first (sorted), then UDP.
    assert [r["protocol"] for r in ins] == ["tcp"] * 3 + ["udp"] * 3
    assert ins[0] == {
        "action": "allow",
        "protocol": "tcp",
        "dstPorts": ["5432:5433"],
        "srcSelector": "(projectcalico.org/namespace == 'shop') && "
        "(projectcalico.org/orchestrator == 'k8s' && app == 'web')",
    }
    # A namespaceSelector alone: pods in matching namespaces (pcns. labels), any pod.
    assert ins[1]["srcSelector"] == "(pcns.team == 'ops') && (projectcalico.org/orchestrator == 'k8s')"
    # Empty namespaceSelector = every namespace.
    assert ins[2]["srcSelector"] == (
        "(has(projectcalico.org/namespace)) && (projectcalico.org/orchestrator == 'k8s' && "
        "role in { 'a', 'b' } && x not in { 'c' } && has(y) && ! has(z))"
    )
    assert ins[3]["dstPorts"] == ["dns"]
    outs = v["outboundRules"]
    assert outs[0] == {
        "action": "allow",
        "protocol": "tcp",
        "dstPorts": ["8000:8010"],
        "dstNets": ["192.0.2.0/24"],
        "notDstNets": ["192.0.2.128/25"],
    }
    assert outs[1] == {"action": "allow"}  # empty egress rule: allow everything


def test_k8s_policy_ports_all_and_merge() -> None:
    spec = {
        "podSelector": {},
        "ingress": [
            {"ports": [{"port": 80}, {"port": 81}, {"port": 82}, {"protocol": "UDP"}, {"protocol": "UDP", "port": 9}]}
        ],
    }
    ins = one("networkpolicies", make_np(spec))[1]["inboundRules"]
    assert ins == [
        {"action": "allow", "protocol": "tcp", "dstPorts": ["80:82"]},
        {"action": "allow", "protocol": "udp"},
    ]  # all UDP ports is not narrowed by port 9


def test_k8s_policy_egress_only_and_delete() -> None:
    v = one("networkpolicies", make_np({"podSelector": {}, "policyTypes": ["Egress"]}))[1]
    assert v["types"] == ["egress"]
    assert project_delete("networkpolicies", {"metadata": {"name": "np", "namespace": "shop"}}) == [
        "/calico/v1/policy/tier/default/policy/shop%2fknp.default.np"
    ]


def test_k8s_policy_noise_and_edit() -> None:
    np1 = make_np({"podSelector": {}, "ingress": [{"ports": [{"port": 80}]}]})
    np2 = copy.deepcopy(np1)
    np2["metadata"].update(
        resourceVersion="6", generation=2, managedFields=[{"manager": "kubectl", "time": "2024-05-05T00:00:00Z"}]
    )
    np2["metadata"]["annotations"] = {"kubectl.kubernetes.io/last-applied-configuration": "{...}"}
    assert enc(one("networkpolicies", np1)[1]) == enc(one("networkpolicies", np2)[1])
    np2["spec"]["ingress"][0]["ports"][0]["port"] = 81
    assert enc(one("networkpolicies", np1)[1]) != enc(one("networkpolicies", np2)[1])


# --- Calico policies -------------------------------------------------------------------------------


def test_calico_network_policy() -> None:
    obj = crd(
        "NetworkPolicy",
        "allow-web",
        {
            "order": 50,
            "selector": "app == 'db'",
            "serviceAccountSelector": "role == 'x'",
            "ingress": [
                {
                    "action": "Allow",
                    "protocol": "TCP",
                    "source": {"selector": "app == 'web'", "namespaceSelector": "team == 'a' || all()"},
                    "destination": {"ports": [5432, "6000:6010"]},
                },
                {"action": "Pass", "source": {"serviceAccounts": {"names": ["sa1", "sa2"]}}},
                {"action": "Deny", "source": {"nets": ["10.0.0.1/8"]}, "notProtocol": "UDP", "icmp": {"type": 8}},
            ],
        },
        ns="shop",
    )
    key, v = one("calico-networkpolicies", obj)
    assert key == "/calico/v1/policy/tier/default/policy/shop%2fallow-web"
    assert v["order"] == 50.0
    assert v["selector"] == "((app == 'db') && projectcalico.org/namespace == 'shop') && (pcsa.role == 'x')"
    assert v["types"] == ["ingress"]
    r0, r1, r2 = v["inboundRules"]
    assert r0["srcSelector"] == "(pcns.team == 'a' || has(projectcalico.org/namespace)) && (app == 'web')"
    assert r0["dstPorts"] == [5432, "6000:6010"] and r0["protocol"] == "tcp"
    assert r1 == {
        "action": "pass",
        "srcSelector": "(projectcalico.org/namespace == 'shop') && "
        "(projectcalico.org/serviceaccount in { 'sa1', 'sa2' })",
    }
    assert r2 == {"action": "deny", "srcNets": ["10.0.0.0/8"], "notProtocol": "udp", "icmpType": 8}
    assert project_delete("calico-networkpolicies", obj) == [key]


def test_global_network_policy_order_and_types() -> None:
    ordered = crd(
        "GlobalNetworkPolicy",
        "g1",
        {
            "order": 10,
            "selector": "all()",
            "namespaceSelector": "env == 'prod'",
            "egress": [{"action": "Deny", "destination": {"nets": ["169.254.169.254/32"]}}],
        },
    )
    key, v = one("globalnetworkpolicies", ordered)
    assert key == "/calico/v1/policy/tier/default/policy/g1"
    assert v["order"] == 10.0
    assert v["selector"] == "(all()) && (pcns.env == 'prod')"
    assert v["types"] == ["egress"]  # defaulted: only egress rules
    assert v["outboundRules"] == [{"action": "deny", "dstNets": ["169.254.169.254/32"]}]
    assert "namespace" not in v
    unordered = crd(
        "GlobalNetworkPolicy",
        "g2",
        {"selector": "a == 'b'", "ingress": [{"action": "Allow", "source": {"selector": "c == 'd'"}}]},
    )
    v = one("globalnetworkpolicies", unordered)[1]
    assert v["order"] is None  # last
    assert v["types"] == ["ingress"]
    assert v["inboundRules"][0]["srcSelector"] == "c == 'd'"  # global: no namespace restriction
    tiered = crd("GlobalNetworkPolicy", "sec.g3", {"tier": "sec", "types": ["Ingress", "Egress"]})
    key, v = one("globalnetworkpolicies", tiered)
    assert key == "/calico/v1/policy/tier/sec/policy/sec.g3" and v["types"] == ["ingress", "egress"]


def test_prefix_selector() -> None:
    assert (
        prefix_selector("a == 'x' && !has(b) && c in {'in', 'not'}", "pcns.")
        == "pcns.a == 'x' && !has(pcns.b) && pcns.c in {'in', 'not'}"
    )
    assert (
        prefix_selector("k contains 'v' || (x starts with 'y')", "pcsa.")
        == "pcsa.k contains 'v' || (pcsa.x starts with 'y')"
    )
    assert prefix_selector("all()", "pcns.", namespace_semantics=True) == "has(projectcalico.org/namespace)"
    assert prefix_selector("global()", "pcns.", namespace_semantics=True) == "!has(projectcalico.org/namespace)"
    assert prefix_selector("all()", "pcns.") == "all()"


def test_a_network_policy_port_range_beyond_65535_is_malformed_not_a_giant_list() -> None:
    obj = {
        "metadata": {"name": "p", "namespace": "ns"},
        "spec": {"ingress": [{"ports": [{"port": 0, "endPort": 10**12}, {"port": 80}]}]},
    }
    with pytest.raises(ProjectionError, match="port"):
        project("networkpolicies", obj)
