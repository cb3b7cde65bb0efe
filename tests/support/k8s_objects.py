"""Kubernetes objects for projection tests: factories in the API server's shapes, and hypothesis
strategies that garble real objects.

The factories return what ``kubectl get -o json`` would (managed fields, conditions and all), so a
projection test sees the noise typha must ignore. ``garbled(resources)`` starts from real objects of
a synthetic cluster and replaces a few fields at any depth with any JSON: the input the projection's
contract (``ProjectionError`` or a valid result, nothing else) and the fast wire decoder are checked on.
"""

from __future__ import annotations

import copy

import orjson
from hypothesis import strategies as st

from typha.k8s.projection import project

__all__ = ["JSON", "VALID", "crd", "enc", "garbled", "make_node", "make_np", "make_pod", "one"]


def enc(v: object) -> bytes:
    """How typha encodes a value: identical content must give identical bytes."""
    return orjson.dumps(v, option=orjson.OPT_SORT_KEYS)


def one(resource: str, obj: dict) -> tuple[str, dict | None]:
    ups = project(resource, obj)
    assert len(ups) == 1, ups
    return ups[0]


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


# --- garbage: real objects with fields replaced by any JSON ------------------------------------------

JSON_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)  # what orjson.loads yields (beyond: floats)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12)
    | st.sampled_from(["", "10.0.0.1", "::1", "10.0.0.0/8", "80", "1:65535", "0:99999999999", "TCP", "host:n"])
)
JSON = st.recursive(
    JSON_SCALARS,
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


VALID = _valid_objects()


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
def garbled(draw: st.DrawFn, resources: list[str]) -> tuple[str, object]:
    """A real object of one of ``resources`` with a few of its fields (at any depth) replaced by any JSON."""
    resource = draw(st.sampled_from(resources))
    obj = copy.deepcopy(draw(st.sampled_from(VALID[resource])))
    for _ in range(draw(st.integers(1, 3))):
        path = draw(st.sampled_from(_paths(obj)))
        value = draw(JSON)
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
