"""Finding typha: the ready endpoints of the typha Service's EndpointSlices, own node first.

Design note
-----------
Felix asks the API server once per (re)connect for the typha Service's EndpointSlices, rather than
watching them: it only needs an address when it dials, and one small GET per reconnect is cheaper for
the API server than thousands of idle watches (the very load typha exists to remove). The ordering
is Calico's: a replica on our own node first (no network hop, and it spreads load as the DaemonSet
does), then the others shuffled, so a rollout does not send every agent to the same replica. Only
endpoints that are ready (or whose readiness is unknown, which Kubernetes says to treat as ready) and
not terminating are used.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Iterable
from typing import Any

import aiohttp

from common.endpoints import list_endpoint_slices, ready_endpoints

log = logging.getLogger("felix.discovery")

Address = tuple[str, int]


def order_endpoints(
    slices: Iterable[dict[str, Any]], port_name: str, nodename: str, rng: random.Random | None = None
) -> list[Address]:
    """Ready typha addresses from EndpointSlice objects: this node's first, the rest shuffled."""
    local: list[Address] = []
    remote: list[Address] = []
    for ep in ready_endpoints(slices, port_name):
        (local if ep.node == nodename else remote).append((ep.address, ep.port))
    (rng or random).shuffle(remote)
    return local + remote


class EndpointSliceDiscovery:
    """Callable address source for `SyncClient`: lists the Service's EndpointSlices on each call."""

    def __init__(self, api_client: Any, namespace: str, service: str, port_name: str, nodename: str) -> None:
        self.api = api_client
        self.namespace = namespace
        self.service = service
        self.port_name = port_name
        self.nodename = nodename
        self.last: list[Address] = []

    async def __call__(self) -> list[Address]:
        try:
            items = await list_endpoint_slices(self.api, self.namespace, self.service)
        except (TimeoutError, OSError, ValueError, aiohttp.ClientError) as exc:
            if self.last:
                log.warning("typha discovery failed (%s); using the last known addresses", exc)
                return self.last
            raise OSError(f"typha discovery failed: {exc}") from None
        addrs = order_endpoints(items, self.port_name, self.nodename)
        if not addrs:
            raise OSError(f"no ready typha endpoints in {self.namespace}/{self.service}")
        self.last = addrs
        return addrs
