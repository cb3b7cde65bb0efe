"""Felix's settings: CLI flags with FELIX_* environment equivalents. Defaults follow Calico's Felix."""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any

from common.settings import Setting, non_negative, parse_bool, parse_settings, port, positive

ENV_PREFIX = "FELIX"
MIN_NETWORK_MTU = 576  # the smallest datagram every IPv4 host must accept (RFC 791)


def _network_mtu(value: int) -> str | None:
    return None if value >= MIN_NETWORK_MTU else f"must be at least {MIN_NETWORK_MTU} (an IPv4 network's minimum MTU)"


def parse_addresses(text: str) -> tuple[tuple[str, int], ...]:
    """'host:port,host:port' -> ((host, port), ...); IPv6 hosts in brackets: '[::1]:5473'."""
    out = []
    for item in filter(None, (p.strip() for p in text.split(","))):
        host, sep, port_s = item.rpartition(":")
        if not sep or not host:
            raise ValueError(f"{item!r} is not host:port")
        host = host.strip("[]")
        p = int(port_s)
        if not 0 < p < 65536:
            raise ValueError(f"{item!r} has an invalid port")
        out.append((host, p))
    return tuple(out)


SETTINGS: tuple[Setting, ...] = (
    Setting(
        "nodename",
        str,
        "",
        "This node's name, as in Kubernetes (default: $FELIX_FELIXHOSTNAME, Calico's name, then $NODENAME, "
        "then the hostname).",
    ),
    Setting(
        "typha_addresses", parse_addresses, (), "Static typha addresses 'host:port,...' (used when no Service is set)."
    ),
    Setting("typha_k8s_service_name", str, "", "Find typha replicas from this Service's EndpointSlices."),
    Setting("typha_k8s_namespace", str, "pytypha", "Namespace of the typha Service."),
    Setting("typha_port_name", str, "calico-typha", "Name of the typha port in the EndpointSlices."),
    Setting("kubeconfig", str, "", "Kubeconfig for EndpointSlice discovery (default: in-cluster config)."),
    Setting("typha_read_timeout", float, 30.0, "Seconds of silence from typha before reconnecting.", positive),
    Setting("health_host", str, "127.0.0.1", "Address of /liveness and /readiness."),
    Setting("health_port", int, 9099, "Port of /liveness and /readiness (0 disables).", port),
    Setting("metrics_port", int, 9091, "Port of /metrics (0 disables).", port),
    Setting(
        "route_refresh_interval",
        float,
        90.0,
        "Seconds between full route resyncs that repair drift (0 disables).",
        non_negative,
    ),
    Setting(
        "network_mtu",
        int,
        1500,
        "MTU of the node network; tunnel devices and encapsulated routes subtract their overhead.",
        _network_mtu,
    ),
    Setting(
        "route_pending_grace",
        float,
        30.0,
        "Seconds a route (or tunnel device) may stay unprogrammable before felix reports not ready.",
        non_negative,
    ),
    Setting("routes_enabled", parse_bool, True, "Program routes and tunnel devices into the kernel."),
    Setting(
        "netns", str, "", "Program this named network namespace instead of felix's own (tests, benchmarks, sidecars)."
    ),
    Setting("log_level", str, "INFO", "Logging level.", choices=("DEBUG", "INFO", "WARNING", "ERROR")),
    # Network policy (iptables + ip sets); the names follow Calico's settings.
    Setting("policy_enabled", parse_bool, True, "Enforce network policy with iptables and ip sets."),
    Setting(
        "chain_insert_mode",
        str.lower,
        "insert",
        "Calico's ChainInsertMode: hook felix's chains at the top of FORWARD/INPUT/OUTPUT, or append them.",
        choices=("insert", "append"),
    ),
    Setting(
        "default_endpoint_to_host_action",
        str.upper,
        "DROP",
        "Calico's DefaultEndpointToHostAction: workload traffic to this host after policy (DROP, RETURN, ACCEPT).",
        choices=("DROP", "RETURN", "ACCEPT"),
    ),
    Setting(
        "iptables_backend",
        str.lower,
        "auto",
        "Calico's IptablesBackend: auto (detect), nft or legacy.",
        choices=("auto", "nft", "legacy"),
    ),
    Setting(
        "iptables_refresh_interval",
        float,
        90.0,
        "Seconds between read-backs of iptables and ip sets that repair drift (0 disables).",
        non_negative,
    ),
    Setting("iptables_lock_timeout", float, 10.0, "Seconds to wait for the xtables lock.", positive),
)


@dataclass(slots=True)
class FelixConfig:
    nodename: str
    typha_addresses: tuple[tuple[str, int], ...]
    typha_k8s_service_name: str
    typha_k8s_namespace: str
    typha_port_name: str
    kubeconfig: str
    typha_read_timeout: float
    health_host: str
    health_port: int
    metrics_port: int
    route_refresh_interval: float
    network_mtu: int
    route_pending_grace: float
    routes_enabled: bool
    netns: str
    log_level: str
    policy_enabled: bool
    chain_insert_mode: str
    default_endpoint_to_host_action: str
    iptables_backend: str
    iptables_refresh_interval: float
    iptables_lock_timeout: float


assert [f.name for f in fields(FelixConfig)] == [s.name for s in SETTINGS], "keep FelixConfig and SETTINGS aligned"


def _typha_source(v: dict[str, Any]) -> str | None:
    if not v["typha_addresses"] and not v["typha_k8s_service_name"]:
        return "set --typha-k8s-service-name or --typha-addresses: felix needs a way to find typha"
    return None


def load_config(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> FelixConfig:
    env = os.environ if environ is None else environ
    values = parse_settings(
        SETTINGS,
        ENV_PREFIX,
        argv,
        env,
        prog="felix",
        description="Node agent: follows typha and programs this node's routes and network policy.",
        cross_checks=[_typha_source],
    )
    if not values["nodename"]:
        values["nodename"] = env.get("FELIX_FELIXHOSTNAME") or env.get("NODENAME") or socket.gethostname()
    return FelixConfig(**values)
