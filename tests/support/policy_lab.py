"""Policy-calculation tests' inputs and their model dataplane.

Inputs are typha's own projection of Kubernetes objects (``pod``, ``namespace``, ``knp`` ...), so
the tests also prove that felix reads exactly what typha writes. ``Replay`` is a model dataplane: it
applies messages and asserts the contract's ordering (every id known before it is used, removals
after their last user, nothing held that no one uses), so every test checks the ordering as a side
effect; ``run`` feeds batches through a calculator into one.
"""

from __future__ import annotations

from typing import Any

from felix.policy.calc import PolicyCalculator
from felix.policy.messages import (
    ActivePolicyRemove,
    ActivePolicyUpdate,
    ActiveProfileRemove,
    ActiveProfileUpdate,
    Batch,
    IPAMPoolRemove,
    IPAMPoolUpdate,
    IpSetDeltaUpdate,
    IpSetRemove,
    IpSetUpdate,
    Policy,
    PolicyID,
    PolicyRejected,
    WorkloadEndpoint,
    WorkloadEndpointRemove,
    WorkloadEndpointUpdate,
)
from protocol import keys as K
from tests.support.felix_kvs import j
from typha.k8s.projection import project

ME = "node-a"
KV = tuple[str, bytes | None]


def kvs(resource: str, obj: dict[str, Any]) -> list[KV]:
    return [(k, None if v is None else j(v)) for k, v in project(resource, obj)]


def pod(
    ns: str, name: str, ip: str, labels: dict[str, str], node: str = ME, sa: str = "", ports: tuple = ()
) -> list[KV]:
    spec: dict[str, Any] = {"nodeName": node, "containers": [{"name": "c", "ports": list(ports)}]}
    if sa:
        spec["serviceAccountName"] = sa
    return kvs(
        "pods",
        {
            "metadata": {"name": name, "namespace": ns, "labels": labels},
            "spec": spec,
            "status": {"podIP": ip, "phase": "Running"},
        },
    )


def namespace(name: str, labels: dict[str, str] | None = None) -> list[KV]:
    return kvs("namespaces", {"metadata": {"name": name, "labels": labels or {}}})


def service_account(ns: str, name: str, labels: dict[str, str]) -> list[KV]:
    return kvs("serviceaccounts", {"metadata": {"name": name, "namespace": ns, "labels": labels}})


def knp(ns: str, name: str, spec: dict[str, Any]) -> list[KV]:
    return kvs("networkpolicies", {"metadata": {"name": name, "namespace": ns}, "spec": spec})


def gnp(name: str, spec: dict[str, Any]) -> list[KV]:
    return kvs("globalnetworkpolicies", {"metadata": {"name": name}, "spec": spec})


def cnp(ns: str, name: str, spec: dict[str, Any]) -> list[KV]:
    return kvs("calico-networkpolicies", {"metadata": {"name": name, "namespace": ns}, "spec": spec})


def wep_key(ns: str, name: str, node: str = ME) -> str:
    return K.workload_key(node, ns, name)


class Replay:
    """A model dataplane: applies batches, asserting the contract's ordering rules."""

    def __init__(self) -> None:
        self.sets: dict[str, set[str]] = {}
        self.set_types: dict[str, str] = {}
        self.policies: dict[PolicyID, Policy] = {}
        self.profiles: dict[str, Policy] = {}
        self.endpoints: dict[str, WorkloadEndpoint] = {}
        self.pools: dict[str, bool] = {}
        self.rejected: list[PolicyRejected] = []

    def _sets_of(self, p: Policy) -> set[str]:
        out: set[str] = set()
        for r in (*p.inbound_rules, *p.outbound_rules):
            for f in (
                "src_ip_set_ids",
                "not_src_ip_set_ids",
                "src_named_port_ip_set_ids",
                "not_src_named_port_ip_set_ids",
                "dst_ip_set_ids",
                "not_dst_ip_set_ids",
                "dst_named_port_ip_set_ids",
                "not_dst_named_port_ip_set_ids",
            ):
                out.update(getattr(r, f))
        return out

    def _policies_of(self, ep: WorkloadEndpoint) -> set[PolicyID]:
        return {PolicyID(t.name, n) for t in ep.tiers for n in (*t.ingress_policies, *t.egress_policies)}

    def apply(self, batch: Batch) -> Replay:
        for m in batch.messages:
            if isinstance(m, IpSetUpdate):
                self.sets[m.id] = set(m.members)
                self.set_types[m.id] = m.type
            elif isinstance(m, IpSetDeltaUpdate):
                assert m.id in self.sets, f"delta for unknown set {m.id}"
                assert not (m.added & self.sets[m.id]) and m.removed <= self.sets[m.id], "delta is not a diff"
                self.sets[m.id] = (self.sets[m.id] | m.added) - m.removed
            elif isinstance(m, IpSetRemove):
                assert m.id in self.sets
                users = [p for p in (*self.policies.values(), *self.profiles.values()) if m.id in self._sets_of(p)]
                assert not users, f"set {m.id} removed while in use"
                del self.sets[m.id]
            elif isinstance(m, (ActivePolicyUpdate, ActiveProfileUpdate)):
                p = m.policy if isinstance(m, ActivePolicyUpdate) else m.profile
                missing = self._sets_of(p) - set(self.sets)
                assert not missing, f"{m.id} refers to unknown sets {missing}"
                if isinstance(m, ActivePolicyUpdate):
                    self.policies[m.id] = p
                else:
                    self.profiles[m.id] = p
            elif isinstance(m, ActivePolicyRemove):
                assert m.id in self.policies
                assert not any(m.id in self._policies_of(e) for e in self.endpoints.values()), "policy in use"
                del self.policies[m.id]
            elif isinstance(m, ActiveProfileRemove):
                assert m.id in self.profiles
                assert not any(m.id in e.profile_ids for e in self.endpoints.values()), "profile in use"
                del self.profiles[m.id]
            elif isinstance(m, WorkloadEndpointUpdate):
                assert self._policies_of(m.endpoint) <= set(self.policies), "endpoint uses an unknown policy"
                assert set(m.endpoint.profile_ids) <= set(self.profiles), "endpoint uses an unknown profile"
                self.endpoints[m.id] = m.endpoint
            elif isinstance(m, WorkloadEndpointRemove):
                assert m.id in self.endpoints
                del self.endpoints[m.id]
            elif isinstance(m, IPAMPoolUpdate):
                self.pools[m.id] = m.masquerade
            elif isinstance(m, IPAMPoolRemove):
                del self.pools[m.id]
            else:
                assert isinstance(m, PolicyRejected)
                self.rejected.append(m)
        # Minimal: nothing is held that no one uses.
        used_sets = set().union(*(self._sets_of(p) for p in (*self.policies.values(), *self.profiles.values())))
        assert set(self.sets) == used_sets, "unused or missing ip sets"
        used_profiles = {p for e in self.endpoints.values() for p in e.profile_ids}
        assert set(self.profiles) == used_profiles, "profiles held without a user"
        return self

    def state(self) -> tuple[object, ...]:
        return (self.sets, self.policies, self.profiles, self.endpoints, self.pools)


def run(*batches: list[KV]) -> tuple[PolicyCalculator, Replay, list[Batch]]:
    calc = PolicyCalculator(ME)
    replay = Replay()
    out = []
    for b in batches:
        batch, malformed = calc.apply(b)
        assert not malformed, malformed
        replay.apply(batch)
        out.append(batch)
    return calc, replay, out


def types_of(batch: Batch) -> list[str]:
    return [type(m).__name__ for m in batch.messages]
