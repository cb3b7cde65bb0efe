"""Strategic-merge-patch metadata of the built-in kinds: which lists merge, and by which key.

Design note
-----------
kube-apiserver reads this from Go struct tags (``patchStrategy:"merge"
patchMergeKey:"name"``); the emulator has no Go types, so the tags it needs are written
down here as data, transcribed from k8s.io/api (core/v1, networking/v1, discovery/v1) and
k8s.io/apimachinery (ObjectMeta). A type is a mapping from JSON field name to
:class:`FieldMeta`; a field that is not listed is a plain field: maps merge key by key,
lists are replaced, exactly SMP's defaults. So only fields that differ from the defaults,
and the struct types on the way to them, need a row.

To serve another built-in kind, add its struct types here (``PodTemplateSpec`` leads to
the pod's merge lists, as Deployment and DaemonSet do) and, if its type name is not its
kind, give its :class:`~.resources.ResourceType` ``patch_schema="<TypeName>"``;
:func:`register` does the same from outside this module. The served OpenAPI documents
carry the same facts (``x-kubernetes-patch-merge-key``), and a test checks that the two
agree for every kind served. Custom resources have no schema: a strategic merge
patch to them is a 415, as in kube-apiserver.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class FieldMeta:
    type: str | None = None  # struct type of the value (a map) or of each list item
    strategy: str = "replace"  # for lists: "merge" or "replace" (SMP's default)
    merge_key: str | None = None  # lists of maps: the key that identifies an item

    @property
    def merges(self) -> bool:
        return self.strategy == "merge"


PLAIN = FieldMeta()


def struct(type_name: str) -> FieldMeta:
    """A nested object of a known type (maps always merge)."""
    return FieldMeta(type=type_name)


def merge_list(key: str | None = None, item: str | None = None) -> FieldMeta:
    """A list merged by ``key`` (lists of maps) or as a set (``key`` None: primitives)."""
    return FieldMeta(type=item, strategy="merge", merge_key=key)


def replace_list(item: str) -> FieldMeta:
    """A replaced list whose items are of a known type (only matters inside a new value)."""
    return FieldMeta(type=item)


_CONTAINER = {
    "ports": merge_list("containerPort"),
    "env": merge_list("name"),
    "volumeMounts": merge_list("mountPath"),
    "volumeDevices": merge_list("devicePath"),
}

STRUCTS: dict[str, dict[str, FieldMeta]] = {
    "ObjectMeta": {"finalizers": merge_list(), "ownerReferences": merge_list("uid")},
    # core/v1
    "Namespace": {"metadata": struct("ObjectMeta"), "status": struct("NamespaceStatus")},
    "NamespaceStatus": {"conditions": merge_list("type")},
    "Node": {"metadata": struct("ObjectMeta"), "spec": struct("NodeSpec"), "status": struct("NodeStatus")},
    "NodeSpec": {"podCIDRs": merge_list()},
    "NodeStatus": {"conditions": merge_list("type"), "addresses": merge_list("type")},
    "Pod": {"metadata": struct("ObjectMeta"), "spec": struct("PodSpec"), "status": struct("PodStatus")},
    "PodTemplateSpec": {"metadata": struct("ObjectMeta"), "spec": struct("PodSpec")},
    "PodSpec": {
        "volumes": merge_list("name"),  # kube also sets retainKeys; $retainKeys is honoured anywhere
        "initContainers": merge_list("name", "Container"),
        "containers": merge_list("name", "Container"),
        "ephemeralContainers": merge_list("name", "Container"),
        "imagePullSecrets": merge_list("name"),
        "hostAliases": merge_list("ip"),
        "topologySpreadConstraints": merge_list("topologyKey"),
        "schedulingGates": merge_list("name"),
        "resourceClaims": merge_list("name"),
    },
    "Container": dict(_CONTAINER),
    "PodStatus": {
        "conditions": merge_list("type"),
        "hostIPs": merge_list("ip"),
        "podIPs": merge_list("ip"),
        "resourceClaimStatuses": merge_list("name"),
        "containerStatuses": replace_list("ContainerStatus"),
        "initContainerStatuses": replace_list("ContainerStatus"),
        "ephemeralContainerStatuses": replace_list("ContainerStatus"),
    },
    "ContainerStatus": {"volumeMounts": merge_list("mountPath"), "allocatedResourcesStatus": merge_list("name")},
    "Service": {"metadata": struct("ObjectMeta"), "spec": struct("ServiceSpec"), "status": struct("ServiceStatus")},
    "ServiceSpec": {"ports": merge_list("port")},
    "ServiceStatus": {"conditions": merge_list("type")},
    "ServiceAccount": {"metadata": struct("ObjectMeta"), "secrets": merge_list("name")},
    # networking/v1, discovery/v1: only their metadata has merge lists.
    "NetworkPolicy": {"metadata": struct("ObjectMeta")},
    "EndpointSlice": {"metadata": struct("ObjectMeta")},
    # apps/v1: the pod template leads to the pod's merge lists.
    "Deployment": {
        "metadata": struct("ObjectMeta"),
        "spec": struct("DeploymentSpec"),
        "status": struct("WorkloadStatus"),
    },
    "DeploymentSpec": {"template": struct("PodTemplateSpec")},
    "DaemonSet": {
        "metadata": struct("ObjectMeta"),
        "spec": struct("DaemonSetSpec"),
        "status": struct("WorkloadStatus"),
    },
    "DaemonSetSpec": {"template": struct("PodTemplateSpec")},
    "WorkloadStatus": {"conditions": merge_list("type")},
    # policy/v1
    "PodDisruptionBudget": {"metadata": struct("ObjectMeta"), "status": struct("WorkloadStatus")},
    # core/v1, rbac/v1, apiextensions/v1: lists are atomic (rules, subjects, versions).
    "ConfigMap": {"metadata": struct("ObjectMeta")},
    "Secret": {"metadata": struct("ObjectMeta")},
    "Role": {"metadata": struct("ObjectMeta")},
    "ClusterRole": {"metadata": struct("ObjectMeta")},
    "RoleBinding": {"metadata": struct("ObjectMeta")},
    "ClusterRoleBinding": {"metadata": struct("ObjectMeta")},
    "CustomResourceDefinition": {"metadata": struct("ObjectMeta")},
}


def field_meta(type_name: str | None, field: str) -> FieldMeta:
    """How ``field`` of a ``type_name`` object merges (:data:`PLAIN` when not listed)."""
    if type_name is None:
        return PLAIN
    return STRUCTS.get(type_name, {}).get(field, PLAIN)


def register(types: Mapping[str, Mapping[str, FieldMeta]]) -> None:
    """Add or replace struct types (for kinds served beyond the defaults)."""
    for name, fields in types.items():
        STRUCTS[name] = dict(fields)


__all__ = ["PLAIN", "STRUCTS", "FieldMeta", "field_meta", "merge_list", "register", "replace_list", "struct"]
