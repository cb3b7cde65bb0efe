"""Kubernetes protobuf request bodies (``application/vnd.kubernetes.protobuf``), decoded to JSON form.

Design note
-----------
kubectl 1.32 and newer send its ``kubectl create <kind>`` creates as protobuf (namespace,
serviceaccount, service, configmap, secret, deployment, role, clusterrole, rolebinding,
clusterrolebinding, poddisruptionbudget): its typed clients prefer
protobuf for built-in kinds and, unlike for CBOR, client-go does not fall back to JSON
when a server answers 415. The answer itself may be JSON (the request's Accept lists
it), so only request bodies need decoding.

The format: the magic ``k8s\\x00``, then a ``runtime.Unknown`` message (1: TypeMeta
{1: apiVersion, 2: kind}, 2: raw, 3: contentEncoding, 4: contentType) whose ``raw`` is
the object's message as ``k8s.io/api`` generates it. Messages are read with a small
wire-format reader driven by :data:`MESSAGES`: per message type, field number -> (JSON
name, kind), transcribed from k8s.io/api's and k8s.io/apimachinery's generated.proto.
A field number the table does not list is a 415 naming it (a protobuf reader would skip
it, and the object would be stored without it); a server-owned ``status`` is skipped. A
kind without a table is a 415 that names the JSON alternative; malformed input is a 400,
never anything else (there is a fuzz target for it).

Not a general protobuf decoder: no packed repeated scalars (the Kubernetes types here
have none), and only the message types the kinds above reach.
"""

from __future__ import annotations

import base64
import datetime
from typing import Any

from . import errors
from .resources import ResourceType

PROTOBUF = "application/vnd.kubernetes.protobuf"
MAGIC = b"k8s\x00"
_MAX_DEPTH = 32

# Field kinds: scalars ("string", "int", "bool", "bytes"), "msg:<Type>", "map:<value kind>",
# "[]" before a repeated one. A zero scalar is an absent field (Go's omitempty), unless its
# kind ends in "?": a pointer in Go, whose zero is a value (replicas: 0, automount: false).
Fields = dict[int, tuple[str, str]]

_META = "msg:ObjectMeta"
MESSAGES: dict[str, Fields] = {
    # k8s.io/apimachinery/pkg/apis/meta/v1
    "ObjectMeta": {
        1: ("name", "string"),
        2: ("generateName", "string"),
        3: ("namespace", "string"),
        4: ("selfLink", "string"),
        5: ("uid", "string"),
        6: ("resourceVersion", "string"),
        7: ("generation", "int"),
        8: ("creationTimestamp", "msg:Time"),
        9: ("deletionTimestamp", "msg:Time"),
        10: ("deletionGracePeriodSeconds", "int?"),
        11: ("labels", "map:string"),
        12: ("annotations", "map:string"),
        13: ("ownerReferences", "[]msg:OwnerReference"),
        14: ("finalizers", "[]string"),
    },
    "OwnerReference": {
        1: ("kind", "string"),
        3: ("name", "string"),
        4: ("uid", "string"),
        5: ("apiVersion", "string"),
        6: ("controller", "bool?"),
        7: ("blockOwnerDeletion", "bool?"),
    },
    "Time": {1: ("seconds", "int"), 2: ("nanos", "int")},
    "LabelSelector": {1: ("matchLabels", "map:string"), 2: ("matchExpressions", "[]msg:LabelSelectorRequirement")},
    "LabelSelectorRequirement": {1: ("key", "string"), 2: ("operator", "string"), 3: ("values", "[]string")},
    "Quantity": {1: ("string", "string")},
    "TypeMeta": {1: ("apiVersion", "string"), 2: ("kind", "string")},
    "Unknown": {
        1: ("typeMeta", "msg:TypeMeta"),
        2: ("raw", "raw"),
        3: ("contentEncoding", "string"),
        4: ("contentType", "string"),
    },
    "IntOrString": {1: ("type", "int"), 2: ("intVal", "int"), 3: ("strVal", "string")},
    # k8s.io/api/core/v1
    "Namespace": {1: ("metadata", _META), 2: ("spec", "msg:NamespaceSpec"), 3: ("status", "msg:NamespaceStatus")},
    "NamespaceSpec": {1: ("finalizers", "[]string")},
    "NamespaceStatus": {1: ("phase", "string")},
    "ServiceAccount": {
        1: ("metadata", _META),
        2: ("secrets", "[]msg:ObjectReference"),
        3: ("imagePullSecrets", "[]msg:LocalObjectReference"),
        4: ("automountServiceAccountToken", "bool?"),
    },
    "ObjectReference": {
        1: ("kind", "string"),
        2: ("namespace", "string"),
        3: ("name", "string"),
        4: ("uid", "string"),
        5: ("apiVersion", "string"),
        6: ("resourceVersion", "string"),
        7: ("fieldPath", "string"),
    },
    "LocalObjectReference": {1: ("name", "string")},
    "Service": {1: ("metadata", _META), 2: ("spec", "msg:ServiceSpec"), 3: ("status", "skip")},
    "ServiceSpec": {
        1: ("ports", "[]msg:ServicePort"),
        2: ("selector", "map:string"),
        3: ("clusterIP", "string"),
        4: ("type", "string"),
        5: ("externalIPs", "[]string"),
        7: ("sessionAffinity", "string"),
        8: ("loadBalancerIP", "string"),
        9: ("loadBalancerSourceRanges", "[]string"),
        10: ("externalName", "string"),
        11: ("externalTrafficPolicy", "string"),
        12: ("healthCheckNodePort", "int"),
        13: ("publishNotReadyAddresses", "bool"),
        17: ("ipFamilyPolicy", "string"),
        18: ("clusterIPs", "[]string"),
        19: ("ipFamilies", "[]string"),
        20: ("allocateLoadBalancerNodePorts", "bool?"),
        21: ("loadBalancerClass", "string"),
        22: ("internalTrafficPolicy", "string"),
        23: ("trafficDistribution", "string"),
    },
    "ServicePort": {
        1: ("name", "string"),
        2: ("protocol", "string"),
        3: ("port", "int?"),
        4: ("targetPort", "msg:IntOrString"),
        5: ("nodePort", "int"),
        6: ("appProtocol", "string"),
    },
    "ConfigMap": {
        1: ("metadata", _META),
        2: ("data", "map:string"),
        3: ("binaryData", "map:bytes"),
        4: ("immutable", "bool?"),
    },
    "Secret": {
        1: ("metadata", _META),
        2: ("data", "map:bytes"),
        3: ("type", "string"),
        4: ("stringData", "map:string"),
        5: ("immutable", "bool?"),
    },
    "PodTemplateSpec": {1: ("metadata", _META), 2: ("spec", "msg:PodSpec")},
    # The PodSpec and Container fields `kubectl create deployment` can set, and the simple
    # ones around them; any other field number is refused (415), never dropped.
    "PodSpec": {
        2: ("containers", "[]msg:Container"),
        3: ("restartPolicy", "string"),
        4: ("terminationGracePeriodSeconds", "int?"),
        6: ("dnsPolicy", "string"),
        7: ("nodeSelector", "map:string"),
        8: ("serviceAccountName", "string"),
        9: ("serviceAccount", "string"),
        10: ("nodeName", "string"),
        11: ("hostNetwork", "bool"),
        12: ("hostPID", "bool"),
        13: ("hostIPC", "bool"),
        16: ("hostname", "string"),
        17: ("subdomain", "string"),
        19: ("schedulerName", "string"),
        20: ("initContainers", "[]msg:Container"),
        24: ("priorityClassName", "string"),
        30: ("enableServiceLinks", "bool?"),
    },
    "Container": {
        1: ("name", "string"),
        2: ("image", "string"),
        3: ("command", "[]string"),
        4: ("args", "[]string"),
        5: ("workingDir", "string"),
        6: ("ports", "[]msg:ContainerPort"),
        7: ("env", "[]msg:EnvVar"),
        8: ("resources", "msg:ResourceRequirements"),
        13: ("terminationMessagePath", "string"),
        14: ("imagePullPolicy", "string"),
        16: ("stdin", "bool"),
        17: ("stdinOnce", "bool"),
        18: ("tty", "bool"),
        20: ("terminationMessagePolicy", "string"),
    },
    "ContainerPort": {
        1: ("name", "string"),
        2: ("hostPort", "int"),
        3: ("containerPort", "int?"),
        4: ("protocol", "string"),
        5: ("hostIP", "string"),
    },
    "EnvVar": {1: ("name", "string"), 2: ("value", "string")},
    "ResourceRequirements": {1: ("limits", "map:msg:Quantity"), 2: ("requests", "map:msg:Quantity")},
    # k8s.io/api/apps/v1
    "Deployment": {1: ("metadata", _META), 2: ("spec", "msg:DeploymentSpec"), 3: ("status", "skip")},
    "DeploymentSpec": {
        1: ("replicas", "int?"),
        2: ("selector", "msg:LabelSelector"),
        3: ("template", "msg:PodTemplateSpec"),
        4: ("strategy", "msg:DeploymentStrategy"),
        5: ("minReadySeconds", "int"),
        6: ("revisionHistoryLimit", "int?"),
        7: ("paused", "bool"),
        9: ("progressDeadlineSeconds", "int?"),
    },
    "DeploymentStrategy": {1: ("type", "string"), 2: ("rollingUpdate", "msg:RollingUpdateDeployment")},
    "RollingUpdateDeployment": {1: ("maxUnavailable", "msg:IntOrString"), 2: ("maxSurge", "msg:IntOrString")},
    # k8s.io/api/rbac/v1
    "Role": {1: ("metadata", _META), 2: ("rules", "[]msg:PolicyRule")},
    "ClusterRole": {
        1: ("metadata", _META),
        2: ("rules", "[]msg:PolicyRule"),
        3: ("aggregationRule", "msg:AggregationRule"),
    },
    "PolicyRule": {
        1: ("verbs", "[]string"),
        2: ("apiGroups", "[]string"),
        3: ("resources", "[]string"),
        4: ("resourceNames", "[]string"),
        5: ("nonResourceURLs", "[]string"),
    },
    "AggregationRule": {1: ("clusterRoleSelectors", "[]msg:LabelSelector")},
    "RoleBinding": {1: ("metadata", _META), 2: ("subjects", "[]msg:Subject"), 3: ("roleRef", "msg:RoleRef")},
    "Subject": {1: ("kind", "string"), 2: ("apiGroup", "string"), 3: ("name", "string"), 4: ("namespace", "string")},
    "RoleRef": {1: ("apiGroup", "string"), 2: ("kind", "string"), 3: ("name", "string")},
    # k8s.io/api/policy/v1
    "PodDisruptionBudget": {1: ("metadata", _META), 2: ("spec", "msg:PodDisruptionBudgetSpec"), 3: ("status", "skip")},
    "PodDisruptionBudgetSpec": {
        1: ("minAvailable", "msg:IntOrString"),
        2: ("selector", "msg:LabelSelector"),
        3: ("maxUnavailable", "msg:IntOrString"),
        4: ("unhealthyPodEvictionPolicy", "string"),
    },
}
MESSAGES["ClusterRoleBinding"] = MESSAGES["RoleBinding"]
# Kinds whose messages are above, by resource key.
KINDS = {
    "namespaces": "Namespace",
    "serviceaccounts": "ServiceAccount",
    "services": "Service",
    "configmaps": "ConfigMap",
    "secrets": "Secret",
    "deployments.apps": "Deployment",
    "roles.rbac.authorization.k8s.io": "Role",
    "clusterroles.rbac.authorization.k8s.io": "ClusterRole",
    "rolebindings.rbac.authorization.k8s.io": "RoleBinding",
    "clusterrolebindings.rbac.authorization.k8s.io": "ClusterRoleBinding",
    "poddisruptionbudgets.policy": "PodDisruptionBudget",
}


def _bad(what: str) -> errors.ApiError:
    return errors.bad_request(f"protobuf: {what}")


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def varint(self) -> int:
        out = shift = 0
        while True:
            if self.pos >= len(self.data):
                raise _bad("truncated varint")
            b = self.data[self.pos]
            self.pos += 1
            out |= (b & 0x7F) << shift
            if not b & 0x80:
                return out
            shift += 7
            if shift > 63:
                raise _bad("varint too long")

    def chunk(self) -> bytes:
        n = self.varint()
        if n > len(self.data) - self.pos:
            raise _bad("length past the end of the message")
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def fields(self) -> list[tuple[int, int, Any]]:
        """(field number, wire type, raw value) for every field, in order."""
        out: list[tuple[int, int, Any]] = []
        while self.pos < len(self.data):
            key = self.varint()
            number, wire = key >> 3, key & 7
            if number == 0:
                raise _bad("field number 0")
            if wire == 0:
                out.append((number, wire, self.varint()))
            elif wire == 2:
                out.append((number, wire, self.chunk()))
            elif wire in (1, 5):
                n = 8 if wire == 1 else 4
                if self.pos + n > len(self.data):
                    raise _bad("truncated fixed-size field")
                out.append((number, wire, self.data[self.pos : self.pos + n]))
                self.pos += n
            else:
                raise _bad(f"unsupported wire type {wire}")
        return out


def _signed(v: int) -> int:
    return v - (1 << 64) if v >= 1 << 63 else v


def _scalar(kind: str, wire: int, v: Any) -> Any:
    if kind in ("string", "bytes", "raw"):
        if wire != 2:
            raise _bad(f"{kind} field with wire type {wire}")
        if kind == "raw":
            return v
        if kind == "bytes":
            return base64.b64encode(v).decode()
        try:
            return v.decode()
        except UnicodeDecodeError:
            raise _bad("string field is not UTF-8") from None
    if wire != 0:
        raise _bad(f"{kind} field with wire type {wire}")
    return bool(v) if kind == "bool" else _signed(v)


def _message(type_name: str, data: bytes, depth: int = 0) -> dict[str, Any]:
    if depth > _MAX_DEPTH:
        raise _bad("messages nested too deeply")
    table = MESSAGES[type_name]
    out: dict[str, Any] = {}
    for number, wire, v in _Reader(data).fields():
        if number not in table:
            # Not skipped, as protobuf readers do: that would store the object without it.
            raise errors.unsupported_media_type(
                PROTOBUF + f" (field {number} of {type_name} is not decoded by the emulator; send JSON)",
                ("application/json",),
            )
        name, kind = table[number]
        if kind == "skip":
            continue  # a status: the server owns it
        repeated = kind.startswith("[]")
        kind = kind.removeprefix("[]")
        if kind.startswith("map:"):
            if wire != 2:
                raise _bad(f"map field {name} with wire type {wire}")
            entry = {n: (w, x) for n, w, x in _Reader(v).fields()}
            k_wire, key = entry.get(1, (2, b""))
            v_wire, val = entry.get(2, (2, b""))
            vkind = kind[4:]
            if vkind.startswith("msg:"):
                if v_wire != 2:
                    raise _bad(f"map field {name} with wire type {v_wire}")
                mapped: Any = _convert(vkind[4:], _message(vkind[4:], val, depth + 1))
            else:
                mapped = _scalar(vkind, v_wire, val)
            out.setdefault(name, {})[_scalar("string", k_wire, key)] = mapped
            continue
        if kind.startswith("msg:"):
            if wire != 2:
                raise _bad(f"message field {name} with wire type {wire}")
            value: Any = _convert(kind[4:], _message(kind[4:], v, depth + 1))
        else:
            value = _scalar(kind.removesuffix("?"), wire, v)
        if not repeated and not kind.endswith("?") and kind != "raw" and (value is None or value in ("", {}, 0)):
            continue  # a zero field is an absent one in JSON (omitempty)
        if repeated:
            out.setdefault(name, []).append(value)
        else:
            out[name] = value
    return out


def _convert(type_name: str, m: dict[str, Any]) -> Any:
    """Messages whose JSON form is not an object: Time and IntOrString."""
    if type_name == "Time":
        if not m.get("seconds"):
            return None  # the zero time: kubectl's "creationTimestamp: null"
        t = datetime.datetime.fromtimestamp(m["seconds"], datetime.UTC)
        return t.strftime("%Y-%m-%dT%H:%M:%SZ")
    if type_name == "IntOrString":
        return m.get("strVal", "") if m.get("type") == 1 else m.get("intVal", 0)
    if type_name == "Quantity":
        return m.get("string", "0")
    return m


def field(number: int, value: int | str | bytes) -> bytes:
    """One protobuf field (a varint for an int, length-delimited otherwise): for tests and seeds."""
    if isinstance(value, int):
        return _varint(number << 3) + _varint(value)
    data = value.encode() if isinstance(value, str) else value
    return _varint(number << 3 | 2) + _varint(len(data)) + data


def envelope(api_version: str, kind: str, raw: bytes) -> bytes:
    """A request body as kubectl sends it: magic, then runtime.Unknown{TypeMeta, raw}."""
    return MAGIC + field(1, field(1, api_version) + field(2, kind)) + field(2, raw)


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def decode_protobuf(raw: bytes, rt: ResourceType) -> dict[str, Any]:
    """A protobuf create/update body for ``rt`` as the JSON object it encodes."""
    type_name = KINDS.get(rt.key)
    if type_name is None:
        raise errors.unsupported_media_type(PROTOBUF, ("application/json",))
    if not raw.startswith(MAGIC):
        raise _bad("the body does not start with the k8s protobuf magic")
    unknown = _message("Unknown", raw[len(MAGIC) :])
    tm = unknown.get("typeMeta") or {}
    if tm.get("kind") not in (None, "", rt.kind):
        raise errors.bad_request(
            f"the kind in the data ({tm.get('kind')}) does not match the expected kind ({rt.kind})"
        )
    if unknown.get("contentEncoding"):
        raise _bad(f"content encoding {unknown['contentEncoding']!r} is not supported")
    obj = _message(type_name, unknown.get("raw") or b"")
    md = obj.get("metadata")
    if isinstance(md, dict) and not md.get("generation"):
        md.pop("generation", None)
    return {"apiVersion": tm.get("apiVersion") or rt.api_version, "kind": rt.kind, **obj}


__all__ = ["KINDS", "MAGIC", "MESSAGES", "PROTOBUF", "decode_protobuf", "envelope", "field"]
