"""Writes calico-crds.yaml: the CustomResourceDefinitions of the crd.projectcalico.org kinds typha reads.

    .venv/bin/python deploy/crds/generate.py          # rewrite calico-crds.yaml
    .venv/bin/python deploy/crds/generate.py --check  # exit 1 if calico-crds.yaml is out of date

Why generated: the twelve kinds share building blocks (a policy rule and its entity rules appear in
both policy kinds, a secret reference in two BGP kinds, a CIDR list in both network-set kinds), and
each is written once here. tests/test_deploy_crds.py checks that the YAML is what this script writes,
that the schemas are structural, and that typha's projection reads no field they do not declare.

What the schemas say: the field names and types of Calico's v3 API (projectcalico.org/v3, stored as
crd.projectcalico.org/v1), closed, so that under kubectl's default strict field validation a
misspelt field is an error instead of silently doing nothing. FelixConfiguration is the exception:
typha passes its spec to felix whole and Calico defines almost two hundred fields, so the ones felix
reads are typed and the rest are kept as written (`x-kubernetes-preserve-unknown-fields`).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import yaml

GROUP = "crd.projectcalico.org"
OUT = Path(__file__).with_name("calico-crds.yaml")
Schema = dict[str, Any]

# ---- building blocks --------------------------------------------------------------------------

STR: Schema = {"type": "string"}
INT: Schema = {"type": "integer"}
BOOL: Schema = {"type": "boolean"}
NUM: Schema = {"type": "number"}
TIME: Schema = {"type": "string", "format": "date-time"}
INT_OR_STR: Schema = {"x-kubernetes-int-or-string": True, "anyOf": [{"type": "integer"}, {"type": "string"}]}
SELECTOR: Schema = {"type": "string", "maxLength": 1024}


def enum(*values: Any) -> Schema:
    return {"type": "integer" if isinstance(values[0], int) else "string", "enum": list(values)}


def arr(items: Schema, **extra: Any) -> Schema:
    return {"type": "array", "items": items, **extra}


def str_map(values: Schema = STR) -> Schema:
    return {"type": "object", "additionalProperties": values}


def obj(required: tuple[str, ...] = (), **props: Schema) -> Schema:
    out: Schema = {"type": "object", "properties": props}
    if required:
        out["required"] = list(required)
    return out


CIDRS = arr(STR)
SECRET_REF = obj(secretKeyRef=obj(("key",), name=STR, key=STR, optional=BOOL))
ENCAP_MODE = {**enum("Never", "Always", "CrossSubnet"), "default": "Never"}
PORTS = arr(INT_OR_STR)

ENTITY_RULE = obj(
    nets=CIDRS,
    notNets=CIDRS,
    selector=SELECTOR,
    notSelector=SELECTOR,
    namespaceSelector=SELECTOR,
    ports=PORTS,
    notPorts=PORTS,
    serviceAccounts=obj(names=arr(STR), selector=SELECTOR),
    services=obj(name=STR, namespace=STR),
)
ICMP = obj(type={**INT, "minimum": 0, "maximum": 254}, code={**INT, "minimum": 0, "maximum": 255})
RULE = obj(
    ("action",),
    action=enum("Allow", "Deny", "Log", "Pass"),
    ipVersion=enum(4, 6),
    protocol=INT_OR_STR,
    notProtocol=INT_OR_STR,
    icmp=ICMP,
    notICMP=ICMP,
    source=ENTITY_RULE,
    destination=ENTITY_RULE,
    http=obj(methods=arr(STR), paths=arr(obj(exact=STR, prefix=STR))),
    metadata=obj(annotations=str_map()),
)
POLICY_SPEC: dict[str, Schema] = {
    "order": NUM,
    "tier": {**STR, "default": "default"},
    "selector": SELECTOR,
    "serviceAccountSelector": SELECTOR,
    "types": arr(enum("Ingress", "Egress"), maxItems=2),
    "ingress": arr(RULE),
    "egress": arr(RULE),
    "performanceHints": arr(enum("AssumeNeededOnEveryNode")),
}

POLICY_COLUMNS = [
    ("Tier", "string", ".spec.tier"),
    ("Order", "number", ".spec.order"),
    ("Selector", "string", ".spec.selector"),
]

# ---- the kinds --------------------------------------------------------------------------------

# (kind, plural, namespaced, spec schema, printer columns as (name, type, jsonPath))
KINDS: list[tuple[str, str, bool, Schema, list[tuple[str, str, str]]]] = [
    (
        "IPPool",
        "ippools",
        False,
        obj(
            ("cidr",),
            cidr=STR,
            blockSize=INT,
            ipipMode=ENCAP_MODE,
            vxlanMode=ENCAP_MODE,
            natOutgoing=BOOL,
            disabled=BOOL,
            disableBGPExport=BOOL,
            nodeSelector=SELECTOR,
            allowedUses=arr(enum("Workload", "Tunnel", "LoadBalancer")),
            assignmentMode=enum("Automatic", "Manual"),
            # Calico API v1 spellings, still read for pools written before v3.
            ipip=obj(enabled=BOOL, mode=STR),
            **{"nat-outgoing": BOOL},
        ),
        [
            ("CIDR", "string", ".spec.cidr"),
            ("Block Size", "integer", ".spec.blockSize"),
            ("VXLAN", "string", ".spec.vxlanMode"),
            ("IPIP", "string", ".spec.ipipMode"),
            ("NAT", "boolean", ".spec.natOutgoing"),
            ("Disabled", "boolean", ".spec.disabled"),
        ],
    ),
    (
        "IPAMBlock",
        "ipamblocks",
        False,
        obj(
            ("cidr", "allocations", "unallocated", "attributes", "strictAffinity"),
            cidr=STR,
            affinity=STR,
            affinityClaimTime=TIME,
            strictAffinity=BOOL,
            allocations=arr({**INT, "nullable": True}),
            unallocated=arr(INT),
            attributes=arr(obj(handle_id=STR, secondary=str_map(), alternateOwnerAttrs=str_map(), releasedAt=TIME)),
            deleted=BOOL,
            sequenceNumber={**INT, "format": "int64", "default": 0},
            sequenceNumberForAllocation=str_map({**INT, "format": "int64"}),
        ),
        [("CIDR", "string", ".spec.cidr"), ("Affinity", "string", ".spec.affinity")],
    ),
    (
        "BlockAffinity",
        "blockaffinities",
        False,
        # `deleted` is a string ("true"/"false") in Calico's CRD, and stays one for compatibility.
        obj(("cidr", "node", "state", "deleted"), cidr=STR, node=STR, state=STR, deleted=STR, type=STR),
        [("Node", "string", ".spec.node"), ("CIDR", "string", ".spec.cidr"), ("State", "string", ".spec.state")],
    ),
    (
        "GlobalNetworkPolicy",
        "globalnetworkpolicies",
        False,
        obj(
            **POLICY_SPEC,
            namespaceSelector=SELECTOR,
            applyOnForward=BOOL,
            preDNAT=BOOL,
            doNotTrack=BOOL,
        ),
        POLICY_COLUMNS,
    ),
    (
        "NetworkPolicy",
        "networkpolicies",
        True,
        obj(**POLICY_SPEC),
        POLICY_COLUMNS,
    ),
    ("GlobalNetworkSet", "globalnetworksets", False, obj(nets=CIDRS), []),
    ("NetworkSet", "networksets", True, obj(nets=CIDRS), []),
    (
        "HostEndpoint",
        "hostendpoints",
        False,
        obj(
            ("node",),
            node=STR,
            interfaceName=STR,
            expectedIPs=arr(STR),
            profiles=arr(STR),
            ports=arr(
                obj(
                    ("name", "port", "protocol"),
                    name=STR,
                    port={**INT, "minimum": 1, "maximum": 65535},
                    protocol=INT_OR_STR,
                )
            ),
        ),
        [("Node", "string", ".spec.node"), ("Interface", "string", ".spec.interfaceName")],
    ),
    (
        "FelixConfiguration",
        "felixconfigurations",
        False,
        {
            **obj(
                logSeverityScreen=STR,
                healthEnabled=BOOL,
                healthHost=STR,
                healthPort=INT,
                prometheusMetricsEnabled=BOOL,
                prometheusMetricsPort=INT,
                routeRefreshInterval=STR,
                iptablesRefreshInterval=STR,
                iptablesBackend=enum("Legacy", "NFT", "Auto"),
                chainInsertMode=enum("Insert", "Append"),
                defaultEndpointToHostAction=enum("Drop", "Return", "Accept"),
                vxlanEnabled=BOOL,
                vxlanVNI=INT,
                vxlanPort=INT,
                vxlanMTU=INT,
                ipipEnabled=BOOL,
                ipipMTU=INT,
                interfacePrefix=STR,
                bpfEnabled=BOOL,
                wireguardEnabled=BOOL,
            ),
            "x-kubernetes-preserve-unknown-fields": True,
        },
        [],
    ),
    (
        "ClusterInformation",
        "clusterinformations",
        False,
        obj(calicoVersion=STR, clusterGUID=STR, clusterType=STR, datastoreReady=BOOL, variant=STR),
        [("Ready", "boolean", ".spec.datastoreReady"), ("Version", "string", ".spec.calicoVersion")],
    ),
    (
        "BGPPeer",
        "bgppeers",
        False,
        obj(
            node=STR,
            nodeSelector=SELECTOR,
            peerIP=STR,
            peerSelector=SELECTOR,
            asNumber=INT,
            localASNumber=INT,
            localWorkloadSelector=SELECTOR,
            keepOriginalNextHop=BOOL,
            nextHopMode=enum("Auto", "Self", "Keep"),
            password=SECRET_REF,
            sourceAddress=enum("UseNodeIP", "None"),
            maxRestartTime=STR,
            keepaliveTime=STR,
            numAllowedLocalASNumbers=INT,
            ttlSecurity=INT,
            filters=arr(STR),
            reachableBy=STR,
            reversePeering=enum("Auto", "Manual"),
        ),
        [("Peer IP", "string", ".spec.peerIP"), ("AS", "integer", ".spec.asNumber"), ("Node", "string", ".spec.node")],
    ),
    (
        "BGPConfiguration",
        "bgpconfigurations",
        False,
        obj(
            asNumber=INT,
            nodeToNodeMeshEnabled=BOOL,
            logSeverityScreen=STR,
            listenPort=INT,
            bindMode=enum("None", "NodeIP"),
            ignoredInterfaces=arr(STR),
            serviceClusterIPs=arr(obj(cidr=STR)),
            serviceExternalIPs=arr(obj(cidr=STR)),
            serviceLoadBalancerIPs=arr(obj(cidr=STR)),
            serviceLoadBalancerAggregation=enum("Enabled", "Disabled"),
            communities=arr(obj(name=STR, value=STR)),
            prefixAdvertisements=arr(obj(cidr=STR, communities=arr(STR))),
            nodeMeshPassword=SECRET_REF,
            nodeMeshMaxRestartTime=STR,
            localWorkloadPeeringIPV4=STR,
            localWorkloadPeeringIPV6=STR,
            ipv4NormalRoutePriority=INT,
            ipv6NormalRoutePriority=INT,
            programClusterRoutes=enum("Enabled", "Disabled", "EnabledIPIPOnly", "EnabledNoEncapOnly"),
        ),
        [("AS", "integer", ".spec.asNumber"), ("Mesh", "boolean", ".spec.nodeToNodeMeshEnabled")],
    ),
]


def crd(kind: str, plural: str, namespaced: bool, spec: Schema, columns: list[tuple[str, str, str]]) -> Schema:
    version: Schema = {
        "name": "v1",
        "served": True,
        "storage": True,
        "schema": {
            "openAPIV3Schema": obj(
                apiVersion=STR,
                kind=STR,
                metadata={"type": "object"},
                spec=spec,
            )
        },
    }
    if columns:
        version["additionalPrinterColumns"] = [
            {"name": name, "type": type_, "jsonPath": path} for name, type_, path in columns
        ] + [{"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}]
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.{GROUP}", "labels": {"app.kubernetes.io/part-of": "pytypha"}},
        "spec": {
            "group": GROUP,
            "names": {"kind": kind, "listKind": kind + "List", "plural": plural, "singular": kind.lower()},
            "scope": "Namespaced" if namespaced else "Cluster",
            "versions": [version],
        },
    }


def documents() -> list[Schema]:
    return [crd(*k) for k in KINDS]


HEADER = """\
# GENERATED by deploy/crds/generate.py -- edit that file, then run it. Do not edit by hand.
#
# The CustomResourceDefinitions of the twelve crd.projectcalico.org kinds typha lists and watches,
# with Calico's names (a cluster that already has Calico's CRDs needs none of these: see
# deploy/install.sh and docs/operations.md).
"""


class _Dumper(yaml.SafeDumper):
    def ignore_aliases(self, data: Any) -> bool:  # shared building blocks are written out in full
        return True


def render() -> str:
    body = yaml.dump_all(documents(), Dumper=_Dumper, sort_keys=False, default_flow_style=False, width=120)
    return HEADER + "---\n" + body


def main(argv: list[str]) -> int:
    text = render()
    if "--check" in argv:
        if OUT.read_text() != text:
            print(f"{OUT} is out of date: run {Path(__file__).name}", file=sys.stderr)
            return 1
        return 0
    OUT.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
