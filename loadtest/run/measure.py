"""Measurements of a run: emulator counters, CPU over the churn window, latencies from arrival times.

Pure functions of what the fleets and the emulator report (no waiting, no processes), so each mode
composes them and the tests can call them directly. Latencies are wall-clock differences on one host
(every process reads the same clock):
- ``write_to_sampled_agents``: API write (the time of each resourceVersion) to its arrival at the
  last decoding agent (exact: revisions are visible only to decoding agents);
- ``breadcrumb_to_last_agent``: a breadcrumb's creation in typha to its arrival at the last agent;
- ``write_to_last_agent``: API write to the arrival, at the last of all agents, of the breadcrumb
  that carried it (decoding agents map revisions to breadcrumbs; every agent reports arrivals);
  in direct mode, API write to the last direct agent that received the event.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from loadtest.support.histogram import LogHistogram
from loadtest.support.host import host_cpu, self_cpu

from .results import (
    BREADCRUMB_TO_LAST_AGENT,
    WRITE_TO_LAST_AGENT,
    WRITE_TO_SAMPLED_AGENTS,
    ApiChurn,
    ApiCounters,
    EmulatorCpu,
    FaultRecord,
    HostCpu,
    LatencySummary,
    Sample,
    WriteCoverage,
)

MAX_POINTS = 50_000  # latency points kept per kind in results.json (evenly thinned beyond)


def api_totals(api: Any) -> ApiCounters:
    """The emulator's counters, summed over its resources."""
    res = list(api.stats.resources.values())
    out = ApiCounters(requests=api.stats.requests_total)
    for name in ApiCounters.__dataclass_fields__:
        if name != "requests":
            setattr(out, name, sum(getattr(r, name) for r in res))
    return out


def open_watches(api: Any) -> int:
    return sum(r.open_watches for r in api.stats.resources.values())


def list_bytes_estimate(store: Any, key: str) -> int:
    """Bytes of a full list of `key` in the emulator (average of a 200-object page x count)."""
    n = store.count(key)
    if not n:
        return 0
    items = store.list(key, limit=200).items
    return int(sum(len(o.raw) for o in items) / max(1, len(items)) * n)


def counter_increase(values: Iterable[float]) -> float:
    """Total increase of a counter sampled over time, across resets (a restarted replica starts at 0)."""
    total = 0.0
    prev: float | None = None
    for v in values:
        if prev is not None:
            total += v - prev if v >= prev else v
        prev = v
    return total


def thin_points(pairs: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """(t, latency) pairs sorted by t, evenly thinned to at most MAX_POINTS, rounded for the file."""
    pairs.sort()
    if len(pairs) > MAX_POINTS:
        stride = len(pairs) / MAX_POINTS
        pairs = [pairs[int(i * stride)] for i in range(MAX_POINTS)]
    return [(round(t, 4), round(v, 5)) for t, v in pairs]


def summarize(values: Iterable[float]) -> LatencySummary:
    h = LogHistogram()
    h.extend(values)
    return summary_of(h)


def summary_of(h: LogHistogram) -> LatencySummary:
    return LatencySummary(**h.summary())  # type: ignore[arg-type]


@dataclass
class ChurnWindow:
    """CPU and emulator counters from the start of churn to the end of its drain."""

    api: Any
    workers_cpu: Any  # () -> CPU seconds of the agent workers
    api0: ApiCounters = field(init=False)
    host0: tuple[float, float] = field(init=False)
    workers0: float = field(init=False)
    self0: float = field(init=False)

    def __post_init__(self) -> None:
        self.api0 = api_totals(self.api)
        self.host0 = host_cpu()
        self.workers0 = self.workers_cpu()
        self.self0 = self_cpu()

    def close(
        self, span: float, churn_cpu: float, samples: list[Sample], churn_start_t: float, churn_end_t: float
    ) -> tuple[ApiChurn, EmulatorCpu, HostCpu]:
        """The window's figures; `span` is churn start to drained, `churn_cpu` the generator's share."""
        host1, workers1, self1 = host_cpu(), self.workers_cpu(), self_cpu()
        end = api_totals(self.api)
        during = [s.api.open_watches for s in samples if churn_start_t <= s.t <= churn_end_t]
        api = ApiChurn(**vars(end.minus(self.api0)))
        api.open_watches_max = max(during, default=end.open_watches)
        api.open_watches_min = min(during, default=end.open_watches)
        span = max(1e-9, span)
        emulator = EmulatorCpu(span, self1 - self.self0 - churn_cpu, churn_cpu)
        host = HostCpu(
            busy_fraction=(host1[0] - self.host0[0]) / max(1e-9, host1[1] - self.host0[1]),
            cpus=os.cpu_count() or 0,
            agent_workers_cpu_fraction=(workers1 - self.workers0) / span,
        )
        return api, emulator, host


def restart_cuts(faults: list[FaultRecord], churn_start_ns: int) -> list[tuple[int, int]]:
    """(injected, stopped) wall times in ns of every replica restart."""
    return [
        (churn_start_ns + int(f.t_churn * 1e9), churn_start_ns + int((f.t_churn + f.stopped_after) * 1e9))
        for f in faults
        if f.stopped_after is not None
    ]


@dataclass
class TyphaLatencies:
    summaries: dict[str, LatencySummary]
    points: dict[str, list[tuple[float, float]]]
    writes: WriteCoverage


def typha_latencies(
    churn_start_ns: int,
    rv_times: Mapping[int, int],
    seq_last_arrival: Mapping[int, int],
    seq_created: Mapping[int, int],
    rv_last_arrival: Mapping[int, int],
    rv_keys: Mapping[int, set[int]],
    cuts: list[tuple[int, int]],
) -> TyphaLatencies:
    """Latencies of a typha-mode run, from the arrival maps its fleet merged (see the module note).

    A restarted replica relists and re-sends everything. A write made before the restart whose first
    delivery came in a breadcrumb created after the old process had stopped was not delivered live:
    it is either a change that typha dropped as a duplicate at the time (and the relist sent with its
    new revision), or one the restart interrupted. Neither measures latency: counted apart.
    """
    base = churn_start_ns
    points: dict[str, list[tuple[float, float]]] = {
        BREADCRUMB_TO_LAST_AGENT: [],
        WRITE_TO_SAMPLED_AGENTS: [],
        WRITE_TO_LAST_AGENT: [],
    }
    for key, arrival in seq_last_arrival.items():
        created = seq_created.get(key)
        if created is not None and created >= base:
            points[BREADCRUMB_TO_LAST_AGENT].append(((created - base) / 1e9, max(0, arrival - created) / 1e9))
    covered = redelivered = 0
    for rv, written in rv_times.items():
        keys = rv_keys.get(rv)
        if keys and any(written < injected and min(keys) > stopped for injected, stopped in cuts):
            redelivered += 1
            continue
        got = rv_last_arrival.get(rv)
        if got is not None:
            points[WRITE_TO_SAMPLED_AGENTS].append(((written - base) / 1e9, max(0, got - written) / 1e9))
        if keys:
            arrivals = [seq_last_arrival[k] for k in keys if k in seq_last_arrival]
            if arrivals:
                covered += 1
                points[WRITE_TO_LAST_AGENT].append(((written - base) / 1e9, max(0, max(arrivals) - written) / 1e9))
    return TyphaLatencies(
        summaries={k: summarize(v for _, v in p) for k, p in points.items()},
        points={k: thin_points(p) for k, p in points.items()},
        writes=WriteCoverage(
            written=len(rv_times),
            reached_agents=covered,
            redelivered_after_restart=redelivered,
            not_fanned_out=len(rv_times) - covered - redelivered,
        ),
    )


def direct_latency_points(
    churn_start_ns: int, rv_times: Mapping[int, int], rv_last_arrival: Mapping[int, int]
) -> list[tuple[float, float]]:
    """(t since churn of the write, API write -> last direct agent) for every write seen."""
    return [
        ((w - churn_start_ns) / 1e9, max(0, rv_last_arrival[rv] - w) / 1e9)
        for rv, w in rv_times.items()
        if rv in rv_last_arrival
    ]
