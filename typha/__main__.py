"""`typha`: run the fan-out cache.

Wires the pieces together and owns the process lifecycle: caches per syncer type, the datastore that
feeds them, the sync server, health and metrics endpoints, and graceful shutdown on SIGTERM (stop
accepting, then close connections one at a time, spread over at most 95% of the termination grace
period and never more than --shutdown-max-drop-interval apart; a second signal closes the rest at once).
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from collections.abc import Awaitable, Sequence
from typing import Any, TypeVar

from aiohttp import web

from common.runtime import StartupError, kubernetes_client, run_main
from protocol import SYNCER_BGP, SYNCER_FELIX

from .config import TyphaConfig, load_config
from .datastores.kubernetes import KubernetesDatastore
from .datastores.synthetic import SyntheticDatastore, SyntheticOptions
from .ingest import Ingestor
from .metrics import ServerMetrics
from .ops import health_app, listen_error, metrics_app, start_site
from .rebalance import Rebalancer
from .snapcache import SnapCache
from .syncserver import SyncServer

log = logging.getLogger("typha")
T = TypeVar("T")


def _report_datastore_end(task: asyncio.Task[None]) -> None:
    # Agents keep the last good state; readiness already reflects the caches' status.
    if not task.cancelled() and task.exception() is not None:
        log.error("datastore stopped with an error: %r", task.exception())


async def _listening(start: Awaitable[T], host_flag: str, host: str, port_flag: str, port: int) -> T:
    """Await a listener's start; a socket error becomes one start-up line naming the setting."""
    try:
        return await start
    except OSError as exc:
        raise StartupError(listen_error(host_flag, host, port_flag, port, exc)) from None


def _datastore(cfg: TyphaConfig, ingestor: Ingestor, api: Any) -> KubernetesDatastore | SyntheticDatastore:
    if api is not None:
        return KubernetesDatastore(
            ingestor,
            api,
            page_size=cfg.k8s_page_size,
            silence_timeout=cfg.k8s_watch_silence_timeout,
            audit_interval=cfg.k8s_audit_interval,
        )
    options = SyntheticOptions(
        nodes=cfg.synthetic_nodes,
        pods_per_node=cfg.synthetic_pods_per_node,
        policies=cfg.synthetic_policies,
        churn_rate=cfg.synthetic_churn_rate,
        churn_seconds=cfg.synthetic_churn_seconds,
        seed=cfg.synthetic_seed,
    )
    return SyntheticDatastore(ingestor, options)


async def run(cfg: TyphaConfig) -> None:
    caches = {
        name: SnapCache(name, resume_window_ns=int(cfg.resume_window * 1e9)) for name in (SYNCER_FELIX, SYNCER_BGP)
    }
    metrics = ServerMetrics()
    metrics.watch_caches(lambda: caches)
    server = SyncServer(caches, cfg, metrics)  # a TyphaConfig is the server's config too
    ingestor = Ingestor(caches)
    api = await kubernetes_client(cfg.kubeconfig) if cfg.datastore == "kubernetes" else None
    runners: list[web.AppRunner] = []
    try:
        datastore = _datastore(cfg, ingestor, api)
        stats = None
        if isinstance(datastore, KubernetesDatastore):
            stats = datastore.stats_view
            metrics.watch_datastore(stats)
        await _listening(server.start(), "--listen-host", cfg.host, "--port", cfg.port)
        if cfg.health_port:
            app = health_app(server, caches, stats)
            runner, port = await _listening(
                start_site(app, cfg.health_host, cfg.health_port),
                "--health-host",
                cfg.health_host,
                "--health-port",
                cfg.health_port,
            )
            runners.append(runner)
            log.info("health endpoints on %s:%d", cfg.health_host, port)
        if cfg.metrics_port:
            app = metrics_app(metrics.registry)
            runner, port = await _listening(
                start_site(app, cfg.health_host, cfg.metrics_port),
                "--health-host",
                cfg.health_host,
                "--metrics-port",
                cfg.metrics_port,
            )
            runners.append(runner)
            log.info("metrics on %s:%d", cfg.health_host, port)
        await _serve(cfg, server, datastore, ingestor, api)
    finally:
        if not server.shutting_down and server.accepting:  # start-up failed after the server started
            await server.shutdown(0)
        for runner in runners:
            await runner.cleanup()
        if api is not None:
            await api.close()


async def _serve(
    cfg: TyphaConfig,
    server: SyncServer,
    datastore: KubernetesDatastore | SyntheticDatastore,
    ingestor: Ingestor,
    api: Any,
) -> None:
    """Follow the datastore and serve until a signal; then drain (a second signal cuts the drain short)."""
    source = asyncio.create_task(datastore.run(), name="datastore")
    source.add_done_callback(_report_datastore_end)
    rebalancer = None
    if api is not None and cfg.k8s_service_name:
        rebalancer = asyncio.create_task(
            Rebalancer(
                server, ingestor, api, cfg.k8s_namespace, cfg.k8s_service_name, interval=cfg.rebalance_interval
            ).run(),
            name="rebalance",
        )
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    cut_short = asyncio.Event()

    def on_signal(signum: int) -> None:
        if not stop.is_set():
            n = len(server.connections)
            log.info(
                "received %s: closing %d connections, one every %.2fs",
                signal.Signals(signum).name,
                n,
                server.drop_interval(cfg.drain_seconds, n),
            )
            stop.set()
        else:
            log.warning("second signal: closing remaining connections now")
            cut_short.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal, sig)
    await stop.wait()
    if rebalancer is not None:
        rebalancer.cancel()  # shedding is over: every connection goes now, paced
    drain = asyncio.create_task(server.shutdown(cfg.drain_seconds))
    interrupt = asyncio.create_task(cut_short.wait())
    await asyncio.wait({drain, interrupt}, return_when=asyncio.FIRST_COMPLETED)
    interrupt.cancel()
    if not drain.done():
        drain.cancel()
        await asyncio.gather(drain, return_exceptions=True)
        await server.shutdown(0)
    source.cancel()
    await asyncio.gather(source, return_exceptions=True)


def main(argv: Sequence[str] | None = None) -> int:
    return run_main("typha", argv, load_config, run)


if __name__ == "__main__":
    sys.exit(main())
