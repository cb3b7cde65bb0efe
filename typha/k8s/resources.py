"""The resources typha follows: kind, API path and the syncer types each one feeds.

One table, because three things must agree on it: the Kubernetes datastore (which collections to
list and watch, and at which path), the ingest layer (which caches an object's keys go to) and the
projection (which projector turns the object into keys).
"""

from __future__ import annotations

from dataclasses import dataclass

from protocol.keys import SYNCER_BGP, SYNCER_FELIX, SYNCER_TYPES

__all__ = ["RESOURCES", "SYNCER_TYPES", "Resource", "resources_for_syncer"]


@dataclass(frozen=True, slots=True)
class Resource:
    name: str  # our identifier, used by project()/project_delete()
    kind: str
    group: str  # "" for the core API group
    version: str
    plural: str
    namespaced: bool
    syncers: frozenset[str]

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    def path(self, namespace: str | None = None) -> str:
        """REST collection path, e.g. ``/api/v1/pods`` or ``/apis/crd.projectcalico.org/v1/ippools``."""
        base = f"/apis/{self.group}/{self.version}" if self.group else f"/api/{self.version}"
        if namespace is not None and self.namespaced:
            return f"{base}/namespaces/{namespace}/{self.plural}"
        return f"{base}/{self.plural}"


_CRD = "crd.projectcalico.org"
_F = frozenset({SYNCER_FELIX})
_FB = frozenset({SYNCER_FELIX, SYNCER_BGP})
_B = frozenset({SYNCER_BGP})

RESOURCES: dict[str, Resource] = {
    r.name: r
    for r in (
        Resource("nodes", "Node", "", "v1", "nodes", False, _FB),
        Resource("pods", "Pod", "", "v1", "pods", True, _F),
        Resource("namespaces", "Namespace", "", "v1", "namespaces", False, _F),
        Resource("serviceaccounts", "ServiceAccount", "", "v1", "serviceaccounts", True, _F),
        Resource("networkpolicies", "NetworkPolicy", "networking.k8s.io", "v1", "networkpolicies", True, _F),
        Resource("globalnetworkpolicies", "GlobalNetworkPolicy", _CRD, "v1", "globalnetworkpolicies", False, _F),
        # Named apart from the Kubernetes kind of the same plural.
        Resource("calico-networkpolicies", "NetworkPolicy", _CRD, "v1", "networkpolicies", True, _F),
        Resource("globalnetworksets", "GlobalNetworkSet", _CRD, "v1", "globalnetworksets", False, _F),
        Resource("networksets", "NetworkSet", _CRD, "v1", "networksets", True, _F),
        Resource("ippools", "IPPool", _CRD, "v1", "ippools", False, _FB),
        Resource("blockaffinities", "BlockAffinity", _CRD, "v1", "blockaffinities", False, _FB),
        Resource("ipamblocks", "IPAMBlock", _CRD, "v1", "ipamblocks", False, _FB),  # bgp: borrowed /32s
        Resource("hostendpoints", "HostEndpoint", _CRD, "v1", "hostendpoints", False, _F),
        Resource("felixconfigurations", "FelixConfiguration", _CRD, "v1", "felixconfigurations", False, _F),
        Resource("clusterinformations", "ClusterInformation", _CRD, "v1", "clusterinformations", False, _F),
        Resource("bgppeers", "BGPPeer", _CRD, "v1", "bgppeers", False, _B),
        Resource("bgpconfigurations", "BGPConfiguration", _CRD, "v1", "bgpconfigurations", False, _B),
    )
}


def resources_for_syncer(syncer: str) -> list[Resource]:
    """Resources a cache of ``syncer`` type must watch, in table order."""
    if syncer not in SYNCER_TYPES:
        raise ValueError(f"unknown syncer type {syncer!r}")
    return [r for r in RESOURCES.values() if syncer in r.syncers]
