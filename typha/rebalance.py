"""Connection rebalancing: how many agents this replica should carry, and shedding the rest.

Design note
-----------
After a rollout, the replica that came up first holds most agents (they all reconnected to it), and
nothing moves them back. Calico's answer, kept here: each replica computes its fair share from the
cluster size and the number of ready replicas, leaving room to absorb one replica's loss,

    target = syncer types x (1 + nodes x 1.2 / (replicas - 1)), clamped to [400, 10000]

and while it holds more, the server closes one random connection per housekeeping pass (one a
second), so agents drift to other replicas instead of stampeding. Node count comes from the objects
typha already ingests; replica count from the EndpointSlices of typha's own Service, read every
`interval` seconds (a read, not a watch: one small GET per replica per interval).
"""

from __future__ import annotations

import asyncio
import logging

from common.endpoints import list_endpoint_slices, ready_endpoints

from .ingest import Ingestor
from .syncserver import SyncServer

log = logging.getLogger("typha.rebalance")

LOWER_LIMIT = 400
UPPER_LIMIT = 10_000


def connection_target(
    syncer_types: int, nodes: int, replicas: int, lower: int = LOWER_LIMIT, upper: int = UPPER_LIMIT
) -> int:
    """This replica's share of connections, with room for one replica to fail."""
    share = nodes * 1.2 / max(1, replicas - 1)
    return int(min(upper, max(lower, syncer_types * (1 + share))))


class Rebalancer:
    def __init__(
        self,
        server: SyncServer,
        ingestor: Ingestor,
        api: object,
        namespace: str,
        service: str,
        port_name: str = "calico-typha",
        interval: float = 30.0,
    ) -> None:
        self.server = server
        self.ingestor = ingestor
        self.api = api
        self.namespace = namespace
        self.service = service
        self.port_name = port_name
        self.interval = interval
        self.replicas = 0

    async def update(self) -> int | None:
        """Recompute the target once; returns it (None when the replica count is unknown)."""
        try:
            slices = await list_endpoint_slices(self.api, self.namespace, self.service)
        except Exception as exc:  # keep the last target: never shed on a failed read
            log.warning("cannot count typha replicas: %s", exc)
            return self.server.rebalance_target
        self.replicas = max(1, len(ready_endpoints(slices, self.port_name)))
        nodes = self.ingestor.objects["nodes"]
        target = min(
            self.server.config.max_connections, connection_target(len(self.server.caches), nodes, self.replicas)
        )
        if target != self.server.rebalance_target:
            log.info("connection target %d (%d nodes, %d replicas)", target, nodes, self.replicas)
        self.server.rebalance_target = target
        return target

    async def run(self) -> None:
        while True:
            await self.update()
            await asyncio.sleep(self.interval)
