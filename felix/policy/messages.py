"""The contract between felix's policy calculation and its iptables/ipset dataplane.

Design note
-----------
Calico's Felix splits policy in two at exactly this line: the calculation graph works out *which*
policies and profiles apply to each local endpoint, in which order, and which addresses each selector
matches; the dataplane driver renders that into chains and sets and reconciles the kernel. The two
halves talk in a small vocabulary of messages (Calico's ``proto`` package: ``ActivePolicyUpdate``,
``WorkloadEndpointUpdate``, ``IPSetDeltaUpdate``, ...). We keep the same line and the same shape:

* The calculation (``felix.policy``, pure) never knows an iptables flag. It resolves selectors,
  named ports, tiers, profiles and label inheritance, and emits the messages below, incrementally:
  a label change yields only the ipset deltas and endpoint updates it causes.
* The dataplane (``felix.dataplane``) never evaluates a selector. It renders each active policy
  and profile into one chain per direction (shared by every endpoint that uses it), each endpoint
  into its dispatch chains, each ip set into a kernel set, and applies the difference.

Why messages and not a shared desired-state object: a stream of small immutable updates is cheap to
apply incrementally, trivial to record and replay in tests, and keeps each side's internal indexes
private. The dataplane applies a batch of messages atomically once the calculation says the batch
is complete (``felix`` flushes after each batch of typha updates).

Ordering within a batch, as in Calico: an ip set is created (``IpSetUpdate``) before the first policy
that refers to it, a policy or profile is sent before the first endpoint that uses it, and removals
run the other way (endpoint, then policy, then set). A dataplane may still reorder internally (it
writes sets before rules and deletes them after), but it can rely on every id it is given being known.

Identifiers are opaque strings chosen by the calculation. The dataplane derives bounded kernel names
from them (chain names are at most 28 characters, ipset names at most 31), so the calculation may
use long, readable ids.

Rules arrive with every selector already replaced by the id of an ip set the calculation maintains;
a rule whose selector matches nothing still refers to its (empty) set, so it matches nothing,
exactly as the selector would. Named ports likewise arrive as ids of ``hash:ip,port`` sets holding
(address, protocol:port) pairs of the endpoints whose port of that name matches.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

Action = Literal["allow", "deny", "pass", "log"]
IpSetType = Literal["hash:net", "hash:ip,port"]
Direction = Literal["ingress", "egress"]


@dataclass(frozen=True, slots=True)
class PolicyID:
    tier: str
    name: str  # namespaced policies: "<namespace>/<name>"; Kubernetes ones keep their "knp.default." prefix


@dataclass(frozen=True, slots=True)
class PortRange:
    first: int
    last: int  # == first for a single port


@dataclass(frozen=True, slots=True)
class Rule:
    """One rule with selectors resolved to ip sets. Empty fields do not constrain the match.

    Protocols are lower-case names ("tcp", "udp", "sctp", "icmp", "icmpv6") or numbers as strings.
    A rule constrains ports only with a port-capable protocol (the calculation rejects others).
    Lists of nets mean "any of"; ``*_ip_set_ids`` mean "all of" (one per selector ANDed into the
    rule); ``not_*`` lists mean "none of". Numeric ports and named-port sets of one side together
    mean "any of": ``dst_ports=(80,)`` with ``dst_named_port_ip_set_ids=("np-http",)`` matches port 80
    or an (address, port) pair in the named-port set.
    """

    action: Action
    ip_version: int | None = None  # 4, 6, or None for both
    protocol: str | None = None
    not_protocol: str | None = None
    icmp_type: int | None = None
    icmp_code: int | None = None
    not_icmp_type: int | None = None
    not_icmp_code: int | None = None
    src_nets: tuple[str, ...] = ()
    not_src_nets: tuple[str, ...] = ()
    src_ports: tuple[PortRange, ...] = ()
    not_src_ports: tuple[PortRange, ...] = ()
    src_ip_set_ids: tuple[str, ...] = ()
    not_src_ip_set_ids: tuple[str, ...] = ()
    src_named_port_ip_set_ids: tuple[str, ...] = ()
    not_src_named_port_ip_set_ids: tuple[str, ...] = ()
    dst_nets: tuple[str, ...] = ()
    not_dst_nets: tuple[str, ...] = ()
    dst_ports: tuple[PortRange, ...] = ()
    not_dst_ports: tuple[PortRange, ...] = ()
    dst_ip_set_ids: tuple[str, ...] = ()
    not_dst_ip_set_ids: tuple[str, ...] = ()
    dst_named_port_ip_set_ids: tuple[str, ...] = ()
    not_dst_named_port_ip_set_ids: tuple[str, ...] = ()
    rule_id: str = ""  # stable identity for comments and counters (calculation-chosen)


@dataclass(frozen=True, slots=True)
class Policy:
    inbound_rules: tuple[Rule, ...] = ()
    outbound_rules: tuple[Rule, ...] = ()
    untracked: bool = False  # doNotTrack: not enforced by this dataplane yet (rendered nowhere)
    pre_dnat: bool = False
    apply_on_forward: bool = True


@dataclass(frozen=True, slots=True)
class TierInfo:
    """The policies of one tier that apply to an endpoint, in evaluation order (order, then name).

    A tier appears only when at least one of its policies applies in some direction. When a tier's
    policies all *apply* to a packet but none decides (allow, deny or pass), the tier ends in deny.
    """

    name: str
    ingress_policies: tuple[str, ...] = ()  # PolicyID.name of each, within this tier
    egress_policies: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class WorkloadEndpoint:
    name: str  # the host-side interface, e.g. "cali1234567890a"
    profile_ids: tuple[str, ...] = ()  # evaluated in order when no tier applies in that direction
    tiers: tuple[TierInfo, ...] = ()  # in tier order
    ipv4_nets: tuple[str, ...] = ()
    ipv6_nets: tuple[str, ...] = ()
    mac: str = ""


# -- the messages ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class IpSetUpdate:
    """Create or replace a whole set (first sight, or a type change)."""

    id: str
    type: IpSetType
    members: frozenset[str]  # "10.0.0.1/32", "10.0.0.0/24"; ip,port sets: "10.0.0.1,tcp:8080"


@dataclass(frozen=True, slots=True)
class IpSetDeltaUpdate:
    id: str
    added: frozenset[str] = frozenset()
    removed: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class IpSetRemove:
    id: str


@dataclass(frozen=True, slots=True)
class ActivePolicyUpdate:
    id: PolicyID
    policy: Policy


@dataclass(frozen=True, slots=True)
class ActivePolicyRemove:
    id: PolicyID


@dataclass(frozen=True, slots=True)
class ActiveProfileUpdate:
    id: str  # "kns.<namespace>", "ksa.<namespace>.<serviceaccount>"
    profile: Policy


@dataclass(frozen=True, slots=True)
class ActiveProfileRemove:
    id: str


@dataclass(frozen=True, slots=True)
class WorkloadEndpointUpdate:
    id: str  # the workload endpoint key
    endpoint: WorkloadEndpoint


@dataclass(frozen=True, slots=True)
class WorkloadEndpointRemove:
    id: str


@dataclass(frozen=True, slots=True)
class IPAMPoolUpdate:
    """An IP pool, for natOutgoing: masquerade traffic from pools with it to outside every pool."""

    id: str  # the pool CIDR
    cidr: str
    masquerade: bool


@dataclass(frozen=True, slots=True)
class IPAMPoolRemove:
    id: str


@dataclass(frozen=True, slots=True)
class PolicyRejected:
    """A policy or profile the calculation could not render; the dataplane never sees it.

    Reported so the agent can log it (rate-limited) and count it; the other policies are unaffected.
    A rejected policy is left out of every endpoint's tiers. Within a policy that is rendered, a rule
    that cannot be enforced (``http``, service matches) never widens what is allowed: an allow, pass or
    log rule that cannot be enforced matches nothing, a deny keeps the constraints it can enforce.
    """

    id: str
    reason: str


Message = (
    IpSetUpdate
    | IpSetDeltaUpdate
    | IpSetRemove
    | ActivePolicyUpdate
    | ActivePolicyRemove
    | ActiveProfileUpdate
    | ActiveProfileRemove
    | WorkloadEndpointUpdate
    | WorkloadEndpointRemove
    | IPAMPoolUpdate
    | IPAMPoolRemove
    | PolicyRejected
)


@dataclass(slots=True)
class Batch:
    """The messages produced by one batch of cluster updates, applied by the dataplane at once."""

    messages: list[Message] = field(default_factory=list)
