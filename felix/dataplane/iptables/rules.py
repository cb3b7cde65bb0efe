"""One policy rule (the contract's ``Rule``) -> iptables rule text, for one IP version. Pure.

Design note
-----------
A contract rule is richer than one iptables rule can express: iptables matches one source CIDR
and one destination CIDR per rule, 15 port slots per ``multiport`` match, and cannot OR numeric
ports with a named-port (``hash:ip,port``) set. Like Calico, we render such a rule as a short
*match block* program over two scratch mark bits: an "all blocks pass" bit and a "this block
passes" bit. Each positive block (any-of: port groups and named-port sets, or several CIDRs) sets
the block bit on a match and is then ANDed into the all bit; each negative block (none-of several
CIDRs) clears the all bit on a match; the final rule carries the remaining single-valued matches
plus a match on the all bit. The first positive block writes the all bit directly (one rule fewer).
Unlike Calico's builder, every positive block after the first starts by clearing its bit, so two
such blocks in one rule cannot leak a match into each other.

Actions use the mark protocol of the endpoint chains (``render``): allow and pass set their mark
bit and return; deny drops; log logs and falls through to the next rule.

Fail closed. The calculation validates rules, but a rule that still cannot be enforced (a port
without a port protocol, an ICMP type on TCP, an unparsable CIDR) must neither break the
``iptables-restore`` transaction, which would stall every other change, nor widen what is allowed:
the offending constraint is dropped, and so is the whole rule unless it is a deny (a deny with a
constraint fewer denies more). Each problem is reported to the caller, which logs and counts it.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

from felix.policy.messages import PortRange, Rule

__all__ = ["Marks", "RuleContext", "mark_clear", "mark_set", "match_mark_clear", "match_mark_set", "render_rule"]

PORT_PROTOCOLS = frozenset({"tcp", "udp", "sctp", "udplite", "dccp"})
_PROTO_NUMBERS = {"1": "icmp", "6": "tcp", "17": "udp", "58": "icmpv6", "132": "sctp", "136": "udplite", "33": "dccp"}
_MAX_PORT_SLOTS = 15  # xt_multiport: a range takes two


@dataclass(frozen=True, slots=True)
class Marks:
    """The packet-mark bits felix uses (allocated from ``IptablesMarkMask``, low bits first)."""

    accept: int = 0x10000
    pass_: int = 0x20000
    scratch0: int = 0x40000
    scratch1: int = 0x80000

    @classmethod
    def from_mask(cls, mask: int) -> Marks:
        bits = [1 << i for i in range(32) if mask & (1 << i)]
        if len(bits) < 4:
            raise ValueError(f"mark mask {mask:#x} has fewer than the 4 bits felix needs")
        return cls(*bits[:4])

    @property
    def all(self) -> int:
        return self.accept | self.pass_ | self.scratch0 | self.scratch1


def mark_set(bits: int) -> str:
    return f"-j MARK --set-xmark {bits:#x}/{bits:#x}"


def mark_clear(bits: int) -> str:
    return f"-j MARK --set-xmark 0x0/{bits:#x}"


def match_mark_set(bit: int) -> str:
    return f"-m mark --mark {bit:#x}/{bit:#x}"


def match_mark_clear(bit: int) -> str:
    return f"-m mark --mark 0x0/{bit:#x}"


@dataclass(slots=True)
class RuleContext:
    """What a rule needs from its surroundings, and what it reports back."""

    version: int
    marks: Marks
    set_name: Callable[[str, bool], str]  # (set id, named-port?) -> kernel name for this version
    log_prefix: str = "calico-packet"
    deny: str = "-j DROP"
    problems: list[str] = field(default_factory=list)
    sets_used: set[str] = field(default_factory=set)


class _Unenforceable(ValueError):
    pass


def _family_nets(nets: Sequence[str], version: int) -> list[str]:
    out = []
    for net in nets:
        try:
            parsed = ipaddress.ip_network(net, strict=False)
        except ValueError:
            raise _Unenforceable(f"bad CIDR {net!r}") from None
        if parsed.version == version:
            out.append(str(parsed))
    return out


def _protocol(name: str | None, version: int) -> str | None:
    if name is None:
        return None
    p = name.strip().lower()
    p = _PROTO_NUMBERS.get(p, p)
    if p in ("icmpv6", "ipv6-icmp"):
        return "ipv6-icmp" if version == 6 else "ipv6-icmp-on-v4"
    if p == "icmp" and version == 6:
        return "icmp-on-v6"
    if p.isdigit() and 0 <= int(p) <= 255:
        return p
    if p in PORT_PROTOCOLS or p in ("icmp", "ah", "esp", "gre", "ipip", "ospf", "igmp", "pim", "vrrp"):
        return p
    raise _Unenforceable(f"unknown protocol {name!r}")


def _port_groups(ports: Sequence[PortRange]) -> list[str]:
    """multiport argument strings, at most 15 slots each."""
    groups: list[str] = []
    current: list[str] = []
    slots = 0
    for pr in ports:
        if not (0 <= pr.first <= pr.last <= 65535):
            raise _Unenforceable(f"bad port range {pr.first}-{pr.last}")
        need = 1 if pr.first == pr.last else 2
        if slots + need > _MAX_PORT_SLOTS:
            groups.append(",".join(current))
            current, slots = [], 0
        current.append(str(pr.first) if need == 1 else f"{pr.first}:{pr.last}")
        slots += need
    if current:
        groups.append(",".join(current))
    return groups


def _sanitize(rule: Rule, version: int, problems: list[str]) -> Rule | None:
    """Drop constraints that cannot be enforced (reported); None if the rule must be dropped."""
    fixes: dict[str, object] = {}
    trouble: list[str] = []

    checks: list[tuple[str, Callable[[Rule], object]]] = [
        ("protocol", lambda r: _protocol(r.protocol, version)),
        ("not_protocol", lambda r: _protocol(r.not_protocol, version)),
    ]
    for name in ("src_nets", "not_src_nets", "dst_nets", "not_dst_nets"):
        checks.append((name, lambda r, n=name: _family_nets(getattr(r, n), version)))  # type: ignore[misc]
    for name in ("src_ports", "not_src_ports", "dst_ports", "not_dst_ports"):
        checks.append((name, lambda r, n=name: _port_groups(getattr(r, n))))  # type: ignore[misc]
    for fieldname, check in checks:
        try:
            check(rule)
        except _Unenforceable as exc:
            trouble.append(f"{fieldname}: {exc}")
            fixes[fieldname] = None if fieldname.endswith("protocol") else ()
    rule = replace(rule, **fixes) if fixes else rule  # type: ignore[arg-type]
    proto = None if rule.protocol is None else _protocol(rule.protocol, version)
    has_ports = any(
        getattr(rule, f"{neg}{side}_{kind}")
        for neg in ("", "not_")
        for side in ("src", "dst")
        for kind in ("ports", "named_port_ip_set_ids")
    )
    if has_ports and proto not in PORT_PROTOCOLS:
        trouble.append(f"ports need tcp, udp or sctp, not {rule.protocol!r}")
        rule = replace(
            rule,
            src_ports=(),
            not_src_ports=(),
            dst_ports=(),
            not_dst_ports=(),
            src_named_port_ip_set_ids=(),
            not_src_named_port_ip_set_ids=(),
            dst_named_port_ip_set_ids=(),
            not_dst_named_port_ip_set_ids=(),
        )
    has_icmp = any(x is not None for x in (rule.icmp_type, rule.icmp_code, rule.not_icmp_type, rule.not_icmp_code))
    if has_icmp and proto not in ("icmp", "ipv6-icmp", "icmp-on-v6", "ipv6-icmp-on-v4"):
        trouble.append(f"ICMP type/code needs protocol icmp or icmpv6, not {rule.protocol!r}")
        rule = replace(rule, icmp_type=None, icmp_code=None, not_icmp_type=None, not_icmp_code=None)
    for t, c in ((rule.icmp_type, rule.icmp_code), (rule.not_icmp_type, rule.not_icmp_code)):
        if (t is not None and not 0 <= t <= 255) or (c is not None and (t is None or not 0 <= c <= 255)):
            trouble.append(f"bad ICMP type/code {t}/{c}")
            rule = replace(rule, icmp_type=None, icmp_code=None, not_icmp_type=None, not_icmp_code=None)
            break
    if trouble:
        what = f"rule {rule.rule_id or '(no id)'}: " + "; ".join(trouble)
        if rule.action != "deny":
            problems.append(what + " (rule left out)")
            return None
        problems.append(what + " (denying without that constraint)")
    return rule


def _icmp(version: int, t: int, c: int | None, negate: bool) -> str:
    mod, opt = ("-m icmp", "--icmp-type") if version == 4 else ("-m icmp6", "--icmpv6-type")
    value = str(t) if c is None else f"{t}/{c}"
    return f"{mod} {'! ' if negate else ''}{opt} {value}"


class _Blocks:
    """Builds the match-block prologue (see the design note)."""

    def __init__(self, marks: Marks) -> None:
        self.all, self.this = marks.scratch0, marks.scratch1
        self.rules: list[str] = []
        self.used = False
        self.positive_done = False

    def _start(self, all_initially: bool) -> None:
        if not self.used:
            self.used = True
            both = self.all | self.this
            self.rules.append(f"-j MARK --set-xmark {(self.all if all_initially else 0):#x}/{both:#x}")

    def positive(self, alternatives: Sequence[str]) -> None:
        self._start(all_initially=False)
        if not self.positive_done:
            self.rules.extend(f"{alt} {mark_set(self.all)}" for alt in alternatives)
            self.positive_done = True
            return
        self.rules.append(mark_clear(self.this))
        self.rules.extend(f"{alt} {mark_set(self.this)}" for alt in alternatives)
        self.rules.append(f"{match_mark_clear(self.this)} {mark_clear(self.all)}")

    def negative(self, alternatives: Sequence[str]) -> None:
        # A negative block can only come first if there is no positive one, see render_rule.
        self._start(all_initially=True)
        self.rules.extend(f"{alt} {mark_clear(self.all)}" for alt in alternatives)


def render_rule(rule: Rule, ctx: RuleContext) -> list[str]:
    """The iptables rule texts (without ``-A chain`` and hash comment) for ``rule``; [] if none."""
    if rule.ip_version is not None and rule.ip_version != ctx.version:
        return []
    clean = _sanitize(rule, ctx.version, ctx.problems)
    if clean is None:
        return []
    rule, v = clean, ctx.version
    src_nets = _family_nets(rule.src_nets, v)
    dst_nets = _family_nets(rule.dst_nets, v)
    not_src = _family_nets(rule.not_src_nets, v)
    not_dst = _family_nets(rule.not_dst_nets, v)
    if (rule.src_nets and not src_nets) or (rule.dst_nets and not dst_nets):
        return []  # only other-family CIDRs: the rule cannot match this family
    catch_all = "0.0.0.0/0" if v == 4 else "::/0"
    if catch_all in not_src or catch_all in not_dst:
        return []  # "not anything" matches nothing
    proto = None if rule.protocol is None else _protocol(rule.protocol, v)
    not_proto = None if rule.not_protocol is None else _protocol(rule.not_protocol, v)
    if proto in ("icmp-on-v6", "ipv6-icmp-on-v4"):
        return []  # an ICMP rule of the other family
    if not_proto in ("icmp-on-v6", "ipv6-icmp-on-v4"):
        not_proto = None  # "not ICMPv6" is true of every IPv4 packet
    if proto is not None and not_proto is not None:
        if proto == not_proto:
            return []
        not_proto = None  # protocol P already excludes Q

    def setname(set_id: str, named: bool) -> str:
        name = ctx.set_name(set_id, named)
        ctx.sets_used.add(name)
        return name

    blocks = _Blocks(ctx.marks)
    # Any-of groups that do not fit one rule become positive blocks, positive blocks first.
    src_alts = [f"-p {proto} -m multiport --source-ports {g}" for g in _port_groups(rule.src_ports)]
    src_alts += [f"-m set --match-set {setname(s, True)} src,src" for s in rule.src_named_port_ip_set_ids]
    dst_alts = [f"-p {proto} -m multiport --destination-ports {g}" for g in _port_groups(rule.dst_ports)]
    dst_alts += [f"-m set --match-set {setname(s, True)} dst,dst" for s in rule.dst_named_port_ip_set_ids]
    inline_src_port = inline_dst_port = ""
    for alts, side in ((src_alts, "src"), (dst_alts, "dst")):
        if len(alts) > 1:
            blocks.positive(alts)
        elif alts:
            frag = alts[0].removeprefix(f"-p {proto} ")
            if side == "src":
                inline_src_port = frag
            else:
                inline_dst_port = frag
    if len(src_nets) > 1:
        blocks.positive([f"--source {n}" for n in src_nets])
        src_nets = []
    if len(dst_nets) > 1:
        blocks.positive([f"--destination {n}" for n in dst_nets])
        dst_nets = []
    if len(src_nets) + len(not_src) > 1:
        blocks.negative([f"--source {n}" for n in not_src])
        not_src = []
    if len(dst_nets) + len(not_dst) > 1:
        blocks.negative([f"--destination {n}" for n in not_dst])
        not_dst = []

    m: list[str] = []
    if proto is not None:
        m.append(f"-p {proto}")
    if src_nets:
        m.append(f"--source {src_nets[0]}")
    m += [f"-m set --match-set {setname(s, False)} src" for s in rule.src_ip_set_ids]
    if inline_src_port:
        m.append(inline_src_port)
    if dst_nets:
        m.append(f"--destination {dst_nets[0]}")
    m += [f"-m set --match-set {setname(s, False)} dst" for s in rule.dst_ip_set_ids]
    if inline_dst_port:
        m.append(inline_dst_port)
    if rule.icmp_type is not None:
        m.append(_icmp(v, rule.icmp_type, rule.icmp_code, negate=False))
    if not_proto is not None:
        m.append(f"! -p {not_proto}")
    if not_src:
        m.append(f"! --source {not_src[0]}")
    m += [f"-m set ! --match-set {setname(s, False)} src" for s in rule.not_src_ip_set_ids]
    m += [f"-m multiport ! --source-ports {g}" for g in _port_groups(rule.not_src_ports)]
    m += [f"-m set ! --match-set {setname(s, True)} src,src" for s in rule.not_src_named_port_ip_set_ids]
    if not_dst:
        m.append(f"! --destination {not_dst[0]}")
    m += [f"-m set ! --match-set {setname(s, False)} dst" for s in rule.not_dst_ip_set_ids]
    m += [f"-m multiport ! --destination-ports {g}" for g in _port_groups(rule.not_dst_ports)]
    m += [f"-m set ! --match-set {setname(s, True)} dst,dst" for s in rule.not_dst_named_port_ip_set_ids]
    if rule.not_icmp_type is not None:
        m.append(_icmp(v, rule.not_icmp_type, rule.not_icmp_code, negate=True))
    if blocks.used:
        m.append(match_mark_set(blocks.all))
    match = " ".join(m)
    out = list(blocks.rules)
    lead = match + " " if match else ""
    if rule.action == "allow":
        out += [lead + mark_set(ctx.marks.accept), f"{match_mark_set(ctx.marks.accept)} -j RETURN"]
    elif rule.action == "pass":
        out += [lead + mark_set(ctx.marks.pass_), f"{match_mark_set(ctx.marks.pass_)} -j RETURN"]
    elif rule.action == "deny":
        out.append(lead + ctx.deny)
    elif rule.action == "log":
        out.append(lead + f'-j LOG --log-prefix "{ctx.log_prefix}: " --log-level 5')
    else:
        ctx.problems.append(f"rule {rule.rule_id or '(no id)'}: unknown action {rule.action!r} (rule left out)")
        return []
    return out
