"""The embedded datastore: a generated cluster with churn, fed through the same Ingestor as Kubernetes.

It lets typha run (for demos, benchmarks and tests) with no API server at all, while exercising the
exact path real data takes: objects shaped like the API server's JSON, projected, encoded, deduplicated.
It walks the sync statuses a real datastore does: wait-for-datastore, resync-in-progress while the
initial listing is ingested (in slices, yielding to the event loop so clients are served meanwhile),
then in-sync, then churn at a steady rate.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

from protocol import SyncStatus

from ..ingest import ADDED, Ingestor
from ..simcluster import SyntheticCluster

log = logging.getLogger("typha.synthetic")


@dataclass(slots=True)
class SyntheticOptions:
    """The cluster to generate; its defaults are the settings' (typha.config, --synthetic-*)."""

    nodes: int
    pods_per_node: int
    policies: int
    churn_rate: float  # object events per second
    churn_seconds: float  # stop churning after this long; 0 churns forever
    seed: int
    tick: float = 0.05
    slice: int = 5000  # objects ingested per loop iteration during the initial listing


class SyntheticDatastore:
    def __init__(self, ingestor: Ingestor, options: SyntheticOptions) -> None:
        self.ingestor = ingestor
        self.options = options
        self.cluster = SyntheticCluster(
            nodes=options.nodes,
            pods_per_node=options.pods_per_node,
            policies=options.policies,
            seed=options.seed,
            namespaces=max(1, min(200, options.nodes // 5)),
        )
        self.churned = 0
        self.synced = asyncio.Event()

    async def run(self) -> None:
        opts = self.options
        self.ingestor.set_status(SyncStatus.RESYNC_IN_PROGRESS)
        t0 = time.monotonic()
        batch = []
        listed = 0
        for resource, obj in self.cluster.initial_objects():
            batch.append((ADDED, resource, obj))
            if len(batch) >= opts.slice:
                listed += len(batch)
                self.ingestor.handle(batch)
                batch = []
                await asyncio.sleep(0)
        listed += len(batch)
        self.ingestor.handle(batch)
        self.ingestor.set_status(SyncStatus.IN_SYNC)
        self.synced.set()
        log.info("synthetic cluster of %d objects ingested in %.2fs", listed, time.monotonic() - t0)
        if opts.churn_rate <= 0:
            return
        start = time.monotonic()
        while True:
            await asyncio.sleep(opts.tick)
            elapsed = time.monotonic() - start
            if opts.churn_seconds and elapsed >= opts.churn_seconds:
                log.info("churn finished: %d changes in %.1fs", self.churned, elapsed)
                return
            due = int(opts.churn_rate * elapsed) - self.churned
            if due > 0:
                self.ingestor.handle(self.cluster.churn(due, count_events=True))
                self.churned += due
