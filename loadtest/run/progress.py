"""Live progress of a run: a redrawn table on a terminal, a plain line every ~10 s elsewhere.

The rows are pure functions of the samples (`results.Sample`), so what the operator watches is
exactly what `results.json` keeps; each mode adds its own rows to the common ones.
"""

from __future__ import annotations

from rich.console import Console
from rich.live import Live
from rich.table import Table
from rich.text import Text

from loadtest.support.console import kv_table

from .results import Sample

Rows = list[tuple[str, str]]


def common_rows(s: Sample, prev: Sample | None) -> Rows:
    rows: Rows = []
    api = s.api
    dt = (s.t - prev.t) if prev else 0.0
    if prev and dt > 0:
        rows.append(
            (
                "churn written / rate",
                f"{s.events_written:,} ev / {(s.events_written - prev.events_written) / dt:,.0f} ev/s (target {s.rate_target:g})",
            )
        )
        rows.append(("API events sent / s", f"{(api.events_sent - prev.api.events_sent) / dt:,.0f}"))
    rows.append(("API watches open / opened", f"{api.open_watches:,} / {api.watches_total:,}"))
    rows.append(("API bytes sent (watch + list)", f"{api.bytes_out / 1e6:,.1f} MB"))
    return rows


def typha_rows(s: Sample, prev: Sample | None, agents: int) -> Rows:
    rows: Rows = []
    a = s.agents
    if a:
        rows.append(
            (
                "agents connected / in sync",
                f"{a.connected:,} / {a.in_sync:,} of {agents:,} (disconnects {a.disconnects:,})",
            )
        )
        rows.append(("agents: bytes / KVs received", f"{a.bytes / 1e6:,.1f} MB / {a.kvs:,}"))
    for r in s.typha:
        cpu = ""
        if prev is not None and r.replica < len(prev.typha) and s.t > prev.t:
            cpu = f", CPU {(r.cpu - prev.typha[r.replica].cpu) / (s.t - prev.t):.0%}"
        state = "down" if not r.up else (r.status or "?")
        rows.append(
            (
                f"typha-{r.replica}",
                f"{state}, {r.connections:,} conns, seq {r.seq:,}, RSS {r.rss / 1e6:,.0f} MB{cpu}",
            )
        )
    return rows


def direct_rows(s: Sample, agents: int, watches_wanted: int) -> Rows:
    a = s.agents
    if not a:
        return []
    return [
        ("agents listed / watches open", f"{a.listed:,} of {agents:,} / {a.watches_open:,} of {watches_wanted:,}"),
        ("agents: events / bytes / relists", f"{a.events:,} / {a.bytes / 1e6:,.1f} MB / {a.relists:,}"),
    ]


def progress_line(mode: str, s: Sample) -> str:
    """One line for a log: the figures an operator checks first."""
    bits = [f"[{mode}] {s.t:.0f}s {s.phase}", f"written {s.events_written:,}", f"API watches {s.api.open_watches:,}"]
    a = s.agents
    if a and mode.startswith("typha"):
        bits.append(f"agents connected {a.connected:,} in sync {a.in_sync:,}")
    elif a:
        bits.append(f"agents listed {a.listed:,} watches {a.watches_open:,}")
    if s.typha:
        bits.append(
            "typha conns "
            + "/".join(f"{r.connections:,}" if r.up else "down" for r in s.typha)
            + ", RSS "
            + "/".join(f"{r.rss / 1e6:.0f}" for r in s.typha)
            + " MB"
        )
    return "; ".join(bits)


class Progress:
    """Shows each sample: redraws `live` on a terminal, or logs a line every `every` samples."""

    def __init__(self, console: Console, live: Live | None, every: int) -> None:
        self.console = console
        self.live = live
        self.every = every  # 0: no lines
        self.count = 0

    def show(self, mode: str, s: Sample, rows: Rows) -> None:
        self.count += 1
        if self.live is not None:
            self.live.update(self.table(mode, s, rows), refresh=True)
        elif self.every and self.count % self.every == 0:
            self.console.log(Text(progress_line(mode, s)))  # plain text: '[typha]' is not markup

    @staticmethod
    def table(mode: str, s: Sample, rows: Rows) -> Table:
        return kv_table(f"loadtest run [{mode}] {s.t:6.1f}s  phase: {s.phase}", rows)
