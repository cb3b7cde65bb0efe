"""The agent's policy wiring: typha -> PolicyCalculator -> a policy dataplane, metrics and readiness.

A real typha server (in process) and a real agent; the policy dataplane is a recorder, so this runs
without root (the kernel side is tested with the iptables dataplane itself and end to end).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

import pytest

from felix.agent import FelixAgent
from felix.policy.messages import (
    ActivePolicyUpdate,
    Batch,
    IpSetDeltaUpdate,
    PolicyRejected,
    WorkloadEndpointUpdate,
)
from loadtest.apiserver.fixtures import make_calico_object, make_namespace, make_node, make_pod
from protocol import SyncStatus
from typha.ingest import ADDED, MODIFIED, Ingestor
from typha.snapcache import SnapCache
from typha.syncserver import SyncServer

from .conftest import wait_for
from .support.felix_lab import serving, typha_serving


class RecordingDataplane:
    """Stands in for felix.dataplane's iptables manager: records what the agent hands it."""

    def __init__(self) -> None:
        self.batches: list[Batch] = []
        self.programming = False
        self.failing = False
        self.ticks = 0

    def apply(self, batch: Batch) -> None:
        self.batches.append(batch)

    def start_programming(self) -> None:
        self.programming = True

    def next_deadline(self) -> float | None:
        return None

    def tick(self) -> None:
        self.ticks += 1

    @property
    def ready(self) -> bool:
        return self.programming and not self.failing

    @property
    def not_ready_reason(self) -> str:
        return "iptables-restore failing" if self.failing else ""

    def messages(self) -> list[object]:
        return [m for b in self.batches for m in b.messages]


def knp(name: str, spec: dict) -> dict:
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": name, "namespace": "prod"},
        "spec": spec,
    }


@pytest.fixture
async def typha() -> AsyncIterator[tuple[SnapCache, Ingestor, SyncServer]]:
    events = [
        (ADDED, "nodes", make_node("me", "198.18.0.1")),  # felix programs nothing without its Node
        (ADDED, "namespaces", make_namespace("prod", {"team": "blue"})),
        (ADDED, "pods", make_pod("prod", "web-1", "me", "10.200.0.1", {"app": "web"})),
        (ADDED, "pods", make_pod("prod", "db-1", "other", "10.200.1.1", {"app": "db"})),
        (
            ADDED,
            "networkpolicies",
            knp(
                "web",
                {
                    "podSelector": {"matchLabels": {"app": "web"}},
                    "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "db"}}}]}],
                },
            ),
        ),
        (
            ADDED,
            "globalnetworkpolicies",
            make_calico_object("GlobalNetworkPolicy", "broken", {"selector": "has(", "types": ["Ingress"]}),
        ),
    ]
    async with typha_serving(events) as (cache, ing, server):
        # In sync once, then lost its API server: typha serves its last state, not in sync (as in
        # tests/test_felix_agent.py), so the agent calculates but must not program yet.
        cache.set_status(SyncStatus.IN_SYNC)
        cache.set_status(SyncStatus.WAIT_FOR_DATASTORE)
        yield cache, ing, server


@pytest.mark.slow
async def test_policy_flows_to_the_dataplane_after_in_sync_with_metrics_and_readiness(
    typha: tuple[SnapCache, Ingestor, SyncServer], caplog: pytest.LogCaptureFixture
) -> None:
    cache, ing, server = typha
    dp = RecordingDataplane()
    agent = FelixAgent("me", [("127.0.0.1", server.port)], policy=dp)
    caplog.set_level(logging.WARNING, "felix")
    async with serving(agent) as felix:
        await wait_for(lambda: agent.client.stats.snapshots == 1, 5, "snapshot received")
        await asyncio.sleep(0)  # one loop pass: a flush would have run by now
        assert dp.batches == [] and not dp.programming  # nothing before in-sync
        cache.set_status(SyncStatus.IN_SYNC)
        await wait_for(lambda: dp.programming, 5, "programming started")
        first = dp.messages()
        (wep,) = [m for m in first if isinstance(m, WorkloadEndpointUpdate)]
        assert wep.endpoint.tiers[0].ingress_policies == ("prod/knp.default.web",)
        assert any(isinstance(m, ActivePolicyUpdate) for m in first)
        (rej,) = [m for m in first if isinstance(m, PolicyRejected)]
        assert rej.id == "policy default/broken" and "bad selector" in rej.reason
        assert "policy default/broken rejected, not enforced" in caplog.text
        await wait_for(lambda: agent.ready, 5, "ready")

        # A label change on another node reaches the dataplane as an ip set delta only.
        n = len(dp.batches)
        ing.handle([(MODIFIED, "pods", make_pod("prod", "db-1", "other", "10.200.1.1", {"app": "cache"}))])
        await wait_for(lambda: len(dp.batches) > n, 5, "delta batch")
        (delta,) = dp.batches[-1].messages
        assert isinstance(delta, IpSetDeltaUpdate) and delta.removed == {"10.200.1.1/32"}

        _, text = await felix.get("/metrics", felix.metrics)
        assert "felix_policies_rejected_total 1.0" in text
        assert "felix_policies_rejected_current 1.0" in text
        assert "felix_policies_active 1.0" in text
        assert "felix_policy_calc_seconds_count" in text

        # The dataplane failing turns readiness false with its reason.
        dp.failing = True
        status, body = await felix.get("/readiness")
        assert status == 503 and "iptables-restore failing" in body


@pytest.mark.slow
async def test_without_a_policy_dataplane_policy_is_not_calculated(
    typha: tuple[SnapCache, Ingestor, SyncServer],
) -> None:
    _, _, server = typha
    agent = FelixAgent("me", [("127.0.0.1", server.port)])
    assert agent.policy_calc is None and agent.policy is None
