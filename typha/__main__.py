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
from collections.abc import Sequence

from common.runtime import kubernetes_client, run_main
from protocol import SYNCER_BGP, SYNCER_FELIX

from .config import TyphaConfig, load_config
from .datastores.kubernetes import KubernetesDatastore
from .datastores.synthetic import SyntheticDatastore, SyntheticOptions
from .ingest import Ingestor
from .metrics import ServerMetrics
from .ops import health_app, metrics_app, start_site
from .rebalance import Rebalancer
from .snapcache import SnapCache
from .syncserver import SyncServer

log = logging.getLogger("typha")


def _report_datastore_end(task: asyncio.Task[None]) -> None:
    # Agents keep the last good state; readiness already reflects the caches' status.
    if not task.cancelled() and task.exception() is not None:
        log.error("datastore stopped with an error: %r", task.exception())


async def run(cfg: TyphaConfig) -> None:
    caches = {
        name: SnapCache(name, resume_window_ns=int(cfg.resume_window * 1e9)) for name in (SYNCER_FELIX, SYNCER_BGP)
    }
    metrics = ServerMetrics()
    metrics.watch_caches(lambda: caches)
    server = SyncServer(caches, cfg, metrics)  # a TyphaConfig is the server's config too
    ingestor = Ingestor(caches)
    api = None
    datastore: KubernetesDatastore | SyntheticDatastore
    if cfg.datastore == "kubernetes":
        api = await kubernetes_client(cfg.kubeconfig)
        datastore = KubernetesDatastore(ingestor, api, page_size=cfg.k8s_page_size)
    else:
        datastore = SyntheticDatastore(
            ingestor,
            SyntheticOptions(
                nodes=cfg.synthetic_nodes,
                pods_per_node=cfg.synthetic_pods_per_node,
                policies=cfg.synthetic_policies,
                churn_rate=cfg.synthetic_churn_rate,
                churn_seconds=cfg.synthetic_churn_seconds,
                seed=cfg.synthetic_seed,
            ),
        )
    await server.start()
    runners = []
    if cfg.health_port:
        runner, port = await start_site(health_app(server, caches), cfg.health_host, cfg.health_port)
        runners.append(runner)
        log.info("health endpoints on %s:%d", cfg.health_host, port)
    if cfg.metrics_port:
        runner, port = await start_site(metrics_app(metrics.registry), cfg.health_host, cfg.metrics_port)
        runners.append(runner)
        log.info("metrics on %s:%d", cfg.health_host, port)
    source = asyncio.create_task(datastore.run(), name="datastore")
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
    signals = 0

    def on_signal(signum: int) -> None:
        nonlocal signals
        signals += 1
        if signals == 1:
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
            drain.cancel()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal, sig)
    source.add_done_callback(_report_datastore_end)
    await stop.wait()
    if rebalancer is not None:
        rebalancer.cancel()  # shedding is over: every connection goes now, paced
    drain = asyncio.create_task(server.shutdown(cfg.drain_seconds))
    try:
        await drain
    except asyncio.CancelledError:
        await server.shutdown(0)
    source.cancel()
    for runner in runners:
        await runner.cleanup()
    if api is not None:
        await api.close()


def main(argv: Sequence[str] | None = None) -> int:
    return run_main("typha", argv, load_config, run)


if __name__ == "__main__":
    sys.exit(main())
