"""The synthetic cluster's compact state: one slotted record per node, pod, IPAM block, namespace, policy.

Records hold what changes and share what does not (a pod's labels are its app's dict until they
change), which keeps 150,000 pods to a few hundred bytes each; `render` turns a record into the API
server's JSON only when it is listed or changed. `Clock` holds the cluster's only sources of
randomness, time and order, so one seed always gives the same objects, UIDs and churn.
"""

from __future__ import annotations

import functools
import random
import time
import uuid
from collections import deque
from typing import Any

NAME_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"  # Kubernetes' generateName alphabet


@functools.lru_cache(maxsize=1 << 16)
def ts(sec: int) -> str:
    """RFC 3339 timestamp, as the API server writes them."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(sec))


@functools.lru_cache(maxsize=1 << 16)
def ipam_ts(sec: int) -> str:
    # Calico CNI stores Go's time.String() form in allocation attributes.
    return time.strftime("%Y-%m-%d %H:%M:%S +0000 UTC", time.gmtime(sec))


def ip_text(n: int) -> str:
    return f"{n >> 24}.{(n >> 16) & 255}.{(n >> 8) & 255}.{n & 255}"


def dash(cidr: str) -> str:
    return cidr.replace(".", "-").replace(":", "-").replace("/", "-")


class Clock:
    """One seeded RNG, the synthetic wall clock, and the cluster-wide resourceVersion (etcd's revision)."""

    __slots__ = ("now", "rng", "rv")

    def __init__(self, seed: int, start_time: int) -> None:
        self.rng = random.Random(seed)
        self.now = start_time
        self.rv = 1000

    def uid(self) -> str:
        return str(uuid.UUID(int=self.rng.getrandbits(128), version=4))

    def bump(self) -> int:
        """The next resourceVersion."""
        self.rv += 1
        return self.rv

    def suffix(self, n: int) -> str:
        """``n`` characters of a generated name."""
        r = self.rng.getrandbits(32)
        out = []
        for _ in range(n):
            r, d = divmod(r, 27)
            out.append(NAME_ALPHABET[d])
        return "".join(out)


class Node:
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
        self.blocks: list[Block] = []
        self.pods: set[Pod] = set()
        self.tunnel: Tunnel | None = None
        self.annotated = False
        self.heartbeat = created


class Tunnel:
    """An IPAM allocation for a node's IPIP/VXLAN tunnel address."""

    __slots__ = ("alloc_seq", "block", "created", "ip", "kind", "node", "ordinal")

    def __init__(self, node: Node, kind: str, created: int) -> None:
        self.node, self.kind, self.created = node, kind, created
        self.block: Block | None = None
        self.ordinal = self.ip = self.alloc_seq = 0

    def handle(self) -> str:
        return f"{'ipip' if self.kind == 'ipipTunnelAddress' else 'vxlan'}-tunnel-addr-{self.node.name}"

    def secondary(self) -> dict:
        return {"node": self.node.name, "type": self.kind}


class App:
    __slots__ = ("hash", "image", "labels", "name", "ports", "rs_uid", "sa")

    def __init__(self, name: str, hash_: str, labels: dict, sa: str, ports: list, image: str, rs_uid: str) -> None:
        self.name, self.hash, self.labels, self.sa, self.ports = name, hash_, labels, sa, ports
        self.image, self.rs_uid = image, rs_uid


class Pod:
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

    def __init__(self, ns: Namespace, name: str, node: Node, app: App, uid: str, created: int) -> None:
        self.ns, self.name, self.node, self.app, self.uid, self.created = ns, name, node, app, uid, created
        self.labels = app.labels  # shared until the pod's labels change
        self.rv = 0
        self.block: Block | None = None
        self.ip = self.ordinal = self.alloc_seq = self.restarts = self.deleted_at = 0
        self.phase = Pod.PENDING

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
            "timestamp": ipam_ts(self.created),
        }


class Block:
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
        self.cidr = f"{ip_text(base)}/{prefix}"
        self.name = dash(self.cidr)
        self.owners: list[Pod | Tunnel | None] = [None] * size
        self.free: deque[int] = deque(range(size))
        self.node: Node | None = None
        self.seq = 0
        self.uid, self.created = uid, created
        self.rv = self.aff_rv = 0
        self.aff_uid = ""
        self.aff_state = "confirmed"


class Namespace:
    __slots__ = ("apps", "created", "labels", "name", "pods", "policies", "rv", "sas", "uid")

    def __init__(self, name: str, uid: str, created: int, labels: dict) -> None:
        self.name, self.uid, self.created, self.labels = name, uid, created, labels
        self.rv = 0
        self.sas: dict[str, tuple[str, int, int]] = {}  # name -> (uid, rv, created)
        self.apps: list[App] = []
        self.pods: dict[str, Pod] = {}
        self.policies: dict[str, Policy] = {}


class Policy:
    __slots__ = ("created", "generation", "name", "ns", "rv", "spec", "uid")

    def __init__(self, ns: str | None, name: str, uid: str, created: int, spec: dict) -> None:
        self.ns, self.name, self.uid, self.created, self.spec = ns, name, uid, created, spec
        self.rv, self.generation = 0, 1


class IndexedSet:
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
    """No free address left in the pool."""


class Fixed:
    """The cluster's configuration objects' identity and settings (rendered by `render.fixed_objects`)."""

    __slots__ = ("block_size", "ci_uid", "cluster_guid", "encapsulation", "felix_uid", "pool_cidr", "pool_uid", "rv")

    def __init__(self, clock: Clock, pool_cidr: str, block_size: int, encapsulation: str) -> None:
        self.pool_cidr, self.block_size, self.encapsulation = pool_cidr, block_size, encapsulation
        self.pool_uid = clock.uid()
        self.felix_uid = clock.uid()
        self.ci_uid, self.cluster_guid = clock.uid(), clock.rng.getrandbits(128).to_bytes(16, "big").hex()
        self.rv = clock.bump()
