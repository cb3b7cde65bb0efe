"""Small builders for realistic objects (nodes, pods, Calico resources) used by load tests.

Design note
-----------
Load tests need hundreds of thousands of objects that look like what Felix/Typha see in a
real cluster (pod IPs in status, node addresses, Calico labels) without paying for full
kubelet-shaped objects; these builders produce compact but structurally faithful dicts.
"""

from __future__ import annotations

import ipaddress
from typing import Any

from .resources import CALICO_GROUP


def make_namespace(name: str, labels: dict[str, str] | None = None) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {"name": name, "labels": {"kubernetes.io/metadata.name": name, **(labels or {})}},
    }


def make_node(name: str, ip: str, pod_cidr: str | None = None, labels: dict[str, str] | None = None) -> dict[str, Any]:
    spec: dict[str, Any] = {}
    if pod_cidr:
        spec["podCIDR"] = pod_cidr
        spec["podCIDRs"] = [pod_cidr]
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "labels": {"kubernetes.io/hostname": name, "kubernetes.io/os": "linux", **(labels or {})},
            "annotations": {"projectcalico.org/IPv4Address": f"{ip}/24"},
        },
        "spec": spec,
        "status": {
            "addresses": [{"type": "InternalIP", "address": ip}, {"type": "Hostname", "address": name}],
            "conditions": [{"type": "Ready", "status": "True"}],
        },
    }


def make_pod(
    namespace: str,
    name: str,
    node: str,
    ip: str | None,
    labels: dict[str, str] | None = None,
    service_account: str = "default",
) -> dict[str, Any]:
    status: dict[str, Any] = {"phase": "Running" if ip else "Pending"}
    if ip:
        status["podIP"] = ip
        status["podIPs"] = [{"ip": ip}]
        status["hostIP"] = "10.0.0.1"
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace, "labels": labels or {"app": name.rsplit("-", 1)[0]}},
        "spec": {
            "nodeName": node,
            "serviceAccountName": service_account,
            "containers": [{"name": "app", "image": "registry.k8s.io/pause:3.9"}],
        },
        "status": status,
    }


def make_calico_object(
    kind: str, name: str, spec: dict[str, Any], namespace: str | None = None, labels: dict[str, str] | None = None
) -> dict[str, Any]:
    md: dict[str, Any] = {"name": name}
    if namespace:
        md["namespace"] = namespace
    if labels:
        md["labels"] = labels
    return {"apiVersion": f"{CALICO_GROUP}/v1", "kind": kind, "metadata": md, "spec": spec}


def pod_ip(i: int, base: str = "10.128.0.0") -> str:
    """The i-th address after ``base`` (handy for unique pod IPs)."""
    return str(ipaddress.IPv4Address(base) + i)
