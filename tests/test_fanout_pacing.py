"""Fan-out passes paced by the fleet's size (typha.fanpace): the policy as pure code, then one real server."""

from __future__ import annotations

import asyncio
import itertools
import time

import pytest

from protocol import Updates
from protocol.client import SyncClient
from tests.conftest import make_cache, wait_for
from tests.test_deploy import typha_cfg, typha_env
from typha.config import ServerConfig
from typha.fanpace import FanoutPacer


def test_the_interval_grows_with_the_fleet_up_to_the_budget() -> None:
    pacer = FanoutPacer(budget=0.1, write_rate=50_000)
    assert pacer.interval(0) == 0
    assert pacer.interval(1_000) == pytest.approx(0.02)
    assert pacer.interval(5_000) == pytest.approx(0.1)
    assert pacer.interval(50_000) == pytest.approx(0.1)  # the budget caps it


def test_the_interval_is_never_shorter_than_the_last_pass_took() -> None:
    pacer = FanoutPacer(budget=0.1, write_rate=50_000)
    pacer.started(10.0)
    pacer.ended(10.3)  # a pass slower than the budget: the machine cannot do better, leave it half the time
    assert pacer.interval(1_000) == pytest.approx(0.3)
    assert pacer.delay(10.3, 1_000) == pytest.approx(0.0)
    pacer.started(10.3)
    pacer.ended(10.31)
    assert pacer.interval(1_000) == pytest.approx(0.02)


def test_an_update_after_a_quiet_spell_goes_at_once_and_a_busy_one_waits_for_the_interval() -> None:
    pacer = FanoutPacer(budget=0.1, write_rate=50_000)
    assert pacer.delay(5.0, 5_000) == 0  # nothing ran yet
    pacer.started(5.0)
    pacer.ended(5.01)
    assert pacer.delay(5.03, 5_000) == pytest.approx(0.07)  # 0.1 s after the last pass started
    assert pacer.delay(5.2, 5_000) == 0  # quiet for longer than the interval


def simulate(agents: int, events_per_second: float, seconds: float, pacer: FanoutPacer, write_cost: float):
    """Events arrive evenly; a pass is scheduled by the first event after the last one, takes
    `agents * write_cost` and writes once to every agent. (pass starts, worst event-to-pass delay)."""
    starts: list[float] = []
    worst = 0.0
    scheduled_at: float | None = None
    waiting_since: float | None = None
    busy_until = 0.0
    n = int(events_per_second * seconds)
    for i in range(n + 1):
        t = i / events_per_second
        # Passes that are due before this event run first (the loop is free once the last pass ended).
        while scheduled_at is not None and scheduled_at <= t:
            start = max(scheduled_at, busy_until)
            pacer.started(start)
            starts.append(start)
            assert waiting_since is not None
            worst = max(worst, start - waiting_since)
            busy_until = start + agents * write_cost
            pacer.ended(busy_until)
            scheduled_at = waiting_since = None
        if i < n and scheduled_at is None:
            waiting_since = t
            now = max(t, busy_until)  # the loop sees the event once the pass running at `t` ended
            scheduled_at = now + pacer.delay(now, agents)
    return starts, worst


@pytest.mark.parametrize("agents", [100, 1_000, 5_000, 20_000])
def test_writes_per_second_stay_bounded_as_the_fleet_grows_and_latency_within_the_budget(agents: int) -> None:
    budget, rate, cost = 0.1, 50_000.0, 5e-6
    pacer = FanoutPacer(budget, rate)
    starts, worst = simulate(agents, events_per_second=500, seconds=20, pacer=pacer, write_cost=cost)
    writes_per_second = len(starts) * agents / 20
    # At most write_rate writes a second while the interval is agents / write_rate; past the budget
    # (5,000 agents here) one pass per budget: agents / budget writes a second.
    assert writes_per_second <= max(rate, agents / budget) * 1.01
    if agents <= 5_000:
        assert writes_per_second <= rate * 1.01
    # Every agent gets at most one write per interval, and no update waits longer than the budget
    # (or than a pass takes, when a pass takes longer than the budget).
    interval = pacer.interval(agents)
    assert min(b - a for a, b in itertools.pairwise(starts)) >= interval - 1e-9
    assert worst <= max(budget, agents * cost) + 1e-9
    if agents >= 1_000:  # a pass per event, as before, would write 500 x agents a second
        assert writes_per_second <= 500 * agents / 9


async def test_a_real_server_writes_each_agent_at_most_once_per_interval(server_factory) -> None:
    """A breadcrumb every 10 ms for 1.5 s to 3 agents, the interval set to 0.2 s: about 8 passes, not
    150; every update arrives, none later than the interval (plus this machine's scheduling)."""
    cache = make_cache(10)
    interval = 0.2
    # write_rate 1: the interval is the budget for any fleet of one agent or more.
    server = await server_factory(cache, fanout_latency_budget=interval, fanout_write_rate=1.0)
    delays: list[float] = []

    def on_message(msg: object) -> None:
        if isinstance(msg, Updates):
            delays.extend(time.time() - int(kv.value or b"0") / 1e9 for kv in msg.kvs if kv.key.startswith("/t/"))

    clients = [
        SyncClient([("127.0.0.1", server.port)], "felix", hostname=f"n{i}", on_message=on_message) for i in range(3)
    ]
    tasks = [asyncio.create_task(c.run()) for c in clients]
    try:
        await asyncio.gather(*(c.wait_in_sync(10) for c in clients))
        pacer = server._pacers["felix"]
        passes0, writes0 = pacer.passes, server.metrics.client_latency.count
        t0 = time.monotonic()
        n = 0
        while time.monotonic() - t0 < 1.5:
            cache.apply([(f"/t/{n}", str(time.time_ns()).encode(), str(n))])
            n += 1
            await asyncio.sleep(0.01)
        await wait_for(lambda: all(f"/t/{n - 1}" in c.state for c in clients), 5, "every update delivered")
        passes = pacer.passes - passes0
        writes = server.metrics.client_latency.count - writes0
        assert n >= 50 and passes <= 1.5 / interval + 3, (n, passes)
        assert writes <= 3 * passes  # one write per agent per pass
        assert server.metrics.fanout_passes.value == pacer.passes
        assert len(delays) == 3 * n
        delays.sort()
        assert delays[-1] < interval + 0.3, delays[-5:]  # the interval, and a loaded two-core machine
        # typha's own view, one observation per breadcrumb, in fine buckets.
        fan = server.metrics.fanout_latency
        assert fan.count >= n and 0.0 < fan.sum / fan.count <= interval + 0.05
    finally:
        for c in clients:
            c.stop()
        await asyncio.gather(*tasks, return_exceptions=True)


def test_the_pacing_settings_in_the_manifest_are_the_defaults() -> None:
    env, cfg, default = typha_env(), typha_cfg(), ServerConfig()
    assert {"TYPHA_FANOUT_LATENCY_BUDGET", "TYPHA_FANOUT_WRITE_RATE"} <= set(env)
    assert cfg.fanout_latency_budget == default.fanout_latency_budget == 0.1
    assert cfg.fanout_write_rate == default.fanout_write_rate == 50_000
