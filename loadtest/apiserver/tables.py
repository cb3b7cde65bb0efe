"""Table output (``Accept: application/json;as=Table;g=meta.k8s.io;v=v1``): what ``kubectl get`` prints.

Design note
-----------
``kubectl get`` does not format objects itself: it asks the server for a
``meta.k8s.io/v1`` Table, whose column definitions and cells come from the server's
per-kind printers, and prints that. Without it kubectl shows only NAME and AGE. This
module is those printers for the kinds the emulator serves (the columns and cell rules
of kube-apiserver's, wide columns at priority 1), and the CRD route: the CRD's
``additionalPrinterColumns``, each a simple JSONPath (``.spec.cidr``, ``.items[0].x``).
An age is rendered the way kube's ``HumanDuration`` does ("45s", "3m12s", "5h", "9d").

Each row carries the object's metadata (``PartialObjectMetadata``), or the whole object
with ``?includeObject=Object``, or nothing with ``None``, as kube does.
"""

from __future__ import annotations

import calendar
import re
import time
from collections.abc import Callable
from typing import Any

from . import errors
from .objects import StoredObject
from .resources import ResourceType

TABLE_MEDIA = "as=Table"
Obj = dict[str, Any]
Cell = Callable[[Obj], Any]
# (name, type, priority, cell)
Column = tuple[str, str, int, Cell]
_NONE = "<none>"


def wants_table(accept: str | None) -> bool:
    """Whether an Accept header asks for a meta.k8s.io Table first (kubectl get does)."""
    if not accept:
        return False
    first = accept.split(",", 1)[0].replace(" ", "")
    return TABLE_MEDIA in first and "g=meta.k8s.io" in first


def wants_metadata_list(accept: str | None) -> bool:
    """Whether an Accept header asks for a ``PartialObjectMetadataList`` first (metadata informers,
    typha's audit): every item reduced to its ``metadata``."""
    if not accept:
        return False
    first = accept.split(",", 1)[0].replace(" ", "")
    return "as=PartialObjectMetadataList" in first and "g=meta.k8s.io" in first


def metadata_list(objects: list[StoredObject], metadata: dict[str, Any]) -> dict[str, Any]:
    """A list page as ``PartialObjectMetadataList``: what kube-apiserver answers to that Accept."""
    return {
        "kind": "PartialObjectMetadataList",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": metadata,
        "items": [_partial(so.to_dict()) for so in objects],
    }


def _partial(o: Obj) -> Obj:
    return {"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": o.get("metadata", {})}


def include_object(value: str | None) -> str:
    mode = value or "Metadata"
    if mode not in ("None", "Metadata", "Object"):
        raise errors.bad_request(f'includeObject must be one of "None", "Metadata" or "Object", not "{mode}"')
    return mode


# ---- cell helpers -------------------------------------------------------------------------


def _get(o: Any, *path: str | int) -> Any:
    for p in path:
        if isinstance(p, int):
            o = o[p] if isinstance(o, list) and -len(o) <= p < len(o) else None
        else:
            o = o.get(p) if isinstance(o, dict) else None
        if o is None:
            return None
    return o


def _parse_time(ts: Any) -> float | None:
    if not isinstance(ts, str):
        return None
    try:
        return calendar.timegm(time.strptime(ts[:19], "%Y-%m-%dT%H:%M:%S"))
    except ValueError:
        return None


def human_duration(seconds: float) -> str:
    """kube's HumanDuration: two significant units while they matter, one after."""
    s = int(seconds)
    if s < -1:
        return "<invalid>"
    if s < 0:
        return "0s"
    if s < 120:
        return f"{s}s"
    minutes = s // 60
    if minutes < 10:
        return f"{minutes}m{s % 60}s" if s % 60 else f"{minutes}m"
    if minutes < 180:
        return f"{minutes}m"
    hours = minutes // 60
    if hours < 8:
        return f"{hours}h{minutes % 60}m" if minutes % 60 else f"{hours}h"
    if hours < 48:
        return f"{hours}h"
    days = hours // 24
    if hours < 24 * 8:
        return f"{days}d{hours % 24}h" if hours % 24 else f"{days}d"
    if hours < 24 * 365 * 2:
        return f"{days}d"
    if hours < 24 * 365 * 8:
        return f"{days // 365}y{days % 365}d" if days % 365 else f"{days // 365}y"
    return f"{days // 365}y"


def age_of(ts: Any, now: float | None = None) -> str:
    t = _parse_time(ts)
    return _NONE if t is None else human_duration((now or time.time()) - t)


def _age(o: Obj) -> str:
    return age_of(_get(o, "metadata", "creationTimestamp"))


def _created_at(o: Obj) -> Any:
    return _get(o, "metadata", "creationTimestamp") or _NONE


def _len(*path: str) -> Cell:
    return lambda o: len(_get(o, *path) or ())


def _int(*path: str) -> Cell:
    return lambda o: _get(o, *path) or 0


def _str(*path: str) -> Cell:
    return lambda o: _get(o, *path) or _NONE


def _selector(m: Any) -> str:
    if not isinstance(m, dict) or not m:
        return _NONE
    return ",".join(f"{k}={v}" for k, v in sorted(m.items()))


def _label_selector(*path: str) -> Cell:
    def cell(o: Obj) -> str:
        sel = _get(o, *path)
        if not isinstance(sel, dict):
            return _NONE
        parts = [f"{k}={v}" for k, v in sorted((sel.get("matchLabels") or {}).items())]
        for e in sel.get("matchExpressions") or ():
            if isinstance(e, dict):
                parts.append(f"{e.get('key')} {str(e.get('operator', '')).lower()} ({','.join(e.get('values') or ())})")
        return ",".join(parts) or _NONE

    return cell


def _containers(o: Obj, field: str) -> str:
    cs = _get(o, "spec", "template", "spec", "containers") or _get(o, "spec", "containers") or []
    return ",".join(str(c.get(field, "")) for c in cs if isinstance(c, dict)) or _NONE


# ---- per-kind printers --------------------------------------------------------------------


def _pod_ready(o: Obj) -> str:
    statuses = _get(o, "status", "containerStatuses") or []
    ready = sum(1 for c in statuses if isinstance(c, dict) and c.get("ready"))
    return f"{ready}/{len(_get(o, 'spec', 'containers') or [])}"


def _pod_status(o: Obj) -> str:
    if _get(o, "metadata", "deletionTimestamp"):
        return "Terminating"
    return _get(o, "status", "reason") or _get(o, "status", "phase") or "Unknown"


def _restarts(o: Obj) -> int:
    return sum(
        int(c.get("restartCount") or 0) for c in _get(o, "status", "containerStatuses") or [] if isinstance(c, dict)
    )


def _node_status(o: Obj) -> str:
    ready = next(
        (c for c in _get(o, "status", "conditions") or [] if isinstance(c, dict) and c.get("type") == "Ready"), None
    )
    status = "Unknown" if ready is None else ("Ready" if ready.get("status") == "True" else "NotReady")
    return status + (",SchedulingDisabled" if _get(o, "spec", "unschedulable") else "")


def _node_roles(o: Obj) -> str:
    prefix = "node-role.kubernetes.io/"
    labels = _get(o, "metadata", "labels") or {}
    return ",".join(sorted(k[len(prefix) :] for k in labels if k.startswith(prefix) and k != prefix)) or _NONE


def _node_address(kind: str) -> Cell:
    def cell(o: Obj) -> str:
        for a in _get(o, "status", "addresses") or []:
            if isinstance(a, dict) and a.get("type") == kind:
                return str(a.get("address"))
        return _NONE

    return cell


def _service_ports(o: Obj) -> str:
    out = []
    for p in _get(o, "spec", "ports") or []:
        if isinstance(p, dict):
            node = f":{p['nodePort']}" if p.get("nodePort") else ""
            out.append(f"{p.get('port')}{node}/{p.get('protocol', 'TCP')}")
    return ",".join(out) or _NONE


def _external_ips(o: Obj) -> str:
    ips = list(_get(o, "spec", "externalIPs") or [])
    ips += [
        i.get("ip") or i.get("hostname")
        for i in _get(o, "status", "loadBalancer", "ingress") or []
        if isinstance(i, dict)
    ]
    if ips:
        return ",".join(str(i) for i in ips)
    return "<pending>" if _get(o, "spec", "type") == "LoadBalancer" else _NONE


def _slice_ports(o: Obj) -> str:
    ports = [str(p.get("port")) for p in o.get("ports") or [] if isinstance(p, dict) and p.get("port") is not None]
    return ",".join(ports) or "<unset>"


def _slice_endpoints(o: Obj) -> str:
    addrs = [a for e in o.get("endpoints") or [] if isinstance(e, dict) for a in e.get("addresses") or []]
    if not addrs:
        return "<unset>"
    more = f" + {len(addrs) - 3} more..." if len(addrs) > 3 else ""
    return ",".join(addrs[:3]) + more


def _role_ref(o: Obj) -> str:
    ref = o.get("roleRef") or {}
    return f"{ref.get('kind')}/{ref.get('name')}"


def _subjects(kind: str) -> Cell:
    def cell(o: Obj) -> str:
        names = []
        for s in o.get("subjects") or []:
            if isinstance(s, dict) and s.get("kind") == kind:
                ns = s.get("namespace")
                names.append(f"{ns}/{s.get('name')}" if kind == "ServiceAccount" and ns else str(s.get("name")))
        return ", ".join(names)

    return cell


def _pdb(field: str) -> Cell:
    return lambda o: str(_get(o, "spec", field)) if _get(o, "spec", field) is not None else "N/A"


_NAME: Column = ("Name", "string", 0, lambda o: _get(o, "metadata", "name"))
_AGE: Column = ("Age", "string", 0, _age)
_WORKLOAD_WIDE: list[Column] = [
    ("Containers", "string", 1, lambda o: _containers(o, "name")),
    ("Images", "string", 1, lambda o: _containers(o, "image")),
    ("Selector", "string", 1, _label_selector("spec", "selector")),
]

_BINDING: list[Column] = [
    _NAME,
    ("Role", "string", 0, _role_ref),
    _AGE,
    ("Users", "string", 1, _subjects("User")),
    ("Groups", "string", 1, _subjects("Group")),
    ("ServiceAccounts", "string", 1, _subjects("ServiceAccount")),
]

PRINTERS: dict[str, list[Column]] = {
    "namespaces": [_NAME, ("Status", "string", 0, _str("status", "phase")), _AGE],
    "nodes": [
        _NAME,
        ("Status", "string", 0, _node_status),
        ("Roles", "string", 0, _node_roles),
        _AGE,
        ("Version", "string", 0, lambda o: _get(o, "status", "nodeInfo", "kubeletVersion") or ""),
        ("Internal-IP", "string", 1, _node_address("InternalIP")),
        ("External-IP", "string", 1, _node_address("ExternalIP")),
        ("OS-Image", "string", 1, _str("status", "nodeInfo", "osImage")),
        ("Kernel-Version", "string", 1, _str("status", "nodeInfo", "kernelVersion")),
        ("Container-Runtime", "string", 1, _str("status", "nodeInfo", "containerRuntimeVersion")),
    ],
    "pods": [
        _NAME,
        ("Ready", "string", 0, _pod_ready),
        ("Status", "string", 0, _pod_status),
        ("Restarts", "string", 0, _restarts),
        _AGE,
        ("IP", "string", 1, _str("status", "podIP")),
        ("Node", "string", 1, _str("spec", "nodeName")),
        ("Nominated Node", "string", 1, _str("status", "nominatedNodeName")),
        ("Readiness Gates", "string", 1, lambda o: _NONE),
    ],
    "services": [
        _NAME,
        ("Type", "string", 0, _str("spec", "type")),
        ("Cluster-IP", "string", 0, _str("spec", "clusterIP")),
        ("External-IP", "string", 0, _external_ips),
        ("Port(s)", "string", 0, _service_ports),
        _AGE,
        ("Selector", "string", 1, lambda o: _selector(_get(o, "spec", "selector"))),
    ],
    "serviceaccounts": [_NAME, ("Secrets", "integer", 0, _len("secrets")), _AGE],
    "configmaps": [
        _NAME,
        ("Data", "integer", 0, lambda o: len(o.get("data") or ()) + len(o.get("binaryData") or ())),
        _AGE,
    ],
    "secrets": [_NAME, ("Type", "string", 0, _str("type")), ("Data", "integer", 0, _len("data")), _AGE],
    "networkpolicies.networking.k8s.io": [
        _NAME,
        ("Pod-Selector", "string", 0, _label_selector("spec", "podSelector")),
        _AGE,
    ],
    "endpointslices.discovery.k8s.io": [
        _NAME,
        ("AddressType", "string", 0, _str("addressType")),
        ("Ports", "string", 0, _slice_ports),
        ("Endpoints", "string", 0, _slice_endpoints),
        _AGE,
    ],
    "roles.rbac.authorization.k8s.io": [_NAME, ("Created At", "date", 0, _created_at)],
    "clusterroles.rbac.authorization.k8s.io": [_NAME, ("Created At", "date", 0, _created_at)],
    "rolebindings.rbac.authorization.k8s.io": _BINDING,
    "clusterrolebindings.rbac.authorization.k8s.io": _BINDING,
    "deployments.apps": [
        _NAME,
        (
            "Ready",
            "string",
            0,
            lambda o: f"{_get(o, 'status', 'readyReplicas') or 0}/{_get(o, 'spec', 'replicas') or 0}",
        ),
        ("Up-to-date", "integer", 0, _int("status", "updatedReplicas")),
        ("Available", "integer", 0, _int("status", "availableReplicas")),
        _AGE,
        *_WORKLOAD_WIDE,
    ],
    "daemonsets.apps": [
        _NAME,
        ("Desired", "integer", 0, _int("status", "desiredNumberScheduled")),
        ("Current", "integer", 0, _int("status", "currentNumberScheduled")),
        ("Ready", "integer", 0, _int("status", "numberReady")),
        ("Up-to-date", "integer", 0, _int("status", "updatedNumberScheduled")),
        ("Available", "integer", 0, _int("status", "numberAvailable")),
        ("Node Selector", "string", 0, lambda o: _selector(_get(o, "spec", "template", "spec", "nodeSelector"))),
        _AGE,
        *_WORKLOAD_WIDE,
    ],
    "poddisruptionbudgets.policy": [
        _NAME,
        ("Min Available", "string", 0, _pdb("minAvailable")),
        ("Max Unavailable", "string", 0, _pdb("maxUnavailable")),
        ("Allowed Disruptions", "integer", 0, _int("status", "disruptionsAllowed")),
        _AGE,
    ],
    "customresourcedefinitions.apiextensions.k8s.io": [_NAME, ("Created At", "date", 0, _created_at)],
}
DEFAULT_COLUMNS: list[Column] = [_NAME, _AGE]


# ---- CRD printer columns ------------------------------------------------------------------

_JSONPATH_STEP = re.compile(r"\.([^.\[]+)|\[(\d+)\]")


def jsonpath_cell(path: str) -> Cell:
    """A cell reading a CRD column's ``jsonPath`` (dotted fields and ``[n]`` indices;
    anything else, such as filters, reads as empty)."""
    steps: list[str | int] = []
    pos = 0
    text = path.strip().removeprefix("{").removesuffix("}")
    while pos < len(text):
        m = _JSONPATH_STEP.match(text, pos)
        if m is None:
            return lambda o: None
        steps.append(m.group(1) if m.group(1) is not None else int(m.group(2)))
        pos = m.end()
    return lambda o: _get(o, *steps)


def crd_columns(defs: list[dict[str, Any]]) -> list[Column]:
    out: list[Column] = [_NAME]
    for d in defs:
        cell = jsonpath_cell(str(d.get("jsonPath", "")))
        if d.get("type") == "date":
            cell = (lambda c: lambda o: age_of(c(o)))(cell)
        out.append((str(d.get("name", "")), str(d.get("type", "string")), int(d.get("priority") or 0), cell))
    return out


def columns_for(rt: ResourceType, crd_defs: list[dict[str, Any]] | None) -> list[Column]:
    if crd_defs:
        return crd_columns(crd_defs)
    return PRINTERS.get(rt.key, DEFAULT_COLUMNS)


def table(
    rt: ResourceType,
    objects: list[StoredObject],
    metadata: dict[str, Any],
    crd_defs: list[dict[str, Any]] | None,
    include: str = "Metadata",
) -> dict[str, Any]:
    """The Table for ``objects`` (one GET result or a list page)."""
    cols = columns_for(rt, crd_defs)
    rows = []
    for so in objects:
        o = so.to_dict()
        row: dict[str, Any] = {"cells": [_safe(c[3], o) for c in cols]}
        if include == "Object":
            row["object"] = o
        elif include == "Metadata":
            row["object"] = _partial(o)
        rows.append(row)
    return {
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": metadata,
        "columnDefinitions": [
            {
                "name": name,
                "type": type_,
                "format": "name" if name == "Name" else "",
                "description": name,
                "priority": prio,
            }
            for name, type_, prio, _ in cols
        ],
        "rows": rows,
    }


def _safe(cell: Cell, o: Obj) -> Any:
    """A cell never fails a whole listing: a value of an unexpected shape prints as <unknown>."""
    try:
        return cell(o)
    except (AttributeError, TypeError, ValueError, KeyError):
        return "<unknown>"


__all__ = [
    "PRINTERS",
    "age_of",
    "columns_for",
    "human_duration",
    "include_object",
    "jsonpath_cell",
    "metadata_list",
    "table",
    "wants_metadata_list",
    "wants_table",
]
