"""What typha's audit costs (issue 13 item 6): one audit of every resource against the API emulator.

    .venv/bin/python tools/bench_audit.py --nodes 1000 --pods-per-node 30 [--runs 3]

Seeds the emulator with a synthetic cluster, lets a KubernetesDatastore (audit on) list and watch
it, then times `audit()` of each resource in turn (wall and this process's CPU, which includes the
emulator building the pages: both run here) and reports the bytes the lists sent, next to what a
full relist of the same resources sends, and the memory of the versions the audit compares with.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

from kubernetes_asyncio import client as kclient
from kubernetes_asyncio import config as kconfig

from loadtest.apiserver import start_apiserver
from loadtest.support.cluster import seed
from protocol import SYNCER_BGP, SYNCER_FELIX
from typha.datastores.kubernetes import KubernetesDatastore
from typha.ingest import Ingestor
from typha.simcluster import SyntheticCluster
from typha.snapcache import SnapCache


def _list_bytes(api: object) -> int:
    return sum(r.list_bytes_sent for r in api.stats.resources.values())  # type: ignore[attr-defined]


async def main(nodes: int, pods_per_node: int, runs: int) -> None:
    api = await start_apiserver(bookmark_interval=1.0)
    objects = seed(api.store, SyntheticCluster(nodes=nodes, pods_per_node=pods_per_node, policies=50, seed=1))
    with tempfile.TemporaryDirectory() as tmp:
        kc = Path(tmp) / "kubeconfig"
        api.write_kubeconfig(str(kc))
        conf = kclient.Configuration()
        await kconfig.load_kube_config(config_file=str(kc), client_configuration=conf)
    k8s = kclient.ApiClient(conf)
    caches = {SYNCER_FELIX: SnapCache(SYNCER_FELIX), SYNCER_BGP: SnapCache(SYNCER_BGP)}
    ingestor = Ingestor(caches)
    ds = KubernetesDatastore(ingestor, k8s, audit_interval=3600.0)  # on, but the loop waits: we call audit()
    task = asyncio.create_task(ds.run())
    relist_bytes = _list_bytes(api)
    try:
        await asyncio.wait_for(ds.synced.wait(), 600)
        relist_bytes = _list_bytes(api) - relist_bytes
        revs = [ingestor.revisions(r.name) for r in ds.resources]  # copies: the same sizes as the originals
        tracked = sum(len(v) for v in revs)
        # What the versions add: the dicts and their (namespace, name) tuples; the strings are shared
        # with the keys index (names) and the cache's entries (versions), so they are counted as an
        # upper bound apart.
        own = sum(sys.getsizeof(v) + sum(sys.getsizeof(k) for k in v) for v in revs)
        strings = sum(sys.getsizeof(rv) for v in revs for rv in v.values())
        print(f"{objects:,} objects seeded; {tracked:,} versions tracked")
        print(
            f"memory of the versions: {own / 2**20:.1f} MiB (dicts and name tuples) "
            f"+ at most {strings / 2**20:.1f} MiB (version strings, shared with the cache)"
        )
        for run in range(runs):
            b0, w0, c0 = _list_bytes(api), time.perf_counter(), time.process_time()
            for res in ds.resources:
                d = await ds.audit(res)
                assert d is not None and not d, (res.name, d)
            wall, cpu, sent = time.perf_counter() - w0, time.process_time() - c0, _list_bytes(api) - b0
            print(
                f"audit {run + 1}: {wall:.2f} s wall, {cpu:.2f} s CPU (typha and emulator), "
                f"{sent / 2**20:.1f} MiB listed (a full relist: {relist_bytes / 2**20:.1f} MiB)"
            )
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await k8s.close()
        await api.stop()


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--nodes", type=int, default=1000)
    p.add_argument("--pods-per-node", type=int, default=30)
    p.add_argument("--runs", type=int, default=3)
    a = p.parse_args()
    sys.exit(asyncio.run(main(a.nodes, a.pods_per_node, a.runs)))
