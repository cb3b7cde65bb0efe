"""The direct mode: the same cluster and churn, with agents that list and watch the API server
themselves (`fleets.direct.DirectFleet`), the load typha exists to remove.

Verification: every agent listed and every watch open again at the end. Latency: API write to the
last direct agent that received the event.
"""

from __future__ import annotations

import asyncio
import time

from rich.console import Console

from loadtest.fleets.direct import DirectFleet, DirectSpec
from loadtest.support.cluster import store_key
from loadtest.support.host import meminfo, self_cpu
from typha.k8s.projection import resources_for_syncer

from ..measure import api_totals, direct_latency_points, list_bytes_estimate, open_watches, summarize, thin_points
from ..progress import Progress, Rows, common_rows, direct_rows
from ..results import (
    WRITE_TO_LAST_AGENT,
    AgentCounts,
    DirectResult,
    DirectVerification,
    Sample,
    SyncFigures,
    WireFigures,
)
from ..scenario import Scenario
from .base import ModeError, ModeRun

LISTING_STALL = 60.0  # seconds without a listed byte after which slow listing counts as stuck


class DirectRun(ModeRun):
    mode = "direct"
    result: DirectResult
    fleet: DirectFleet | None

    def __init__(self, sc: Scenario, console: Console, progress: Progress) -> None:
        super().__init__(sc, console, progress)
        self.paths = [r.path() for r in resources_for_syncer("felix")]
        self.result.resources_watched = len(self.paths)
        self.events0 = 0
        self.writes_seen = 0

    def new_result(self) -> DirectResult:
        return DirectResult(agents=self.sc.baseline_agents)

    @property
    def agents(self) -> int:
        return self.sc.baseline_agents

    @property
    def watches_wanted(self) -> int:
        return self.agents * len(self.paths)

    async def start_agents(self) -> None:
        sc, res = self.sc, self.result
        ca = self.api.ca_pem.decode() if isinstance(self.api.ca_pem, bytes) else self.api.ca_pem
        spread = max(2.0, self.agents / 50)
        self.fleet = fleet = DirectFleet(
            DirectSpec(self.api.url, self.api.token, ca, self.paths, self.agents, sc.processes, connect_spread=spread)
        )
        api0 = api_totals(self.api)
        cpu_a = self_cpu()
        self.phase = "agents listing"
        self.mark("agents connecting", agents=self.agents)
        t0 = time.monotonic()
        fleet.start()
        want = self.watches_wanted
        self.log(f"{self.agents:,} agents each listing and watching {len(self.paths)} resources ({want:,} watches)")
        limit, cap = sc.agent_sync_timeout(self.mode), sc.agent_sync_cap(self.mode)
        ok = await fleet.wait(
            lambda f: f.total("listed") == self.agents and f.total("watches_open") == want,
            limit,
            progress=lambda f: f.total("bytes"),
            stall=LISTING_STALL,
            cap=cap,
        )
        res.snapshot = SyncFigures(
            all_agents_synced=ok,
            all_agents_seconds=time.monotonic() - t0 if ok else None,
            listed=fleet.total("listed"),
        )
        self.mark("all agents watching" if ok else "agents timed out", seconds=time.monotonic() - t0)
        if not ok:
            raise ModeError(
                f"only {fleet.total('listed')} of {self.agents} direct agents listed and watching after "
                f"{time.monotonic() - t0:.0f}s (bound {limit:.0f}s, extended while lists progressed, at most "
                f"{cap:.0f}s; set it with --sync-timeout)"
            )
        res.api_startup = api_totals(self.api).minus(api0)
        res.emulator_cpu_startup = self_cpu() - cpu_a
        self.log(f"all agents watching after {res.snapshot.all_agents_seconds:.1f}s")

    async def before_churn(self) -> None:
        assert self.fleet is not None
        self.events0 = self.fleet.total("events")

    async def drain(self) -> bool:
        """Drained when the agents' event count stops moving for 1.5 s (bounded)."""
        assert self.fleet is not None
        self.phase = "draining"
        deadline = time.monotonic() + self.sc.drain_timeout
        last, still = -1, 0
        while time.monotonic() < deadline and still < 6:
            await asyncio.sleep(0.25)
            self.fleet.poll()
            cur = self.fleet.total("events")
            still = still + 1 if cur == last else 0
            last = cur
        return True

    async def measure(self, span: float) -> None:
        res = self.result
        assert self.fleet is not None and res.api_startup is not None and res.api_churn is not None
        res.wire = WireFigures(
            agents_bytes_total=self.fleet.total("bytes"),
            api_bytes_startup=res.api_startup.bytes_out,
            api_bytes_churn=res.api_churn.bytes_out,
        )
        pts = direct_latency_points(self.churn_start_ns, self.rv_times, self.fleet.rv_last_arrival)
        res.latency = {WRITE_TO_LAST_AGENT: summarize(v for _, v in pts)}
        res.latency_points = {WRITE_TO_LAST_AGENT: thin_points(pts)}
        self.writes_seen = len(pts)

    async def verify(self, converged: bool) -> None:
        assert self.fleet is not None and self.result.api_churn is not None
        f = self.fleet
        v = DirectVerification(
            agents=self.agents,
            agents_listed=f.total("listed"),
            watches_open_end=f.total("watches_open"),
            watches_wanted=self.watches_wanted,
            events_received_churn=f.total("events") - self.events0,
            events_sent_churn=self.result.api_churn.events_sent,
            relists=f.total("relists"),
            errors=f.total("errors"),
            writes_seen=self.writes_seen,
            writes=len(self.rv_times),
        )
        v.passed = v.agents_listed == self.agents and v.watches_open_end == self.watches_wanted
        self.result.verification = v

    def recovery_timeout(self) -> float:
        """After a compaction every agent relists, which can take as long as the first lists did."""
        return max(super().recovery_timeout(), self.sc.agent_sync_timeout(self.mode))

    def compact_plan(self) -> tuple[list[str] | None, list[str], str]:
        """Every direct agent relists every compacted resource at once, and the emulator builds each
        list body in memory: 100 agents x a 100 MB pod list would need 10+ GB. Compact only the
        resources whose relist herd fits a quarter of the machine's memory; say which were left out."""
        _, total = meminfo()
        budget = total // 4
        keys = [store_key(r.name) for r in resources_for_syncer("felix")]
        cost = sorted((list_bytes_estimate(self.api.store, k) * self.agents * 8, k) for k in keys)
        chosen: list[str] = []
        used = 0
        for c, k in cost:
            if used + c <= budget:
                chosen.append(k)
                used += c
        left_out = [k for _, k in cost if k not in chosen]
        note = ""
        if left_out:
            gib = sum(c for c, k in cost if k in left_out) / 8 / 2**30
            note = (
                f"not compacted: {', '.join(left_out)} (relisting them from {self.agents} agents at once "
                f"would put ~{gib:.1f} GiB of list bodies in flight)"
            )
        return chosen, left_out, note

    def recovered(self, watches: int) -> bool:
        """Every agent's watches open again (direct agents relist and rewatch on their own)."""
        assert self.fleet is not None
        want = self.watches_wanted
        return self.fleet.total("watches_open") >= want and open_watches(self.api) >= want

    def agent_sample(self, s: Sample) -> None:
        if self.fleet is not None:
            self.fleet.poll()
            f = self.fleet
            s.agents = AgentCounts(
                agents=self.agents,
                listed=f.total("listed"),
                watches_open=f.total("watches_open"),
                events=f.total("events"),
                bytes=f.total("bytes"),
                relists=f.total("relists"),
                errors=f.total("errors"),
            )

    def progress_rows(self, s: Sample, prev: Sample | None) -> Rows:
        return common_rows(s, prev) + direct_rows(s, self.agents, self.watches_wanted)
