"""`loadtest report DIR`: terminal tables, PNG plots and summary.md of a `loadtest run` directory.

Everything is derived from `results.json` (schema: `loadtest.run.results`), so a saved run can be
re-rendered, or the renderer improved, later. Its parts: `analysis` (ramp and knee, fault windows,
targets), `tables` (the rows both outputs share, and the terminal tables), `markdown`
(summary.md), `plots` (the PNGs), `formatting` (how a figure is written).
"""

from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.text import Text

from loadtest.run.results import Results, load
from loadtest.support.console import err_console, out_console

from .markdown import summary_md
from .plots import PLOTS
from .tables import tables


def render(run_dir: str | Path, console: Console | None = None, log: Console | None = None) -> Results:
    """Print the tables to `console` (stdout) and (re)write the PNGs and summary.md of a run
    directory; a plot that fails is reported on `log` (stderr) and the others still made.
    Raises `results.ResultsError` when results.json cannot be read."""
    run_dir = Path(run_dir)
    console = console or out_console()
    log = log or err_console()
    results = load(run_dir / "results.json")
    made = []
    for name, plot in PLOTS.items():
        try:
            if plot(results, run_dir / name):
                made.append(name)
        except Exception as exc:  # one bad plot must not lose the others or the summary: say which failed
            log.log(Text(f"plot {name} failed: {type(exc).__name__}: {exc}", style="red"))
    (run_dir / "summary.md").write_text(summary_md(results, made))
    for t in tables(results):
        console.print(t)
        console.print()
    console.print(f"results: {run_dir / 'results.json'}; plots: {', '.join(made)}; summary: {run_dir / 'summary.md'}")
    return results
