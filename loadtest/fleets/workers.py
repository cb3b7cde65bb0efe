"""Worker processes that each run a share of the simulated agents and report over a pipe.

One parent-side class serves both kinds of fleet (typha agents and direct API watchers): it spawns
the workers (spawn, not fork: forking a process that runs an event loop copies the loop's state into
the child), drains their reports without blocking, notices dead workers, and stops them, waiting for
each one's final report. Subclasses say what a worker runs and how a report is merged.

Workers ignore SIGINT: a Ctrl-C in a terminal reaches the whole process group, and the parent, not
each worker, decides how they end (a final report, or a kill when the run is interrupted), so an
interrupted run prints one line instead of a traceback per worker.
"""

from __future__ import annotations

import asyncio
import multiprocessing as mp
import signal
import time
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any, Generic, TypeVar

from loadtest.support.processes import process_cpu_seconds

R = TypeVar("R")


def _run_worker(target: Callable[..., None], *args: Any) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    target(*args)


class WorkerFleet(Generic[R]):
    name = "workers"

    def __init__(self, processes: int, agents: int) -> None:
        self.processes = max(1, min(processes, agents))
        self.agents = agents
        self._procs: list[mp.process.BaseProcess] = []
        self._pipes: list[Connection] = []
        self.reports: dict[int, R] = {}

    # -- what subclasses provide ---------------------------------------------------------------------
    def worker_target(self) -> Callable[..., None]:
        raise NotImplementedError

    def worker_args(self, worker: int, agent_ids: list[int]) -> tuple[Any, ...]:
        raise NotImplementedError

    def absorb(self, report: R) -> None:
        self.reports[report.worker] = report  # type: ignore[attr-defined]

    # -- lifecycle -----------------------------------------------------------------------------------
    def start(self) -> None:
        ctx = mp.get_context("spawn")
        for w in range(self.processes):
            ids = list(range(w, self.agents, self.processes))
            parent, child = ctx.Pipe()
            proc = ctx.Process(
                target=_run_worker,
                args=(self.worker_target(), *self.worker_args(w, ids), child),
                name=f"{self.name}-{w}",
                daemon=True,
            )
            proc.start()
            child.close()
            self._procs.append(proc)
            self._pipes.append(parent)

    @property
    def started(self) -> int:
        return len(self._procs)

    def dead_workers(self) -> list[str]:
        return [f"{p.name} exited with {p.exitcode}" for p in self._procs if p.exitcode is not None]

    def cpu_seconds(self) -> float:
        """CPU seconds used so far by the live workers."""
        total = 0.0
        for p in self._procs:
            if p.pid is None or p.exitcode is not None:
                continue
            try:
                total += process_cpu_seconds(p.pid)
            except (OSError, ValueError, IndexError):
                pass  # exited between the check and the read
        return total

    def poll(self) -> None:
        """Absorb every report waiting in the pipes (non-blocking)."""
        for pipe in self._pipes:
            try:
                while pipe.poll():
                    self.absorb(pipe.recv())
            except (EOFError, OSError):
                continue

    def total(self, attr: str) -> int:
        return sum(getattr(r, attr) for r in self.reports.values())

    async def wait(
        self,
        cond: Callable[[Any], bool],
        timeout: float,
        tick: Callable[[], None] | None = None,
        progress: Callable[[Any], int] | None = None,
        stall: float = 60.0,
        cap: float | None = None,
    ) -> bool:
        """Poll until every worker has reported and `cond(self)` holds; raise if a worker died.

        With `progress` (a count that grows while the workers get somewhere, e.g. bytes received), the
        wait goes on past `timeout` as long as it grew within the last `stall` seconds, up to `cap`:
        on a busy machine slow progress is not a failure, no progress is."""
        start = time.monotonic()
        deadline = start + timeout
        hard = start + max(timeout, cap if cap is not None else timeout)
        last, moved = -1, start
        while time.monotonic() < deadline or (
            progress is not None and time.monotonic() < hard and time.monotonic() - moved < stall
        ):
            self.poll()
            if progress is not None and (now := progress(self)) != last:
                last, moved = now, time.monotonic()
            if tick is not None:
                tick()
            if dead := self.dead_workers():
                raise RuntimeError(f"{self.name} workers died: " + "; ".join(dead))
            if len(self.reports) == len(self._procs) and cond(self):
                return True
            await asyncio.sleep(0.1)
        return False

    async def stop(self, timeout: float = 30.0) -> None:
        """Ask every worker to stop, collect its final report, and reap it."""
        for pipe in self._pipes:
            try:
                pipe.send("stop")
            except OSError:
                pass
        finals: set[int] = set()
        deadline = time.monotonic() + timeout
        while len(finals) < len(self._pipes) and time.monotonic() < deadline:
            for i, pipe in enumerate(self._pipes):
                try:
                    while pipe.poll():
                        rep = pipe.recv()
                        self.absorb(rep)
                        if rep.final:
                            finals.add(i)
                except (EOFError, OSError):
                    finals.add(i)
            await asyncio.sleep(0.05)
        for proc in self._procs:
            proc.join(timeout=max(0.1, deadline - time.monotonic()))
            if proc.is_alive():
                proc.kill()
                proc.join(1.0)

    def kill(self) -> None:
        """End every worker now, without final reports (an interrupted run)."""
        for proc in self._procs:
            if proc.is_alive():
                proc.kill()
        for proc in self._procs:
            proc.join(1.0)
