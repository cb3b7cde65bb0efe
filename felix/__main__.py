"""`felix`: the node agent. Finds typha, follows it, and programs this node's routes and policy."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from collections.abc import Sequence

from common.runtime import StartupError, kubernetes_client, run_main
from protocol.tls import CertReloader, TLSFiles

from .agent import FelixAgent, PolicyDataplane
from .config import FelixConfig, load_config
from .discovery import EndpointSliceDiscovery
from .metrics import FelixMetrics
from .ops import health_app, metrics_app, start_site

log = logging.getLogger("felix")


def typha_tls(cfg: FelixConfig) -> CertReloader | None:
    """Felix's TLS to typha from its settings; None (plaintext, with a warning) when none is set."""
    if not cfg.typha_ca_file:
        log.warning(
            "connecting to typha WITHOUT TLS: felix cannot tell typha from an impostor at its address. "
            "Set FELIX_TYPHACAFILE, FELIX_TYPHACERTFILE, FELIX_TYPHAKEYFILE and FELIX_TYPHACN or FELIX_TYPHAURISAN"
        )
        return None
    files = TLSFiles(cfg.typha_ca_file, cfg.typha_cert_file, cfg.typha_key_file, cfg.typha_cn, cfg.typha_uri_san)
    try:
        tls = CertReloader.load(files, False, ("FELIX_TYPHACAFILE", "FELIX_TYPHACERTFILE", "FELIX_TYPHAKEYFILE"))
    except ValueError as exc:
        raise StartupError(str(exc)) from None
    log.info("connecting to typha with mutual TLS; typha must present %s", files.describe_peer())
    return tls


async def run(cfg: FelixConfig) -> None:
    tls = typha_tls(cfg)  # before anything else: a bad certificate file is a start-up error
    api = None
    typha: EndpointSliceDiscovery | list[tuple[str, int]]
    if cfg.typha_k8s_service_name:
        api = await kubernetes_client(cfg.kubeconfig)
        typha = EndpointSliceDiscovery(
            api, cfg.typha_k8s_namespace, cfg.typha_k8s_service_name, cfg.typha_port_name, cfg.nodename
        )
    else:
        typha = list(cfg.typha_addresses)
    routes = devices = None
    if cfg.routes_enabled:
        from .dataplane.devices import DeviceManager
        from .dataplane.routes import RouteManager

        try:
            routes = RouteManager(cfg.netns or None, resync_interval=cfg.route_refresh_interval or float("inf"))
            devices = DeviceManager(cfg.netns or None)
        except OSError as exc:
            if routes is not None:
                routes.close()
            where = f"network namespace {cfg.netns!r}" if cfg.netns else "this network namespace"
            raise StartupError(f"cannot open netlink sockets in {where}: {exc}") from None
    metrics = FelixMetrics()
    policy = _policy_dataplane(cfg, metrics) if cfg.policy_enabled else None
    bgp = None
    if cfg.bgp:
        from .bgp.agent import BgpAgent
        from .bgp.bird import BirdManager

        manager = BirdManager(cfg.bird_run_dir, bird=cfg.bird_binary, netns=cfg.netns or None)
        bgp = BgpAgent(
            cfg.nodename,
            typha,
            manager,
            registry=metrics.registry,
            read_timeout=cfg.typha_read_timeout,
            status_interval=cfg.bgp_status_interval,
        )
    agent = FelixAgent(
        cfg.nodename,
        typha,
        routes=routes,
        devices=devices,
        policy=policy,
        metrics=metrics,
        network_mtu=cfg.network_mtu,
        read_timeout=cfg.typha_read_timeout,
        tls=tls,
        netns=cfg.netns or None,
        pending_grace=cfg.route_pending_grace,
        bgp=bgp,
    )
    task = asyncio.create_task(agent.run(), name="felix-agent")
    runners = []
    if cfg.health_port:
        runners.append((await start_site(health_app(agent, task.done), cfg.health_host, cfg.health_port))[0])
    if cfg.metrics_port:
        runners.append((await start_site(metrics_app(agent.metrics.registry), cfg.metrics_host, cfg.metrics_port))[0])
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, agent.stop)
    log.info(
        "felix for node %s starting (network MTU %d, networking backend %s)",
        cfg.nodename,
        cfg.network_mtu,
        cfg.networking_backend,
    )
    try:
        await task
    finally:
        for runner in runners:
            await runner.cleanup()
        if routes is not None:
            routes.close()
        if devices is not None:
            devices.close()
        if api is not None:
            await api.close()


def _policy_dataplane(cfg: FelixConfig, metrics: FelixMetrics) -> PolicyDataplane:
    from .dataplane.iptables.manager import PolicyDataplane as IptablesDataplane
    from .dataplane.iptables.manager import config_from_settings
    from .dataplane.iptables.metrics import PolicyMetrics

    try:
        return IptablesDataplane(cfg.netns or None, config_from_settings(cfg), metrics=PolicyMetrics(metrics.registry))
    except OSError as exc:
        raise StartupError(f"cannot program iptables (--iptablesbackend={cfg.iptables_backend}): {exc}") from None


def main(argv: Sequence[str] | None = None) -> int:
    return run_main("felix", argv, load_config, run)


if __name__ == "__main__":
    sys.exit(main())
