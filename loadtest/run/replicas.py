"""One typha replica of a run: its process, what survives its restarts, and one observation of it."""

from __future__ import annotations

import asyncio
import time

import aiohttp
import msgspec

from loadtest.support.processes import TyphaProcess
from loadtest.support.typha_api import FELIX

from .results import ReplicaSample

# What a replica may answer while busy, restarting or gone; anything else is a bug and propagates.
OBSERVE_ERRORS = (OSError, TimeoutError, aiohttp.ClientError, msgspec.ValidationError, msgspec.DecodeError)


class Replica:
    """A TyphaProcess plus what survives its restarts (CPU of earlier incarnations, restart count)."""

    def __init__(self, index: int, args: list[str], ready_timeout: float) -> None:
        self.index = index
        self.proc = TyphaProcess(args)
        self.ready_timeout = ready_timeout
        self.cpu_before = 0.0  # CPU seconds of earlier incarnations
        self.restarts = 0
        self.up = False
        self.rss_baseline = 0

    @property
    def port(self) -> int:
        return self.proc.port

    async def start(self) -> None:
        await self.proc.start(ready_timeout=self.ready_timeout)
        self.up = True

    def cpu(self) -> float:
        """CPU seconds of every incarnation (a starting replica's listing counts as it happens)."""
        if not self.proc.running:
            return self.cpu_before
        try:
            return self.cpu_before + self.proc.cpu_seconds()
        except (OSError, ValueError, IndexError):  # exited between the check and the read
            return self.cpu_before

    def rss(self) -> int:
        if not self.proc.running:
            return 0
        try:
            return self.proc.rss_bytes()
        except (OSError, ValueError, IndexError):
            return 0

    async def restart(self, kill: bool) -> tuple[float, float]:
        """Stop (SIGTERM, graceful drain; or SIGKILL) and start again on the same ports.
        Returns (seconds until stopped, seconds until ready again)."""
        t0 = time.monotonic()
        self.cpu_before = self.cpu()
        self.up = False
        await self.proc.stop(kill=kill)
        t_down = time.monotonic()
        self.restarts += 1
        await self.start()
        return t_down - t0, time.monotonic() - t0

    async def stop(self, kill: bool = False) -> None:
        if self.proc.proc is not None:
            self.cpu_before = self.cpu()
        self.up = False
        await self.proc.stop(kill=kill)

    async def observe(self, timeout: float = 3.0) -> ReplicaSample:
        out = ReplicaSample(self.index, up=self.up, cpu=round(self.cpu(), 3), rss=self.rss(), restarts=self.restarts)
        if not self.up:
            return out
        try:
            # Sequential under one deadline: two small local requests. (wait_for around a gather can leave
            # the gather's CancelledError unretrieved when the run is interrupted mid-sample.)
            async with asyncio.timeout(timeout):
                st = await self.proc.status()
                m = await self.proc.metrics()
        except OBSERVE_ERRORS as exc:  # busy, restarting or gone: the sample records the gap
            out.error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            return out
        felix = st.syncer(FELIX)
        out.connections = st.connections
        out.seq, out.keys, out.status = felix.seq, felix.keys, felix.status
        out.counters = m.counters(FELIX)
        return out
