"""Figures about this machine and this process: CPU seconds, memory, what the host is."""

from __future__ import annotations

import os
import platform
import resource
from dataclasses import dataclass


def self_cpu() -> float:
    """User + system CPU seconds of this process (the load test, and the emulator when it runs here)."""
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def host_cpu() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine since boot, summed over CPUs (from /proc/stat)."""
    try:
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return 0.0, 0.0
    hz = os.sysconf("SC_CLK_TCK")
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return (sum(fields) - idle) / hz, sum(fields) / hz


def meminfo() -> tuple[int, int]:
    """(available, total) bytes of machine memory; (1, 1) when /proc/meminfo cannot be read."""
    vals: dict[str, int] = {}
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                k, _, v = line.partition(":")
                vals[k] = int(v.split()[0]) * 1024
    except (OSError, ValueError, IndexError):
        return 1, 1
    return vals.get("MemAvailable", 1), vals.get("MemTotal", 1)


@dataclass
class HostInfo:
    cpus: int = 0
    python: str = ""
    platform: str = ""
    memory_bytes: int = 0

    @classmethod
    def here(cls) -> HostInfo:
        return cls(
            cpus=os.cpu_count() or 0,
            python=platform.python_version(),
            platform=platform.platform(),
            memory_bytes=os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"),
        )
