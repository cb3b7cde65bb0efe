"""Felix's Prometheus metrics (own registry, so tests can run several agents in one process)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

_APPLY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


class FelixMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.updates = Counter("felix_updates", "KV updates received from typha.", registry=r)
        self.malformed = Counter(
            "felix_malformed_updates", "Updates skipped because their value was unusable.", registry=r
        )
        self.typha_connected = Gauge("felix_typha_connected", "1 while connected to a typha replica.", registry=r)
        self.typha_reconnects = Counter("felix_typha_disconnects", "Connections to typha lost.", registry=r)
        self.typha_status = Gauge(
            "felix_typha_sync_status", "Typha's sync status: 1 wait, 2 resync, 3 in-sync.", registry=r
        )
        self.apply_seconds = Histogram(
            "felix_route_apply_seconds",
            "Time to hand one batch of route changes to the kernel.",
            buckets=_APPLY_BUCKETS,
            registry=r,
        )
        self.routes_programmed = Gauge("felix_routes_programmed", "Routes felix owns in the kernel.", registry=r)
        self.routes_pending = Gauge(
            "felix_routes_pending",
            "Routes that should be in the kernel but are not, by reason (interface missing or down, device missing, "
            "conflict with another protocol's route, unresolved by the calculation).",
            ["reason"],
            registry=r,
        )
        self.routes_failing = Gauge(
            "felix_routes_failing", "Routes waiting to retry after a netlink error.", registry=r
        )
        self.netlink_errors = Counter(
            "felix_netlink_errors", "Netlink requests or dumps that failed (routes, neighbours, devices).", registry=r
        )
        self.resyncs = Counter("felix_route_resyncs", "Full route resyncs against the kernel.", registry=r)
        self.drift_repaired = Counter(
            "felix_route_drift_repaired", "Routes found wrong, missing or extra and repaired.", registry=r
        )
        self.policies_rejected = Counter(
            "felix_policies_rejected",
            "Policies and profiles rejected because they cannot be rendered (each distinct reason once).",
            registry=r,
        )
        self.policies_rejected_now = Gauge(
            "felix_policies_rejected_current", "Policies and profiles currently rejected (not enforced).", registry=r
        )
        self.policies_active = Gauge(
            "felix_policies_active", "Policies applying to at least one local endpoint.", registry=r
        )
        self.policy_calc_seconds = Histogram(
            "felix_policy_calc_seconds",
            "Time to calculate one batch of policy changes (before the dataplane applies it).",
            buckets=_APPLY_BUCKETS,
            registry=r,
        )
