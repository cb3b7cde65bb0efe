"""Policy messages -> the chains and ip sets felix wants in the kernel, kept incrementally. Pure.

Design note
-----------
``DesiredState`` consumes the contract's message batches (``felix.policy.messages``) and keeps,
per IP version, the exact chains of each table and the exact members of each ip set that the
kernel should hold, plus *dirty* marks saying which of them changed since the planner last looked.
Work is proportional to the change: an ip set delta touches one set's members and nothing else; a
policy edit re-renders that policy's two chains; an endpoint update re-renders its two chains (and
the one dispatch leaf holding its interface, when the interface is new or gone). Nothing here
knows whether the kernel agrees: the planners (``plan``, ``ipsets.plan``) compare the dirty part
with what they believe the kernel holds.

Reference counting decides what is programmed. A policy or profile chain is written only while
some endpoint chain jumps to it, and an ip set exists while a programmed chain matches on it or
the calculation has announced it. That makes the batch's message order irrelevant here: chains
are re-rendered after the whole batch, so a policy removed in the same batch as the endpoint
update that stops using it never leaves a jump to a missing chain behind. Ids that are still
missing after the batch fail closed (see ``render``), and a set referenced before it was announced
exists, empty, so that the rule matches nothing rather than failing the transaction.

``apply(batch, render=False)`` takes the batch in (ip sets at once) and leaves the chains to the next
``render()``: the shell renders while the kernel creates the batch's ip sets.

Members are stored in the form ``ipset save`` prints them (``10.0.0.1`` for a /32, a /0 split
into two /1 halves because ``hash:net`` cannot hold /0), so comparing with the kernel is a set
difference.
"""

from __future__ import annotations

import socket
from collections import Counter
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass, field
from functools import lru_cache

from felix.policy.messages import (
    ActivePolicyRemove,
    ActivePolicyUpdate,
    ActiveProfileRemove,
    ActiveProfileUpdate,
    IPAMPoolRemove,
    IPAMPoolUpdate,
    IpSetDeltaUpdate,
    IpSetRemove,
    IpSetUpdate,
    Message,
    Policy,
    PolicyID,
    PolicyRejected,
    WorkloadEndpoint,
    WorkloadEndpointRemove,
    WorkloadEndpointUpdate,
)

from . import names as N
from .render import Chain, Renderer

__all__ = ["DesiredSet", "DesiredState", "canonical_member"]

TABLES = ("filter", "nat")
NET, IP_PORT = "hash:net", "hash:ip,port"


@dataclass(slots=True)
class DesiredSet:
    type: str
    members: set[str] = field(default_factory=set)


@lru_cache(maxsize=1 << 17)
def canonical_member(member: str, set_type: str) -> tuple[tuple[int, str], ...]:
    """``(ip version, member as ipset prints it)`` for one member; raises ValueError if invalid.

    Cached and built on ``inet_pton``/``inet_ntop`` (the notation ``ipset save`` prints): a cold
    start canonicalises every member of every set, and the same pod address recurs in many sets.
    """
    if set_type == IP_PORT:
        addr, sep, rest = member.rpartition(",")
        proto, sep2, port = rest.partition(":")
        if not sep or not sep2 or proto.lower() not in ("tcp", "udp", "sctp") or not port.isdigit():
            raise ValueError(f"{member!r} is not address,protocol:port")
        if int(port) > 65535:
            raise ValueError(f"{member!r}: port out of range")
        version, packed = _address(addr)
        return ((version, f"{socket.inet_ntop(_FAMILY[version], packed)},{proto.lower()}:{int(port)}"),)
    addr, sep, plen_s = member.partition("/")
    version, packed = _address(addr)
    bits = 32 if version == 4 else 128
    if sep and not (plen_s.isdigit() and int(plen_s) <= bits):
        raise ValueError(f"{member!r}: bad prefix length")
    plen = int(plen_s) if sep else bits
    if plen == bits:
        return ((version, socket.inet_ntop(_FAMILY[version], packed)),)
    net = int.from_bytes(packed, "big") & ~((1 << (bits - plen)) - 1)
    if plen == 0:  # hash:net cannot hold /0: two halves
        half = 1 << (bits - 1)
        return tuple((version, f"{_ntop(version, n)}/1") for n in (0, half))
    return ((version, f"{_ntop(version, net)}/{plen}"),)


_FAMILY = {4: socket.AF_INET, 6: socket.AF_INET6}


def _address(addr: str) -> tuple[int, bytes]:
    try:
        if ":" in addr:
            return 6, socket.inet_pton(socket.AF_INET6, addr)
        return 4, socket.inet_pton(socket.AF_INET, addr)
    except OSError:
        raise ValueError(f"{addr!r} is not an IP address") from None


def _ntop(version: int, value: int) -> str:
    return socket.inet_ntop(_FAMILY[version], value.to_bytes(4 if version == 4 else 16, "big"))


def _wants(ep: WorkloadEndpoint) -> frozenset[str]:
    """Every policy and profile chain an endpoint's chains would jump to."""
    out = {N.profile_chain_name(ingress, p) for p in ep.profile_ids for ingress in (True, False)}
    for t in ep.tiers:
        out |= {N.policy_chain_name(True, t.name, p) for p in t.ingress_policies}
        out |= {N.policy_chain_name(False, t.name, p) for p in t.egress_policies}
    return frozenset(out)


class DesiredState:
    def __init__(self, renderer: Renderer | None = None, versions: tuple[int, ...] = (4,)) -> None:
        self.r = renderer or Renderer()
        self.versions = versions
        # Inputs, as the calculation sent them.
        self.policies: dict[PolicyID, Policy] = {}
        self.profiles: dict[str, Policy] = {}
        self.endpoints: dict[str, WorkloadEndpoint] = {}
        self.pools: dict[str, IPAMPoolUpdate] = {}
        self.rejected_seen = 0  # PolicyRejected is the agent's to log; counted here for tests
        # Outputs: what the kernel should hold, and what changed since the planners last looked.
        self.tables: dict[tuple[int, str], dict[str, Chain]] = {(v, t): {} for v in versions for t in TABLES}
        self.dirty: dict[tuple[int, str], set[str]] = {(v, t): set() for v in versions for t in TABLES}
        self.sets: dict[int, dict[str, DesiredSet]] = {v: {} for v in versions}
        self.dirty_sets: dict[int, set[str]] = {v: set() for v in versions}
        self.problems: list[str] = []  # drained by the caller (logged, counted)
        # Indexes.
        self._rendered: dict[int, dict[str, Chain]] = {v: {} for v in versions}  # policy/profile chains
        self._known: set[str] = set()  # policy/profile chain names whose source is known
        self._refs: Counter[str] = Counter()  # policy/profile chain -> endpoint chains jumping to it
        self._users: dict[str, set[str]] = {}  # policy/profile chain -> endpoint ids using it
        self._ep_chains: dict[str, tuple[Chain, Chain]] = {}
        self._ep_wants: dict[str, frozenset[str]] = {}
        self._set_refs: dict[int, Counter[str]] = {v: Counter() for v in versions}
        self._set_kind: dict[int, dict[str, bool]] = {v: {} for v in versions}  # set name -> named-port?
        self._members: dict[int, dict[str, set[str]]] = {v: {} for v in versions}  # announced sets
        self._calc_sets: dict[str, str] = {}  # set id -> type
        # Applied but not yet rendered (``apply(render=False)``; ``render()``).
        self._todo_policies: set[tuple[str, str | PolicyID]] = set()
        self._todo_endpoints: set[str] = set()
        self._todo_dispatch = self._todo_nat = False
        for v in versions:
            for c in self.r.static_filter(v):
                self._put(v, "filter", c)
        self._refresh_dispatch()
        self._refresh_nat()

    # -- messages ----------------------------------------------------------------------------------
    def apply(self, messages: Iterable[Message], render: bool = True) -> None:
        """Apply one batch. Ip sets are updated at once; chains are re-rendered once, after the
        whole batch -- or, with ``render=False``, by the next ``render()`` (the shell renders
        while the kernel creates the batch's ip sets)."""
        policies, endpoints = self._todo_policies, self._todo_endpoints
        dispatch = nat = False
        for msg in messages:
            if isinstance(msg, IpSetDeltaUpdate):
                self._set_delta(msg.id, msg.added, msg.removed)
            elif isinstance(msg, WorkloadEndpointUpdate):
                old = self.endpoints.get(msg.id)
                self.endpoints[msg.id] = msg.endpoint
                endpoints.add(msg.id)
                dispatch |= old is None or old.name != msg.endpoint.name
            elif isinstance(msg, WorkloadEndpointRemove):
                if self.endpoints.pop(msg.id, None) is not None:
                    endpoints.add(msg.id)
                    dispatch = True
            elif isinstance(msg, ActivePolicyUpdate):
                self.policies[msg.id] = msg.policy
                policies.add(("policy", msg.id))
            elif isinstance(msg, ActivePolicyRemove):
                if self.policies.pop(msg.id, None) is not None:
                    policies.add(("policy", msg.id))
            elif isinstance(msg, ActiveProfileUpdate):
                self.profiles[msg.id] = msg.profile
                policies.add(("profile", msg.id))
            elif isinstance(msg, ActiveProfileRemove):
                if self.profiles.pop(msg.id, None) is not None:
                    policies.add(("profile", msg.id))
            elif isinstance(msg, IpSetUpdate):
                self._set_replace(msg.id, msg.type, msg.members)
            elif isinstance(msg, IpSetRemove):
                self._set_remove(msg.id)
            elif isinstance(msg, IPAMPoolUpdate):
                self.pools[msg.id] = msg
                nat = True
            elif isinstance(msg, IPAMPoolRemove):
                nat |= self.pools.pop(msg.id, None) is not None
            elif isinstance(msg, PolicyRejected):
                self.rejected_seen += 1
        self._todo_dispatch |= dispatch
        self._todo_nat |= nat
        if render:
            self.render()

    @property
    def unrendered(self) -> bool:
        return bool(self._todo_policies or self._todo_endpoints or self._todo_dispatch or self._todo_nat)

    def render(self) -> None:
        """Re-render the chains the batches applied since the last render affect."""
        policies, endpoints = self._todo_policies, self._todo_endpoints
        self._todo_policies, self._todo_endpoints = set(), set()
        for kind, pid in sorted(policies, key=repr):
            endpoints |= self._render_policy(kind, pid)
        for ep_id in sorted(endpoints):
            self._render_endpoint(ep_id)
        if self._todo_dispatch:
            self._refresh_dispatch()
        if self._todo_nat:
            self._refresh_nat()
        self._todo_dispatch = self._todo_nat = False

    # -- chains ------------------------------------------------------------------------------------
    def _put(self, v: int, table: str, c: Chain) -> None:
        tbl = self.tables[(v, table)]
        old = tbl.get(c.name)
        if old == c:
            return
        tbl[c.name] = c
        self.dirty[(v, table)].add(c.name)
        self._count_sets(v, old, c)

    def _drop(self, v: int, table: str, name: str) -> None:
        old = self.tables[(v, table)].pop(name, None)
        if old is not None:
            self.dirty[(v, table)].add(name)
            self._count_sets(v, old, None)

    def _count_sets(self, v: int, old: Chain | None, new: Chain | None) -> None:
        before = old.sets if old else frozenset()
        after = new.sets if new else frozenset()
        refs = self._set_refs[v]
        for s in before - after:
            refs[s] -= 1
            if refs[s] <= 0:
                del refs[s]
                self._sync_set(v, s)
        for s in after - before:
            refs[s] += 1
            if refs[s] == 1:
                self._sync_set(v, s)

    def _render_policy(self, kind: str, pid: str | PolicyID) -> set[str]:
        """Re-render one policy's or profile's chains; the endpoints to re-render with it."""
        if isinstance(pid, PolicyID):
            source = self.policies.get(pid)
            names = [N.policy_chain_name(i, pid.tier, pid.name) for i in (True, False)]
            label = f"policy {pid.tier}/{pid.name}"
        else:
            source = self.profiles.get(pid)
            names = [N.profile_chain_name(i, pid) for i in (True, False)]
            label = f"profile {pid}"
        affected: set[str] = set()
        for ingress, name in zip((True, False), names):
            was_known = name in self._known
            if source is None:
                self._known.discard(name)
            else:
                self._known.add(name)
            if was_known != (source is not None):
                affected |= self._users.get(name, set())  # their jump becomes a drop, or back
            for v in self.versions:
                if source is None:
                    self._rendered[v].pop(name, None)
                    self._drop(v, "filter", name)
                    continue
                c = self.r.policy(ingress, name, label, source, v, self._set_namer(v), self.problems)
                self._rendered[v][name] = c
                if self._refs[name] > 0:
                    self._put(v, "filter", c)
        return affected

    def _render_endpoint(self, ep_id: str) -> None:
        old = self._ep_chains.pop(ep_id, None)
        ep = self.endpoints.get(ep_id)
        new = None
        if ep is not None:
            known = self._known.__contains__
            new = (self.r.endpoint(ep, True, known, self.problems), self.r.endpoint(ep, False, known, self.problems))
            self._ep_chains[ep_id] = new
        old_names = {c.name for c in old} if old else set()
        new_names = {c.name for c in new} if new else set()
        for v in self.versions:
            for name in old_names - new_names:
                self._drop(v, "filter", name)
            for c in new or ():
                self._put(v, "filter", c)
        # Users: every policy/profile chain the endpoint names, known or not (a late arrival must
        # find the endpoints waiting for it). References: the chains its rules actually jump to.
        wanted_before = self._ep_wants.pop(ep_id, frozenset())
        wanted = _wants(ep) if ep is not None else frozenset()
        if wanted:
            self._ep_wants[ep_id] = wanted
        for name in wanted - wanted_before:
            self._users.setdefault(name, set()).add(ep_id)
        for name in wanted_before - wanted:
            users = self._users.get(name)
            if users is not None:
                users.discard(ep_id)
                if not users:
                    del self._users[name]
        before = (old[0].refs | old[1].refs) if old else frozenset()
        after = (new[0].refs | new[1].refs) if new else frozenset()
        for name in after - before:
            self._refs[name] += 1
            if self._refs[name] == 1:
                for v in self.versions:
                    if name in self._rendered[v]:
                        self._put(v, "filter", self._rendered[v][name])
        for name in before - after:
            self._refs[name] -= 1
            if self._refs[name] <= 0:
                del self._refs[name]
                for v in self.versions:
                    self._drop(v, "filter", name)

    def _refresh_dispatch(self) -> None:
        ifaces = [ep.name for ep in self.endpoints.values()]
        wanted = {c.name: c for c in self.r.dispatch(ifaces)}  # the same trees in every IP version
        for v in self.versions:
            tbl = self.tables[(v, "filter")]
            stale = [
                n for n in tbl if n.startswith((N.CHAIN_FROM_WL_DISPATCH, N.CHAIN_TO_WL_DISPATCH)) and n not in wanted
            ]
            for c in wanted.values():
                self._put(v, "filter", c)
            for n in stale:
                self._drop(v, "filter", n)

    def _refresh_nat(self) -> None:
        for v in self.versions:
            every, masq = set(), set()
            for pool in self.pools.values():
                try:
                    cidrs = canonical_member(pool.cidr, NET)
                except ValueError:
                    self.problems.append(f"pool {pool.id}: bad CIDR {pool.cidr!r}")
                    continue
                for ver, m in cidrs:
                    if ver == v:
                        every.add(m)
                        if pool.masquerade:
                            masq.add(m)
            for set_id, members in ((N.SET_ALL_POOLS, every), (N.SET_MASQ_POOLS, masq)):
                name = N.set_name(v, set_id)
                self._set_kind[v][name] = False
                if not masq:  # no masquerading rule: the pool sets are not needed
                    if self._members[v].pop(name, None) is not None:
                        self._sync_set(v, name, members_changed=True)
                elif self._members[v].get(name) != members:
                    self._members[v][name] = members
                    self._sync_set(v, name, members_changed=True)
            for c in self.r.nat(v, masquerade=bool(masq)):
                self._put(v, "nat", c)

    # -- ip sets -----------------------------------------------------------------------------------
    def _set_namer(self, v: int) -> Callable[[str, bool], str]:
        kinds = self._set_kind[v]

        def name(set_id: str, named: bool) -> str:
            n = N.set_name(v, set_id, named)
            kinds[n] = named
            return n

        return name

    def _sync_set(self, v: int, name: str, members_changed: bool = False) -> None:
        present = name in self._members[v] or self._set_refs[v][name] > 0
        have = self.sets[v].get(name)
        if not present:
            if have is not None:
                del self.sets[v][name]
                self.dirty_sets[v].add(name)
            return
        members = self._members[v].get(name)
        if have is None or members_changed or (members is not None and have.members is not members):
            kind = IP_PORT if self._set_kind[v].get(name) else NET
            self.sets[v][name] = DesiredSet(kind, members if members is not None else set())
            self.dirty_sets[v].add(name)

    def _split(self, set_id: str, set_type: str, members: Collection[str]) -> dict[int, set[str]]:
        out: dict[int, set[str]] = {v: set() for v in self.versions}
        try:  # the common case in one comprehension per version: a cold start has 100k members
            canon = [canonical_member(m, set_type) for m in members]
        except ValueError:
            canon = []
            for m in members:
                try:
                    canon.append(canonical_member(m, set_type))
                except ValueError as exc:
                    self.problems.append(f"ip set {set_id}: skipping bad member {m!r}: {exc}")
        for v, into in out.items():
            into.update(c for forms in canon for ver, c in forms if ver == v)
        return out

    def _set_replace(self, set_id: str, set_type: str, members: Collection[str]) -> None:
        old_type = self._calc_sets.get(set_id)
        if old_type is not None and old_type != set_type:
            self._set_remove(set_id)
        self._calc_sets[set_id] = set_type
        named = set_type == IP_PORT
        for v, canon in self._split(set_id, set_type, members).items():
            name = N.set_name(v, set_id, named)
            self._set_kind[v][name] = named
            self._members[v][name] = canon
            self._sync_set(v, name, members_changed=True)

    def _set_delta(self, set_id: str, added: Collection[str], removed: Collection[str]) -> None:
        set_type = self._calc_sets.get(set_id)
        if set_type is None:
            self.problems.append(f"ip set {set_id}: delta for a set never announced (treated as a new hash:net set)")
            self._set_replace(set_id, NET, ())
            set_type = NET
        named = set_type == IP_PORT
        for v, canon in self._split(set_id, set_type, removed).items():
            if canon:
                name = N.set_name(v, set_id, named)
                self._members[v][name] -= canon
                self.dirty_sets[v].add(name)
        for v, canon in self._split(set_id, set_type, added).items():
            if canon:
                name = N.set_name(v, set_id, named)
                self._members[v][name] |= canon
                self.dirty_sets[v].add(name)

    def _set_remove(self, set_id: str) -> None:
        set_type = self._calc_sets.pop(set_id, None)
        if set_type is None:
            return
        for v in self.versions:
            name = N.set_name(v, set_id, set_type == IP_PORT)
            self._members[v].pop(name, None)
            self._sync_set(v, name, members_changed=True)  # stays, empty, while a chain still uses it
