"""Runs every mode of a scenario within its time budget, then writes results.json and the report."""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.text import Text

from loadtest.report import render
from loadtest.support.console import err_console, live_or_none, out_console
from loadtest.support.host import HostInfo

from .modes import MODES, ModeError, ModeRun
from .progress import Progress
from .results import Results, RunResult, save
from .scenario import Scenario, format_mix


async def run_scenario(
    sc: Scenario,
    console: Console | None = None,
    progress: bool = True,
    command: str | None = None,
    report_console: Console | None = None,
) -> Results:
    """Run every mode of the scenario, write `results.json` and the report into `sc.out`; return the
    results. Progress and log lines go to `console` (default stderr), the report's tables to
    `report_console` (default stdout)."""
    sc.validate()
    console = console or err_console()
    out = Path(sc.out)
    out.mkdir(parents=True, exist_ok=True)
    results = Results(
        scenario=sc,
        command=command or " ".join(sys.argv),
        started=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        host=HostInfo.here(),
    )
    budget = sc.total_budget()
    console.log(
        f"[bold]loadtest run[/]: {sc.describe()}; mix: {format_mix(sc.mix)}; bounded at {budget:.0f}s; output in {out}"
    )
    t_start = time.monotonic()
    live = live_or_none(console) if progress else None
    loop = asyncio.get_running_loop()
    previous_handler = loop.get_exception_handler()
    loop.set_exception_handler(loop_error_logger(console))
    try:
        if live is not None:
            live.start()
        for mode in sc.modes:
            every = max(1, round(10 / sc.sample_interval)) if progress and live is None else 0
            runner = MODES[mode](sc, console, Progress(console, live, every))
            remaining = budget - (time.monotonic() - t_start)
            results.runs[mode] = await _run_mode(runner, max(1.0, remaining), budget, console)
    finally:
        loop.set_exception_handler(previous_handler)
        if live is not None:
            live.stop()
    results.seconds = time.monotonic() - t_start
    results.passed = bool(results.runs) and all(r.passed for r in results.runs.values())
    save(results, out / "results.json")
    render(out, report_console or out_console(), console)
    return results


def loop_error_logger(console: Console) -> Callable[[asyncio.AbstractEventLoop, dict[str, Any]], None]:
    """An event-loop exception handler writing one line per error. The emulator runs in this process:
    when a run is torn down or interrupted while it is sending list bodies, uvloop reports each
    connection closed under a write as a 'Fatal error on SSL protocol' with a traceback; one line
    says the same."""

    def handle(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        exc = context.get("exception")
        console.log(Text(f"event loop: {context.get('message', '')}" + (f": {exc!r}" if exc else ""), style="yellow"))

    return handle


async def _run_mode(runner: ModeRun, timeout: float, budget: float, console: Console) -> RunResult:
    """One mode, bounded; whatever ends it early is recorded in its result's `error`."""
    mode = runner.mode
    try:
        await asyncio.wait_for(runner.run(), timeout)
    except asyncio.CancelledError:
        if not runner.aborted:  # interrupted from outside: not ours to swallow
            raise
        runner.result.error = runner.aborted
    except TimeoutError:
        runner.result.error = f"time budget of {budget:.0f}s exhausted (set --timeout to allow longer)"
        console.log(Text(f"{mode}: time budget exhausted", style="red"))
    except ModeError as exc:
        runner.result.error = str(exc)
        console.log(Text(f"{mode}: {exc}", style="red"))
    except Exception as exc:  # an unexpected failure ends this mode, with its name, and the run goes on
        runner.result.error = f"{type(exc).__name__}: {exc}"
        console.log(Text(f"{mode} failed: {exc!r}", style="red"))
    return runner.result
