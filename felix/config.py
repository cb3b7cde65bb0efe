"""Felix's settings: CLI flags with FELIX_* environment equivalents. Defaults follow Calico's Felix."""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from common.settings import SettingsError, load_settings, non_negative, port, positive, setting, settings_of

ENV_PREFIX = "FELIX"
MIN_NETWORK_MTU = 576  # the smallest datagram every IPv4 host must accept (RFC 791)


def _lower(text: str) -> str:
    return text.strip().lower()


def _upper(text: str) -> str:
    return text.strip().upper()


def _mark_mask(text: str) -> int:
    try:
        value = int(text.strip(), 0)
    except ValueError:
        raise ValueError("expected a 32-bit mask such as 0xffff0000") from None
    if not 0 < value < 1 << 32:
        raise ValueError("expected a 32-bit mask such as 0xffff0000")
    return value


def _mark_bits(value: int) -> str | None:
    return None if bin(value).count("1") >= 4 else "must leave felix at least 4 bits"


def _log_prefix(value: str) -> str | None:
    ok = len(value) <= 27 and value.isprintable() and '"' not in value
    return None if ok else "must be at most 27 printable characters, without quotes (the kernel's limit is 29)"


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


NETWORKING_BACKENDS = ("none", "bird", "vxlan")


@dataclass(slots=True)
class FelixConfig:
    nodename: str = setting(
        "",
        "This node's name, as in Kubernetes (default: $FELIX_FELIXHOSTNAME, Calico's name, then $NODENAME, "
        "then the hostname).",
    )
    typha_addresses: tuple[tuple[str, int], ...] = setting(
        (), "Static typha addresses 'host:port,...' (used when no Service is set).", parse=parse_addresses
    )
    typha_k8s_service_name: str = setting("", "Find typha replicas from this Service's EndpointSlices.")
    typha_k8s_namespace: str = setting("pytypha", "Namespace of the typha Service.")
    typha_port_name: str = setting("calico-typha", "Name of the typha port in the EndpointSlices.")
    kubeconfig: str = setting("", "Kubeconfig for EndpointSlice discovery (default: in-cluster config).")
    typha_read_timeout: float = setting(30.0, "Seconds of silence from typha before reconnecting.", positive)
    # Mutual TLS with typha, under Calico's names: all three files and typha's identity, or none.
    typha_ca_file: str = setting(
        "", "CA certificate file (PEM) typha's certificate must be signed by; enables TLS.", option="typhacafile"
    )
    typha_cert_file: str = setting("", "Felix's certificate file (PEM), presented to typha.", option="typhacertfile")
    typha_key_file: str = setting("", "Felix's private key file (PEM).", option="typhakeyfile")
    typha_cn: str = setting("", "Common Name typha's certificate must carry (or the URI SAN below).", option="typhacn")
    typha_uri_san: str = setting(
        "", "URI SAN typha's certificate must carry (or the Common Name above).", option="typhaurisan"
    )
    # The kubelet probes on the node itself (felix shares its network namespace), so health stays on
    # loopback; Prometheus scrapes from another pod, so /metrics listens on every address (Calico's
    # PrometheusMetricsHost default). It holds counts and latencies only (docs/security.md).
    health_host: str = setting("127.0.0.1", "Address of /liveness, /readiness and /status.")
    health_port: int = setting(9099, "Port of /liveness, /readiness and /status (0 disables).", port)
    metrics_host: str = setting(
        "0.0.0.0", "Address of /metrics (counts and latencies only; 127.0.0.1 keeps it on the node)."
    )
    metrics_port: int = setting(9091, "Port of /metrics (0 disables).", port)
    route_refresh_interval: float = setting(
        90.0, "Seconds between full route resyncs that repair drift (0 disables).", non_negative
    )
    network_mtu: int = setting(
        1500, "MTU of the node network; tunnel devices and encapsulated routes subtract their overhead.", _network_mtu
    )
    route_pending_grace: float = setting(
        30.0, "Seconds a route (or tunnel device) may stay unprogrammable before felix reports not ready.", non_negative
    )
    routes_enabled: bool = setting(True, "Program routes and tunnel devices into the kernel.")
    netns: str = setting(
        "", "Program this named network namespace instead of felix's own (tests, benchmarks, sidecars)."
    )
    log_level: str = setting("INFO", "Logging level.", choices=("DEBUG", "INFO", "WARNING", "ERROR"))
    # Network policy (iptables + ip sets): Calico's settings, under Calico's FELIX_* names.
    policy_enabled: bool = setting(True, "Program network policy (iptables rules and ip sets) into the kernel.")
    chain_insert_mode: str = setting(
        "insert",
        "Calico's ChainInsertMode: felix's hook rules go at the top (insert) or the bottom (append) of "
        "FORWARD, INPUT, OUTPUT and nat POSTROUTING.",
        choices=("insert", "append"),
        parse=_lower,
        option="chaininsertmode",
    )
    default_endpoint_to_host_action: str = setting(
        "DROP",
        "Calico's DefaultEndpointToHostAction: traffic from a workload to the host itself, once its egress "
        "policy allowed it, is dropped (DROP), handed back to the INPUT chain (RETURN) or accepted (ACCEPT).",
        choices=("DROP", "RETURN", "ACCEPT"),
        parse=_upper,
        option="defaultendpointtohostaction",
    )
    iptables_backend: str = setting(
        "auto",
        "Calico's IptablesBackend: nft, legacy, or auto (Kubernetes' marker chains decide, else the backend "
        "holding more rules, else the one the node's iptables command uses).",
        choices=("auto", "nft", "legacy"),
        parse=_lower,
        option="iptablesbackend",
    )
    iptables_refresh_interval: float = setting(
        90.0,
        "Calico's IptablesRefreshInterval: seconds between read-backs of iptables and ip sets that repair "
        "drift (0 disables).",
        non_negative,
        option="iptablesrefreshinterval",
    )
    iptables_lock_timeout: float = setting(
        10.0,
        "Calico's IptablesLockTimeoutSecs: seconds iptables-restore waits for the xtables lock.",
        positive,
        option="iptableslocktimeoutsecs",
    )
    iptables_mark_mask: int = setting(
        0xFFFF0000,
        "Calico's IptablesMarkMask: the packet-mark bits felix may use (it takes the 4 lowest).",
        _mark_bits,
        parse=_mark_mask,
        option="iptablesmarkmask",
    )
    interface_prefix: str = setting(
        "cali",
        "Calico's InterfacePrefix: workload interface name prefixes, comma-separated; traffic through an "
        "interface with one that felix has no endpoint for is dropped.",
        option="interfaceprefix",
    )
    ipv6_support: bool = setting(
        True, "Calico's Ipv6Support: program ip6tables and IPv6 ip sets as well.", option="ipv6support"
    )
    log_prefix: str = setting(
        "calico-packet", "Calico's LogPrefix: the kernel log prefix of Log rules.", _log_prefix, option="logprefix"
    )
    max_ipset_size: int = setting(
        1048576, "Calico's MaxIpsetSize: the most members one ip set may hold.", positive, option="maxipsetsize"
    )
    # BGP (felix.bgp, docs/bgp.md): Calico's networking backend and the BIRD it runs.
    networking_backend: str = setting(
        "none",
        "'bird': BGP with a BIRD per node, configured from typha's bgp syncer (also $CALICO_NETWORKING_BACKEND); "
        "'none' or 'vxlan': no BGP, felix programs every route.",
        choices=NETWORKING_BACKENDS,
    )
    bird_run_dir: str = setting("/var/run/pyfelix", "Directory of BIRD's bird.cfg and control socket bird.ctl.")
    bird_binary: str = setting("bird", "The BIRD 2 daemon (bird2 package).")
    bgp_status_interval: float = setting(5.0, "Seconds between reads of BIRD's session states.", positive)

    @property
    def bgp(self) -> bool:
        return self.networking_backend == "bird"


SETTINGS = settings_of(FelixConfig)


def _typha_source(v: dict[str, Any]) -> str | None:
    if not v["typha_addresses"] and not v["typha_k8s_service_name"]:
        return "set --typha-k8s-service-name or --typha-addresses: felix needs a way to find typha"
    return None


_TLS_FILES = (
    ("typha_ca_file", "FELIX_TYPHACAFILE"),
    ("typha_cert_file", "FELIX_TYPHACERTFILE"),
    ("typha_key_file", "FELIX_TYPHAKEYFILE"),
)


def _typha_tls(v: dict[str, Any]) -> str | None:
    """All three TLS files and typha's identity, or nothing (plaintext)."""
    given = [env for name, env in _TLS_FILES if v[name]]
    identity = v["typha_cn"] or v["typha_uri_san"]
    if not given:
        if identity:
            return (
                "FELIX_TYPHACN / FELIX_TYPHAURISAN are set but FELIX_TYPHACAFILE, FELIX_TYPHACERTFILE and "
                "FELIX_TYPHAKEYFILE are not: set them to use TLS"
            )
        return None
    if len(given) < len(_TLS_FILES):
        missing = [env for name, env in _TLS_FILES if not v[name]]
        return f"TLS to typha needs {', '.join(missing)} as well (set: {', '.join(given)})"
    if not identity:
        return (
            "TLS to typha needs FELIX_TYPHACN or FELIX_TYPHAURISAN: typha's identity (a certificate signed by "
            "the CA alone proves nothing)"
        )
    return None


def load_config(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> FelixConfig:
    env = os.environ if environ is None else environ
    calico_backend = env.get("CALICO_NETWORKING_BACKEND")  # Calico's name, when felix's own is unset
    if calico_backend is not None and f"{ENV_PREFIX}_NETWORKING_BACKEND" not in env:
        if calico_backend not in NETWORKING_BACKENDS:
            raise SettingsError(
                f"CALICO_NETWORKING_BACKEND={calico_backend!r}: must be one of {', '.join(NETWORKING_BACKENDS)}"
            )
        env = {**env, f"{ENV_PREFIX}_NETWORKING_BACKEND": calico_backend}
    cfg = load_settings(
        FelixConfig,
        ENV_PREFIX,
        argv,
        env,
        prog="felix",
        description="Node agent: follows typha and programs this node's routes and network policy.",
        cross_checks=[_typha_source, _typha_tls],
    )
    if not cfg.nodename:
        cfg.nodename = env.get("FELIX_FELIXHOSTNAME") or env.get("NODENAME") or socket.gethostname()
    return cfg
