"""Console output of the load-test commands: results on stdout, progress and logs on stderr.

A command's answer (its summary tables and verdict) goes to stdout, so `loadtest demo > out.txt`
keeps exactly that; live progress and log lines go to stderr. Off a terminal (a log file, CI), rich
would wrap the tables at 80 columns and could not redraw a live view, so the consoles are made wide
and the live views are replaced by a plain line now and then (see `live_or_none`).
"""

from __future__ import annotations

from collections.abc import Iterable

from rich.console import Console
from rich.live import Live
from rich.table import Table

WIDTH_OFF_TERMINAL = 160


def _console(stderr: bool) -> Console:
    console = Console(stderr=stderr)
    return console if console.is_terminal else Console(stderr=stderr, width=WIDTH_OFF_TERMINAL)


def out_console() -> Console:
    """Where a command's results go (stdout)."""
    return _console(stderr=False)


def err_console() -> Console:
    """Where progress and log lines go (stderr)."""
    return _console(stderr=True)


def live_or_none(console: Console, refresh_per_second: float = 4) -> Live | None:
    """A live view on a terminal; None elsewhere (a redrawn table in a log file is noise)."""
    if not console.is_terminal:
        return None
    return Live(console=console, refresh_per_second=refresh_per_second, transient=True)


def kv_table(title: str, rows: Iterable[tuple[str, str]] = ()) -> Table:
    """The two-column (what, value) table every command prints. Off a terminal the title is
    left-aligned on a line of its own (centred over a wide table it read as glued to it)."""
    t = Table(title=title, show_header=False, title_justify="left")
    t.add_column("what")
    t.add_column("value", justify="right")
    for k, v in rows:
        t.add_row(k, v)
    return t
