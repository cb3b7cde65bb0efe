"""`loadtest run` / `loadtest report`: option parsing, and small end-to-end runs that must verify."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from rich.console import Console

from loadtest.__main__ import main as loadtest_main
from loadtest.run.measure import counter_increase
from loadtest.run.modes.typha import decode_ids
from loadtest.run.orchestrator import run_scenario
from loadtest.run.results import TyphaResult, load
from loadtest.run.scenario import Fault, Scenario, ScenarioError, parse_fault, parse_mix, parse_ramp
from loadtest.support.histogram import LogHistogram
from typha.simcluster import DEFAULT_MIX


# -- parsing ------------------------------------------------------------------------------------------------
def test_parse_mix_default_and_overrides() -> None:
    assert parse_mix(None) == DEFAULT_MIX
    assert parse_mix("") == DEFAULT_MIX
    mix = parse_mix("default,policy_edit=10")
    assert mix["policy_edit"] == 10 and mix["pod_create"] == DEFAULT_MIX["pod_create"]
    assert set(mix) == set(DEFAULT_MIX)


def test_parse_mix_only_named_ops_aliases_and_dashes() -> None:
    assert parse_mix("create=1,delete=1") == {"pod_create": 1.0, "pod_delete": 1.0}
    assert parse_mix("pod-status=3, node_join=0.5") == {"pod_status": 3.0, "node_join": 0.5}
    assert parse_mix("policy") == {"policy_edit": 1.0}


@pytest.mark.parametrize("bad", ["bogus=1", "pod_create=x", "pod_create=-1", "pod_create=0", "pod_create=inf"])
def test_parse_mix_rejects(bad: str) -> None:
    with pytest.raises(ScenarioError):
        parse_mix(bad)


def test_parse_fault_forms() -> None:
    assert parse_fault("30:restart-typha") == Fault(30.0, "restart-typha")
    assert parse_fault("12.5:restart-typha:1") == Fault(12.5, "restart-typha", "1")
    assert parse_fault("5:kill_typha") == Fault(5.0, "kill-typha")
    assert parse_fault("45:cut-watches") == Fault(45.0, "cut-watches")
    assert parse_fault("45:cut-watches:pods") == Fault(45.0, "cut-watches", "pods")
    assert parse_fault("60:compact") == Fault(60.0, "compact")
    assert parse_fault("60:410") == Fault(60.0, "compact")
    assert parse_fault("1:restart") == Fault(1.0, "restart-typha")


@pytest.mark.parametrize(
    "bad", ["restart-typha", "x:compact", "-1:compact", "3:explode", "3:restart-typha:a", "3:compact:pods"]
)
def test_parse_fault_rejects(bad: str) -> None:
    with pytest.raises(ScenarioError):
        parse_fault(bad)


def test_parse_the_outage_faults() -> None:
    assert parse_fault("20:replace-datastore") == Fault(20.0, "replace-datastore")
    assert parse_fault("20:restore") == Fault(20.0, "replace-datastore")
    assert parse_fault("30:rolling_restart") == Fault(30.0, "rolling-restart")
    assert parse_fault("30:rollout") == Fault(30.0, "rolling-restart")
    assert parse_fault("3:kill-typha:1") == Fault(3.0, "kill-typha", "1")
    for bad in ("1:replace-datastore:pods", "1:rolling-restart:0"):
        with pytest.raises(ScenarioError, match="takes no argument"):
            parse_fault(bad)


def test_a_rolling_restart_counts_every_replica_in_the_budget_and_the_turns() -> None:
    one = Scenario(replicas=3, faults=[Fault(1, "restart-typha")])
    rolling = Scenario(replicas=3, faults=[Fault(1, "rolling-restart")])
    ready = one.typha_ready_timeout()
    assert rolling.mode_budget("typha") - one.mode_budget("typha") == pytest.approx(2 * ready)
    assert [rolling.replicas_restarted(f) for f in (Fault(1, "rolling-restart"), Fault(2, "compact"))] == [3, 0]


def test_parse_ramp() -> None:
    assert parse_ramp(None) == []
    assert parse_ramp("100, 200,400") == [100.0, 200.0, 400.0]
    for bad in ("100,x", "0", "100,-5"):
        with pytest.raises(ScenarioError):
            parse_ramp(bad)


def test_scenario_validation_and_derived_values() -> None:
    sc = Scenario(nodes=10, duration=20, ramp=[10, 20, 40, 80], replicas=2)
    sc.validate()
    assert sc.typha_agents == 10 and sc.baseline_agents == 10
    assert sc.rate_at(0) == 10 and sc.rate_at(5.1) == 20 and sc.rate_at(19.9) == 80 and sc.rate_at(25) == 80
    assert sc.ramp_steps()[1] == (5.0, 10.0, 20)
    assert Scenario(mode="both", agents=5000).baseline_agents == 100
    assert Scenario(mode="both").modes == ("typha", "direct")
    assert sc.total_budget() > sc.duration
    with pytest.raises(ScenarioError):
        Scenario(duration=10, faults=[Fault(11, "compact")]).validate()
    with pytest.raises(ScenarioError):
        Scenario(replicas=2, faults=[Fault(1, "restart-typha", "2")]).validate()
    with pytest.raises(ScenarioError):
        Scenario(mode="sideways").validate()
    round_trip = Scenario.from_dict(json.loads(json.dumps(Scenario(faults=[Fault(3, "compact")]).to_dict())))
    assert round_trip.faults == [Fault(3, "compact")]


def test_decode_ids_cover_every_replica() -> None:
    for agents, n, replicas in ((1000, 4, 2), (60, 4, 2), (1000, 4, 4), (5000, 4, 3), (3, 4, 2), (100, 1, 3)):
        ids = decode_ids(agents, n, replicas)
        assert len(ids) == len(set(ids)) == min(agents, max(n, replicas))
        assert all(0 <= i < agents for i in ids)
        assert {i % replicas for i in ids} == set(range(min(replicas, len(ids))))
    assert decode_ids(10, 0, 1) == []


def test_counter_increase_across_restarts() -> None:
    assert counter_increase([5, 7, 10]) == 5
    assert counter_increase([5, 7, 2, 4]) == 2 + 2 + 2  # the process restarted between 7 and 2
    assert counter_increase([]) == 0


# -- end to end ---------------------------------------------------------------------------------------------
def _quiet() -> Console:
    return Console(file=io.StringIO(), width=160)


@pytest.mark.slow
async def test_run_typha_with_faults_verifies_and_reports(tmp_path: Path) -> None:
    out = tmp_path / "run"
    sc = Scenario(
        nodes=30,
        pods_per_node=5,
        agents=60,
        replicas=2,
        processes=2,
        rate=50,
        duration=8,
        faults=[parse_fault("2:restart-typha"), parse_fault("4:cut-watches"), parse_fault("6:compact")],
        out=str(out),
        drain_timeout=30,
        timeout=120,
    )
    log = _quiet()
    results = await run_scenario(sc, console=log, report_console=_quiet(), progress=False)
    # Log lines name their mode (a bare "[typha]" would be read as rich markup and vanish).
    assert "[typha] all 60 agents in sync" in log.file.getvalue()  # type: ignore[attr-defined]
    run = results.typha()
    assert run is not None and not run.error, run and run.error
    v = run.verification
    assert v.passed, v
    assert v.agents_at_final_seq == 60 and v.agents_in_sync == 60
    assert v.sampled_agents >= 2 and v.missing == v.stale == v.extra == 0
    assert all(r.matches_truth for r in v.replicas)
    assert results.passed
    # Faults happened and were recovered from; the restart moved agents (reconnect times recorded).
    kinds = {f.kind: f for f in run.faults}
    assert set(kinds) == {"restart-typha", "cut-watches", "compact"}
    assert all(f.recovered_seconds is not None for f in run.faults), run.faults
    assert (kinds["compact"].relists_410 or 0) > 0
    assert run.reconnect is not None and run.reconnect.count > 0
    # The moved agents came back by reconciling, the cheap ones with a summary borrowed from a decoding
    # agent of their worker that passed through the same state (a full snapshot each, without that).
    restart = kinds["restart-typha"]
    assert (restart.agents_reconciled or 0) > (restart.agents_resnapshotted or 0), restart
    # The API server sees one watch per resource per replica, whatever the agent count.
    assert run.api_churn is not None and run.api_churn.open_watches_max <= 2 * 20
    # Measurements exist.
    assert run.snapshot is not None and (run.snapshot.all_agents_seconds or 0) > 0
    assert run.latency["write_to_last_agent"].count > 0
    assert run.latency["breadcrumb_to_last_agent"].count > 0
    assert min(v for _, v in run.latency_points["write_to_last_agent"]) > 0
    assert run.typha is not None and (run.typha.rss_per_agent_bytes or 0) > 0 and run.typha.dedup_ratio is not None
    # typha's own view of each breadcrumb's last write, in fine buckets (1 ms .. 10 s), beside the agents'.
    fan = run.typha.fanout_latency
    assert fan is not None and fan.count > 0 and fan.p50 is not None and fan.p99 is not None
    assert 0.001 <= fan.p50 <= fan.p99 <= 10
    assert len(run.samples) >= 8 and all(len(s.typha) == 2 for s in run.samples)
    # Scraped counters in most samples (a replica restarting or busy leaves a gap, not a zero).
    assert sum(all(r.counters for r in s.typha) for s in run.samples) >= len(run.samples) // 2
    assert all(r.counters is None for s in run.samples for r in s.typha if not r.up)
    # Output files, then a re-render from results.json alone.
    saved = load(out / "results.json")
    assert saved.runs["typha"].verification.passed and saved == results
    for name in ("latency_cdf.png", "latency_over_time.png", "load_over_time.png", "summary.md"):
        assert (out / name).stat().st_size > 1000, name
        (out / name).unlink()
    assert loadtest_main(["report", str(out)]) == 0
    for name in ("latency_cdf.png", "latency_over_time.png", "load_over_time.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    summary = (out / "summary.md").read_text()
    assert summary.startswith("# loadtest run: PASS") and "latency_cdf.png" in summary


async def _outage_run(tmp_path: Path, duration: float, *faults: str) -> TyphaResult:
    """A small run with `faults` (2 replicas, 30 agents, 60 writes/s), and its pass condition: every
    replica and every sampled agent holds exactly the emulator's final contents (no missing, phantom
    or stale key), every agent at the final seq, every fault recovered from."""
    sc = Scenario(
        nodes=30,
        pods_per_node=5,
        agents=30,
        replicas=2,
        processes=1,
        rate=60,
        duration=duration,
        faults=[parse_fault(f) for f in faults],
        out=str(tmp_path / "run"),
        drain_timeout=30,
        timeout=150,
    )
    results = await run_scenario(sc, console=_quiet(), report_console=_quiet(), progress=False)
    run = results.typha()
    assert run is not None and not run.error, run and run.error
    v = run.verification
    assert v.passed, v
    assert v.sampled_agents >= 2 and v.missing == v.stale == v.extra == 0
    assert all(r.matches_truth for r in v.replicas)
    assert all(f.recovered_seconds is not None and not f.error for f in run.faults), run.faults
    return run


@pytest.mark.slow
async def test_run_with_the_datastore_replaced_under_churn_ends_in_the_exact_state(tmp_path: Path) -> None:
    """The API server restarted on its contents of churn start: 3 s of revisions rewound, which the
    writes that follow hand out again (and pass typha's own by the end). Typha resuming its watches
    instead of relisting fails this (checked by hand: 124 missing, 128 phantom, 8 stale keys)."""
    run = await _outage_run(tmp_path, 11, "3:replace-datastore")
    assert run.typha is not None and run.typha.restarts == [0, 0]
    restore = run.faults[0]
    assert restore.kind == "replace-datastore" and "revisions rewound" in restore.note, restore
    assert (restore.list_requests or 0) > 0  # typha relisted


@pytest.mark.slow
async def test_run_with_a_replica_killed_then_a_rolling_restart_ends_in_the_exact_state(tmp_path: Path) -> None:
    run = await _outage_run(tmp_path, 8, "1:kill-typha:1", "4:rolling-restart")
    assert run.typha is not None and run.typha.restarts == [1, 2]  # replica 1 twice
    kill, rolling = sorted(run.faults, key=lambda f: f.at)
    assert kill.kind == "kill-typha" and kill.replica == 1 and (kill.agents_disconnected or 0) > 0
    assert rolling.kind == "rolling-restart" and "typha 0" in rolling.note and "typha 1" in rolling.note
    assert (rolling.agents_disconnected or 0) >= 30  # every agent moved at least once


@pytest.mark.slow
async def test_run_direct_mode_small(tmp_path: Path) -> None:
    out = tmp_path / "direct"
    sc = Scenario(
        mode="direct",
        nodes=20,
        pods_per_node=5,
        agents=20,
        direct_agents=10,
        processes=1,
        rate=30,
        duration=3,
        faults=[parse_fault("1:cut-watches")],
        out=str(out),
        drain_timeout=15,
        timeout=90,
    )
    results = await run_scenario(sc, console=_quiet(), report_console=_quiet(), progress=False)
    run = results.direct()
    assert run is not None and not run.error, run and run.error
    v = run.verification
    assert v.passed, v
    assert run.api_churn is not None
    assert v.watches_wanted == 10 * run.resources_watched == run.api_churn.open_watches_max
    assert run.latency["write_to_last_agent"].count > 0
    assert run.faults[0].recovered_seconds is not None
    assert (out / "results.json").exists() and (out / "latency_cdf.png").exists() and (out / "summary.md").exists()


def test_report_of_both_modes_renders_comparison(tmp_path: Path) -> None:
    """The renderer alone, on a synthetic results.json with both modes (no processes needed)."""
    sc = Scenario(mode="both", nodes=10, agents=40, direct_agents=10, duration=4, ramp=[10, 20], out=str(tmp_path))

    def mode_run(mode: str, agents: int, watches: int, lat: float) -> dict:
        h = LogHistogram()
        h.extend([lat] * 10)
        pts = [[t / 10, lat * (1 + t / 40)] for t in range(40)]
        samples = [
            {
                "t": float(t),
                "phase": "churn",
                "api": {
                    "open_watches": watches,
                    "events_sent": 10 * t * watches,
                    "bytes_sent": 1000 * t * watches,
                    "list_bytes_sent": 0,
                },
                "driver_cpu": 0.1 * t,
                "churn_cpu": 0.01 * t,
                "events_written": 10 * t,
                "agents": {"connected": agents, "in_sync": agents, "listed": agents},
                **(
                    {"typha": [{"replica": 0, "up": True, "cpu": 0.2 * t, "rss": 80e6, "connections": agents}]}
                    if mode == "typha"
                    else {}
                ),
            }
            for t in range(8)
        ]
        return {
            "mode": mode,
            "agents": agents,
            "resources_watched": 15,
            "replicas": 1,
            "objects": 500,
            "snapshot": {"all_agents_seconds": 1.0},
            "api_startup": {"watches_total": watches, "list_bytes_sent": 10_000 * watches},
            "api_churn": {"open_watches_max": watches, "open_watches_min": watches, "events_sent": 100 * watches},
            "wire": {
                "api_bytes_startup": 10_000 * watches,
                "api_bytes_churn": 1000 * watches,
                "agents_bytes_total": 5e6,
            },
            "emulator_cpu": {"cpu_seconds": 0.5, "churn_window_seconds": 5.0},
            "churn": {"events_written": 40, "rate_achieved": 10.0, "per_step_events": [20, 20]},
            "latency": {"write_to_last_agent": h.summary()},
            "latency_points": {"write_to_last_agent": pts},
            "histograms": {"per_delivery": h.to_dict()},
            "faults": [],
            "samples": samples,
            "churn_start_t": 1.0,
            "verification": {
                "passed": True,
                "agents": agents,
                "agents_at_final_seq": agents,
                "sampled_agents": 2,
                "sampled_matching": 2,
                "agents_listed": agents,
                "watches_open_end": watches,
                "watches_wanted": watches,
            },
            **(
                {
                    "typha": {
                        "cpu_fraction_churn": [0.2],
                        "rss_baseline": [70e6],
                        "rss_after_sync": [80e6],
                        "rss_per_agent_bytes": 10e6 / agents,
                        "dedup_ratio": 0.5,
                    }
                }
                if mode == "typha"
                else {}
            ),
        }

    results = {
        "version": 1,
        "scenario": sc.to_dict(),
        "command": "test",
        "host": {"cpus": 2},
        "passed": True,
        "runs": {"typha": mode_run("typha", 40, 17, 0.01), "direct": mode_run("direct", 10, 150, 0.05)},
    }
    (tmp_path / "results.json").write_text(json.dumps(results))
    assert loadtest_main(["report", str(tmp_path)]) == 0
    for name in ("latency_cdf.png", "latency_over_time.png", "load_over_time.png", "typha_vs_direct.png"):
        assert (tmp_path / name).read_bytes()[:4] == b"\x89PNG", name
    summary = (tmp_path / "summary.md").read_text()
    assert "direct x4 (linear)" in summary and "## Ramp" in summary
    assert loadtest_main(["report", str(tmp_path / "missing")]) == 2
