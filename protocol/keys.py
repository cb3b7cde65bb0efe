"""The key schema of the stream: the syncer names and every key a server sends, built and parsed here.

Design note
-----------
The keys are the vocabulary of the stream: a peer that wants to act on what typha sends must know
that ``/calico/ipam/v2/assignment/ipv4/block/10.64.0.0-26`` is the IPAM block ``10.64.0.0/26``. So
the schema lives in the protocol package, beside the wire format, and both ends use it: typha's
projection builds every key with the builders below, felix reads them with `parse_key`, and a
property test checks that every kind survives build -> parse -> build unchanged. Before, typha
built keys in one module and felix re-parsed the same layouts in another, and only a test kept the
two from drifting apart.

Keys are plain strings modelled on Calico's libcalico-go "v1" model paths (``/calico/v1/...``,
``/calico/ipam/v2/...``) and, for resources Calico passes through whole, its v3 resource paths
(``/calico/resources/v3/projectcalico.org/...``). Strings rather than key objects on the wire and in
the caches, because typha only ever compares, orders and forwards keys: a string is hashed once,
sorts deterministically and crosses the wire without re-encoding. Parsing returns small NamedTuples
(one type per kind), built only by the agent that wants the parts.

Names that may contain ``/`` (a namespaced name ``<ns>/<name>``) are escaped the way Calico escapes
them (``/`` -> ``%2f``) so that each name stays one path segment and parsers can split on ``/``.
CIDRs become one segment by replacing their ``/`` with ``-`` (``10.64.0.0/26`` ->
``10.64.0.0-26``), again as Calico does.

Parsing has two outcomes besides success. A key outside the schema, or with another layout under a
known prefix, parses to ``None``: a peer ignores keys it does not know, which is what lets a server
add kinds. A key with a known layout whose parts are unusable (a workload segment without its
namespace, a CIDR segment without a prefix length) raises `MalformedKey`: the sender is broken, and
an agent counts that rather than silently ignoring it. The per-kind helpers (`parse_workload_key`,
...) fold both into ``None`` for callers that only ask "is this one of those?".

Also here: the syncer names and the event types of the object stream a datastore reports
(Kubernetes' watch vocabulary), which every producer of updates shares.
"""

from __future__ import annotations

from typing import Final, NamedTuple

__all__ = [
    "ADDED",
    "BOOKMARK",
    "DEFAULT_ENDPOINT",
    "DEFAULT_TIER",
    "DELETED",
    "ERROR",
    "MODIFIED",
    "ORCHESTRATOR_K8S",
    "SYNCER_BGP",
    "SYNCER_FELIX",
    "SYNCER_TYPES",
    "WATCH_EVENT_TYPES",
    "BlockAffinityKey",
    "BlockKey",
    "HostEndpointKey",
    "IPPoolKey",
    "Key",
    "MalformedKey",
    "NetworkSetKey",
    "PolicyKey",
    "ProfileKey",
    "ResourceKey",
    "WorkloadKey",
    "bgp_configuration_key",
    "bgp_peer_key",
    "block_affinity_key",
    "cidr_segment",
    "cluster_information_key",
    "escape",
    "felix_configuration_key",
    "host_endpoint_key",
    "ip_pool_key",
    "ipam_block_key",
    "network_set_key",
    "node_key",
    "parse_block_key",
    "parse_key",
    "parse_node_key",
    "parse_policy_key",
    "parse_workload_key",
    "policy_key",
    "profile_key",
    "resource_key",
    "segment_cidr",
    "unescape",
    "workload_key",
    "workload_prefix",
]

#: Well-known syncer types (a server may serve any subset; names are free-form strings on the wire).
SYNCER_FELIX: Final = "felix"
SYNCER_BGP: Final = "bgp"
SYNCER_TYPES: Final[tuple[str, ...]] = (SYNCER_FELIX, SYNCER_BGP)

#: Event types of the object stream a datastore reports (the Kubernetes watch vocabulary).
ADDED: Final = "ADDED"
MODIFIED: Final = "MODIFIED"
DELETED: Final = "DELETED"
BOOKMARK: Final = "BOOKMARK"  # progress notice: a resourceVersion, no object change
ERROR: Final = "ERROR"  # the watch failed; the object is a Status
#: The event types that change an object.
WATCH_EVENT_TYPES: Final = frozenset({ADDED, MODIFIED, DELETED})

ORCHESTRATOR_K8S: Final = "k8s"
DEFAULT_ENDPOINT: Final = "eth0"
DEFAULT_TIER: Final = "default"

_HOST = "/calico/v1/host/"
_PROFILE = "/calico/v1/policy/profile/"
_POLICY = "/calico/v1/policy/tier/"
_NETSET = "/calico/v1/netset/"
_POOL = "/calico/v1/ipam/v"
_BLOCK = "/calico/ipam/v2/assignment/ipv"
_AFFINITY = "/calico/ipam/v2/host/"
_RESOURCES_V3 = "/calico/resources/v3/projectcalico.org/"


class MalformedKey(ValueError):
    """A key with a known layout whose parts cannot be used."""

    def __init__(self, key: str, reason: str) -> None:
        super().__init__(f"{key}: {reason}")
        self.key = key
        self.reason = reason


# --- segments ----------------------------------------------------------------------------------


def escape(name: str) -> str:
    """Make ``name`` a single path segment (Calico's escapeName)."""
    return name.replace("/", "%2f")


def unescape(segment: str) -> str:
    return segment.replace("%2f", "/").replace("%2F", "/")


def cidr_segment(cidr: str) -> str:
    """``10.64.0.0/26`` -> ``10.64.0.0-26`` (one path segment)."""
    return cidr.replace("/", "-", 1)


def segment_cidr(segment: str) -> str:
    """Inverse of :func:`cidr_segment`; the prefix length follows the last ``-``. ValueError if none."""
    net, sep, plen = segment.rpartition("-")
    if not sep or not net or not plen.isdigit():
        raise ValueError(f"not a CIDR segment: {segment!r}")
    return f"{net}/{plen}"


def _ip_version(cidr: str) -> int:
    return 6 if ":" in cidr else 4


def _namespaced(name: str, namespace: str | None) -> str:
    return escape(f"{namespace}/{name}" if namespace else name)


def _split_namespaced(segment: str) -> tuple[str | None, str]:
    full = unescape(segment)
    ns, sep, name = full.partition("/")
    return (ns, name) if sep else (None, full)


# --- key kinds: each parses to one of these ------------------------------------------------------


class WorkloadKey(NamedTuple):
    """``/calico/v1/host/<node>/workload/<orchestrator>/<ns>%2f<pod>/endpoint/<endpoint>``."""

    node: str
    orchestrator: str
    namespace: str
    pod: str
    endpoint: str

    def key(self) -> str:
        return workload_key(self.node, self.namespace, self.pod, self.endpoint, self.orchestrator)


class HostEndpointKey(NamedTuple):
    """``/calico/v1/host/<node>/endpoint/<name>``."""

    node: str
    name: str

    def key(self) -> str:
        return host_endpoint_key(self.node, self.name)


class ProfileKey(NamedTuple):
    """``/calico/v1/policy/profile/<name>`` (``kns.<ns>``, ``ksa.<ns>.<sa>``)."""

    name: str

    def key(self) -> str:
        return profile_key(self.name)


class PolicyKey(NamedTuple):
    """``/calico/v1/policy/tier/<tier>/policy/<name>`` (``<ns>%2f<name>`` when namespaced)."""

    tier: str
    namespace: str | None
    name: str

    def key(self) -> str:
        return policy_key(self.name, self.namespace, self.tier)


class NetworkSetKey(NamedTuple):
    """``/calico/v1/netset/<name>`` (``<ns>%2f<name>`` when namespaced)."""

    namespace: str | None
    name: str

    def key(self) -> str:
        return network_set_key(self.name, self.namespace)


class IPPoolKey(NamedTuple):
    """``/calico/v1/ipam/v<4|6>/pool/<cidr->``."""

    cidr: str

    def key(self) -> str:
        return ip_pool_key(self.cidr)


class BlockKey(NamedTuple):
    """``/calico/ipam/v2/assignment/ipv<4|6>/block/<cidr->``."""

    cidr: str

    def key(self) -> str:
        return ipam_block_key(self.cidr)


class BlockAffinityKey(NamedTuple):
    """``/calico/ipam/v2/host/<node>/ipv<4|6>/block/<cidr->``."""

    node: str
    cidr: str

    def key(self) -> str:
        return block_affinity_key(self.node, self.cidr)


class ResourceKey(NamedTuple):
    """``/calico/resources/v3/projectcalico.org/<plural>/[<ns>/]<name>``: a v3 resource passed whole."""

    plural: str
    namespace: str | None
    name: str

    def key(self) -> str:
        return resource_key(self.plural, self.name, self.namespace)


Key = (
    WorkloadKey
    | HostEndpointKey
    | ProfileKey
    | PolicyKey
    | NetworkSetKey
    | IPPoolKey
    | BlockKey
    | BlockAffinityKey
    | ResourceKey
)


# --- builders ------------------------------------------------------------------------------------


def workload_key(
    node: str, namespace: str, pod: str, endpoint: str = DEFAULT_ENDPOINT, orchestrator: str = ORCHESTRATOR_K8S
) -> str:
    """``/calico/v1/host/<node>/workload/k8s/<ns>%2f<pod>/endpoint/eth0``."""
    return f"{_HOST}{node}/workload/{orchestrator}/{escape(namespace + '/' + pod)}/endpoint/{escape(endpoint)}"


def workload_prefix(node: str) -> str:
    """Prefix of every workload key on ``node`` (for per-node filtering)."""
    return f"{_HOST}{node}/workload/"


def host_endpoint_key(node: str, name: str) -> str:
    return f"{_HOST}{node}/endpoint/{escape(name)}"


def profile_key(name: str) -> str:
    return f"{_PROFILE}{escape(name)}"


def policy_key(name: str, namespace: str | None = None, tier: str = DEFAULT_TIER) -> str:
    """Namespaced policies are named ``<ns>/<name>`` as in Calico's v1 model, escaped."""
    return f"{_POLICY}{escape(tier)}/policy/{_namespaced(name, namespace)}"


def network_set_key(name: str, namespace: str | None = None) -> str:
    return f"{_NETSET}{_namespaced(name, namespace)}"


def ip_pool_key(cidr: str) -> str:
    return f"{_POOL}{_ip_version(cidr)}/pool/{cidr_segment(cidr)}"


def ipam_block_key(cidr: str) -> str:
    return f"{_BLOCK}{_ip_version(cidr)}/block/{cidr_segment(cidr)}"


def block_affinity_key(node: str, cidr: str) -> str:
    return f"{_AFFINITY}{node}/ipv{_ip_version(cidr)}/block/{cidr_segment(cidr)}"


def resource_key(plural: str, name: str, namespace: str | None = None) -> str:
    if namespace:
        return f"{_RESOURCES_V3}{plural}/{namespace}/{escape(name)}"
    return f"{_RESOURCES_V3}{plural}/{escape(name)}"


def node_key(name: str) -> str:
    return resource_key("nodes", name)


def felix_configuration_key(name: str) -> str:
    return resource_key("felixconfigurations", name)


def cluster_information_key(name: str) -> str:
    return resource_key("clusterinformations", name)


def bgp_peer_key(name: str) -> str:
    return resource_key("bgppeers", name)


def bgp_configuration_key(name: str) -> str:
    return resource_key("bgpconfigurations", name)


# --- parsing -------------------------------------------------------------------------------------


def _cidr(key: str, segment: str) -> str:
    try:
        return segment_cidr(segment)
    except ValueError as exc:
        raise MalformedKey(key, str(exc)) from None


def _parse_host(key: str) -> WorkloadKey | HostEndpointKey | None:
    parts = key[len(_HOST) :].split("/")
    if len(parts) == 3 and parts[1] == "endpoint" and parts[0] and parts[2]:
        return HostEndpointKey(parts[0], unescape(parts[2]))
    # <node>/workload/<orchestrator>/<ns>%2f<pod>/endpoint/<endpoint>
    if len(parts) != 6 or parts[1] != "workload" or parts[4] != "endpoint":
        return None
    node, _, orchestrator, workload, _, endpoint = parts
    ns, sep, pod = unescape(workload).partition("/")
    if not node or not sep or not ns or not pod:
        raise MalformedKey(key, "workload endpoint key without node, namespace or pod")
    return WorkloadKey(node, orchestrator, ns, pod, unescape(endpoint))


def _parse_policy(key: str) -> PolicyKey | None:
    parts = key[len(_POLICY) :].split("/")
    if len(parts) != 3 or parts[1] != "policy" or not parts[0] or not parts[2]:
        return None
    ns, name = _split_namespaced(parts[2])
    return PolicyKey(unescape(parts[0]), ns, name)


def _parse_block(key: str) -> BlockKey | None:
    parts = key[len(_BLOCK) :].split("/")
    if len(parts) != 3 or parts[1] != "block" or parts[0] not in ("4", "6"):
        return None
    return BlockKey(_cidr(key, parts[2]))


def _parse_affinity(key: str) -> BlockAffinityKey | None:
    parts = key[len(_AFFINITY) :].split("/")
    # <node>/ipv4/block/<cidr->
    if len(parts) != 4 or parts[2] != "block" or parts[1] not in ("ipv4", "ipv6") or not parts[0]:
        return None
    return BlockAffinityKey(parts[0], _cidr(key, parts[3]))


def _parse_pool(key: str) -> IPPoolKey | None:
    parts = key[len(_POOL) :].split("/")
    if len(parts) != 3 or parts[1] != "pool" or parts[0] not in ("4", "6"):
        return None
    return IPPoolKey(_cidr(key, parts[2]))


def _parse_resource(key: str) -> ResourceKey | None:
    parts = key[len(_RESOURCES_V3) :].split("/")
    if not all(parts):
        return None
    if len(parts) == 2:
        return ResourceKey(parts[0], None, unescape(parts[1]))
    if len(parts) == 3:
        return ResourceKey(parts[0], parts[1], unescape(parts[2]))
    return None


def parse_key(key: str) -> Key | None:
    """The parts of any key of the schema; ``None`` for a key outside it.

    Raises :class:`MalformedKey` for a key of a known layout whose parts are unusable. Cheap enough
    for every key an agent receives: a few prefix checks and one split.
    """
    if key.startswith(_HOST):
        return _parse_host(key)
    if key.startswith(_BLOCK):
        return _parse_block(key)
    if key.startswith(_AFFINITY):
        return _parse_affinity(key)
    if key.startswith(_POOL):
        return _parse_pool(key)
    if key.startswith(_RESOURCES_V3):
        return _parse_resource(key)
    if key.startswith(_POLICY):
        return _parse_policy(key)
    if key.startswith(_PROFILE):
        name = key[len(_PROFILE) :]
        return ProfileKey(unescape(name)) if name and "/" not in name else None
    if key.startswith(_NETSET):
        segment = key[len(_NETSET) :]
        if not segment or "/" in segment:
            return None
        ns, name = _split_namespaced(segment)
        return NetworkSetKey(ns, name)
    return None


def _lenient(key: str) -> Key | None:
    try:
        return parse_key(key)
    except MalformedKey:
        return None


def parse_workload_key(key: str) -> WorkloadKey | None:
    """The parts of a workload-endpoint key; ``None`` if ``key`` is not a valid one."""
    parsed = _lenient(key)
    return parsed if isinstance(parsed, WorkloadKey) else None


def parse_policy_key(key: str) -> PolicyKey | None:
    parsed = _lenient(key)
    return parsed if isinstance(parsed, PolicyKey) else None


def parse_block_key(key: str) -> str | None:
    """CIDR of an IPAM block key, or ``None``."""
    parsed = _lenient(key)
    return parsed.cidr if isinstance(parsed, BlockKey) else None


def parse_node_key(key: str) -> str | None:
    """Name of a Calico Node resource key, or ``None``."""
    parsed = _lenient(key)
    if isinstance(parsed, ResourceKey) and parsed.plural == "nodes" and parsed.namespace is None:
        return parsed.name
    return None
