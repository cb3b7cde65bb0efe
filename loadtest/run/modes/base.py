"""What every mode of `loadtest run` shares: the emulator and its cluster, churn, faults, sampling,
the churn-window measurements and the teardown.

Design note
-----------
`ModeRun.run` is the one sequence every mode follows, each step bounded in time:

    start_api -> start_servers -> start_agents -> before_churn -> churn + faults -> drain
              -> measure -> verify, then teardown whatever happened

A mode (`modes/typha.py`, `modes/direct.py`) fills in the steps that differ: which servers run,
what the agents are and when they count as synced, drained and correct, and what extra it measures.
A new mode (say, typha over TLS) subclasses the closest one and overrides a step or two; it is
listed in `modes.MODES` under its name.

Results go into the mode's typed result (`results.TyphaResult` / `DirectResult`) as each step
ends, so a mode that fails half-way still reports what it measured. A step that cannot complete
raises `ModeError` with a message that names the bound and the option that sets it.

Teardown is graceful after a normal run (agents send final reports, typha drains its clients). When
the run is cancelled (Ctrl-C, SIGTERM, the time budget), it kills instead, so the program exits in
about a second.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from rich.console import Console
from rich.text import Text

from loadtest.apiserver import Backup, start_apiserver
from loadtest.fleets.workers import WorkerFleet
from loadtest.support.cluster import apply_timed, seed
from loadtest.support.host import host_cpu, meminfo, self_cpu
from typha.simcluster import SyntheticCluster

from ..faults import run_schedule
from ..measure import ChurnWindow, api_totals
from ..progress import Progress, Rows, common_rows
from ..results import ApiCounters, ChurnFigures, DirectResult, FaultRecord, Sample, TimelineEvent, TyphaResult
from ..scenario import Scenario

MEMORY_GUARD = 0.10  # abort a mode when the machine has less than this fraction of its memory available


class ModeError(RuntimeError):
    """A step of a mode could not complete; the message says which bound was hit and how to change it."""


class ModeRun:
    mode = ""
    has_typha = False

    def __init__(self, sc: Scenario, console: Console, progress: Progress) -> None:
        self.sc = sc
        self.console = console
        self.progress = progress
        self.t0 = time.monotonic()
        self.phase = "starting"
        self.api: Any = None
        self.backup: Backup | None = None  # the emulator's contents at churn start, if a fault needs them
        self.cluster: SyntheticCluster | None = None
        self.fleet: WorkerFleet[Any] | None = None
        self.fleet_stopped = False
        self.rv_times: dict[int, int] = {}  # resourceVersion -> wall time of its write (ns)
        self.events_written = 0
        self.noop_writes = 0
        self.churn_cpu = 0.0  # this process's CPU spent generating churn (not the emulator's work)
        self.churn_start_ns = 0
        self.churn_start_t = 0.0
        self.churn_end_t = 0.0
        self.churn_done = False
        self.faults_log: list[FaultRecord] = []
        self.samples: list[Sample] = []
        self.events: list[TimelineEvent] = []
        self.tasks: list[asyncio.Task[Any]] = []
        self.main_task: asyncio.Task[Any] | None = None
        self.aborted = ""  # why the memory guard stopped this mode
        self._sample_errors: set[str] = set()
        self.result: TyphaResult | DirectResult = self.new_result()

    # -- what a mode provides ------------------------------------------------------------------------
    def new_result(self) -> TyphaResult | DirectResult:
        raise NotImplementedError

    @property
    def agents(self) -> int:
        raise NotImplementedError

    async def start_servers(self) -> None:
        """Start what the agents connect to (typha replicas); nothing for agents that watch the API."""

    async def start_agents(self) -> None:
        """Start the fleet and wait until every agent is synced; raise ModeError when it takes too long."""
        raise NotImplementedError

    async def before_churn(self) -> None:
        """Baselines taken once the agents are synced (memory, counters)."""

    def fault_grace(self) -> float:
        """How long the faults may still run after churn ends (their recovery is measured)."""
        return self.sc.drain_timeout + 60

    async def drain(self) -> bool:
        """After churn: wait (bounded) until every agent holds the final state; True if it did."""
        raise NotImplementedError

    async def measure(self, span: float) -> None:
        """The mode's own figures after the drain (span: churn start to drained, seconds)."""

    async def verify(self, converged: bool) -> None:
        raise NotImplementedError

    def recovered(self, watches: int) -> bool:
        """After a fault: the API watches back to `watches` and every agent served again."""
        raise NotImplementedError

    async def restart_replica(self, index: int | None, n: int, kill: bool, record: FaultRecord) -> None:
        raise ModeError(f"{self.mode} mode has no typha replicas to restart")

    async def rolling_restart(self, record: FaultRecord) -> None:
        raise ModeError(f"{self.mode} mode has no typha replicas to restart")

    def recovery_timeout(self) -> float:
        return 30.0 + self.sc.drain_timeout

    def compact_plan(self) -> tuple[list[str] | None, list[str], str]:
        return None, [], ""

    def agent_sample(self, s: Sample) -> None:
        """Add the fleet's (and servers') figures to a sample."""

    def progress_rows(self, s: Sample, prev: Sample | None) -> Rows:
        return common_rows(s, prev)

    async def stop_servers(self, kill: bool) -> None:
        """Stop what start_servers started."""

    # -- the sequence --------------------------------------------------------------------------------
    async def run(self) -> TyphaResult | DirectResult:
        self.main_task = asyncio.current_task()
        res = self.result
        try:
            await self.start_api()
            await self.start_servers()
            self.tasks.append(asyncio.create_task(self.sampler()))
            await self.start_agents()
            await self.before_churn()
            window = ChurnWindow(self.api, self.workers_cpu)
            await self.churn_with_faults()
            converged = await self.drain()
            drained_t = self.now()
            span = drained_t - self.churn_start_t
            res.api_churn, res.emulator_cpu, res.host_cpu_churn = window.close(
                span, self.churn_cpu, self.samples, self.churn_start_t, self.churn_end_t
            )
            self.mark("drained" if converged else "drain timed out")
            await self.measure(span)
            await self.verify(converged)
        finally:
            await self.teardown()
        return res

    async def wait_recovered(self, watches: int, timeout: float) -> bool:
        """Poll `recovered` (bounded), after giving the agents time to notice the fault."""
        assert self.fleet is not None
        deadline = time.monotonic() + timeout
        await asyncio.sleep(0.3)
        while time.monotonic() < deadline:
            self.fleet.poll()
            if self.recovered(watches):
                return True
            await asyncio.sleep(0.1)
        return False

    def log(self, message: str, style: str = "") -> None:
        """A log line on stderr, prefixed with the mode; plain text, so brackets in reprs are not markup."""
        self.console.log(Text(f"[{self.mode}] {message}", style=style))

    def now(self) -> float:
        return round(time.monotonic() - self.t0, 3)

    def mark(self, name: str, **detail: Any) -> None:
        self.events.append(TimelineEvent(self.now(), name, detail))

    def workers_cpu(self) -> float:
        return self.fleet.cpu_seconds() if self.fleet is not None else 0.0

    async def start_api(self) -> None:
        sc = self.sc
        self.phase = "seeding"
        self.api = await start_apiserver(window_size=sc.window_size, bookmark_interval=60.0)
        t0 = time.monotonic()
        self.cluster = SyntheticCluster(
            nodes=sc.nodes, pods_per_node=sc.pods_per_node, namespaces=sc.namespaces, policies=sc.policies, seed=sc.seed
        )
        objects = seed(self.api.store, self.cluster)
        self.result.objects = objects
        self.result.seed_seconds = time.monotonic() - t0
        self.mark("seeded", objects=objects)
        self.log(f"emulator at {self.api.url}: {objects:,} objects seeded in {self.result.seed_seconds:.1f}s")

    async def churn_with_faults(self) -> None:
        self.phase = "churn"
        churn = asyncio.create_task(self.churn())
        faults = asyncio.create_task(run_schedule(self, self.faults_log))
        self.tasks += [churn, faults]
        await churn
        self.log(f"churn done: {self.events_written:,} events in {self.sc.duration:g}s")
        await asyncio.wait_for(faults, self.fault_grace())

    async def churn(self) -> None:
        """Write the cluster's churn into the emulator at the scenario's rate (or ramp) for its duration."""
        sc = self.sc
        assert self.cluster is not None
        store = self.api.store
        self.churn_start_ns = time.time_ns()
        start = time.monotonic()
        self.churn_start_t = start - self.t0
        self.mark("churn start")
        target = 0.0
        last = start
        per_step: list[int] = [0] * max(1, len(sc.ramp))
        step_len = sc.duration / max(1, len(sc.ramp))
        while (now := time.monotonic()) - start < sc.duration:
            elapsed = now - start
            target += sc.rate_at(elapsed) * (now - last)
            last = now
            due = int(target) - self.events_written
            if due > 0:
                c0 = time.thread_time()
                events = self.cluster.churn(due, sc.mix, count_events=True)
                self.churn_cpu += time.thread_time() - c0
                self.noop_writes += apply_timed(store, events, self.rv_times)
                self.events_written += len(events)
                per_step[min(len(per_step) - 1, int(elapsed / step_len))] += len(events)
            await asyncio.sleep(0.01)
        self.churn_end_t = time.monotonic() - self.t0
        self.churn_done = True
        seconds = time.monotonic() - start
        self.result.churn = ChurnFigures(
            events_written=self.events_written,
            seconds=seconds,
            rate_target=sc.rate,
            rate_achieved=self.events_written / max(1e-9, seconds),
            per_step_events=per_step if sc.ramp else None,
            generation_cpu_seconds=self.churn_cpu,
            noop_writes=self.noop_writes,
            mix=sc.mix,
        )
        self.mark("churn end", events=self.events_written)

    # -- sampling ------------------------------------------------------------------------------------
    async def sampler(self) -> None:
        while True:
            t_next = time.monotonic() + self.sc.sample_interval
            self.memory_guard()
            try:
                s = await self.sample()
            except Exception as exc:  # a sample must never end the run: say what failed, once per kind
                why = f"{type(exc).__name__}: {exc}"
                self.mark("sample error", error=why)
                if type(exc).__name__ not in self._sample_errors:
                    self._sample_errors.add(type(exc).__name__)
                    self.log(f"sampling failed (the series has a gap): {why}", "yellow")
            else:
                prev = self.samples[-1] if self.samples else None
                self.samples.append(s)
                self.progress.show(self.mode, s, self.progress_rows(s, prev))
            await asyncio.sleep(max(0.05, t_next - time.monotonic()))

    def memory_guard(self) -> None:
        avail, total = meminfo()
        if avail < MEMORY_GUARD * total and self.main_task is not None and not self.aborted:
            self.aborted = (
                f"memory guard: only {avail / 2**30:.1f} of {total / 2**30:.1f} GiB left "
                f"during '{self.phase}'; mode aborted"
            )
            self.mark("aborted", reason=self.aborted)
            self.log(self.aborted, "red")
            self.main_task.cancel()

    async def sample(self) -> Sample:
        busy, total = host_cpu()
        s = Sample(
            t=self.now(),
            phase=self.phase,
            api=api_totals(self.api) if self.api is not None else ApiCounters(),
            driver_cpu=round(self_cpu(), 3),
            agents_cpu=round(self.workers_cpu(), 3),
            host_busy=round(busy, 2),
            host_total=round(total, 2),
            churn_cpu=round(self.churn_cpu, 3),
            events_written=self.events_written,
            rate_target=self.sc.rate_at(max(0.0, self.now() - self.churn_start_t))
            if self.churn_start_t and not self.churn_done
            else 0.0,
        )
        self.agent_sample(s)
        return s

    # -- teardown ------------------------------------------------------------------------------------
    async def teardown(self) -> None:
        """Stop the background tasks, keep the time series, stop agents, servers and the emulator.
        Graceful after a normal run; a kill when the run is being cancelled."""
        task = asyncio.current_task()
        kill = task is not None and task.cancelling() > 0
        for t in self.tasks:
            t.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        res = self.result
        res.faults, res.samples, res.events = self.faults_log, self.samples, self.events
        res.churn_start_t, res.churn_end_t = self.churn_start_t, self.churn_end_t
        await self._step("stopping agents", self.stop_fleet(kill))
        await self._step("stopping typha", self.stop_servers(kill))
        if self.api is not None:
            await self._step("stopping the API-server emulator", self.api.stop())

    async def stop_fleet(self, kill: bool) -> None:
        if self.fleet is None or self.fleet_stopped:
            return
        self.fleet_stopped = True
        if kill:
            self.fleet.kill()
        else:
            await self.fleet.stop()

    async def _step(self, what: str, aw: Any) -> None:
        try:
            await aw
        except Exception as exc:  # teardown goes on; the failure is kept in the results and logged
            self.result.errors.append(f"{what}: {type(exc).__name__}: {exc}")
            self.log(f"{what} failed: {exc!r}", "red")
