"""The two-column (what, value) tables every load-test command prints."""

from __future__ import annotations

from collections.abc import Iterable

from rich.table import Table


def kv_table(title: str, rows: Iterable[tuple[str, str]] = ()) -> Table:
    t = Table(title=title, show_header=False)
    t.add_column("what")
    t.add_column("value", justify="right")
    for k, v in rows:
        t.add_row(k, v)
    return t
