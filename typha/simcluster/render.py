"""Records -> the API server's JSON: every object the synthetic cluster lists or changes, with its noise.

Objects are rendered only when listed or changed, so the cluster holds compact records rather than
~3 KB of dicts per pod. The noise a real cluster carries (managedFields, conditions, container
statuses, resourceVersion) is rendered too, because typha's projection must be seen to ignore it.
Rendered objects share constant sub-objects (managedFields' field sets, tolerations, ...): treat them
as read-only.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from .records import Block, Fixed, Namespace, Node, Pod, Policy, ip_text, ts

Obj = dict[str, Any]
Event = tuple[str, str, Obj]  # (event type, resource, object), as a watch reports it

_POD_SPEC_FIELDS: Obj = {
    "f:metadata": {"f:generateName": {}, "f:labels": {".": {}}, "f:ownerReferences": {".": {}}},
    "f:spec": {
        "f:containers": {},
        "f:dnsPolicy": {},
        "f:enableServiceLinks": {},
        "f:restartPolicy": {},
        "f:schedulerName": {},
        "f:securityContext": {},
        "f:terminationGracePeriodSeconds": {},
    },
}
_POD_CALICO_FIELDS: Obj = {
    "f:metadata": {
        "f:annotations": {
            ".": {},
            "f:cni.projectcalico.org/containerID": {},
            "f:cni.projectcalico.org/podIP": {},
            "f:cni.projectcalico.org/podIPs": {},
        }
    }
}
_POD_STATUS_FIELDS: Obj = {
    "f:status": {
        "f:conditions": {},
        "f:containerStatuses": {},
        "f:hostIP": {},
        "f:hostIPs": {},
        "f:phase": {},
        "f:podIP": {},
        "f:podIPs": {},
        "f:startTime": {},
    }
}
_TOLERATIONS = [
    {"effect": "NoExecute", "key": "node.kubernetes.io/not-ready", "operator": "Exists", "tolerationSeconds": 300},
    {"effect": "NoExecute", "key": "node.kubernetes.io/unreachable", "operator": "Exists", "tolerationSeconds": 300},
]
_NODE_CAPACITY = {
    "cpu": "8",
    "ephemeral-storage": "101430960Ki",
    "hugepages-2Mi": "0",
    "memory": "32863040Ki",
    "pods": "110",
}
_NODE_ALLOCATABLE = {
    "cpu": "7910m",
    "ephemeral-storage": "93478772582",
    "hugepages-2Mi": "0",
    "memory": "31711040Ki",
    "pods": "110",
}
_NODE_INFO = {
    "architecture": "amd64",
    "bootID": "",
    "containerRuntimeVersion": "containerd://1.7.13",
    "kernelVersion": "6.1.0-18-amd64",
    "kubeProxyVersion": "v1.29.2",
    "kubeletVersion": "v1.29.2",
    "machineID": "",
    "operatingSystem": "linux",
    "osImage": "Debian GNU/Linux 12 (bookworm)",
    "systemUUID": "",
}
_NODE_STATUS_FIELDS: Obj = {"f:status": {"f:conditions": {}, "f:daemonEndpoints": {}, "f:images": {}, "f:nodeInfo": {}}}
_NODE_CALICO_FIELDS: Obj = {"f:metadata": {"f:annotations": {"f:projectcalico.org/IPv4Address": {}}}}


def render_pod(p: Pod) -> Obj:
    ns, node, app = p.ns.name, p.node, p.app
    created = ts(p.created)
    md: Obj = {
        "name": p.name,
        "generateName": f"{app.name}-{app.hash}-",
        "namespace": ns,
        "uid": p.uid,
        "resourceVersion": str(p.rv),
        "creationTimestamp": created,
        "labels": dict(p.labels),
        "ownerReferences": [
            {
                "apiVersion": "apps/v1",
                "blockOwnerDeletion": True,
                "controller": True,
                "kind": "ReplicaSet",
                "name": f"{app.name}-{app.hash}",
                "uid": app.rs_uid,
            }
        ],
    }
    mf = [
        {
            "apiVersion": "v1",
            "fieldsType": "FieldsV1",
            "fieldsV1": _POD_SPEC_FIELDS,
            "manager": "kube-controller-manager",
            "operation": "Update",
            "time": created,
        }
    ]
    spec: Obj = {
        "containers": [
            {
                "image": app.image,
                "imagePullPolicy": "IfNotPresent",
                "name": app.name,
                "ports": app.ports,
                "resources": {},
                "terminationMessagePath": "/dev/termination-log",
                "terminationMessagePolicy": "File",
            }
        ],
        "dnsPolicy": "ClusterFirst",
        "enableServiceLinks": True,
        "nodeName": node.name,
        "preemptionPolicy": "PreemptLowerPriority",
        "priority": 0,
        "restartPolicy": "Always",
        "schedulerName": "default-scheduler",
        "securityContext": {},
        "serviceAccount": app.sa,
        "serviceAccountName": app.sa,
        "terminationGracePeriodSeconds": 30,
        "tolerations": _TOLERATIONS,
    }
    status: Obj = {
        "phase": "Pending",
        "qosClass": "BestEffort",
        "hostIP": node.ip,
        "hostIPs": [{"ip": node.ip}],
        "startTime": created,
        "conditions": [
            {"lastProbeTime": None, "lastTransitionTime": created, "status": "True", "type": "PodScheduled"}
        ],
    }
    if p.phase != Pod.PENDING:
        ip = ip_text(p.ip)
        started = ts(p.created + 3 + 11 * p.restarts)
        mf.append(
            {
                "apiVersion": "v1",
                "fieldsType": "FieldsV1",
                "fieldsV1": _POD_CALICO_FIELDS,
                "manager": "calico",
                "operation": "Update",
                "time": ts(p.created + 1),
            }
        )
        cni_ip = "" if p.phase == Pod.RELEASED else f"{ip}/32"
        md["annotations"] = {
            "cni.projectcalico.org/containerID": p.container_id(),
            "cni.projectcalico.org/podIP": cni_ip,
            "cni.projectcalico.org/podIPs": cni_ip,
        }
        ready = "True"
        status.update(
            {
                "phase": "Running",
                "podIP": ip,
                "podIPs": [{"ip": ip}],
                "conditions": [
                    {"lastProbeTime": None, "lastTransitionTime": started, "status": "True", "type": "Initialized"},
                    {"lastProbeTime": None, "lastTransitionTime": started, "status": ready, "type": "Ready"},
                    {
                        "lastProbeTime": None,
                        "lastTransitionTime": started,
                        "status": ready,
                        "type": "ContainersReady",
                    },
                    {
                        "lastProbeTime": None,
                        "lastTransitionTime": created,
                        "status": "True",
                        "type": "PodScheduled",
                    },
                ],
                "containerStatuses": [
                    {
                        "containerID": "containerd://" + p.container_id(),
                        "image": app.image,
                        "imageID": app.image + "@sha256:" + app.rs_uid.replace("-", "") * 2,
                        "lastState": {},
                        "name": app.name,
                        "ready": True,
                        "restartCount": p.restarts,
                        "started": True,
                        "state": {"running": {"startedAt": started}},
                    }
                ],
            }
        )
        mf.append(
            {
                "apiVersion": "v1",
                "fieldsType": "FieldsV1",
                "fieldsV1": _POD_STATUS_FIELDS,
                "manager": "kubelet",
                "operation": "Update",
                "subresource": "status",
                "time": started,
            }
        )
    if p.phase in (Pod.TERMINATING, Pod.RELEASED):
        md["deletionTimestamp"] = ts(p.deleted_at + 30)
        md["deletionGracePeriodSeconds"] = 30
    md["managedFields"] = mf
    return {"apiVersion": "v1", "kind": "Pod", "metadata": md, "spec": spec, "status": status}


def render_node(n: Node) -> Obj:
    created = ts(n.created)
    hb = ts(n.heartbeat)
    ann = {"node.alpha.kubernetes.io/ttl": "0", "volumes.kubernetes.io/controller-managed-attach-detach": "true"}
    mf = [
        {
            "apiVersion": "v1",
            "fieldsType": "FieldsV1",
            "fieldsV1": _NODE_STATUS_FIELDS,
            "manager": "kubelet",
            "operation": "Update",
            "subresource": "status",
            "time": hb,
        }
    ]
    if n.annotated:
        ann["projectcalico.org/IPv4Address"] = f"{n.ip}/24"
        t = n.tunnel
        if t is not None and t.block is not None:
            if t.kind == "ipipTunnelAddress":
                ann["projectcalico.org/IPv4IPIPTunnelAddr"] = ip_text(t.ip)
            else:
                ann["projectcalico.org/IPv4VXLANTunnelAddr"] = ip_text(t.ip)
                ann["projectcalico.org/VXLANTunnelMACAddr"] = "66:" + ":".join(
                    f"{b:02x}" for b in (n.idx | 0x10000000).to_bytes(5, "big")
                )
        mf.append(
            {
                "apiVersion": "v1",
                "fieldsType": "FieldsV1",
                "fieldsV1": _NODE_CALICO_FIELDS,
                "manager": "calico-node",
                "operation": "Update",
                "time": ts(n.created + 5),
            }
        )
    conds = [
        {
            "lastHeartbeatTime": hb,
            "lastTransitionTime": created,
            "message": m,
            "reason": r,
            "status": "False",
            "type": t,
        }
        for t, r, m in (
            ("MemoryPressure", "KubeletHasSufficientMemory", "kubelet has sufficient memory available"),
            ("DiskPressure", "KubeletHasNoDiskPressure", "kubelet has no disk pressure"),
            ("PIDPressure", "KubeletHasSufficientPID", "kubelet has sufficient PID available"),
        )
    ]
    conds.append(
        {
            "lastHeartbeatTime": hb,
            "lastTransitionTime": created,
            "message": "kubelet is posting ready status",
            "reason": "KubeletReady",
            "status": "True",
            "type": "Ready",
        }
    )
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": n.name,
            "uid": n.uid,
            "resourceVersion": str(n.rv),
            "creationTimestamp": created,
            "labels": dict(n.labels),
            "annotations": ann,
            "managedFields": mf,
        },
        "spec": {"providerID": f"synthetic://{n.name}"},
        "status": {
            "addresses": [{"address": n.ip, "type": "InternalIP"}, {"address": n.name, "type": "Hostname"}],
            "allocatable": _NODE_ALLOCATABLE,
            "capacity": _NODE_CAPACITY,
            "conditions": conds,
            "daemonEndpoints": {"kubeletEndpoint": {"Port": 10250}},
            "nodeInfo": _NODE_INFO,
        },
    }


def crd_meta(name: str, uid: str, rv: int, created: int, generation: int = 1, ns: str | None = None) -> Obj:
    md: Obj = {
        "name": name,
        "uid": uid,
        "resourceVersion": str(rv),
        "generation": generation,
        "creationTimestamp": ts(created),
    }
    if ns is not None:
        md["namespace"] = ns
    return md


def render_block(b: Block) -> Obj:
    allocations: list[int | None] = []
    attributes: list[Obj] = []
    seq_for = {}
    for ordinal, owner in enumerate(b.owners):
        if owner is None:
            allocations.append(None)
            continue
        allocations.append(len(attributes))
        attributes.append({"handle_id": owner.handle(), "secondary": owner.secondary()})
        seq_for[str(ordinal)] = owner.alloc_seq
    return {
        "apiVersion": "crd.projectcalico.org/v1",
        "kind": "IPAMBlock",
        "metadata": crd_meta(b.name, b.uid, b.rv, b.created),
        "spec": {
            "cidr": b.cidr,
            "affinity": f"host:{b.node.name}" if b.node else None,
            "allocations": allocations,
            "unallocated": list(b.free),
            "attributes": attributes,
            "sequenceNumber": b.seq,
            "sequenceNumberForAllocation": seq_for,
            "deleted": False,
            "strictAffinity": False,
        },
    }


def render_affinity(b: Block, node: Node | None = None) -> Obj:
    node = node or b.node
    assert node is not None
    return {
        "apiVersion": "crd.projectcalico.org/v1",
        "kind": "BlockAffinity",
        "metadata": crd_meta(f"{node.name}-{b.name}", b.aff_uid, b.aff_rv, b.created),
        "spec": {"cidr": b.cidr, "deleted": "false", "node": node.name, "state": b.aff_state},
    }


def render_namespace(ns: Namespace) -> Obj:
    return {
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {
            "name": ns.name,
            "uid": ns.uid,
            "resourceVersion": str(ns.rv),
            "creationTimestamp": ts(ns.created),
            "labels": dict(ns.labels),
            "managedFields": [
                {
                    "apiVersion": "v1",
                    "fieldsType": "FieldsV1",
                    "fieldsV1": {"f:metadata": {"f:labels": {}}},
                    "manager": "kubectl-create",
                    "operation": "Update",
                    "time": ts(ns.created),
                }
            ],
        },
        "spec": {"finalizers": ["kubernetes"]},
        "status": {"phase": "Active"},
    }


def render_sa(ns: Namespace, name: str) -> Obj:
    uid, rv, created = ns.sas[name]
    return {
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": {
            "name": name,
            "namespace": ns.name,
            "uid": uid,
            "resourceVersion": str(rv),
            "creationTimestamp": ts(created),
        },
    }


def render_k8s_policy(p: Policy) -> Obj:
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {
            "name": p.name,
            "namespace": p.ns,
            "uid": p.uid,
            "resourceVersion": str(p.rv),
            "generation": p.generation,
            "creationTimestamp": ts(p.created),
            "managedFields": [
                {
                    "apiVersion": "networking.k8s.io/v1",
                    "fieldsType": "FieldsV1",
                    "fieldsV1": {"f:spec": {}},
                    "manager": "kubectl-client-side-apply",
                    "operation": "Update",
                    "time": ts(p.created),
                }
            ],
        },
        "spec": p.spec,
    }


def render_gnp(p: Policy) -> Obj:
    return {
        "apiVersion": "crd.projectcalico.org/v1",
        "kind": "GlobalNetworkPolicy",
        "metadata": crd_meta(p.name, p.uid, p.rv, p.created, p.generation),
        "spec": p.spec,
    }


def fixed_objects(f: Fixed) -> Iterator[tuple[str, Obj]]:
    """The cluster's configuration objects: ClusterInformation, FelixConfiguration, the IP pool."""
    rv, now = f.rv, 1_704_067_200
    yield (
        "clusterinformations",
        {
            "apiVersion": "crd.projectcalico.org/v1",
            "kind": "ClusterInformation",
            "metadata": crd_meta("default", f.ci_uid, rv, now),
            "spec": {
                "calicoVersion": "v3.27.2",
                "clusterGUID": f.cluster_guid,
                "clusterType": "typha,kdd,k8s,operator,bgp",
                "datastoreReady": True,
            },
        },
    )
    yield (
        "felixconfigurations",
        {
            "apiVersion": "crd.projectcalico.org/v1",
            "kind": "FelixConfiguration",
            "metadata": crd_meta("default", f.felix_uid, rv, now),
            "spec": {
                "bpfLogLevel": "",
                "floatingIPs": "Disabled",
                "logSeverityScreen": "Info",
                "reportingInterval": "0s",
                "ipipEnabled": f.encapsulation == "IPIP",
                "vxlanEnabled": f.encapsulation == "VXLAN",
                "healthPort": 9099,
            },
        },
    )
    yield (
        "ippools",
        {
            "apiVersion": "crd.projectcalico.org/v1",
            "kind": "IPPool",
            "metadata": crd_meta("default-ipv4-ippool", f.pool_uid, rv, now),
            "spec": {
                "allowedUses": ["Workload", "Tunnel"],
                "blockSize": f.block_size,
                "cidr": f.pool_cidr,
                "ipipMode": "Always" if f.encapsulation == "IPIP" else "Never",
                "vxlanMode": "Always" if f.encapsulation == "VXLAN" else "Never",
                "natOutgoing": True,
                "nodeSelector": "all()",
            },
        },
    )
