"""The typha process: SIGTERM pacing and start-up errors, against the real program (`python -m typha`)."""

from __future__ import annotations

import asyncio
import re
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator

import pytest

from protocol import SYNCER_FELIX
from protocol.client import SyncClient

from .conftest import make_cache, wait_for

pytestmark = pytest.mark.slow

SMALL = [
    "--datastore=synthetic",
    "--synthetic-nodes=3",
    "--synthetic-pods-per-node=2",
    "--synthetic-policies=1",
    "--synthetic-churn-rate=0",
    "--listen-host=127.0.0.1",
    "--port=0",
    "--health-port=0",
    "--metrics-port=0",
]


async def start_typha(*args: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "typha",
        *args,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )


async def serving_port(proc: asyncio.subprocess.Process) -> int:
    assert proc.stderr is not None
    while True:
        line = (await asyncio.wait_for(proc.stderr.readline(), 20)).decode()
        assert line, "typha exited before serving"
        if m := re.search(r"serving syncers .* on \[\('127\.0\.0\.1', (\d+)\)", line):
            return int(m.group(1))


@pytest.fixture
async def typha_proc() -> AsyncIterator[list[asyncio.subprocess.Process]]:
    procs: list[asyncio.subprocess.Process] = []
    yield procs
    for p in procs:
        if p.returncode is None:
            p.kill()
            await p.wait()


# --- SIGTERM pacing (issue 9, item 7) ------------------------------------------------------------


@pytest.mark.slow
async def test_shutdown_spaces_closes_by_at_most_the_max_drop_interval(server_factory) -> None:
    server = await server_factory(make_cache(10), shutdown_max_drop_interval=0.2)
    clients = [SyncClient([("127.0.0.1", server.port)], SYNCER_FELIX, hostname=f"n{i}") for i in range(4)]
    tasks = [asyncio.create_task(c.run()) for c in clients]
    await asyncio.gather(*(c.wait_in_sync(10) for c in clients))
    assert server.drop_interval(285.0, 4) == 0.2  # 285 s / 4 would be 71 s each
    assert server.drop_interval(285.0, 10_000) == pytest.approx(0.0285)  # a big fleet still fits the drain
    t0 = time.monotonic()
    await asyncio.wait_for(server.shutdown(285.0), 5)
    elapsed = time.monotonic() - t0
    assert 0.55 <= elapsed < 2.0, elapsed  # three pauses of 0.2 s between four closes, none after the last
    for c in clients:
        c.stop()
    await asyncio.wait_for(asyncio.gather(*tasks), 5)


@pytest.mark.slow
async def test_sigterm_closes_a_few_agents_in_seconds_and_exits(typha_proc) -> None:
    proc = await start_typha(*SMALL)  # the default cap: 1 s between closes, 300 s grace period
    typha_proc.append(proc)
    port = await serving_port(proc)
    clients = [SyncClient([("127.0.0.1", port)], SYNCER_FELIX, hostname=f"n{i}", backoff_initial=30) for i in range(3)]
    tasks = [asyncio.create_task(c.run()) for c in clients]
    await asyncio.gather(*(c.wait_in_sync(20) for c in clients))
    t0 = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    await wait_for(lambda: all(c.stats.disconnects >= 1 for c in clients), 10, "every agent told to go")
    await asyncio.wait_for(proc.wait(), 10)
    elapsed = time.monotonic() - t0
    assert proc.returncode == 0
    assert 1.5 <= elapsed < 6.0, f"3 agents closed 1 s apart, then exit; took {elapsed:.1f}s"
    for c in clients:
        c.stop()
    await asyncio.wait_for(asyncio.gather(*tasks), 5)


# --- start-up errors (issue 9, item 10): one line naming the setting, never a traceback ------------


def _busy_port() -> socket.socket:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen()
    return s


@pytest.mark.parametrize(
    "args, expect",
    [
        (["--port=abc"], "--port='abc': expected a whole number"),
        (["--listen-host=999.1.1.1"], "--listen-host='999.1.1.1': not an address this host can listen on"),
        (["--listen-host=192.0.2.77"], "--listen-host='192.0.2.77': not an address of this host"),
        (
            ["--datastore=kubernetes", "--kubeconfig=/nonexistent"],
            "--kubeconfig='/nonexistent': the file does not exist",
        ),
        (["BUSY:--port"], "is already in use"),
        (["BUSY:--health-port"], "is already in use"),
        (["BUSY:--metrics-port"], "is already in use"),
    ],
)
async def test_start_up_errors_are_one_line_naming_the_setting(args: list[str], expect: str) -> None:
    busy = None
    if args[0].startswith("BUSY:"):
        busy = _busy_port()
        flag = args[0].removeprefix("BUSY:")
        args = [f"{flag}={busy.getsockname()[1]}"]
        expect = f"{flag}={busy.getsockname()[1]}: 127.0.0.1:{busy.getsockname()[1]} {expect}"
    try:
        extra = [a for a in SMALL if a.split("=")[0] not in {x.split("=")[0] for x in args}]
        proc = await start_typha(*extra, "--health-host=127.0.0.1", *args)
        _, err = await asyncio.wait_for(proc.communicate(), 30)
    finally:
        if busy is not None:
            busy.close()
    text = err.decode()
    errors = [line for line in text.splitlines() if line.startswith("typha: error: ")]
    assert proc.returncode == 2, text
    assert "Traceback" not in text and len(errors) == 1, text
    assert errors[0] == f"typha: error: {expect}" or errors[0].startswith(f"typha: error: {expect}"), text
    assert text.rstrip().splitlines()[-1] == errors[0]  # the last word is the error
