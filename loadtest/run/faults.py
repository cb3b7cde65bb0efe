"""Injecting the scenario's faults on schedule, and measuring the recovery from each.

Design note
-----------
A fault kind is declared once in `scenario.FAULT_KINDS` (its name, aliases, argument and help: the
pure part the command line parses) and injected here by the function registered under the same name
in `INJECTORS` (a test checks that both lists agree). Adding a fault is one `FaultKind` line and one
injector. An injector receives the running mode through the small `FaultTarget` protocol (the
emulator, the replicas, the fleet's recovery condition), not the mode class, so the modes and the
faults do not import each other.

Every fault runs on its own task at its time after churn starts: a slow recovery does not delay the
next fault. A fault that fails is recorded in its `FaultRecord.error` (and logged); the run goes on.
A kind that needs the API server's contents as they were earlier (`FaultKind.backup`) gets them
backed up when churn starts, once for all such faults (references to immutable objects: cheap).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from rich.console import Console

from loadtest.apiserver import Backup

from .measure import api_totals, open_watches
from .results import FaultRecord
from .scenario import FAULT_KINDS, Fault, Scenario


class FaultTarget(Protocol):
    """What an injector may use of the running mode."""

    sc: Scenario
    api: Any  # the emulator
    backup: Backup | None  # the emulator's contents when churn started (for kinds that need it)
    console: Console
    has_typha: bool

    def mark(self, name: str, **detail: Any) -> None: ...

    def log(self, message: str, style: str = "") -> None: ...

    def now(self) -> float: ...

    async def restart_replica(self, index: int | None, n: int, kill: bool, record: FaultRecord) -> None: ...

    async def rolling_restart(self, record: FaultRecord) -> None: ...

    async def wait_recovered(self, watches: int, timeout: float) -> bool: ...

    def recovery_timeout(self) -> float:
        """How long the agents may take to be back after an API fault."""
        ...

    def compact_plan(self) -> tuple[list[str] | None, list[str], str]:
        """(resources to compact, None for all; resources left out; a note saying why)."""
        ...


Injector = Callable[[FaultTarget, Fault, int, FaultRecord], Awaitable[None]]


async def _restart(target: FaultTarget, f: Fault, n: int, record: FaultRecord, kill: bool) -> None:
    await target.restart_replica(int(f.arg) if f.arg is not None else None, n, kill, record)


async def restart_typha(target: FaultTarget, f: Fault, n: int, record: FaultRecord) -> None:
    await _restart(target, f, n, record, kill=False)


async def kill_typha(target: FaultTarget, f: Fault, n: int, record: FaultRecord) -> None:
    await _restart(target, f, n, record, kill=True)


async def rolling_restart(target: FaultTarget, f: Fault, n: int, record: FaultRecord) -> None:
    await target.rolling_restart(record)


async def _api_fault(target: FaultTarget, record: FaultRecord, label: str, act: Callable[[], Awaitable[int]]) -> None:
    """Act on the API server, then wait for every watcher to be back; record relists and list bytes."""
    before = api_totals(target.api)
    target.mark(label)
    record.watches_cut = await act()
    t0 = time.monotonic()
    ok = await target.wait_recovered(before.open_watches, target.recovery_timeout())
    after = api_totals(target.api)
    record.recovered_seconds = time.monotonic() - t0 if ok else None
    record.relists_410 = after.watches_expired - before.watches_expired + after.list_expired - before.list_expired
    record.list_requests = after.list_requests - before.list_requests
    record.list_bytes = after.list_bytes_sent - before.list_bytes_sent


async def cut_watches(target: FaultTarget, f: Fault, n: int, record: FaultRecord) -> None:
    label = f.kind if f.arg is None else f"{f.kind}:{f.arg}"

    async def act() -> int:
        return int(target.api.cut_watches(f.arg))

    await _api_fault(target, record, label, act)


async def compact(target: FaultTarget, f: Fault, n: int, record: FaultRecord) -> None:
    chosen, left_out, note = target.compact_plan()
    record.left_out, record.note = left_out, note

    async def act() -> int:
        if chosen is None:
            target.api.compact()
        for key in chosen or ():
            target.api.compact(key)
        return int(target.api.cut_watches())

    await _api_fault(target, record, "compact" + (f" (without {', '.join(left_out)})" if left_out else ""), act)


REPLACE_DOWN_SECONDS = 1.0  # how long the API server is down while its etcd is "restored"


async def replace_datastore(target: FaultTarget, f: Fault, n: int, record: FaultRecord) -> None:
    backup = target.backup
    if backup is None:
        raise RuntimeError("no backup of the API server's contents was taken at churn start")
    store = target.api.store
    rv, objects = store.rv, sum(store.count(k) for k in backup.objects)

    async def act() -> int:
        watches = open_watches(target.api)  # all of them end with the server
        await target.api.restart(down=REPLACE_DOWN_SECONDS, restore=backup)
        return watches

    await _api_fault(target, record, "replace-datastore", act)
    record.note = (
        f"restored {backup.count():,} objects at rv {backup.rv} over {objects:,} at rv {rv} "
        f"({rv - backup.rv:,} revisions rewound, {REPLACE_DOWN_SECONDS:g}s down)"
    )


INJECTORS: dict[str, Injector] = {
    "restart-typha": restart_typha,
    "kill-typha": kill_typha,
    "rolling-restart": rolling_restart,
    "cut-watches": cut_watches,
    "compact": compact,
    "replace-datastore": replace_datastore,
}
assert set(INJECTORS) == set(FAULT_KINDS), "every fault kind needs an injector"


async def run_schedule(target: FaultTarget, log: list[FaultRecord]) -> None:
    """Inject each of the scenario's faults at its time after now (the start of churn)."""
    start = time.monotonic()
    faults = sorted(target.sc.faults, key=lambda f: f.at)
    if any(FAULT_KINDS[f.kind].backup for f in faults):
        target.backup = target.api.store.backup()
        target.mark("API contents backed up", rv=target.backup.rv, objects=target.backup.count())

    async def one(f: Fault, n: int) -> None:
        await asyncio.sleep(max(0.0, start + f.at - time.monotonic()))
        record = FaultRecord(f.at, f.kind, f.arg, t=target.now(), t_churn=round(time.monotonic() - start, 3))
        log.append(record)
        if FAULT_KINDS[f.kind].target == "typha" and not target.has_typha:
            record.skipped = "no typha in direct mode"
            target.mark(f"{f.kind} (skipped)")
            return
        try:
            await INJECTORS[f.kind](target, f, n, record)
        except Exception as exc:  # one failed fault is a finding of the run, not the end of it
            record.error = f"{type(exc).__name__}: {exc}"
            target.mark(f"{f.describe()} failed", error=record.error)
            target.log(f"fault {f.describe()} failed: {record.error}", "red")

    # n: how many replica restarts came before this one (restarts take the replicas in turn).
    typha_before = [sum(target.sc.replicas_restarted(g) for g in faults[:i]) for i in range(len(faults))]
    await asyncio.gather(*(one(f, n) for f, n in zip(faults, typha_before)))
