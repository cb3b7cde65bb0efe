"""Prometheus metrics of felix's BGP side: BIRD's process, its configuration, and every session."""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from .birdctl import ProtocolStatus
from .render import Peer

BGP_STATES = ("Established", "Active", "Connect", "Idle", "OpenSent", "OpenConfirm", "Down", "Other")


class BgpMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = r = registry or CollectorRegistry()
        self.updates = Counter("felix_bgp_updates", "KV updates received from typha's bgp syncer.", registry=r)
        self.malformed = Counter("felix_bgp_malformed_updates", "bgp syncer updates skipped as unusable.", registry=r)
        self.typha_connected = Gauge("felix_bgp_typha_connected", "1 while the bgp syncer is connected.", registry=r)
        self.render_seconds = Histogram(
            "felix_bgp_render_seconds",
            "Time to render BIRD's configuration from the view.",
            buckets=(0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5),
            registry=r,
        )
        self.config_valid = Gauge(
            "felix_bgp_config_valid", "0 while BIRD rejects the latest rendered configuration.", registry=r
        )
        self.config_applies = Counter("felix_bgp_config_applies", "Configurations BIRD accepted.", registry=r)
        self.config_rejects = Counter("felix_bgp_config_rejects", "Configurations BIRD rejected.", registry=r)
        self.bird_running = Gauge("felix_bird_running", "1 while BIRD runs (started or adopted).", registry=r)
        self.bird_restarts = Counter("felix_bird_restarts", "Times BIRD died and was started again.", registry=r)
        self.bird_unreachable = Counter(
            "felix_bird_status_errors", "Status polls that could not reach BIRD's control socket.", registry=r
        )
        self.sessions = Gauge("felix_bgp_sessions", "BGP sessions by state.", ["state"], registry=r)
        labels = ["peer", "address", "type"]
        self.established = Gauge(
            "felix_bgp_peer_established", "1 while the session with this peer is Established.", labels, registry=r
        )
        self.imported = Gauge("felix_bgp_peer_routes_imported", "Routes imported from this peer.", labels, registry=r)
        self.exported = Gauge("felix_bgp_peer_routes_exported", "Routes exported to this peer.", labels, registry=r)
        self._peer_labels: set[tuple[str, str, str]] = set()
        self._restarts_seen = 0
        self._applies_seen = 0
        self._rejects_seen = 0

    def counters_from(self, restarts: int, applies: int, rejects: int) -> None:
        """Advance the counters to the manager's running totals."""
        self.bird_restarts.inc(restarts - self._restarts_seen)
        self.config_applies.inc(applies - self._applies_seen)
        self.config_rejects.inc(rejects - self._rejects_seen)
        self._restarts_seen, self._applies_seen, self._rejects_seen = restarts, applies, rejects

    def peers(self, expected: Iterable[Peer], seen: dict[str, ProtocolStatus]) -> None:
        """Per-peer gauges for the sessions this node should have; label sets of gone peers removed."""
        counts = dict.fromkeys(BGP_STATES, 0)
        current: set[tuple[str, str, str]] = set()
        for p in expected:
            labels = (p.name, p.address, p.kind)
            current.add(labels)
            st = seen.get(p.name)
            state = st.info.split()[0] if st is not None and st.info else "Down"
            counts[state if state in counts else "Other"] += 1
            self.established.labels(*labels).set(1 if st is not None and st.established else 0)
            self.imported.labels(*labels).set(st.routes_imported if st else 0)
            self.exported.labels(*labels).set(st.routes_exported if st else 0)
        for labels in self._peer_labels - current:
            for g in (self.established, self.imported, self.exported):
                g.remove(*labels)
        self._peer_labels = current
        for state, n in counts.items():
            self.sessions.labels(state).set(n)
