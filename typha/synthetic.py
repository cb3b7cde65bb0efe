"""A deterministic synthetic Kubernetes + Calico cluster.

Design note
-----------
The generator keeps the cluster as *compact state* (one slotted record per node,
pod and IPAM block, sharing label dicts and specs) and renders the API-server
JSON shape of an object only when it is listed or changed.  Holding 150,000
rendered pods (managedFields, conditions, container statuses: ~3 KB of dicts
each) would cost gigabytes; the records cost a few hundred bytes per pod, and
rendering on demand streams a full listing in a few seconds.  Rendered objects may
share constant sub-objects (managedFields' field sets, tolerations, ...): treat
them as read-only.

Everything is derived from one ``random.Random(seed)`` and a synthetic clock, so a
seed always yields the same objects, the same UIDs and the same churn.

IPAM follows Calico's algorithm (seed 000): allocate from the node's affine blocks;
else claim a free block from the pool (while the node holds fewer than
``max_blocks_per_node``); else *borrow* an address from any other block with room.
By default every node may hold just enough blocks for the average node, and a few
"hot" nodes (``hot_node_fraction``) are given more pods than that (taken from other
nodes, so the total stays ``nodes * pods_per_node``): they borrow, which gives the
routing code borrowed addresses to handle without needing an exhausted pool.

Churn operations emit the watch events a real cluster produces for them, in
order (pod ADDED Pending -> IPAMBlock MODIFIED -> pod MODIFIED Running, ...), with
resourceVersions from one cluster-wide counter like etcd's revision.
"""

from __future__ import annotations

import bisect
import functools
import ipaddress
import itertools
import math
import random
import time
import uuid
from collections import deque
from collections.abc import Iterator
from typing import Any

from protocol.keys import ADDED, DELETED, MODIFIED

Obj = dict[str, Any]
Event = tuple[str, str, Obj]


DEFAULT_MIX: dict[str, float] = {
    "pod_create": 30,
    "pod_delete": 30,
    "pod_label": 8,
    "pod_status": 25,
    "policy_edit": 2,
    "node_join": 1,
    "node_leave": 1,
    "node_status": 3,
}
CHURN_OPS = tuple(DEFAULT_MIX)

_APP_WORDS = (
    "web",
    "api",
    "cart",
    "auth",
    "search",
    "db",
    "cache",
    "queue",
    "worker",
    "billing",
    "ledger",
    "mailer",
    "report",
    "gateway",
    "frontend",
    "checkout",
    "catalog",
    "media",
)
_TIERS = {"web": "frontend", "frontend": "frontend", "gateway": "frontend", "db": "db", "cache": "db", "ledger": "db"}
_TEAMS = ("payments", "search", "platform", "growth", "data")
_ENVS = ("prod", "staging", "dev")
_NAME_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"  # Kubernetes' generateName alphabet
_FIXED_NAMESPACES = ("default", "kube-system")


@functools.lru_cache(maxsize=1 << 16)
def _ts(sec: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(sec))


@functools.lru_cache(maxsize=1 << 16)
def _ipam_ts(sec: int) -> str:
    # Calico CNI stores Go's time.String() form in allocation attributes.
    return time.strftime("%Y-%m-%d %H:%M:%S +0000 UTC", time.gmtime(sec))


def _ip(n: int) -> str:
    return f"{n >> 24}.{(n >> 16) & 255}.{(n >> 8) & 255}.{n & 255}"


def _dash(cidr: str) -> str:
    return cidr.replace(".", "-").replace(":", "-").replace("/", "-")


# --- Compact state ----------------------------------------------------------------------------


class _Node:
    __slots__ = (
        "annotated",
        "blocks",
        "created",
        "heartbeat",
        "idx",
        "ip",
        "labels",
        "name",
        "pods",
        "rv",
        "tunnel",
        "uid",
    )

    def __init__(self, name: str, idx: int, ip: str, uid: str, created: int, labels: dict) -> None:
        self.name, self.idx, self.ip, self.uid, self.created, self.labels = name, idx, ip, uid, created, labels
        self.rv = 0
        self.blocks: list[_Block] = []
        self.pods: set[_Pod] = set()
        self.tunnel: _Tunnel | None = None
        self.annotated = False
        self.heartbeat = created


class _Tunnel:
    """An IPAM allocation for a node's IPIP/VXLAN tunnel address."""

    __slots__ = ("alloc_seq", "block", "created", "ip", "kind", "node", "ordinal")

    def __init__(self, node: _Node, kind: str, created: int) -> None:
        self.node, self.kind, self.created = node, kind, created
        self.block: _Block | None = None
        self.ordinal = self.ip = self.alloc_seq = 0

    def handle(self) -> str:
        return f"{'ipip' if self.kind == 'ipipTunnelAddress' else 'vxlan'}-tunnel-addr-{self.node.name}"

    def secondary(self) -> dict:
        return {"node": self.node.name, "type": self.kind}


class _App:
    __slots__ = ("hash", "image", "labels", "name", "ports", "rs_uid", "sa")

    def __init__(self, name: str, hash_: str, labels: dict, sa: str, ports: list, image: str, rs_uid: str) -> None:
        self.name, self.hash, self.labels, self.sa, self.ports = name, hash_, labels, sa, ports
        self.image, self.rs_uid = image, rs_uid


class _Pod:
    __slots__ = (
        "alloc_seq",
        "app",
        "block",
        "created",
        "deleted_at",
        "ip",
        "labels",
        "name",
        "node",
        "ns",
        "ordinal",
        "phase",
        "restarts",
        "rv",
        "uid",
    )

    PENDING, RUNNING, TERMINATING, RELEASED = 0, 1, 2, 3

    def __init__(self, ns: _Namespace, name: str, node: _Node, app: _App, uid: str, created: int) -> None:
        self.ns, self.name, self.node, self.app, self.uid, self.created = ns, name, node, app, uid, created
        self.labels = app.labels  # shared until the pod's labels change
        self.rv = 0
        self.block: _Block | None = None
        self.ip = self.ordinal = self.alloc_seq = self.restarts = self.deleted_at = 0
        self.phase = _Pod.PENDING

    def container_id(self) -> str:
        # 64 hex digits like a containerd ID; derived, not stored, to keep pods small.
        return self.uid.replace("-", "") * 2

    def handle(self) -> str:
        return "k8s-pod-network." + self.container_id()

    def secondary(self) -> dict:
        return {
            "namespace": self.ns.name,
            "node": self.node.name,
            "pod": self.name,
            "timestamp": _ipam_ts(self.created),
        }


class _Block:
    __slots__ = (
        "aff_rv",
        "aff_state",
        "aff_uid",
        "base",
        "cidr",
        "created",
        "free",
        "idx",
        "name",
        "node",
        "owners",
        "rv",
        "seq",
        "uid",
    )

    def __init__(self, idx: int, base: int, prefix: int, size: int, uid: str, created: int) -> None:
        self.idx, self.base = idx, base
        self.cidr = f"{_ip(base)}/{prefix}"
        self.name = _dash(self.cidr)
        self.owners: list[_Pod | _Tunnel | None] = [None] * size
        self.free: deque[int] = deque(range(size))
        self.node: _Node | None = None
        self.seq = 0
        self.uid, self.created = uid, created
        self.rv = self.aff_rv = 0
        self.aff_uid = ""
        self.aff_state = "confirmed"


class _Namespace:
    __slots__ = ("apps", "created", "labels", "name", "pods", "policies", "rv", "sas", "uid")

    def __init__(self, name: str, uid: str, created: int, labels: dict) -> None:
        self.name, self.uid, self.created, self.labels = name, uid, created, labels
        self.rv = 0
        self.sas: dict[str, tuple[str, int, int]] = {}  # name -> (uid, rv, created)
        self.apps: list[_App] = []
        self.pods: dict[str, _Pod] = {}
        self.policies: dict[str, _Policy] = {}


class _Policy:
    __slots__ = ("created", "generation", "name", "ns", "rv", "spec", "uid")

    def __init__(self, ns: str | None, name: str, uid: str, created: int, spec: dict) -> None:
        self.ns, self.name, self.uid, self.created, self.spec = ns, name, uid, created, spec
        self.rv, self.generation = 0, 1


class _IndexedSet:
    """A set with O(1) add/remove and O(1) uniform random choice (swap-remove list)."""

    __slots__ = ("index", "items")

    def __init__(self) -> None:
        self.items: list = []
        self.index: dict = {}

    def add(self, x: Any) -> None:
        self.index[x] = len(self.items)
        self.items.append(x)

    def remove(self, x: Any) -> None:
        i = self.index.pop(x)
        last = self.items.pop()
        if last is not x:
            self.items[i] = last
            self.index[last] = i

    def choice(self, rng: random.Random) -> Any:
        return self.items[int(rng.random() * len(self.items))]

    def __len__(self) -> int:
        return len(self.items)


class PoolExhausted(RuntimeError):
    pass


# --- Constant sub-objects, shared by every rendered object (read-only!) -------------------------

_POD_SPEC_FIELDS = {
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
_POD_CALICO_FIELDS = {
    "f:metadata": {
        "f:annotations": {
            ".": {},
            "f:cni.projectcalico.org/containerID": {},
            "f:cni.projectcalico.org/podIP": {},
            "f:cni.projectcalico.org/podIPs": {},
        }
    }
}
_POD_STATUS_FIELDS = {
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
_NODE_STATUS_FIELDS = {"f:status": {"f:conditions": {}, "f:daemonEndpoints": {}, "f:images": {}, "f:nodeInfo": {}}}
_NODE_CALICO_FIELDS = {"f:metadata": {"f:annotations": {"f:projectcalico.org/IPv4Address": {}}}}


class SyntheticCluster:
    """A seeded synthetic cluster: ``initial_objects()`` lists it, ``churn()`` changes it."""

    def __init__(
        self,
        nodes: int = 100,
        pods_per_node: int = 30,
        namespaces: int = 20,
        policies: int = 50,
        seed: int = 0,
        pool_cidr: str = "10.64.0.0/10",
        block_size: int = 26,
        max_blocks_per_node: int | None = None,
        hot_node_fraction: float = 0.002,
        encapsulation: str = "IPIP",
        apps_per_namespace: int = 5,
        global_policies: int = 4,
        start_time: int = 1_704_067_200,
    ) -> None:
        if encapsulation not in ("IPIP", "VXLAN", "None"):
            raise ValueError("encapsulation must be IPIP, VXLAN or None")
        pool = ipaddress.ip_network(pool_cidr)
        if pool.version != 4 or not pool.prefixlen <= block_size <= 32:
            raise ValueError("pool must be IPv4 and no smaller than one block")
        if namespaces < 1 and nodes * pods_per_node:
            raise ValueError("pods need at least one namespace")
        self.seed = seed
        self.pool_cidr = pool.with_prefixlen
        self.block_size = block_size
        self.encapsulation = encapsulation
        self._rng = random.Random(seed)
        self._now = start_time
        self._rv = 1000
        self._pool_base = int(pool.network_address)
        self._block_addrs = 1 << (32 - block_size)
        self._pool_blocks = 1 << (block_size - pool.prefixlen)
        self._next_block = 0
        self._free_block_idx: list[int] = []  # released indices, reused LIFO
        self._blocks: dict[int, _Block] = {}  # idx -> block (claimed or borrow-only)
        self._block_list = _IndexedSet()  # for random borrowing
        tunnel = 1 if encapsulation != "None" else 0
        if max_blocks_per_node is None:  # "auto": enough for the average node
            max_blocks_per_node = max(1, math.ceil((pods_per_node + tunnel) / self._block_addrs))
        self.max_blocks_per_node = max_blocks_per_node  # 0 = unlimited, as Calico's maxBlocksPerHost
        self._nodes: dict[str, _Node] = {}
        self._node_set = _IndexedSet()
        self._next_node = 0
        self._namespaces: dict[str, _Namespace] = {}
        self._pod_set = _IndexedSet()
        self._gnps: dict[str, _Policy] = {}
        self._k8s_policies: list[_Policy] = []
        self._pool_uid = self._uid()
        self._felix_uid = self._uid()
        self._ci_uid, self._cluster_guid = self._uid(), self._rng.getrandbits(128).to_bytes(16, "big").hex()
        self._fixed_rv = self._bump()
        self._build(nodes, pods_per_node, namespaces, policies, apps_per_namespace, global_policies, hot_node_fraction)

    # --- primitives -------------------------------------------------------------------------

    def _uid(self) -> str:
        return str(uuid.UUID(int=self._rng.getrandbits(128), version=4))

    def _bump(self) -> int:
        self._rv += 1
        return self._rv

    def _suffix(self, n: int) -> str:
        r = self._rng.getrandbits(32)
        out = []
        for _ in range(n):
            r, d = divmod(r, 27)
            out.append(_NAME_ALPHABET[d])
        return "".join(out)

    # --- construction -----------------------------------------------------------------------

    def _build(self, n_nodes: int, ppn: int, n_ns: int, n_pol: int, apps: int, n_gnp: int, hot_fraction: float) -> None:
        rng = self._rng
        for name in _FIXED_NAMESPACES:
            self._add_namespace(name, {"kubernetes.io/metadata.name": name})
        for i in range(n_ns):
            name = f"ns-{i:03d}"
            ns = self._add_namespace(
                name,
                {"kubernetes.io/metadata.name": name, "team": _TEAMS[i % len(_TEAMS)], "env": _ENVS[i % len(_ENVS)]},
            )
            words = rng.sample(_APP_WORDS, min(apps, len(_APP_WORDS)))
            for w in words:
                sa = f"{w}-sa" if rng.random() < 0.7 else "default"
                if sa not in ns.sas:
                    ns.sas[sa] = (self._uid(), self._bump(), self._now)
                h = self._suffix(10)
                labels = {"app": w, "tier": _TIERS.get(w, "backend"), "pod-template-hash": h}
                ports = [{"containerPort": 8080, "name": "http", "protocol": "TCP"}]
                if rng.random() < 0.3:
                    ports.append({"containerPort": 9090, "name": "metrics", "protocol": "TCP"})
                ns.apps.append(
                    _App(w, h, labels, sa, ports, f"registry.example/{w}:1.{rng.randrange(30)}", self._uid())
                )
        for i in range(n_gnp):
            self._add_gnp(i)
        ns_list = [self._namespaces[f"ns-{i:03d}"] for i in range(n_ns)]
        for i in range(n_pol):
            self._add_k8s_policy(ns_list[i % len(ns_list)], i)
        nodes = [self._add_node(None) for _ in range(n_nodes)]
        counts = self._pod_counts(n_nodes, ppn, hot_fraction)
        # Cold nodes first so hot nodes find other nodes' blocks to borrow from.
        order = sorted(range(n_nodes), key=lambda i: counts[i] > ppn)
        for i in order:
            node = nodes[i]
            for _ in range(counts[i]):
                pod = self._new_pod(node, ns_list)
                if self._allocate(pod, node, None) is None:
                    raise PoolExhausted(f"pool {self.pool_cidr} exhausted")
                pod.phase = _Pod.RUNNING
                pod.rv = self._bump()

    def _pod_counts(self, n: int, ppn: int, hot_fraction: float) -> list[int]:
        counts = [ppn] * n
        if n < 2 or ppn == 0 or hot_fraction <= 0:
            return counts
        tunnel = 1 if self.encapsulation != "None" else 0
        cap = self.max_blocks_per_node * self._block_addrs - tunnel if self.max_blocks_per_node else 0
        if cap <= 0:
            return counts
        hot = self._rng.sample(range(n), max(1, round(n * hot_fraction)))
        need = cap + 2 - ppn  # two addresses beyond its own blocks
        if need <= 0 or need * len(hot) > (n - len(hot)) * ppn:
            return counts
        hot_set = set(hot)
        donors = [i for i in range(n) if i not in hot_set]
        self._rng.shuffle(donors)
        d = 0
        for h in hot:
            for _ in range(need):
                while counts[donors[d % len(donors)]] == 0:
                    d += 1
                counts[donors[d % len(donors)]] -= 1
                counts[h] += 1
                d += 1
        return counts

    def _add_namespace(self, name: str, labels: dict) -> _Namespace:
        ns = _Namespace(name, self._uid(), self._now, labels)
        ns.rv = self._bump()
        ns.sas["default"] = (self._uid(), self._bump(), self._now)
        self._namespaces[name] = ns
        return ns

    def _add_gnp(self, i: int) -> None:
        templates = [
            (
                "allow-cluster-dns",
                {
                    "order": 100,
                    "selector": "all()",
                    "types": ["Egress"],
                    "egress": [
                        {
                            "action": "Allow",
                            "protocol": "UDP",
                            "destination": {
                                "selector": "k8s-app == 'kube-dns'",
                                "namespaceSelector": "projectcalico.org/name == 'kube-system'",
                                "ports": [53],
                            },
                        },
                        {"action": "Pass"},
                    ],
                },
            ),
            (
                "deny-cloud-metadata",
                {
                    "order": 10,
                    "selector": "projectcalico.org/orchestrator == 'k8s'",
                    "types": ["Egress"],
                    "egress": [{"action": "Deny", "destination": {"nets": ["169.254.169.254/32"]}}, {"action": "Pass"}],
                },
            ),
            (
                "ops-ssh",
                {
                    "order": 50,
                    "selector": "has(kubernetes.io/hostname)",
                    "types": ["Ingress"],
                    "ingress": [
                        {
                            "action": "Allow",
                            "protocol": "TCP",
                            "source": {"nets": ["198.51.100.0/24"]},
                            "destination": {"ports": [22]},
                        }
                    ],
                },
            ),
            (
                "log-dev",
                {
                    "selector": "env == 'dev'",
                    "namespaceSelector": "env == 'dev'",
                    "types": ["Ingress"],
                    "ingress": [{"action": "Log"}],
                },
            ),
        ]
        name, spec = templates[i % len(templates)]
        if i >= len(templates):
            name = f"{name}-{i}"
        p = _Policy(None, name, self._uid(), self._now, spec)
        p.rv = self._bump()
        self._gnps[name] = p

    def _k8s_policy_spec(self, ns: _Namespace, kind: int, variant: int) -> dict:
        apps = ns.apps or [None]
        a = apps[variant % len(apps)]
        b = apps[(variant + 1) % len(apps)]
        app_a = a.name if a else "web"
        app_b = b.name if b else "web"
        port = 8080 + variant % 7
        if kind == 0:
            return {"podSelector": {}, "policyTypes": ["Ingress"]}
        if kind == 1:
            return {
                "podSelector": {"matchLabels": {"app": app_a}},
                "policyTypes": ["Ingress"],
                "ingress": [
                    {
                        "from": [{"podSelector": {"matchLabels": {"app": app_b}}}],
                        "ports": [{"protocol": "TCP", "port": port}],
                    }
                ],
            }
        if kind == 2:
            return {
                "podSelector": {"matchLabels": {"tier": "backend"}},
                "policyTypes": ["Ingress"],
                "ingress": [
                    {
                        "from": [
                            {
                                "namespaceSelector": {"matchLabels": {"team": _TEAMS[variant % 5]}},
                                "podSelector": {
                                    "matchExpressions": [
                                        {"key": "tier", "operator": "In", "values": ["frontend", "backend"]}
                                    ]
                                },
                            }
                        ],
                        "ports": [{"port": "http"}],
                    }
                ],
            }
        if kind == 3:
            return {
                "podSelector": {"matchLabels": {"app": app_a}},
                "policyTypes": ["Ingress"],
                "ingress": [
                    {
                        "from": [{"ipBlock": {"cidr": "203.0.113.0/24", "except": ["203.0.113.128/25"]}}],
                        "ports": [
                            {"protocol": "TCP", "port": 443},
                            {"protocol": "TCP", "port": port, "endPort": port + 10},
                        ],
                    }
                ],
            }
        if kind == 4:
            return {
                "podSelector": {},
                "policyTypes": ["Egress"],
                "egress": [
                    {
                        "to": [
                            {
                                "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kube-system"}},
                                "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}},
                            }
                        ],
                        "ports": [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}],
                    }
                ],
            }
        return {
            "podSelector": {"matchLabels": {"app": app_a}},
            "policyTypes": ["Ingress", "Egress"],
            "ingress": [{}],
            "egress": [
                {
                    "to": [{"podSelector": {"matchLabels": {"tier": "db"}}}],
                    "ports": [{"protocol": "TCP", "port": 5432 + variant % 3}],
                }
            ],
        }

    _K8S_POLICY_NAMES = (
        "default-deny-ingress",
        "allow-peer-app",
        "allow-team-backends",
        "allow-partner-https",
        "allow-dns-egress",
        "db-egress",
    )

    def _add_k8s_policy(self, ns: _Namespace, i: int) -> None:
        kind = i % len(self._K8S_POLICY_NAMES)
        name = f"{self._K8S_POLICY_NAMES[kind]}-{i}"
        p = _Policy(ns.name, name, self._uid(), self._now, self._k8s_policy_spec(ns, kind, 0))
        p.rv = self._bump()
        ns.policies[name] = p
        self._k8s_policies.append(p)

    def _node_ip(self, idx: int) -> str:
        rack, host = divmod(idx, 200)
        return f"100.{64 + rack // 256}.{rack % 256}.{host + 10}"

    def _add_node(self, emit: list | None) -> _Node:
        idx = self._next_node
        self._next_node += 1
        name = f"node-{idx:05d}"
        labels = {
            "kubernetes.io/arch": "amd64",
            "kubernetes.io/hostname": name,
            "kubernetes.io/os": "linux",
            "node.kubernetes.io/instance-type": "m5.2xlarge",
            "topology.kubernetes.io/zone": f"zone-{'abc'[idx % 3]}",
        }
        node = _Node(name, idx, self._node_ip(idx), self._uid(), self._now, labels)
        node.rv = self._bump()
        self._nodes[name] = node
        self._node_set.add(node)
        if emit is not None:
            emit.append((ADDED, "nodes", self._render_node(node)))
        if self.encapsulation != "None":
            kind = "ipipTunnelAddress" if self.encapsulation == "IPIP" else "vxlanTunnelAddress"
            node.tunnel = _Tunnel(node, kind, self._now)
            if self._allocate(node.tunnel, node, emit) is None:
                raise PoolExhausted(f"pool {self.pool_cidr} exhausted")
        node.annotated = True  # calico-node has started and written its annotations
        if emit is not None:
            node.rv = self._bump()
            emit.append((MODIFIED, "nodes", self._render_node(node)))
        return node

    def _new_pod(self, node: _Node, ns_list: list[_Namespace]) -> _Pod:
        rng = self._rng
        ns = ns_list[int(rng.random() * len(ns_list))]
        app = ns.apps[int(rng.random() * len(ns.apps))]
        while True:
            name = f"{app.name}-{app.hash}-{self._suffix(5)}"
            if name not in ns.pods:
                break
        pod = _Pod(ns, name, node, app, self._uid(), self._now)
        ns.pods[name] = pod
        node.pods.add(pod)
        self._pod_set.add(pod)
        return pod

    # --- IPAM -------------------------------------------------------------------------------

    def _take(self, block: _Block, owner: _Pod | _Tunnel) -> None:
        ordinal = block.free.popleft()
        block.owners[ordinal] = owner
        block.seq += 1
        owner.block, owner.ordinal, owner.ip, owner.alloc_seq = block, ordinal, block.base + ordinal, block.seq

    def _claim(self, node: _Node, emit: list | None) -> _Block | None:
        if self._free_block_idx:
            idx = self._free_block_idx.pop()
        elif self._next_block < self._pool_blocks:
            idx = self._next_block
            self._next_block += 1
        else:
            return None
        block = _Block(
            idx, self._pool_base + idx * self._block_addrs, self.block_size, self._block_addrs, self._uid(), self._now
        )
        block.node = node
        block.aff_uid = self._uid()
        self._blocks[idx] = block
        self._block_list.add(block)
        node.blocks.append(block)
        if emit is not None:  # Calico: pending affinity, then the block, then confirm
            block.aff_state = "pending"
            block.aff_rv = self._bump()
            emit.append((ADDED, "blockaffinities", self._render_affinity(block)))
            block.rv = self._bump()
            emit.append((ADDED, "ipamblocks", self._render_block(block)))
            block.aff_state = "confirmed"
            block.aff_rv = self._bump()
            emit.append((MODIFIED, "blockaffinities", self._render_affinity(block)))
        else:
            block.rv = self._bump()
            block.aff_rv = self._bump()
        return block

    def _allocate(self, owner: _Pod | _Tunnel, node: _Node, emit: list | None) -> _Block | None:
        """Give ``owner`` an address the way Calico IPAM does; None if the pool is exhausted."""
        block = next((b for b in node.blocks if b.free), None)
        if block is None and (not self.max_blocks_per_node or len(node.blocks) < self.max_blocks_per_node):
            block = self._claim(node, emit)
        if block is None:
            block = self._borrowable()
            if block is None:
                return None
        self._take(block, owner)
        if emit is not None:
            block.rv = self._bump()
            emit.append((MODIFIED, "ipamblocks", self._render_block(block)))
        else:
            block.rv = self._bump()
        return block

    def _borrowable(self) -> _Block | None:
        # Calico hunts through the pool's existing blocks at random for a free address.
        blocks = self._block_list
        for _ in range(16):
            if not blocks:
                return None
            b = blocks.choice(self._rng)
            if b.free:
                return b
        return next((b for b in blocks.items if b.free), None)

    def _release(self, owner: _Pod | _Tunnel, emit: list) -> None:
        block = owner.block
        if block is None:
            return
        block.owners[owner.ordinal] = None
        block.free.append(owner.ordinal)
        block.seq += 1
        owner.block = None
        block.rv = self._bump()
        if block.node is None and len(block.free) == len(block.owners):
            self._drop_block(block, emit)  # an orphaned block emptied: GC deletes it
        else:
            emit.append((MODIFIED, "ipamblocks", self._render_block(block)))

    def _drop_block(self, block: _Block, emit: list) -> None:
        del self._blocks[block.idx]
        self._block_list.remove(block)
        self._free_block_idx.append(block.idx)
        block.rv = self._bump()
        emit.append((DELETED, "ipamblocks", self._render_block(block)))

    # --- rendering --------------------------------------------------------------------------

    def _render_pod(self, p: _Pod) -> Obj:
        ns, node, app = p.ns.name, p.node, p.app
        created = _ts(p.created)
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
        if p.phase != _Pod.PENDING:
            ip = _ip(p.ip)
            started = _ts(p.created + 3 + 11 * p.restarts)
            mf.append(
                {
                    "apiVersion": "v1",
                    "fieldsType": "FieldsV1",
                    "fieldsV1": _POD_CALICO_FIELDS,
                    "manager": "calico",
                    "operation": "Update",
                    "time": _ts(p.created + 1),
                }
            )
            cni_ip = "" if p.phase == _Pod.RELEASED else f"{ip}/32"
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
        if p.phase in (_Pod.TERMINATING, _Pod.RELEASED):
            md["deletionTimestamp"] = _ts(p.deleted_at + 30)
            md["deletionGracePeriodSeconds"] = 30
        md["managedFields"] = mf
        return {"apiVersion": "v1", "kind": "Pod", "metadata": md, "spec": spec, "status": status}

    def _render_node(self, n: _Node) -> Obj:
        created = _ts(n.created)
        hb = _ts(n.heartbeat)
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
                    ann["projectcalico.org/IPv4IPIPTunnelAddr"] = _ip(t.ip)
                else:
                    ann["projectcalico.org/IPv4VXLANTunnelAddr"] = _ip(t.ip)
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
                    "time": _ts(n.created + 5),
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

    def _crd_meta(self, name: str, uid: str, rv: int, created: int, generation: int = 1, ns: str | None = None) -> Obj:
        md: Obj = {
            "name": name,
            "uid": uid,
            "resourceVersion": str(rv),
            "generation": generation,
            "creationTimestamp": _ts(created),
        }
        if ns is not None:
            md["namespace"] = ns
        return md

    def _render_block(self, b: _Block) -> Obj:
        allocations: list[int | None] = []
        attributes = []
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
            "metadata": self._crd_meta(b.name, b.uid, b.rv, b.created),
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

    def _render_affinity(self, b: _Block, node: _Node | None = None) -> Obj:
        node = node or b.node
        assert node is not None
        return {
            "apiVersion": "crd.projectcalico.org/v1",
            "kind": "BlockAffinity",
            "metadata": self._crd_meta(f"{node.name}-{b.name}", b.aff_uid, b.aff_rv, b.created),
            "spec": {"cidr": b.cidr, "deleted": "false", "node": node.name, "state": b.aff_state},
        }

    def _render_namespace(self, ns: _Namespace) -> Obj:
        return {
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": {
                "name": ns.name,
                "uid": ns.uid,
                "resourceVersion": str(ns.rv),
                "creationTimestamp": _ts(ns.created),
                "labels": dict(ns.labels),
                "managedFields": [
                    {
                        "apiVersion": "v1",
                        "fieldsType": "FieldsV1",
                        "fieldsV1": {"f:metadata": {"f:labels": {}}},
                        "manager": "kubectl-create",
                        "operation": "Update",
                        "time": _ts(ns.created),
                    }
                ],
            },
            "spec": {"finalizers": ["kubernetes"]},
            "status": {"phase": "Active"},
        }

    def _render_sa(self, ns: _Namespace, name: str) -> Obj:
        uid, rv, created = ns.sas[name]
        return {
            "apiVersion": "v1",
            "kind": "ServiceAccount",
            "metadata": {
                "name": name,
                "namespace": ns.name,
                "uid": uid,
                "resourceVersion": str(rv),
                "creationTimestamp": _ts(created),
            },
        }

    def _render_k8s_policy(self, p: _Policy) -> Obj:
        return {
            "apiVersion": "networking.k8s.io/v1",
            "kind": "NetworkPolicy",
            "metadata": {
                "name": p.name,
                "namespace": p.ns,
                "uid": p.uid,
                "resourceVersion": str(p.rv),
                "generation": p.generation,
                "creationTimestamp": _ts(p.created),
                "managedFields": [
                    {
                        "apiVersion": "networking.k8s.io/v1",
                        "fieldsType": "FieldsV1",
                        "fieldsV1": {"f:spec": {}},
                        "manager": "kubectl-client-side-apply",
                        "operation": "Update",
                        "time": _ts(p.created),
                    }
                ],
            },
            "spec": p.spec,
        }

    def _render_gnp(self, p: _Policy) -> Obj:
        return {
            "apiVersion": "crd.projectcalico.org/v1",
            "kind": "GlobalNetworkPolicy",
            "metadata": self._crd_meta(p.name, p.uid, p.rv, p.created, p.generation),
            "spec": p.spec,
        }

    def _fixed_objects(self) -> Iterator[tuple[str, Obj]]:
        rv, now = self._fixed_rv, 1_704_067_200
        yield (
            "clusterinformations",
            {
                "apiVersion": "crd.projectcalico.org/v1",
                "kind": "ClusterInformation",
                "metadata": self._crd_meta("default", self._ci_uid, rv, now),
                "spec": {
                    "calicoVersion": "v3.27.2",
                    "clusterGUID": self._cluster_guid,
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
                "metadata": self._crd_meta("default", self._felix_uid, rv, now),
                "spec": {
                    "bpfLogLevel": "",
                    "floatingIPs": "Disabled",
                    "logSeverityScreen": "Info",
                    "reportingInterval": "0s",
                    "ipipEnabled": self.encapsulation == "IPIP",
                    "vxlanEnabled": self.encapsulation == "VXLAN",
                    "healthPort": 9099,
                },
            },
        )
        yield (
            "ippools",
            {
                "apiVersion": "crd.projectcalico.org/v1",
                "kind": "IPPool",
                "metadata": self._crd_meta("default-ipv4-ippool", self._pool_uid, rv, now),
                "spec": {
                    "allowedUses": ["Workload", "Tunnel"],
                    "blockSize": self.block_size,
                    "cidr": self.pool_cidr,
                    "ipipMode": "Always" if self.encapsulation == "IPIP" else "Never",
                    "vxlanMode": "Always" if self.encapsulation == "VXLAN" else "Never",
                    "natOutgoing": True,
                    "nodeSelector": "all()",
                },
            },
        )

    # --- public API -------------------------------------------------------------------------

    def initial_objects(self) -> Iterator[tuple[str, Obj]]:
        """Every current object as ``(resource, object)``, rendered lazily (a full LIST).

        Order respects dependencies: configuration, policy, namespaces, nodes, IPAM, pods.
        """
        yield from self._fixed_objects()
        for p in self._gnps.values():
            yield "globalnetworkpolicies", self._render_gnp(p)
        for ns in self._namespaces.values():
            yield "namespaces", self._render_namespace(ns)
        for ns in self._namespaces.values():
            for sa in ns.sas:
                yield "serviceaccounts", self._render_sa(ns, sa)
        for ns in self._namespaces.values():
            for p in ns.policies.values():
                yield "networkpolicies", self._render_k8s_policy(p)
        for n in self._nodes.values():
            yield "nodes", self._render_node(n)
        blocks = sorted(self._blocks.values(), key=lambda b: b.idx)
        for b in blocks:
            yield "ipamblocks", self._render_block(b)
        for b in blocks:
            if b.node is not None:
                yield "blockaffinities", self._render_affinity(b)
        for ns in self._namespaces.values():
            for pod in ns.pods.values():
                yield "pods", self._render_pod(pod)

    def objects(self) -> dict[str, dict[str, Obj]]:
        """Current truth: resource -> ``name`` (cluster-scoped) or ``ns/name`` -> object."""
        out: dict[str, dict[str, Obj]] = {}
        for res, obj in self.initial_objects():
            md = obj["metadata"]
            key = f"{md['namespace']}/{md['name']}" if "namespace" in md else md["name"]
            out.setdefault(res, {})[key] = obj
        return out

    def stats(self) -> dict[str, int]:
        borrowed = sum(1 for b in self._blocks.values() for o in b.owners if o is not None and o.node is not b.node)
        return {
            "nodes": len(self._nodes),
            "pods": len(self._pod_set),
            "namespaces": len(self._namespaces),
            "blocks": len(self._blocks),
            "borrowed": borrowed,
            "resource_version": self._rv,
        }

    @property
    def resource_version(self) -> int:
        """The cluster-wide revision (like etcd's): the newest resourceVersion handed out."""
        return self._rv

    def churn(self, count: int, mix: dict[str, float] | None = None, *, count_events: bool = False) -> list[Event]:
        """Apply random operations; return their watch events in order.

        ``count`` is the number of operations, or with ``count_events`` the number of events to
        reach (the last operation may overshoot it).  One operation emits several events: a pod
        create is pod ADDED, IPAMBlock MODIFIED, pod MODIFIED (about 3 events per operation with
        the default mix).  ``mix`` weights operations by name (see ``CHURN_OPS``); missing names
        weigh 0.  An operation that cannot run (nothing to delete, pool exhausted) falls back to
        another or emits nothing.
        """
        mix = DEFAULT_MIX if mix is None else mix
        unknown = set(mix) - set(CHURN_OPS)
        if unknown:
            raise ValueError(f"unknown churn operations: {sorted(unknown)}")
        ops = [op for op in CHURN_OPS if mix.get(op, 0) > 0]
        if not ops:
            raise ValueError("mix has no positive weights")
        cum = list(itertools.accumulate(mix[op] for op in ops))
        events: list[Event] = []
        rng = self._rng
        done = idle = 0
        while (len(events) if count_events else done) < count:
            before = len(events)
            self._now += 1
            op = ops[min(bisect.bisect_right(cum, rng.random() * cum[-1]), len(ops) - 1)]
            getattr(self, "_op_" + op)(events)
            done += 1
            idle = idle + 1 if len(events) == before else 0
            if idle >= 1000:  # e.g. an exhausted pool and a create-only mix: nothing can happen
                break
        return events

    # --- churn operations -------------------------------------------------------------------

    def _running_pod(self) -> _Pod | None:
        for _ in range(8):
            if not self._pod_set:
                return None
            p = self._pod_set.choice(self._rng)
            if p.phase == _Pod.RUNNING:
                return p
        return None

    def _op_pod_create(self, ev: list) -> None:
        if not self._node_set:
            return self._op_node_join(ev)
        ns_list = [ns for ns in self._namespaces.values() if ns.apps]
        if not ns_list:
            return None
        node = self._node_set.choice(self._rng)
        pod = self._new_pod(node, ns_list)
        pod.rv = self._bump()
        ev.append((ADDED, "pods", self._render_pod(pod)))
        if self._allocate(pod, node, ev) is None:
            # Pool exhausted: the pod stays Pending, as it would in a real cluster.
            return None
        pod.phase = _Pod.RUNNING
        pod.rv = self._bump()
        ev.append((MODIFIED, "pods", self._render_pod(pod)))
        return None

    def _delete_pod(self, pod: _Pod, ev: list, graceful: bool = True) -> None:
        if graceful and pod.phase == _Pod.RUNNING:
            pod.phase, pod.deleted_at = _Pod.TERMINATING, self._now
            pod.rv = self._bump()
            ev.append((MODIFIED, "pods", self._render_pod(pod)))
            pod.phase = _Pod.RELEASED  # CNI DEL blanks the IP annotation, then releases the IP
            pod.rv = self._bump()
            ev.append((MODIFIED, "pods", self._render_pod(pod)))
        self._release(pod, ev)
        pod.rv = self._bump()
        ev.append((DELETED, "pods", self._render_pod(pod)))
        del pod.ns.pods[pod.name]
        pod.node.pods.discard(pod)
        self._pod_set.remove(pod)

    def _op_pod_delete(self, ev: list) -> None:
        if not self._pod_set:
            return self._op_pod_create(ev)
        self._delete_pod(self._pod_set.choice(self._rng), ev)
        return None

    def _op_pod_label(self, ev: list) -> None:
        pod = self._running_pod()
        if pod is None:
            return self._op_pod_create(ev)
        labels = dict(pod.labels)
        versions = [v for v in ("v1", "v2", "v3", "v4") if v != labels.get("version")]
        labels["version"] = versions[int(self._rng.random() * len(versions))]  # always a change
        pod.labels = labels
        pod.rv = self._bump()
        ev.append((MODIFIED, "pods", self._render_pod(pod)))
        return None

    def _op_pod_status(self, ev: list) -> None:
        pod = self._running_pod()
        if pod is None:
            return self._op_pod_create(ev)
        pod.restarts += 1  # new container start: conditions and statuses move, nothing else
        pod.rv = self._bump()
        ev.append((MODIFIED, "pods", self._render_pod(pod)))
        return None

    def _op_policy_edit(self, ev: list) -> None:
        rng = self._rng
        if self._gnps and (not self._k8s_policies or rng.random() < 0.2):
            p = list(self._gnps.values())[int(rng.random() * len(self._gnps))]
            spec = dict(p.spec)
            spec["order"] = (spec.get("order") or 0) + 1
            p.spec, p.generation, p.rv = spec, p.generation + 1, self._bump()
            ev.append((MODIFIED, "globalnetworkpolicies", self._render_gnp(p)))
            return
        if not self._k8s_policies:
            return
        p = self._k8s_policies[int(rng.random() * len(self._k8s_policies))]
        kind = self._K8S_POLICY_NAMES.index(p.name.rsplit("-", 1)[0])
        old = p.spec
        for variant in range(1, 20):
            p.spec = self._k8s_policy_spec(self._namespaces[p.ns], kind, p.generation + variant)
            if p.spec != old or kind in (0, 4):
                break
        p.generation += 1
        p.rv = self._bump()
        ev.append((MODIFIED, "networkpolicies", self._render_k8s_policy(p)))
        return

    def _op_node_join(self, ev: list) -> None:
        try:
            self._add_node(ev)
        except PoolExhausted:
            pass
        return

    def _op_node_leave(self, ev: list) -> None:
        if len(self._node_set) < 2:
            return self._op_node_join(ev)
        node = self._node_set.choice(self._rng)
        node.rv = self._bump()
        ev.append((DELETED, "nodes", self._render_node(node)))
        del self._nodes[node.name]
        self._node_set.remove(node)
        # Pod GC force-deletes the pods; IPAM GC then frees their addresses and the node's blocks.
        for pod in sorted(node.pods, key=lambda p: (p.ns.name, p.name)):
            self._delete_pod(pod, ev, graceful=False)
        if node.tunnel is not None:
            self._release(node.tunnel, ev)
        for block in node.blocks:
            block.aff_rv = self._bump()
            ev.append((DELETED, "blockaffinities", self._render_affinity(block, node)))
            block.node = None
            if len(block.free) == len(block.owners):
                self._drop_block(block, ev)
            else:  # other nodes still borrow from it: keep it, without affinity
                block.rv = self._bump()
                ev.append((MODIFIED, "ipamblocks", self._render_block(block)))
        node.blocks = []
        return None

    def _op_node_status(self, ev: list) -> None:
        if not self._node_set:
            return self._op_node_join(ev)
        node = self._node_set.choice(self._rng)
        node.heartbeat = self._now
        node.rv = self._bump()
        ev.append((MODIFIED, "nodes", self._render_node(node)))
        return None
