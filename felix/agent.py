"""The felix agent: follow typha, calculate, reconcile the kernel. The thin shell around the cores.

Design note
-----------
Three pieces with one job each, joined here and nowhere else:
- `protocol.client.SyncClient` keeps the cluster view in sync with a typha replica (reconnects,
  resync diffs, read timeouts);
- `felix.calc.RouteCalculator` (pure) turns each batch of KV changes into a route delta;
- `felix.dataplane.routes.RouteManager` reconciles the kernel to the desired routes.
Updates from typha are applied to the calculator as they arrive but handed to the kernel once per
event-loop pass, merged, so a burst (a snapshot, a resync) becomes one netlink batch. Nothing is
programmed before the first in-sync: a half-received view would delete routes that are merely not
yet known. After that a reconnect's resync diff flows through like any other update.

Interfaces of local workloads get Calico's sysctls (proxy ARP for the 169.254.1.1 gateway, no proxy
delay, forwarding) when their route appears, or when the interface itself appears later.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from protocol import KV, SYNCER_FELIX, SyncStatus
from protocol.client import Address, AddressSource, SyncClient

from .calc import RouteCalculator, RouteDelta
from .dataplane.routes import Drift, RouteManager
from .dataplane.sysctl import InterfaceMissing, configure_workload_interface
from .metrics import FelixMetrics

log = logging.getLogger("felix")


class FelixAgent:
    def __init__(
        self,
        nodename: str,
        typha: AddressSource,
        *,
        routes: RouteManager | None = None,
        network_mtu: int = 1500,
        read_timeout: float | None = None,
        netns: str | None = None,
        metrics: FelixMetrics | None = None,
        configure_interface: Callable[[str, str | None], None] | None = None,
    ) -> None:
        self.nodename = nodename
        self.netns = netns
        self.calc = RouteCalculator(nodename, network_mtu=network_mtu)
        self.routes = routes  # a felix.dataplane.routes.RouteManager, or None to calculate without programming
        self.metrics = metrics or FelixMetrics()
        self._configure = configure_interface or (lambda iface, ns: configure_workload_interface(iface, netns=ns))
        self.client = SyncClient(
            typha,
            SYNCER_FELIX,
            hostname=nodename,
            info="pyfelix",
            on_updates=self._on_updates,
            on_status=self._on_status,
            on_connection=self._on_connection,
            read_timeout=read_timeout,
        )
        self.in_sync = False
        self.programmed_once = False
        self._pending_delta: RouteDelta | None = None
        self._flush_scheduled = False
        self._ifaces_waiting: set[str] = set()  # local workload interfaces whose sysctls are not set yet
        self._ifaces_done: set[str] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping = asyncio.Event()

    # -- typha callbacks -----------------------------------------------------------------------------
    def _on_updates(self, kvs: list[KV]) -> None:
        self.metrics.updates.inc(len(kvs))
        delta = self.calc.apply(kvs)
        if delta.malformed:
            self.metrics.malformed.inc(len(delta.malformed))
            for key, why in delta.malformed[:3]:
                log.warning("ignoring malformed update for %s: %s", key, why)
        if not delta:
            return
        if self._pending_delta is None:
            self._pending_delta = delta
        else:
            self._pending_delta.merge(delta)
        self._schedule_flush()

    def _on_status(self, status: SyncStatus) -> None:
        self.metrics.typha_status.set(int(status))
        if status is SyncStatus.IN_SYNC and not self.in_sync:
            self.in_sync = True
            log.info("in sync with typha: %d routes to program", len(self.calc.desired()))
            self._schedule_flush()

    def _on_connection(self, up: bool, detail: str) -> None:
        self.metrics.typha_connected.set(1 if up else 0)
        if up:
            log.info("connected to typha at %s", detail)
        else:
            self.metrics.typha_reconnects.inc()
            log.warning("lost typha: %s", detail)

    # -- programming ---------------------------------------------------------------------------------
    def _schedule_flush(self) -> None:
        if not self._flush_scheduled and self._loop is not None:
            self._flush_scheduled = True
            self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        if not self.in_sync:
            return  # keep accumulating: nothing is programmed before the first in-sync
        delta, self._pending_delta = self._pending_delta, None
        routes = self.routes
        t0 = time.perf_counter()
        if routes is not None:
            if not routes.programming:
                routes.apply(delta or RouteDelta())
                drift = routes.start_programming()
                self._count_resync(drift)
            elif delta:
                routes.apply(delta)
        self.programmed_once = True
        self.metrics.apply_seconds.observe(time.perf_counter() - t0)
        if delta:
            for r in delta.routes.values():
                if r.scope == "link" and r.dev and r.dev not in self._ifaces_done:
                    self._ifaces_waiting.add(r.dev)
        self._configure_interfaces()
        self._export_route_stats()

    def _configure_interfaces(self) -> None:
        for iface in list(self._ifaces_waiting):
            try:
                self._configure(iface, self.netns)
            except InterfaceMissing:
                continue  # retried when the link appears
            except OSError as exc:
                log.warning("setting sysctls on %s failed: %s", iface, exc)
                continue
            self._ifaces_waiting.discard(iface)
            self._ifaces_done.add(iface)

    def _on_link_events(self) -> None:
        routes = self.routes
        if routes is None:
            return
        if routes.process_link_events():
            self._configure_interfaces()
            self._export_route_stats()

    def _count_resync(self, drift: Drift) -> None:
        self.metrics.resyncs.inc()
        self.metrics.drift_repaired.inc(drift.repaired)

    def _export_route_stats(self) -> None:
        if self.routes is None:
            return
        st = self.routes.stats
        self.metrics.routes_programmed.set(st.programmed)
        self.metrics.routes_pending.set(st.pending)
        self.metrics.routes_failing.set(st.failing)
        self.metrics.netlink_errors.set(st.netlink_errors)

    async def _housekeeping(self) -> None:
        """Retries and the periodic full resync (drift repair), at the route manager's deadlines."""
        routes = self.routes
        while not self._stopping.is_set():
            deadline = routes.next_deadline() if routes is not None else None
            wait = 1.0 if deadline is None else min(1.0, max(0.01, deadline - time.monotonic()))
            try:
                await asyncio.wait_for(self._stopping.wait(), wait)
            except TimeoutError:
                pass
            if routes is not None and routes.programming:
                resyncs = routes.stats.resyncs
                repaired = routes.stats.drift_repaired
                routes.tick()
                if routes.stats.resyncs != resyncs:
                    self.metrics.resyncs.inc(routes.stats.resyncs - resyncs)
                    self.metrics.drift_repaired.inc(routes.stats.drift_repaired - repaired)
                self._configure_interfaces()
                self._export_route_stats()

    # -- lifecycle -----------------------------------------------------------------------------------
    @property
    def ready(self) -> bool:
        return self.in_sync and self.programmed_once and self.client.connected_to is not None

    async def run(self) -> None:
        self._loop = asyncio.get_running_loop()
        if self.routes is not None:
            self._loop.add_reader(self.routes.fileno(), self._on_link_events)
        housekeeping = asyncio.create_task(self._housekeeping())
        try:
            await self.client.run()
        finally:
            self._stopping.set()
            await housekeeping
            if self.routes is not None:
                self._loop.remove_reader(self.routes.fileno())

    def stop(self) -> None:
        self._stopping.set()
        self.client.stop()

    @property
    def typha_address(self) -> Address | None:
        return self.client.connected_to
