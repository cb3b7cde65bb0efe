"""Bridge between the synthetic cluster generator and the API-server emulator's store.

A load test seeds the emulator with a generated cluster, replays the generator's churn as real writes
(so the emulator emits the watch events kube-apiserver would), and computes the *truth*: what every
agent must end up holding, by projecting the emulator's current contents exactly as typha would.
"""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from collections.abc import Iterable

from loadtest.apiserver.errors import ApiError
from loadtest.apiserver.store import Store
from protocol import SYNCER_FELIX
from typha.ingest import ADDED, DELETED, Ingestor
from typha.k8s.projection import RESOURCES
from typha.simcluster import SyntheticCluster
from typha.snapcache import SnapCache


def store_key(resource: str) -> str:
    """The emulator's name for one of our resources ('pods', 'ippools.crd.projectcalico.org', ...)."""
    r = RESOURCES[resource]
    return r.plural if not r.group else f"{r.plural}.{r.group}"


def _writable(obj: dict) -> dict:
    """The object as a client would write it: the server owns uid and resourceVersion."""
    md = {k: v for k, v in obj.get("metadata", {}).items() if k not in ("uid", "resourceVersion")}
    return {**obj, "metadata": md}


def seed(store: Store, cluster: SyntheticCluster) -> int:
    """Load the cluster's initial objects without watch events (like restoring etcd)."""
    by_resource: dict[str, list[dict]] = defaultdict(list)
    for resource, obj in cluster.initial_objects():
        by_resource[resource].append(obj)
    n = 0
    for resource, objs in by_resource.items():
        key = store_key(resource)
        existing = {(o.namespace, o.name) for o in store.list(key).items}  # e.g. the "default" namespace
        fresh = []
        for obj in objs:
            md = obj["metadata"]
            if (md.get("namespace") or "", md["name"]) in existing:
                store.upsert(key, _writable(obj))
            else:
                fresh.append(obj)
        n += store.bulk_load(key, fresh, emit_events=False) + len(objs) - len(fresh)
    return n


def apply_events(store: Store, events: Iterable[tuple[str, str, dict]]) -> int:
    """Replay generator events as writes; returns how many were applied."""
    n = 0
    for etype, resource, obj in events:
        key = store_key(resource)
        md = obj.get("metadata") or {}
        try:
            if etype == DELETED:
                store.delete(key, md["name"], namespace=md.get("namespace"))
            else:
                store.upsert(key, _writable(obj))
            n += 1
        except ApiError as exc:
            if exc.code != 404:  # deleting what a previous fault already removed is fine
                raise
    return n


def apply_timed(store: Store, events: Iterable[tuple[str, str, dict]], rv_times: dict[int, int]) -> int:
    """Replay events one by one, recording each write's resourceVersion -> wall time (ns), for latency
    from API write to agent. Returns how many writes changed nothing (they take no revision)."""
    noops = 0
    for ev in events:
        before = store.rv
        apply_events(store, [ev])
        if store.rv != before:
            rv_times[store.rv] = time.time_ns()
        else:
            noops += 1
    return noops


async def churn_at_rate(
    store: Store,
    cluster: SyntheticCluster,
    rate: float,
    seconds: float,
    rv_times: dict[int, int] | None = None,
    tick: float = 0.02,
) -> int:
    """Write the generator's churn into the emulator at `rate` changes/s for `seconds`; returns how
    many were written. With `rv_times`, each write's time is recorded (see `apply_timed`)."""
    start = time.monotonic()
    done = 0
    while (elapsed := time.monotonic() - start) < seconds:
        due = int(rate * elapsed) - done
        if due > 0:
            events = cluster.churn(due, count_events=True)
            if rv_times is None:
                apply_events(store, events)
            else:
                apply_timed(store, events, rv_times)
            done += due
        await asyncio.sleep(tick)
    return done


def truth(store: Store, syncer: str = SYNCER_FELIX) -> dict[str, bytes]:
    """key -> value bytes every agent of `syncer` must hold, projected from the emulator's contents."""
    cache = SnapCache(syncer)
    ingestor = Ingestor({syncer: cache})
    for name, res in RESOURCES.items():
        if syncer not in res.syncers:
            continue
        objs = store.list(store_key(name)).items
        ingestor.handle((ADDED, name, o.to_dict()) for o in objs)
    return {k: v for k, (_, v, _) in cache.items().items() if v is not None}
