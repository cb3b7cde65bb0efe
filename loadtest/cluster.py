"""Bridge between the synthetic cluster generator and the API-server emulator's store.

A load test seeds the emulator with a generated cluster, replays the generator's churn as real writes
(so the emulator emits the watch events kube-apiserver would), and computes the *truth*: what every
agent must end up holding, by projecting the emulator's current contents exactly as typha would.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable

from loadtest.apiserver.errors import ApiError
from loadtest.apiserver.store import Store
from protocol import SYNCER_FELIX
from typha.ingest import ADDED, DELETED, Ingestor
from typha.k8s.projection import RESOURCES
from typha.snapcache import SnapCache
from typha.synthetic import SyntheticCluster


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
