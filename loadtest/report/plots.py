"""The run's PNG plots (matplotlib, Agg backend): latency CDF, latency over time, load over time,
and typha vs direct side by side. Each takes the loaded results and a path; a plot that does not
apply to the run (typha vs direct with one mode) returns False."""

from __future__ import annotations

import itertools
import math
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

from loadtest.run.results import (
    BREADCRUMB_TO_LAST_AGENT,
    PER_DELIVERY,
    WRITE_TO_LAST_AGENT,
    ModeResult,
    Results,
    RunResult,
    Sample,
    TyphaResult,
)
from loadtest.support.histogram import LogHistogram

from .analysis import latency_kind, ramp_analysis, steady_summary
from .formatting import LAT_LABELS, percentile, scenario_line


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _empty(ax: Any, title: str) -> None:
    """A panel with nothing to draw: its title says so, and no axes pretend otherwise."""
    ax.set_title("\n".join(textwrap.wrap(title, 110)), fontsize=10)  # an error message can be long
    ax.text(0.5, 0.5, "no data", transform=ax.transAxes, ha="center", va="center", color="grey")
    ax.set_yticks([])


def _fault_lines(ax: Any, run: ModeResult) -> None:
    for f in run.faults:
        if f.skipped:
            continue
        ax.axvline(f.t_churn, color="tab:red", linestyle=":", linewidth=1)
        ax.annotate(
            f.kind,
            (f.t_churn, 1),
            xycoords=("data", "axes fraction"),
            rotation=90,
            fontsize=7,
            color="tab:red",
            va="top",
            ha="right",
        )


def plot_latency_cdf(results: Results, path: Path) -> bool:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(9, 5.5), layout="constrained")
    any_line = False
    for mode, run in results.runs.items():
        for kind, pts in run.latency_points.items():
            vals = sorted(v for _, v in pts)
            if not vals:
                continue
            ys = [(i + 1) / len(vals) for i in range(len(vals))]
            ax.plot(
                [max(v, 1e-4) for v in vals],
                ys,
                label=f"{mode}: {LAT_LABELS.get(kind, kind)} (n={len(vals):,})",
                linestyle={"typha": "-", "typha-tls": "-."}.get(mode, "--"),
            )
            any_line = True
        h = run.histograms.get(PER_DELIVERY) if isinstance(run, TyphaResult) else None
        if h is not None and h.count:
            cdf = LogHistogram.from_dict(vars(h)).cdf()
            ax.plot(
                [max(x, 1e-4) for x, _ in cdf],
                [y for _, y in cdf],
                label=f"{mode}: {LAT_LABELS[PER_DELIVERY]} (n={h.count:,})",
                linestyle=":",
                color="grey",
            )
            any_line = True
    ax.axvline(results.scenario.slo, color="tab:red", linewidth=0.8, linestyle="--")
    ax.set_xscale("log")
    ax.set_xlabel("latency (s, log scale)")
    ax.set_ylabel("fraction of updates")
    ax.set_ylim(0, 1.01)
    ax.grid(True, which="both", alpha=0.3)
    ax.set_title("Update latency CDF\n" + scenario_line(results), fontsize=10)
    if any_line:
        ax.legend(fontsize=8, loc="lower right")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def _buckets(pts: list[tuple[float, float]], width: float) -> tuple[list[float], list[float], list[float], list[float]]:
    by: dict[int, list[float]] = {}
    for t, v in pts:
        by.setdefault(math.floor(t / width), []).append(v)
    xs, p50, p99, mx = [], [], [], []
    for b in sorted(by):
        vs = by[b]
        xs.append((b + 0.5) * width)
        p50.append(percentile(vs, 50))
        p99.append(percentile(vs, 99))
        mx.append(max(vs))
    return xs, p50, p99, mx


def plot_latency_over_time(results: Results, path: Path) -> bool:
    plt = _plt()
    runs = results.runs
    n = len(runs)
    fig, axes = plt.subplots(n, 1, figsize=(10, 4.2 * n), squeeze=False, sharex=True, layout="constrained")
    width = max(1.0, results.scenario.duration / 120)
    steps = ramp_analysis(results)
    for ax, (mode, run) in zip(axes[:, 0], runs.items()):
        kind = latency_kind(run)
        pts = run.latency_points.get(kind) or []
        if not pts:
            _empty(ax, f"{mode}: no update latency measured" + (f" ({run.error})" if run.error else ""))
            continue
        xs, p50, p99, mx = _buckets(pts, width)
        ax.plot(xs, p50, label="p50", color="tab:blue")
        if mx == p99:  # one write per bucket, or the max is the p99: one line, labelled so
            ax.plot(xs, p99, label="p99 (= max)", color="tab:orange")
        else:
            ax.plot(xs, mx, label="max", color="tab:grey", linewidth=1.0, linestyle=":", zorder=3)
            ax.plot(xs, p99, label="p99", color="tab:orange")
        ax.set_yscale("log")
        other = run.latency_points.get(BREADCRUMB_TO_LAST_AGENT) if kind != BREADCRUMB_TO_LAST_AGENT else None
        if other:
            xs, _, p99b, _ = _buckets(other, width)
            ax.plot(
                xs, p99b, label="p99 typha breadcrumb -> last agent", color="tab:green", linewidth=0.8, linestyle="--"
            )
        ax.axhline(results.scenario.slo, color="tab:red", linewidth=0.8, linestyle="--", label="SLO")
        for s in steps if mode == "typha" or "typha" not in runs else []:
            ax.axvspan(s.start, s.end, color="tab:red" if s.broken else "tab:green", alpha=0.06)
            ax.annotate(
                f"{s.rate:g}/s",
                ((s.start + s.end) / 2, 0.02),
                xycoords=("data", "axes fraction"),
                ha="center",
                fontsize=8,
            )
        _fault_lines(ax, run)
        ax.set_ylabel("latency (s)")
        ax.set_title(f"{mode}: {LAT_LABELS.get(kind, kind)}, per {width:g}s of write time", fontsize=10)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8, loc="best")
    axes[-1, 0].set_xlabel("seconds since churn started")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def _rate(samples: list[Sample], get: Callable[[Sample], float]) -> tuple[list[float], list[float]]:
    xs, ys = [], []
    for a, b in itertools.pairwise(samples):
        dt = b.t - a.t
        if dt > 0:
            xs.append(b.t)
            ys.append(max(0.0, (get(b) - get(a)) / dt))
    return xs, ys


def _replica_cpu(i: int) -> Callable[[Sample], float]:
    return lambda s: s.typha[i].cpu if i < len(s.typha) else 0.0


def plot_load_over_time(results: Results, path: Path) -> bool:
    plt = _plt()
    runs = results.runs
    has_typha = results.typha() is not None
    rows = 5 if has_typha else 4  # typha memory only with typha
    fig, axes = plt.subplots(rows, 1, figsize=(10, 3 * rows), sharex=True, layout="constrained")
    ax_conn, ax_watch, ax_api, ax_cpu = axes[:4]
    ax_rss = axes[4] if has_typha else None
    watch_values: list[float] = []
    styles = {"typha": "-", "typha-tls": "-.", "direct": "--"}
    cpus = results.host.cpus or 1
    for mode, run in runs.items():
        samples = run.samples
        if not samples:
            continue
        c0 = run.churn_start_t
        xs = [s.t - c0 for s in samples]
        ls = styles.get(mode, "-")
        if mode.startswith("typha"):
            # Connected and in sync coincide most of the time: the first is drawn wide and pale beneath
            # the second, so both lines (and their legend entries) stay visible.
            connected = [s.agents.connected if s.agents else 0 for s in samples]
            ax_conn.plot(xs, connected, ls, linewidth=4, alpha=0.35, label=f"{mode} agents connected")
            ax_conn.plot(xs, [s.agents.in_sync if s.agents else 0 for s in samples], ls, label=f"{mode} agents in sync")
            nrep = max((len(s.typha) for s in samples), default=0)
            for i in range(nrep):
                ax_conn.plot(
                    xs,
                    [s.typha[i].connections if i < len(s.typha) else 0 for s in samples],
                    ":",
                    label=f"{mode}-{i} connections",
                )
                assert ax_rss is not None
                ax_rss.plot(
                    xs,
                    [s.typha[i].rss / 1e6 if i < len(s.typha) else 0 for s in samples],
                    label=f"{mode}-{i} RSS (MB)",
                )
                rx, ry = _rate(samples, _replica_cpu(i))
                ax_cpu.plot([x - c0 for x in rx], [y * 100 for y in ry], label=f"{mode}-{i}")
        else:
            ax_conn.plot(xs, [s.agents.listed if s.agents else 0 for s in samples], ls, label="direct agents listed")
        watch_values += [s.api.open_watches for s in samples]
        ax_watch.plot(xs, [s.api.open_watches for s in samples], ls, label=f"{mode}: API watches open")
        rx, ry = _rate(samples, lambda s: s.api.events_sent)
        ax_api.plot([x - c0 for x in rx], ry, ls, label=f"{mode}: watch events sent/s")
        rx, ry = _rate(samples, lambda s: s.api.bytes_out)
        ax_api.plot([x - c0 for x in rx], [y / 1e3 for y in ry], ls, label=f"{mode}: KB/s sent (watch + list)")
        for get, color, what in (
            (lambda s: s.driver_cpu - s.churn_cpu, "tab:grey", "API-server emulator (+ sampling)"),
            (lambda s: s.agents_cpu, "tab:purple", "simulated agents (all workers)"),
        ):
            rx, ry = _rate(samples, get)
            ax_cpu.plot(
                [x - c0 for x in rx], [y * 100 for y in ry], ls, color=color, linewidth=0.8, label=f"{mode}: {what}"
            )
        if any(s.host_total for s in samples):
            pairs = [
                (b.t, (b.host_busy - a.host_busy) / (b.host_total - a.host_total))
                for a, b in itertools.pairwise(samples)
                if b.host_total > a.host_total
            ]
            ax_cpu.plot(
                [t - c0 for t, _ in pairs],
                [f * 100 * cpus for _, f in pairs],
                ls,
                color="black",
                linewidth=0.6,
                label=f"{mode}: whole machine ({cpus} CPUs = {cpus * 100}%)",
            )
        if mode == "typha" or "typha" not in runs:
            for ax in axes:
                _fault_lines(ax, run)
    ax_conn.set_title("Agents and typha connections" if has_typha else "Agents", fontsize=10)
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
    ax_cpu.set_ylim(0, 100 * cpus * 1.15)
    if ax_rss is not None:
        ax_rss.set_title("typha memory", fontsize=10)
        ax_rss.set_ylim(bottom=0)
    for ax in axes:
        ax.axvline(0, color="black", linewidth=0.6)
        ax.grid(True, alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7, loc="upper left")
    axes[-1].set_xlabel("seconds since churn started (negative: startup)")
    fig.suptitle(scenario_line(results), fontsize=9)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def _emulator_cpu_pct(r: RunResult) -> float:
    f = r.emulator_cpu.fraction if r.emulator_cpu else None
    return f * 100 if f is not None else 0.0


def _p99_ms(r: RunResult) -> float:
    s = r.latency.get(WRITE_TO_LAST_AGENT)
    return s.p99 * 1e3 if s else 0.0


def plot_typha_vs_direct(results: Results, path: Path) -> bool:
    t, d = results.typha(), results.direct()
    if t is None or d is None or not t.api_churn or not d.api_churn or not t.wire or not d.wire:
        return False
    plt = _plt()
    k = t.agents / d.agents if d.agents else 1.0
    metrics: list[tuple[str, float, float, bool]] = [
        ("API watches open", t.api_churn.open_watches_max, d.api_churn.open_watches_max, True),
        ("API watch events sent (churn)", t.api_churn.events_sent, d.api_churn.events_sent, True),
        (
            "API MB sent (startup + churn)",
            (t.wire.api_bytes_startup + t.wire.api_bytes_churn) / 1e6,
            (d.wire.api_bytes_startup + d.wire.api_bytes_churn) / 1e6,
            True,
        ),
        ("emulator CPU during churn (% of a core)", _emulator_cpu_pct(t), _emulator_cpu_pct(d), False),
        ("p99 API write -> last agent (ms)", _p99_ms(t), _p99_ms(d), False),
    ]
    ts, ds = steady_summary(t, WRITE_TO_LAST_AGENT), steady_summary(d, WRITE_TO_LAST_AGENT)
    if ts and ds:
        metrics.append(("p99 write -> last agent,\noutside fault recovery (ms)", ts.p99 * 1e3, ds.p99 * 1e3, False))
    fig, axes = plt.subplots(1, len(metrics), figsize=(3.2 * len(metrics), 4.6), layout="constrained")
    for ax, (label, tv, dv, linear) in zip(axes, metrics):
        names = [f"typha\n{t.agents:,} agents", f"direct\n{d.agents:,} agents"]
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
        positive = [v for v in vals if v > 0]
        if linear and positive and min(vals) >= 0 and max(positive) / min(positive) > 50:
            ax.set_yscale("log")
        ax.set_title(label, fontsize=9)
        ax.tick_params(axis="x", labelsize=7)
        ax.grid(True, axis="y", alpha=0.3)
    fig.suptitle("typha vs agents watching the API server directly\n" + scenario_line(results), fontsize=9)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


PLOTS: dict[str, Callable[[Results, Path], bool]] = {
    "latency_cdf.png": plot_latency_cdf,
    "latency_over_time.png": plot_latency_over_time,
    "load_over_time.png": plot_load_over_time,
    "typha_vs_direct.png": plot_typha_vs_direct,
}
