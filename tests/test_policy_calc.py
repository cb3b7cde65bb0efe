"""felix.policy.calc: typha updates -> the contract's messages (tiers, profiles, ip sets, rejections).

Inputs, and ``Replay``, the model dataplane every test checks the contract's ordering with, are in
tests/support/policy_lab.py; the property that incremental batches replay to the state of a fresh
calculation is in tests/test_policy_calc_properties.py.
"""

from __future__ import annotations

import pytest

from felix.policy.calc import PolicyCalculator
from felix.policy.messages import (
    IpSetDeltaUpdate,
    Policy,
    PolicyID,
    PortRange,
    TierInfo,
)
from protocol import keys as K
from tests.support.policy_lab import (
    KV,
    cnp,
    gnp,
    j,
    knp,
    kvs,
    namespace,
    pod,
    run,
    service_account,
    types_of,
    wep_key,
)

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
