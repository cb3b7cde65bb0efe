"""felix.dataplane.iptables.render and desired: the chains felix wants, walked packet by packet.

Packets are run through the rendered tables with ``walk`` from the kernel's FORWARD hook
(``cali-FORWARD``): what tiers, Pass, end-of-tier deny, profiles, unknown interfaces and the dispatch
tree do is checked by the verdicts, not by the text of the rules.
"""

from __future__ import annotations

import hashlib

import pytest

from felix.dataplane.iptables import names as N
from felix.dataplane.iptables.desired import DesiredState
from felix.dataplane.iptables.render import RenderConfig, Renderer
from felix.dataplane.iptables.walk import Packet, walk
from felix.policy.messages import (
    ActivePolicyRemove,
    ActivePolicyUpdate,
    ActiveProfileUpdate,
    IPAMPoolUpdate,
    IpSetDeltaUpdate,
    IpSetRemove,
    IpSetUpdate,
    Policy,
    PolicyID,
    PortRange,
    Rule,
    TierInfo,
    WorkloadEndpoint,
    WorkloadEndpointUpdate,
)

ALLOW_ALL = Policy(inbound_rules=(Rule("allow"),), outbound_rules=(Rule("allow"),))


def iface(i: int) -> str:
    return "cali" + hashlib.sha1(str(i).encode()).hexdigest()[:11]


def sets_of(st: DesiredState, v: int = 4) -> dict[str, tuple[str, frozenset[str]]]:
    return {n: (s.type, frozenset(s.members)) for n, s in st.sets[v].items()}


def forward(st: DesiredState, src: str, dst: str, iif: str, oif: str, **kw: object) -> str:
    pkt = Packet(src, dst, iif=iif, oif=oif, **kw)  # type: ignore[arg-type]
    return walk(st.tables[(4, "filter")], "cali-FORWARD", pkt, sets_of(st)).verdict


def ep(name: str, *tiers: TierInfo, profiles: tuple[str, ...] = ("kns.default",)) -> WorkloadEndpoint:
    return WorkloadEndpoint(name, profile_ids=profiles, tiers=tiers)


A, B, C = "cali00000000001", "cali00000000002", "cali00000000003"


@pytest.fixture
def st() -> DesiredState:
    s = DesiredState()
    s.apply(
        [
            ActiveProfileUpdate("kns.default", ALLOW_ALL),
            WorkloadEndpointUpdate("a", ep(A)),
            WorkloadEndpointUpdate("b", ep(B)),
            WorkloadEndpointUpdate("c", ep(C)),
        ]
    )
    return s


def test_profiles_apply_when_no_tier_does(st: DesiredState) -> None:
    assert forward(st, "10.0.0.1", "10.0.0.2", A, B) == "ACCEPT"
    assert forward(st, "10.0.0.1", "8.8.8.8", A, "eth0") == "ACCEPT"


def test_no_profile_no_policy_denies(st: DesiredState) -> None:
    st.apply([WorkloadEndpointUpdate("b", ep(B, profiles=()))])
    assert forward(st, "10.0.0.1", "10.0.0.2", A, B) == "DROP"
    assert forward(st, "10.0.0.2", "10.0.0.1", B, A) == "DROP"  # egress of b too


def test_unknown_workload_interface_is_dropped_and_others_untouched(st: DesiredState) -> None:
    assert forward(st, "10.0.0.1", "10.0.0.9", A, "cali99999999999") == "DROP"
    assert forward(st, "10.0.0.9", "10.0.0.1", "cali99999999999", A) == "DROP"
    assert forward(st, "192.168.0.1", "192.168.1.1", "eth0", "eth1") == "RETURN"  # not ours: FORWARD goes on


def test_established_traffic_is_accepted_before_policy(st: DesiredState) -> None:
    st.apply([WorkloadEndpointUpdate("b", ep(B, profiles=()))])
    assert forward(st, "10.0.0.1", "10.0.0.2", A, B, ctstate="ESTABLISHED") == "ACCEPT"
    assert forward(st, "10.0.0.1", "10.0.0.2", A, B, ctstate="INVALID") == "DROP"


def test_tiers_order_pass_and_end_of_tier_deny(st: DesiredState) -> None:
    deny_80 = Policy(inbound_rules=(Rule("deny", protocol="tcp", dst_ports=(PortRange(80, 80),)),))
    pass_53 = Policy(inbound_rules=(Rule("pass", protocol="udp"),))
    allow_22 = Policy(inbound_rules=(Rule("allow", protocol="tcp"),))
    log_all = Policy(inbound_rules=(Rule("log"),))
    st.apply(
        [
            ActivePolicyUpdate(PolicyID("security", "deny-80"), deny_80),
            ActivePolicyUpdate(PolicyID("security", "pass-udp"), pass_53),
            ActivePolicyUpdate(PolicyID("security", "log"), log_all),
            ActivePolicyUpdate(PolicyID("default", "allow-tcp"), allow_22),
            WorkloadEndpointUpdate(
                "b",
                ep(
                    B,
                    TierInfo("security", ingress_policies=("log", "deny-80", "pass-udp")),
                    TierInfo("default", ingress_policies=("allow-tcp",)),
                ),
            ),
        ]
    )
    tcp = {"proto": "tcp"}
    assert forward(st, "10.0.0.1", "10.0.0.2", A, B, dport=80, **tcp) == "DROP"  # denied in tier 1
    # tier 1: no decision for tcp/22 -> end-of-tier deny, although tier 2 would allow it
    assert forward(st, "10.0.0.1", "10.0.0.2", A, B, dport=22, **tcp) == "DROP"
    # udp passes tier 1; tier 2 has a policy but it does not match udp: end of tier 2 denies
    assert forward(st, "10.0.0.1", "10.0.0.2", A, B, proto="udp", dport=53) == "DROP"
    # b's egress has no tier: profile allows
    assert forward(st, "10.0.0.2", "10.0.0.1", B, A) == "ACCEPT"
    # pass from the last tier reaches the profiles
    st.apply([WorkloadEndpointUpdate("b", ep(B, TierInfo("security", ingress_policies=("pass-udp",))))])
    assert forward(st, "10.0.0.1", "10.0.0.2", A, B, proto="udp", dport=53) == "ACCEPT"
    assert forward(st, "10.0.0.1", "10.0.0.2", A, B, proto="tcp", dport=53) == "DROP"


def test_log_rule_logs_and_continues(st: DesiredState) -> None:
    st.apply(
        [
            ActivePolicyUpdate(
                PolicyID("default", "log-then-allow"), Policy(inbound_rules=(Rule("log"), Rule("allow")))
            ),
            WorkloadEndpointUpdate("b", ep(B, TierInfo("default", ingress_policies=("log-then-allow",)))),
        ]
    )
    pkt = Packet("10.0.0.1", "10.0.0.2", iif=A, oif=B)
    r = walk(st.tables[(4, "filter")], "cali-FORWARD", pkt, sets_of(st))
    assert (r.verdict, r.logged) == ("ACCEPT", 1)


def test_selector_sets_and_label_change(st: DesiredState) -> None:
    pol = Policy(inbound_rules=(Rule("allow", src_ip_set_ids=("role==frontend",)),))
    st.apply(
        [
            IpSetUpdate("role==frontend", "hash:net", frozenset({"10.0.0.1/32"})),
            ActivePolicyUpdate(PolicyID("default", "from-frontend"), pol),
            WorkloadEndpointUpdate("b", ep(B, TierInfo("default", ingress_policies=("from-frontend",)))),
        ]
    )
    assert forward(st, "10.0.0.1", "10.0.0.2", A, B) == "ACCEPT"
    assert forward(st, "10.0.0.3", "10.0.0.2", C, B) == "DROP"
    for d in st.dirty.values():
        d.clear()
    st.apply([IpSetDeltaUpdate("role==frontend", added=frozenset({"10.0.0.3/32"}))])
    assert forward(st, "10.0.0.3", "10.0.0.2", C, B) == "ACCEPT"
    assert all(not d for d in st.dirty.values()), "a label change rewrites no chain"


def test_unknown_policy_fails_closed(st: DesiredState) -> None:
    st.apply([WorkloadEndpointUpdate("b", ep(B, TierInfo("default", ingress_policies=("missing",))))])
    assert forward(st, "10.0.0.1", "10.0.0.2", A, B) == "DROP"
    assert any("unknown policy" in p for p in st.problems)
    st.apply([ActivePolicyUpdate(PolicyID("default", "missing"), ALLOW_ALL)])  # arrives late: endpoint fixed
    assert forward(st, "10.0.0.1", "10.0.0.2", A, B) == "ACCEPT"


def test_removing_a_policy_and_its_last_user_in_one_batch(st: DesiredState) -> None:
    pid = PolicyID("default", "p")
    st.apply(
        [
            ActivePolicyUpdate(pid, ALLOW_ALL),
            WorkloadEndpointUpdate("b", ep(B, TierInfo("default", ingress_policies=("p",)))),
        ]
    )
    pi = N.policy_chain_name(True, "default", "p")
    assert pi in st.tables[(4, "filter")]
    assert N.policy_chain_name(False, "default", "p") not in st.tables[(4, "filter")], "unused direction: not written"
    st.apply([ActivePolicyRemove(pid), WorkloadEndpointUpdate("b", ep(B))])  # remove first: order must not matter
    assert pi not in st.tables[(4, "filter")]
    assert not st.problems


def test_shared_policy_chain_written_once_and_removed_with_last_user(st: DesiredState) -> None:
    pid = PolicyID("default", "shared")
    tier = TierInfo("default", ingress_policies=("shared",))
    st.apply([ActivePolicyUpdate(pid, ALLOW_ALL), WorkloadEndpointUpdate("a", ep(A, tier))])
    st.apply([WorkloadEndpointUpdate("b", ep(B, tier))])
    pi = N.policy_chain_name(True, "default", "shared")
    st.dirty[(4, "filter")].clear()
    st.apply([WorkloadEndpointUpdate("a", ep(A))])
    assert pi in st.tables[(4, "filter")] and pi not in st.dirty[(4, "filter")]
    st.apply([WorkloadEndpointUpdate("b", ep(B))])
    assert pi not in st.tables[(4, "filter")] and pi in st.dirty[(4, "filter")]


def test_referenced_set_never_announced_exists_empty_and_outlives_its_removal() -> None:
    st = DesiredState()
    pol = Policy(inbound_rules=(Rule("allow", src_ip_set_ids=("s",)),))
    st.apply(
        [
            ActivePolicyUpdate(PolicyID("default", "p"), pol),
            WorkloadEndpointUpdate("b", ep(B, TierInfo("default", ingress_policies=("p",)))),
        ]
    )
    name = N.set_name(4, "s")
    assert st.sets[4][name].members == set()
    st.apply([IpSetUpdate("s", "hash:net", frozenset({"10.0.0.0/0"}))])
    assert st.sets[4][name].members == {"0.0.0.0/1", "128.0.0.0/1"}  # hash:net cannot hold /0
    st.apply([IpSetRemove("s")])
    assert st.sets[4][name].members == set(), "still referenced: kept, empty"
    st.apply([WorkloadEndpointUpdate("b", ep(B))])
    assert name not in st.sets[4]


def test_endpoint_to_host_action_and_nat() -> None:
    for action in ("DROP", "RETURN", "ACCEPT"):
        st = DesiredState(Renderer(RenderConfig(endpoint_to_host=action)))  # type: ignore[arg-type]
        st.apply([ActiveProfileUpdate("kns.default", ALLOW_ALL), WorkloadEndpointUpdate("a", ep(A))])
        pkt = Packet("10.0.0.1", "10.0.0.254", iif=A)
        assert walk(st.tables[(4, "filter")], "cali-INPUT", pkt).verdict == action
    st.apply([IPAMPoolUpdate("p1", "10.0.0.0/24", True), IPAMPoolUpdate("p2", "10.1.0.0/24", False)])
    nat, sets = st.tables[(4, "nat")], sets_of(st)
    out = walk(nat, "cali-POSTROUTING", Packet("10.0.0.1", "8.8.8.8"), sets).verdict
    assert out == "ACCEPT"  # MASQUERADE
    assert walk(nat, "cali-POSTROUTING", Packet("10.0.0.1", "10.1.0.5"), sets).verdict == "RETURN"
    assert walk(nat, "cali-POSTROUTING", Packet("10.1.0.1", "8.8.8.8"), sets).verdict == "RETURN"


@pytest.mark.parametrize("leaf", [0, 16])
def test_dispatch_tree_reaches_every_interface(leaf: int) -> None:
    st = DesiredState(Renderer(RenderConfig(dispatch_leaf=leaf)))
    names = [iface(i) for i in range(1000)]
    st.apply([ActiveProfileUpdate("kns.default", ALLOW_ALL)])
    st.apply([WorkloadEndpointUpdate(n, ep(n)) for n in names])
    table = st.tables[(4, "filter")]
    assert all(len(n) <= N.MAX_CHAIN_NAME for n in table)
    costs = []
    for n in names:
        for pkt, target in (
            (Packet("10.0.0.1", "10.0.0.2", iif=n), N.endpoint_chain_name(False, n)),
            (Packet("10.0.0.1", "10.0.0.2", oif=n), N.endpoint_chain_name(True, n)),
        ):
            root = N.CHAIN_FROM_WL_DISPATCH if pkt.iif else N.CHAIN_TO_WL_DISPATCH
            verdict, evaluated = _dispatch(table, root, pkt)
            assert verdict == target
            costs.append(evaluated)
    mean = sum(costs) / len(costs)
    if leaf:
        assert mean < 25 and max(c for c in costs) < 50  # ~16 per level, 2-3 levels
    else:
        assert mean > 450  # the linear list this replaces


def _dispatch(table: dict, root: str, pkt: Packet) -> tuple[str, int]:
    """Follow gotos from ``root`` until an endpoint chain; (that chain, rules evaluated)."""
    from felix.dataplane.iptables.walk import _matches, _parse

    chain, evaluated = root, 0
    while not chain.startswith(("cali-tw-", "cali-fw-")):
        for rule in table[chain].rules:
            evaluated += 1
            matches, target = _parse(rule)
            if all(_matches(o, a, pkt, 0, {}) != neg for o, neg, a in matches):
                assert target[0] == "-g" or target[1] == "DROP", rule
                chain = target[1]
                break
        if chain == "DROP":
            return chain, evaluated
    return chain, evaluated


def test_one_new_interface_changes_one_dispatch_leaf() -> None:
    st = DesiredState()
    st.apply([ActiveProfileUpdate("kns.default", ALLOW_ALL)])
    st.apply([WorkloadEndpointUpdate(iface(i), ep(iface(i))) for i in range(1000)])
    st.dirty[(4, "filter")].clear()
    st.apply([WorkloadEndpointUpdate("new", ep(iface(5000)))])
    dirty = st.dirty[(4, "filter")]
    dispatch = {n for n in dirty if "dispatch" in n}
    assert len(dispatch) == 2, dispatch  # one leaf per direction
    assert dirty - dispatch == {N.endpoint_chain_name(True, iface(5000)), N.endpoint_chain_name(False, iface(5000))}
