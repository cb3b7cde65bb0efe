"""Policy rules: Calico v3 rules flattened for agents, and Kubernetes NetworkPolicy converted to Calico's.

Two conversions, both Calico's own: `rule_to_v1` is RuleAPIV2ToBackend (a v3 rule with nested
source/destination entity rules becomes one flat record with selectors already resolved), and
`k8s_network_policy_to_calico` is K8sNetworkPolicyToCalico (one Calico rule per protocol and peer,
numeric ports merged into ranges). A Kubernetes policy goes through both, so agents see one form.
"""

from __future__ import annotations

from typing import Any

from .calico import K8S_POLICY_ORDER
from .fields import ProjectionError, Value, compact, field_dict, field_list, namespaced_identity, network, networks
from .selectors import entity_selector, k8s_selector

_ACTIONS = {"allow": "allow", "deny": "deny", "log": "log", "pass": "pass", "next-tier": "pass"}


def protocol_field(p: Any) -> Any:
    if p is None:
        return None
    if isinstance(p, str):
        return int(p) if p.isdigit() else p.lower()
    if isinstance(p, int) and not isinstance(p, bool):
        return p
    raise ProjectionError(f"bad protocol {p!r}")


def _ports(v: Any, what: str) -> list:
    out = []
    for p in field_list(v, what):
        if isinstance(p, bool) or not isinstance(p, (int, str)):
            raise ProjectionError(f"{what}: bad port {p!r}")
        out.append(int(p) if isinstance(p, str) and p.isdigit() else p)
    return out


def rule_to_v1(rule: Any, ns: str | None) -> Value:
    """A Calico v3 API rule -> the flattened form agents evaluate (Calico's RuleAPIV2ToBackend)."""
    r = field_dict(rule, "rule")
    action = _ACTIONS.get(str(r.get("action", "")).lower())
    if action is None:
        raise ProjectionError(f"rule has bad action {r.get('action')!r}")
    src = field_dict(r.get("source"), "rule.source")
    dst = field_dict(r.get("destination"), "rule.destination")
    icmp = field_dict(r.get("icmp"), "rule.icmp")
    nicmp = field_dict(r.get("notICMP"), "rule.notICMP")
    out: Value = {
        "action": action,
        "ipVersion": r.get("ipVersion"),
        "protocol": protocol_field(r.get("protocol")),
        "notProtocol": protocol_field(r.get("notProtocol")),
        "icmpType": icmp.get("type"),
        "icmpCode": icmp.get("code"),
        "notIcmpType": nicmp.get("type"),
        "notIcmpCode": nicmp.get("code"),
        "srcNets": networks(src.get("nets"), "source.nets"),
        "notSrcNets": networks(src.get("notNets"), "source.notNets"),
        "srcSelector": entity_selector(src, ns),
        "notSrcSelector": src.get("notSelector"),
        "srcPorts": _ports(src.get("ports"), "source.ports"),
        "notSrcPorts": _ports(src.get("notPorts"), "source.notPorts"),
        "dstNets": networks(dst.get("nets"), "destination.nets"),
        "notDstNets": networks(dst.get("notNets"), "destination.notNets"),
        "dstSelector": entity_selector(dst, ns),
        "notDstSelector": dst.get("notSelector"),
        "dstPorts": _ports(dst.get("ports"), "destination.ports"),
        "notDstPorts": _ports(dst.get("notPorts"), "destination.notPorts"),
        # Kept (not dropped) so an agent that cannot enforce them can fail closed rather than
        # silently treating the rule as broader than it is.
        "srcService": src.get("services"),
        "dstService": dst.get("services"),
        "http": r.get("http"),
    }
    return compact(out)


def rules_to_v1(v: Any, ns: str | None, what: str) -> list[Value]:
    return [rule_to_v1(r, ns) for r in field_list(v, what)]


# --------------------------------------------------------------------------------------------
# Kubernetes NetworkPolicy -> Calico v3 rules (Calico's K8sNetworkPolicyToCalico)
# --------------------------------------------------------------------------------------------


def _simplify_ports(ports: list) -> list:
    """Merge numeric ports into ranges (Calico's SimplifyPorts): [80, 81, 'http'] -> ['http', '80:81']."""
    if len(ports) <= 1:
        return ports
    named, numeric = [], []
    for p in ports:
        if isinstance(p, int):
            numeric.append(p)
        elif ":" in p:
            lo, hi = p.split(":", 1)
            numeric.extend(range(int(lo), int(hi) + 1))
        else:
            named.append(p)
    if len(numeric) <= 1:
        return ports
    numeric.sort()
    out: list = list(named)
    i = 0
    while i < len(numeric):
        lo = hi = numeric[i]
        i += 1
        while i < len(numeric) and numeric[i] <= hi + 1:
            hi = numeric[i]
            i += 1
        out.append(lo if lo == hi else f"{lo}:{hi}")
    return out


_MAX_PORT = 65535


def _k8s_port(p: dict) -> tuple[str, list | None]:
    proto = p.get("protocol") or "TCP"  # TCP is the documented default
    port = p.get("port")
    if port is None:
        return proto, None  # all ports of this protocol
    if isinstance(port, bool) or not isinstance(port, (int, str)):
        raise ProjectionError(f"bad NetworkPolicy port {port!r}")
    s = str(port)
    end = p.get("endPort")
    if end is not None:
        s = f"{s}:{int(end)}"
    if s.isdigit():
        if int(s) > _MAX_PORT:
            raise ProjectionError(f"NetworkPolicy port {s} is above {_MAX_PORT}")
        return proto, [int(s)]
    if ":" in s:
        # Checked to the end: merging ranges expands them, so an unbounded one would be a huge list.
        lo, hi = s.split(":", 1)
        if not (lo.isdigit() and hi.isdigit()) or not int(lo) <= int(hi) <= _MAX_PORT:
            raise ProjectionError(f"bad NetworkPolicy port range {s!r}")
    return proto, [s]


def _k8s_rules(peers_v: Any, ports_v: Any, ingress: bool) -> list[dict]:
    peers: list = [field_dict(p, "peer") for p in field_list(peers_v, "peers")] or [None]
    proto_ports: dict[str, list | None] = {}
    port_list = [field_dict(p, "port") for p in field_list(ports_v, "ports")]
    if not port_list:
        proto_ports = {"": None}
    for p in port_list:
        proto, ports = _k8s_port(p)
        if ports is None:
            proto_ports[proto] = None
        elif proto not in proto_ports or proto_ports[proto]:
            # Don't narrow an earlier "all ports" (None) for this protocol.
            proto_ports[proto] = (proto_ports.get(proto) or []) + ports
    rules = []
    for proto in sorted(proto_ports):
        ports = _simplify_ports(proto_ports[proto] or [])
        for peer in peers:
            ent: dict = {}
            if peer is not None:
                block = peer.get("ipBlock")
                if block is not None:
                    block = field_dict(block, "ipBlock")
                    ent["nets"] = [network(block.get("cidr"), "ipBlock.cidr")]
                    ent["notNets"] = networks(block.get("except"), "ipBlock.except")
                else:
                    ent["selector"] = k8s_selector(peer.get("podSelector"), True, "podSelector")
                    ent["namespaceSelector"] = k8s_selector(peer.get("namespaceSelector"), False, "namespaceSelector")
            rule: dict = {"action": "Allow"}
            if proto:
                rule["protocol"] = proto
            if ingress:
                rule["source"] = ent
                rule["destination"] = {"ports": ports}
            else:
                ent["ports"] = ports
                rule["destination"] = ent
            rules.append(rule)
    return rules


def k8s_network_policy_to_calico(obj: dict) -> dict:
    """A Kubernetes NetworkPolicy as the equivalent Calico v3 NetworkPolicy spec."""
    _name, _ns, _ = namespaced_identity(obj)
    spec = field_dict(obj.get("spec"), "spec")
    ingress = [
        r
        for e in field_list(spec.get("ingress"), "spec.ingress")
        for r in _k8s_rules(field_dict(e, "ingress").get("from"), e.get("ports"), True)
    ]
    egress = [
        r
        for e in field_list(spec.get("egress"), "spec.egress")
        for r in _k8s_rules(field_dict(e, "egress").get("to"), e.get("ports"), False)
    ]
    ptypes = field_list(spec.get("policyTypes"), "spec.policyTypes")
    types = [t for t in ("Ingress", "Egress") if t in ptypes] or ["Ingress"]
    return {
        "order": K8S_POLICY_ORDER,
        "selector": k8s_selector(spec.get("podSelector"), True, "podSelector"),
        "ingress": ingress,
        "egress": egress,
        "types": types,
    }
