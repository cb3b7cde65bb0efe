"""Render a `loadtest run` directory: terminal tables, PNG plots and `summary.md` from `results.json`.

`loadtest report DIR` calls `render(DIR)`; `loadtest run` calls it at the end of a run. Everything is
derived from `results.json`, so a saved run can be re-rendered (or the renderer improved) later.

results.json (version 1), in short:
- ``scenario``: the options (`scenario.Scenario.to_dict()`), ``command``, ``host``, ``passed``;
- ``runs.typha`` / ``runs.direct``: per mode ``snapshot`` (time for all agents to sync), ``churn``,
  ``latency`` (summaries in seconds: count, mean, p50, p90, p99, max) and ``latency_points`` ([t since
  churn start of the write or breadcrumb, latency] pairs), ``api_startup`` / ``api_churn`` (emulator
  counters), ``emulator_cpu``, ``wire``, ``faults`` (with recovery times), ``verification``,
  ``samples`` (the time series: t since the mode started, emulator counters, per-replica typha
  status/metrics/CPU/RSS, agent counts) and ``events`` (timeline marks); typha mode adds ``typha``
  (CPU, RSS, RSS per agent, dedup ratio), ``reconnect`` and ``histograms``.
"""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from .histogram import LogHistogram

PLOTS = ("latency_cdf.png", "latency_over_time.png", "load_over_time.png", "typha_vs_direct.png")
TARGET_AGENTS = 5000
TARGET_PODS = 150_000
TARGET_P99 = 1.0
TARGET_RSS_PER_AGENT = 50 * 1024

_LAT_LABELS = {
    "write_to_last_agent": "API write -> last agent",
    "breadcrumb_to_last_agent": "typha breadcrumb -> last agent",
    "write_to_sampled_agents": "API write -> decoding agents",
    "per_delivery": "breadcrumb -> each agent (every delivery)",
}


# -- formatting ------------------------------------------------------------------------------------------
def _ms(x: float | None) -> str:
    if x is None:
        return "-"
    return f"{x * 1e3:,.0f} ms" if x >= 0.0995 else f"{x * 1e3:,.1f} ms"


def _lat(s: dict[str, Any] | None) -> str:
    if not s or not s.get("count"):
        return "-"
    return f"{_ms(s['p50'])} / {_ms(s['p99'])} / {_ms(s['max'])}"


def _bytes(n: float | None) -> str:
    if n is None:
        return "-"
    for unit, div in (("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if abs(n) >= div:
            return f"{n / div:,.1f} {unit}"
    return f"{n:,.0f} B"


def _int(n: Any) -> str:
    return "-" if n is None else f"{n:,.0f}"


def _secs(x: float | None) -> str:
    return "-" if x is None else f"{x:,.1f} s"


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{x:.0%}"


def make_console() -> Console:
    """stderr console; wide enough for the tables when it is not a terminal (logs, CI)."""
    console = Console(stderr=True)
    return console if console.is_terminal else Console(stderr=True, width=160)


def load(run_dir: str | Path) -> dict[str, Any]:
    with open(Path(run_dir) / "results.json") as f:
        return json.load(f)


def _percentile(values: list[float], p: float) -> float:
    if not values:
        return 0.0
    s = sorted(values)
    return s[min(len(s) - 1, max(0, math.ceil(len(s) * p / 100) - 1))]


# -- derived figures -------------------------------------------------------------------------------------
def ramp_analysis(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Per ramp step: achieved rate, latency to the last agent, typha CPU, agents out of sync; and the knee."""
    sc = results["scenario"]
    run = results["runs"].get("typha") or results["runs"].get("direct")
    if not sc.get("ramp") or not run or "latency_points" not in run:
        return []
    kind = "write_to_last_agent" if run["latency_points"].get("write_to_last_agent") else "breadcrumb_to_last_agent"
    pts = run["latency_points"].get(kind, [])
    steps = []
    d = sc["duration"] / len(sc["ramp"])
    samples = run.get("samples", [])
    c0 = run.get("churn_start_t", 0.0)
    per_step = (run.get("churn") or {}).get("per_step_events") or []
    knee_found = False
    for i, rate in enumerate(sc["ramp"]):
        lo, hi = i * d, (i + 1) * d
        lats = [v for t, v in pts if lo <= t < hi]
        ss = [s for s in samples if lo <= s["t"] - c0 <= hi]
        cpu = None
        out_of_sync = 0
        if len(ss) >= 2 and ss[0].get("typha"):
            dt = ss[-1]["t"] - ss[0]["t"]
            cpu = sum(b["cpu"] - a["cpu"] for a, b in zip(ss[0]["typha"], ss[-1]["typha"])) / dt if dt > 0 else None
        agents = run.get("agents", 0)
        for s in ss:
            a = s.get("agents") or {}
            if "in_sync" in a:
                out_of_sync = max(out_of_sync, agents - a["in_sync"])
        step = {
            "step": i,
            "rate": rate,
            "start": lo,
            "end": hi,
            "achieved": (per_step[i] / d) if i < len(per_step) else None,
            "count": len(lats),
            "p50": _percentile(lats, 50),
            "p99": _percentile(lats, 99),
            "max": max(lats, default=0.0),
            "typha_cpu": cpu,
            "max_agents_out_of_sync": out_of_sync,
        }
        step["broken"] = bool(step["p99"] > sc.get("slo", TARGET_P99) or out_of_sync)
        step["knee"] = step["broken"] and not knee_found
        knee_found = knee_found or step["broken"]
        steps.append(step)
    return steps


def fault_windows(run: dict[str, Any], margin: float = 1.0) -> list[tuple[float, float]]:
    """(start, end) seconds after churn start during which a fault and its recovery were under way."""
    out = []
    for f in run.get("faults") or []:
        if f.get("skipped"):
            continue
        t = f.get("t_churn", f["at"])
        rec = f.get("recovered_seconds")
        out.append((t, t + (rec if rec is not None else 30.0) + margin))
    return out


def steady_summary(run: dict[str, Any], kind: str) -> dict[str, Any] | None:
    """Latency summary of the writes made outside every fault's recovery window (None without faults)."""
    windows = fault_windows(run)
    if not windows:
        return None
    vals = [v for t, v in (run.get("latency_points") or {}).get(kind, []) if not any(a <= t <= b for a, b in windows)]
    if not vals:
        return None
    return {"count": len(vals), "p50": _percentile(vals, 50), "p99": _percentile(vals, 99), "max": max(vals)}


def targets(results: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(target, what this run reached, verdict)."""
    sc = results["scenario"]
    out = []
    t = results["runs"].get("typha")
    d = results["runs"].get("direct")
    if t:
        v = t.get("verification", {})
        pods = sc["nodes"] * sc["pods_per_node"]
        scale = t.get("agents", 0) >= TARGET_AGENTS and pods >= TARGET_PODS
        out.append(
            (
                f"{TARGET_AGENTS:,} agents, {TARGET_PODS:,} pods, every agent in sync",
                (
                    f"{t.get('agents', 0):,} agents, {pods:,} pods: {v.get('agents_at_final_seq', 0):,} at final seq, "
                    f"{v.get('sampled_matching', 0)}/{v.get('sampled_agents', 0)} sampled exact"
                ),
                ("met" if scale else "passed at this scale") if v.get("passed") else "NOT met",
            )
        )
        api = t.get("api_churn", {})
        per_replica = api.get("open_watches_max", 0) / t["replicas"] if t.get("replicas") else None
        direct_watches = (
            f"{d['agents']:,} x {d.get('resources_watched', 0)} = {d['api_churn'].get('open_watches_max', 0):,} measured"
            if d and d.get("api_churn")
            else ""
        )
        out.append(
            (
                "API watches constant (independent of agents)",
                f"{api.get('open_watches_min', 0)}..{api.get('open_watches_max', 0)} open during churn "
                f"({per_replica or 0:g} per replica) for {t.get('agents', 0):,} agents"
                + (f"; direct: {direct_watches}" if direct_watches else ""),
                "met"
                if api.get("open_watches_max") and api.get("open_watches_max") == api.get("open_watches_min")
                else "met (dips are faults)"
                if api.get("open_watches_max") and t.get("faults")
                else "NOT met",
            )
        )
        lat = (t.get("latency") or {}).get("write_to_last_agent") or {}
        steady = steady_summary(t, "write_to_last_agent")
        rate = sc.get("rate")
        step = next((s for s in ramp_analysis(results) if s["rate"] >= 100), None)
        if step is not None:
            out.append(
                (
                    f"p99 update latency to last agent < {TARGET_P99:g} s at 100 ev/s",
                    f"ramp step {step['rate']:g} ev/s ({step['achieved'] or 0:.0f} achieved): p99 {_ms(step['p99'])}",
                    "met" if step["count"] and step["p99"] < TARGET_P99 else "NOT met",
                )
            )
        out.append(
            (
                f"p99 update latency to last agent < {TARGET_P99:g} s at 100 ev/s"
                + (" (whole run)" if step is not None else ""),
                f"p99 {_ms(lat.get('p99'))} at {(t.get('churn') or {}).get('rate_achieved', 0):.0f} ev/s"
                + (f" including faults; {_ms(steady['p99'])} outside fault recovery" if steady else ""),
                "(see the ramp)"
                if step is not None
                else "met"
                if lat.get("count") and lat["p99"] < TARGET_P99 and not sc.get("ramp") and rate >= 100
                else "met outside faults"
                if steady and steady["p99"] < TARGET_P99 and not sc.get("ramp") and rate >= 100
                else ("under target" if lat.get("count") and lat["p99"] < TARGET_P99 else "NOT met"),
            )
        )
        rpa = (t.get("typha") or {}).get("rss_per_agent_bytes")
        out.append(
            (
                f"typha RSS per agent < {TARGET_RSS_PER_AGENT // 1024} KB",
                f"{_bytes(rpa)} per agent" if rpa is not None else "-",
                "met" if rpa is not None and rpa < TARGET_RSS_PER_AGENT else "NOT met",
            )
        )
    return out


def comparison_rows(results: dict[str, Any]) -> tuple[list[str], list[tuple[str, list[str]]]]:
    """Column names and rows of the main table (one column per mode)."""
    runs = results["runs"]
    modes = [m for m in ("typha", "direct") if m in runs]
    cols = modes[:]
    has_direct_extrap = (
        "typha" in runs and "direct" in runs and runs["direct"].get("agents") and runs["typha"].get("agents")
    )
    k = runs["typha"]["agents"] / runs["direct"]["agents"] if has_direct_extrap else 1.0
    if has_direct_extrap and abs(k - 1) > 1e-9:
        cols.append(f"direct x{k:g} (linear)")

    def get(run: dict[str, Any], *path: str) -> Any:
        cur: Any = run
        for p in path:
            if not isinstance(cur, dict) or p not in cur:
                return None
            cur = cur[p]
        return cur

    def cpu_frac(run: dict[str, Any]) -> float | None:
        e = run.get("emulator_cpu")
        return e["cpu_seconds"] / e["churn_window_seconds"] if e and e.get("churn_window_seconds") else None

    spec: list[tuple[str, Any, Any]] = [
        # label, fn(run) -> str, extrapolation fn(direct_run) -> str (or None)
        ("agents", lambda r: _int(r.get("agents")), lambda r: _int(r["agents"] * k)),
        ("objects in the API server", lambda r: _int(r.get("objects")), None),
        ("all agents synced in", lambda r: _secs(get(r, "snapshot", "all_agents_seconds")), None),
        (
            "API watches open (churn, max)",
            lambda r: _int(get(r, "api_churn", "open_watches_max")),
            lambda r: _int((get(r, "api_churn", "open_watches_max") or 0) * k),
        ),
        (
            "API watches opened (startup)",
            lambda r: _int(get(r, "api_startup", "watches_total")),
            lambda r: _int((get(r, "api_startup", "watches_total") or 0) * k),
        ),
        (
            "API list bytes (startup)",
            lambda r: _bytes(get(r, "api_startup", "list_bytes_sent")),
            lambda r: _bytes((get(r, "api_startup", "list_bytes_sent") or 0) * k),
        ),
        (
            "API watch events sent (churn)",
            lambda r: _int(get(r, "api_churn", "events_sent")),
            lambda r: _int((get(r, "api_churn", "events_sent") or 0) * k),
        ),
        (
            "API bytes sent (churn)",
            lambda r: _bytes(get(r, "wire", "api_bytes_churn")),
            lambda r: _bytes((get(r, "wire", "api_bytes_churn") or 0) * k),
        ),
        (
            "emulator CPU during churn",
            lambda r: _pct(cpu_frac(r)) + " of a core" if cpu_frac(r) is not None else "-",
            None,
        ),
        (
            "churn written",
            lambda r: f"{_int(get(r, 'churn', 'events_written'))} ev ({get(r, 'churn', 'rate_achieved') or 0:,.0f}/s)",
            None,
        ),
        ("API write -> last agent p50/p99/max", lambda r: _lat(get(r, "latency", "write_to_last_agent")), None),
        ("  same, writes outside fault recovery", lambda r: _lat(steady_summary(r, "write_to_last_agent")), None),
        ("breadcrumb -> last agent p50/p99/max", lambda r: _lat(get(r, "latency", "breadcrumb_to_last_agent")), None),
        (
            "API write -> decoding agents p50/p99/max",
            lambda r: _lat(get(r, "latency", "write_to_sampled_agents")),
            None,
        ),
        ("every delivery p50/p99/max", lambda r: _lat(get(r, "latency", "per_delivery")), None),
        (
            "typha socket-write latency p50/p99 (own metric)",
            lambda r: (
                f"<= {_ms(get(r, 'typha', 'write_latency', 'p50'))} / <= {_ms(get(r, 'typha', 'write_latency', 'p99'))}"
                if get(r, "typha", "write_latency", "p50") is not None
                else "-"
            ),
            None,
        ),
        (
            "machine CPU busy during churn",
            lambda r: (
                f"{get(r, 'host_cpu_churn', 'busy_fraction'):.0%} of {get(r, 'host_cpu_churn', 'cpus')} CPUs; agent workers {get(r, 'host_cpu_churn', 'agent_workers_cpu_fraction'):.0%} of a core"
                if get(r, "host_cpu_churn")
                else "-"
            ),
            None,
        ),
        (
            "typha CPU during churn",
            lambda r: (
                ", ".join(f"{c:.0%}" for c in get(r, "typha", "cpu_fraction_churn")) + " of a core"
                if get(r, "typha")
                else "-"
            ),
            None,
        ),
        (
            "typha RSS before agents -> synced",
            lambda r: (
                " + ".join(_bytes(x) for x in get(r, "typha", "rss_baseline"))
                + " -> "
                + " + ".join(_bytes(x) for x in get(r, "typha", "rss_after_sync"))
                if get(r, "typha")
                else "-"
            ),
            None,
        ),
        ("typha RSS per connected agent", lambda r: _bytes(get(r, "typha", "rss_per_agent_bytes")), None),
        ("dedup ratio (updates dropped)", lambda r: _pct(get(r, "typha", "dedup_ratio")), None),
        (
            "writes fanned out / not (deduped) / re-sent after restart",
            lambda r: (
                f"{_int(get(r, 'writes', 'reached_agents'))} / {_int(get(r, 'writes', 'not_fanned_out'))} / {_int(get(r, 'writes', 'redelivered_after_restart') or 0)}"
                if get(r, "writes")
                else "-"
            ),
            None,
        ),
        (
            "bytes to agents (total / churn)",
            lambda r: (
                f"{_bytes(get(r, 'wire', 'agents_bytes_total'))} / {_bytes(get(r, 'wire', 'agents_bytes_churn'))}"
                if get(r, "wire", "agents_bytes_churn") is not None
                else _bytes(get(r, "wire", "agents_bytes_total"))
            ),
            None,
        ),
        ("reconnect time p50/p99/max", lambda r: _lat(get(r, "reconnect")), None),
        ("verification", lambda r: _verdict(r), None),
    ]
    rows = []
    for label, fn, extrap in spec:
        vals = []
        for m in modes:
            try:
                vals.append(fn(runs[m]))
            except Exception:
                vals.append("-")
        if len(cols) > len(modes):
            try:
                vals.append(extrap(runs["direct"]) if extrap else "")
            except Exception:
                vals.append("-")
        if any(v not in ("-", "", "- / - / -") for v in vals):
            rows.append((label, vals))
    return cols, rows


def _verdict(run: dict[str, Any]) -> str:
    v = run.get("verification") or {}
    if run.get("error"):
        return f"ERROR: {run['error']}"
    if run["mode"] == "typha":
        s = (
            f"{v.get('agents_at_final_seq', 0):,}/{v.get('agents', 0):,} at final seq; sampled "
            f"{v.get('sampled_matching', 0)}/{v.get('sampled_agents', 0)} exact (missing {v.get('missing', 0)}, "
            f"stale {v.get('stale', 0)}, extra {v.get('extra', 0)})"
        )
    else:
        s = (
            f"{v.get('agents_listed', 0):,}/{v.get('agents', 0):,} listed, {v.get('watches_open_end', 0):,}/"
            f"{v.get('watches_wanted', 0):,} watches open"
        )
    return ("PASS: " if v.get("passed") else "FAIL: ") + s


# -- terminal --------------------------------------------------------------------------------------------
def tables(results: dict[str, Any]) -> list[Table]:
    cols, rows = comparison_rows(results)
    t = Table(title=f"loadtest run: {'PASS' if results.get('passed') else 'FAIL'}", caption=_scenario_line(results))
    t.add_column("measure")
    for c in cols:
        t.add_column(c, justify="right")
    for label, vals in rows:
        t.add_row(label, *vals)
    out = [t]
    faults = [(m, f) for m, r in results["runs"].items() for f in r.get("faults") or []]
    if faults:
        ft = Table(title="faults")
        for c in ("mode", "at", "fault", "recovered after", "detail"):
            ft.add_column(c)
        for m, f in faults:
            ft.add_row(
                m,
                f"{f['at']:g}s",
                f["kind"] + (f" {f['replica']}" if "replica" in f else (f":{f['arg']}" if f.get("arg") else "")),
                _secs(f.get("recovered_seconds")),
                _fault_detail(f),
            )
        out.append(ft)
    steps = ramp_analysis(results)
    if steps:
        rt = Table(title=f"ramp (SLO: p99 to last agent <= {results['scenario'].get('slo', 1):g} s)")
        for c in ("rate", "achieved", "p50", "p99", "max", "typha CPU", "out of sync", ""):
            rt.add_column(c, justify="right")
        for s in steps:
            rt.add_row(
                f"{s['rate']:g}/s",
                f"{s['achieved'] or 0:,.0f}/s",
                _ms(s["p50"]),
                _ms(s["p99"]),
                _ms(s["max"]),
                _pct(s["typha_cpu"]),
                str(s["max_agents_out_of_sync"]),
                "KNEE" if s["knee"] else ("over" if s["broken"] else "ok"),
            )
        out.append(rt)
    tg = targets(results)
    if tg:
        tt = Table(title="issue targets (2-core machine)")
        for c in ("target", "reached", "verdict"):
            tt.add_column(c)
        for row in tg:
            tt.add_row(*row)
        out.append(tt)
    return out


def _fault_detail(f: dict[str, Any]) -> str:
    if f.get("error"):
        return f"error: {f['error']}"
    if f.get("skipped"):
        return f"skipped: {f['skipped']}"
    bits = []
    if "ready_after" in f:
        bits.append(f"replica ready again after {f['ready_after']:.1f}s")
    if "agents_disconnected" in f:
        bits.append(f"{f['agents_disconnected']:,} agent disconnects")
    if "watches_cut" in f:
        bits.append(f"{f['watches_cut']} watches cut")
    if f.get("relists_410"):
        bits.append(f"{f['relists_410']} 410s")
    if f.get("list_requests"):
        bits.append(f"{f['list_requests']} list requests ({_bytes(f.get('list_bytes'))})")
    if f.get("note"):
        bits.append(f["note"])
    return ", ".join(bits)


def _scenario_line(results: dict[str, Any]) -> str:
    sc = results["scenario"]
    churn = f"ramp {','.join(f'{r:g}' for r in sc['ramp'])} ev/s" if sc.get("ramp") else f"{sc['rate']:g} ev/s"
    return (
        f"{sc['nodes']:,} nodes x {sc['pods_per_node']} pods, {sc['policies']} policies; {sc['replicas']} typha; "
        f"churn {churn} for {sc['duration']:g}s; host {results.get('host', {}).get('cpus')} CPUs"
    )


# -- plots -----------------------------------------------------------------------------------------------
def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _fault_lines(ax: Any, run: dict[str, Any], offset: float = 0.0) -> None:
    for f in run.get("faults") or []:
        if f.get("skipped"):
            continue
        x = f.get("t_churn", f["at"]) + offset
        ax.axvline(x, color="tab:red", linestyle=":", linewidth=1)
        ax.annotate(
            f["kind"],
            (x, 1),
            xycoords=("data", "axes fraction"),
            rotation=90,
            fontsize=7,
            color="tab:red",
            va="top",
            ha="right",
        )


def plot_latency_cdf(results: dict[str, Any], path: Path) -> None:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(9, 5.5))
    any_line = False
    for mode, run in results["runs"].items():
        for kind, pts in (run.get("latency_points") or {}).items():
            vals = sorted(v for _, v in pts)
            if not vals:
                continue
            ys = [(i + 1) / len(vals) for i in range(len(vals))]
            ax.plot(
                [max(v, 1e-4) for v in vals],
                ys,
                label=f"{mode}: {_LAT_LABELS.get(kind, kind)} (n={len(vals):,})",
                linestyle="-" if mode == "typha" else "--",
            )
            any_line = True
        h = (run.get("histograms") or {}).get("per_delivery")
        if h and h.get("count"):
            cdf = LogHistogram.from_dict(h).cdf()
            ax.plot(
                [max(x, 1e-4) for x, _ in cdf],
                [y for _, y in cdf],
                label=f"{mode}: {_LAT_LABELS['per_delivery']} (n={h['count']:,})",
                linestyle=":",
                color="grey",
            )
            any_line = True
    ax.axvline(results["scenario"].get("slo", 1.0), color="tab:red", linewidth=0.8, linestyle="--")
    ax.set_xscale("log")
    ax.set_xlabel("latency (s, log scale)")
    ax.set_ylabel("fraction of updates")
    ax.set_ylim(0, 1.01)
    ax.grid(True, which="both", alpha=0.3)
    ax.set_title("Update latency CDF\n" + _scenario_line(results), fontsize=10)
    if any_line:
        ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _buckets(pts: list[list[float]], width: float) -> tuple[list[float], list[float], list[float], list[float]]:
    by: dict[int, list[float]] = {}
    for t, v in pts:
        by.setdefault(math.floor(t / width), []).append(v)
    xs, p50, p99, mx = [], [], [], []
    for b in sorted(by):
        vs = by[b]
        xs.append((b + 0.5) * width)
        p50.append(_percentile(vs, 50))
        p99.append(_percentile(vs, 99))
        mx.append(max(vs))
    return xs, p50, p99, mx


def plot_latency_over_time(results: dict[str, Any], path: Path) -> None:
    plt = _plt()
    runs = results["runs"]
    n = len(runs)
    fig, axes = plt.subplots(n, 1, figsize=(10, 4.2 * n), squeeze=False, sharex=True)
    width = max(1.0, results["scenario"]["duration"] / 120)
    for ax, (mode, run) in zip(axes[:, 0], runs.items()):
        pts_all = run.get("latency_points") or {}
        kind = "write_to_last_agent" if pts_all.get("write_to_last_agent") else "breadcrumb_to_last_agent"
        pts = pts_all.get(kind) or []
        if pts:
            xs, p50, p99, mx = _buckets(pts, width)
            ax.plot(xs, p50, label="p50", color="tab:blue")
            ax.plot(xs, p99, label="p99", color="tab:orange")
            ax.plot(xs, mx, label="max", color="tab:grey", linewidth=0.8, linestyle=":")
            ax.set_yscale("log")
        other = pts_all.get("breadcrumb_to_last_agent") if kind != "breadcrumb_to_last_agent" else None
        if other:
            xs, _, p99b, _ = _buckets(other, width)
            ax.plot(
                xs, p99b, label="p99 typha breadcrumb -> last agent", color="tab:green", linewidth=0.8, linestyle="--"
            )
        ax.axhline(results["scenario"].get("slo", 1.0), color="tab:red", linewidth=0.8, linestyle="--", label="SLO")
        for s in ramp_analysis(results) if mode == "typha" or "typha" not in runs else []:
            ax.axvspan(s["start"], s["end"], color="tab:red" if s["broken"] else "tab:green", alpha=0.06)
            ax.annotate(
                f"{s['rate']:g}/s",
                ((s["start"] + s["end"]) / 2, 0.02),
                xycoords=("data", "axes fraction"),
                ha="center",
                fontsize=8,
            )
        _fault_lines(ax, run)
        ax.set_ylabel("latency (s)")
        ax.set_title(f"{mode}: {_LAT_LABELS.get(kind, kind)}, per {width:g}s of write time", fontsize=10)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8, loc="best")
    axes[-1, 0].set_xlabel("seconds since churn started")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _rate(samples: list[dict[str, Any]], get: Any) -> tuple[list[float], list[float]]:
    xs, ys = [], []
    for a, b in itertools.pairwise(samples):
        dt = b["t"] - a["t"]
        if dt > 0:
            xs.append(b["t"])
            ys.append(max(0.0, (get(b) - get(a)) / dt))
    return xs, ys


def plot_load_over_time(results: dict[str, Any], path: Path) -> None:
    plt = _plt()
    runs = results["runs"]
    fig, axes = plt.subplots(5, 1, figsize=(10, 15), sharex=True)
    ax_conn, ax_watch, ax_api, ax_cpu, ax_rss = axes
    watch_values: list[float] = []
    styles = {"typha": "-", "direct": "--"}
    for mode, run in runs.items():
        samples = run.get("samples") or []
        if not samples:
            continue
        c0 = run.get("churn_start_t") or 0.0
        xs = [s["t"] - c0 for s in samples]
        ls = styles.get(mode, "-")
        agents = [s.get("agents") or {} for s in samples]
        if mode == "typha":
            ax_conn.plot(xs, [a.get("connected", 0) for a in agents], ls, label="typha agents connected")
            ax_conn.plot(xs, [a.get("in_sync", 0) for a in agents], ls, label="typha agents in sync")
            nrep = max((len(s.get("typha") or []) for s in samples), default=0)
            for i in range(nrep):
                ax_conn.plot(
                    xs,
                    [(s["typha"][i].get("connections", 0) if s.get("typha") else 0) for s in samples],
                    ":",
                    label=f"typha-{i} connections",
                )
                ax_rss.plot(
                    xs,
                    [(s["typha"][i].get("rss", 0) / 1e6 if s.get("typha") else 0) for s in samples],
                    label=f"typha-{i} RSS (MB)",
                )
                rx, ry = _rate(samples, lambda s, i=i: s["typha"][i]["cpu"] if s.get("typha") else 0.0)
                ax_cpu.plot([x - c0 for x in rx], [y * 100 for y in ry], label=f"typha-{i}")
        else:
            ax_conn.plot(xs, [a.get("listed", 0) for a in agents], ls, label="direct agents listed")
        watch_values += [s["api"].get("open_watches", 0) for s in samples]
        ax_watch.plot(xs, [s["api"].get("open_watches", 0) for s in samples], ls, label=f"{mode}: API watches open")
        rx, ry = _rate(samples, lambda s: s["api"].get("events_sent", 0))
        ax_api.plot([x - c0 for x in rx], ry, ls, label=f"{mode}: watch events sent/s")
        rx, ry = _rate(samples, lambda s: s["api"].get("bytes_sent", 0) + s["api"].get("list_bytes_sent", 0))
        ax_api.plot([x - c0 for x in rx], [y / 1e3 for y in ry], ls, label=f"{mode}: KB/s sent (watch + list)")
        rx, ry = _rate(samples, lambda s: s.get("driver_cpu", 0.0) - s.get("churn_cpu", 0.0))
        ax_cpu.plot(
            [x - c0 for x in rx],
            [y * 100 for y in ry],
            ls,
            color="tab:grey",
            linewidth=0.8,
            label=f"{mode}: API-server emulator (+ sampling)",
        )
        if any("agents_cpu" in s for s in samples):
            rx, ry = _rate(samples, lambda s: s.get("agents_cpu", 0.0))
            ax_cpu.plot(
                [x - c0 for x in rx],
                [y * 100 for y in ry],
                ls,
                color="tab:purple",
                linewidth=0.8,
                label=f"{mode}: simulated agents (all workers)",
            )
        if any(s.get("host_total") for s in samples):
            pairs = [
                (b["t"], (b["host_busy"] - a["host_busy"]) / (b["host_total"] - a["host_total"]))
                for a, b in itertools.pairwise(samples)
                if b.get("host_total", 0) > a.get("host_total", 0)
            ]
            cpus = results.get("host", {}).get("cpus") or 1
            ax_cpu.plot(
                [t - c0 for t, _ in pairs],
                [f * 100 * cpus for _, f in pairs],
                ls,
                color="black",
                linewidth=0.6,
                label=f"{mode}: whole machine ({cpus} CPUs = {cpus * 100}%)",
            )
        for ax in axes:
            _fault_lines(ax, run) if mode == "typha" or "typha" not in runs else None
    ax_conn.set_title("Agents and typha connections", fontsize=10)
    ax_watch.set_title(
        "API-server watches open (typha: one per resource per replica; direct: one per resource per agent)", fontsize=10
    )
    positive = [w for w in watch_values if w > 0]
    if positive and max(positive) / min(positive) > 20:
        ax_watch.set_yscale("symlog")
    else:
        ax_watch.set_ylim(0, max(watch_values, default=1) * 1.2 + 1)
    ax_api.set_title("API-server load", fontsize=10)
    ax_api.set_yscale("symlog")
    ax_api.set_ylim(bottom=0)
    ax_cpu.set_title("CPU (% of one core)", fontsize=10)
    # Nothing can use more than every CPU; a spike above that is a process's start-up CPU landing in one sample.
    ax_cpu.set_ylim(0, 100 * (results.get("host", {}).get("cpus") or 1) * 1.15)
    ax_rss.set_title("typha memory", fontsize=10)
    ax_rss.set_ylim(bottom=0)
    for ax in axes:
        ax.axvline(0, color="black", linewidth=0.6)
        ax.grid(True, alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7, loc="upper left")
    axes[-1].set_xlabel("seconds since churn started (negative: startup)")
    fig.suptitle(_scenario_line(results), fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_typha_vs_direct(results: dict[str, Any], path: Path) -> bool:
    runs = results["runs"]
    if "typha" not in runs or "direct" not in runs:
        return False
    t, d = runs["typha"], runs["direct"]
    if not t.get("api_churn") or not d.get("api_churn"):
        return False
    plt = _plt()
    k = t["agents"] / d["agents"] if d.get("agents") else 1.0

    def cpu(r: dict[str, Any]) -> float:
        e = r.get("emulator_cpu") or {}
        return e.get("cpu_seconds", 0.0) / e["churn_window_seconds"] * 100 if e.get("churn_window_seconds") else 0.0

    metrics = [
        ("API watches open", t["api_churn"]["open_watches_max"], d["api_churn"]["open_watches_max"], True),
        ("API watch events sent (churn)", t["api_churn"]["events_sent"], d["api_churn"]["events_sent"], True),
        (
            "API MB sent (startup + churn)",
            (t["wire"]["api_bytes_startup"] + t["wire"]["api_bytes_churn"]) / 1e6,
            (d["wire"]["api_bytes_startup"] + d["wire"]["api_bytes_churn"]) / 1e6,
            True,
        ),
        ("emulator CPU during churn (% of a core)", cpu(t), cpu(d), False),
        (
            "p99 API write -> last agent (ms)",
            (t["latency"].get("write_to_last_agent") or {}).get("p99", 0) * 1e3,
            (d["latency"].get("write_to_last_agent") or {}).get("p99", 0) * 1e3,
            False,
        ),
    ]
    ts, ds = steady_summary(t, "write_to_last_agent"), steady_summary(d, "write_to_last_agent")
    if ts and ds:
        metrics.append(
            ("p99 write -> last agent,\noutside fault recovery (ms)", ts["p99"] * 1e3, ds["p99"] * 1e3, False)
        )
    fig, axes = plt.subplots(1, len(metrics), figsize=(3.2 * len(metrics), 4.6))
    for ax, (label, tv, dv, linear) in zip(axes, metrics):
        names = [f"typha\n{t['agents']:,} agents", f"direct\n{d['agents']:,} agents"]
        vals = [tv, dv]
        colors = ["tab:blue", "tab:orange"]
        if linear and abs(k - 1) > 1e-9:
            names.append(f"direct\nx{k:g} (linear)")
            vals.append(dv * k)
            colors.append("navajowhite")
        bars = ax.bar(names, vals, color=colors)
        for b, v in zip(bars, vals):
            ax.annotate(
                f"{v:,.0f}" if v >= 10 else f"{v:,.2g}",
                (b.get_x() + b.get_width() / 2, b.get_height()),
                ha="center",
                va="bottom",
                fontsize=7,
            )
        if (
            linear
            and max(vals) > 0
            and min(v for v in vals if v >= 0) >= 0
            and max(vals) / max(1e-9, min(v for v in vals if v > 0) if any(v > 0 for v in vals) else 1) > 50
        ):
            ax.set_yscale("log")
        ax.set_title(label, fontsize=9)
        ax.tick_params(axis="x", labelsize=7)
        ax.grid(True, axis="y", alpha=0.3)
    fig.suptitle("typha vs agents watching the API server directly\n" + _scenario_line(results), fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


# -- markdown --------------------------------------------------------------------------------------------
def summary_md(results: dict[str, Any], plots: list[str]) -> str:
    sc = results["scenario"]
    lines = [f"# loadtest run: {'PASS' if results.get('passed') else 'FAIL'}", ""]
    lines.append(f"{_scenario_line(results)}. Mix: " + ", ".join(f"{k} {v:g}" for k, v in sc["mix"].items()) + ".")
    if sc.get("faults"):
        lines.append(
            "Faults: "
            + ", ".join(f"{f['at']:g}s {f['kind']}" + (f":{f['arg']}" if f.get("arg") else "") for f in sc["faults"])
            + "."
        )
    lines += [
        "",
        f"Command: `{results.get('command', '')}` ({results.get('seconds', 0):.0f} s wall, started {results.get('started', '')}).",
        "",
    ]
    cols, rows = comparison_rows(results)
    lines.append("| measure | " + " | ".join(cols) + " |")
    lines.append("| --- | " + " | ".join("---:" for _ in cols) + " |")
    for label, vals in rows:
        lines.append(f"| {label} | " + " | ".join(v.replace("|", "/") for v in vals) + " |")
    tg = targets(results)
    if tg:
        lines += ["", "## Targets", "", "| target | reached | verdict |", "| --- | --- | --- |"]
        lines += [f"| {a} | {b} | {c} |" for a, b, c in tg]
    faults = [(m, f) for m, r in results["runs"].items() for f in r.get("faults") or []]
    if faults:
        lines += [
            "",
            "## Faults",
            "",
            "| mode | at | fault | recovered after | detail |",
            "| --- | ---: | --- | ---: | --- |",
        ]
        for m, f in faults:
            lines.append(
                f"| {m} | {f['at']:g}s | {f['kind']}{' ' + str(f['replica']) if 'replica' in f else ''} | "
                f"{_secs(f.get('recovered_seconds'))} | {_fault_detail(f)} |"
            )
    steps = ramp_analysis(results)
    if steps:
        lines += [
            "",
            f"## Ramp (where it breaks: p99 to the last agent over {sc.get('slo', 1):g} s, or agents out of sync)",
            "",
            "| rate | achieved | p50 | p99 | max | typha CPU | out of sync | |",
            "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
        ]
        for s in steps:
            lines.append(
                f"| {s['rate']:g}/s | {s['achieved'] or 0:,.0f}/s | {_ms(s['p50'])} | {_ms(s['p99'])} | {_ms(s['max'])} | "
                f"{_pct(s['typha_cpu'])} | {s['max_agents_out_of_sync']} | {'**knee**' if s['knee'] else ('over' if s['broken'] else 'ok')} |"
            )
        knee = next((s for s in steps if s["knee"]), None)
        lines += [
            "",
            f"Knee: {knee['rate']:g} events/s." if knee else "No step broke the SLO: the knee is above the last step.",
        ]
    errors = [(m, r["error"]) for m, r in results["runs"].items() if r.get("error")]
    if errors:
        lines += ["", "## Errors", ""] + [f"- {m}: {e}" for m, e in errors]
    lines += ["", "## Plots", ""]
    lines += [f"![{p}]({p})" for p in plots]
    lines += [
        "",
        "## How to read this",
        "",
        (
            "- *API write -> last agent*: the time the load test wrote a change into the API server, to the arrival of "
            "the typha breadcrumb carrying it at the last of all agents (decoding agents map revisions to breadcrumbs; "
            "every agent reports breadcrumb arrivals). In direct mode: to the last agent whose watch delivered it."
        ),
        "- *breadcrumb -> last agent*: typha's fan-out alone. *every delivery*: each agent's receipt of each breadcrumb.",
        (
            "- Writes that change nothing an agent uses (status-only updates) never reach the agents: typha drops them "
            "(the dedup ratio), so they have no latency."
        ),
        "- *RSS per connected agent*: (typha RSS with every agent in sync - RSS before any agent) / agents, summed over replicas.",
        "- The emulator runs in the load test's own process: its CPU excludes the churn generator but includes sampling.",
        (
            "- Direct-mode figures for more agents than were run are linear extrapolations (every agent adds the same "
            "watches and receives every event)."
        ),
        "",
    ]
    return "\n".join(lines)


def render(run_dir: str | Path, console: Console | None = None) -> dict[str, Any]:
    """Print the tables and (re)write the PNGs and summary.md of a run directory; returns the results."""
    run_dir = Path(run_dir)
    console = console or make_console()
    results = load(run_dir)
    made = []
    for name, fn in (
        ("latency_cdf.png", plot_latency_cdf),
        ("latency_over_time.png", plot_latency_over_time),
        ("load_over_time.png", plot_load_over_time),
        ("typha_vs_direct.png", plot_typha_vs_direct),
    ):
        try:
            if fn(results, run_dir / name) is not False:
                made.append(name)
        except Exception as exc:  # one bad plot must not lose the others or the summary
            console.log(f"[red]plot {name} failed: {exc!r}[/]")
    (run_dir / "summary.md").write_text(summary_md(results, made))
    for t in tables(results):
        console.print(t)
    console.print(f"results: {run_dir / 'results.json'}; plots: {', '.join(made)}; summary: {run_dir / 'summary.md'}")
    return results
