"""Kubernetes / Calico objects -> key/value updates for Typha's cache.

Design note
-----------
Each watched object is *projected*: a pure function builds, from scratch, a small
JSON-able dict holding only the fields agents act on, under a key modelled on
Calico's v1 data model (see :mod:`protocol.keys`).  Building the value up from
an allow-list, rather than copying the object and deleting known noise
(managedFields, status conditions, resourceVersion, ...), is deliberate:

* Typha drops an update whose encoded value equals the stored one, so any field
  that changes without meaning (heartbeats, probe timestamps, revision counters,
  annotations added by other controllers) would be fanned out to every agent.  An
  allow-list is immune to noise nobody thought of; a deny-list is not.
* Values stay a few hundred bytes, which is what every agent stores and what every
  snapshot carries.

Semantics follow Calico's KDD conversion plus its "v1" update processors, folded
into one step: a Kubernetes NetworkPolicy becomes a Calico policy
``knp.default.<name>`` at order 1000, and every selector is emitted already
resolved the way Felix consumes it (namespace restrictions ANDed in, namespace and
service-account selectors rewritten onto the ``pcns.``/``pcsa.`` profile labels).
Agents therefore never need the namespace of a rule to evaluate it.

Deliberate differences from Calico, each to keep values stable or small:

* One key per profile (labels and rules together) and one per node, FelixConfiguration,
  ClusterInformation, BGPPeer and BGPConfiguration, instead of Calico's per-field
  config keys.
* An IPAMBlock's value lists only the allocations that belong to a node *other*
  than the block's affine node ("borrowed" addresses, which need /32 routes).
  Allocations by the affine node itself change nothing an agent programs (the
  whole block is routed to that node), so pod churn inside a node's own block
  projects to an identical value and is suppressed by Typha instead of being sent
  to every node.

Errors: a malformed object raises :class:`ProjectionError`; the caller counts and
skips it.  Missing optional fields never raise.  One object may map to several
keys; callers that must cope with an object's key set changing (none of the
resources here do so during an object's life) can diff successive key sets.
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
import socket
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from protocol import keys as K

Value = dict[str, Any]
Update = tuple[str, Value | None]

FELIX, BGP = K.SYNCER_FELIX, K.SYNCER_BGP


class ProjectionError(ValueError):
    """The object cannot be projected (missing identity, unparseable address, ...)."""


# --------------------------------------------------------------------------------------------
# Resource table
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Resource:
    name: str  # our identifier, used by project()/project_delete()
    kind: str
    group: str  # "" for the core API group
    version: str
    plural: str
    namespaced: bool
    syncers: frozenset[str]

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    def path(self, namespace: str | None = None) -> str:
        """REST collection path, e.g. ``/api/v1/pods`` or ``/apis/crd.projectcalico.org/v1/ippools``."""
        base = f"/apis/{self.group}/{self.version}" if self.group else f"/api/{self.version}"
        if namespace is not None and self.namespaced:
            return f"{base}/namespaces/{namespace}/{self.plural}"
        return f"{base}/{self.plural}"


_CRD = "crd.projectcalico.org"
_F = frozenset({FELIX})
_FB = frozenset({FELIX, BGP})
_B = frozenset({BGP})

RESOURCES: dict[str, Resource] = {
    r.name: r
    for r in (
        Resource("nodes", "Node", "", "v1", "nodes", False, _FB),
        Resource("pods", "Pod", "", "v1", "pods", True, _F),
        Resource("namespaces", "Namespace", "", "v1", "namespaces", False, _F),
        Resource("serviceaccounts", "ServiceAccount", "", "v1", "serviceaccounts", True, _F),
        Resource("networkpolicies", "NetworkPolicy", "networking.k8s.io", "v1", "networkpolicies", True, _F),
        Resource("globalnetworkpolicies", "GlobalNetworkPolicy", _CRD, "v1", "globalnetworkpolicies", False, _F),
        # Named apart from the Kubernetes kind of the same plural.
        Resource("calico-networkpolicies", "NetworkPolicy", _CRD, "v1", "networkpolicies", True, _F),
        Resource("globalnetworksets", "GlobalNetworkSet", _CRD, "v1", "globalnetworksets", False, _F),
        Resource("networksets", "NetworkSet", _CRD, "v1", "networksets", True, _F),
        Resource("ippools", "IPPool", _CRD, "v1", "ippools", False, _FB),
        Resource("blockaffinities", "BlockAffinity", _CRD, "v1", "blockaffinities", False, _FB),
        Resource("ipamblocks", "IPAMBlock", _CRD, "v1", "ipamblocks", False, _F),
        Resource("hostendpoints", "HostEndpoint", _CRD, "v1", "hostendpoints", False, _F),
        Resource("felixconfigurations", "FelixConfiguration", _CRD, "v1", "felixconfigurations", False, _F),
        Resource("clusterinformations", "ClusterInformation", _CRD, "v1", "clusterinformations", False, _F),
        Resource("bgppeers", "BGPPeer", _CRD, "v1", "bgppeers", False, _B),
        Resource("bgpconfigurations", "BGPConfiguration", _CRD, "v1", "bgpconfigurations", False, _B),
    )
}

SYNCER_TYPES = K.SYNCER_TYPES


def resources_for_syncer(syncer: str) -> list[Resource]:
    """Resources a cache of ``syncer`` type must watch, in table order."""
    if syncer not in SYNCER_TYPES:
        raise ValueError(f"unknown syncer type {syncer!r}")
    return [r for r in RESOURCES.values() if syncer in r.syncers]


# --------------------------------------------------------------------------------------------
# Calico constants
# --------------------------------------------------------------------------------------------

LABEL_NAMESPACE = "projectcalico.org/namespace"
LABEL_ORCHESTRATOR = "projectcalico.org/orchestrator"
LABEL_SERVICE_ACCOUNT = "projectcalico.org/serviceaccount"
LABEL_NAME = "projectcalico.org/name"
NS_LABEL_PREFIX = "pcns."
SA_LABEL_PREFIX = "pcsa."
NS_PROFILE_PREFIX = "kns."
SA_PROFILE_PREFIX = "ksa."
K8S_POLICY_PREFIX = "knp.default."
K8S_POLICY_ORDER = 1000.0

ANN_POD_IP = "cni.projectcalico.org/podIP"
ANN_POD_IPS = "cni.projectcalico.org/podIPs"
ANN_MAC = "cni.projectcalico.org/hwAddr"
ANN_FLOATING_IPS = "cni.projectcalico.org/floatingIPs"
ANN_SOURCE_PREFIXES = "cni.projectcalico.org/allowedSourcePrefixes"

# Node annotations written by calico-node -> value field names.
_NODE_ANNOTATIONS = {
    "projectcalico.org/IPv4Address": "ipv4Address",
    "projectcalico.org/IPv6Address": "ipv6Address",
    "projectcalico.org/IPv4IPIPTunnelAddr": "ipv4IPIPTunnelAddr",
    "projectcalico.org/IPv4VXLANTunnelAddr": "ipv4VXLANTunnelAddr",
    "projectcalico.org/VXLANTunnelMACAddr": "vxlanTunnelMACAddr",
    "projectcalico.org/IPv6VXLANTunnelAddr": "ipv6VXLANTunnelAddr",
    "projectcalico.org/VXLANTunnelMACAddrV6": "vxlanTunnelMACAddrV6",
    "projectcalico.org/IPv4WireguardInterfaceAddr": "ipv4WireguardInterfaceAddr",
    "projectcalico.org/WireguardPublicKey": "wireguardPublicKey",
    "projectcalico.org/RouteReflectorClusterID": "routeReflectorClusterID",
}
_ANN_AS_NUMBER = "projectcalico.org/ASNumber"


# --------------------------------------------------------------------------------------------
# Small helpers
# --------------------------------------------------------------------------------------------


def _dict(v: Any, what: str) -> dict:
    if v is None:
        return {}
    if not isinstance(v, dict):
        raise ProjectionError(f"{what} is not an object")
    return v


def _list(v: Any, what: str) -> list:
    if v is None:
        return []
    if not isinstance(v, list):
        raise ProjectionError(f"{what} is not a list")
    return v


def _meta(obj: Any, namespaced: bool) -> tuple[str, str | None, dict]:
    """(name, namespace, metadata) with the identity validated."""
    if not isinstance(obj, dict):
        raise ProjectionError("object is not a JSON object")
    md = obj.get("metadata")
    if not isinstance(md, dict):
        raise ProjectionError("object has no metadata")
    name = md.get("name")
    if not isinstance(name, str) or not name:
        raise ProjectionError("object has no metadata.name")
    ns = None
    if namespaced:
        ns = md.get("namespace")
        if not isinstance(ns, str) or not ns:
            raise ProjectionError(f"{name}: namespaced object has no metadata.namespace")
    return name, ns, md


def _str_map(v: Any, what: str) -> dict[str, str]:
    d = _dict(v, what)
    for k, x in d.items():
        if not isinstance(x, str):
            raise ProjectionError(f"{what}[{k!r}] is not a string")
    return d


def _host_net(ip: Any, what: str) -> str:
    """A pod/endpoint address as a host network (``/32`` or ``/128``), canonically spelled."""
    if not isinstance(ip, str):
        raise ProjectionError(f"{what}: address is not a string")
    addr, _, plen = ip.strip().partition("/")
    if plen and not plen.isdigit():
        raise ProjectionError(f"{what}: bad address {ip!r}")
    # inet_pton/inet_ntop: strict parsing and canonical text at a tenth of ipaddress' cost.
    try:
        return socket.inet_ntop(socket.AF_INET, socket.inet_pton(socket.AF_INET, addr)) + "/32"
    except OSError:
        pass
    try:
        return socket.inet_ntop(socket.AF_INET6, socket.inet_pton(socket.AF_INET6, addr)) + "/128"
    except OSError:
        raise ProjectionError(f"{what}: bad address {ip!r}") from None


def _net(cidr: Any, what: str) -> str:
    """A CIDR normalised to its network (host bits cleared); bare IPs become /32, /128."""
    if not isinstance(cidr, str):
        raise ProjectionError(f"{what}: CIDR is not a string")
    try:
        return ipaddress.ip_network(cidr.strip(), strict=False).with_prefixlen
    except ValueError as e:
        raise ProjectionError(f"{what}: bad CIDR {cidr!r}") from e


def _nets(v: Any, what: str) -> list[str]:
    return [_net(c, what) for c in _list(v, what)]


def _compact(d: Value) -> Value:
    """Drop empty optional fields so absent and empty encode identically."""
    return {k: v for k, v in d.items() if v is not None and v != [] and v != {} and v != ""}


def interface_name(namespace: str, pod: str, prefix: str = "cali") -> str:
    """Host-side veth name: prefix + first 11 hex chars of sha1("<ns>.<pod>") (as Calico CNI)."""
    return prefix + hashlib.sha1(f"{namespace}.{pod}".encode()).hexdigest()[:11]


# --------------------------------------------------------------------------------------------
# Selectors
# --------------------------------------------------------------------------------------------

# Quoted strings, two-char operators, single-char punctuation, then bare words (label keys,
# keywords, function names).  A trailing catch-all keeps unknown characters in place.
_SEL_TOKEN = re.compile(r"""\s+|'[^']*'|"[^"]*"|==|!=|&&|\|\||[!(){},]|[^\s'"=!&|(){},]+|.""")
_KEY_CONTEXT = {None, "(", "&&", "||", "!"}


def prefix_selector(selector: str, prefix: str, namespace_semantics: bool = False) -> str:
    """Prefix every label key of a Calico selector (``a == 'x'`` -> ``pcns.a == 'x'``).

    With ``namespace_semantics`` the special functions are rewritten the way Calico does for
    namespace selectors: ``all()`` -> every namespaced endpoint, ``global()`` -> none.
    """
    toks = _SEL_TOKEN.findall(selector)
    sig = [i for i, t in enumerate(toks) if not t.isspace()]
    out = list(toks)
    for n, i in enumerate(sig):
        t = toks[i]
        if t[0] in "'\"" or t in ("==", "!=", "&&", "||", "!", "(", ")", "{", "}", ","):
            continue
        nxt = toks[sig[n + 1]] if n + 1 < len(sig) else None
        prev = toks[sig[n - 1]] if n > 0 else None
        prev2 = toks[sig[n - 2]] if n > 1 else None
        if nxt == "(":
            if namespace_semantics and t in ("all", "global") and n + 2 < len(sig) and toks[sig[n + 2]] == ")":
                repl = f"has({LABEL_NAMESPACE})" if t == "all" else f"!has({LABEL_NAMESPACE})"
                out[i] = repl
                out[sig[n + 1]] = ""
                out[sig[n + 2]] = ""
            continue  # function name
        if (prev == "(" and prev2 == "has") or prev in _KEY_CONTEXT:
            out[i] = prefix + t
    return "".join(out)


def _and(a: str, b: str) -> str:
    if not a:
        return b
    if not b:
        return a
    return f"({a}) && ({b})"


def k8s_selector(sel: Any, pod: bool, what: str = "selector") -> str:
    """A Kubernetes LabelSelector as Calico selector text (Calico's k8sSelectorToCalico).

    Pod selectors always carry ``projectcalico.org/orchestrator == 'k8s'``; an empty namespace
    selector means "all namespaces" (``all()``); a missing one means "no constraint" ("").
    """
    parts = [f"{LABEL_ORCHESTRATOR} == 'k8s'"] if pod else []
    if sel is None:
        return " && ".join(parts)
    sel = _dict(sel, what)
    labels = _str_map(sel.get("matchLabels"), f"{what}.matchLabels")
    exprs = _list(sel.get("matchExpressions"), f"{what}.matchExpressions")
    if not pod and not labels and not exprs:
        return "all()"
    for k in sorted(labels):
        parts.append(f"{k} == '{labels[k]}'")
    for e in exprs:
        e = _dict(e, f"{what}.matchExpressions[]")
        key, op = e.get("key"), e.get("operator")
        if not isinstance(key, str) or not key:
            raise ProjectionError(f"{what}: matchExpression without key")
        vals = "', '".join(str(v) for v in _list(e.get("values"), f"{what}.values"))
        if op == "In":
            parts.append(f"{key} in {{ '{vals}' }}")
        elif op == "NotIn":
            parts.append(f"{key} not in {{ '{vals}' }}")
        elif op == "Exists":
            parts.append(f"has({key})")
        elif op == "DoesNotExist":
            parts.append(f"! has({key})")
        else:
            raise ProjectionError(f"{what}: unknown operator {op!r}")
    return " && ".join(parts)


def _entity_selector(er: dict, ns: str | None) -> str:
    """One selector for everything an entity rule matches (Calico's getEndpointSelector)."""
    ns_sel_raw = er.get("namespaceSelector") or ""
    if ns_sel_raw:
        ns_sel = prefix_selector(ns_sel_raw, NS_LABEL_PREFIX, namespace_semantics=True)
    elif ns:
        ns_sel = f"{LABEL_NAMESPACE} == '{ns}'"
    else:
        ns_sel = ""
    sels = []
    sam = er.get("serviceAccounts")
    if sam:
        sam = _dict(sam, "serviceAccounts")
        sa_sel = prefix_selector(sam["selector"], SA_LABEL_PREFIX) if sam.get("selector") else ""
        names = _list(sam.get("names"), "serviceAccounts.names")
        if names:
            in_names = f"{LABEL_SERVICE_ACCOUNT} in {{ '" + "', '".join(names) + "' }"
            sa_sel = f"({sa_sel}) && ({in_names})" if sa_sel else in_names
        if sa_sel:
            sels.append(sa_sel)
    if er.get("selector"):
        sels.append(er["selector"])
    selector = sels[0] if len(sels) == 1 else ("(" + ") && (".join(sels) + ")" if sels else "")
    if ns_sel and (selector or er.get("notSelector") or ns_sel_raw):
        selector = f"({ns_sel}) && ({selector})" if selector else ns_sel
    return selector


# --------------------------------------------------------------------------------------------
# Rules
# --------------------------------------------------------------------------------------------

_ACTIONS = {"allow": "allow", "deny": "deny", "log": "log", "pass": "pass", "next-tier": "pass"}


def _protocol(p: Any) -> Any:
    if p is None:
        return None
    if isinstance(p, str):
        return int(p) if p.isdigit() else p.lower()
    if isinstance(p, int) and not isinstance(p, bool):
        return p
    raise ProjectionError(f"bad protocol {p!r}")


def _ports(v: Any, what: str) -> list:
    out = []
    for p in _list(v, what):
        if isinstance(p, bool) or not isinstance(p, (int, str)):
            raise ProjectionError(f"{what}: bad port {p!r}")
        out.append(int(p) if isinstance(p, str) and p.isdigit() else p)
    return out


def rule_to_v1(rule: Any, ns: str | None) -> Value:
    """A Calico v3 API rule -> the flattened form agents evaluate (Calico's RuleAPIV2ToBackend)."""
    r = _dict(rule, "rule")
    action = _ACTIONS.get(str(r.get("action", "")).lower())
    if action is None:
        raise ProjectionError(f"rule has bad action {r.get('action')!r}")
    src = _dict(r.get("source"), "rule.source")
    dst = _dict(r.get("destination"), "rule.destination")
    icmp = _dict(r.get("icmp"), "rule.icmp")
    nicmp = _dict(r.get("notICMP"), "rule.notICMP")
    out: Value = {
        "action": action,
        "ipVersion": r.get("ipVersion"),
        "protocol": _protocol(r.get("protocol")),
        "notProtocol": _protocol(r.get("notProtocol")),
        "icmpType": icmp.get("type"),
        "icmpCode": icmp.get("code"),
        "notIcmpType": nicmp.get("type"),
        "notIcmpCode": nicmp.get("code"),
        "srcNets": _nets(src.get("nets"), "source.nets"),
        "notSrcNets": _nets(src.get("notNets"), "source.notNets"),
        "srcSelector": _entity_selector(src, ns),
        "notSrcSelector": src.get("notSelector"),
        "srcPorts": _ports(src.get("ports"), "source.ports"),
        "notSrcPorts": _ports(src.get("notPorts"), "source.notPorts"),
        "dstNets": _nets(dst.get("nets"), "destination.nets"),
        "notDstNets": _nets(dst.get("notNets"), "destination.notNets"),
        "dstSelector": _entity_selector(dst, ns),
        "notDstSelector": dst.get("notSelector"),
        "dstPorts": _ports(dst.get("ports"), "destination.ports"),
        "notDstPorts": _ports(dst.get("notPorts"), "destination.notPorts"),
        # Kept (not dropped) so an agent that cannot enforce them can fail closed rather than
        # silently treating the rule as broader than it is.
        "srcService": src.get("services"),
        "dstService": dst.get("services"),
        "http": r.get("http"),
    }
    return _compact(out)


def _rules(v: Any, ns: str | None, what: str) -> list[Value]:
    return [rule_to_v1(r, ns) for r in _list(v, what)]


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
        return proto, [int(s)]
    if ":" in s:
        lo, hi = s.split(":", 1)
        if not (lo.isdigit() and hi.isdigit()) or int(lo) > int(hi):
            raise ProjectionError(f"bad NetworkPolicy port range {s!r}")
    return proto, [s]


def _k8s_rules(peers_v: Any, ports_v: Any, ingress: bool) -> list[dict]:
    peers: list = [_dict(p, "peer") for p in _list(peers_v, "peers")] or [None]
    proto_ports: dict[str, list | None] = {}
    port_list = [_dict(p, "port") for p in _list(ports_v, "ports")]
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
                    block = _dict(block, "ipBlock")
                    ent["nets"] = [_net(block.get("cidr"), "ipBlock.cidr")]
                    ent["notNets"] = _nets(block.get("except"), "ipBlock.except")
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


# --------------------------------------------------------------------------------------------
# Per-resource projections
# --------------------------------------------------------------------------------------------


def _pod_ips(status: dict, ann: dict[str, str], what: str) -> list[str]:
    # Same precedence as Calico's getPodIPs.
    ips = [_dict(i, "podIPs[]").get("ip") for i in _list(status.get("podIPs"), "status.podIPs")]
    ips = [i for i in ips if i]
    if not ips and status.get("podIP"):
        ips = [status["podIP"]]
    if not ips and ann.get(ANN_POD_IPS):
        ips = [s for s in ann[ANN_POD_IPS].split(",") if s.strip()]
    if not ips and ann.get(ANN_POD_IP):
        ips = [ann[ANN_POD_IP]]
    return [_host_net(i, what) for i in ips]


def _pod_finished(md: dict, status: dict, ann: dict[str, str]) -> bool:
    # Being deleted and Calico CNI has blanked the IP annotation: the IP is already released.
    if md.get("deletionTimestamp") and ann.get(ANN_POD_IP) == "":
        return True
    return status.get("phase") in ("Failed", "Succeeded", "Completed")


def _endpoint_ports(spec: dict) -> list[Value]:
    out = []
    for group in ("containers", "initContainers"):
        for c in _list(spec.get(group), f"spec.{group}"):
            for p in _list(_dict(c, "container").get("ports"), "container.ports"):
                p = _dict(p, "containerPort")
                port, host_port, name = p.get("containerPort") or 0, p.get("hostPort") or 0, p.get("name")
                if not port or not (host_port or name):
                    continue
                proto = (p.get("protocol") or "TCP").lower()
                if proto not in ("tcp", "udp", "sctp"):
                    continue
                out.append(
                    _compact(
                        {
                            "name": name,
                            "protocol": proto,
                            "port": port,
                            "hostPort": host_port or None,
                            "hostIP": p.get("hostIP"),
                        }
                    )
                )
    return out


def _pod(obj: dict) -> list[Update]:
    name, ns, md = _meta(obj, True)
    spec = _dict(obj.get("spec"), "spec")
    node = spec.get("nodeName")
    if not node:
        return []  # not scheduled: no key can exist yet (nodeName is set once)
    key = K.workload_key(node, ns, name)
    if spec.get("hostNetwork"):
        return [(key, None)]
    status = _dict(obj.get("status"), "status")
    ann = _str_map(md.get("annotations"), "annotations")
    what = f"pod {ns}/{name}"
    nets = _pod_ips(status, ann, what)  # parsed even when finished: a bad IP is an error
    if not nets or _pod_finished(md, status, ann):
        return [(key, None)]
    sa = spec.get("serviceAccountName") or ""
    labels = dict(_str_map(md.get("labels"), "labels"))
    labels[LABEL_NAMESPACE] = ns
    labels[LABEL_ORCHESTRATOR] = K.ORCHESTRATOR_K8S
    profiles = [NS_PROFILE_PREFIX + ns]
    if sa:
        profiles.append(f"{SA_PROFILE_PREFIX}{ns}.{sa}")
        if len(sa) < 63:  # Calico only adds the label while it is a valid label value
            labels[LABEL_SERVICE_ACCOUNT] = sa
    value: Value = {
        "name": interface_name(ns, name),
        "node": node,
        "orchestrator": K.ORCHESTRATOR_K8S,
        "workload": f"{ns}/{name}",
        "endpoint": K.DEFAULT_ENDPOINT,
        "ipNetworks": nets,
        "profiles": profiles,
        "labels": labels,
        "ports": _endpoint_ports(spec),
        "mac": ann.get(ANN_MAC),
    }
    if ann.get(ANN_FLOATING_IPS):
        value["floatingIPs"] = ann[ANN_FLOATING_IPS]
    if ann.get(ANN_SOURCE_PREFIXES):
        value["allowedSourcePrefixes"] = ann[ANN_SOURCE_PREFIXES]
    return [(key, _compact(value))]


def _pod_delete(obj: dict) -> list[str]:
    name, ns, _ = _meta(obj, True)
    node = _dict(obj.get("spec"), "spec").get("nodeName")
    return [K.workload_key(node, ns, name)] if node else []


def _namespace(obj: dict) -> list[Update]:
    name, _, md = _meta(obj, False)
    labels = {NS_LABEL_PREFIX + k: v for k, v in _str_map(md.get("labels"), "labels").items()}
    labels[NS_LABEL_PREFIX + LABEL_NAME] = name
    return [
        (
            K.profile_key(NS_PROFILE_PREFIX + name),
            {
                "labels": labels,
                "inboundRules": [{"action": "allow"}],
                "outboundRules": [{"action": "allow"}],
            },
        )
    ]


def _namespace_delete(obj: dict) -> list[str]:
    name, _, _ = _meta(obj, False)
    return [K.profile_key(NS_PROFILE_PREFIX + name)]


def _service_account(obj: dict) -> list[Update]:
    name, ns, md = _meta(obj, True)
    labels = {SA_LABEL_PREFIX + k: v for k, v in _str_map(md.get("labels"), "labels").items()}
    labels[SA_LABEL_PREFIX + LABEL_NAME] = name
    return [
        (K.profile_key(f"{SA_PROFILE_PREFIX}{ns}.{name}"), {"labels": labels, "inboundRules": [], "outboundRules": []})
    ]


def _service_account_delete(obj: dict) -> list[str]:
    name, ns, _ = _meta(obj, True)
    return [K.profile_key(f"{SA_PROFILE_PREFIX}{ns}.{name}")]


def k8s_network_policy_to_calico(obj: dict) -> dict:
    """A Kubernetes NetworkPolicy as the equivalent Calico v3 NetworkPolicy spec."""
    _name, _ns, _ = _meta(obj, True)
    spec = _dict(obj.get("spec"), "spec")
    ingress = [
        r
        for e in _list(spec.get("ingress"), "spec.ingress")
        for r in _k8s_rules(_dict(e, "ingress").get("from"), e.get("ports"), True)
    ]
    egress = [
        r
        for e in _list(spec.get("egress"), "spec.egress")
        for r in _k8s_rules(_dict(e, "egress").get("to"), e.get("ports"), False)
    ]
    ptypes = _list(spec.get("policyTypes"), "spec.policyTypes")
    types = [t for t in ("Ingress", "Egress") if t in ptypes] or ["Ingress"]
    return {
        "order": K8S_POLICY_ORDER,
        "selector": k8s_selector(spec.get("podSelector"), True, "podSelector"),
        "ingress": ingress,
        "egress": egress,
        "types": types,
    }


def _policy_value(spec: dict, ns: str | None, selector: str, default_forward: bool) -> Value:
    ingress_v, egress_v = spec.get("ingress"), spec.get("egress")
    types = _list(spec.get("types"), "spec.types")
    if not types:
        # Calico's defaulting: ingress unless there are only egress rules; egress if any.
        types = (["Ingress"] if ingress_v or not egress_v else []) + (["Egress"] if egress_v else [])
    order = spec.get("order")
    if order is not None:
        if isinstance(order, bool) or not isinstance(order, (int, float)):
            raise ProjectionError(f"bad policy order {order!r}")
        order = float(order)
    value: Value = {
        "tier": spec.get("tier") or K.DEFAULT_TIER,
        "order": order,  # null = after every ordered policy
        "selector": selector,
        "types": [str(t).lower() for t in types],
        "inboundRules": _rules(ingress_v, ns, "spec.ingress"),
        "outboundRules": _rules(egress_v, ns, "spec.egress"),
        "applyOnForward": bool(spec.get("applyOnForward", default_forward)),
        "preDNAT": bool(spec.get("preDNAT", False)),
        "doNotTrack": bool(spec.get("doNotTrack", False)),
    }
    if ns:
        value["namespace"] = ns
    return value


def _namespaced_selector(spec: dict, ns: str) -> str:
    sel = spec.get("selector") or ""
    ns_sel = f"{LABEL_NAMESPACE} == '{ns}'"
    sel = f"({sel}) && {ns_sel}" if sel else ns_sel
    if spec.get("serviceAccountSelector"):
        sel = _and(sel, prefix_selector(spec["serviceAccountSelector"], SA_LABEL_PREFIX))
    return sel


def _k8s_network_policy(obj: dict) -> list[Update]:
    name, ns, _ = _meta(obj, True)
    spec = k8s_network_policy_to_calico(obj)
    value = _policy_value(spec, ns, _namespaced_selector(spec, ns), True)
    return [(K.policy_key(K8S_POLICY_PREFIX + name, ns), value)]


def _k8s_network_policy_delete(obj: dict) -> list[str]:
    name, ns, _ = _meta(obj, True)
    return [K.policy_key(K8S_POLICY_PREFIX + name, ns)]


def _calico_network_policy(obj: dict) -> list[Update]:
    name, ns, _ = _meta(obj, True)
    spec = _dict(obj.get("spec"), "spec")
    value = _policy_value(spec, ns, _namespaced_selector(spec, ns), True)
    return [(K.policy_key(name, ns, value["tier"]), value)]


def _calico_network_policy_delete(obj: dict) -> list[str]:
    name, ns, _ = _meta(obj, True)
    tier = _dict(obj.get("spec"), "spec").get("tier") or K.DEFAULT_TIER
    return [K.policy_key(name, ns, tier)]


def _global_network_policy(obj: dict) -> list[Update]:
    name, _, _ = _meta(obj, False)
    spec = _dict(obj.get("spec"), "spec")
    sel = spec.get("selector") or ""
    if spec.get("namespaceSelector"):
        sel = _and(sel, prefix_selector(spec["namespaceSelector"], NS_LABEL_PREFIX, True))
    if spec.get("serviceAccountSelector"):
        sel = _and(sel, prefix_selector(spec["serviceAccountSelector"], SA_LABEL_PREFIX))
    value = _policy_value(spec, None, sel, False)
    return [(K.policy_key(name, None, value["tier"]), value)]


def _global_network_policy_delete(obj: dict) -> list[str]:
    name, _, _ = _meta(obj, False)
    tier = _dict(obj.get("spec"), "spec").get("tier") or K.DEFAULT_TIER
    return [K.policy_key(name, None, tier)]


def _network_set(namespaced: bool) -> tuple[Callable, Callable]:
    def project(obj: dict) -> list[Update]:
        name, ns, md = _meta(obj, namespaced)
        labels = dict(_str_map(md.get("labels"), "labels"))
        if ns:
            labels[LABEL_NAMESPACE] = ns
        spec = _dict(obj.get("spec"), "spec")
        return [(K.network_set_key(name, ns), {"labels": labels, "nets": _nets(spec.get("nets"), "spec.nets")})]

    def delete(obj: dict) -> list[str]:
        name, ns, _ = _meta(obj, namespaced)
        return [K.network_set_key(name, ns)]

    return project, delete


def _name_to_cidr(name: str) -> str | None:
    """Calico names IPAM objects after their CIDR with '.', ':' and '/' as '-'; invert for IPv4."""
    parts = name.split("-")
    if len(parts) >= 5 and all(p.isdigit() for p in parts[-5:]):
        return ".".join(parts[-5:-1]) + "/" + parts[-1]
    return None


def _spec_cidr(obj: dict, what: str) -> str:
    name, _, _ = _meta(obj, False)
    cidr = _dict(obj.get("spec"), "spec").get("cidr") or _name_to_cidr(name)
    if not cidr:
        raise ProjectionError(f"{what} {name}: no spec.cidr")
    return _net(cidr, f"{what} {name}")


def _ip_pool(obj: dict) -> list[Update]:
    cidr = _spec_cidr(obj, "IPPool")
    spec = _dict(obj.get("spec"), "spec")
    ipip = spec.get("ipipMode")
    legacy = _dict(spec.get("ipip"), "spec.ipip")  # pre-v3 pools: {enabled, mode}
    if not ipip and legacy.get("enabled"):
        ipip = "CrossSubnet" if str(legacy.get("mode", "")).lower() == "cross-subnet" else "Always"
    v6 = ":" in cidr
    return [
        (
            K.ip_pool_key(cidr),
            {
                "cidr": cidr,
                "ipipMode": ipip or "Never",
                "vxlanMode": spec.get("vxlanMode") or "Never",
                "natOutgoing": bool(spec.get("natOutgoing") or spec.get("nat-outgoing")),
                "disabled": bool(spec.get("disabled")),
                "disableBGPExport": bool(spec.get("disableBGPExport")),
                "blockSize": int(spec.get("blockSize") or (122 if v6 else 26)),
            },
        )
    ]


def _ip_pool_delete(obj: dict) -> list[str]:
    return [K.ip_pool_key(_spec_cidr(obj, "IPPool"))]


def _ipam_block(obj: dict) -> list[Update]:
    cidr = _spec_cidr(obj, "IPAMBlock")
    spec = _dict(obj.get("spec"), "spec")
    key = K.ipam_block_key(cidr)
    if spec.get("deleted") is True:
        return [(key, None)]  # Calico marks a block deleted before removing it
    affinity = spec.get("affinity") or None
    host = affinity[5:] if isinstance(affinity, str) and affinity.startswith("host:") else None
    attrs = _list(spec.get("attributes"), "spec.attributes")
    borrowed = []
    for ordinal, idx in enumerate(_list(spec.get("allocations"), "spec.allocations")):
        if idx is None:
            continue
        if not isinstance(idx, int) or not 0 <= idx < len(attrs):
            continue  # Calico skips allocations whose attributes are missing
        attr = _dict(attrs[idx], "attribute")
        node = _dict(attr.get("secondary"), "attribute.secondary").get("node")
        if node and node != host:
            borrowed.append([ordinal, node, attr.get("handle_id")])
    return [(key, {"cidr": cidr, "affinity": affinity, "borrowed": borrowed})]


def _ipam_block_delete(obj: dict) -> list[str]:
    return [K.ipam_block_key(_spec_cidr(obj, "IPAMBlock"))]


def _affinity_id(obj: dict) -> tuple[str, str, dict]:
    name, _, _ = _meta(obj, False)
    spec = _dict(obj.get("spec"), "spec")
    node, cidr = spec.get("node"), spec.get("cidr")
    if not cidr:
        cidr = _name_to_cidr(name)
    if not node and cidr:
        suffix = "-" + cidr.replace(".", "-").replace("/", "-")
        node = name[: -len(suffix)] if name.endswith(suffix) else None
    if not node or not cidr:
        raise ProjectionError(f"BlockAffinity {name}: no spec.node/spec.cidr")
    return node, _net(cidr, f"BlockAffinity {name}"), spec


def _block_affinity(obj: dict) -> list[Update]:
    node, cidr, spec = _affinity_id(obj)
    key = K.block_affinity_key(node, cidr)
    if str(spec.get("deleted", "false")).lower() == "true":  # a string in the CRD
        return [(key, None)]
    return [(key, {"node": node, "cidr": cidr, "state": spec.get("state") or "confirmed"})]


def _block_affinity_delete(obj: dict) -> list[str]:
    node, cidr, _ = _affinity_id(obj)
    return [K.block_affinity_key(node, cidr)]


def _node(obj: dict) -> list[Update]:
    name, _, md = _meta(obj, False)
    ann = _str_map(md.get("annotations"), "annotations")
    spec = _dict(obj.get("spec"), "spec")
    status = _dict(obj.get("status"), "status")
    value: Value = {"name": name, "labels": dict(_str_map(md.get("labels"), "labels"))}
    for a, field in _NODE_ANNOTATIONS.items():
        if ann.get(a):
            value[field] = ann[a]
    if ann.get(_ANN_AS_NUMBER, "").isdigit():
        value["asNumber"] = int(ann[_ANN_AS_NUMBER])
    # Fallback when calico-node has not annotated the node yet: first InternalIP of each family,
    # as a /32 or /128 because the subnet is unknown.
    for a in _list(status.get("addresses"), "status.addresses"):
        a = _dict(a, "address")
        if a.get("type") == "InternalIP" and isinstance(a.get("address"), str):
            net = _host_net(a["address"], f"node {name}")
            field = "ipv6Address" if ":" in net else "ipv4Address"
            value.setdefault(field, net)
    cidrs = _list(spec.get("podCIDRs"), "spec.podCIDRs") or ([spec["podCIDR"]] if spec.get("podCIDR") else [])
    value["podCIDRs"] = [_net(c, f"node {name} podCIDR") for c in cidrs]
    return [(K.node_key(name), _compact(value))]


def _node_delete(obj: dict) -> list[str]:
    name, _, _ = _meta(obj, False)
    return [K.node_key(name)]


def _host_endpoint_id(obj: dict) -> tuple[str, str, dict, dict]:
    name, _, md = _meta(obj, False)
    spec = _dict(obj.get("spec"), "spec")
    node = spec.get("node")
    if not isinstance(node, str) or not node:
        raise ProjectionError(f"HostEndpoint {name}: no spec.node")
    return name, node, md, spec


def _host_endpoint(obj: dict) -> list[Update]:
    name, node, md, spec = _host_endpoint_id(obj)
    ports = []
    for p in _list(spec.get("ports"), "spec.ports"):
        p = _dict(p, "port")
        ports.append(_compact({"name": p.get("name"), "protocol": _protocol(p.get("protocol")), "port": p.get("port")}))
    value = {
        "node": node,
        "interfaceName": spec.get("interfaceName"),
        "expectedIPs": [
            _host_net(i, f"HostEndpoint {name}").split("/")[0]
            for i in _list(spec.get("expectedIPs"), "spec.expectedIPs")
        ],
        "profiles": _list(spec.get("profiles"), "spec.profiles"),
        "labels": _str_map(md.get("labels"), "labels"),
        "ports": ports,
    }
    return [(K.host_endpoint_key(node, name), _compact(value))]


def _host_endpoint_delete(obj: dict) -> list[str]:
    name, node, _, _ = _host_endpoint_id(obj)
    return [K.host_endpoint_key(node, name)]


def _whole_spec(key_fn: Callable[[str], str]) -> tuple[Callable, Callable]:
    """Resources passed through as their spec: user configuration, small and rarely changed."""

    def project(obj: dict) -> list[Update]:
        name, _, _ = _meta(obj, False)
        return [(key_fn(name), dict(_dict(obj.get("spec"), "spec")))]

    def delete(obj: dict) -> list[str]:
        name, _, _ = _meta(obj, False)
        return [key_fn(name)]

    return project, delete


_PROJECTORS: dict[str, tuple[Callable[[dict], list[Update]], Callable[[dict], list[str]]]] = {
    "pods": (_pod, _pod_delete),
    "namespaces": (_namespace, _namespace_delete),
    "serviceaccounts": (_service_account, _service_account_delete),
    "networkpolicies": (_k8s_network_policy, _k8s_network_policy_delete),
    "calico-networkpolicies": (_calico_network_policy, _calico_network_policy_delete),
    "globalnetworkpolicies": (_global_network_policy, _global_network_policy_delete),
    "globalnetworksets": _network_set(False),
    "networksets": _network_set(True),
    "ippools": (_ip_pool, _ip_pool_delete),
    "ipamblocks": (_ipam_block, _ipam_block_delete),
    "blockaffinities": (_block_affinity, _block_affinity_delete),
    "nodes": (_node, _node_delete),
    "hostendpoints": (_host_endpoint, _host_endpoint_delete),
    "felixconfigurations": _whole_spec(K.felix_configuration_key),
    "clusterinformations": _whole_spec(K.cluster_information_key),
    "bgppeers": _whole_spec(K.bgp_peer_key),
    "bgpconfigurations": _whole_spec(K.bgp_configuration_key),
}
assert _PROJECTORS.keys() == RESOURCES.keys()


def _projector(resource: str) -> tuple[Callable[[dict], list[Update]], Callable[[dict], list[str]]]:
    try:
        return _PROJECTORS[resource]
    except KeyError:
        raise ValueError(f"unknown resource {resource!r}") from None  # a caller bug, not bad data


def _run(resource: str, which: int, obj: dict) -> Any:
    fn = _projector(resource)[which]
    try:
        return fn(obj)
    except ProjectionError:
        raise
    except (TypeError, AttributeError, KeyError, ValueError) as e:
        # Wrong-typed fields deep inside an object: still "malformed", never a crash.
        raise ProjectionError(f"{resource}: malformed object: {e}") from e


def project(resource: str, obj: dict) -> list[Update]:
    """Keys an added/modified object maps to, with values; ``None`` means "must not exist".

    Raises :class:`ProjectionError` for a malformed object and ``ValueError`` for an unknown
    resource name.
    """
    return _run(resource, 0, obj)


def project_delete(resource: str, obj: dict) -> list[str]:
    """Keys to delete when ``obj`` (its last state, as a DELETED watch event carries it) is deleted."""
    return _run(resource, 1, obj)


def project_all(items: Iterable[tuple[str, dict]]) -> dict[str, Value]:
    """Project a whole listing into a key -> value map (``None`` values and bad objects skipped).

    Convenience for tests and demo sources; Typha's watchers use :func:`project` per event.
    """
    out: dict[str, Value] = {}
    for resource, obj in items:
        try:
            ups = project(resource, obj)
        except ProjectionError:
            continue
        for k, v in ups:
            if v is not None:
                out[k] = v
    return out
