"""`SyntheticCluster`: build a seeded cluster, list it, churn it.

Design note
-----------
The generator keeps the cluster as *compact state* (`records`: one slotted record per node, pod and
IPAM block, sharing label dicts and specs) and renders the API-server JSON shape of an object only
when it is listed or changed (`render`). Holding 150,000 rendered pods (managedFields, conditions,
container statuses: ~3 KB of dicts each) would cost gigabytes; the records cost a few hundred bytes
per pod, and rendering on demand streams a full listing in a few seconds.

Everything is derived from one ``random.Random(seed)`` and a synthetic clock (`records.Clock`), so a
seed always yields the same objects, the same UIDs and the same churn.

Addresses come from `ipam` (Calico's algorithm). By default every node may hold just enough blocks
for the average node, and a few "hot" nodes (``hot_node_fraction``) are given more pods than that
(taken from other nodes, so the total stays ``nodes * pods_per_node``): they borrow, which gives the
routing code borrowed addresses to handle without needing an exhausted pool. Churn operations live
in `churn`; what apps and policies look like in `catalog`.

This class is the state and its lifecycle (add a node, a pod, delete a pod); the other modules work
on its public attributes.
"""

from __future__ import annotations

import ipaddress
import math
from collections.abc import Iterator

from protocol.keys import ADDED, DELETED, MODIFIED

from . import churn as _churn
from .catalog import APP_WORDS, ENVS, FIXED_NAMESPACES, K8S_POLICY_NAMES, TEAMS, TIERS, global_policy, k8s_policy_spec
from .ipam import Ipam
from .records import App, Clock, Fixed, IndexedSet, Namespace, Node, Pod, Policy, PoolExhausted, Tunnel
from .render import (
    Event,
    Obj,
    fixed_objects,
    render_affinity,
    render_block,
    render_gnp,
    render_k8s_policy,
    render_namespace,
    render_node,
    render_pod,
    render_sa,
)


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
        self.clock = Clock(seed, start_time)
        tunnel = 1 if encapsulation != "None" else 0
        if max_blocks_per_node is None:  # "auto": enough for the average node
            max_blocks_per_node = max(1, math.ceil((pods_per_node + tunnel) / (1 << (32 - block_size))))
        self.max_blocks_per_node = max_blocks_per_node  # 0 = unlimited, as Calico's maxBlocksPerHost
        self.ipam = Ipam(self.clock, int(pool.network_address), pool.prefixlen, block_size, max_blocks_per_node)
        self.node_by_name: dict[str, Node] = {}
        self.node_set = IndexedSet()
        self._next_node = 0
        self.ns_by_name: dict[str, Namespace] = {}
        self.pod_set = IndexedSet()
        self.gnps: dict[str, Policy] = {}
        self.k8s_policies: list[Policy] = []
        self.fixed = Fixed(self.clock, self.pool_cidr, block_size, encapsulation)
        self._build(nodes, pods_per_node, namespaces, policies, apps_per_namespace, global_policies, hot_node_fraction)

    # --- construction -----------------------------------------------------------------------

    def _build(self, n_nodes: int, ppn: int, n_ns: int, n_pol: int, apps: int, n_gnp: int, hot_fraction: float) -> None:
        clock = self.clock
        rng = clock.rng
        for name in FIXED_NAMESPACES:
            self._add_namespace(name, {"kubernetes.io/metadata.name": name})
        for i in range(n_ns):
            name = f"ns-{i:03d}"
            ns = self._add_namespace(
                name,
                {"kubernetes.io/metadata.name": name, "team": TEAMS[i % len(TEAMS)], "env": ENVS[i % len(ENVS)]},
            )
            words = rng.sample(APP_WORDS, min(apps, len(APP_WORDS)))
            for w in words:
                sa = f"{w}-sa" if rng.random() < 0.7 else "default"
                if sa not in ns.sas:
                    ns.sas[sa] = (clock.uid(), clock.bump(), clock.now)
                h = clock.suffix(10)
                labels = {"app": w, "tier": TIERS.get(w, "backend"), "pod-template-hash": h}
                ports = [{"containerPort": 8080, "name": "http", "protocol": "TCP"}]
                if rng.random() < 0.3:
                    ports.append({"containerPort": 9090, "name": "metrics", "protocol": "TCP"})
                ns.apps.append(App(w, h, labels, sa, ports, f"registry.example/{w}:1.{rng.randrange(30)}", clock.uid()))
        for i in range(n_gnp):
            name, spec = global_policy(i)
            p = Policy(None, name, clock.uid(), clock.now, spec)
            p.rv = clock.bump()
            self.gnps[name] = p
        ns_list = [self.ns_by_name[f"ns-{i:03d}"] for i in range(n_ns)]
        for i in range(n_pol):
            self._add_k8s_policy(ns_list[i % len(ns_list)], i)
        nodes = [self.add_node(None) for _ in range(n_nodes)]
        counts = self._pod_counts(n_nodes, ppn, hot_fraction)
        # Cold nodes first so hot nodes find other nodes' blocks to borrow from.
        order = sorted(range(n_nodes), key=lambda i: counts[i] > ppn)
        for i in order:
            node = nodes[i]
            for _ in range(counts[i]):
                pod = self.new_pod(node, ns_list)
                if self.ipam.allocate(pod, node, None) is None:
                    raise PoolExhausted(f"pool {self.pool_cidr} exhausted")
                pod.phase = Pod.RUNNING
                pod.rv = clock.bump()

    def _pod_counts(self, n: int, ppn: int, hot_fraction: float) -> list[int]:
        counts = [ppn] * n
        if n < 2 or ppn == 0 or hot_fraction <= 0:
            return counts
        tunnel = 1 if self.encapsulation != "None" else 0
        cap = self.max_blocks_per_node * self.ipam.block_addrs - tunnel if self.max_blocks_per_node else 0
        if cap <= 0:
            return counts
        rng = self.clock.rng
        hot = rng.sample(range(n), max(1, round(n * hot_fraction)))
        need = cap + 2 - ppn  # two addresses beyond its own blocks
        if need <= 0 or need * len(hot) > (n - len(hot)) * ppn:
            return counts
        hot_set = set(hot)
        donors = [i for i in range(n) if i not in hot_set]
        rng.shuffle(donors)
        d = 0
        for h in hot:
            for _ in range(need):
                while counts[donors[d % len(donors)]] == 0:
                    d += 1
                counts[donors[d % len(donors)]] -= 1
                counts[h] += 1
                d += 1
        return counts

    def _add_namespace(self, name: str, labels: dict) -> Namespace:
        clock = self.clock
        ns = Namespace(name, clock.uid(), clock.now, labels)
        ns.rv = clock.bump()
        ns.sas["default"] = (clock.uid(), clock.bump(), clock.now)
        self.ns_by_name[name] = ns
        return ns

    def _add_k8s_policy(self, ns: Namespace, i: int) -> None:
        kind = i % len(K8S_POLICY_NAMES)
        name = f"{K8S_POLICY_NAMES[kind]}-{i}"
        p = Policy(ns.name, name, self.clock.uid(), self.clock.now, k8s_policy_spec(ns, kind, 0))
        p.rv = self.clock.bump()
        ns.policies[name] = p
        self.k8s_policies.append(p)

    # --- lifecycle (shared by construction and churn) ------------------------------------------

    def add_node(self, emit: list[Event] | None) -> Node:
        """A node joins (and calico-node annotates it); its events go to ``emit`` unless None."""
        clock = self.clock
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
        rack, host = divmod(idx, 200)
        ip = f"100.{64 + rack // 256}.{rack % 256}.{host + 10}"
        node = Node(name, idx, ip, clock.uid(), clock.now, labels)
        node.rv = clock.bump()
        self.node_by_name[name] = node
        self.node_set.add(node)
        if emit is not None:
            emit.append((ADDED, "nodes", render_node(node)))
        if self.encapsulation != "None":
            kind = "ipipTunnelAddress" if self.encapsulation == "IPIP" else "vxlanTunnelAddress"
            node.tunnel = Tunnel(node, kind, clock.now)
            if self.ipam.allocate(node.tunnel, node, emit) is None:
                raise PoolExhausted(f"pool {self.pool_cidr} exhausted")
        node.annotated = True  # calico-node has started and written its annotations
        if emit is not None:
            node.rv = clock.bump()
            emit.append((MODIFIED, "nodes", render_node(node)))
        return node

    def new_pod(self, node: Node, ns_list: list[Namespace]) -> Pod:
        """A pod of a random app of a random namespace, scheduled on ``node`` (no address yet)."""
        clock = self.clock
        rng = clock.rng
        ns = ns_list[int(rng.random() * len(ns_list))]
        app = ns.apps[int(rng.random() * len(ns.apps))]
        while True:
            name = f"{app.name}-{app.hash}-{clock.suffix(5)}"
            if name not in ns.pods:
                break
        pod = Pod(ns, name, node, app, clock.uid(), clock.now)
        ns.pods[name] = pod
        node.pods.add(pod)
        self.pod_set.add(pod)
        return pod

    def delete_pod(self, pod: Pod, ev: list[Event], graceful: bool = True) -> None:
        """Delete ``pod``: gracefully (terminating, IP released, gone) or forced (pod GC)."""
        clock = self.clock
        if graceful and pod.phase == Pod.RUNNING:
            pod.phase, pod.deleted_at = Pod.TERMINATING, clock.now
            pod.rv = clock.bump()
            ev.append((MODIFIED, "pods", render_pod(pod)))
            pod.phase = Pod.RELEASED  # CNI DEL blanks the IP annotation, then releases the IP
            pod.rv = clock.bump()
            ev.append((MODIFIED, "pods", render_pod(pod)))
        self.ipam.release(pod, ev)
        pod.rv = clock.bump()
        ev.append((DELETED, "pods", render_pod(pod)))
        del pod.ns.pods[pod.name]
        pod.node.pods.discard(pod)
        self.pod_set.remove(pod)

    # --- public API -------------------------------------------------------------------------

    def initial_objects(self) -> Iterator[tuple[str, Obj]]:
        """Every current object as ``(resource, object)``, rendered lazily (a full LIST).

        Order respects dependencies: configuration, policy, namespaces, nodes, IPAM, pods.
        """
        yield from fixed_objects(self.fixed)
        for p in self.gnps.values():
            yield "globalnetworkpolicies", render_gnp(p)
        namespaces = self.ns_by_name.values()
        for ns in namespaces:
            yield "namespaces", render_namespace(ns)
        for ns in namespaces:
            for sa in ns.sas:
                yield "serviceaccounts", render_sa(ns, sa)
        for ns in namespaces:
            for p in ns.policies.values():
                yield "networkpolicies", render_k8s_policy(p)
        for n in self.node_by_name.values():
            yield "nodes", render_node(n)
        blocks = sorted(self.ipam.blocks.values(), key=lambda b: b.idx)
        for b in blocks:
            yield "ipamblocks", render_block(b)
        for b in blocks:
            if b.node is not None:
                yield "blockaffinities", render_affinity(b)
        for ns in namespaces:
            for pod in ns.pods.values():
                yield "pods", render_pod(pod)

    def objects(self) -> dict[str, dict[str, Obj]]:
        """Current truth: resource -> ``name`` (cluster-scoped) or ``ns/name`` -> object."""
        out: dict[str, dict[str, Obj]] = {}
        for res, obj in self.initial_objects():
            md = obj["metadata"]
            key = f"{md['namespace']}/{md['name']}" if "namespace" in md else md["name"]
            out.setdefault(res, {})[key] = obj
        return out

    def stats(self) -> dict[str, int]:
        return {
            "nodes": len(self.node_by_name),
            "pods": len(self.pod_set),
            "namespaces": len(self.ns_by_name),
            "blocks": len(self.ipam.blocks),
            "borrowed": self.ipam.borrowed(),
            "resource_version": self.clock.rv,
        }

    @property
    def resource_version(self) -> int:
        """The cluster-wide revision (like etcd's): the newest resourceVersion handed out."""
        return self.clock.rv

    def churn(self, count: int, mix: dict[str, float] | None = None, *, count_events: bool = False) -> list[Event]:
        """Apply random operations; return their watch events in order.

        ``count`` is the number of operations, or with ``count_events`` the number of events to
        reach (the last operation may overshoot it).  One operation emits several events: a pod
        create is pod ADDED, IPAMBlock MODIFIED, pod MODIFIED (about 3 events per operation with
        the default mix).  ``mix`` weights operations by name (see ``CHURN_OPS``); missing names
        weigh 0.  An operation that cannot run (nothing to delete, pool exhausted) falls back to
        another or emits nothing.
        """
        return _churn.churn(self, count, mix, count_events)
