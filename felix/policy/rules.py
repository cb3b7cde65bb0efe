"""Render a policy or profile value (typha's flat v1 form) into the contract's ``Policy`` and ``Rule``s.

Design note
-----------
Pure and per policy: rendering needs nothing but the value, because every selector becomes the id
of an ip set named after its canonical text (:mod:`felix.policy.ipsets`). The result carries the
ip sets it refers to, so the calculation can reference-count them without parsing anything again;
a policy is therefore parsed once per edit, never per endpoint or per label change.

Validation is strict where a mistake would change what is allowed, and every failure names the
policy's field, so ``PolicyRejected`` tells the user what to fix: bad selectors, CIDRs, ports,
protocols, ICMP fields, an ip version that contradicts the rule's nets or protocol, ports on a
protocol without ports. Fields this dataplane cannot enforce (``srcService``/``dstService``,
``http``, and any field it does not know) never widen what is allowed (the contract's rule): an allow, pass or log rule carrying
them is dropped -- a rule that matches nothing is the same as no rule -- and a deny rule keeps the
constraints it can enforce, so it denies at least what was asked.

Rule ids are a hash of the owner, direction, position and content, stable across restarts (the
dataplane comments and counts rules by them), and changing whenever the rule does.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from felix.model import parse_net

from .ipsets import IpSetSpec, named_port_set, selector_set
from .messages import Action, Policy, PortRange, Rule
from .selector import ALL, Selector, SelectorError, parse

__all__ = ["ParsedPolicy", "RenderError", "render_policy", "render_profile"]

_ACTIONS: dict[str, Action] = {"allow": "allow", "deny": "deny", "pass": "pass", "next-tier": "pass", "log": "log"}
_PROTO_NAMES = {"tcp": "tcp", "udp": "udp", "sctp": "sctp", "icmp": "icmp", "icmpv6": "icmpv6", "udplite": "136"}
_PROTO_NUMBERS = {1: "icmp", 6: "tcp", 17: "udp", 58: "icmpv6", 132: "sctp"}
_PORT_PROTOCOLS = ("tcp", "udp", "sctp", "136")
_UNENFORCEABLE = ("srcService", "dstService", "http")
# Every field typha writes (docs/datastore.md); a field outside this list is one this agent does
# not know how to enforce, handled like the unenforceable ones rather than silently ignored.
_KNOWN = frozenset(
    [
        "action",
        "ipVersion",
        "protocol",
        "notProtocol",
        "icmpType",
        "icmpCode",
        "notIcmpType",
        "notIcmpCode",
        "srcNets",
        "notSrcNets",
        "srcSelector",
        "notSrcSelector",
        "srcPorts",
        "notSrcPorts",
        "dstNets",
        "notDstNets",
        "dstSelector",
        "notDstSelector",
        "dstPorts",
        "notDstPorts",
    ]
)
_MAX_RULES = 10_000  # per direction: bounded work for one object


class RenderError(ValueError):
    """A policy or profile that cannot be rendered; the message is the reason users see."""


@dataclass(frozen=True, slots=True)
class ParsedPolicy:
    tier: str
    order: float | None
    selector: Selector
    ingress: bool  # types
    egress: bool
    policy: Policy
    ip_sets: frozenset[IpSetSpec]
    untracked_or_pre_dnat: bool  # applies to host endpoints only (not handled by this dataplane)


def _protocol(v: Any, what: str) -> str | None:
    if v is None:
        return None
    if isinstance(v, bool):
        raise RenderError(f"{what}: bad protocol {v!r}")
    if isinstance(v, str) and v.isdigit():
        v = int(v)
    if isinstance(v, int):
        if not 0 <= v <= 255:
            raise RenderError(f"{what}: protocol number {v} outside 0-255")
        return _PROTO_NAMES.get(_PROTO_NUMBERS.get(v, ""), str(v))
    if isinstance(v, str) and v.lower() in _PROTO_NAMES:
        return _PROTO_NAMES[v.lower()]
    raise RenderError(f"{what}: unknown protocol {v!r}")


def _nets(v: Any, what: str) -> tuple[str, ...]:
    if v is None:
        return ()
    if not isinstance(v, list):
        raise RenderError(f"{what} is not a list")
    out = []
    for n in v:
        try:
            out.append(str(parse_net(n)))
        except ValueError as e:
            raise RenderError(f"{what}: {e}") from None
    return tuple(dict.fromkeys(out))


def _selector(v: Any, what: str) -> Selector | None:
    if v is None or v == "":
        return None
    if not isinstance(v, str):
        raise RenderError(f"{what} is not a string")
    try:
        return parse(v)
    except SelectorError as e:
        raise RenderError(f"{what}: {e}") from None


def _ports(v: Any, what: str) -> tuple[list[PortRange], list[str]]:
    """(numeric ranges, names) of a ports list: 80, "8000:8080", "http"."""
    if v is None:
        return [], []
    if not isinstance(v, list):
        raise RenderError(f"{what} is not a list")
    ranges, names = [], []
    for p in v:
        if isinstance(p, bool) or not isinstance(p, (int, str)):
            raise RenderError(f"{what}: bad port {p!r}")
        if isinstance(p, str) and not p[:1].isdigit():
            if not p or len(p) > 15 or ":" in p:
                raise RenderError(f"{what}: bad port name {p!r}")
            names.append(p)
            continue
        lo_s, _, hi_s = str(p).partition(":")
        if not lo_s.isdigit() or (hi_s and not hi_s.isdigit()):
            raise RenderError(f"{what}: bad port {p!r}")
        lo, hi = int(lo_s), int(hi_s or lo_s)
        if not 0 <= lo <= hi <= 65535:
            raise RenderError(f"{what}: bad port range {p!r}")
        ranges.append(PortRange(lo, hi))
    return ranges, names


def _int(v: Any, what: str, top: int) -> int | None:
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v <= top:
        raise RenderError(f"{what}: {v!r} is not a number 0-{top}")
    return v


def _version_of(net: str) -> int:
    return 6 if ":" in net else 4


class _RuleBuilder:
    """Renders one rule, collecting the ip sets it uses."""

    def __init__(self, owner: str, direction: str, index: int, raw: Mapping[str, Any], sets: set[IpSetSpec]) -> None:
        self.where = f"{direction} rule {index}"
        self.raw = raw
        self.sets = sets
        content = orjson.dumps(raw, option=orjson.OPT_SORT_KEYS)
        self.rule_id = hashlib.blake2b(
            b"%s|%s|%d|%s" % (owner.encode(), direction.encode(), index, content), digest_size=12
        ).hexdigest()

    def field(self, name: str) -> str:
        return f"{self.where}: {name}"

    def build(self) -> Rule | None:
        r = self.raw
        action = _ACTIONS.get(str(r.get("action", "")).lower())
        if action is None:
            raise RenderError(f"{self.where}: unknown action {r.get('action')!r}")
        if action != "deny" and (any(r.get(f) for f in _UNENFORCEABLE) or not _KNOWN.issuperset(r)):
            return None  # cannot be enforced: matching nothing is the safe reading (fail closed)
        ip_version = r.get("ipVersion")
        if ip_version is not None and ip_version not in (4, 6):
            raise RenderError(f"{self.field('ipVersion')}: must be 4 or 6, not {ip_version!r}")
        protocol = _protocol(r.get("protocol"), self.field("protocol"))
        not_protocol = _protocol(r.get("notProtocol"), self.field("notProtocol"))
        icmp = self.icmp(protocol)
        if protocol in ("icmp", "icmpv6"):
            implied = 4 if protocol == "icmp" else 6
            if ip_version not in (None, implied):
                raise RenderError(f"{self.where}: protocol {protocol} contradicts ipVersion {ip_version}")
        out: dict[str, Any] = {"action": action, "ip_version": ip_version, "protocol": protocol}
        out["not_protocol"] = not_protocol
        out.update(icmp)
        for side in ("src", "dst"):
            out.update(self.side(side, protocol))
        nets = [n for k, v in out.items() if k.endswith("_nets") for n in v]
        versions = {_version_of(n) for n in nets}
        if ip_version is not None and versions - {ip_version}:
            raise RenderError(f"{self.where}: nets of another ip version than ipVersion {ip_version}")
        return Rule(**out, rule_id=self.rule_id)

    def icmp(self, protocol: str | None) -> dict[str, int | None]:
        r = self.raw
        out = {
            "icmp_type": _int(r.get("icmpType"), self.field("icmpType"), 255),
            "icmp_code": _int(r.get("icmpCode"), self.field("icmpCode"), 255),
            "not_icmp_type": _int(r.get("notIcmpType"), self.field("notIcmpType"), 255),
            "not_icmp_code": _int(r.get("notIcmpCode"), self.field("notIcmpCode"), 255),
        }
        if any(v is not None for v in out.values()) and protocol not in ("icmp", "icmpv6"):
            raise RenderError(f"{self.where}: ICMP type/code need protocol icmp or icmpv6")
        for code, typ in (("icmp_code", "icmp_type"), ("not_icmp_code", "not_icmp_type")):
            if out[code] is not None and out[typ] is None:
                raise RenderError(f"{self.where}: an ICMP code needs an ICMP type")
        return out

    def side(self, side: str, protocol: str | None) -> dict[str, Any]:
        r = self.raw
        sel = _selector(r.get(f"{side}Selector"), self.field(f"{side}Selector"))
        not_sel = _selector(r.get(f"not{side.title()}Selector"), self.field(f"not{side.title()}Selector"))
        ports, names = _ports(r.get(f"{side}Ports"), self.field(f"{side}Ports"))
        not_ports, not_names = _ports(r.get(f"not{side.title()}Ports"), self.field(f"not{side.title()}Ports"))
        if (ports or names or not_ports or not_names) and protocol not in _PORT_PROTOCOLS:
            raise RenderError(f"{self.where}: ports need protocol tcp, udp or sctp, not {protocol or 'any'}")
        out: dict[str, Any] = {
            f"{side}_nets": _nets(r.get(f"{side}Nets"), self.field(f"{side}Nets")),
            f"not_{side}_nets": _nets(r.get(f"not{side.title()}Nets"), self.field(f"not{side.title()}Nets")),
            f"{side}_ports": tuple(ports),
            f"not_{side}_ports": tuple(not_ports),
        }
        ids, not_ids = [], []
        if sel is not None:
            ids.append(self.use(selector_set(sel)))
        if not_sel is not None:
            not_ids.append(self.use(selector_set(not_sel)))
        out[f"{side}_ip_set_ids"] = tuple(ids)
        out[f"not_{side}_ip_set_ids"] = tuple(not_ids)
        # Named ports resolve on the endpoints this side's selector matches (all() without one).
        base = sel or ALL
        assert protocol is not None or not (names or not_names)
        out[f"{side}_named_port_ip_set_ids"] = tuple(
            self.use(named_port_set(base, protocol or "", n)) for n in dict.fromkeys(names)
        )
        out[f"not_{side}_named_port_ip_set_ids"] = tuple(
            self.use(named_port_set(base, protocol or "", n)) for n in dict.fromkeys(not_names)
        )
        return out

    def use(self, spec: IpSetSpec) -> str:
        self.sets.add(spec)
        return spec.id


def _rules(owner: str, direction: str, v: Any, sets: set[IpSetSpec]) -> tuple[Rule, ...]:
    if v is None:
        return ()
    if not isinstance(v, list):
        raise RenderError(f"{direction} rules are not a list")
    if len(v) > _MAX_RULES:
        raise RenderError(f"more than {_MAX_RULES} {direction} rules")
    out = []
    for i, raw in enumerate(v):
        if not isinstance(raw, dict):
            raise RenderError(f"{direction} rule {i} is not an object")
        rule = _RuleBuilder(owner, direction, i, raw, sets).build()
        if rule is not None:
            out.append(rule)
    return tuple(out)


def render_profile(name: str, value: Mapping[str, Any]) -> tuple[Policy, frozenset[IpSetSpec]]:
    sets: set[IpSetSpec] = set()
    policy = Policy(
        inbound_rules=_rules(name, "inbound", value.get("inboundRules"), sets),
        outbound_rules=_rules(name, "outbound", value.get("outboundRules"), sets),
    )
    return policy, frozenset(sets)


def render_policy(name: str, value: Mapping[str, Any]) -> ParsedPolicy:
    """A policy value -> ParsedPolicy; raises RenderError with the reason it cannot be used."""
    sets: set[IpSetSpec] = set()
    tier = value.get("tier") or "default"
    if not isinstance(tier, str):
        raise RenderError("tier is not a string")
    order = value.get("order")
    if order is not None and (isinstance(order, bool) or not isinstance(order, (int, float)) or order != order):
        raise RenderError(f"bad order {order!r}")
    selector = _selector(value.get("selector"), "selector") or ALL
    types = value.get("types")
    if types is None:
        types = ["ingress"] if value.get("inboundRules") or not value.get("outboundRules") else []
        types += ["egress"] if value.get("outboundRules") else []
    if not isinstance(types, list) or not all(isinstance(t, str) for t in types):
        raise RenderError("types is not a list of strings")
    lowered = {t.lower() for t in types}
    if lowered - {"ingress", "egress"}:
        raise RenderError(f"unknown policy types {sorted(lowered - {'ingress', 'egress'})}")
    policy = Policy(
        inbound_rules=_rules(name, "inbound", value.get("inboundRules"), sets),
        outbound_rules=_rules(name, "outbound", value.get("outboundRules"), sets),
        untracked=bool(value.get("doNotTrack")),
        pre_dnat=bool(value.get("preDNAT")),
        apply_on_forward=bool(value.get("applyOnForward", True)),
    )
    return ParsedPolicy(
        tier=tier,
        order=float(order) if order is not None else None,
        selector=selector,
        ingress="ingress" in lowered,
        egress="egress" in lowered,
        policy=policy,
        ip_sets=frozenset(sets),
        untracked_or_pre_dnat=policy.untracked or policy.pre_dnat,
    )
