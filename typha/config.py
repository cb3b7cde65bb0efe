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

ENV_PREFIX = "TYPHA"
DATASTORES = ("kubernetes", "synthetic")


#: A hello is a few hundred bytes; this leaves room for extensions while a silent peer's partial frame
#: stays small.
DEFAULT_MAX_HELLO_FRAME = 16 * 1024
#: After its hello a client sends only PING, PONG and GOODBYE (tens of bytes each).
DEFAULT_MAX_FRAME = 4 * 1024


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
    max_connections: int = setting(
        10_000, "Agents (connections past their hello) above this are refused with server-full.", positive
    )
    max_handshakes: int = setting(
        1_000,
        "Connections still in their handshake (TLS and hello) kept at once, apart from --max-connections; "
        "beyond it the oldest is closed.",
        positive,
    )
    snapshot_buffer_bytes: int = setting(
        64 << 20,
        "Snapshot bytes the streams going may hold in their transport buffers; later agents wait their turn "
        "(reconciles first).",
        positive,
    )
    max_concurrent_snapshots: int = setting(
        0, "Full snapshots streamed at once, besides --snapshot-buffer-bytes (0: no limit).", non_negative
    )
    snapshot_stall_timeout: float = setting(
        15.0,
        "Seconds a snapshot stream may make no progress (the agent reads nothing) before the agent is "
        "dropped and its snapshot slot goes to the next one.",
        positive,
    )
    fanout_latency_budget: float = setting(
        0.1,
        "Seconds two fan-out passes may be apart at most (unless a pass itself takes longer): passes are spaced "
        "by the fleet's size (agents / --fanout-write-rate s) so each agent gets at most one write per interval; this bounds "
        "what the spacing adds to an update's latency.",
        positive,
    )
    # 50,000: a quarter of a core at 5 us a write, about what passes cost unpaced at 1,000 agents and 1,000
    # updates/s (so a small fleet keeps its latency); the budget takes over above budget x rate = 5,000 agents.
    fanout_write_rate: float = setting(
        50_000.0,
        "Socket writes a second the fan-out aims at: the interval between two passes is the number of agents "
        "divided by this, within --fanout-latency-budget.",
        positive,
    )
    max_hello_frame: int = setting(
        DEFAULT_MAX_HELLO_FRAME,
        "Largest frame accepted before a client's hello (the hello itself), in bytes.",
        _min_frame,
    )
    max_frame: int = setting(
        DEFAULT_MAX_FRAME,
        "Largest frame accepted from a client after its hello (it then sends only PING, PONG and GOODBYE), in bytes.",
        _min_frame,
    )
    # 64 KiB (the kernel doubles it): 10,000 agents that read 1 KiB/s held 1.5 GB of kernel memory with
    # 256 KiB, 27 MB with this, and snapshots to 500 agents on loopback took as long (docs/security.md).
    socket_send_buffer: int = setting(
        64 * 1024,
        "Kernel send buffer of each agent's socket (SO_SNDBUF), in bytes; bounds the kernel memory an agent "
        "that stops reading can hold (0: the kernel's autotuning, up to 4 MiB each).",
        non_negative,
    )
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
    # Mutual TLS, under Calico's names. All three files, and one of the client identities, or none.
    ca_file: str = setting(
        "", "CA certificate file (PEM) that agents' certificates must be signed by; enables TLS.", option="cafile"
    )
    server_cert_file: str = setting("", "This server's certificate file (PEM).", option="servercertfile")
    server_key_file: str = setting("", "This server's private key file (PEM).", option="serverkeyfile")
    client_cn: str = setting(
        "", "Common Name an agent's certificate must carry (or the URI SAN below).", option="clientcn"
    )
    client_uri_san: str = setting(
        "", "URI SAN an agent's certificate must carry (or the Common Name above).", option="clienturisan"
    )
    # Internal knobs, not settings.
    write_high_water: int = 256 * 1024
    max_write_bytes: int = 1 << 20
    snapshot_pass_bytes: int = 1 << 20  # snapshot bytes written per pass of the event loop (typha.snapsched)
    housekeeping_interval: float = 1.0
    close_timeout: float = 5.0
    # Bytes a client may send: its TLS handshake and hello at once (this beyond --max-hello-frame), then
    # a little (a WANT, PONGs, a GOODBYE) and a trickle; and the PINGs it may send.
    inbound_handshake_slack: int = 16 * 1024
    inbound_burst: int = 8 * 1024
    inbound_rate: int = 1024
    ping_burst: int = 10
    ping_rate: float = 1.0
    socket_receive_buffer: int = 64 * 1024  # SO_RCVBUF: clients send little, so a small window is enough
    tls_check_interval: float = 2.0  # seconds between looks at the certificate files


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
    k8s_audit_interval: float = setting(
        300.0,
        "Seconds between audits of the cache against the API server: names and resourceVersions listed at the "
        "version the cache is at, any difference counted, logged and repaired by a relist (0 disables).",
        non_negative,
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


_TLS_FILES = (
    ("ca_file", "TYPHA_CAFILE"),
    ("server_cert_file", "TYPHA_SERVERCERTFILE"),
    ("server_key_file", "TYPHA_SERVERKEYFILE"),
)


def _tls_complete(v: dict[str, Any]) -> str | None:
    """All three TLS files and a client identity, or nothing (plaintext)."""
    given = [env for name, env in _TLS_FILES if v[name]]
    identity = v["client_cn"] or v["client_uri_san"]
    if not given:
        if identity:
            return "TYPHA_CLIENTCN / TYPHA_CLIENTURISAN are set but TYPHA_CAFILE, TYPHA_SERVERCERTFILE and TYPHA_SERVERKEYFILE are not: set them to enable TLS"
        return None
    if len(given) < len(_TLS_FILES):
        missing = [env for name, env in _TLS_FILES if not v[name]]
        return f"TLS needs {', '.join(missing)} as well (set: {', '.join(given)})"
    if not identity:
        return "TLS needs TYPHA_CLIENTCN or TYPHA_CLIENTURISAN: the agents' identity (a certificate signed by the CA alone proves nothing)"
    return None


def load_config(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> TyphaConfig:
    cfg = load_settings(
        TyphaConfig,
        ENV_PREFIX,
        argv,
        environ,
        prog="typha",
        description="Fan-out cache between a datastore and thousands of node agents.",
        cross_checks=[_ping_order, _tls_complete],
    )
    if not cfg.server_id:
        cfg.server_id = socket.gethostname()
    return cfg
