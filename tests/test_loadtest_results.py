"""The typed pieces of `loadtest run`: results.json round trip and its errors, typha's /status and
metrics accessors, the fault registry, and the latency bookkeeping around restarts."""

from __future__ import annotations

import json
from pathlib import Path

import msgspec
import pytest

from loadtest.run.faults import INJECTORS
from loadtest.run.measure import restart_cuts, typha_latencies
from loadtest.run.results import (
    FaultRecord,
    ReplicaSample,
    Results,
    ResultsError,
    Sample,
    TyphaResult,
    TyphaVerification,
    load,
    save,
)
from loadtest.run.scenario import FAULT_KINDS, Scenario, parse_fault
from loadtest.support.typha_api import TyphaCounters, TyphaMetrics, TyphaStatus, histogram_quantiles

METRICS = """\
# HELP typha_updates_total Updates received from the datastore.
# TYPE typha_updates_total counter
typha_updates_total{syncer="felix"} 120.0
typha_updates_total{syncer="bgp"} 7.0
# HELP typha_updates_skipped_total Updates dropped as unchanged.
# TYPE typha_updates_skipped_total counter
typha_updates_skipped_total{syncer="felix"} 30.0
# HELP typha_connections_active Open connections.
# TYPE typha_connections_active gauge
typha_connections_active 5.0
# HELP typha_client_latency_seconds Breadcrumb creation to its write to a client.
# TYPE typha_client_latency_seconds histogram
typha_client_latency_seconds_bucket{le="0.001"} 2.0
typha_client_latency_seconds_bucket{le="0.01"} 9.0
typha_client_latency_seconds_bucket{le="+Inf"} 10.0
typha_client_latency_seconds_count 10.0
typha_client_latency_seconds_sum 0.05
"""


def test_metrics_accessors_read_each_name_and_label_once() -> None:
    m = TyphaMetrics.parse(METRICS)
    c = m.counters("felix")
    assert (c.updates, c.skipped, c.connections_active, c.breadcrumbs) == (120.0, 30.0, 5.0, 0.0)
    assert m.counters("bgp").updates == 7.0 and m.counters("bgp").connections_active == 5.0
    buckets = m.latency_buckets()
    assert buckets == {0.001: 2.0, 0.01: 9.0, float("inf"): 10.0}
    assert histogram_quantiles(buckets) == {"count": 10.0, "p50": 0.01, "p99": float("inf")}


def test_status_decodes_typed_and_rejects_a_wrong_type() -> None:
    body = b'{"server_id": "t-0", "connections": 3, "syncers": {"felix": {"status": "IN_SYNC", "seq": 9, "keys": 4}}}'
    st = TyphaStatus.decode(body)
    assert st.connections == 3 and st.syncer().seq == 9 and st.syncer().digest is None
    assert st.syncer("bgp").seq == 0
    with pytest.raises(msgspec.ValidationError, match=r"\$\.syncers\[\.\.\.\]\.seq"):
        TyphaStatus.decode(body.replace(b'"seq": 9', b'"seq": "nine"'))


def test_every_fault_kind_has_an_injector() -> None:
    assert set(INJECTORS) == set(FAULT_KINDS)
    assert parse_fault("3:410").kind == "compact" and parse_fault("3:kill:1").arg == "1"


def _results() -> Results:
    sc = Scenario(nodes=3, faults=[parse_fault("1:restart-typha")])
    run = TyphaResult(agents=3, verification=TyphaVerification(passed=True, agents=3))
    run.samples = [Sample(t=1.0, typha=[ReplicaSample(0, up=True, counters=TyphaCounters(updates=4))])]
    run.latency_points = {"write_to_last_agent": [(0.5, 0.01)]}
    return Results(scenario=sc, runs={"typha": run}, passed=True)


def test_results_round_trip(tmp_path: Path) -> None:
    save(_results(), tmp_path / "results.json")
    back = load(tmp_path / "results.json")
    assert back == _results()
    assert isinstance(back.runs["typha"], TyphaResult) and back.runs["typha"].passed


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda d: d["runs"]["typha"].update(agents="three"), r"\$\.agents"),
        (lambda d: d.update(version=99), "version 99"),
        (lambda d: d["runs"]["typha"].update(mode="sideways"), "unknown mode"),
        (lambda d: d.pop("runs"), "no 'runs'"),
    ],
)
def test_a_bad_results_file_says_what_is_wrong(tmp_path: Path, edit, message: str) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "results.json"
    save(_results(), path)
    d = json.loads(path.read_text())
    edit(d)
    path.write_text(json.dumps(d))
    with pytest.raises(ResultsError, match=message):
        load(path)


def test_writes_interrupted_by_a_restart_are_not_latencies() -> None:
    s = 1_000_000_000  # churn start (ns)
    faults = [FaultRecord(1.0, "restart-typha", t_churn=1.0, stopped_after=0.5)]
    cuts = restart_cuts(faults, s)
    assert cuts == [(s + 1_000_000_000, s + 1_500_000_000)]
    rv_times = {10: s + 100_000_000, 11: s + 900_000_000, 12: s + 2_000_000_000}
    # rv 10 and 12 carried live; rv 11 (written before the restart) first came after it stopped.
    rv_keys = {10: {s + 110_000_000}, 11: {s + 1_800_000_000}, 12: {s + 2_010_000_000}}
    seq_created = {k: k for keys in rv_keys.values() for k in keys}
    seq_last_arrival = {k: k + 5_000_000 for k in seq_created}
    lat = typha_latencies(s, rv_times, seq_last_arrival, seq_created, {}, rv_keys, cuts)
    assert lat.writes.written == 3 and lat.writes.reached_agents == 2 and lat.writes.redelivered_after_restart == 1
    assert [round(v, 3) for _, v in lat.points["write_to_last_agent"]] == [0.015, 0.015]


def test_plots_keep_titles_apart_label_what_is_drawn_and_say_when_a_panel_is_empty(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import matplotlib.pyplot as plt

    from loadtest.report.plots import plot_latency_over_time, plot_load_over_time
    from loadtest.run.results import AgentCounts, DirectResult

    figs: list = []
    monkeypatch.setattr(plt, "close", figs.append)
    results = _results()
    typha = results.runs["typha"]
    typha.samples = [
        Sample(t=float(t), agents=AgentCounts(connected=3, in_sync=3), typha=[ReplicaSample(0, up=True, rss=10**8)])
        for t in range(5)
    ]
    typha.latency_points = {"write_to_last_agent": [(0.5 + i, 0.01 * (i + 1)) for i in range(4)]}  # one per bucket
    results.runs["direct"] = DirectResult(agents=2, error="only 0 of 2 direct agents listed", samples=typha.samples)

    plot_load_over_time(results, tmp_path / "load.png")
    fig = figs.pop()
    renderer = fig.canvas.get_renderer()
    first = fig.axes[0]
    assert not fig._suptitle.get_window_extent(renderer).overlaps(first.title.get_window_extent(renderer))
    assert all(line.get_alpha() is None or line.get_alpha() > 0 for line in first.get_lines())

    plot_latency_over_time(results, tmp_path / "latency.png")
    top, bottom = figs.pop().axes
    labels = [t.get_text() for t in top.get_legend().get_texts()]
    assert labels == ["p50", "p99 (= max)", "SLO"], labels  # no "max" entry hidden under the p99 line
    assert bottom.get_title() == "direct: no update latency measured (only 0 of 2 direct agents listed)"


def test_event_loop_errors_during_a_run_are_one_line_each() -> None:
    import asyncio
    import io

    from rich.console import Console

    from loadtest.run.orchestrator import loop_error_logger

    out = io.StringIO()
    handler = loop_error_logger(Console(file=out, width=200))
    try:
        raise RuntimeError("unable to perform operation on <TCPTransport closed=True>; the handler is closed")
    except RuntimeError as exc:
        loop = asyncio.new_event_loop()
        try:
            handler(loop, {"message": "Fatal error on SSL protocol", "exception": exc})
        finally:
            loop.close()
    text = out.getvalue()
    assert len(text.strip().splitlines()) == 1 and "Traceback" not in text
    assert "Fatal error on SSL protocol: RuntimeError('unable to perform operation" in text
