"""Typha's settings: CLI flags with TYPHA_* environment equivalents. Defaults follow Calico's Typha."""

from __future__ import annotations

import socket
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any

from common.settings import Setting, non_negative, parse_bool, parse_settings, port, positive

ENV_PREFIX = "TYPHA"
DATASTORES = ("kubernetes", "synthetic")


def _min_frame(v: int) -> str | None:
    return None if v >= 4096 else "must be at least 4096 bytes"


SETTINGS: tuple[Setting, ...] = (
    Setting(
        "datastore",
        str,
        "synthetic",
        "Where state comes from: 'kubernetes' (list+watch the API server) or 'synthetic' (an embedded generated cluster).",
        choices=DATASTORES,
    ),
    Setting("kubeconfig", str, "", "Kubeconfig file for the kubernetes datastore (default: in-cluster config)."),
    Setting("k8s_page_size", int, 500, "Objects per page when listing from the API server.", positive),
    Setting(
        "k8s_service_name", str, "", "typha's own Service: count ready replicas to rebalance connections ('' disables)."
    ),
    Setting("k8s_namespace", str, "pytypha", "Namespace of typha's Service."),
    Setting(
        "rebalance_interval", float, 30.0, "Seconds between recomputing this replica's connection target.", positive
    ),
    Setting("listen_host", str, "0.0.0.0", "Address the sync server listens on."),
    Setting("port", int, 5473, "Sync server port.", port),
    Setting("health_host", str, "0.0.0.0", "Address of the health endpoints."),
    Setting("health_port", int, 9098, "Port of /liveness and /readiness (0 disables).", port),
    Setting("metrics_port", int, 9093, "Port of /metrics (0 disables).", port),
    Setting("handshake_timeout", float, 10.0, "Seconds a client has to finish its hello.", positive),
    Setting("ping_interval", float, 10.0, "Seconds between server pings.", positive),
    Setting("ping_timeout", float, 60.0, "Seconds without a pong before a client is dropped.", positive),
    Setting("write_timeout", float, 120.0, "Seconds a write may stay blocked before the client is dropped.", positive),
    Setting("max_fall_behind", float, 300.0, "Seconds a client may lag behind the newest update.", positive),
    Setting(
        "new_client_grace",
        float,
        300.0,
        "Seconds after connecting before a client can be dropped for lagging.",
        non_negative,
    ),
    Setting("max_connections", int, 10000, "Connections above this are refused.", positive),
    Setting(
        "max_concurrent_snapshots",
        int,
        200,
        "Snapshots streamed at once; later agents queue (0: unlimited).",
        non_negative,
    ),
    Setting("max_frame", int, 1 << 20, "Largest frame accepted from a client, in bytes.", _min_frame),
    Setting("compression", parse_bool, True, "Offer zstd compression to clients that support it."),
    Setting(
        "resume_window",
        float,
        60.0,
        "Seconds of history kept so a reconnecting agent can resume without a snapshot (0 disables).",
        non_negative,
    ),
    Setting(
        "shutdown_timeout",
        float,
        300.0,
        "Termination grace period; connections are closed over 95% of it.",
        non_negative,
    ),
    Setting("server_id", str, "", "Name reported to clients (default: the hostname)."),
    Setting("synthetic_nodes", int, 100, "Synthetic datastore: number of nodes.", positive),
    Setting("synthetic_pods_per_node", int, 30, "Synthetic datastore: pods per node.", non_negative),
    Setting("synthetic_policies", int, 50, "Synthetic datastore: network policies.", non_negative),
    Setting("synthetic_churn_rate", float, 10.0, "Synthetic datastore: changes per second (0 for none).", non_negative),
    Setting(
        "synthetic_churn_seconds",
        float,
        0.0,
        "Synthetic datastore: stop churning after this long (0: never).",
        non_negative,
    ),
    Setting("synthetic_seed", int, 1, "Synthetic datastore: random seed."),
    Setting("log_level", str, "INFO", "Logging level.", choices=("DEBUG", "INFO", "WARNING", "ERROR")),
)


def _ping_order(v: dict[str, Any]) -> str | None:
    if v["ping_timeout"] <= v["ping_interval"]:
        return f"--ping-timeout ({v['ping_timeout']}) must be longer than --ping-interval ({v['ping_interval']})"
    return None


@dataclass(slots=True)
class TyphaConfig:
    datastore: str
    kubeconfig: str
    k8s_page_size: int
    k8s_service_name: str
    k8s_namespace: str
    rebalance_interval: float
    listen_host: str
    port: int
    health_host: str
    health_port: int
    metrics_port: int
    handshake_timeout: float
    ping_interval: float
    ping_timeout: float
    write_timeout: float
    max_fall_behind: float
    new_client_grace: float
    max_connections: int
    max_concurrent_snapshots: int
    max_frame: int
    compression: bool
    resume_window: float
    shutdown_timeout: float
    server_id: str
    synthetic_nodes: int
    synthetic_pods_per_node: int
    synthetic_policies: int
    synthetic_churn_rate: float
    synthetic_churn_seconds: float
    synthetic_seed: int
    log_level: str

    @property
    def drain_seconds(self) -> float:
        return 0.95 * self.shutdown_timeout


assert [f.name for f in fields(TyphaConfig)] == [s.name for s in SETTINGS], "keep TyphaConfig and SETTINGS aligned"


def load_config(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> TyphaConfig:
    values = parse_settings(
        SETTINGS,
        ENV_PREFIX,
        argv,
        environ,
        prog="typha",
        description="Fan-out cache between a datastore and thousands of node agents.",
        cross_checks=[_ping_order],
    )
    if not values["server_id"]:
        values["server_id"] = socket.gethostname()
    return TyphaConfig(**values)
