"""Tests for typha.k8s.projection and the key builders it uses (protocol.keys)."""

from __future__ import annotations

import copy
import hashlib

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol import keys as K
from typha.k8s.projection import (
    RESOURCES,
    ProjectionError,
    interface_name,
    prefix_selector,
    project,
    project_all,
    project_delete,
    resources_for_syncer,
)


def enc(v: object) -> bytes:
    """How typha encodes a value: identical content must give identical bytes."""
    return orjson.dumps(v, option=orjson.OPT_SORT_KEYS)


def one(resource: str, obj: dict) -> tuple[str, dict | None]:
    ups = project(resource, obj)
    assert len(ups) == 1, ups
    return ups[0]


# --- object factories (shapes as the API server returns them) -----------------------------------


def make_pod(
    name: str = "web-1",
    ns: str = "shop",
    node: str | None = "node-a",
    ip: str | None = "10.64.0.5",
    labels: dict | None = None,
    phase: str = "Running",
    sa: str = "web-sa",
) -> dict:
    pod: dict = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": ns,
            "uid": "0b9c5c1e-7d8f-4c3e-9a51-2f6c1d0b7a11",
            "resourceVersion": "12345",
            "creationTimestamp": "2024-01-01T00:00:00Z",
            "labels": {"app": "web", "tier": "frontend"} if labels is None else labels,
            "annotations": {"cni.projectcalico.org/containerID": "abc123"},
            "managedFields": [
                {
                    "manager": "kubelet",
                    "operation": "Update",
                    "time": "2024-01-01T00:00:05Z",
                    "fieldsType": "FieldsV1",
                    "fieldsV1": {"f:status": {}},
                }
            ],
        },
        "spec": {
            "serviceAccountName": sa,
            "containers": [
                {
                    "name": "web",
                    "image": "nginx",
                    "ports": [
                        {"containerPort": 8080, "name": "http", "protocol": "TCP"},
                        {"containerPort": 9000, "protocol": "TCP"},  # unnamed, no hostPort: ignored
                        {"containerPort": 53, "hostPort": 5353, "protocol": "UDP"},
                    ],
                }
            ],
        },
        "status": {
            "phase": phase,
            "conditions": [{"type": "Ready", "status": "True", "lastTransitionTime": "2024-01-01T00:00:07Z"}],
        },
    }
    if node:
        pod["spec"]["nodeName"] = node
    if ip:
        pod["status"]["podIP"] = ip
        pod["status"]["podIPs"] = [{"ip": ip}]
    return pod


def make_node(name: str = "node-a", annotations: dict | None = None, labels: dict | None = None) -> dict:
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "uid": "u1",
            "resourceVersion": "77",
            "labels": {"kubernetes.io/hostname": name} if labels is None else labels,
            "annotations": {
                "projectcalico.org/IPv4Address": "192.0.2.10/24",
                "projectcalico.org/IPv4IPIPTunnelAddr": "10.64.0.1",
                "node.alpha.kubernetes.io/ttl": "0",
            }
            if annotations is None
            else annotations,
            "managedFields": [{"manager": "kubelet", "time": "2024-01-01T00:00:00Z"}],
        },
        "spec": {"podCIDRs": ["10.244.1.0/24"]},
        "status": {
            "addresses": [{"type": "InternalIP", "address": "192.0.2.10"}, {"type": "Hostname", "address": name}],
            "conditions": [{"type": "Ready", "status": "True", "lastHeartbeatTime": "2024-01-01T00:00:00Z"}],
            "nodeInfo": {"kubeletVersion": "v1.29.2"},
            "images": [{"names": ["nginx"]}],
        },
    }


def make_np(spec: dict, name: str = "np", ns: str = "shop") -> dict:
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": name, "namespace": ns, "resourceVersion": "5", "generation": 1},
        "spec": spec,
    }


def crd(kind: str, name: str, spec: dict, ns: str | None = None, labels: dict | None = None) -> dict:
    md: dict = {"name": name, "resourceVersion": "9", "uid": "u"}
    if ns:
        md["namespace"] = ns
    if labels is not None:
        md["labels"] = labels
    return {"apiVersion": "crd.projectcalico.org/v1", "kind": kind, "metadata": md, "spec": spec}


# --- resource table and keys --------------------------------------------------------------------


def test_resource_table_syncers() -> None:
    felix = {r.kind + "@" + (r.group or "core") for r in resources_for_syncer("felix")}
    assert felix == {
        "Node@core",
        "Pod@core",
        "Namespace@core",
        "ServiceAccount@core",
        "NetworkPolicy@networking.k8s.io",
        "GlobalNetworkPolicy@crd.projectcalico.org",
        "NetworkPolicy@crd.projectcalico.org",
        "GlobalNetworkSet@crd.projectcalico.org",
        "NetworkSet@crd.projectcalico.org",
        "IPPool@crd.projectcalico.org",
        "BlockAffinity@crd.projectcalico.org",
        "IPAMBlock@crd.projectcalico.org",
        "HostEndpoint@crd.projectcalico.org",
        "FelixConfiguration@crd.projectcalico.org",
        "ClusterInformation@crd.projectcalico.org",
    }
    bgp = {r.name for r in resources_for_syncer("bgp")}
    assert bgp == {"nodes", "bgppeers", "bgpconfigurations", "ippools", "blockaffinities", "ipamblocks"}
    assert RESOURCES["pods"].path() == "/api/v1/pods"
    assert RESOURCES["pods"].path("ns1") == "/api/v1/namespaces/ns1/pods"
    assert RESOURCES["ippools"].path() == "/apis/crd.projectcalico.org/v1/ippools"
    assert RESOURCES["networkpolicies"].api_version == "networking.k8s.io/v1"
    with pytest.raises(ValueError):
        resources_for_syncer("nope")


def test_workload_key_roundtrip() -> None:
    key = K.workload_key("node-a", "shop", "web-1")
    assert key == "/calico/v1/host/node-a/workload/k8s/shop%2fweb-1/endpoint/eth0"
    wk = K.parse_workload_key(key)
    assert wk == K.WorkloadKey("node-a", "k8s", "shop", "web-1", "eth0")
    assert key.startswith(K.workload_prefix("node-a"))
    for bad in (
        "/calico/v1/host/node-a/endpoint/eth1",
        "/calico/v1/policy/profile/kns.x",
        "/calico/v1/host/node-a/workload/k8s/noslash/endpoint/eth0",
        "",
    ):
        assert K.parse_workload_key(bad) is None


def test_other_keys() -> None:
    assert K.policy_key("knp.default.x", "shop") == "/calico/v1/policy/tier/default/policy/shop%2fknp.default.x"
    assert K.parse_policy_key(K.policy_key("p", "ns", "sec")) == K.PolicyKey("sec", "ns", "p")
    assert K.parse_policy_key(K.policy_key("g")) == K.PolicyKey("default", None, "g")
    assert K.ip_pool_key("10.64.0.0/10") == "/calico/v1/ipam/v4/pool/10.64.0.0-10"
    assert K.ip_pool_key("fd00::/48") == "/calico/v1/ipam/v6/pool/fd00::-48"
    assert K.ipam_block_key("10.64.0.0/26") == "/calico/ipam/v2/assignment/ipv4/block/10.64.0.0-26"
    assert K.parse_block_key(K.ipam_block_key("10.64.0.64/26")) == "10.64.0.64/26"
    assert K.block_affinity_key("n1", "10.64.0.0/26") == "/calico/ipam/v2/host/n1/ipv4/block/10.64.0.0-26"
    assert K.node_key("n1") == "/calico/resources/v3/projectcalico.org/nodes/n1"
    assert K.parse_node_key(K.node_key("n1")) == "n1"


# --- pods -------------------------------------------------------------------------------------------


def test_pod_projection() -> None:
    key, v = one("pods", make_pod())
    assert key == K.workload_key("node-a", "shop", "web-1")
    assert v is not None
    assert v["name"] == "cali" + hashlib.sha1(b"shop.web-1").hexdigest()[:11] == interface_name("shop", "web-1")
    assert len(v["name"]) == 15  # fits IFNAMSIZ
    assert v["ipNetworks"] == ["10.64.0.5/32"]
    assert v["profiles"] == ["kns.shop", "ksa.shop.web-sa"]
    assert v["labels"] == {
        "app": "web",
        "tier": "frontend",
        "projectcalico.org/namespace": "shop",
        "projectcalico.org/orchestrator": "k8s",
        "projectcalico.org/serviceaccount": "web-sa",
    }
    assert v["node"] == "node-a" and v["orchestrator"] == "k8s" and v["workload"] == "shop/web-1"
    assert v["ports"] == [
        {"name": "http", "protocol": "tcp", "port": 8080},
        {"protocol": "udp", "port": 53, "hostPort": 5353},
    ]
    assert "mac" not in v
    # Nothing from the noise made it through.
    blob = enc(v)
    for noise in (b"12345", b"managedFields", b"kubelet", b"abc123", b"Ready", b"2024-01-01"):
        assert noise not in blob


def test_pod_dual_stack_and_annotation_fallback() -> None:
    pod = make_pod(ip=None)
    pod["status"]["podIPs"] = [{"ip": "10.64.0.9"}, {"ip": "fd00:0:0::9"}]
    assert one("pods", pod)[1]["ipNetworks"] == ["10.64.0.9/32", "fd00::9/128"]
    pod = make_pod(ip=None)  # kubelet has not reported yet; Calico CNI's annotation has
    pod["metadata"]["annotations"]["cni.projectcalico.org/podIPs"] = "10.64.0.7/32"
    assert one("pods", pod)[1]["ipNetworks"] == ["10.64.0.7/32"]
    pod["metadata"]["annotations"]["cni.projectcalico.org/hwAddr"] = "1c:0c:0a:c0:ff:ee"
    assert one("pods", pod)[1]["mac"] == "1c:0c:0a:c0:ff:ee"


@pytest.mark.parametrize("phase", ["Succeeded", "Failed", "Completed"])
def test_finished_pod_has_no_endpoint(phase: str) -> None:
    assert one("pods", make_pod(phase=phase)) == (K.workload_key("node-a", "shop", "web-1"), None)


def test_pod_without_ip_or_node_or_with_host_network() -> None:
    assert one("pods", make_pod(ip=None)) == (K.workload_key("node-a", "shop", "web-1"), None)
    assert project("pods", make_pod(node=None)) == []
    assert project_delete("pods", make_pod(node=None)) == []
    hn = make_pod()
    hn["spec"]["hostNetwork"] = True
    assert one("pods", hn)[1] is None


def test_terminating_pod_keeps_endpoint_until_cni_releases_ip() -> None:
    pod = make_pod()
    pod["metadata"]["deletionTimestamp"] = "2024-01-01T00:10:00Z"
    assert one("pods", pod)[1] is not None
    pod["metadata"]["annotations"]["cni.projectcalico.org/podIP"] = ""
    assert one("pods", pod)[1] is None


def test_pod_noise_gives_identical_bytes() -> None:
    base = make_pod()
    _, v0 = one("pods", base)
    status_only = copy.deepcopy(base)
    status_only["status"]["conditions"][0]["lastTransitionTime"] = "2024-02-02T00:00:00Z"
    status_only["status"]["containerStatuses"] = [{"name": "web", "restartCount": 3}]
    status_only["status"]["startTime"] = "2024-02-02T00:00:00Z"
    meta_noise = copy.deepcopy(base)
    meta_noise["metadata"]["resourceVersion"] = "99999"
    meta_noise["metadata"]["managedFields"].append({"manager": "other", "time": "2030-01-01T00:00:00Z"})
    meta_noise["metadata"]["annotations"]["kubectl.kubernetes.io/restartedAt"] = "now"
    meta_noise["metadata"]["generation"] = 7
    reordered = copy.deepcopy(base)
    reordered["metadata"]["labels"] = dict(reversed(list(base["metadata"]["labels"].items())))
    for variant in (status_only, meta_noise, reordered):
        assert enc(one("pods", variant)[1]) == enc(v0)


def test_pod_meaningful_changes_change_value() -> None:
    _, v0 = one("pods", make_pod())
    assert enc(one("pods", make_pod(labels={"app": "web", "tier": "backend"}))[1]) != enc(v0)
    assert enc(one("pods", make_pod(ip="10.64.0.6"))[1]) != enc(v0)
    assert enc(one("pods", make_pod(sa="other"))[1]) != enc(v0)


def test_pod_service_account_label_rules() -> None:
    long_sa = "s" * 63
    v = one("pods", make_pod(sa=long_sa))[1]
    assert "projectcalico.org/serviceaccount" not in v["labels"]
    assert v["profiles"] == ["kns.shop", f"ksa.shop.{long_sa}"]
    v = one("pods", make_pod(sa=""))[1]
    assert v["profiles"] == ["kns.shop"]
    # Pod labels cannot spoof the namespace label.
    v = one("pods", make_pod(labels={"projectcalico.org/namespace": "kube-system"}))[1]
    assert v["labels"]["projectcalico.org/namespace"] == "shop"


# --- namespaces and service accounts --------------------------------------------------------------


def test_namespace_and_service_account_profiles() -> None:
    ns = {
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {"name": "shop", "labels": {"team": "payments"}, "resourceVersion": "1"},
        "status": {"phase": "Active"},
    }
    key, v = one("namespaces", ns)
    assert key == "/calico/v1/policy/profile/kns.shop"
    assert v == {
        "labels": {"pcns.team": "payments", "pcns.projectcalico.org/name": "shop"},
        "inboundRules": [{"action": "allow"}],
        "outboundRules": [{"action": "allow"}],
    }
    ns2 = copy.deepcopy(ns)
    ns2["status"]["phase"] = "Terminating"
    ns2["metadata"]["resourceVersion"] = "2"
    assert enc(one("namespaces", ns2)[1]) == enc(v)
    assert project_delete("namespaces", {"metadata": {"name": "shop"}}) == [key]

    sa = {
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": {"name": "web-sa", "namespace": "shop", "labels": {"role": "x"}},
        "secrets": [{"name": "tok"}],
    }
    key, v = one("serviceaccounts", sa)
    assert key == "/calico/v1/policy/profile/ksa.shop.web-sa"
    assert v["labels"] == {"pcsa.role": "x", "pcsa.projectcalico.org/name": "web-sa"}
    assert v["inboundRules"] == [] and v["outboundRules"] == []
    assert project_delete("serviceaccounts", {"metadata": {"name": "web-sa", "namespace": "shop"}}) == [key]


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


# --- network sets, pools, IPAM -------------------------------------------------------------------


def test_network_sets() -> None:
    key, v = one(
        "globalnetworksets",
        crd("GlobalNetworkSet", "bad-ips", {"nets": ["198.51.100.7/24", "1.2.3.4"]}, labels={"feed": "x"}),
    )
    assert key == "/calico/v1/netset/bad-ips"
    assert v == {"labels": {"feed": "x"}, "nets": ["198.51.100.0/24", "1.2.3.4/32"]}
    key, v = one(
        "networksets", crd("NetworkSet", "partners", {"nets": ["203.0.113.0/24"]}, ns="shop", labels={"role": "p"})
    )
    assert key == "/calico/v1/netset/shop%2fpartners"
    assert v["labels"] == {"role": "p", "projectcalico.org/namespace": "shop"}


def test_ip_pool() -> None:
    key, v = one(
        "ippools",
        crd(
            "IPPool",
            "default-ipv4-ippool",
            {"cidr": "10.64.0.0/10", "ipipMode": "CrossSubnet", "natOutgoing": True, "nodeSelector": "all()"},
        ),
    )
    assert key == "/calico/v1/ipam/v4/pool/10.64.0.0-10"
    assert v == {
        "cidr": "10.64.0.0/10",
        "ipipMode": "CrossSubnet",
        "vxlanMode": "Never",
        "natOutgoing": True,
        "disabled": False,
        "disableBGPExport": False,
        "blockSize": 26,
    }
    key, v = one("ippools", crd("IPPool", "v6", {"cidr": "fd00:10::/48", "vxlanMode": "Always"}))
    assert key == "/calico/v1/ipam/v6/pool/fd00:10::-48" and v["blockSize"] == 122
    assert project_delete("ippools", crd("IPPool", "v6", {"cidr": "fd00:10::/48"})) == [key]
    with pytest.raises(ProjectionError):
        project("ippools", crd("IPPool", "nocidr", {}))


def _block(affinity: str | None, owners: dict[int, tuple[str, str]], deleted: bool = False) -> dict:
    allocations: list = [None] * 64
    attributes = []
    for ordinal, (handle, node) in sorted(owners.items()):
        allocations[ordinal] = len(attributes)
        attributes.append(
            {
                "handle_id": handle,
                "secondary": {
                    "node": node,
                    "pod": handle,
                    "namespace": "ns",
                    "timestamp": "2024-01-01 00:00:00 +0000 UTC",
                },
            }
        )
    return crd(
        "IPAMBlock",
        "10-64-0-0-26",
        {
            "cidr": "10.64.0.0/26",
            "affinity": affinity,
            "allocations": allocations,
            "unallocated": [i for i in range(64) if i not in owners],
            "attributes": attributes,
            "sequenceNumber": len(owners),
            "sequenceNumberForAllocation": {str(i): 1 for i in owners},
            "deleted": deleted,
            "strictAffinity": False,
        },
    )


def test_ipam_block() -> None:
    key, v = one("ipamblocks", _block("host:node-a", {0: ("h0", "node-a"), 3: ("h3", "node-b"), 5: ("h5", "node-a")}))
    assert key == "/calico/ipam/v2/assignment/ipv4/block/10.64.0.0-26"
    assert v == {"cidr": "10.64.0.0/26", "affinity": "host:node-a", "borrowed": [[3, "node-b", "h3"]]}
    # Allocations by the affine node itself do not change the value: pod churn inside a node's own
    # block is suppressed by Typha's identical-value check.
    _, v2 = one("ipamblocks", _block("host:node-a", {0: ("h0", "node-a"), 3: ("h3", "node-b"), 9: ("h9", "node-a")}))
    assert enc(v2) == enc(v)
    _, v3 = one("ipamblocks", _block(None, {3: ("h3", "node-b")}))
    assert v3 == {"cidr": "10.64.0.0/26", "affinity": None, "borrowed": [[3, "node-b", "h3"]]}
    assert one("ipamblocks", _block("host:node-a", {}, deleted=True)) == (key, None)
    # Delete from the name alone (IPv4 block names encode the CIDR).
    assert project_delete("ipamblocks", {"metadata": {"name": "10-64-0-0-26"}}) == [key]


def test_block_affinity() -> None:
    obj = crd(
        "BlockAffinity",
        "node-a-10-64-0-0-26",
        {"cidr": "10.64.0.0/26", "node": "node-a", "state": "confirmed", "deleted": "false"},
    )
    key, v = one("blockaffinities", obj)
    assert key == "/calico/ipam/v2/host/node-a/ipv4/block/10.64.0.0-26"
    assert v == {"node": "node-a", "cidr": "10.64.0.0/26", "state": "confirmed"}
    obj["spec"]["deleted"] = "true"
    assert one("blockaffinities", obj) == (key, None)
    assert project_delete("blockaffinities", {"metadata": {"name": "node-a-10-64-0-0-26"}}) == [key]


# --- nodes, host endpoints, passthrough resources ------------------------------------------------


def test_node_projection() -> None:
    key, v = one("nodes", make_node())
    assert key == "/calico/resources/v3/projectcalico.org/nodes/node-a"
    assert v == {
        "name": "node-a",
        "labels": {"kubernetes.io/hostname": "node-a"},
        "ipv4Address": "192.0.2.10/24",
        "ipv4IPIPTunnelAddr": "10.64.0.1",
        "podCIDRs": ["10.244.1.0/24"],
    }
    vx = make_node(
        annotations={
            "projectcalico.org/IPv4VXLANTunnelAddr": "10.64.0.2",
            "projectcalico.org/VXLANTunnelMACAddr": "66:aa:bb:cc:dd:ee",
            "projectcalico.org/ASNumber": "64512",
        }
    )
    v = one("nodes", vx)[1]
    assert v["ipv4Address"] == "192.0.2.10/32"  # InternalIP fallback, subnet unknown
    assert v["ipv4VXLANTunnelAddr"] == "10.64.0.2" and v["vxlanTunnelMACAddr"] == "66:aa:bb:cc:dd:ee"
    assert v["asNumber"] == 64512


def test_node_heartbeat_is_not_a_change() -> None:
    n0 = make_node()
    n1 = copy.deepcopy(n0)
    n1["metadata"]["resourceVersion"] = "78"
    n1["metadata"]["managedFields"][0]["time"] = "2024-01-01T00:05:00Z"
    n1["status"]["conditions"][0]["lastHeartbeatTime"] = "2024-01-01T00:05:00Z"
    n1["status"]["images"].append({"names": ["redis"]})
    n1["status"]["nodeInfo"]["kubeletVersion"] = "v1.29.3"
    n1["metadata"]["annotations"]["node.alpha.kubernetes.io/ttl"] = "15"
    assert enc(one("nodes", n0)[1]) == enc(one("nodes", n1)[1])
    n2 = make_node(labels={"kubernetes.io/hostname": "node-a", "role": "edge"})
    assert enc(one("nodes", n0)[1]) != enc(one("nodes", n2)[1])


def test_host_endpoint() -> None:
    obj = crd(
        "HostEndpoint",
        "node-a-eth0",
        {
            "node": "node-a",
            "interfaceName": "eth0",
            "expectedIPs": ["192.0.2.10"],
            "profiles": ["p1"],
            "ports": [{"name": "ssh", "protocol": "TCP", "port": 22}],
        },
        labels={"role": "edge"},
    )
    key, v = one("hostendpoints", obj)
    assert key == "/calico/v1/host/node-a/endpoint/node-a-eth0"
    assert v == {
        "node": "node-a",
        "interfaceName": "eth0",
        "expectedIPs": ["192.0.2.10"],
        "profiles": ["p1"],
        "labels": {"role": "edge"},
        "ports": [{"name": "ssh", "protocol": "tcp", "port": 22}],
    }
    assert project_delete("hostendpoints", obj) == [key]
    with pytest.raises(ProjectionError):
        project("hostendpoints", crd("HostEndpoint", "x", {"interfaceName": "eth0"}))


@pytest.mark.parametrize(
    "resource,kind,prefix",
    [
        ("felixconfigurations", "FelixConfiguration", "/calico/resources/v3/projectcalico.org/felixconfigurations/"),
        ("clusterinformations", "ClusterInformation", "/calico/resources/v3/projectcalico.org/clusterinformations/"),
        ("bgppeers", "BGPPeer", "/calico/resources/v3/projectcalico.org/bgppeers/"),
        ("bgpconfigurations", "BGPConfiguration", "/calico/resources/v3/projectcalico.org/bgpconfigurations/"),
    ],
)
def test_spec_passthrough(resource: str, kind: str, prefix: str) -> None:
    obj = crd(kind, "default", {"a": 1, "b": {"c": "d"}})
    assert one(resource, obj) == (prefix + "default", {"a": 1, "b": {"c": "d"}})
    obj["metadata"]["resourceVersion"] = "10"
    assert enc(one(resource, obj)[1]) == enc({"a": 1, "b": {"c": "d"}})
    assert one(resource, {"metadata": {"name": "x"}})[1] == {}
    assert project_delete(resource, {"metadata": {"name": "default"}}) == [prefix + "default"]


# --- malformed objects ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "resource,obj",
    [
        ("pods", {}),
        ("pods", "not a dict"),
        ("pods", {"metadata": {"namespace": "x"}}),  # no name
        ("pods", {"metadata": {"name": "p"}}),  # namespaced, no namespace
        ("pods", {"metadata": {"name": "", "namespace": "x"}}),
        ("pods", {"metadata": {"name": "p", "namespace": "x"}, "spec": []}),
        ("pods", make_pod(ip="not-an-ip")),
        ("pods", make_pod(labels={"a": 1})),  # non-string label value
        ("nodes", {"metadata": None}),
        ("namespaces", {"metadata": {"name": 5}}),
        ("networkpolicies", make_np({"ingress": [{"from": [{"ipBlock": {"cidr": "banana"}}]}]})),
        ("networkpolicies", make_np({"podSelector": {"matchExpressions": [{"key": "a", "operator": "Bogus"}]}})),
        ("networkpolicies", make_np({"ingress": "nope"})),
        ("globalnetworkpolicies", crd("GlobalNetworkPolicy", "g", {"ingress": [{"action": "Explode"}]})),
        ("globalnetworkpolicies", crd("GlobalNetworkPolicy", "g", {"order": "first"})),
        ("ipamblocks", crd("IPAMBlock", "weird-name", {})),
        ("blockaffinities", crd("BlockAffinity", "x", {})),
    ],
)
def test_malformed_objects_raise_projection_error(resource: str, obj: object) -> None:
    with pytest.raises(ProjectionError):
        project(resource, obj)  # type: ignore[arg-type]


def test_missing_optional_fields_never_raise() -> None:
    minimal = {
        "pods": {"metadata": {"name": "p", "namespace": "n"}},
        "nodes": {"metadata": {"name": "n"}},
        "namespaces": {"metadata": {"name": "n"}},
        "serviceaccounts": {"metadata": {"name": "s", "namespace": "n"}},
        "networkpolicies": {"metadata": {"name": "p", "namespace": "n"}},
        "calico-networkpolicies": {"metadata": {"name": "p", "namespace": "n"}},
        "globalnetworkpolicies": {"metadata": {"name": "p"}},
        "globalnetworksets": {"metadata": {"name": "s"}},
        "networksets": {"metadata": {"name": "s", "namespace": "n"}},
        "felixconfigurations": {"metadata": {"name": "default"}},
        "clusterinformations": {"metadata": {"name": "default"}},
        "bgppeers": {"metadata": {"name": "p"}},
        "bgpconfigurations": {"metadata": {"name": "default"}},
        "ipamblocks": {"metadata": {"name": "10-64-0-0-26"}},
        "blockaffinities": {"metadata": {"name": "node-a-10-64-0-0-26"}},
    }
    for resource, obj in minimal.items():
        project(resource, obj)
        assert project_delete(resource, obj) or resource == "pods"  # an unscheduled pod has no key
    assert project("nodes", minimal["nodes"]) == [(K.node_key("n"), {"name": "n"})]


def test_unknown_resource_is_a_caller_bug() -> None:
    with pytest.raises(ValueError) as ei:
        project("widgets", {"metadata": {"name": "x"}})
    assert not isinstance(ei.value, ProjectionError)


def test_project_all_skips_none_and_bad() -> None:
    out = project_all([("pods", make_pod()), ("pods", make_pod(name="p2", ip=None)), ("pods", {})])
    assert list(out) == [K.workload_key("node-a", "shop", "web-1")]


# --- properties -------------------------------------------------------------------------------------

_label_key = st.from_regex(r"[a-z]([a-z0-9.-]{0,10}[a-z0-9])?(/[a-z][a-z0-9]{0,8})?", fullmatch=True)
_label_val = st.from_regex(r"([A-Za-z0-9]([A-Za-z0-9_.-]{0,10}[A-Za-z0-9])?)?", fullmatch=True)
_labels = st.dictionaries(_label_key, _label_val, max_size=6)
_ts = st.datetimes().map(lambda d: d.strftime("%Y-%m-%dT%H:%M:%SZ"))
_noise = st.fixed_dictionaries(
    {
        "rv": st.integers(1, 10**9).map(str),
        "mf_time": _ts,
        "cond_time": _ts,
        "restarts": st.integers(0, 100),
        "extra_ann": st.dictionaries(
            st.sampled_from(["a.io/x", "kubectl.kubernetes.io/restartedAt", "b/y"]), st.text(max_size=8), max_size=2
        ),
        "phase": st.sampled_from(["Running", "Pending", "Unknown"]),
        "generation": st.integers(0, 50),
    }
)


def _noisy(obj: dict, n: dict) -> dict:
    o = copy.deepcopy(obj)
    md = o["metadata"]
    md["resourceVersion"] = n["rv"]
    md["generation"] = n["generation"]
    md["managedFields"] = [{"manager": "m", "operation": "Update", "time": n["mf_time"]}]
    md.setdefault("annotations", {}).update(n["extra_ann"])
    st_ = o.setdefault("status", {})
    st_["conditions"] = [
        {"type": "Ready", "status": "True", "lastTransitionTime": n["cond_time"], "lastHeartbeatTime": n["cond_time"]}
    ]
    st_["containerStatuses"] = [{"name": "c", "restartCount": n["restarts"]}]
    if o["kind"] == "Pod":
        st_["phase"] = n["phase"]
    return o


@settings(max_examples=150, deadline=None)
@given(
    labels=_labels,
    n1=_noise,
    n2=_noise,
    ip=st.ip_addresses(v=4).map(str),
    name=st.from_regex(r"[a-z][a-z0-9-]{0,20}[a-z0-9]", fullmatch=True),
)
def test_pod_projection_deterministic_and_ignores_noise(labels: dict, n1: dict, n2: dict, ip: str, name: str) -> None:
    pod = make_pod(name=name, ip=ip, labels=labels)
    a, b = project("pods", _noisy(pod, n1)), project("pods", _noisy(pod, n2))
    assert [(k, enc(v)) for k, v in a] == [(k, enc(v)) for k, v in b]
    assert project("pods", pod) == project("pods", pod)
    v = a[0][1]
    assert (
        v is not None
        and v["labels"].items() >= {k: x for k, x in labels.items() if not k.startswith("projectcalico.org/")}.items()
    )
    # ...but a label change is always visible.
    changed = make_pod(name=name, ip=ip, labels={**labels, "zz-changed": "1"})
    assert enc(project("pods", changed)[0][1]) != enc(v)


@settings(max_examples=100, deadline=None)
@given(labels=_labels, n1=_noise, n2=_noise)
def test_node_projection_ignores_noise(labels: dict, n1: dict, n2: dict) -> None:
    node = make_node(labels=labels)
    assert enc(project("nodes", _noisy(node, n1))) == enc(project("nodes", _noisy(node, n2)))


@settings(max_examples=100, deadline=None)
@given(ns_labels=_labels, pod_labels=_labels, n1=_noise, n2=_noise)
def test_policy_projection_ignores_noise(ns_labels: dict, pod_labels: dict, n1: dict, n2: dict) -> None:
    np_ = make_np(
        {
            "podSelector": {"matchLabels": pod_labels},
            "ingress": [{"from": [{"namespaceSelector": {"matchLabels": ns_labels}}]}],
        }
    )
    np_["status"] = {}
    a = project("networkpolicies", _noisy(np_, n1))
    assert enc(a) == enc(project("networkpolicies", _noisy(np_, n2)))
    sel = a[0][1]["inboundRules"][0]["srcSelector"]
    for k in ns_labels:
        assert f"pcns.{k} == " in sel


# --- garbage in: ProjectionError out, and nothing else (the fuzz target's contract) --------------------

_JSON_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)  # what orjson.loads yields (beyond: floats)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12)
    | st.sampled_from(["", "10.0.0.1", "::1", "10.0.0.0/8", "80", "1:65535", "0:99999999999", "TCP", "host:n"])
)
_JSON = st.recursive(
    _JSON_SCALARS,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=8,
)


def _valid_objects() -> dict[str, list[dict]]:
    from typha.simcluster import SyntheticCluster

    out: dict[str, list[dict]] = {}
    for resource, obj in SyntheticCluster(
        nodes=3, pods_per_node=2, policies=6, global_policies=4, seed=2
    ).initial_objects():
        out.setdefault(resource, []).append(obj)
    out["ipamblocks"][0]["spec"]["allocations"][0] = 0  # an allocation held by another node: borrowed
    out["hostendpoints"] = [{"metadata": {"name": "h"}, "spec": {"node": "n", "expectedIPs": ["10.0.0.1"]}}]
    out["calico-networkpolicies"] = [
        {"metadata": {"name": "p", "namespace": "ns"}, "spec": {"ingress": [{"action": "Allow"}]}}
    ]
    out["globalnetworksets"] = [{"metadata": {"name": "s"}, "spec": {"nets": ["10.0.0.0/8"]}}]
    out["networksets"] = [{"metadata": {"name": "s", "namespace": "ns"}, "spec": {"nets": ["10.0.0.0/8"]}}]
    out["bgppeers"] = [{"metadata": {"name": "b"}, "spec": {"asNumber": 64512}}]
    out["bgpconfigurations"] = [{"metadata": {"name": "default"}, "spec": {}}]
    return out


_VALID = _valid_objects()


def _paths(obj: object, prefix: tuple = ()) -> list[tuple]:
    out = [prefix]
    if isinstance(obj, dict):
        for k, v in obj.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(obj, list):
        for i, v in enumerate(obj[:4]):
            out += _paths(v, (*prefix, i))
    return out


@st.composite
def _garbled(draw: st.DrawFn) -> tuple[str, object]:
    """A real object of a random resource with a few of its fields (at any depth) replaced by any JSON."""
    resource = draw(st.sampled_from(sorted(RESOURCES)))
    obj = copy.deepcopy(draw(st.sampled_from(_VALID[resource])))
    for _ in range(draw(st.integers(1, 3))):
        path = draw(st.sampled_from(_paths(obj)))
        value = draw(_JSON)
        if not path:
            return resource, value
        parent = obj
        try:
            for step in path[:-1]:
                parent = parent[step]
            parent[path[-1]] = value
        except (KeyError, IndexError, TypeError):
            pass  # an earlier replacement moved this path
    return resource, obj


@settings(max_examples=300, deadline=None)
@given(_garbled())
def test_garbage_objects_raise_only_projection_error(item: tuple[str, object]) -> None:
    resource, obj = item
    for fn in (project, project_delete):
        try:
            out = fn(resource, obj)  # type: ignore[arg-type]
        except ProjectionError:
            continue
        assert isinstance(out, list)
        for entry in out:
            key = entry[0] if isinstance(entry, tuple) else entry
            assert isinstance(key, str) and key.startswith("/calico/")
        orjson.dumps(out, option=orjson.OPT_SORT_KEYS)  # what ingest does with the values


def test_a_network_policy_port_range_beyond_65535_is_malformed_not_a_giant_list() -> None:
    obj = {
        "metadata": {"name": "p", "namespace": "ns"},
        "spec": {"ingress": [{"ports": [{"port": 0, "endPort": 10**12}, {"port": 80}]}]},
    }
    with pytest.raises(ProjectionError, match="port"):
        project("networkpolicies", obj)
