"""summary.md: the run's tables, faults, ramp, errors and plots, with how to read them."""

from __future__ import annotations

from loadtest.run.results import Results

from .analysis import ramp_analysis, targets
from .formatting import ms, pct, scenario_line, secs
from .tables import all_faults, comparison_rows, fault_detail

HOW_TO_READ = [
    (
        "- *API write -> last agent*: the time the load test wrote a change into the API server, to the arrival of "
        "the typha breadcrumb carrying it at the last of all agents (decoding agents map revisions to breadcrumbs; "
        "every agent reports breadcrumb arrivals). In direct mode: to the last agent whose watch delivered it."
    ),
    "- *breadcrumb -> last agent*: typha's fan-out alone. *every delivery*: each agent's receipt of each breadcrumb.",
    (
        "- *typha's own view*: per breadcrumb, its creation to its last socket write (typha_fanout_latency_seconds, "
        "buckets 1 ms .. 10 s, so figures are bucket upper bounds). Beside *breadcrumb -> last agent* it separates "
        "typha's latency from the simulated agents' scheduling on a crowded machine."
    ),
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
]


def summary_md(results: Results, plots: list[str]) -> str:
    sc = results.scenario
    lines = [f"# loadtest run: {'PASS' if results.passed else 'FAIL'}", ""]
    lines.append(f"{scenario_line(results)}. Mix: " + ", ".join(f"{k} {v:g}" for k, v in sc.mix.items()) + ".")
    if sc.faults:
        lines.append("Faults: " + ", ".join(f.describe() for f in sc.faults) + ".")
    lines += [
        "",
        f"Command: `{results.command}` ({results.seconds:.0f} s wall, started {results.started}).",
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
    faults = all_faults(results)
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
                f"| {m} | {f.at:g}s | {f.kind}{' ' + str(f.replica) if f.replica is not None else ''} | "
                f"{secs(f.recovered_seconds)} | {fault_detail(f)} |"
            )
    steps = ramp_analysis(results)
    if steps:
        lines += [
            "",
            f"## Ramp (where it breaks: p99 to the last agent over {sc.slo:g} s, or agents out of sync)",
            "",
            "| rate | achieved | p50 | p99 | max | typha CPU | out of sync | |",
            "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
        ]
        for s in steps:
            verdict = "**knee**" if s.knee else ("over" if s.broken else "ok")
            lines.append(
                f"| {s.rate:g}/s | {s.achieved or 0:,.0f}/s | {ms(s.p50)} | {ms(s.p99)} | {ms(s.max)} | "
                f"{pct(s.typha_cpu)} | {s.max_agents_out_of_sync} | {verdict} |"
            )
        knee = next((s for s in steps if s.knee), None)
        lines += [
            "",
            f"Knee: {knee.rate:g} events/s." if knee else "No step broke the SLO: the knee is above the last step.",
        ]
    errors = [(m, r.error) for m, r in results.runs.items() if r.error]
    errors += [(m, e) for m, r in results.runs.items() for e in r.errors]
    if errors:
        lines += ["", "## Errors", ""] + [f"- {m}: {e}" for m, e in errors]
    lines += ["", "## Plots", ""]
    lines += [f"![{p}]({p})" for p in plots]
    lines += ["", "## How to read this", "", *HOW_TO_READ, ""]
    return "\n".join(lines)
