"""typha.k8s.projection: the resource table, the stream's keys, and the projection of every kind but
policies (tests/test_projection_policy.py) -- pods, namespaces, service accounts, network sets, pools,
IPAM, nodes, host endpoints, passthrough resources -- and malformed objects."""

from __future__ import annotations

import copy
import hashlib

import pytest

from protocol import keys as K
from tests.support.k8s_objects import crd, enc, make_node, make_np, make_pod, one
from typha.k8s.projection import (
    RESOURCES,
    ProjectionError,
    interface_name,
    project,
    project_all,
    project_delete,
    resources_for_syncer,
)

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
