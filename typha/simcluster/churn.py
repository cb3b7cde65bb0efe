"""Churn: random operations on the synthetic cluster, each emitting the watch events a real cluster would.

One function per operation, named in `DEFAULT_MIX`; `churn` draws operations by weight. Events come in
the order a real cluster produces them (pod ADDED Pending -> IPAMBlock MODIFIED -> pod MODIFIED
Running, ...), with resourceVersions from the cluster-wide counter. An operation that cannot run
(nothing to delete, pool exhausted) falls back to another or emits nothing.
"""

from __future__ import annotations

import bisect
import itertools
from collections.abc import Callable
from typing import TYPE_CHECKING

from protocol.keys import ADDED, DELETED, MODIFIED

from .catalog import K8S_POLICY_NAMES, k8s_policy_spec
from .records import Pod, PoolExhausted
from .render import Event, render_gnp, render_k8s_policy, render_node, render_pod

if TYPE_CHECKING:
    from .cluster import SyntheticCluster

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


def churn(c: SyntheticCluster, count: int, mix: dict[str, float] | None, count_events: bool) -> list[Event]:
    """See `SyntheticCluster.churn`."""
    mix = DEFAULT_MIX if mix is None else mix
    unknown = set(mix) - set(CHURN_OPS)
    if unknown:
        raise ValueError(f"unknown churn operations: {sorted(unknown)}")
    ops = [OPERATIONS[op] for op in CHURN_OPS if mix.get(op, 0) > 0]
    if not ops:
        raise ValueError("mix has no positive weights")
    cum = list(itertools.accumulate(mix[op] for op in CHURN_OPS if mix.get(op, 0) > 0))
    events: list[Event] = []
    rng = c.clock.rng
    done = idle = 0
    while (len(events) if count_events else done) < count:
        before = len(events)
        c.clock.now += 1
        op = ops[min(bisect.bisect_right(cum, rng.random() * cum[-1]), len(ops) - 1)]
        op(c, events)
        done += 1
        idle = idle + 1 if len(events) == before else 0
        if idle >= 1000:  # e.g. an exhausted pool and a create-only mix: nothing can happen
            break
    return events


def _running_pod(c: SyntheticCluster) -> Pod | None:
    for _ in range(8):
        if not c.pod_set:
            return None
        p = c.pod_set.choice(c.clock.rng)
        if p.phase == Pod.RUNNING:
            return p
    return None


def pod_create(c: SyntheticCluster, ev: list[Event]) -> None:
    if not c.node_set:
        return node_join(c, ev)
    ns_list = [ns for ns in c.ns_by_name.values() if ns.apps]
    if not ns_list:
        return None
    node = c.node_set.choice(c.clock.rng)
    pod = c.new_pod(node, ns_list)
    pod.rv = c.clock.bump()
    ev.append((ADDED, "pods", render_pod(pod)))
    if c.ipam.allocate(pod, node, ev) is None:
        # Pool exhausted: the pod stays Pending, as it would in a real cluster.
        return None
    pod.phase = Pod.RUNNING
    pod.rv = c.clock.bump()
    ev.append((MODIFIED, "pods", render_pod(pod)))
    return None


def pod_delete(c: SyntheticCluster, ev: list[Event]) -> None:
    if not c.pod_set:
        return pod_create(c, ev)
    c.delete_pod(c.pod_set.choice(c.clock.rng), ev)
    return None


def pod_label(c: SyntheticCluster, ev: list[Event]) -> None:
    pod = _running_pod(c)
    if pod is None:
        return pod_create(c, ev)
    labels = dict(pod.labels)
    versions = [v for v in ("v1", "v2", "v3", "v4") if v != labels.get("version")]
    labels["version"] = versions[int(c.clock.rng.random() * len(versions))]  # always a change
    pod.labels = labels
    pod.rv = c.clock.bump()
    ev.append((MODIFIED, "pods", render_pod(pod)))
    return None


def pod_status(c: SyntheticCluster, ev: list[Event]) -> None:
    pod = _running_pod(c)
    if pod is None:
        return pod_create(c, ev)
    pod.restarts += 1  # new container start: conditions and statuses move, nothing else
    pod.rv = c.clock.bump()
    ev.append((MODIFIED, "pods", render_pod(pod)))
    return None


def policy_edit(c: SyntheticCluster, ev: list[Event]) -> None:
    rng = c.clock.rng
    if c.gnps and (not c.k8s_policies or rng.random() < 0.2):
        p = list(c.gnps.values())[int(rng.random() * len(c.gnps))]
        spec = dict(p.spec)
        spec["order"] = (spec.get("order") or 0) + 1
        p.spec, p.generation, p.rv = spec, p.generation + 1, c.clock.bump()
        ev.append((MODIFIED, "globalnetworkpolicies", render_gnp(p)))
        return
    if not c.k8s_policies:
        return
    p = c.k8s_policies[int(rng.random() * len(c.k8s_policies))]
    kind = K8S_POLICY_NAMES.index(p.name.rsplit("-", 1)[0])
    old = p.spec
    assert p.ns is not None
    for variant in range(1, 20):
        p.spec = k8s_policy_spec(c.ns_by_name[p.ns], kind, p.generation + variant)
        if p.spec != old or kind in (0, 4):
            break
    p.generation += 1
    p.rv = c.clock.bump()
    ev.append((MODIFIED, "networkpolicies", render_k8s_policy(p)))


def node_join(c: SyntheticCluster, ev: list[Event]) -> None:
    try:
        c.add_node(ev)
    except PoolExhausted:
        pass


def node_leave(c: SyntheticCluster, ev: list[Event]) -> None:
    if len(c.node_set) < 2:
        return node_join(c, ev)
    node = c.node_set.choice(c.clock.rng)
    node.rv = c.clock.bump()
    ev.append((DELETED, "nodes", render_node(node)))
    del c.node_by_name[node.name]
    c.node_set.remove(node)
    # Pod GC force-deletes the pods; IPAM GC then frees their addresses and the node's blocks.
    for pod in sorted(node.pods, key=lambda p: (p.ns.name, p.name)):
        c.delete_pod(pod, ev, graceful=False)
    if node.tunnel is not None:
        c.ipam.release(node.tunnel, ev)
    c.ipam.release_affinities(node, ev)
    return None


def node_status(c: SyntheticCluster, ev: list[Event]) -> None:
    if not c.node_set:
        return node_join(c, ev)
    node = c.node_set.choice(c.clock.rng)
    node.heartbeat = c.clock.now
    node.rv = c.clock.bump()
    ev.append((MODIFIED, "nodes", render_node(node)))
    return None


OPERATIONS: dict[str, Callable[[SyntheticCluster, list[Event]], None]] = {
    "pod_create": pod_create,
    "pod_delete": pod_delete,
    "pod_label": pod_label,
    "pod_status": pod_status,
    "policy_edit": policy_edit,
    "node_join": node_join,
    "node_leave": node_leave,
    "node_status": node_status,
}
assert tuple(OPERATIONS) == CHURN_OPS
