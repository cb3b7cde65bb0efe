"""Hostile connections against a real typha process while agents in sync watch (`loadtest hostile`).

Partial frames before and after the hello: typha's memory grows by what the budgets allow (a partial
hello frame is at most 16 KiB, a partial frame after the hello at most 4 KiB) and the agents lose
nothing: no disconnect, every one at typha's final sequence number (the client enforces sequence
continuity, so a lost update would have been a disconnect), and newcomers still get in. Slow readers
holding every snapshot slot lose them after the stall timeout, so a newcomer is not made to wait for
the attack to end.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from loadtest.commands.hostile import HostileOptions, run_kind

pytestmark = pytest.mark.slow  # typha, agent and attacker processes

CONNECTIONS = 300


@pytest.mark.parametrize("kind, per_connection", [("partial-hello", 16 * 1024), ("partial-after-hello", 4 * 1024)])
async def test_partial_frames_cost_a_bounded_amount_and_agents_keep_up(
    kind: str, per_connection: int, tmp_path: Path
) -> None:
    opts = HostileOptions(kinds=(kind,), connections=CONNECTIONS, agents=6, late_agents=2, seconds=4, churn=20)
    r = await run_kind(opts, kind, tmp_path)
    assert r["hostile_open_peak"] >= CONNECTIONS * 0.9, r  # the attack really held its connections
    growth = r["typha_rss_peak"] - r["typha_rss_baseline"]
    # The partial frames themselves, the per-connection state and the allocator's slack: well under
    # three times the frame budget each, plus a fixed 16 MB for everything else.
    assert growth < CONNECTIONS * per_connection * 3 + 16e6, r
    assert r["agents_disconnects"] == 0 and r["agents_caught_up"], r
    assert r["update_to_last_agent_seconds"]["count"] > 0, r  # updates kept flowing during the attack
    assert r["late_agents_sync_seconds"] is not None and r["late_agents_sync_seconds"] < 10, r
    assert r["health_probe_failures"] == 0, r


async def test_slow_readers_give_their_snapshot_slots_up(tmp_path: Path) -> None:
    """Every snapshot slot held by a reader that makes no progress: newcomers get in after the stall timeout."""
    opts = HostileOptions(
        kinds=("slow-read",),
        connections=6,
        agents=4,
        late_agents=2,
        seconds=8,
        nodes=100,
        pods_per_node=30,  # a snapshot larger than the socket buffers, so a slow reader blocks on it
        typha_args=["--max-concurrent-snapshots", "3", "--snapshot-stall-timeout", "1.5"],
    )
    r = await run_kind(opts, "slow-read", tmp_path)
    assert r["typha_dropped"].get("snapshot-stalled", 0) >= 3, r
    assert r["late_agents_sync_seconds"] is not None and r["late_agents_sync_seconds"] < 6, r
    assert r["agents_disconnects"] == 0 and r["agents_caught_up"], r
