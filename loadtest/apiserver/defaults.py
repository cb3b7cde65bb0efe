"""Per-kind defaulting of HTTP writes: what kube-apiserver fills in that clients leave out.

Design note
-----------
kube-apiserver defaults every object it decodes (``SetDefaults_*``), on creates and on
updates alike, and allocates a few things once, at create (a Service's cluster IP). The
emulator fills in the defaults that a client can observe in the kinds an install uses:
what ``kubectl get`` prints (a Deployment's replicas, a Service's type and cluster IP),
what a later write relies on (a Secret's ``stringData`` becomes ``data``) and what
selectors match (a namespace's ``kubernetes.io/metadata.name`` label). Pure
functions of the object; the one piece of state, the next free cluster IP, is a
callable the store passes in. Only the HTTP shell's writes (``strategy=True``) are
defaulted; in-process writes are stored as given.

Not defaulted: pod template fields (restartPolicy, dnsPolicy, container
terminationMessagePath, ...), which nothing in the emulator reads.
"""

from __future__ import annotations

import base64
import ipaddress
from collections.abc import Callable
from typing import Any

from .resources import ResourceType

SERVICE_CIDR = ipaddress.ip_network("10.96.0.0/12")


class ClusterIPs:
    """Cluster IPs from :data:`SERVICE_CIDR`, in order (.1 is the ``kubernetes`` Service's)."""

    def __init__(self) -> None:
        self._next = 2

    def __call__(self) -> str:
        ip = SERVICE_CIDR[self._next]
        self._next += 1
        return str(ip)


def _spec(d: dict[str, Any]) -> dict[str, Any]:
    spec = d.get("spec")
    if not isinstance(spec, dict):
        spec = d["spec"] = {}
    return spec


def _secret(d: dict[str, Any]) -> None:
    # stringData is write-only: merged into data (base64) and never stored.
    string_data = d.pop("stringData", None)
    if isinstance(string_data, dict) and string_data:
        data: dict[str, Any] = d["data"] if isinstance(d.get("data"), dict) else {}
        d["data"] = {**data, **{k: base64.b64encode(str(v).encode()).decode() for k, v in string_data.items()}}
    d.setdefault("type", "Opaque")


def _service(d: dict[str, Any], old: dict[str, Any] | None, allocate: Callable[[], str]) -> None:
    spec = _spec(d)
    spec.setdefault("type", "ClusterIP")
    spec.setdefault("sessionAffinity", "None")
    if spec["type"] != "ExternalName":
        old_spec = (old or {}).get("spec") or {}
        if not spec.get("clusterIP"):
            # Allocated once: an update that leaves it out keeps the old one.
            spec["clusterIP"] = old_spec.get("clusterIP") or allocate()
        spec.setdefault("clusterIPs", [spec["clusterIP"]])
        spec.setdefault("ipFamilies", ["IPv4"])
        spec.setdefault("ipFamilyPolicy", "SingleStack")
        spec.setdefault("internalTrafficPolicy", "Cluster")
    for port in spec.get("ports") or ():
        if isinstance(port, dict):
            port.setdefault("protocol", "TCP")
            if "port" in port:
                port.setdefault("targetPort", port["port"])


def _workload(d: dict[str, Any], daemonset: bool) -> None:
    spec = _spec(d)
    spec.setdefault("revisionHistoryLimit", 10)
    if daemonset:
        strategy = spec.setdefault("updateStrategy", {"type": "RollingUpdate"})
        if isinstance(strategy, dict) and strategy.get("type", "RollingUpdate") == "RollingUpdate":
            strategy.setdefault("type", "RollingUpdate")
            strategy.setdefault("rollingUpdate", {"maxUnavailable": 1, "maxSurge": 0})
        return
    spec.setdefault("replicas", 1)
    spec.setdefault("progressDeadlineSeconds", 600)
    strategy = spec.setdefault("strategy", {"type": "RollingUpdate"})
    if isinstance(strategy, dict) and strategy.get("type", "RollingUpdate") == "RollingUpdate":
        strategy.setdefault("type", "RollingUpdate")
        strategy.setdefault("rollingUpdate", {"maxUnavailable": "25%", "maxSurge": "25%"})


def apply_defaults(
    rt: ResourceType, d: dict[str, Any], old: dict[str, Any] | None, allocate: Callable[[], str]
) -> None:
    """Default ``d`` in place (``old``: the stored object of an update, None on create)."""
    key = rt.key
    if key == "namespaces":
        # Every namespace carries its name as a label (for namespaceSelectors), kept on updates.
        md = d["metadata"]
        labels = md.get("labels") if isinstance(md.get("labels"), dict) else {}
        md["labels"] = {
            **labels,
            "kubernetes.io/metadata.name": md.get("name") or (old or {}).get("metadata", {}).get("name"),
        }
    elif key == "secrets":
        _secret(d)
    elif key == "services":
        _service(d, old, allocate)
    elif key in ("deployments.apps", "daemonsets.apps"):
        _workload(d, key == "daemonsets.apps")


__all__ = ["SERVICE_CIDR", "ClusterIPs", "apply_defaults"]
