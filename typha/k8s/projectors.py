"""One projector per resource: an object in, its keys and values out (and the keys of a deleted object).

The semantics (what each value holds and why) are in the design note of `typha.k8s.projection` and in
docs/datastore.md; this module is the per-kind code. Each projector builds its value from scratch,
from an allow-list of fields, through the validating readers of `typha.k8s.fields`.
"""

from __future__ import annotations

from collections.abc import Callable
from itertools import repeat
from typing import Any, NamedTuple

from protocol import keys as K

from .calico import (
    ANN_AS_NUMBER,
    ANN_FLOATING_IPS,
    ANN_MAC,
    ANN_POD_IP,
    ANN_POD_IPS,
    ANN_SOURCE_PREFIXES,
    K8S_POLICY_PREFIX,
    LABEL_NAME,
    LABEL_NAMESPACE,
    LABEL_ORCHESTRATOR,
    LABEL_SERVICE_ACCOUNT,
    NODE_ANNOTATIONS,
    NS_LABEL_PREFIX,
    NS_PROFILE_PREFIX,
    SA_LABEL_PREFIX,
    SA_PROFILE_PREFIX,
    interface_name,
)
from .fields import (
    ProjectionError,
    Update,
    Value,
    compact,
    field_dict,
    field_list,
    host_net,
    identity,
    namespaced_identity,
    network,
    networks,
    str_map,
)
from .resources import RESOURCES
from .rules import k8s_network_policy_to_calico, protocol_field, rules_to_v1
from .selectors import and_selectors, prefix_selector


class Projector(NamedTuple):
    """How the objects of one resource become keys."""

    upsert: Callable[[dict], list[Update]]  # an added or modified object -> its keys and values
    delete: Callable[[dict], list[str]]  # a deleted object (its last state) -> the keys to delete


def _pod_ips(status: dict, ann: dict[str, str], what: str) -> list[str]:
    # Same precedence as Calico's getPodIPs.
    ips = [field_dict(i, "podIPs[]").get("ip") for i in field_list(status.get("podIPs"), "status.podIPs")]
    ips = [i for i in ips if i]
    if not ips and status.get("podIP"):
        ips = [status["podIP"]]
    if not ips and ann.get(ANN_POD_IPS):
        ips = [s for s in ann[ANN_POD_IPS].split(",") if s.strip()]
    if not ips and ann.get(ANN_POD_IP):
        ips = [ann[ANN_POD_IP]]
    return [host_net(i, what) for i in ips]


def _pod_finished(md: dict, status: dict, ann: dict[str, str]) -> bool:
    # Being deleted and Calico CNI has blanked the IP annotation: the IP is already released.
    if md.get("deletionTimestamp") and ann.get(ANN_POD_IP) == "":
        return True
    return status.get("phase") in ("Failed", "Succeeded", "Completed")


def _endpoint_ports(spec: dict) -> list[Value]:
    out = []
    for group in ("containers", "initContainers"):
        for c in field_list(spec.get(group), f"spec.{group}"):
            for p in field_list(field_dict(c, "container").get("ports"), "container.ports"):
                p = field_dict(p, "containerPort")
                port, host_port, name = p.get("containerPort") or 0, p.get("hostPort") or 0, p.get("name")
                if not port or not (host_port or name):
                    continue
                proto = (p.get("protocol") or "TCP").lower()
                if proto not in ("tcp", "udp", "sctp"):
                    continue
                out.append(
                    compact(
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
    name, ns, md = namespaced_identity(obj)
    spec = field_dict(obj.get("spec"), "spec")
    node = spec.get("nodeName")
    if not node:
        return []  # not scheduled: no key can exist yet (nodeName is set once)
    key = K.workload_key(node, ns, name)
    if spec.get("hostNetwork"):
        return [(key, None)]
    status = field_dict(obj.get("status"), "status")
    ann = str_map(md.get("annotations"), "annotations")
    what = f"pod {ns}/{name}"
    nets = _pod_ips(status, ann, what)  # parsed even when finished: a bad IP is an error
    if not nets or _pod_finished(md, status, ann):
        return [(key, None)]
    sa = spec.get("serviceAccountName") or ""
    labels = dict(str_map(md.get("labels"), "labels"))
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
    return [(key, compact(value))]


def _pod_delete(obj: dict) -> list[str]:
    name, ns, _ = namespaced_identity(obj)
    node = field_dict(obj.get("spec"), "spec").get("nodeName")
    return [K.workload_key(node, ns, name)] if node else []


def _namespace(obj: dict) -> list[Update]:
    name, _, md = identity(obj, False)
    labels = {NS_LABEL_PREFIX + k: v for k, v in str_map(md.get("labels"), "labels").items()}
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
    name, _, _ = identity(obj, False)
    return [K.profile_key(NS_PROFILE_PREFIX + name)]


def _service_account(obj: dict) -> list[Update]:
    name, ns, md = namespaced_identity(obj)
    labels = {SA_LABEL_PREFIX + k: v for k, v in str_map(md.get("labels"), "labels").items()}
    labels[SA_LABEL_PREFIX + LABEL_NAME] = name
    return [
        (K.profile_key(f"{SA_PROFILE_PREFIX}{ns}.{name}"), {"labels": labels, "inboundRules": [], "outboundRules": []})
    ]


def _service_account_delete(obj: dict) -> list[str]:
    name, ns, _ = namespaced_identity(obj)
    return [K.profile_key(f"{SA_PROFILE_PREFIX}{ns}.{name}")]


def _policy_value(spec: dict, ns: str | None, selector: str, default_forward: bool) -> Value:
    ingress_v, egress_v = spec.get("ingress"), spec.get("egress")
    types = field_list(spec.get("types"), "spec.types")
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
        "inboundRules": rules_to_v1(ingress_v, ns, "spec.ingress"),
        "outboundRules": rules_to_v1(egress_v, ns, "spec.egress"),
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
        sel = and_selectors(sel, prefix_selector(spec["serviceAccountSelector"], SA_LABEL_PREFIX))
    return sel


def _k8s_network_policy(obj: dict) -> list[Update]:
    name, ns, _ = namespaced_identity(obj)
    spec = k8s_network_policy_to_calico(obj)
    value = _policy_value(spec, ns, _namespaced_selector(spec, ns), True)
    return [(K.policy_key(K8S_POLICY_PREFIX + name, ns), value)]


def _k8s_network_policy_delete(obj: dict) -> list[str]:
    name, ns, _ = namespaced_identity(obj)
    return [K.policy_key(K8S_POLICY_PREFIX + name, ns)]


def _calico_network_policy(obj: dict) -> list[Update]:
    name, ns, _ = namespaced_identity(obj)
    spec = field_dict(obj.get("spec"), "spec")
    value = _policy_value(spec, ns, _namespaced_selector(spec, ns), True)
    return [(K.policy_key(name, ns, value["tier"]), value)]


def _calico_network_policy_delete(obj: dict) -> list[str]:
    name, ns, _ = namespaced_identity(obj)
    tier = field_dict(obj.get("spec"), "spec").get("tier") or K.DEFAULT_TIER
    return [K.policy_key(name, ns, tier)]


def _global_network_policy(obj: dict) -> list[Update]:
    name, _, _ = identity(obj, False)
    spec = field_dict(obj.get("spec"), "spec")
    sel = spec.get("selector") or ""
    if spec.get("namespaceSelector"):
        sel = and_selectors(sel, prefix_selector(spec["namespaceSelector"], NS_LABEL_PREFIX, True))
    if spec.get("serviceAccountSelector"):
        sel = and_selectors(sel, prefix_selector(spec["serviceAccountSelector"], SA_LABEL_PREFIX))
    value = _policy_value(spec, None, sel, False)
    return [(K.policy_key(name, None, value["tier"]), value)]


def _global_network_policy_delete(obj: dict) -> list[str]:
    name, _, _ = identity(obj, False)
    tier = field_dict(obj.get("spec"), "spec").get("tier") or K.DEFAULT_TIER
    return [K.policy_key(name, None, tier)]


def _network_set(namespaced: bool) -> Projector:
    def project(obj: dict) -> list[Update]:
        name, ns, md = identity(obj, namespaced)
        labels = dict(str_map(md.get("labels"), "labels"))
        if ns:
            labels[LABEL_NAMESPACE] = ns
        spec = field_dict(obj.get("spec"), "spec")
        return [(K.network_set_key(name, ns), {"labels": labels, "nets": networks(spec.get("nets"), "spec.nets")})]

    def delete(obj: dict) -> list[str]:
        name, ns, _ = identity(obj, namespaced)
        return [K.network_set_key(name, ns)]

    return Projector(project, delete)


def _name_to_cidr(name: str) -> str | None:
    """Calico names IPAM objects after their CIDR with '.', ':' and '/' as '-'; invert for IPv4."""
    parts = name.split("-")
    if len(parts) >= 5 and all(p.isdigit() for p in parts[-5:]):
        return ".".join(parts[-5:-1]) + "/" + parts[-1]
    return None


def _spec_cidr(obj: dict, what: str) -> str:
    name, _, _ = identity(obj, False)
    cidr = field_dict(obj.get("spec"), "spec").get("cidr") or _name_to_cidr(name)
    if not cidr:
        raise ProjectionError(f"{what} {name}: no spec.cidr")
    return network(cidr, f"{what} {name}")


def _ip_pool(obj: dict) -> list[Update]:
    cidr = _spec_cidr(obj, "IPPool")
    spec = field_dict(obj.get("spec"), "spec")
    ipip = spec.get("ipipMode")
    legacy = field_dict(spec.get("ipip"), "spec.ipip")  # pre-v3 pools: {enabled, mode}
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
    spec = field_dict(obj.get("spec"), "spec")
    key = K.ipam_block_key(cidr)
    if spec.get("deleted") is True:
        return [(key, None)]  # Calico marks a block deleted before removing it
    affinity = spec.get("affinity") or None
    host = affinity[5:] if isinstance(affinity, str) and affinity.startswith("host:") else None
    attrs = field_list(spec.get("attributes"), "spec.attributes")
    allocations = field_list(spec.get("allocations"), "spec.allocations")
    foreign = _foreign_attributes(attrs, host)
    if foreign is None:  # some attribute is malformed: the exact walk says whether an allocation uses it
        borrowed = _borrowed(allocations, attrs, host)
    elif not foreign:  # the common case: every address in the block is the affine node's own
        borrowed = []
    else:
        borrowed = [
            [ordinal, *foreign[idx]]
            for ordinal, idx in enumerate(allocations)
            if isinstance(idx, int) and idx in foreign
        ]
    return [(key, {"cidr": cidr, "affinity": affinity, "borrowed": borrowed})]


_get: Callable[[dict, str], Any] = dict.get  # unbound: a TypeError for anything but a dict


def _foreign_attributes(attrs: list, host: str | None) -> dict[int, tuple] | None:
    """Attribute index -> (node, handle) for attributes held by another node than `host`; None if an
    attribute or its `secondary` is not an object (then `_borrowed` decides, as Calico would)."""
    # A full block has 64 attributes and this runs on every change of it: `map(dict.get, ...)` walks them
    # in C (a TypeError if one is not an object), and `count` says at once that all are the host's.
    try:
        nodes = list(map(_get, map(_get, attrs, repeat("secondary")), repeat("node")))
    except TypeError:  # an attribute or a `secondary` that is not an object (or a None secondary)
        return _foreign_attributes_slowly(attrs, host)
    if host is not None and nodes.count(host) == len(nodes):
        return {}
    return {i: (n, attrs[i].get("handle_id")) for i, n in enumerate(nodes) if n and n != host}


def _foreign_attributes_slowly(attrs: list, host: str | None) -> dict[int, tuple] | None:
    foreign: dict[int, tuple] = {}
    for i, attr in enumerate(attrs):
        if type(attr) is not dict:
            return None
        secondary = attr.get("secondary")
        if secondary is None:
            continue
        if type(secondary) is not dict:
            return None
        node = secondary.get("node")
        if node and node != host:
            foreign[i] = (node, attr.get("handle_id"))
    return foreign


def _borrowed(allocations: list, attrs: list, host: str | None) -> list:
    borrowed = []
    for ordinal, idx in enumerate(allocations):
        if idx is None:
            continue
        if not isinstance(idx, int) or not 0 <= idx < len(attrs):
            continue  # Calico skips allocations whose attributes are missing
        attr = field_dict(attrs[idx], "attribute")
        node = field_dict(attr.get("secondary"), "attribute.secondary").get("node")
        if node and node != host:
            borrowed.append([ordinal, node, attr.get("handle_id")])
    return borrowed


def _ipam_block_delete(obj: dict) -> list[str]:
    return [K.ipam_block_key(_spec_cidr(obj, "IPAMBlock"))]


def _affinity_id(obj: dict) -> tuple[str, str, dict]:
    name, _, _ = identity(obj, False)
    spec = field_dict(obj.get("spec"), "spec")
    node, cidr = spec.get("node"), spec.get("cidr")
    if not cidr:
        cidr = _name_to_cidr(name)
    if not node and cidr:
        suffix = "-" + cidr.replace(".", "-").replace("/", "-")
        node = name[: -len(suffix)] if name.endswith(suffix) else None
    if not node or not cidr:
        raise ProjectionError(f"BlockAffinity {name}: no spec.node/spec.cidr")
    return node, network(cidr, f"BlockAffinity {name}"), spec


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
    name, _, md = identity(obj, False)
    ann = str_map(md.get("annotations"), "annotations")
    spec = field_dict(obj.get("spec"), "spec")
    status = field_dict(obj.get("status"), "status")
    value: Value = {"name": name, "labels": dict(str_map(md.get("labels"), "labels"))}
    for a, field in NODE_ANNOTATIONS.items():
        if ann.get(a):
            value[field] = ann[a]
    if ann.get(ANN_AS_NUMBER, "").isdigit():
        value["asNumber"] = int(ann[ANN_AS_NUMBER])
    # Fallback when calico-node has not annotated the node yet: first InternalIP of each family,
    # as a /32 or /128 because the subnet is unknown.
    for entry in field_list(status.get("addresses"), "status.addresses"):
        address = field_dict(entry, "address")
        if address.get("type") == "InternalIP" and isinstance(address.get("address"), str):
            net = host_net(address["address"], f"node {name}")
            field = "ipv6Address" if ":" in net else "ipv4Address"
            value.setdefault(field, net)
    cidrs = field_list(spec.get("podCIDRs"), "spec.podCIDRs") or ([spec["podCIDR"]] if spec.get("podCIDR") else [])
    value["podCIDRs"] = [network(c, f"node {name} podCIDR") for c in cidrs]
    return [(K.node_key(name), compact(value))]


def _node_delete(obj: dict) -> list[str]:
    name, _, _ = identity(obj, False)
    return [K.node_key(name)]


def _host_endpoint_id(obj: dict) -> tuple[str, str, dict, dict]:
    name, _, md = identity(obj, False)
    spec = field_dict(obj.get("spec"), "spec")
    node = spec.get("node")
    if not isinstance(node, str) or not node:
        raise ProjectionError(f"HostEndpoint {name}: no spec.node")
    return name, node, md, spec


def _host_endpoint(obj: dict) -> list[Update]:
    name, node, md, spec = _host_endpoint_id(obj)
    ports = []
    for p in field_list(spec.get("ports"), "spec.ports"):
        p = field_dict(p, "port")
        ports.append(
            compact({"name": p.get("name"), "protocol": protocol_field(p.get("protocol")), "port": p.get("port")})
        )
    value = {
        "node": node,
        "interfaceName": spec.get("interfaceName"),
        "expectedIPs": [
            host_net(i, f"HostEndpoint {name}").split("/")[0]
            for i in field_list(spec.get("expectedIPs"), "spec.expectedIPs")
        ],
        "profiles": field_list(spec.get("profiles"), "spec.profiles"),
        "labels": str_map(md.get("labels"), "labels"),
        "ports": ports,
    }
    return [(K.host_endpoint_key(node, name), compact(value))]


def _host_endpoint_delete(obj: dict) -> list[str]:
    name, node, _, _ = _host_endpoint_id(obj)
    return [K.host_endpoint_key(node, name)]


def _whole_spec(key_fn: Callable[[str], str]) -> Projector:
    """Resources passed through as their spec: user configuration, small and rarely changed."""

    def project(obj: dict) -> list[Update]:
        name, _, _ = identity(obj, False)
        return [(key_fn(name), dict(field_dict(obj.get("spec"), "spec")))]

    def delete(obj: dict) -> list[str]:
        name, _, _ = identity(obj, False)
        return [key_fn(name)]

    return Projector(project, delete)


PROJECTORS: dict[str, Projector] = {
    "pods": Projector(_pod, _pod_delete),
    "namespaces": Projector(_namespace, _namespace_delete),
    "serviceaccounts": Projector(_service_account, _service_account_delete),
    "networkpolicies": Projector(_k8s_network_policy, _k8s_network_policy_delete),
    "calico-networkpolicies": Projector(_calico_network_policy, _calico_network_policy_delete),
    "globalnetworkpolicies": Projector(_global_network_policy, _global_network_policy_delete),
    "globalnetworksets": _network_set(False),
    "networksets": _network_set(True),
    "ippools": Projector(_ip_pool, _ip_pool_delete),
    "ipamblocks": Projector(_ipam_block, _ipam_block_delete),
    "blockaffinities": Projector(_block_affinity, _block_affinity_delete),
    "nodes": Projector(_node, _node_delete),
    "hostendpoints": Projector(_host_endpoint, _host_endpoint_delete),
    "felixconfigurations": _whole_spec(K.felix_configuration_key),
    "clusterinformations": _whole_spec(K.cluster_information_key),
    "bgppeers": _whole_spec(K.bgp_peer_key),
    "bgpconfigurations": _whole_spec(K.bgp_configuration_key),
}
assert PROJECTORS.keys() == RESOURCES.keys(), "one projector per followed resource"
