"""Child processes a load test drives: a real `typha`, with its health, metrics, CPU and memory."""

from __future__ import annotations

import asyncio
import os
import socket
import sys
import time

import aiohttp

from .typha_api import TyphaMetrics, TyphaStatus


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process, from /proc (works for children we did not fork ourselves)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def process_rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def free_ports(n: int) -> list[int]:
    """``n`` distinct loopback ports that are free now.

    The sockets are held open together until all are bound: one bound and closed at a time, the
    kernel may hand the same port out twice (a typha given one port for serving and health could
    not start).
    """
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


class TyphaProcess:
    """A `typha` subprocess on loopback ports, with helpers to read its health and metrics.

    `env` adds environment variables (TLS settings), `stderr_path` sends its log to a file, and
    `nofile` sets its open-files limit (0: inherited)."""

    def __init__(
        self, args: list[str], env: dict[str, str] | None = None, stderr_path: str | None = None, nofile: int = 0
    ) -> None:
        self.env = {**os.environ, **env} if env else None
        self.stderr_path = stderr_path
        self.nofile = nofile
        self.port, self.health_port, self.metrics_port = free_ports(3)
        self.args = [
            sys.executable,
            "-m",
            "typha",
            "--listen-host",
            "127.0.0.1",
            "--health-host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--health-port",
            str(self.health_port),
            "--metrics-port",
            str(self.metrics_port),
            "--shutdown-timeout",
            "2",
            *args,
        ]
        self.proc: asyncio.subprocess.Process | None = None
        self.session: aiohttp.ClientSession | None = None

    async def start(self, ready_timeout: float = 120.0) -> None:
        args = self.args if not self.nofile else ["prlimit", f"--nofile={self.nofile}:{self.nofile}", *self.args]
        stderr = open(self.stderr_path, "ab") if self.stderr_path else None  # noqa: SIM115 - the child keeps it
        try:
            self.proc = await asyncio.create_subprocess_exec(*args, env=self.env, stderr=stderr)
        finally:
            if stderr is not None:
                stderr.close()
        self.session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10))
        deadline = time.monotonic() + ready_timeout
        while time.monotonic() < deadline:
            if self.proc.returncode is not None:
                raise RuntimeError(f"typha exited with {self.proc.returncode}")
            try:
                async with self.session.get(f"http://127.0.0.1:{self.health_port}/readiness") as r:
                    if r.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.2)
        raise RuntimeError("typha did not become ready in time")

    async def status(self, digest: bool = False) -> TyphaStatus:
        assert self.session is not None
        q = "?digest=1" if digest else ""
        async with self.session.get(f"http://127.0.0.1:{self.health_port}/status{q}") as r:
            r.raise_for_status()
            return TyphaStatus.decode(await r.read())

    async def metrics(self) -> TyphaMetrics:
        assert self.session is not None
        async with self.session.get(f"http://127.0.0.1:{self.metrics_port}/metrics") as r:
            r.raise_for_status()
            return TyphaMetrics.parse(await r.text())

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def cpu_seconds(self) -> float:
        return process_cpu_seconds(self.pid)

    def rss_bytes(self) -> int:
        return process_rss_bytes(self.pid)

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.returncode is None

    async def stop(self, kill: bool = False) -> None:
        """SIGTERM (typha drains its clients, at most --shutdown-timeout) or, with `kill`, SIGKILL."""
        if self.session is not None:
            await self.session.close()
        if self.proc is not None and self.proc.returncode is None:
            if kill:
                self.proc.kill()
            else:
                self.proc.terminate()
            try:
                await asyncio.wait_for(self.proc.wait(), 15)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()
