"""felix.dataplane.iptables.rules: a rendered rule means what the contract's Rule says.

The iptables text is run through ``walk`` (an interpreter of exactly the vocabulary felix emits)
and compared with a direct reading of the contract's semantics, on generated rules and packets.
The kernel tests check separately that the kernel agrees with ``walk`` on real traffic.
"""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from felix.dataplane.iptables.render import chain
from felix.dataplane.iptables.rules import Marks, RuleContext, render_rule
from felix.dataplane.iptables.walk import Packet, walk
from felix.policy.messages import PortRange, Rule

MARKS = Marks()
IPS4 = [f"10.0.0.{i}" for i in range(1, 7)]
IPS6 = ["fd00::1", "fd00::2", "fd00::1:3"]
NETS = ["10.0.0.0/30", "10.0.0.4/31", "10.0.0.1/32", "0.0.0.0/0", "fd00::/120", "fd00::1:0/112", "::/0"]
SETS = {  # set id -> members (both families); named-port sets hold ip,proto:port
    "a": frozenset({"10.0.0.1", "10.0.0.2", "fd00::1"}),
    "b": frozenset({"10.0.0.4/31"}),
    "np": frozenset({"10.0.0.1,tcp:80", "10.0.0.3,udp:53", "fd00::1,tcp:80"}),
}


def set_name(version: int):
    def name(set_id: str, named: bool) -> str:
        return f"s{version}-{set_id}{'-n' if named else ''}"

    return name


def kernel_sets(version: int) -> dict[str, tuple[str, frozenset[str]]]:
    out = {}
    for sid, members in SETS.items():
        fam = {m for m in members if ipaddress.ip_address(m.split(",")[0].split("/")[0]).version == version}
        named = "," in next(iter(members))
        out[set_name(version)(sid, named)] = ("hash:ip,port" if named else "hash:net", frozenset(fam))
    return out


def in_set(set_id: str, key: str) -> bool:
    members = SETS[set_id]
    if "," in key:
        return key in members
    ip = ipaddress.ip_address(key)
    return any(ip in ipaddress.ip_network(m, strict=False) for m in members)


def proto_of(p: str | None) -> str | None:
    return {"6": "tcp", "17": "udp", "1": "icmp"}.get(p, p) if p is not None else None


def reference(rule: Rule, p: Packet) -> bool:
    """The contract's meaning of a (valid) rule: does it match this packet?"""
    version = ipaddress.ip_address(p.src).version
    if rule.ip_version not in (None, version):
        return False
    if rule.protocol is not None and proto_of(rule.protocol) != p.proto:
        return False
    if rule.not_protocol is not None and proto_of(rule.not_protocol) == p.proto:
        return False

    def in_nets(ip: str, nets: tuple[str, ...]) -> bool:
        return any(ipaddress.ip_address(ip) in ipaddress.ip_network(n) for n in nets)

    def port_ok(port: int, ranges: tuple[PortRange, ...], named: tuple[str, ...], ip: str) -> bool:
        if not ranges and not named:
            return True
        return any(r.first <= port <= r.last for r in ranges) or any(in_set(s, f"{ip},{p.proto}:{port}") for s in named)

    checks = [
        not rule.src_nets or in_nets(p.src, rule.src_nets),
        not in_nets(p.src, rule.not_src_nets),
        not rule.dst_nets or in_nets(p.dst, rule.dst_nets),
        not in_nets(p.dst, rule.not_dst_nets),
        port_ok(p.sport, rule.src_ports, rule.src_named_port_ip_set_ids, p.src),
        port_ok(p.dport, rule.dst_ports, rule.dst_named_port_ip_set_ids, p.dst),
        not any(r.first <= p.sport <= r.last for r in rule.not_src_ports),
        not any(r.first <= p.dport <= r.last for r in rule.not_dst_ports),
        not any(in_set(s, f"{p.src},{p.proto}:{p.sport}") for s in rule.not_src_named_port_ip_set_ids),
        not any(in_set(s, f"{p.dst},{p.proto}:{p.dport}") for s in rule.not_dst_named_port_ip_set_ids),
        all(in_set(s, p.src) for s in rule.src_ip_set_ids),
        all(in_set(s, p.dst) for s in rule.dst_ip_set_ids),
        not any(in_set(s, p.src) for s in rule.not_src_ip_set_ids),
        not any(in_set(s, p.dst) for s in rule.not_dst_ip_set_ids),
    ]
    if rule.icmp_type is not None:
        checks.append(p.icmp_type == rule.icmp_type and rule.icmp_code in (None, p.icmp_code))
    if rule.not_icmp_type is not None:
        checks.append(not (p.icmp_type == rule.not_icmp_type and rule.not_icmp_code in (None, p.icmp_code)))
    return all(checks)


def run(rule: Rule, p: Packet) -> tuple[str, int, int]:
    version = ipaddress.ip_address(p.src).version
    ctx = RuleContext(version, MARKS, set_name(version))
    c = chain("cali-test", render_rule(rule, ctx))
    assert not ctx.problems, ctx.problems
    r = walk({"cali-test": c}, "cali-test", p, kernel_sets(version))
    return r.verdict, r.mark, r.logged


ports = st.lists(
    st.tuples(st.integers(1, 40), st.integers(0, 5)).map(lambda t: PortRange(t[0], t[0] + t[1])), max_size=18
).map(tuple)
nets = st.lists(st.sampled_from(NETS), max_size=3, unique=True).map(tuple)
set_ids = st.lists(st.sampled_from(["a", "b"]), max_size=2, unique=True).map(tuple)
named = st.lists(st.just("np"), max_size=1).map(tuple)


@st.composite
def rules(draw: st.DrawFn) -> Rule:
    protocol = draw(st.sampled_from([None, "tcp", "udp", "6", "icmp"]))
    portable = protocol in ("tcp", "udp", "6")
    icmp = protocol == "icmp"
    return Rule(
        action=draw(st.sampled_from(["allow", "deny", "pass", "log"])),
        ip_version=draw(st.sampled_from([None, None, 4, 6])),
        protocol=protocol,
        not_protocol=draw(st.sampled_from([None, None, "udp", "17"])) if protocol is None else None,
        icmp_type=draw(st.sampled_from([None, 8, 0])) if icmp else None,
        not_icmp_type=draw(st.sampled_from([None, 3])) if icmp else None,
        src_nets=draw(nets),
        not_src_nets=draw(nets),
        dst_nets=draw(nets),
        not_dst_nets=draw(nets),
        src_ports=draw(ports) if portable else (),
        dst_ports=draw(ports) if portable else (),
        not_src_ports=draw(ports) if portable else (),
        not_dst_ports=draw(ports) if portable else (),
        src_ip_set_ids=draw(set_ids),
        dst_ip_set_ids=draw(set_ids),
        not_src_ip_set_ids=draw(set_ids),
        not_dst_ip_set_ids=draw(set_ids),
        src_named_port_ip_set_ids=draw(named) if portable else (),
        dst_named_port_ip_set_ids=draw(named) if portable else (),
        not_dst_named_port_ip_set_ids=draw(named) if portable else (),
    )


@st.composite
def packets(draw: st.DrawFn) -> Packet:
    v6 = draw(st.booleans())
    ips = IPS6 if v6 else IPS4
    proto = draw(st.sampled_from(["tcp", "udp", "icmp"] if not v6 else ["tcp", "udp"]))
    return Packet(
        src=draw(st.sampled_from(ips)),
        dst=draw(st.sampled_from(ips)),
        proto=proto,
        sport=draw(st.integers(1, 50)) if proto != "icmp" else 0,
        dport=draw(st.sampled_from([80, 53, *range(1, 50)])) if proto != "icmp" else 0,
        icmp_type=draw(st.sampled_from([8, 0, 3])) if proto == "icmp" else None,
        icmp_code=0 if proto == "icmp" else None,
    )


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rules(), packets())
def test_rendered_rule_matches_exactly_what_the_contract_says(rule: Rule, p: Packet) -> None:
    # "not 0.0.0.0/0" style rules match nothing; the reference agrees (nothing is outside ::/0).
    assume(not (rule.protocol == "icmp" and ipaddress.ip_address(p.src).version == 6))
    matched = reference(rule, p)
    verdict, mark, logged = run(rule, p)
    expect = {
        "allow": ("RETURN", MARKS.accept, 0),
        "pass": ("RETURN", MARKS.pass_, 0),
        "deny": ("DROP", 0, 0),
        "log": ("RETURN", 0, 1),
    }[rule.action]
    if matched:
        assert (verdict, mark & (MARKS.accept | MARKS.pass_), logged) == expect
    else:
        assert (verdict, mark & (MARKS.accept | MARKS.pass_), logged) == ("RETURN", 0, 0)


def test_many_ports_and_named_ports_become_a_match_block() -> None:
    rule = Rule("allow", protocol="tcp", dst_ports=tuple(PortRange(i, i) for i in range(1, 21)))
    lines = render_rule(rule, RuleContext(4, MARKS, set_name(4)))
    multiport = [x for x in lines if "multiport" in x]
    assert len(multiport) == 2 and all(x.count(",") <= 14 for x in multiport)  # 15 slots per match
    assert run(rule, Packet("10.0.0.1", "10.0.0.2", dport=20))[1] & MARKS.accept
    assert not run(rule, Packet("10.0.0.1", "10.0.0.2", dport=21))[1] & MARKS.accept


@pytest.mark.parametrize(
    "rule, problem",
    [
        (Rule("allow", protocol="icmp", dst_ports=(PortRange(80, 80),)), "ports need tcp"),
        (Rule("allow", protocol="tcp", icmp_type=8), "ICMP type/code needs"),
        (Rule("allow", src_nets=("10.0.0.300/32",)), "bad CIDR"),
        (Rule("allow", protocol="frob"), "unknown protocol"),
    ],
)
def test_unenforceable_allow_is_left_out_and_reported(rule: Rule, problem: str) -> None:
    ctx = RuleContext(4, MARKS, set_name(4))
    assert render_rule(rule, ctx) == []
    assert len(ctx.problems) == 1 and problem in ctx.problems[0] and "left out" in ctx.problems[0]


def test_unenforceable_deny_keeps_what_it_can_and_denies_more() -> None:
    ctx = RuleContext(4, MARKS, set_name(4))
    rule = Rule("deny", protocol="udp", icmp_type=8, src_nets=("10.0.0.0/30",))
    lines = render_rule(rule, ctx)
    assert lines == ["-p udp --source 10.0.0.0/30 -j DROP"]
    assert "denying without that constraint" in ctx.problems[0]


def test_rules_of_the_other_family_render_nothing() -> None:
    ctx = RuleContext(6, MARKS, set_name(6))
    assert render_rule(Rule("allow", ip_version=4), ctx) == []
    assert render_rule(Rule("allow", src_nets=("10.0.0.0/8",)), ctx) == []  # only IPv4 CIDRs
    assert render_rule(Rule("allow", protocol="icmp"), ctx) == []
    assert render_rule(Rule("allow", not_src_nets=("::/0",)), ctx) == []  # "not anything"
    assert render_rule(Rule("allow", protocol="icmpv6", icmp_type=128), ctx)[0].startswith(
        "-p ipv6-icmp -m icmp6 --icmpv6-type 128"
    )
    assert not ctx.problems


def test_sets_used_are_reported_for_reference_counting() -> None:
    ctx = RuleContext(4, MARKS, set_name(4))
    render_rule(Rule("allow", protocol="tcp", src_ip_set_ids=("a",), dst_named_port_ip_set_ids=("np",)), ctx)
    assert ctx.sets_used == {"s4-a", "s4-np-n"}
