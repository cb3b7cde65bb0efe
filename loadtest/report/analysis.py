"""Figures derived from a run's results: the ramp and its knee, fault windows, latency outside them,
and the project's targets with a verdict each."""

from __future__ import annotations

from dataclasses import dataclass

from loadtest.run.results import (
    BREADCRUMB_TO_LAST_AGENT,
    WRITE_TO_LAST_AGENT,
    LatencySummary,
    ModeResult,
    Results,
    TyphaResult,
)

from .formatting import ms, nbytes, percentile

TARGET_AGENTS = 5000
TARGET_PODS = 150_000
TARGET_P99 = 1.0
TARGET_RSS_PER_AGENT = 50 * 1024
FAULT_WINDOW_UNRECOVERED = 30.0  # seconds counted as recovery for a fault that never recovered


@dataclass
class RampStep:
    step: int
    rate: float
    start: float  # seconds after churn start
    end: float
    achieved: float | None  # events/s written
    count: int  # latency samples in the step
    p50: float
    p99: float
    max: float
    typha_cpu: float | None  # fraction of a core, summed over replicas
    max_agents_out_of_sync: int
    broken: bool = False  # p99 over the SLO, or agents out of sync
    knee: bool = False  # the first broken step


def latency_kind(run: ModeResult) -> str:
    """The latency the report leads with: write -> last agent when measured, else breadcrumb -> last agent."""
    return WRITE_TO_LAST_AGENT if run.latency_points.get(WRITE_TO_LAST_AGENT) else BREADCRUMB_TO_LAST_AGENT


def ramp_analysis(results: Results) -> list[RampStep]:
    """Per ramp step: achieved rate, latency to the last agent, typha CPU, agents out of sync; and the knee."""
    sc = results.scenario
    run = results.typha() or results.direct()
    if not sc.ramp or run is None or not run.latency_points:
        return []
    pts = run.latency_points.get(latency_kind(run), [])
    d = sc.duration / len(sc.ramp)
    c0 = run.churn_start_t
    per_step = (run.churn.per_step_events if run.churn else None) or []
    steps = []
    knee_found = False
    for i, rate in enumerate(sc.ramp):
        lo, hi = i * d, (i + 1) * d
        lats = [v for t, v in pts if lo <= t < hi]
        ss = [s for s in run.samples if lo <= s.t - c0 <= hi]
        cpu = None
        if len(ss) >= 2 and ss[0].typha:
            dt = ss[-1].t - ss[0].t
            cpu = sum(b.cpu - a.cpu for a, b in zip(ss[0].typha, ss[-1].typha)) / dt if dt > 0 else None
        out_of_sync = 0
        if isinstance(run, TyphaResult):
            out_of_sync = max((run.agents - s.agents.in_sync for s in ss if s.agents), default=0)
        step = RampStep(
            step=i,
            rate=rate,
            start=lo,
            end=hi,
            achieved=(per_step[i] / d) if i < len(per_step) else None,
            count=len(lats),
            p50=percentile(lats, 50),
            p99=percentile(lats, 99),
            max=max(lats, default=0.0),
            typha_cpu=cpu,
            max_agents_out_of_sync=out_of_sync,
        )
        step.broken = bool(step.p99 > sc.slo or out_of_sync)
        step.knee = step.broken and not knee_found
        knee_found = knee_found or step.broken
        steps.append(step)
    return steps


def fault_windows(run: ModeResult, margin: float = 1.0) -> list[tuple[float, float]]:
    """(start, end) seconds after churn start during which a fault and its recovery were under way."""
    out = []
    for f in run.faults:
        if f.skipped:
            continue
        rec = f.recovered_seconds if f.recovered_seconds is not None else FAULT_WINDOW_UNRECOVERED
        out.append((f.t_churn, f.t_churn + rec + margin))
    return out


def steady_summary(run: ModeResult, kind: str) -> LatencySummary | None:
    """Latency of the writes made outside every fault's recovery window (None without faults)."""
    windows = fault_windows(run)
    if not windows:
        return None
    vals = [v for t, v in run.latency_points.get(kind, []) if not any(a <= t <= b for a, b in windows)]
    if not vals:
        return None
    return LatencySummary(
        count=len(vals),
        mean=sum(vals) / len(vals),
        p50=percentile(vals, 50),
        p90=percentile(vals, 90),
        p99=percentile(vals, 99),
        max=max(vals),
    )


def targets(results: Results) -> list[tuple[str, str, str]]:
    """(target, what this run reached, verdict) for the typha mode."""
    sc = results.scenario
    t, d = results.typha(), results.direct()
    if t is None:
        return []
    out = []
    v = t.verification
    pods = sc.nodes * sc.pods_per_node
    scale = t.agents >= TARGET_AGENTS and pods >= TARGET_PODS
    out.append(
        (
            f"{TARGET_AGENTS:,} agents, {TARGET_PODS:,} pods, every agent in sync",
            (
                f"{t.agents:,} agents, {pods:,} pods: {v.agents_at_final_seq:,} at final seq, "
                f"{v.sampled_matching}/{v.sampled_agents} sampled exact"
            ),
            ("met" if scale else "passed at this scale") if v.passed else "NOT met",
        )
    )
    api = t.api_churn
    wmax, wmin = (api.open_watches_max, api.open_watches_min) if api else (0, 0)
    per_replica = wmax / t.replicas if t.replicas else 0
    direct_watches = (
        f"{d.agents:,} x {d.resources_watched} = {d.api_churn.open_watches_max:,} measured"
        if d is not None and d.api_churn
        else ""
    )
    if wmax and wmax == wmin:
        verdict = "met"
    elif wmax and t.faults:
        verdict = "met (dips are faults)"
    else:
        verdict = "NOT met"
    out.append(
        (
            "API watches constant (independent of agents)",
            f"{wmin}..{wmax} open during churn ({per_replica:g} per replica) for {t.agents:,} agents"
            + (f"; direct: {direct_watches}" if direct_watches else ""),
            verdict,
        )
    )
    lat = t.latency.get(WRITE_TO_LAST_AGENT) or LatencySummary()
    steady = steady_summary(t, WRITE_TO_LAST_AGENT)
    step = next((s for s in ramp_analysis(results) if s.rate >= 100), None)
    if step is not None:
        out.append(
            (
                f"p99 update latency to last agent < {TARGET_P99:g} s at 100 ev/s",
                f"ramp step {step.rate:g} ev/s ({step.achieved or 0:.0f} achieved): p99 {ms(step.p99)}",
                "met" if step.count and step.p99 < TARGET_P99 else "NOT met",
            )
        )
    at_rate = not sc.ramp and sc.rate >= 100
    if step is not None:
        verdict = "(see the ramp)"
    elif lat.count and lat.p99 < TARGET_P99 and at_rate:
        verdict = "met"
    elif steady and steady.p99 < TARGET_P99 and at_rate:
        verdict = "met outside faults"
    else:
        verdict = "under target" if lat.count and lat.p99 < TARGET_P99 else "NOT met"
    out.append(
        (
            f"p99 update latency to last agent < {TARGET_P99:g} s at 100 ev/s" + (" (whole run)" if step else ""),
            f"p99 {ms(lat.p99 if lat.count else None)} at {t.churn.rate_achieved if t.churn else 0:.0f} ev/s"
            + (f" including faults; {ms(steady.p99)} outside fault recovery" if steady else ""),
            verdict,
        )
    )
    rpa = t.typha.rss_per_agent_bytes if t.typha else None
    out.append(
        (
            f"typha RSS per agent < {TARGET_RSS_PER_AGENT // 1024} KB",
            f"{nbytes(rpa)} per agent" if rpa is not None else "-",
            "met" if rpa is not None and rpa < TARGET_RSS_PER_AGENT else "NOT met",
        )
    )
    return out
