"""The felix agent shell: nothing programmed before in-sync, readiness, metrics, reconnects."""

from __future__ import annotations

import subprocess
from collections.abc import AsyncIterator, Iterator

import pytest

from felix.agent import FelixAgent
from felix.dataplane.routes import RTPROT_FELIX, RouteManager
from loadtest.apiserver.fixtures import make_calico_object, make_node
from protocol import SyncStatus
from typha.ingest import ADDED, Ingestor
from typha.snapcache import SnapCache
from typha.syncserver import SyncServer

from .conftest import wait_for
from .support.felix_lab import serving, typha_serving
from .support.netlab import UNDERLAY, scratch_netns

pytestmark = pytest.mark.slow  # a network namespace, a typha server, HTTP endpoints


@pytest.fixture
def netns() -> Iterator[str]:
    with scratch_netns("ptagent", *UNDERLAY) as name:
        yield name


def kernel_routes(ns: str) -> str:
    return subprocess.run(
        ["ip", "-n", ns, "route", "show", "proto", str(RTPROT_FELIX)], capture_output=True, text=True
    ).stdout


@pytest.fixture
async def typha() -> AsyncIterator[tuple[SnapCache, Ingestor, SyncServer]]:
    events = [
        (
            ADDED,
            "ippools",
            make_calico_object("IPPool", "p", {"cidr": "10.200.0.0/16", "ipipMode": "Never", "vxlanMode": "Never"}),
        ),
        (ADDED, "nodes", make_node("me", "198.18.0.1")),
        (ADDED, "nodes", make_node("other", "198.18.0.2")),
        (
            ADDED,
            "blockaffinities",
            make_calico_object("BlockAffinity", "a", {"node": "other", "cidr": "10.200.1.0/26", "state": "confirmed"}),
        ),
        (
            ADDED,
            "ipamblocks",
            make_calico_object(
                "IPAMBlock",
                "10-200-1-0-26",
                {"cidr": "10.200.1.0/26", "affinity": "host:other", "allocations": [], "attributes": []},
            ),
        ),
    ]
    async with typha_serving(events) as (cache, ing, server):
        # Typha was in sync once and has since lost its API server: it serves its last good state,
        # marked wait-for-datastore. Felix must calculate from it but program nothing until in-sync.
        cache.set_status(SyncStatus.IN_SYNC)
        cache.set_status(SyncStatus.WAIT_FOR_DATASTORE)
        yield cache, ing, server


@pytest.mark.kernel
async def test_nothing_programmed_before_in_sync_then_ready(netns: str, typha: tuple) -> None:
    cache, _ing, server = typha
    routes = RouteManager(netns, resync_interval=60)
    agent = FelixAgent("me", [("127.0.0.1", server.port)], routes=routes, netns=netns)
    try:
        async with serving(agent) as felix:
            await wait_for(lambda: agent.client.stats.snapshots == 1, 5, "snapshot received")
            assert "10.200.1.0/26" in agent.calc.desired()  # calculated ...
            assert kernel_routes(netns) == ""  # ... but not programmed: typha is not in sync yet
            status, body = await felix.get("/readiness")
            assert status == 503 and "not yet in sync" in body
            assert (await felix.get("/liveness"))[0] == 200
            cache.set_status(SyncStatus.IN_SYNC)
            await wait_for(lambda: "10.200.1.0/26 via 198.18.0.2" in kernel_routes(netns), 5, "routes after in-sync")
            await wait_for(lambda: agent.ready, 5, "ready")
            assert (await felix.get("/readiness"))[0] == 200
            _, text = await felix.get("/metrics", felix.metrics)
            for fam in (
                "felix_routes_programmed",
                "felix_route_apply_seconds",
                "felix_route_resyncs_total",
                "felix_route_drift_repaired_total",
                "felix_typha_connected",
                "felix_updates_total",
            ):
                assert fam in text, fam
            assert "felix_typha_connected 1.0" in text
            assert "felix_routes_programmed 1.0" in text
            # Losing typha: readiness drops, the routes stay (last good state), the agent reconnects.
            await server.shutdown()
            await wait_for(lambda: not agent.ready, 5, "not ready without typha")
            assert "10.200.1.0/26" in kernel_routes(netns)
    finally:
        routes.close()
