"""The report's tables: one row per measure and one column per mode (plus a linear extrapolation of
direct mode to typha's agent count), the faults, the ramp and the targets. The rows are plain
strings so the terminal tables and summary.md show the same thing."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from rich.table import Table

from loadtest.run.results import (
    BREADCRUMB_TO_LAST_AGENT,
    PER_DELIVERY,
    WRITE_TO_LAST_AGENT,
    WRITE_TO_SAMPLED_AGENTS,
    BucketQuantiles,
    DirectResult,
    FaultRecord,
    ModeResult,
    Results,
    RunResult,
    TyphaFigures,
    TyphaResult,
)

from .analysis import ramp_analysis, steady_summary, targets
from .formatting import integer, lat, ms, nbytes, pct, scenario_line, secs

EMPTY = ("-", "", "- / - / -")  # a row whose every cell is one of these is left out


@dataclass(frozen=True)
class Row:
    label: str
    cell: Callable[[RunResult], str]
    # How the direct column extrapolates linearly to k times the agents (None: not extrapolated).
    scaled: Callable[[DirectResult, float], str] | None = None


def measure(
    label: str, value: Callable[[RunResult], float | None], fmt: Callable[[float | None], str], linear: bool = False
) -> Row:
    """A row of one figure per mode; `linear`: the direct column also extrapolates to typha's agents."""

    def scaled(d: DirectResult, k: float) -> str:
        v = value(d)
        return fmt(None if v is None else v * k)  # not measured stays "-", not "0"

    return Row(label, lambda r: fmt(value(r)), scaled if linear else None)


def _typha(r: RunResult) -> TyphaFigures | None:
    return r.typha if isinstance(r, TyphaResult) else None


def _cpu_fraction(r: ModeResult) -> float | None:
    return r.emulator_cpu.fraction if r.emulator_cpu else None


def _verdict(run: RunResult) -> str:
    if run.error:
        return f"ERROR: {run.error}"
    if isinstance(run, TyphaResult):
        v = run.verification
        s = (
            f"{v.agents_at_final_seq:,}/{v.agents:,} at final seq; sampled {v.sampled_matching}/{v.sampled_agents} "
            f"exact (missing {v.missing}, stale {v.stale}, extra {v.extra})"
        )
    else:
        w = run.verification
        s = f"{w.agents_listed:,}/{w.agents:,} listed, {w.watches_open_end:,}/{w.watches_wanted:,} watches open"
    return ("PASS: " if run.verification.passed else "FAIL: ") + s


def _machine_cpu(r: RunResult) -> str:
    h = r.host_cpu_churn
    if h is None:
        return "-"
    return f"{h.busy_fraction:.0%} of {h.cpus} CPUs; agent workers {h.agent_workers_cpu_fraction:.0%} of a core"


def _typha_rss(r: RunResult) -> str:
    t = _typha(r)
    if t is None:
        return "-"
    return " + ".join(nbytes(x) for x in t.rss_baseline) + " -> " + " + ".join(nbytes(x) for x in t.rss_after_sync)


def _write_latency(r: RunResult) -> str:
    t = _typha(r)
    return _bucket_quantiles(t.write_latency if t is not None else None)


def _fanout_latency(r: RunResult) -> str:
    t = _typha(r)
    return _bucket_quantiles(t.fanout_latency if t is not None else None)


def _bucket_quantiles(q: BucketQuantiles | None) -> str:
    if q is None or q.p50 is None or q.p99 is None:
        return "-"
    return f"<= {ms(q.p50)} / <= {ms(q.p99)}"


def _writes(r: RunResult) -> str:
    if not isinstance(r, TyphaResult) or r.writes is None:
        return "-"
    w = r.writes
    return f"{integer(w.reached_agents)} / {integer(w.not_fanned_out)} / {integer(w.redelivered_after_restart)}"


def _agent_bytes(r: RunResult) -> str:
    if r.wire is None:
        return "-"
    if r.wire.agents_bytes_churn is None:
        return nbytes(r.wire.agents_bytes_total)
    return f"{nbytes(r.wire.agents_bytes_total)} / {nbytes(r.wire.agents_bytes_churn)}"


ROWS: list[Row] = [
    measure("agents", lambda r: r.agents, integer, linear=True),
    Row("objects in the API server", lambda r: integer(r.objects)),
    Row("all agents synced in", lambda r: secs(r.snapshot.all_agents_seconds if r.snapshot else None)),
    measure(
        "API watches open (churn, max)", lambda r: r.api_churn.open_watches_max if r.api_churn else None, integer, True
    ),
    measure(
        "API watches opened (startup)", lambda r: r.api_startup.watches_total if r.api_startup else None, integer, True
    ),
    measure(
        "API list bytes (startup)", lambda r: r.api_startup.list_bytes_sent if r.api_startup else None, nbytes, True
    ),
    measure("API watch events sent (churn)", lambda r: r.api_churn.events_sent if r.api_churn else None, integer, True),
    measure("API bytes sent (churn)", lambda r: r.wire.api_bytes_churn if r.wire else None, nbytes, True),
    Row(
        "emulator CPU during churn",
        lambda r: pct(_cpu_fraction(r)) + " of a core" if _cpu_fraction(r) is not None else "-",
    ),
    Row(
        "churn written",
        lambda r: f"{integer(r.churn.events_written)} ev ({r.churn.rate_achieved:,.0f}/s)" if r.churn else "-",
    ),
    Row("API write -> last agent p50/p99/max", lambda r: lat(r.latency.get(WRITE_TO_LAST_AGENT))),
    Row("  same, writes outside fault recovery", lambda r: lat(steady_summary(r, WRITE_TO_LAST_AGENT))),
    Row("breadcrumb -> last agent p50/p99/max", lambda r: lat(r.latency.get(BREADCRUMB_TO_LAST_AGENT))),
    Row("  typha's own view: breadcrumb -> last write p50/p99", _fanout_latency),
    Row("API write -> decoding agents p50/p99/max", lambda r: lat(r.latency.get(WRITE_TO_SAMPLED_AGENTS))),
    Row("every delivery p50/p99/max", lambda r: lat(r.latency.get(PER_DELIVERY))),
    Row("typha socket-write latency p50/p99 (own metric)", _write_latency),
    Row("machine CPU busy during churn", _machine_cpu),
    Row(
        "typha CPU during churn",
        lambda r: ", ".join(f"{c:.0%}" for c in t.cpu_fraction_churn) + " of a core" if (t := _typha(r)) else "-",
    ),
    Row("typha RSS before agents -> synced", _typha_rss),
    Row("typha RSS per connected agent", lambda r: nbytes(t.rss_per_agent_bytes) if (t := _typha(r)) else "-"),
    Row("dedup ratio (updates dropped)", lambda r: pct(t.dedup_ratio) if (t := _typha(r)) else "-"),
    Row("writes fanned out / not (deduped) / re-sent after restart", _writes),
    Row("bytes to agents (total / churn)", _agent_bytes),
    Row(
        "reconnect time p50/p99/max",
        lambda r: lat(r.reconnect) if isinstance(r, TyphaResult) else "-",
    ),
    Row("verification", _verdict),
]


def comparison_rows(results: Results) -> tuple[list[str], list[tuple[str, list[str]]]]:
    """Column names and rows of the main table (one column per mode)."""
    # typha, typha-tls (`--tls both`: the same scenario over mutual TLS), then direct.
    runs = sorted(results.runs.values(), key=lambda r: r.mode == "direct")
    cols = [r.mode for r in runs]
    t, d = results.typha(), results.direct()
    k = t.agents / d.agents if t is not None and d is not None and t.agents and d.agents else 1.0
    extrapolate = d is not None and abs(k - 1) > 1e-9
    if extrapolate:
        cols.append(f"direct x{k:g} (linear)")
    rows = []
    for row in ROWS:
        vals = [row.cell(r) for r in runs]
        if extrapolate:
            assert d is not None
            vals.append(row.scaled(d, k) if row.scaled else "")
        if any(v not in EMPTY for v in vals):
            rows.append((row.label, vals))
    return cols, rows


def fault_label(f: FaultRecord) -> str:
    return f.kind + (f" {f.replica}" if f.replica is not None else (f":{f.arg}" if f.arg else ""))


def fault_detail(f: FaultRecord) -> str:
    if f.error:
        return f"error: {f.error}"
    if f.skipped:
        return f"skipped: {f.skipped}"
    bits = []
    if f.ready_after is not None:
        bits.append(f"replica ready again after {f.ready_after:.1f}s")
    if f.agents_disconnected is not None:
        bits.append(f"{f.agents_disconnected:,} agent disconnects")
    if f.agents_reconciled is not None and f.agents_resnapshotted is not None:
        bits.append(f"{f.agents_reconciled:,} reconciled, {f.agents_resnapshotted:,} full snapshots")
    if f.bytes_to_agents is not None:
        bits.append(f"{nbytes(f.bytes_to_agents)} to agents")
    if f.watches_cut is not None:
        bits.append(f"{f.watches_cut} watches cut")
    if f.relists_410:
        bits.append(f"{f.relists_410} 410s")
    if f.list_requests:
        bits.append(f"{f.list_requests} list requests ({nbytes(f.list_bytes)})")
    if f.note:
        bits.append(f.note)
    return ", ".join(bits)


def all_faults(results: Results) -> list[tuple[str, FaultRecord]]:
    return [(m, f) for m, r in results.runs.items() for f in r.faults]


def tables(results: Results) -> list[Table]:
    """The terminal tables: comparison, faults, ramp, targets (each only when it has rows)."""
    cols, rows = comparison_rows(results)
    t = Table(
        title=f"loadtest run: {'PASS' if results.passed else 'FAIL'}",
        caption=scenario_line(results),
        title_justify="left",
    )
    t.add_column("measure")
    for c in cols:
        t.add_column(c, justify="right")
    for label, vals in rows:
        t.add_row(label, *vals)
    out = [t]
    faults = all_faults(results)
    if faults:
        ft = Table(title="faults", title_justify="left")
        for c in ("mode", "at", "fault", "recovered after", "detail"):
            ft.add_column(c)
        for m, f in faults:
            ft.add_row(m, f"{f.at:g}s", fault_label(f), secs(f.recovered_seconds), fault_detail(f))
        out.append(ft)
    steps = ramp_analysis(results)
    if steps:
        rt = Table(title=f"ramp (SLO: p99 to last agent <= {results.scenario.slo:g} s)", title_justify="left")
        for c in ("rate", "achieved", "p50", "p99", "max", "typha CPU", "out of sync", ""):
            rt.add_column(c, justify="right")
        for s in steps:
            rt.add_row(
                f"{s.rate:g}/s",
                f"{s.achieved or 0:,.0f}/s",
                ms(s.p50),
                ms(s.p99),
                ms(s.max),
                pct(s.typha_cpu),
                str(s.max_agents_out_of_sync),
                "KNEE" if s.knee else ("over" if s.broken else "ok"),
            )
        out.append(rt)
    tg = targets(results)
    if tg:
        tt = Table(title=f"targets ({results.host.cpus}-core machine)", title_justify="left")
        for c in ("target", "reached", "verdict"):
            tt.add_column(c)
        for row in tg:
            tt.add_row(*row)
        out.append(tt)
    return out
