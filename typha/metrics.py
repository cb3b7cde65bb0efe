"""Prometheus metrics for typha.

Counters that the cache keeps as plain integers (updates, skips, breadcrumbs, snapshots) are exported by
a custom collector that reads them at scrape time, so the hot path pays nothing for them.

Per-write observations (client latency, write latency, KVs per message, bytes) happen once per client
per fan-out pass: at 1,000 clients and 100 passes a second that is 100k observations a second, and
prometheus-client's thread-safe Histogram (a lock plus a bucket search, about 1.5 us) made them a
large share of the server's CPU. `HotHistogram` is the lock-free, single-threaded equivalent (the
event loop is the only writer) and is exported through the same collector at scrape time.
"""

from __future__ import annotations

from bisect import bisect_left
from collections import Counter as Counter_
from collections.abc import Callable, Iterable, Mapping
from typing import Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from protocol import SyncStatus

from .snapcache import SnapCache

_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
#: Fine buckets, 1 ms to 10 s in steps of at most 1.5x, for typha's own update latencies: their p99 must
#: be readable, not "somewhere between 50 and 250 ms".
_FINE_LATENCY_BUCKETS = (
    *(0.001, 0.0015, 0.002, 0.003, 0.005, 0.0075),
    *(0.01, 0.015, 0.02, 0.03, 0.05, 0.075),
    *(0.1, 0.15, 0.2, 0.3, 0.5, 0.75),
    *(1, 1.5, 2, 3, 5, 7.5, 10),
)
_SEND_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
_KV_BUCKETS = (0, 1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 10000)


class HotHistogram:
    """A histogram for the event loop's hot path: no lock, and `observe` takes a weight."""

    __slots__ = ("buckets", "counts", "doc", "name", "sum")

    def __init__(self, name: str, doc: str, buckets: tuple[float, ...]) -> None:
        self.name = name
        self.doc = doc
        self.buckets = tuple(sorted(buckets))
        self.counts = [0] * (len(self.buckets) + 1)  # the last slot is +Inf
        self.sum = 0.0

    def observe(self, value: float, n: int = 1) -> None:
        self.counts[bisect_left(self.buckets, value)] += n
        self.sum += value * n

    @property
    def count(self) -> int:
        return sum(self.counts)

    def family(self) -> HistogramMetricFamily:
        cumulative = []
        acc = 0
        for bound, c in zip((*self.buckets, float("inf")), self.counts):
            acc += c
            cumulative.append((str(bound) if bound != float("inf") else "+Inf", acc))
        return HistogramMetricFamily(self.name, self.doc, buckets=cumulative, sum_value=self.sum)


class HotCounter:
    __slots__ = ("doc", "name", "value")

    def __init__(self, name: str, doc: str) -> None:
        self.name, self.doc = name, doc
        self.value: float = 0

    def inc(self, n: float = 1) -> None:
        self.value += n

    def family(self) -> CounterMetricFamily:
        return CounterMetricFamily(self.name, self.doc, value=self.value)


class _HotCollector(Collector):
    def __init__(self, metrics: list[HotHistogram | HotCounter]) -> None:
        self._metrics = metrics

    def collect(self) -> Iterable[Metric]:
        return [m.family() for m in self._metrics]


class _CacheCollector(Collector):
    def __init__(self, caches: Callable[[], Mapping[str, SnapCache]]) -> None:
        self._caches = caches

    def collect(self) -> Iterable[Metric]:
        fams: dict[str, CounterMetricFamily | GaugeMetricFamily] = {
            "updates": CounterMetricFamily("typha_updates", "Updates received from the datastore.", labels=["syncer"]),
            "skipped": CounterMetricFamily(
                "typha_updates_skipped",
                "Updates dropped because nothing changed (identical value, or delete of an unknown key).",
                labels=["syncer"],
            ),
            "breadcrumbs": CounterMetricFamily("typha_breadcrumbs", "Breadcrumbs published.", labels=["syncer"]),
            "bc_bytes": CounterMetricFamily(
                "typha_breadcrumb_bytes", "Wire bytes of published breadcrumbs.", labels=["syncer"]
            ),
            "gen": CounterMetricFamily("typha_snapshots_generated", "Snapshots built.", labels=["syncer"]),
            "reused": CounterMetricFamily(
                "typha_snapshots_reused", "Snapshots reused by a later client.", labels=["syncer"]
            ),
            "partial": CounterMetricFamily(
                "typha_partial_snapshots",
                "Reconciles answered with the contents of the buckets that differed.",
                labels=["syncer"],
            ),
            "partial_kvs": CounterMetricFamily(
                "typha_partial_snapshot_kvs", "KVs sent in answer to reconciles.", labels=["syncer"]
            ),
            "raw": CounterMetricFamily(
                "typha_snapshot_raw_bytes", "Uncompressed KV bytes encoded into snapshots.", labels=["syncer"]
            ),
            "wire": CounterMetricFamily(
                "typha_snapshot_wire_bytes", "Encoded (maybe compressed) snapshot bytes.", labels=["syncer"]
            ),
            "seq": GaugeMetricFamily(
                "typha_breadcrumb_seq_number", "Sequence number of the newest breadcrumb.", labels=["syncer"]
            ),
            "size": GaugeMetricFamily("typha_cache_size", "Keys in the cache.", labels=["syncer"]),
            "status": GaugeMetricFamily(
                "typha_cache_sync_status", "Sync status: 1 wait-for-datastore, 2 resync, 3 in-sync.", labels=["syncer"]
            ),
        }
        for name, cache in self._caches().items():
            st = cache.stats
            fams["updates"].add_metric([name], st.updates_total)
            fams["skipped"].add_metric([name], st.updates_skipped)
            fams["breadcrumbs"].add_metric([name], st.breadcrumbs)
            fams["bc_bytes"].add_metric([name], st.breadcrumb_bytes)
            fams["gen"].add_metric([name], st.snapshots_generated)
            fams["reused"].add_metric([name], st.snapshots_reused)
            fams["partial"].add_metric([name], st.partial_snapshots)
            fams["partial_kvs"].add_metric([name], st.partial_kvs)
            fams["raw"].add_metric([name], st.snapshot_raw_bytes)
            fams["wire"].add_metric([name], st.snapshot_wire_bytes)
            fams["seq"].add_metric([name], cache.head.seq)
            fams["size"].add_metric([name], len(cache))
            fams["status"].add_metric([name], int(cache.status))
        return list(fams.values())


class DatastoreStats(Protocol):
    """What a datastore reports per resource (typha.datastores.kubernetes.ResourceStats)."""

    errors: Counter_[str]
    events: int
    relists: Counter_[str]
    audits: Counter_[str]
    divergences: Counter_[str]
    malformed: int
    state: SyncStatus
    last_error: str


class _DatastoreCollector(Collector):
    def __init__(self, stats: Callable[[], Mapping[str, DatastoreStats]]) -> None:
        self._stats = stats

    def collect(self) -> Iterable[Metric]:
        errors = CounterMetricFamily(
            "typha_datastore_errors",
            "Failed datastore requests by resource and kind (unreachable, tls, timeout, watch-silent, forbidden, ...).",
            labels=["resource", "kind"],
        )
        events = CounterMetricFamily("typha_datastore_events", "Watch events received.", labels=["resource"])
        relists = CounterMetricFamily(
            "typha_datastore_relists",
            "Relists by reason: gone (410, version too old), too-large (504, the API server has not reached our "
            "version), outage (the connection failed), audit (the periodic audit found a divergence).",
            labels=["resource", "reason"],
        )
        audits = CounterMetricFamily(
            "typha_datastore_audits",
            "Audits of the cache against the API server by result: ok, diverged (repaired by a relist), failed, "
            "skipped (the resource was not being watched).",
            labels=["resource", "result"],
        )
        divergences = CounterMetricFamily(
            "typha_datastore_audit_divergences",
            "Objects the audit found missing from the cache, phantom (in the cache, not on the API server) or stale.",
            labels=["resource", "kind"],
        )
        malformed = CounterMetricFamily(
            "typha_datastore_malformed", "Watch lines that were not events, skipped.", labels=["resource"]
        )
        state = GaugeMetricFamily(
            "typha_datastore_resource_status",
            "Per resource: 1 wait-for-datastore, 2 resync, 3 in-sync (a cache takes the lowest of its resources).",
            labels=["resource"],
        )
        for resource, st in self._stats().items():
            for kind, n in st.errors.items():
                errors.add_metric([resource, kind], n)
            events.add_metric([resource], st.events)
            for reason, n in st.relists.items():
                relists.add_metric([resource, reason], n)
            for result, n in st.audits.items():
                audits.add_metric([resource, result], n)
            for kind, n in st.divergences.items():
                divergences.add_metric([resource, kind], n)
            malformed.add_metric([resource], st.malformed)
            state.add_metric([resource], int(st.state))
        return [errors, events, relists, audits, divergences, malformed, state]


class ServerMetrics:
    """All of typha's metrics, in their own registry (tests can run several servers in one process)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.accepted = Counter("typha_connections_accepted", "Connections accepted.", registry=r)
        self.resumed = Counter(
            "typha_connections_resumed", "Reconnections continued from their last seq, without a snapshot.", registry=r
        )
        self.reconciled = Counter(
            "typha_connections_reconciled",
            "Reconnections that received only the buckets their summary showed to differ, without a snapshot.",
            registry=r,
        )
        self.reconcile_tops = Histogram(
            "typha_reconcile_differing_tops",
            "Top buckets (of 128) whose digest differed from a reconnecting agent's.",
            buckets=(0, 1, 2, 4, 8, 16, 32, 64, 128),
            registry=r,
        )
        self.reconcile_leaves = Histogram(
            "typha_reconcile_wanted_leaves",
            "Leaves (of 16,384) a reconnecting agent asked for.",
            buckets=(0, 1, 4, 16, 64, 256, 1024, 4096, 16384),
            registry=r,
        )
        self.dropped = Counter(
            "typha_connections_dropped", "Connections closed by the server, by reason.", ["reason"], registry=r
        )
        self.active = Gauge("typha_connections_active", "Open connections.", registry=r)
        self.snapshots_queued = Gauge(
            "typha_snapshots_queued", "Connections waiting for their snapshot (or reconcile) to start.", registry=r
        )
        self.snapshot_streams = Gauge(
            "typha_snapshot_streams", "Snapshots (full or partial) being written now.", registry=r
        )
        self.streaming = Gauge(
            "typha_connections_streaming", "Connections past their snapshot, following the breadcrumbs.", registry=r
        )
        self.snapshot_send = Histogram(
            "typha_client_snapshot_send_seconds",
            "Time to send a snapshot to one client.",
            buckets=_SEND_BUCKETS,
            registry=r,
        )
        self.client_latency = HotHistogram(
            "typha_client_latency_seconds", "Breadcrumb creation to its write to a client.", _FINE_LATENCY_BUCKETS
        )
        self.fanout_latency = HotHistogram(
            "typha_fanout_latency_seconds",
            "Per breadcrumb: its creation to the end of the fan-out pass that wrote it to every following client "
            "ready to take it (its last socket write, but for clients whose writes are paused).",
            _FINE_LATENCY_BUCKETS,
        )
        self.write_latency = HotHistogram(
            "typha_client_write_latency_seconds", "Time spent in one write to a client socket.", _LATENCY_BUCKETS
        )
        self.next_breadcrumb_latency = Histogram(
            "typha_next_breadcrumb_latency_seconds",
            "Breadcrumb creation to the start of the fan-out pass that delivers it.",
            buckets=_FINE_LATENCY_BUCKETS,
            registry=r,
        )
        self.ping_latency = Histogram(
            "typha_ping_latency_seconds", "Ping round trip.", buckets=_LATENCY_BUCKETS, registry=r
        )
        self.kvs_per_msg = HotHistogram("typha_kvs_per_msg", "KVs carried by one write to a client.", _KV_BUCKETS)
        self.bytes_sent = HotCounter("typha_bytes_sent", "Bytes written to clients.")
        self.fanout_passes = HotCounter(
            "typha_fanout_passes",
            "Fan-out passes (each writes once to every following client ready for it), spaced by "
            "--fanout-write-rate within --fanout-latency-budget.",
        )
        self.snapshot_held_back = HotCounter(
            "typha_snapshot_passes_held_back",
            "Snapshot writer passes that wrote nothing because the streams' send buffers held "
            "--snapshot-buffer-bytes (agents reading slower than typha writes).",
        )
        self.handshaking = Gauge(
            "typha_connections_handshaking",
            "Connections that have not finished their TLS handshake and hello.",
            registry=r,
        )
        self.tls_enabled = Gauge(
            "typha_tls_enabled", "1 when the sync port serves mutual TLS, 0 when it serves plaintext.", registry=r
        )
        self.tls_handshakes = Counter(
            "typha_tls_handshakes",
            "TLS handshakes by result: ok, or why the client was refused (unknown-ca, expired, no-certificate, "
            "bad-identity, plaintext-client, timeout, ...).",
            ["result"],
            registry=r,
        )
        self.tls_reloads = Counter(
            "typha_tls_reloads",
            "Certificate files changed and reloaded (ok) or not loadable (failed).",
            ["result"],
            registry=r,
        )
        r.register(
            _HotCollector(
                [
                    self.client_latency,
                    self.fanout_latency,
                    self.write_latency,
                    self.kvs_per_msg,
                    self.bytes_sent,
                    self.fanout_passes,
                    self.snapshot_held_back,
                ]
            )
        )

    def watch_caches(self, caches: Callable[[], Mapping[str, SnapCache]]) -> None:
        self.registry.register(_CacheCollector(caches))

    def watch_datastore(self, stats: Callable[[], Mapping[str, DatastoreStats]]) -> None:
        """Export a datastore's per-resource health (read at scrape time)."""
        self.registry.register(_DatastoreCollector(stats))
