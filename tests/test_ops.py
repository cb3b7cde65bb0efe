"""Health, readiness, status and metrics endpoints over real HTTP."""

from __future__ import annotations

import aiohttp
import pytest

from protocol import SyncStatus
from protocol.client import SyncClient
from typha.metrics import ServerMetrics
from typha.ops import health_app, metrics_app, start_site
from typha.snapcache import SnapCache
from typha.syncserver import ServerConfig, SyncServer

from .conftest import wait_for

FAMILIES = [
    "typha_connections_accepted_total",
    "typha_connections_dropped_total",
    "typha_connections_active",
    "typha_connections_streaming",
    "typha_breadcrumb_seq_number",
    "typha_updates_total",
    "typha_updates_skipped_total",
    "typha_cache_size",
    "typha_snapshots_generated_total",
    "typha_snapshots_reused_total",
    "typha_snapshot_raw_bytes_total",
    "typha_snapshot_wire_bytes_total",
    "typha_client_snapshot_send_seconds",
    "typha_client_latency_seconds",
    "typha_client_write_latency_seconds",
    "typha_ping_latency_seconds",
    "typha_kvs_per_msg",
    "typha_next_breadcrumb_latency_seconds",
    "typha_fanout_latency_seconds",
    "typha_fanout_passes_total",
    "typha_snapshot_passes_held_back_total",
    "typha_breadcrumb_bytes_total",
]


@pytest.mark.slow
async def test_readiness_follows_sync_status_and_metrics_cover_families() -> None:
    caches = {"felix": SnapCache("felix"), "bgp": SnapCache("bgp")}
    metrics = ServerMetrics()
    metrics.watch_caches(lambda: caches)
    server = SyncServer(
        caches,
        ServerConfig(host="127.0.0.1", port=0, ping_interval=0.05, ping_timeout=1, housekeeping_interval=0.05),
        metrics,
    )
    await server.start()
    hrun, hport = await start_site(health_app(server, caches), "127.0.0.1", 0)
    mrun, mport = await start_site(metrics_app(metrics.registry), "127.0.0.1", 0)
    try:
        async with aiohttp.ClientSession() as http:

            async def get(port: int, path: str) -> tuple[int, str]:
                async with http.get(f"http://127.0.0.1:{port}{path}") as r:
                    return r.status, await r.text()

            assert await get(hport, "/liveness") == (200, "live\n")
            status, body = await get(hport, "/readiness")
            assert status == 503 and "WAIT_FOR_DATASTORE" in body
            caches["felix"].apply([("a", b"1", "1"), ("a", b"1", "2")])
            caches["felix"].set_status(SyncStatus.IN_SYNC)
            status, body = await get(hport, "/readiness")
            assert status == 503 and "bgp=WAIT_FOR_DATASTORE" in body and "felix" not in body
            caches["bgp"].set_status(SyncStatus.IN_SYNC)
            assert (await get(hport, "/readiness"))[0] == 200

            client = SyncClient([("127.0.0.1", server.port)], "felix", hostname="n")
            import asyncio

            task = asyncio.create_task(client.run())
            await client.wait_in_sync(5)
            caches["felix"].apply([("b", b"2", "3")])
            await wait_for(lambda: "b" in client.state, 5, "update")
            await wait_for(
                lambda: (metrics.registry.get_sample_value("typha_ping_latency_seconds_count") or 0) > 0, 5, "a pong"
            )
            status, text = await get(mport, "/metrics")
            assert status == 200
            for fam in FAMILIES:
                assert f"# HELP {fam} " in text, fam
            assert 'typha_updates_skipped_total{syncer="felix"} 1.0' in text
            assert 'typha_cache_size{syncer="felix"} 2.0' in text
            assert "typha_connections_streaming 1.0" in text

            async with http.get(f"http://127.0.0.1:{hport}/status?digest=1") as r:
                st = await r.json()
            from protocol.digest import state_digest

            assert st["syncers"]["felix"]["digest"] == state_digest((k, kv.value) for k, kv in client.state.items())
            client.stop()
            await task

            # Shutting down: readiness drops at once, before connections are gone.
            await server.shutdown()
            status, body = await get(hport, "/readiness")
            assert status == 503 and "shutting down" in body
    finally:
        await hrun.cleanup()
        await mrun.cleanup()
