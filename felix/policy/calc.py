"""The policy calculation: typha updates in, the contract's messages out (felix.policy.messages).

Design note
-----------
Pure: no I/O, no clocks. ``update(kvs)`` folds a batch of typha updates into the indexes and marks
what they may have changed; ``flush()`` works out the consequences once and returns them as one
``Batch`` in the contract's order. The agent calls ``update`` as updates arrive and ``flush`` once
per event-loop pass, so a snapshot or a burst of label changes costs one pass over what changed.
Both run with Python's cyclic garbage collector paused (``gcpause``): a snapshot builds hundreds of
thousands of objects and no cycles, and the collector's passes over the growing heap were a fifth
of a cold start's calculation.

What is computed, and from what (Calico's calculation graph, folded into three indexes):

* ``_pol_index`` (a :class:`LabelIndex` over *local* endpoints, one selector per policy): which
  policies apply to which local endpoint. A policy is *active* while it selects at least one;
  only active policies are sent, as in Calico.
* profiles are active while a local endpoint lists them; their labels are inherited (``pcns.*``,
  ``pcsa.*``) by endpoints in both indexes;
* :class:`IpSetCalculator` (an index over *every* endpoint and network set in the cluster): the
  members of each ip set that an active policy or profile refers to.

Per endpoint, the policies are grouped by tier (tiers in tier order, see ``_TIER_ORDER``) and
ordered by (order, name) with a missing order last; a tier appears when one of its policies
applies in a direction, and the direction lists say which (a policy's ``types``). Untracked and
pre-DNAT policies apply to host endpoints only, so they never select a workload here.

Dirty tracking: index callbacks mark the policies whose match set changed and the endpoints whose
policy set changed; an edit that keeps a policy's matches but moves its tier, order or types marks
every endpoint it selects. ``flush`` recomputes exactly those, compares each endpoint's result
with what was last sent, and sends only differences. Ip set references are taken for new
renderings before old ones are released, so a set shared by the old and new version of a policy
is never removed and re-created. A hypothesis test checks that the messages, replayed, equal a
fresh calculator fed the final state, and that every id is known before it is used.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from felix.model import Intake

from . import gcpause
from .ipsets import IpSetCalculator, IpSetSpec
from .labelindex import LabelIndex
from .messages import (
    ActivePolicyRemove,
    ActivePolicyUpdate,
    ActiveProfileRemove,
    ActiveProfileUpdate,
    Batch,
    IPAMPoolRemove,
    IPAMPoolUpdate,
    Message,
    Policy,
    PolicyID,
    PolicyRejected,
    TierInfo,
    WorkloadEndpoint,
    WorkloadEndpointRemove,
    WorkloadEndpointUpdate,
)
from .model import ENDPOINT, NETSET, POLICY, POOL, PROFILE, Endpoint, NetworkSet, Pool, Profile, parse_kv
from .rules import ParsedPolicy, RenderError, render_policy, render_profile

__all__ = ["PolicyCalculator", "policy_label", "profile_label"]

# Calico's built-in tier orders; tiers without a known order come after them, by name (Tier
# resources are not projected by typha yet, so user tiers all sort by name after these).
_TIER_ORDER = {"adminnetworkpolicy": 1_000.0, "default": 1_000_000.0, "baselineadminnetworkpolicy": 10_000_000.0}


def policy_label(pid: PolicyID) -> str:
    return f"policy {pid.tier}/{pid.name}"


def profile_label(name: str) -> str:
    return f"profile {name}"


def _tier_key(tier: str) -> tuple[bool, float, str]:
    order = _TIER_ORDER.get(tier)
    return (order is None, order or 0.0, tier)


class PolicyCalculator:
    def __init__(self, nodename: str) -> None:
        self.nodename = nodename
        self._ipsets = IpSetCalculator()
        self._pol_index: LabelIndex[str, PolicyID] = LabelIndex(self._on_pol_match, self._on_pol_match)
        self._policies: dict[PolicyID, ParsedPolicy] = {}  # renderable policies
        self._profiles: dict[str, tuple[Policy, frozenset[IpSetSpec]]] = {}  # renderable profiles
        self._rejected: dict[str, str] = {}  # policy_label/profile_label -> reason
        self._local: dict[str, Endpoint] = {}  # endpoint key -> local endpoint
        self._profile_eps: dict[str, set[str]] = {}  # profile -> local endpoints listing it
        self._pools: dict[str, Pool] = {}
        # What the dataplane has been sent.
        self._sent_policies: dict[PolicyID, ParsedPolicy] = {}
        self._sent_profiles: dict[str, tuple[Policy, frozenset[IpSetSpec]]] = {}
        self._sent_endpoints: dict[str, WorkloadEndpoint] = {}
        # Dirty since the last flush.
        self._dirty_policies: set[PolicyID] = set()
        self._dirty_profiles: set[str] = set()
        self._dirty_endpoints: set[str] = set()
        self._early: list[Message] = []  # rejections and pool messages, sent first
        self.intake = Intake(parse_kv)  # parses and counts updates (felix.model: malformed values make keys absent)

    # -- queries ---------------------------------------------------------------------------------

    @property
    def rejected(self) -> dict[str, str]:
        """Policies and profiles currently rejected: label -> reason."""
        return dict(self._rejected)

    @property
    def active_policies(self) -> int:
        return len(self._sent_policies)

    @property
    def ip_set_count(self) -> int:
        return len(self._ipsets.set_ids())

    def ip_set_members(self, set_id: str) -> frozenset[str]:
        return self._ipsets.members(set_id)

    # -- input -----------------------------------------------------------------------------------

    def apply(self, kvs: Iterable[Sequence[Any]]) -> tuple[Batch, list[tuple[str, str]]]:
        """``update`` then ``flush``: the messages and the malformed (key, reason) pairs."""
        malformed = self.update(kvs)
        return self.flush(), malformed

    def update(self, kvs: Iterable[Sequence[Any]]) -> list[tuple[str, str]]:
        """Fold ``(key, value-bytes-or-None)`` updates in; returns the malformed ones (skipped).

        A malformed value makes the key absent (its previous value is forgotten), so the state is
        a function of the datastore's contents, not of the order of updates.
        """
        with gcpause.paused():  # a snapshot builds 100,000s of objects and no cycles
            return self._update(kvs)

    def _update(self, kvs: Iterable[Sequence[Any]]) -> list[tuple[str, str]]:
        malformed: list[tuple[str, str]] = []
        for p in self.intake(kvs, malformed):
            if p.kind == ENDPOINT:
                self._on_endpoint(p.ident, p.record)
            elif p.kind == POLICY:
                self._on_policy(p.ident, p.record)
            elif p.kind == PROFILE:
                self._on_profile(p.ident, p.record)
            elif p.kind == NETSET:
                self._on_netset(p.ident, p.record)
            elif p.kind == POOL:
                self._on_pool(p.ident, p.record)
        return malformed

    def _on_endpoint(self, key: str, ep: Endpoint | None) -> None:
        self._ipsets.update_item(key, ep)
        old = self._local.get(key)
        if ep is None or ep.node != self.nodename:
            if old is not None:
                self._pol_index.remove_item(key)
                self._set_profiles(key, old.profiles, ())
                del self._local[key]
                self._dirty_endpoints.add(key)
            return
        self._set_profiles(key, old.profiles if old is not None else (), ep.profiles)
        self._local[key] = ep
        self._pol_index.update_item(key, ep.labels, ep.profiles)
        self._dirty_endpoints.add(key)

    def _set_profiles(self, key: str, old: tuple[str, ...], new: tuple[str, ...]) -> None:
        if old == new:
            return
        for name in set(old) - set(new):
            eps = self._profile_eps[name]
            eps.discard(key)
            if not eps:
                del self._profile_eps[name]
            self._dirty_profiles.add(name)
        for name in set(new) - set(old):
            self._profile_eps.setdefault(name, set()).add(key)
            self._dirty_profiles.add(name)

    def _on_pol_match(self, pid: PolicyID, key: str) -> None:
        self._dirty_policies.add(pid)
        self._dirty_endpoints.add(key)

    def _reject(self, label: str, reason: str | None) -> None:
        if reason is None:
            self._rejected.pop(label, None)
        elif self._rejected.get(label) != reason:
            self._rejected[label] = reason
            self._early.append(PolicyRejected(label, reason))

    def _on_policy(self, pid: PolicyID, value: dict[str, Any] | None) -> None:
        self._dirty_policies.add(pid)
        parsed = None
        if value is not None:
            try:
                parsed = render_policy(pid.name, value)
            except RenderError as e:
                self._reject(policy_label(pid), str(e))
            else:
                self._reject(policy_label(pid), None)
        else:
            self._reject(policy_label(pid), None)
        old = self._policies.pop(pid, None)
        if parsed is None or parsed.untracked_or_pre_dnat:
            self._pol_index.remove_selector(pid)  # unmatch callbacks mark its endpoints
            if parsed is not None:
                self._policies[pid] = parsed
            return
        self._policies[pid] = parsed
        self._pol_index.update_selector(pid, parsed.selector)
        if old is not None and (old.tier, old.order, old.ingress, old.egress) != (
            parsed.tier,
            parsed.order,
            parsed.ingress,
            parsed.egress,
        ):
            self._dirty_endpoints.update(self._pol_index.matches(pid))

    def _on_profile(self, name: str, profile: Profile | None) -> None:
        labels = dict(profile.labels) if profile is not None else None
        self._ipsets.update_parent(name, labels)
        self._pol_index.update_parent(name, labels)
        self._profiles.pop(name, None)
        reason = None
        if profile is not None:
            try:
                self._profiles[name] = render_profile(name, profile.value)
            except RenderError as e:
                reason = str(e)
        self._reject(profile_label(name), reason)
        self._dirty_profiles.add(name)
        self._dirty_endpoints.update(self._profile_eps.get(name, ()))

    def _on_netset(self, name: str, netset: NetworkSet | None) -> None:
        self._ipsets.update_item(f"netset:{name}", netset)

    def _on_pool(self, cidr: str, pool: Pool | None) -> None:
        old = self._pools.get(cidr)
        if pool == old:
            return
        if pool is None:
            del self._pools[cidr]
            self._early.append(IPAMPoolRemove(cidr))
        else:
            self._pools[cidr] = pool
            self._early.append(IPAMPoolUpdate(cidr, cidr, pool.masquerade))

    # -- output ----------------------------------------------------------------------------------

    def flush(self) -> Batch:
        with gcpause.paused():
            return self._flush()

    def _flush(self) -> Batch:
        unrefs: list[IpSetSpec] = []
        policy_updates: list[Message] = []
        policy_removes: list[Message] = []
        for pid in sorted(self._dirty_policies, key=lambda p: (p.tier, p.name)):
            parsed = self._policies.get(pid)
            active = parsed is not None and not parsed.untracked_or_pre_dnat and bool(self._pol_index.matches(pid))
            sent = self._sent_policies.get(pid)
            if active and parsed is not None:
                if sent is parsed:
                    continue
                for spec in parsed.ip_sets:
                    self._ipsets.ref(spec)
                if sent is not None:
                    unrefs.extend(sent.ip_sets)
                if sent is None or sent.policy != parsed.policy:
                    policy_updates.append(ActivePolicyUpdate(pid, parsed.policy))
                self._sent_policies[pid] = parsed
            elif sent is not None:
                unrefs.extend(sent.ip_sets)
                policy_removes.append(ActivePolicyRemove(pid))
                del self._sent_policies[pid]

        profile_updates: list[Message] = []
        profile_removes: list[Message] = []
        for name in sorted(self._dirty_profiles):
            rendered = self._profiles.get(name)
            sent_prof = self._sent_profiles.get(name)
            if rendered is not None and name in self._profile_eps:
                if sent_prof is rendered:
                    continue
                for spec in rendered[1]:
                    self._ipsets.ref(spec)
                if sent_prof is not None:
                    unrefs.extend(sent_prof[1])
                if sent_prof is None or sent_prof[0] != rendered[0]:
                    profile_updates.append(ActiveProfileUpdate(name, rendered[0]))
                self._sent_profiles[name] = rendered
            elif sent_prof is not None:
                unrefs.extend(sent_prof[1])
                profile_removes.append(ActiveProfileRemove(name))
                del self._sent_profiles[name]

        ep_updates: list[Message] = []
        ep_removes: list[Message] = []
        for key in sorted(self._dirty_endpoints):
            ep = self._local.get(key)
            if ep is None:
                if self._sent_endpoints.pop(key, None) is not None:
                    ep_removes.append(WorkloadEndpointRemove(key))
                continue
            wep = self._workload_endpoint(key, ep)
            if self._sent_endpoints.get(key) != wep:
                self._sent_endpoints[key] = wep
                ep_updates.append(WorkloadEndpointUpdate(key, wep))

        for spec in unrefs:
            self._ipsets.unref(spec)
        set_updates, set_removes = self._ipsets.flush()
        batch = Batch(
            [
                *self._early,
                *set_updates,
                *profile_updates,
                *policy_updates,
                *ep_updates,
                *ep_removes,
                *policy_removes,
                *profile_removes,
                *set_removes,
            ]
        )
        self._early = []
        self._dirty_policies.clear()
        self._dirty_profiles.clear()
        self._dirty_endpoints.clear()
        return batch

    def _workload_endpoint(self, key: str, ep: Endpoint) -> WorkloadEndpoint:
        by_tier: dict[str, list[tuple[tuple[bool, float, str], ParsedPolicy, str]]] = {}
        for pid in self._pol_index.selectors_of(key):
            parsed = self._sent_policies.get(pid)
            if parsed is None:
                continue  # defensive: every policy matching a local endpoint is active
            order_key = (parsed.order is None, parsed.order or 0.0, pid.name)
            by_tier.setdefault(pid.tier, []).append((order_key, parsed, pid.name))
        tiers = []
        for tier in sorted(by_tier, key=_tier_key):
            pols = sorted(by_tier[tier], key=lambda t: t[0])
            tiers.append(
                TierInfo(
                    name=tier,
                    ingress_policies=tuple(name for _, p, name in pols if p.ingress),
                    egress_policies=tuple(name for _, p, name in pols if p.egress),
                )
            )
        return WorkloadEndpoint(
            name=ep.iface,
            profile_ids=tuple(p for p in ep.profiles if p in self._sent_profiles),
            tiers=tuple(t for t in tiers if t.ingress_policies or t.egress_policies),
            ipv4_nets=ep.ipv4_nets,
            ipv6_nets=ep.ipv6_nets,
            mac=ep.mac,
        )
