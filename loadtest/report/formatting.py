"""How figures are written in the report's tables and summary.md ("-" for a figure not measured)."""

from __future__ import annotations

import math

from loadtest.run.results import (
    BREADCRUMB_TO_LAST_AGENT,
    PER_DELIVERY,
    WRITE_TO_LAST_AGENT,
    WRITE_TO_SAMPLED_AGENTS,
    LatencySummary,
    Results,
)

LAT_LABELS = {
    WRITE_TO_LAST_AGENT: "API write -> last agent",
    BREADCRUMB_TO_LAST_AGENT: "typha breadcrumb -> last agent",
    WRITE_TO_SAMPLED_AGENTS: "API write -> decoding agents",
    PER_DELIVERY: "breadcrumb -> each agent (every delivery)",
}


def ms(x: float | None) -> str:
    if x is None:
        return "-"
    return f"{x * 1e3:,.0f} ms" if x >= 0.0995 else f"{x * 1e3:,.1f} ms"


def lat(s: LatencySummary | None) -> str:
    """p50 / p99 / max of a latency summary."""
    if s is None or not s.count:
        return "-"
    return f"{ms(s.p50)} / {ms(s.p99)} / {ms(s.max)}"


def nbytes(n: float | None) -> str:
    if n is None:
        return "-"
    for unit, div in (("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if abs(n) >= div:
            return f"{n / div:,.1f} {unit}"
    return f"{n:,.0f} B"


def integer(n: float | None) -> str:
    return "-" if n is None else f"{n:,.0f}"


def secs(x: float | None) -> str:
    return "-" if x is None else f"{x:,.1f} s"


def pct(x: float | None) -> str:
    return "-" if x is None else f"{x:.0%}"


def percentile(values: list[float], p: float) -> float:
    """Nearest-rank percentile (0 for no values)."""
    if not values:
        return 0.0
    s = sorted(values)
    return s[min(len(s) - 1, max(0, math.ceil(len(s) * p / 100) - 1))]


def scenario_line(results: Results) -> str:
    sc = results.scenario
    churn = f"ramp {','.join(f'{r:g}' for r in sc.ramp)} ev/s" if sc.ramp else f"{sc.rate:g} ev/s"
    return (
        f"{sc.nodes:,} nodes x {sc.pods_per_node} pods, {sc.policies} policies; {sc.replicas} typha; "
        f"churn {churn} for {sc.duration:g}s; host {results.host.cpus} CPUs"
    )
