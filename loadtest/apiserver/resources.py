"""Resource registry: which REST resources the emulator serves, and their discovery documents.

Design note
-----------
Every served resource is described by one immutable :class:`ResourceType` row:
group/version/plural/kind, whether it is namespaced, whether it has a ``/status``
subresource, which field selectors it supports and whether it follows
CustomResource update rules, its name rule and its strategic-merge schema. The store,
the HTTP router, validation, patching and the discovery endpoints are all driven from
this one table, so adding a resource is one row (plus, for a built-in kind with merge
lists, its struct types in ``patchschema.py``).

A resource is identified internally by its *key*: the plural for the core group
(``pods``) and ``plural.group`` otherwise (``ippools.crd.projectcalico.org``),
which is exactly how ``kubectl api-resources`` disambiguates. The plural alone is
accepted wherever it is unambiguous (``networkpolicies`` is ambiguous: both
networking.k8s.io and crd.projectcalico.org define it).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

CALICO_GROUP = "crd.projectcalico.org"
# The Kubernetes version the emulator reports (/version) and whose OpenAPI schemas it serves.
K8S_MINOR = 31
VERSION_INFO = {
    "major": "1",
    "minor": str(K8S_MINOR),
    "gitVersion": f"v1.{K8S_MINOR}.0-pytypha-emulator",
    "gitCommit": "0000000000000000000000000000000000000000",
    "gitTreeState": "clean",
    "buildDate": "2024-08-13T00:00:00Z",
    "goVersion": "go1.22.5",
    "compiler": "gc",
    "platform": "linux/amd64",
}

_VERBS_NAMESPACED = ["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"]


@dataclass(frozen=True)
class ResourceType:
    group: str
    version: str
    plural: str
    kind: str
    namespaced: bool
    short_names: tuple[str, ...] = ()
    status_subresource: bool = False
    # Field selector labels beyond metadata.name / metadata.namespace (those two always work).
    field_labels: tuple[str, ...] = ()
    # Field whose equality selectors get a watcher index (like the kube-apiserver
    # watch cache's pod spec.nodeName index) so per-node watchers are O(1) per event.
    indexed_field: str | None = None
    # CustomResources reject PUT without metadata.resourceVersion (AllowUnconditionalUpdate=false)
    # and strategic merge patches (415).
    custom: bool = False
    categories: tuple[str, ...] = field(default=())
    # Type in patchschema.STRUCTS whose merge keys a strategic merge patch uses; None means
    # the kind's own name. Ignored for custom resources.
    patch_schema: str | None = None
    # Name rule (validation.NAME_RULES): "subdomain" (most kinds), "label" (namespaces),
    # "label1035" (services), "path" (RBAC kinds: anything usable in a URL path).
    name_rule: str = "subdomain"
    # Set for kinds registered from a CustomResourceDefinition (its metadata.name).
    crd: str | None = None

    @property
    def key(self) -> str:
        return self.plural if not self.group else f"{self.plural}.{self.group}"

    @property
    def api_version(self) -> str:
        return self.version if not self.group else f"{self.group}/{self.version}"

    @property
    def list_kind(self) -> str:
        return self.kind + "List"

    @property
    def singular(self) -> str:
        return self.kind.lower()

    @property
    def unconditional_update(self) -> bool:
        return not self.custom

    @property
    def strategic_type(self) -> str | None:
        """Schema type for strategic merge patches; None for custom resources (415)."""
        return None if self.custom else (self.patch_schema or self.kind)


def _core(plural: str, kind: str, namespaced: bool, **kw: Any) -> ResourceType:
    return ResourceType("", "v1", plural, kind, namespaced, **kw)


def _calico(plural: str, kind: str, namespaced: bool = False) -> ResourceType:
    return ResourceType(CALICO_GROUP, "v1", plural, kind, namespaced, custom=True)


def _rbac(plural: str, kind: str, namespaced: bool) -> ResourceType:
    return ResourceType("rbac.authorization.k8s.io", "v1", plural, kind, namespaced, name_rule="path")


def _apps(plural: str, kind: str, short: str) -> ResourceType:
    return ResourceType(
        "apps", "v1", plural, kind, True, short_names=(short,), status_subresource=True, categories=("all",)
    )


DEFAULT_RESOURCES: tuple[ResourceType, ...] = (
    _core(
        "namespaces",
        "Namespace",
        False,
        short_names=("ns",),
        status_subresource=True,
        field_labels=("status.phase",),
        name_rule="label",
    ),
    _core("nodes", "Node", False, short_names=("no",), status_subresource=True, field_labels=("spec.unschedulable",)),
    _core(
        "pods",
        "Pod",
        True,
        short_names=("po",),
        status_subresource=True,
        categories=("all",),
        field_labels=(
            "spec.nodeName",
            "spec.restartPolicy",
            "spec.schedulerName",
            "spec.serviceAccountName",
            "spec.hostNetwork",
            "status.phase",
            "status.podIP",
            "status.nominatedNodeName",
        ),
        indexed_field="spec.nodeName",
    ),
    _core("serviceaccounts", "ServiceAccount", True, short_names=("sa",)),
    _core(
        "services",
        "Service",
        True,
        short_names=("svc",),
        status_subresource=True,
        name_rule="label1035",
        categories=("all",),
    ),
    _core("configmaps", "ConfigMap", True, short_names=("cm",)),
    _core("secrets", "Secret", True, field_labels=("type",)),
    ResourceType("networking.k8s.io", "v1", "networkpolicies", "NetworkPolicy", True, short_names=("netpol",)),
    ResourceType("discovery.k8s.io", "v1", "endpointslices", "EndpointSlice", True),
    _rbac("roles", "Role", True),
    _rbac("rolebindings", "RoleBinding", True),
    _rbac("clusterroles", "ClusterRole", False),
    _rbac("clusterrolebindings", "ClusterRoleBinding", False),
    _apps("deployments", "Deployment", "deploy"),
    _apps("daemonsets", "DaemonSet", "ds"),
    ResourceType(
        "policy", "v1", "poddisruptionbudgets", "PodDisruptionBudget", True, ("pdb",), status_subresource=True
    ),
    ResourceType(
        "apiextensions.k8s.io",
        "v1",
        "customresourcedefinitions",
        "CustomResourceDefinition",
        False,
        ("crd", "crds"),
        status_subresource=True,
    ),
    _calico("globalnetworkpolicies", "GlobalNetworkPolicy"),
    _calico("networkpolicies", "NetworkPolicy", namespaced=True),
    _calico("stagedglobalnetworkpolicies", "StagedGlobalNetworkPolicy"),
    _calico("stagednetworkpolicies", "StagedNetworkPolicy", namespaced=True),
    _calico("stagedkubernetesnetworkpolicies", "StagedKubernetesNetworkPolicy", namespaced=True),
    _calico("tiers", "Tier"),
    _calico("globalnetworksets", "GlobalNetworkSet"),
    _calico("networksets", "NetworkSet", namespaced=True),
    _calico("ippools", "IPPool"),
    _calico("ipreservations", "IPReservation"),
    _calico("blockaffinities", "BlockAffinity"),
    _calico("ipamblocks", "IPAMBlock"),
    _calico("ipamhandles", "IPAMHandle"),
    _calico("ipamconfigs", "IPAMConfig"),
    _calico("hostendpoints", "HostEndpoint"),
    _calico("felixconfigurations", "FelixConfiguration"),
    _calico("clusterinformations", "ClusterInformation"),
    _calico("kubecontrollersconfigurations", "KubeControllersConfiguration"),
    _calico("bgppeers", "BGPPeer"),
    _calico("bgpconfigurations", "BGPConfiguration"),
    _calico("bgpfilters", "BGPFilter"),
)


class ResourceRegistry:
    """Lookup table over a set of ResourceTypes (by key, by group/version/plural, by plural)."""

    def __init__(self, resources: Iterable[ResourceType] = DEFAULT_RESOURCES) -> None:
        self._by_key: dict[str, ResourceType] = {}
        self._by_gvp: dict[tuple[str, str, str], ResourceType] = {}
        self._by_alias: dict[str, list[ResourceType]] = {}
        for rt in resources:
            self.add(rt)

    def add(self, rt: ResourceType) -> None:
        """Serve ``rt`` (ValueError if its key is taken)."""
        if rt.key in self._by_key:
            raise ValueError(f"duplicate resource {rt.key}")
        self._by_key[rt.key] = rt
        self._by_gvp[(rt.group, rt.version, rt.plural)] = rt
        for alias in self._aliases(rt):
            self._by_alias.setdefault(alias, []).append(rt)

    def remove(self, key: str) -> ResourceType:
        """Stop serving the resource ``key`` (KeyError if it is not served)."""
        rt = self._by_key.pop(key)
        del self._by_gvp[(rt.group, rt.version, rt.plural)]
        for alias in self._aliases(rt):
            self._by_alias[alias].remove(rt)
            if not self._by_alias[alias]:
                del self._by_alias[alias]
        return rt

    @staticmethod
    def _aliases(rt: ResourceType) -> set[str]:
        return {rt.plural, rt.kind, rt.kind.lower(), *rt.short_names}

    def __contains__(self, key: str) -> bool:
        return key in self._by_key

    def __iter__(self) -> Iterator[ResourceType]:
        return iter(self._by_key.values())

    def resolve(self, name: str | ResourceType) -> ResourceType:
        """Resolve a key ("pods", "ippools.crd.projectcalico.org"), plural, kind or short name."""
        if isinstance(name, ResourceType):
            return self._by_key[name.key]
        rt = self._by_key.get(name)
        if rt is not None:
            return rt
        cands = self._by_alias.get(name, [])
        if len(cands) == 1:
            return cands[0]
        if not cands:
            raise KeyError(f"unknown resource {name!r}")
        raise KeyError(f"ambiguous resource {name!r}: use one of {sorted(c.key for c in cands)}")

    def lookup(self, group: str, version: str, plural: str) -> ResourceType | None:
        return self._by_gvp.get((group, version, plural))

    def group_versions(self) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        for rt in self._by_key.values():
            versions = out.setdefault(rt.group, [])
            if rt.version not in versions:
                versions.append(rt.version)
        return out

    # ---- discovery documents -------------------------------------------------------------

    def api_resource_list(self, group: str, version: str) -> dict[str, Any] | None:
        rts = [rt for rt in self._by_key.values() if rt.group == group and rt.version == version]
        if not rts:
            return None
        resources: list[dict[str, Any]] = []
        for rt in rts:
            entry: dict[str, Any] = {
                "name": rt.plural,
                "singularName": rt.singular,
                "namespaced": rt.namespaced,
                "kind": rt.kind,
                "verbs": _VERBS_NAMESPACED,
            }
            if rt.short_names:
                entry["shortNames"] = list(rt.short_names)
            if rt.categories:
                entry["categories"] = list(rt.categories)
            if rt.custom:
                entry["storageVersionHash"] = ""
            resources.append(entry)
            if rt.status_subresource:
                resources.append(
                    {
                        "name": rt.plural + "/status",
                        "singularName": "",
                        "namespaced": rt.namespaced,
                        "kind": rt.kind,
                        "verbs": ["get", "patch", "update"],
                    }
                )
        return {"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": rt.api_version, "resources": resources}

    def api_group(self, group: str) -> dict[str, Any] | None:
        versions = self.group_versions().get(group)
        if not versions or not group:
            return None
        vs = [{"groupVersion": f"{group}/{v}", "version": v} for v in versions]
        return {"kind": "APIGroup", "apiVersion": "v1", "name": group, "versions": vs, "preferredVersion": vs[0]}

    def api_group_list(self) -> dict[str, Any]:
        groups = [self.api_group(g) for g in self.group_versions() if g]
        return {"kind": "APIGroupList", "apiVersion": "v1", "groups": groups}
