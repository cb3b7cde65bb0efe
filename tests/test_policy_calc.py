"""felix.policy.calc: typha updates -> the contract's messages (tiers, profiles, ip sets, rejections).

Values come from typha's own projection wherever a Kubernetes object is the input, so these tests
also prove that felix reads exactly what typha writes. ``Replay`` is a model dataplane: it applies
messages and asserts the contract's ordering (every id known before it is used, removals after
their last user), so every test checks the ordering as a side effect.
"""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

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
    PortRange,
    TierInfo,
    WorkloadEndpoint,
    WorkloadEndpointRemove,
    WorkloadEndpointUpdate,
)
from protocol import keys as K
from typha.k8s.projection import project

ME = "node-a"
KV = tuple[str, bytes | None]


def j(v: object) -> bytes:
    return orjson.dumps(v, option=orjson.OPT_SORT_KEYS)


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


# -- Kubernetes NetworkPolicy ------------------------------------------------------------------


def base() -> list[KV]:
    return [
        *namespace("prod", {"team": "blue"}),
        *namespace("dev", {"team": "red"}),
        *pod("prod", "web", "10.0.0.1", {"app": "web"}, ports=({"name": "http", "containerPort": 8080},)),
        *pod("prod", "db", "10.0.0.2", {"app": "db"}, node="node-b"),
        *pod("dev", "tool", "10.0.1.1", {"app": "tool"}),
    ]


WEB = wep_key("prod", "web")
TOOL = wep_key("dev", "tool")


def test_pods_without_policy_use_their_profiles_and_no_tiers() -> None:
    _, replay, _ = run(base())
    assert set(replay.endpoints) == {WEB, TOOL}  # node-b's pod is not local
    web = replay.endpoints[WEB]
    assert web.tiers == () and web.profile_ids == ("kns.prod",)
    assert web.ipv4_nets == ("10.0.0.1/32",) and web.name.startswith("cali")
    assert set(replay.profiles) == {"kns.prod", "kns.dev"} and not replay.policies and not replay.sets


def test_knp_selects_pods_builds_ip_sets_and_named_ports_per_destination_pod() -> None:
    spec = {
        "podSelector": {"matchLabels": {"app": "web"}},
        "ingress": [
            {
                "from": [
                    {"podSelector": {"matchLabels": {"app": "db"}}},
                    {"namespaceSelector": {"matchLabels": {"team": "red"}}},
                ],
                "ports": [{"port": "http"}, {"port": 80, "endPort": 90}],
            }
        ],
    }
    calc, replay, _ = run(base() + knp("prod", "allow", spec))
    pid = PolicyID("default", "prod/knp.default.allow")
    assert replay.endpoints[WEB].tiers == (TierInfo("default", ingress_policies=(pid.name,)),)
    assert replay.endpoints[TOOL].tiers == ()
    rules = replay.policies[pid].inbound_rules
    assert len(rules) == 2 and all(r.action == "allow" and r.protocol == "tcp" for r in rules)
    assert rules[0].dst_ports == (PortRange(80, 90),)
    (named,) = rules[0].dst_named_port_ip_set_ids
    assert replay.sets[named] == {"10.0.0.1,tcp:8080"} and replay.set_types[named] == "hash:ip,port"
    (src,) = rules[0].src_ip_set_ids
    assert replay.sets[src] == {"10.0.0.2/32"}  # a pod of another node: rule selectors are cluster-wide
    (ns_src,) = rules[1].src_ip_set_ids
    assert replay.sets[ns_src] == {"10.0.1.1/32"}  # namespaceSelector via inherited pcns.team
    assert calc.active_policies == 1


def test_label_change_sends_only_the_deltas_it_causes() -> None:
    spec = {
        "podSelector": {"matchLabels": {"app": "web"}},
        "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "db"}}}]}],
    }
    calc, replay, _ = run(base() + knp("prod", "allow", spec))
    batch, _ = calc.apply(pod("prod", "db", "10.0.0.2", {"app": "cache"}, node="node-b"))
    replay.apply(batch)
    (delta,) = batch.messages
    assert isinstance(delta, IpSetDeltaUpdate) and delta.removed == {"10.0.0.2/32"} and not delta.added
    # The selected pod losing its label: only its endpoint and the now-unused policy and sets go.
    batch, _ = calc.apply(pod("prod", "web", "10.0.0.1", {"app": "other"}))
    replay.apply(batch)
    assert types_of(batch) == ["WorkloadEndpointUpdate", "ActivePolicyRemove", "IpSetRemove"]
    assert replay.endpoints[WEB].tiers == ()
    # An update that changes nothing policy reads sends nothing.
    batch, _ = calc.apply(pod("prod", "web", "10.0.0.1", {"app": "other"}))
    assert batch.messages == []


def test_policy_types_decide_directions_and_knp_defaults_to_ingress() -> None:
    _calc, replay, _ = run(
        base()
        + knp("prod", "in", {"podSelector": {}})
        + knp("prod", "out", {"podSelector": {}, "policyTypes": ["Egress"]})
        + knp("prod", "both", {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]})
    )
    (tier,) = replay.endpoints[WEB].tiers
    assert tier.ingress_policies == ("prod/knp.default.both", "prod/knp.default.in")
    assert tier.egress_policies == ("prod/knp.default.both", "prod/knp.default.out")
    assert replay.policies[PolicyID("default", "prod/knp.default.in")] == Policy()  # default deny: no rules


def test_tiers_and_order_then_name_with_missing_order_last() -> None:
    sel = "all()"
    batch = [
        *base(),
        *gnp("z-first", {"order": 10, "selector": sel, "ingress": [{"action": "Deny"}]}),
        *gnp("a-second", {"order": 20, "selector": sel, "ingress": [{"action": "Allow"}]}),
        *gnp("b-second", {"order": 20, "selector": sel, "ingress": [{"action": "Allow"}]}),
        *gnp("no-order", {"selector": sel, "ingress": [{"action": "Pass"}]}),
        *gnp("sec.x", {"tier": "security", "order": 1, "selector": sel, "egress": [{"action": "Log"}]}),
        *gnp("anp", {"tier": "adminnetworkpolicy", "order": 5, "selector": sel, "ingress": [{"action": "Pass"}]}),
    ]
    _, replay, _ = run(batch)
    tiers = replay.endpoints[WEB].tiers
    assert [t.name for t in tiers] == ["adminnetworkpolicy", "default", "security"]
    assert tiers[1].ingress_policies == ("z-first", "a-second", "b-second", "no-order")
    assert tiers[1].egress_policies == ()
    assert tiers[2] == TierInfo("security", egress_policies=("sec.x",))
    assert replay.policies[PolicyID("default", "no-order")].inbound_rules[0].action == "pass"


def test_reordering_a_policy_updates_the_endpoints_it_selects() -> None:
    calc, replay, _ = run(
        base()
        + gnp("a", {"order": 1, "selector": "all()", "ingress": [{"action": "Allow"}]})
        + gnp("b", {"order": 2, "selector": "all()"})
    )
    assert replay.endpoints[WEB].tiers[0].ingress_policies == ("a", "b")
    batch, _ = calc.apply(gnp("a", {"order": 3, "selector": "all()", "ingress": [{"action": "Allow"}]}))
    replay.apply(batch)
    assert replay.endpoints[WEB].tiers[0].ingress_policies == ("b", "a")
    assert "ActivePolicyUpdate" not in types_of(batch)  # rules unchanged: only endpoints move


def test_profiles_labels_are_inherited_and_own_labels_win() -> None:
    calc, replay, _ = run(
        base()
        + service_account("prod", "api", {"role": "backend"})
        + pod("prod", "svc", "10.0.0.5", {"app": "svc", "pcns.team": "own"}, sa="api")
        + gnp(
            "by-sa",
            {
                "selector": "pcsa.role == 'backend'",
                "ingress": [{"action": "Allow", "source": {"selector": "pcns.team == 'blue'"}}],
            },
        )
    )
    key = wep_key("prod", "svc")
    assert replay.endpoints[key].tiers[0].ingress_policies == ("by-sa",)
    assert replay.endpoints[key].profile_ids == ("kns.prod", "ksa.prod.api")
    (src,) = replay.policies[PolicyID("default", "by-sa")].inbound_rules[0].src_ip_set_ids
    assert replay.sets[src] == {"10.0.0.1/32", "10.0.0.2/32"}  # not svc: its own pcns.team wins
    # A namespace label change moves every pod of the namespace.
    batch, _ = calc.apply(namespace("prod", {"team": "green"}))
    replay.apply(batch)
    assert replay.sets[src] == set()


def test_network_sets_are_selectable_and_namespaced_ones_inherit_namespace_labels() -> None:
    calc, replay, _ = run(
        base()
        + kvs(
            "globalnetworksets",
            {"metadata": {"name": "dns", "labels": {"kind": "dns"}}, "spec": {"nets": ["8.8.8.8/32", "1.1.1.0/24"]}},
        )
        + kvs(
            "networksets",
            {
                "metadata": {"name": "corp", "namespace": "prod", "labels": {"kind": "corp"}},
                "spec": {"nets": ["192.168.0.0/16"]},
            },
        )
        + gnp(
            "egress",
            {
                "selector": "all()",
                "egress": [
                    {"action": "Allow", "destination": {"selector": "kind == 'dns'"}},
                    {"action": "Allow", "destination": {"selector": "pcns.team == 'blue' && has(kind)"}},
                ],
            },
        )
    )
    r = replay.policies[PolicyID("default", "egress")].outbound_rules
    assert replay.sets[r[0].dst_ip_set_ids[0]] == {"8.8.8.8/32", "1.1.1.0/24"}
    assert replay.sets[r[1].dst_ip_set_ids[0]] == {"192.168.0.0/16"}
    batch, _ = calc.apply([(K.network_set_key("dns"), None)])
    replay.apply(batch)
    assert replay.sets[r[0].dst_ip_set_ids[0]] == set()


def test_equal_selectors_share_one_ip_set() -> None:
    _, replay, _ = run(
        base()
        + gnp(
            "a",
            {"selector": "all()", "ingress": [{"action": "Allow", "source": {"selector": "app == 'db' && has(app)"}}]},
        )
        + gnp(
            "b",
            {"selector": "all()", "ingress": [{"action": "Allow", "source": {"selector": 'has(app) && app == "db"'}}]},
        )
    )
    assert len(replay.sets) == 1


def test_ip_blocks_protocols_icmp_and_not_fields_render() -> None:
    spec = {
        "podSelector": {},
        "policyTypes": ["Egress"],
        "egress": [
            {
                "to": [{"ipBlock": {"cidr": "10.0.0.0/8", "except": ["10.1.0.0/16"]}}],
                "ports": [{"protocol": "UDP", "port": 53}],
            }
        ],
    }
    _, replay, _ = run(
        base()
        + knp("prod", "dns", spec)
        + gnp(
            "icmp",
            {
                "selector": "all()",
                "ingress": [
                    {"action": "Allow", "protocol": "ICMP", "icmp": {"type": 8, "code": 0}},
                    {
                        "action": "Deny",
                        "notProtocol": 17,
                        "source": {"notNets": ["192.168.0.0/16"], "notSelector": "app == 'db'"},
                    },
                    {"action": "Allow", "protocol": 6, "destination": {"notPorts": [22, "1000:2000"]}},
                ],
            },
        )
    )
    (rule,) = replay.policies[PolicyID("default", "prod/knp.default.dns")].outbound_rules
    assert (rule.protocol, rule.dst_nets, rule.not_dst_nets, rule.dst_ports) == (
        "udp",
        ("10.0.0.0/8",),
        ("10.1.0.0/16",),
        (PortRange(53, 53),),
    )
    icmp, deny, notports = replay.policies[PolicyID("default", "icmp")].inbound_rules
    assert (icmp.protocol, icmp.icmp_type, icmp.icmp_code) == ("icmp", 8, 0)
    assert deny.not_protocol == "udp" and deny.not_src_nets == ("192.168.0.0/16",)
    assert replay.sets[deny.not_src_ip_set_ids[0]] == {"10.0.0.2/32"}
    assert notports.protocol == "tcp" and notports.not_dst_ports == (PortRange(22, 22), PortRange(1000, 2000))


def test_rule_ids_are_stable_and_distinct() -> None:
    spec = {"selector": "all()", "ingress": [{"action": "Allow"}, {"action": "Allow"}]}
    _, r1, _ = run(base() + gnp("p", spec))
    _, r2, _ = run(base() + gnp("p", spec))
    ids = [r.rule_id for r in r1.policies[PolicyID("default", "p")].inbound_rules]
    assert ids == [r.rule_id for r in r2.policies[PolicyID("default", "p")].inbound_rules]
    assert len(set(ids)) == 2 and all(ids)


# -- bad input ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("rule", "reason"),
    [
        ({"action": "Allow", "source": {"selector": "app = 'x'"}}, "srcSelector: bad selector"),
        ({"action": "Allow", "destination": {"ports": [80]}}, "ports need protocol tcp, udp or sctp"),
        ({"action": "Allow", "protocol": "ICMP", "destination": {"ports": [80]}}, "ports need protocol"),
        ({"action": "Allow", "protocol": "TCP", "icmp": {"type": 8}}, "ICMP type/code need protocol icmp"),
        ({"action": "Allow", "protocol": "ICMP", "icmp": {"code": 1}}, "an ICMP code needs an ICMP type"),
        ({"action": "Allow", "protocol": "ICMP", "icmp": {"type": 300}}, "icmpType: 300 is not a number 0-255"),
        ({"action": "Allow", "protocol": "bogus"}, "unknown protocol 'bogus'"),
        ({"action": "Allow", "protocol": 300}, "protocol number 300 outside 0-255"),
        ({"action": "Allow", "ipVersion": 6, "source": {"nets": ["10.0.0.0/8"]}}, "nets of another ip version"),
        ({"action": "Allow", "ipVersion": 6, "protocol": "ICMP"}, "contradicts ipVersion 6"),
        ({"action": "Allow", "protocol": "TCP", "destination": {"ports": ["90:80"]}}, "bad port range"),
    ],
)
def test_a_policy_that_cannot_be_rendered_is_rejected_without_disturbing_others(rule: dict, reason: str) -> None:
    good = gnp("good", {"order": 1, "selector": "all()", "ingress": [{"action": "Allow"}]})
    calc, replay, (batch,) = run(base() + good + gnp("bad", {"order": 2, "selector": "all()", "ingress": [rule]}))
    (rejected,) = replay.rejected
    assert rejected.id == "policy default/bad" and reason in rejected.reason, rejected.reason
    assert replay.endpoints[WEB].tiers[0].ingress_policies == ("good",)
    assert calc.rejected == {"policy default/bad": rejected.reason}
    # Fixing it brings it in; the rejection is forgotten.
    batch, _ = calc.apply(gnp("bad", {"order": 2, "selector": "all()", "ingress": [{"action": "Deny"}]}))
    replay.apply(batch)
    assert replay.endpoints[WEB].tiers[0].ingress_policies == ("good", "bad") and calc.rejected == {}


def test_bad_policy_selector_and_bad_profile_are_rejected() -> None:
    calc, replay, _ = run(
        base()
        + gnp("bad", {"selector": "has(", "ingress": [{"action": "Allow"}]})
        + [(K.profile_key("kns.prod"), j({"labels": {}, "inboundRules": [{"action": "allow", "srcSelector": "("}]}))]
    )
    assert {r.id for r in replay.rejected} == {"policy default/bad", "profile kns.prod"}
    # Without its (rejected) profile the endpoint has none: the dataplane's default is deny.
    assert replay.endpoints[WEB].profile_ids == () and replay.endpoints[TOOL].profile_ids == ("kns.dev",)
    # The same rejection is reported once, not on every resend.
    batch, _ = calc.apply(gnp("bad", {"selector": "has(", "ingress": [{"action": "Allow"}]}))
    assert batch.messages == []


def test_unenforceable_rules_fail_closed() -> None:
    _, replay, _ = run(
        base()
        + gnp(
            "http",
            {
                "selector": "all()",
                "ingress": [
                    {"action": "Allow", "http": {"methods": ["GET"]}},
                    {"action": "Deny", "protocol": "TCP", "http": {"methods": ["POST"]}},
                    {"action": "Allow", "source": {"services": {"name": "x", "namespace": "y"}}},
                ],
            },
        )
        + [
            (
                K.profile_key("kns.dev"),
                j({"inboundRules": [{"action": "allow", "fromTheFuture": 1}, {"action": "deny", "x": 1}]}),
            )
        ]
    )
    assert replay.profiles["kns.dev"].inbound_rules[0].action == "deny"  # an unknown field: same reading
    (deny,) = replay.policies[PolicyID("default", "http")].inbound_rules
    assert deny.action == "deny" and deny.protocol == "tcp"  # broader deny, never a broader allow


def test_malformed_values_are_reported_and_make_the_key_absent() -> None:
    calc, replay, _ = run(base())
    batch, malformed = calc.apply([(WEB, b"not json"), (K.network_set_key("x"), j({"nets": ["bogus"]}))])
    replay.apply(batch)
    assert [k for k, _ in malformed] == [WEB, K.network_set_key("x")]
    assert WEB not in replay.endpoints


def test_untracked_and_pre_dnat_policies_never_apply_to_workloads() -> None:
    _, replay, _ = run(
        base()
        + gnp("dnt", {"selector": "all()", "doNotTrack": True, "ingress": [{"action": "Allow"}]})
        + gnp("pre", {"selector": "all()", "preDNAT": True, "applyOnForward": True, "ingress": [{"action": "Deny"}]})
    )
    assert not replay.policies and replay.endpoints[WEB].tiers == ()


def test_pools_and_endpoint_removal() -> None:
    pool = kvs("ippools", {"metadata": {"name": "p"}, "spec": {"cidr": "10.0.0.0/16", "natOutgoing": True}})
    calc, replay, _ = run(base() + pool + gnp("p", {"selector": "all()"}))
    assert replay.pools == {"10.0.0.0/16": True}
    batch, _ = calc.apply([(WEB, None), (TOOL, None), (pool[0][0], None)])
    replay.apply(batch)
    assert replay.endpoints == {} and replay.policies == {} and replay.pools == {}
    assert types_of(batch)[0] == "IPAMPoolRemove" and types_of(batch)[-1] == "ActiveProfileRemove"


def test_calico_namespaced_policy_and_service_account_selector() -> None:
    _, replay, _ = run(
        base()
        + service_account("prod", "api", {"role": "backend"})
        + pod("prod", "svc", "10.0.0.5", {"app": "svc"}, sa="api")
        + cnp(
            "prod",
            "sa",
            {
                "order": 5,
                "selector": "all()",
                "serviceAccountSelector": "role == 'backend'",
                "types": ["Ingress"],
                "ingress": [{"action": "Deny"}],
            },
        )
    )
    assert replay.endpoints[wep_key("prod", "svc")].tiers[0].ingress_policies == ("prod/sa",)
    assert replay.endpoints[WEB].tiers == ()


# -- the whole contract, incrementally: replayed batches equal a fresh calculation -----------------

NODES = [ME, "node-b"]
NAMESPACES = ["a", "b"]
SEL = st.sampled_from(
    ["app == 'x'", "has(app)", "app != 'x'", "pcns.team == 'blue'", "role == 'db' || app == 'y'", "all()", "has("]
)


def _wep(i: int, ip: int, node: int, labels: dict[str, str], port: int | None) -> KV:
    ns = NAMESPACES[i % 2]
    value: dict[str, Any] = {
        "name": f"cali{i:011d}",
        "node": NODES[node],
        "ipNetworks": [f"10.0.0.{ip}/32"],
        "profiles": [f"kns.{ns}"],
        "labels": {**labels, "projectcalico.org/namespace": ns},
    }
    if port is not None:
        value["ports"] = [{"name": "http", "protocol": "tcp", "port": port}]
    return K.workload_key(NODES[node], ns, f"p{i}"), j(value)


def _rule(draw_sel: str | None, named: bool) -> dict[str, Any]:
    r: dict[str, Any] = {"action": "allow"}
    if draw_sel is not None:
        r["srcSelector"] = draw_sel
    if named:
        r["protocol"] = "tcp"
        r["dstPorts"] = ["http", 80]
    return r


UPDATE = st.one_of(
    st.builds(
        _wep,
        st.integers(0, 4),
        st.integers(1, 3),
        st.integers(0, 1),
        st.dictionaries(st.sampled_from(["app", "role"]), st.sampled_from(["x", "y", "db"])),
        st.one_of(st.none(), st.sampled_from([8080, 9090])),
    ),
    st.builds(
        lambda i, node: (K.workload_key(NODES[node], NAMESPACES[i % 2], f"p{i}"), None),
        st.integers(0, 4),
        st.integers(0, 1),
    ),
    st.builds(
        lambda ns, team, rules: (
            K.profile_key(f"kns.{ns}"),
            None
            if team is None
            else j({"labels": {"pcns.team": team}, "inboundRules": rules, "outboundRules": [{"action": "allow"}]}),
        ),
        st.sampled_from(NAMESPACES),
        st.one_of(st.none(), st.sampled_from(["blue", "red"])),
        st.lists(st.builds(_rule, st.one_of(st.none(), SEL), st.booleans()), max_size=2),
    ),
    st.builds(
        lambda name, tier, order, sel, types, rules: (
            K.policy_key(name, None, tier),
            j(
                {
                    "tier": tier,
                    "order": order,
                    "selector": sel,
                    "types": types,
                    "inboundRules": rules,
                    "outboundRules": rules,
                }
            ),
        ),
        st.sampled_from(["p1", "p2", "p3"]),
        st.sampled_from(["default", "t1"]),
        st.sampled_from([None, 1.0, 2.0]),
        SEL,
        st.sampled_from([["ingress"], ["egress"], ["ingress", "egress"]]),
        st.lists(st.builds(_rule, st.one_of(st.none(), SEL), st.booleans()), max_size=2),
    ),
    st.builds(
        lambda name, tier: (K.policy_key(name, None, tier), None),
        st.sampled_from(["p1", "p2", "p3"]),
        st.sampled_from(["default", "t1"]),
    ),
    st.builds(
        lambda labels, nets: (K.network_set_key("ns1"), j({"labels": labels, "nets": nets})),
        st.dictionaries(st.sampled_from(["app", "role"]), st.sampled_from(["x", "db"])),
        st.lists(st.sampled_from(["10.0.0.1/32", "10.9.0.0/16"]), max_size=2),
    ),
    st.just((K.network_set_key("ns1"), None)),
)


@settings(max_examples=250, deadline=None)
@given(st.lists(st.lists(UPDATE, min_size=1, max_size=6), min_size=1, max_size=8))
def test_incremental_batches_replay_to_the_same_state_as_a_fresh_calculation(batches: list[list[KV]]) -> None:
    calc = PolicyCalculator(ME)
    replay = Replay()
    final: dict[str, bytes] = {}
    for b in batches:
        batch, _ = calc.apply(b)
        replay.apply(batch)
        for k, v in b:
            if v is None:
                final.pop(k, None)
            else:
                final[k] = v
    fresh, _ = PolicyCalculator(ME).apply(list(final.items()))
    expected = Replay().apply(fresh)
    assert replay.state() == expected.state()
    # every local endpoint of the final state is present, and only those
    assert set(replay.endpoints) == {k for k in final if k.startswith(f"/calico/v1/host/{ME}/")}


def test_the_cyclic_collector_is_paused_for_each_bulk_step_and_restored() -> None:
    import gc

    from felix.policy import gcpause

    assert gc.isenabled()
    with gcpause.paused():
        assert not gc.isenabled()
        with gcpause.paused():
            pass
        assert not gc.isenabled(), "an inner step leaves the collector as the outer one found it"
    assert gc.isenabled()
    with pytest.raises(RuntimeError), gcpause.paused():
        raise RuntimeError("boom")
    assert gc.isenabled()
    calc = PolicyCalculator("node-a")
    during: list[bool] = []
    real = calc._ipsets.update_item
    calc._ipsets.update_item = lambda *a: (during.append(gc.isenabled()), real(*a))[1]  # type: ignore[method-assign]
    calc.apply(base())
    assert during and not any(during) and gc.isenabled()
