"""The load tests' TLS modes: `bench fanout --tls both` and `loadtest run --tls both` measure plaintext and
mutual TLS in one invocation (issue 12 item 2), and every agent is verified in both."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from rich.console import Console

from loadtest.commands.bench_fanout import FanoutOptions, run_fanout
from loadtest.run.orchestrator import run_scenario
from loadtest.run.results import load
from loadtest.run.scenario import Scenario, ScenarioError

pytestmark = pytest.mark.slow  # servers, agents and the emulator in processes


def _quiet() -> Console:
    return Console(file=io.StringIO(), width=160)


async def test_bench_fanout_measures_plaintext_and_tls_in_one_run() -> None:
    opts = FanoutOptions(
        agents=20, processes=1, kvs=2000, value_size=300, rate=200, seconds=2, full_decode=2, tls="both"
    )
    r = await run_fanout(opts, console=_quiet())
    assert r["plaintext"]["tls"] is False and r["tls"]["tls"] is True
    for run in (r["plaintext"], r["tls"]):
        v = run["verification"]
        assert v["agents_at_final_seq"] == 20 and v["sampled_agents_matching"] == v["sampled_agents"] == 2
        assert run["churn"]["last_agent_latency"]["count"] > 0
    assert set(r["tls_cost"]) >= {"snapshot_seconds_ratio", "update_p99_ratio", "server_cpu_during_churn_ratio"}
    assert r["verification"]["sampled_agents_matching"] == 4


async def test_loadtest_run_typha_then_typha_tls(tmp_path: Path) -> None:
    out = tmp_path / "run"
    sc = Scenario(
        nodes=15, pods_per_node=4, agents=15, processes=1, rate=20, duration=3, tls="both", out=str(out), timeout=150
    )
    assert sc.modes == ("typha", "typha-tls")
    results = await run_scenario(sc, console=_quiet(), report_console=_quiet(), progress=False)
    assert set(results.runs) == {"typha", "typha-tls"}
    for run in results.runs.values():
        assert not run.error and run.verification.passed, (run.mode, run.error)
    assert results.passed
    saved = load(out / "results.json")
    assert saved.runs["typha-tls"].mode == "typha-tls" and saved.scenario.tls == "both"
    assert "typha-tls" in (out / "summary.md").read_text()


def test_tls_needs_typha() -> None:
    with pytest.raises(ScenarioError, match="--tls is about typha"):
        Scenario(mode="direct", tls="on").validate()
    assert Scenario(mode="both", tls="both").modes == ("typha", "typha-tls", "direct")
    assert Scenario(tls="on").modes == ("typha",)
