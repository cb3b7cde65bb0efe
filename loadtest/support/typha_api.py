"""What a typha replica says about itself: typed views of its `/status` and `/metrics`.

typha serves `/status` (JSON: per syncer its sync status, head seq, key count and, on request, the
state digest) on its health port, and Prometheus text on its metrics port. Several load-test commands
read both; the JSON layout and every metric name the load tests use are written here once, so a
renamed metric breaks one module (and the end-to-end tests), not three.

`/status` is decoded with msgspec into frozen dataclasses: a field of the wrong type is an error that
names the field, not a `KeyError` or a silent zero far from where the answer was read.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

import msgspec
from prometheus_client.parser import text_string_to_metric_families

FELIX = "felix"  # the syncer every load test follows

# Metric names as typha exposes them (counters with their `_total` suffix). Per-syncer metrics carry a
# `syncer` label; the others are process-wide.
UPDATES = "typha_updates_total"
UPDATES_SKIPPED = "typha_updates_skipped_total"
BREADCRUMBS = "typha_breadcrumbs_total"
BREADCRUMB_BYTES = "typha_breadcrumb_bytes_total"
SNAPSHOTS_GENERATED = "typha_snapshots_generated_total"
SNAPSHOTS_REUSED = "typha_snapshots_reused_total"
SNAPSHOT_WIRE_BYTES = "typha_snapshot_wire_bytes_total"
BYTES_SENT = "typha_bytes_sent_total"
CONNECTIONS_ACTIVE = "typha_connections_active"
CONNECTIONS_STREAMING = "typha_connections_streaming"
CONNECTIONS_ACCEPTED = "typha_connections_accepted_total"
CLIENT_LATENCY = "typha_client_latency_seconds"  # histogram: breadcrumb creation to its write to a client
FANOUT_LATENCY = "typha_fanout_latency_seconds"  # histogram, per breadcrumb: creation to its last write


@dataclass(frozen=True)
class SyncerStatus:
    status: str = ""  # SyncStatus name: WAIT_FOR_DATASTORE, RESYNC_IN_PROGRESS, IN_SYNC
    seq: int = 0
    keys: int = 0
    digest: str | None = None  # only with /status?digest=1
    digest_seq: int = 0  # the seq the digest describes (typha computes it at most once a second)


@dataclass(frozen=True)
class TyphaStatus:
    server_id: str = ""
    connections: int = 0
    syncers: dict[str, SyncerStatus] = field(default_factory=dict)

    @classmethod
    def decode(cls, body: bytes) -> TyphaStatus:
        return msgspec.json.decode(body, type=cls)

    def syncer(self, name: str = FELIX) -> SyncerStatus:
        return self.syncers.get(name, SyncerStatus())


@dataclass
class TyphaCounters:
    """The counters and gauges a load test follows over time (one syncer's, plus the process-wide ones)."""

    updates: float = 0.0
    skipped: float = 0.0
    breadcrumbs: float = 0.0
    breadcrumb_bytes: float = 0.0
    bytes_sent: float = 0.0
    snapshots_generated: float = 0.0
    snapshots_reused: float = 0.0
    snapshot_wire_bytes: float = 0.0
    connections_active: float = 0.0
    connections_streaming: float = 0.0
    accepted: float = 0.0


# TyphaCounters field -> (metric, per syncer?)
_COUNTERS: dict[str, tuple[str, bool]] = {
    "updates": (UPDATES, True),
    "skipped": (UPDATES_SKIPPED, True),
    "breadcrumbs": (BREADCRUMBS, True),
    "breadcrumb_bytes": (BREADCRUMB_BYTES, True),
    "bytes_sent": (BYTES_SENT, False),
    "snapshots_generated": (SNAPSHOTS_GENERATED, True),
    "snapshots_reused": (SNAPSHOTS_REUSED, True),
    "snapshot_wire_bytes": (SNAPSHOT_WIRE_BYTES, True),
    "connections_active": (CONNECTIONS_ACTIVE, False),
    "connections_streaming": (CONNECTIONS_STREAMING, False),
    "accepted": (CONNECTIONS_ACCEPTED, False),
}
assert set(_COUNTERS) == {f.name for f in fields(TyphaCounters)}

_Labels = tuple[tuple[str, str], ...]


class TyphaMetrics:
    """One scrape of typha's /metrics: sample values by name and labels."""

    def __init__(self, samples: dict[tuple[str, _Labels], float]) -> None:
        self._samples = samples

    @classmethod
    def parse(cls, text: str) -> TyphaMetrics:
        samples: dict[tuple[str, _Labels], float] = {}
        for fam in text_string_to_metric_families(text):
            for s in fam.samples:
                samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
        return cls(samples)

    def get(self, name: str, **labels: str) -> float:
        """The sample's value; 0 when typha does not expose it (yet)."""
        return self._samples.get((name, tuple(sorted(labels.items()))), 0.0)

    def counters(self, syncer: str = FELIX) -> TyphaCounters:
        values: dict[str, Any] = {
            attr: self.get(name, syncer=syncer) if per_syncer else self.get(name)
            for attr, (name, per_syncer) in _COUNTERS.items()
        }
        return TyphaCounters(**values)

    def by_label(self, name: str, label: str) -> dict[str, float]:
        """{label value: sample value} of a metric with that one label (e.g. drops by reason)."""
        return {
            labels[0][1]: v
            for (n, labels), v in self._samples.items()
            if n == name and len(labels) == 1 and labels[0][0] == label
        }

    def latency_buckets(self, name: str = CLIENT_LATENCY) -> dict[float, float]:
        """Cumulative histogram buckets {upper bound: count} (le=+Inf included as inf)."""
        bucket = name + "_bucket"
        out: dict[float, float] = {}
        for (n, labels), v in self._samples.items():
            if n == bucket and len(labels) == 1 and labels[0][0] == "le":
                out[float(labels[0][1])] = v
        return out


def histogram_quantiles(buckets: dict[float, float], qs: tuple[float, ...] = (50, 99)) -> dict[str, float | None]:
    """Quantiles (upper bucket bounds) of a cumulative Prometheus histogram {le: count}, and its count."""
    bounds = sorted(buckets)
    total = buckets[bounds[-1]] if bounds else 0.0
    out: dict[str, float | None] = {"count": total}
    for q in qs:
        want = total * q / 100
        out[f"p{q:g}"] = next((b for b in bounds if buckets[b] >= want), None) if total else None
    return out
