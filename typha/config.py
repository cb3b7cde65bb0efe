"""Typha's settings, each declared once: CLI flags with TYPHA_* environment equivalents. Defaults follow Calico's Typha.

`ServerConfig` holds the sync server's settings (and its internal knobs, plain fields that are not
settings); `TyphaConfig` extends it with the process's: datastore, endpoints, shutdown. `SETTINGS`,
the flags, the env vars and the README table are all derived from these two declarations
(`common.settings`).
"""

from __future__ import annotations

import socket
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from common.settings import load_settings, non_negative, port, positive, setting, settings_of
from protocol import DEFAULT_MAX_CLIENT_FRAME

ENV_PREFIX = "TYPHA"
DATASTORES = ("kubernetes", "synthetic")


def _min_frame(v: int) -> str | None:
    return None if v >= 4096 else "must be at least 4096 bytes"


@dataclass(slots=True)
class ServerConfig:
    """The sync server's settings; tests and tools construct it directly (``ServerConfig(port=0)``)."""

    host: str = setting("0.0.0.0", "Address the sync server listens on.", option="listen_host")
    port: int = setting(5473, "Sync server port.", port)
    handshake_timeout: float = setting(10.0, "Seconds a client has to finish its hello.", positive)
    ping_interval: float = setting(10.0, "Seconds between server pings.", positive)
    ping_timeout: float = setting(60.0, "Seconds without a pong before a client is dropped.", positive)
    write_timeout: float = setting(120.0, "Seconds a write may stay blocked before the client is dropped.", positive)
    max_fall_behind: float = setting(300.0, "Seconds a client may lag behind the newest update.", positive)
    new_client_grace: float = setting(
        300.0, "Seconds after connecting before a client can be dropped for lagging.", non_negative
    )
    max_connections: int = setting(10_000, "Connections above this are refused.", positive)
    max_concurrent_snapshots: int = setting(
        200, "Snapshots streamed at once; later agents queue (0: unlimited).", non_negative
    )
    max_frame: int = setting(DEFAULT_MAX_CLIENT_FRAME, "Largest frame accepted from a client, in bytes.", _min_frame)
    compression: bool = setting(True, "Offer zstd compression to clients that support it.")
    reconcile: bool = setting(
        True,
        "Let an agent whose stream cannot be resumed (another replica, a restarted one) offer the summary of its "
        "view and receive only the buckets that differ, instead of a full snapshot.",
    )
    server_id: str = setting("", "Name reported to clients (default: the hostname).")
    shutdown_max_drop_interval: float = setting(
        1.0,
        "On shutdown, the longest pause between two closed connections (Calico's ShutdownConnectionDropIntervalMaxSecs).",
        non_negative,
    )
    # Internal knobs, not settings.
    write_high_water: int = 256 * 1024
    max_write_bytes: int = 1 << 20
    housekeeping_interval: float = 1.0
    close_timeout: float = 5.0


@dataclass(slots=True)
class TyphaConfig(ServerConfig):
    """Everything `typha` is configured with: the sync server's settings and the process's."""

    datastore: str = setting(
        "synthetic",
        "Where state comes from: 'kubernetes' (list+watch the API server) or 'synthetic' (an embedded generated cluster).",
        choices=DATASTORES,
    )
    kubeconfig: str = setting("", "Kubeconfig file for the kubernetes datastore (default: in-cluster config).")
    k8s_page_size: int = setting(500, "Objects per page when listing from the API server.", positive)
    k8s_watch_silence_timeout: float = setting(
        120.0,
        "Seconds a watch may go without an event or bookmark before typha checks that the API server is alive "
        "(twice its bookmark interval).",
        positive,
    )
    k8s_service_name: str = setting(
        "", "typha's own Service: count ready replicas to rebalance connections ('' disables)."
    )
    k8s_namespace: str = setting("pytypha", "Namespace of typha's Service.")
    rebalance_interval: float = setting(30.0, "Seconds between recomputing this replica's connection target.", positive)
    health_host: str = setting("0.0.0.0", "Address of the health endpoints.")
    health_port: int = setting(9098, "Port of /liveness and /readiness (0 disables).", port)
    metrics_port: int = setting(9093, "Port of /metrics (0 disables).", port)
    resume_window: float = setting(
        60.0,
        "Seconds of history kept so a reconnecting agent can resume without a snapshot (0 disables).",
        non_negative,
    )
    shutdown_timeout: float = setting(
        300.0,
        "Termination grace period; connections are closed over at most 95% of it (see --shutdown-max-drop-interval).",
        non_negative,
    )
    synthetic_nodes: int = setting(100, "Synthetic datastore: number of nodes.", positive)
    synthetic_pods_per_node: int = setting(30, "Synthetic datastore: pods per node.", non_negative)
    synthetic_policies: int = setting(50, "Synthetic datastore: network policies.", non_negative)
    synthetic_churn_rate: float = setting(10.0, "Synthetic datastore: changes per second (0 for none).", non_negative)
    synthetic_churn_seconds: float = setting(
        0.0, "Synthetic datastore: stop churning after this long (0: never).", non_negative
    )
    synthetic_seed: int = setting(1, "Synthetic datastore: random seed.")
    log_level: str = setting("INFO", "Logging level.", choices=("DEBUG", "INFO", "WARNING", "ERROR"))

    @property
    def drain_seconds(self) -> float:
        return 0.95 * self.shutdown_timeout


SETTINGS = settings_of(TyphaConfig)


def _ping_order(v: dict[str, Any]) -> str | None:
    if v["ping_timeout"] <= v["ping_interval"]:
        return f"--ping-timeout ({v['ping_timeout']}) must be longer than --ping-interval ({v['ping_interval']})"
    return None


def load_config(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> TyphaConfig:
    cfg = load_settings(
        TyphaConfig,
        ENV_PREFIX,
        argv,
        environ,
        prog="typha",
        description="Fan-out cache between a datastore and thousands of node agents.",
        cross_checks=[_ping_order],
    )
    if not cfg.server_id:
        cfg.server_id = socket.gethostname()
    return cfg
