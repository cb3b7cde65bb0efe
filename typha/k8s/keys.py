"""Key builders and parsers for Typha's key/value cache.

Design note
-----------
Keys are plain strings modelled on Calico's libcalico-go "v1" model paths
(``/calico/v1/...``, ``/calico/ipam/v2/...``) and, for resources Calico passes
through whole, its v3 resource paths (``/calico/resources/v3/projectcalico.org/...``).
Strings rather than key objects because Typha only ever compares, orders and
forwards keys; a string is hashed once, sorts deterministically and crosses the
wire without re-encoding.  Every key is built here and nowhere else so that the
projection, Typha and Felix cannot drift apart.

Names that may contain ``/`` (a namespaced name ``<ns>/<name>``) are escaped the
way Calico escapes them (``/`` -> ``%2f``) so that each name stays one path
segment: parsers can split on ``/`` without ambiguity.  CIDRs become one segment
by replacing their ``/`` with ``-`` (``10.64.0.0/26`` -> ``10.64.0.0-26``), again
as Calico does.
"""

from __future__ import annotations

from typing import NamedTuple

ORCHESTRATOR_K8S = "k8s"
DEFAULT_ENDPOINT = "eth0"
DEFAULT_TIER = "default"

_WEP_PREFIX = "/calico/v1/host/"
_RESOURCES_V3 = "/calico/resources/v3/projectcalico.org/"


def escape(name: str) -> str:
    """Make ``name`` a single path segment (Calico's escapeName)."""
    return name.replace("/", "%2f")


def unescape(segment: str) -> str:
    return segment.replace("%2f", "/").replace("%2F", "/")


def cidr_segment(cidr: str) -> str:
    """``10.64.0.0/26`` -> ``10.64.0.0-26`` (one path segment)."""
    return cidr.replace("/", "-", 1)


def segment_cidr(segment: str) -> str:
    """Inverse of :func:`cidr_segment`; the prefix length follows the last ``-``."""
    net, sep, plen = segment.rpartition("-")
    if not sep:
        raise ValueError(f"not a CIDR segment: {segment!r}")
    return f"{net}/{plen}"


def _ip_version(cidr: str) -> int:
    return 6 if ":" in cidr else 4


# --- Workload endpoints ----------------------------------------------------------------------


class WorkloadKey(NamedTuple):
    node: str
    orchestrator: str
    namespace: str
    pod: str
    endpoint: str


def workload_key(
    node: str, namespace: str, pod: str, endpoint: str = DEFAULT_ENDPOINT, orchestrator: str = ORCHESTRATOR_K8S
) -> str:
    """``/calico/v1/host/<node>/workload/k8s/<ns>%2f<pod>/endpoint/eth0``."""
    return f"{_WEP_PREFIX}{node}/workload/{orchestrator}/{escape(namespace + '/' + pod)}/endpoint/{escape(endpoint)}"


def workload_prefix(node: str) -> str:
    """Prefix of every workload key on ``node`` (for per-node filtering)."""
    return f"{_WEP_PREFIX}{node}/workload/"


def parse_workload_key(key: str) -> WorkloadKey | None:
    """Split a workload-endpoint key into its parts; ``None`` if ``key`` is not one.

    Cheap enough to call on every key Felix receives: a prefix check and one split.
    """
    if not key.startswith(_WEP_PREFIX):
        return None
    parts = key[len(_WEP_PREFIX) :].split("/")
    # <node>/workload/<orch>/<workload>/endpoint/<endpoint>
    if len(parts) != 6 or parts[1] != "workload" or parts[4] != "endpoint":
        return None
    node, _, orch, workload, _, endpoint = parts
    ns, sep, pod = unescape(workload).partition("/")
    if not sep or not node or not ns or not pod:
        return None
    return WorkloadKey(node, orch, ns, pod, unescape(endpoint))


# --- Host endpoints ---------------------------------------------------------------------------


def host_endpoint_key(node: str, name: str) -> str:
    return f"{_WEP_PREFIX}{node}/endpoint/{escape(name)}"


# --- Policy, profiles, network sets ------------------------------------------------------------


def profile_key(name: str) -> str:
    return f"/calico/v1/policy/profile/{escape(name)}"


def policy_key(name: str, namespace: str | None = None, tier: str = DEFAULT_TIER) -> str:
    """Namespaced policies are named ``<ns>/<name>`` as in Calico's v1 model, escaped."""
    full = f"{namespace}/{name}" if namespace else name
    return f"/calico/v1/policy/tier/{escape(tier)}/policy/{escape(full)}"


class PolicyKey(NamedTuple):
    tier: str
    namespace: str | None
    name: str


def parse_policy_key(key: str) -> PolicyKey | None:
    prefix = "/calico/v1/policy/tier/"
    if not key.startswith(prefix):
        return None
    parts = key[len(prefix) :].split("/")
    if len(parts) != 3 or parts[1] != "policy":
        return None
    full = unescape(parts[2])
    ns, sep, name = full.partition("/")
    if sep:
        return PolicyKey(unescape(parts[0]), ns, name)
    return PolicyKey(unescape(parts[0]), None, full)


def network_set_key(name: str, namespace: str | None = None) -> str:
    full = f"{namespace}/{name}" if namespace else name
    return f"/calico/v1/netset/{escape(full)}"


# --- IPAM --------------------------------------------------------------------------------------


def ip_pool_key(cidr: str) -> str:
    return f"/calico/v1/ipam/v{_ip_version(cidr)}/pool/{cidr_segment(cidr)}"


def ipam_block_key(cidr: str) -> str:
    return f"/calico/ipam/v2/assignment/ipv{_ip_version(cidr)}/block/{cidr_segment(cidr)}"


def block_affinity_key(node: str, cidr: str) -> str:
    return f"/calico/ipam/v2/host/{node}/ipv{_ip_version(cidr)}/block/{cidr_segment(cidr)}"


def parse_block_key(key: str) -> str | None:
    """CIDR of an IPAM block key, or ``None``."""
    prefix = "/calico/ipam/v2/assignment/ipv"
    if not key.startswith(prefix):
        return None
    parts = key[len(prefix) :].split("/")
    if len(parts) != 3 or parts[1] != "block":
        return None
    return segment_cidr(parts[2])


# --- Whole v3 resources (node, configuration, BGP) ----------------------------------------------


def resource_key(plural: str, name: str, namespace: str | None = None) -> str:
    if namespace:
        return f"{_RESOURCES_V3}{plural}/{namespace}/{escape(name)}"
    return f"{_RESOURCES_V3}{plural}/{escape(name)}"


def node_key(name: str) -> str:
    return resource_key("nodes", name)


def parse_node_key(key: str) -> str | None:
    prefix = _RESOURCES_V3 + "nodes/"
    if key.startswith(prefix) and "/" not in key[len(prefix) :]:
        return unescape(key[len(prefix) :])
    return None


def felix_configuration_key(name: str) -> str:
    return resource_key("felixconfigurations", name)


def cluster_information_key(name: str) -> str:
    return resource_key("clusterinformations", name)


def bgp_peer_key(name: str) -> str:
    return resource_key("bgppeers", name)


def bgp_configuration_key(name: str) -> str:
    return resource_key("bgpconfigurations", name)
