"""Calico's naming conventions for Kubernetes objects: labels, profiles, annotations, interface names.

The values agents see are named the way Calico's KDD conversion names them, so an agent written for
Calico's data model recognises them: profile ``kns.<ns>`` carries a namespace's labels as
``pcns.<key>``, a pod's host-side interface is ``cali`` + 11 hex digits of a hash, and so on.
"""

from __future__ import annotations

import hashlib

LABEL_NAMESPACE = "projectcalico.org/namespace"
LABEL_ORCHESTRATOR = "projectcalico.org/orchestrator"
LABEL_SERVICE_ACCOUNT = "projectcalico.org/serviceaccount"
LABEL_NAME = "projectcalico.org/name"
NS_LABEL_PREFIX = "pcns."
SA_LABEL_PREFIX = "pcsa."
NS_PROFILE_PREFIX = "kns."
SA_PROFILE_PREFIX = "ksa."
K8S_POLICY_PREFIX = "knp.default."
K8S_POLICY_ORDER = 1000.0

ANN_POD_IP = "cni.projectcalico.org/podIP"
ANN_POD_IPS = "cni.projectcalico.org/podIPs"
ANN_MAC = "cni.projectcalico.org/hwAddr"
ANN_FLOATING_IPS = "cni.projectcalico.org/floatingIPs"
ANN_SOURCE_PREFIXES = "cni.projectcalico.org/allowedSourcePrefixes"

# Node annotations written by calico-node -> value field names.
NODE_ANNOTATIONS = {
    "projectcalico.org/IPv4Address": "ipv4Address",
    "projectcalico.org/IPv6Address": "ipv6Address",
    "projectcalico.org/IPv4IPIPTunnelAddr": "ipv4IPIPTunnelAddr",
    "projectcalico.org/IPv4VXLANTunnelAddr": "ipv4VXLANTunnelAddr",
    "projectcalico.org/VXLANTunnelMACAddr": "vxlanTunnelMACAddr",
    "projectcalico.org/IPv6VXLANTunnelAddr": "ipv6VXLANTunnelAddr",
    "projectcalico.org/VXLANTunnelMACAddrV6": "vxlanTunnelMACAddrV6",
    "projectcalico.org/IPv4WireguardInterfaceAddr": "ipv4WireguardInterfaceAddr",
    "projectcalico.org/WireguardPublicKey": "wireguardPublicKey",
    "projectcalico.org/RouteReflectorClusterID": "routeReflectorClusterID",
}
ANN_AS_NUMBER = "projectcalico.org/ASNumber"


def interface_name(namespace: str, pod: str, prefix: str = "cali") -> str:
    """Host-side veth name: prefix + first 11 hex chars of sha1("<ns>.<pod>") (as Calico CNI)."""
    return prefix + hashlib.sha1(f"{namespace}.{pod}".encode()).hexdigest()[:11]
