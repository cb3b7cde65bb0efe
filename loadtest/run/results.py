"""The schema of `results.json`: what `loadtest run` measures and `loadtest report` renders.

Design note
-----------
The orchestrator fills these dataclasses as a run goes; `save` writes them as JSON and `load` reads
them back, decoded and type-checked by msgspec (a file edited by hand or written by another version
fails with the path of the bad field, e.g. ``$.runs.typha.agents``). The report works only from a
loaded `Results`, so a saved run can always be re-rendered, and both sides share one definition
instead of ~40 string keys written in two places.

Every section of a mode's result is optional (None): a mode that failed half-way keeps what it had
measured, and the report shows "-" for the rest. A new measurement is a new field with a default, so
older files still load. Version 1 files (before this schema) load too: their layout is the same, bar
the per-replica counters in samples, which the report does not read.

One result class per mode (`TyphaResult`, `DirectResult`), chosen by its ``mode`` key on load.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec

from loadtest.support.host import HostInfo
from loadtest.support.typha_api import TyphaCounters

from .scenario import Scenario

RESULTS_VERSION = 2
READABLE_VERSIONS = (1, 2)

# Latency kinds (keys of `latency` and `latency_points`).
WRITE_TO_LAST_AGENT = "write_to_last_agent"
BREADCRUMB_TO_LAST_AGENT = "breadcrumb_to_last_agent"
WRITE_TO_SAMPLED_AGENTS = "write_to_sampled_agents"
PER_DELIVERY = "per_delivery"


class ResultsError(ValueError):
    """results.json cannot be read; the message says where."""


# -- pieces ----------------------------------------------------------------------------------------------
@dataclass
class LatencySummary:
    """Seconds; `count` samples (see `LogHistogram.summary`)."""

    count: int = 0
    mean: float = 0.0
    p50: float = 0.0
    p90: float = 0.0
    p99: float = 0.0
    max: float = 0.0


@dataclass
class HistogramData:
    """A serialised `LogHistogram` (bucket index -> count)."""

    counts: dict[str, int] = field(default_factory=dict)
    count: int = 0
    total: float = 0.0
    max: float = 0.0


@dataclass
class BucketQuantiles:
    """Quantiles of a Prometheus histogram: upper bucket bounds, so coarse."""

    count: float = 0.0
    p50: float | None = None
    p99: float | None = None


@dataclass
class ApiCounters:
    """The emulator's counters summed over resources (a window's increase, or totals)."""

    open_watches: int = 0  # at the end of the window (not an increase)
    watches_total: int = 0
    watches_cut: int = 0
    watches_expired: int = 0
    events_sent: int = 0
    bytes_sent: int = 0
    list_requests: int = 0
    list_bytes_sent: int = 0
    list_expired: int = 0
    events_generated: int = 0
    requests: int = 0

    def minus(self, before: ApiCounters) -> ApiCounters:
        """Increase since `before`; `open_watches` stays this one's (a level, not a counter)."""
        out = ApiCounters()
        for name in self.__dataclass_fields__:
            setattr(out, name, getattr(self, name) - getattr(before, name))
        out.open_watches = self.open_watches
        return out

    @property
    def bytes_out(self) -> int:
        """Watch and list bytes sent."""
        return self.bytes_sent + self.list_bytes_sent


@dataclass
class ApiChurn(ApiCounters):
    """The emulator's counters over the churn window, with the open watches seen while it lasted."""

    open_watches_max: int = 0
    open_watches_min: int = 0


@dataclass
class AgentCounts:
    """Agent figures summed over the fleet at one sample (typha agents or direct ones)."""

    agents: int = 0
    # typha agents
    connected: int = 0
    streaming: int = 0
    in_sync: int = 0
    frames: int = 0
    kvs: int = 0
    disconnects: int = 0
    not_connected: int = 0
    reporting: int = 0
    # direct agents
    listed: int = 0
    watches_open: int = 0
    events: int = 0
    relists: int = 0
    errors: int = 0
    # both
    bytes: int = 0


@dataclass
class ReplicaSample:
    """One typha replica at one sample. `counters` is None when it could not be scraped."""

    replica: int
    up: bool = False
    cpu: float = 0.0  # CPU seconds of every incarnation so far
    rss: int = 0
    restarts: int = 0
    error: str = ""  # why it could not be observed (busy, restarting, gone)
    connections: int = 0
    seq: int = 0
    keys: int = 0
    status: str = ""
    counters: TyphaCounters | None = None


@dataclass
class Sample:
    """The time series, one point every --sample-interval (t: seconds since the mode started)."""

    t: float
    phase: str = ""
    api: ApiCounters = field(default_factory=ApiCounters)
    driver_cpu: float = 0.0  # this process: the emulator, the churn writer and the sampling
    agents_cpu: float = 0.0  # every agent worker
    host_busy: float = 0.0
    host_total: float = 0.0
    churn_cpu: float = 0.0  # the churn generator alone
    events_written: int = 0
    rate_target: float = 0.0
    agents: AgentCounts | None = None
    typha: list[ReplicaSample] = field(default_factory=list)


@dataclass
class TimelineEvent:
    t: float
    event: str
    detail: dict[str, Any] = field(default_factory=dict)


@dataclass
class FaultRecord:
    """One injected fault and what it did. Only the fields of its kind are set."""

    at: float  # scheduled, seconds after churn start
    kind: str
    arg: str | None = None
    t: float = 0.0  # injected, seconds since the mode started
    t_churn: float = 0.0  # injected, seconds since churn started
    replica: int | None = None
    stopped_after: float | None = None
    ready_after: float | None = None
    recovered_seconds: float | None = None  # None: not recovered in time
    agents_disconnected: int | None = None
    agents_reconciled: int | None = None  # of those, how many came back by reconciling (only what differed)
    agents_resnapshotted: int | None = None  # ... and how many by a full snapshot
    bytes_to_agents: int | None = None  # received by all agents from the fault until recovered
    watches_cut: int | None = None
    relists_410: int | None = None
    list_requests: int | None = None
    list_bytes: int | None = None
    left_out: list[str] = field(default_factory=list)
    note: str = ""
    error: str = ""
    skipped: str = ""


@dataclass
class SyncFigures:
    """Start-up: every agent holding the first snapshot (typha) or its lists and watches (direct)."""

    all_agents_synced: bool = False
    all_agents_seconds: float | None = None
    in_sync: int = 0
    listed: int = 0
    per_agent_seconds: LatencySummary | None = None
    agent_bytes: int = 0


@dataclass
class ChurnFigures:
    events_written: int = 0
    seconds: float = 0.0
    rate_target: float = 0.0
    rate_achieved: float = 0.0
    per_step_events: list[int] | None = None
    generation_cpu_seconds: float = 0.0
    noop_writes: int = 0
    mix: dict[str, float] = field(default_factory=dict)


@dataclass
class EmulatorCpu:
    churn_window_seconds: float = 0.0
    cpu_seconds: float = 0.0  # excluding the churn generator
    churn_generation_cpu_seconds: float = 0.0

    @property
    def fraction(self) -> float | None:
        return self.cpu_seconds / self.churn_window_seconds if self.churn_window_seconds else None


@dataclass
class HostCpu:
    busy_fraction: float = 0.0
    cpus: int = 0
    agent_workers_cpu_fraction: float = 0.0


@dataclass
class WireFigures:
    agents_bytes_total: int = 0
    agents_bytes_churn: int | None = None
    api_bytes_startup: int = 0
    api_bytes_churn: int = 0


@dataclass
class TyphaFigures:
    cpu_seconds_churn: list[float] = field(default_factory=list)
    cpu_fraction_churn: list[float] = field(default_factory=list)
    rss_baseline: list[int] = field(default_factory=list)
    rss_after_sync: list[int] = field(default_factory=list)
    rss_end: list[int] = field(default_factory=list)
    rss_per_agent_bytes: float | None = None
    rss_per_agent_bytes_end: float | None = None
    restarts: list[int] = field(default_factory=list)
    churn_metrics: dict[str, float] = field(default_factory=dict)
    dedup_ratio: float | None = None
    # Before the first fault: relists after a 410 or a restart re-deliver every object unchanged.
    dedup_ratio_before_faults: float | None = None
    # typha's own view (typha_client_latency_seconds): breadcrumb creation to its write into each
    # client's socket, during churn. Unaffected by how fast the simulated agents read.
    write_latency: BucketQuantiles | None = None
    # typha's own view per breadcrumb (typha_fanout_latency_seconds): creation to the end of the fan-out
    # pass that wrote it to every agent ready for it, i.e. to its last socket write (1 ms .. 10 s buckets).
    fanout_latency: BucketQuantiles | None = None


@dataclass
class WriteCoverage:
    written: int = 0
    reached_agents: int = 0
    redelivered_after_restart: int = 0
    not_fanned_out: int = 0


@dataclass
class SampledAgent:
    agent: str
    keys: int = 0
    missing: int = 0
    stale: int = 0
    extra: int = 0
    digest_matches: bool = False

    @property
    def exact(self) -> bool:
        return self.digest_matches and not (self.missing or self.stale or self.extra)


@dataclass
class ReplicaCheck:
    replica: int
    keys: int | None = None
    matches_truth: bool = False
    error: str = ""


@dataclass
class Verification:
    passed: bool = False
    agents: int = 0


@dataclass
class TyphaVerification(Verification):
    converged: bool = False
    final_seqs: dict[str, int] = field(default_factory=dict)  # port -> final seq
    truth_keys: int = 0
    truth_seconds: float = 0.0
    replicas: list[ReplicaCheck] = field(default_factory=list)
    agents_at_final_seq: int = 0
    agents_in_sync: int = 0
    agents_not_connected: int = 0
    sampled: list[SampledAgent] = field(default_factory=list)
    sampled_agents: int = 0
    sampled_matching: int = 0
    missing: int = 0
    stale: int = 0
    extra: int = 0


@dataclass
class DirectVerification(Verification):
    agents_listed: int = 0
    watches_open_end: int = 0
    watches_wanted: int = 0
    events_received_churn: int = 0
    events_sent_churn: int = 0
    relists: int = 0
    errors: int = 0
    writes_seen: int = 0
    writes: int = 0


# -- per mode --------------------------------------------------------------------------------------------
@dataclass(kw_only=True)
class ModeResult:
    """What every mode measures."""

    mode: str
    agents: int = 0
    objects: int = 0
    seed_seconds: float = 0.0
    snapshot: SyncFigures | None = None
    api_startup: ApiCounters | None = None
    churn: ChurnFigures | None = None
    api_churn: ApiChurn | None = None
    emulator_cpu: EmulatorCpu | None = None
    host_cpu_churn: HostCpu | None = None
    wire: WireFigures | None = None
    latency: dict[str, LatencySummary] = field(default_factory=dict)
    latency_points: dict[str, list[tuple[float, float]]] = field(default_factory=dict)  # [t since churn, s]
    faults: list[FaultRecord] = field(default_factory=list)
    samples: list[Sample] = field(default_factory=list)
    events: list[TimelineEvent] = field(default_factory=list)
    churn_start_t: float = 0.0
    churn_end_t: float = 0.0
    error: str = ""  # why the mode ended early
    errors: list[str] = field(default_factory=list)  # what failed while tearing down


@dataclass(kw_only=True)
class TyphaResult(ModeResult):
    mode: str = "typha"
    replicas: int = 1
    processes: int = 0
    decoding_agents: list[int] = field(default_factory=list)
    typha_ready_seconds: float = 0.0
    typha_rss_baseline: list[int] = field(default_factory=list)
    typha_cpu_startup: list[float] = field(default_factory=list)
    rss_after_sync: list[int] = field(default_factory=list)
    connections_after_sync: list[int] = field(default_factory=list)
    typha: TyphaFigures | None = None
    histograms: dict[str, HistogramData] = field(default_factory=dict)
    writes: WriteCoverage | None = None
    reconnect: LatencySummary | None = None
    disconnect_reasons: dict[str, int] = field(default_factory=dict)
    verification: TyphaVerification = field(default_factory=TyphaVerification)

    @property
    def passed(self) -> bool:
        return self.verification.passed and not self.error


@dataclass(kw_only=True)
class DirectResult(ModeResult):
    mode: str = "direct"
    resources_watched: int = 0
    emulator_cpu_startup: float = 0.0
    verification: DirectVerification = field(default_factory=DirectVerification)

    @property
    def passed(self) -> bool:
        return self.verification.passed and not self.error


RunResult = TyphaResult | DirectResult
RESULT_TYPES: dict[str, type[TyphaResult] | type[DirectResult]] = {
    "typha": TyphaResult,
    "typha-tls": TyphaResult,  # `--tls both`: the same scenario over mutual TLS
    "direct": DirectResult,
}


@dataclass
class Results:
    scenario: Scenario
    command: str = ""
    started: str = ""
    host: HostInfo = field(default_factory=HostInfo)
    runs: dict[str, RunResult] = field(default_factory=dict)
    seconds: float = 0.0
    passed: bool = False
    version: int = RESULTS_VERSION

    def typha(self) -> TyphaResult | None:
        r = self.runs.get("typha")
        return r if isinstance(r, TyphaResult) else None

    def direct(self) -> DirectResult | None:
        r = self.runs.get("direct")
        return r if isinstance(r, DirectResult) else None


# -- files -----------------------------------------------------------------------------------------------
@dataclass
class _Header:
    """Results without its runs: msgspec decodes each run by its mode (it takes no union of dataclasses)."""

    scenario: Scenario
    command: str = ""
    started: str = ""
    host: HostInfo = field(default_factory=HostInfo)
    seconds: float = 0.0
    passed: bool = False
    version: int = RESULTS_VERSION


def _encode_hook(obj: Any) -> Any:
    if isinstance(obj, (set, frozenset)):
        return sorted(obj)
    raise NotImplementedError(f"not JSON serializable: {type(obj).__name__}")


def save(results: Results, path: str | Path) -> None:
    body = msgspec.json.encode(results, enc_hook=_encode_hook)
    Path(path).write_bytes(msgspec.json.format(body, indent=1))


def load(path: str | Path) -> Results:
    """Read and check a results.json; `ResultsError` says what is wrong and where."""
    try:
        raw = msgspec.json.decode(Path(path).read_bytes())
    except (OSError, msgspec.DecodeError) as exc:
        raise ResultsError(f"{path}: {exc}") from None
    if not isinstance(raw, dict) or not isinstance(raw.get("runs"), dict):
        raise ResultsError(f"{path}: not a loadtest results file (no 'runs' object)")
    if raw.get("version") not in READABLE_VERSIONS:
        raise ResultsError(f"{path}: results version {raw.get('version')!r}, this report reads {READABLE_VERSIONS}")
    runs: dict[str, RunResult] = {}
    try:
        for name, run in raw.pop("runs").items():
            kind = RESULT_TYPES.get(run.get("mode", name) if isinstance(run, dict) else name)
            if kind is None:
                raise ResultsError(f"{path}: run {name!r} has an unknown mode")
            runs[name] = msgspec.convert(run, kind, strict=False)
        header = msgspec.convert(raw, _Header, strict=False)
    except msgspec.ValidationError as exc:
        raise ResultsError(f"{path}: {exc}") from None
    return Results(runs=runs, **vars(header))
