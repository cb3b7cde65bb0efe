"""The felix agent: follow typha, calculate, reconcile the kernel. The thin shell around the cores.

Design note
-----------
Pieces with one job each, joined here and nowhere else:
- `protocol.client.SyncClient` keeps the cluster view in sync with a typha replica (reconnects,
  resync diffs, read timeouts);
- `felix.calc.RouteCalculator` (pure) turns each batch of KV changes into a route delta;
- `felix.dataplane.devices.DeviceManager` keeps the tunnel devices the pools need
  (`felix.dataplane.deviceplan` decides which);
- `felix.dataplane.routes.RouteManager` reconciles the kernel to the desired routes;
- `felix.status.ProblemLog` (pure) turns what the others cannot do into log lines, metrics,
  readiness and `/status`;
- `felix.policy.calc.PolicyCalculator` (pure) turns the same KVs into policy messages
  (felix/policy/messages.py), which the policy dataplane (`felix.dataplane.iptables`) applies;
- with the `bird` networking backend, `felix.bgp.BgpAgent` follows the bgp syncer and runs BIRD,
  which then owns the remote routes of native pools (the route calculator leaves them out).
Updates from typha are applied to the calculators as they arrive but handed to the kernel once per
event-loop pass, merged, so a burst (a snapshot, a resync) becomes one netlink batch and one policy
batch. Policy is calculated only when a policy dataplane is given. Nothing is
programmed before the first in-sync: a half-received view would delete routes that are merely not
yet known. Nor before typha knows a Node of our name: with a wrong node name every block of this
node would look remote and be routed away from it, so felix logs an error and stays unready
instead. After that a reconnect's resync diff flows through like any other update.

Ready means in sync, connected, the first programming pass done, our Node known, and nothing that
should be in the kernel kept out of it for longer than the grace period (`route_pending_grace`).

Interfaces of local workloads get Calico's sysctls (proxy ARP for the 169.254.1.1 gateway, no proxy
delay, forwarding) when their route appears, or when the interface itself appears later.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any, Protocol

from protocol import KV, SYNCER_FELIX, SyncStatus
from protocol.client import Address, AddressSource, SyncClient
from protocol.tls import CertReloader

from .bgp.agent import BgpAgent
from .calc import RouteCalculator, RouteDelta
from .dataplane.deviceplan import desired_devices
from .dataplane.devices import MANAGED, DeviceManager
from .dataplane.routeplan import REASONS, vxlan_device
from .dataplane.routes import RouteManager
from .dataplane.sysctl import InterfaceMissing, configure_workload_interface
from .metrics import FelixMetrics
from .policy.calc import PolicyCalculator
from .policy.messages import Batch, PolicyRejected
from .status import FAILING, NODE_UNKNOWN, UNRESOLVED, Problem, ProblemLog, RateLimiter

log = logging.getLogger("felix")


class PolicyDataplane(Protocol):
    """What the agent needs of a policy dataplane (felix.dataplane.iptables.manager's)."""

    programming: bool

    def apply(self, batch: Batch) -> object: ...
    def start_programming(self) -> object: ...
    def next_deadline(self) -> float | None: ...
    def tick(self) -> None: ...
    @property
    def ready(self) -> bool: ...
    @property
    def not_ready_reason(self) -> str: ...


PENDING_REASONS = (*REASONS, UNRESOLVED)


class FelixAgent:
    def __init__(
        self,
        nodename: str,
        typha: AddressSource,
        *,
        routes: RouteManager | None = None,
        devices: DeviceManager | None = None,
        network_mtu: int = 1500,
        read_timeout: float | None = None,
        tls: CertReloader | None = None,
        netns: str | None = None,
        metrics: FelixMetrics | None = None,
        configure_interface: Callable[[str, str | None], None] | None = None,
        pending_grace: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
        policy: PolicyDataplane | None = None,
        bgp: BgpAgent | None = None,
    ) -> None:
        self.nodename = nodename
        self.netns = netns
        self.network_mtu = network_mtu
        self.bgp = bgp  # BIRD programs the remote routes of the pools BGP carries (felix.bgp)
        self.calc = RouteCalculator(nodename, network_mtu=network_mtu, bgp=bgp is not None)
        self.routes = routes  # None: calculate without programming
        self.devices = devices
        self.metrics = metrics or FelixMetrics()
        self.policy = policy  # the iptables/ipset policy dataplane, or None: policy not calculated
        self.policy_calc = PolicyCalculator(nodename) if policy is not None else None
        self._policy_log = RateLimiter()
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
            tls=tls,  # with TLS configured, only a typha that proves its identity is followed
        )
        self.in_sync = False
        self.programmed_once = False
        self.problems = ProblemLog(pending_grace)
        self._clock = clock
        self._error_log = RateLimiter()
        self._netlink_errors_seen = 0
        self._devices_needed: set[str] = set()  # tunnel devices some pool needs
        self._observed_at = float("-inf")
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
        if self.policy_calc is not None:
            seen = {key for key, _ in delta.malformed}
            bad = [(key, why) for key, why in self.policy_calc.update(kvs) if key not in seen]
            if bad:
                self.metrics.malformed.inc(len(bad))
                for key, why in bad[:3]:
                    log.warning("ignoring malformed update for %s: %s", key, why)
        if self._pending_delta is None:
            self._pending_delta = delta
        else:
            self._pending_delta.merge(delta)
        self._schedule_flush()  # even an empty delta: a pool or our Node may have changed the devices

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
    @property
    def node_known(self) -> bool:
        return self.calc.node(self.nodename) is not None

    def _schedule_flush(self) -> None:
        if not self._flush_scheduled and self._loop is not None:
            self._flush_scheduled = True
            self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        if not self.in_sync:
            return  # keep accumulating: nothing is programmed before the first in-sync
        if not self.programmed_once and not self.node_known:
            self._observe()  # logs the error; the plan keeps accumulating until our Node appears
            return
        delta, self._pending_delta = self._pending_delta, None
        routes = self.routes
        t0 = time.perf_counter()
        self._sync_devices()  # devices the routes need exist before the routes
        if routes is not None:
            if not routes.programming:
                routes.apply(delta or RouteDelta())
                drift = routes.start_programming()
                self.metrics.resyncs.inc()
                self.metrics.drift_repaired.inc(drift.repaired)
            elif delta:
                routes.apply(delta)
        self._remove_unused_devices()  # ... and go only once no route of ours uses them
        self.programmed_once = True
        self.metrics.apply_seconds.observe(time.perf_counter() - t0)
        self._flush_policy()
        if delta:
            for r in delta.routes.values():
                if r.scope == "link" and r.dev and r.dev not in self._ifaces_done:
                    self._ifaces_waiting.add(r.dev)
        self._configure_interfaces()
        self._observe(every=0.2)

    def _flush_policy(self) -> None:
        calc, policy = self.policy_calc, self.policy
        if calc is None or policy is None:
            return
        t0 = time.perf_counter()
        batch = calc.flush()
        self.metrics.policy_calc_seconds.observe(time.perf_counter() - t0)
        for m in batch.messages:
            if isinstance(m, PolicyRejected):
                self.metrics.policies_rejected.inc()
                if self._policy_log.allow(self._clock()):
                    skipped = self._policy_log.take_suppressed()
                    more = f" [{skipped} more not logged]" if skipped else ""
                    log.warning("%s rejected, not enforced: %s%s", m.id, m.reason, more)
        self.metrics.policies_rejected_now.set(len(calc.rejected))
        self.metrics.policies_active.set(calc.active_policies)
        if not policy.programming:
            policy.apply(batch)
            policy.start_programming()
        elif batch.messages:
            policy.apply(batch)

    def _sync_devices(self) -> None:
        me = self.calc.node(self.nodename)
        wanted, waiting = desired_devices(self.calc.pools(), me, self.nodename, self.network_mtu)
        self._devices_needed = set(wanted) | set(waiting)
        if self.devices is not None:
            self.devices.set_desired(wanted, waiting)

    def _remove_unused_devices(self) -> None:
        """Delete the tunnel devices no pool needs once none of our routes goes through them.

        Called after every programming pass, retry and link event: a route whose move failed keeps
        its device until a retry has moved it (the kernel would drop the route with the device).
        """
        devices = self.devices
        if devices is not None and devices.removal_pending:
            devices.remove_unwanted(self.routes.devices_in_use(MANAGED) if self.routes is not None else ())

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
            if self.devices is not None and self.programmed_once and routes.links_changed & set(MANAGED):
                self.devices.sync()  # someone changed one of our devices: put it back
            if self.programmed_once:
                self._remove_unused_devices()
            self._configure_interfaces()
            self._observe(every=0.2)

    async def _housekeeping(self) -> None:
        """Retries, the periodic full resync (drift repair), and the problem report, at least every second."""
        routes = self.routes
        while not self._stopping.is_set():
            deadlines = [routes.next_deadline() if routes is not None else None]
            if self.policy is not None:
                deadlines.append(self.policy.next_deadline())
            due = [d for d in deadlines if d is not None]
            wait = 1.0 if not due else min(1.0, max(0.01, min(due) - time.monotonic()))
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
                    if self.devices is not None:
                        self.devices.sync()
                self._remove_unused_devices()  # retries may have moved the last routes off one
                self._configure_interfaces()
            if self.policy is not None and self.policy.programming:
                self.policy.tick()
            if self.in_sync:
                self._observe()

    # -- what is wrong ------------------------------------------------------------------------------
    def _collect(self) -> dict[str, Problem]:
        out: dict[str, Problem] = {}
        if not self.node_known:
            why = f"node name {self.nodename!r} is not a Node typha knows: not programming (set --nodename)"
            out[f"node:{self.nodename}"] = Problem(f"node:{self.nodename}", NODE_UNKNOWN, why, route=False)
        if not self.programmed_once:
            return out
        for dst, why in self.calc.unresolved().items():
            out[dst] = Problem(dst, UNRESOLVED, why)
        if self.routes is not None:
            for key, p in self.routes.pending_reasons().items():
                neighbor = key.startswith("neigh:")
                if neighbor and vxlan_device(key[6:]) not in self._devices_needed:
                    continue  # VTEPs are known whatever the pools; their entries matter only while VXLAN is used
                out[key] = Problem(key, p.reason, p.detail, route=not neighbor)
            for dst, err in self.routes.failing().items():
                out[dst] = Problem(dst, FAILING, err)
        if self.devices is not None:
            for name, p in self.devices.problems().items():
                out[f"device:{name}"] = Problem(f"device:{name}", p.reason, p.detail, route=False)
        return out

    def _observe(self, *, every: float = 0.0) -> None:
        """Refresh problems, metrics and log lines from the managers' current state.

        ``every``: skip if the last refresh is more recent than this.  The per-batch calls pass
        0.2 s: collecting is O(problems), and a degraded node (10,000 routes waiting for a device)
        under churn must not pay that per typha message; housekeeping refreshes every second.
        """
        now = self._clock()
        if every and now - self._observed_at < every:
            return
        self._observed_at = now
        for level, line in self.problems.update(self._collect(), now):
            log.log(level, line)
        counts = self.problems.by_reason()
        for reason in PENDING_REASONS:
            self.metrics.routes_pending.labels(reason=reason).set(counts.get(reason, 0))
        errors, last = 0, ""
        for stats in (self.routes.stats if self.routes else None, self.devices.stats if self.devices else None):
            if stats is not None:
                errors += stats.netlink_errors
                last = stats.last_error or last
        if errors > self._netlink_errors_seen:
            self.metrics.netlink_errors.inc(errors - self._netlink_errors_seen)
            self._netlink_errors_seen = errors
            if self._error_log.allow(now):
                skipped = self._error_log.take_suppressed()
                log.warning("netlink error: %s%s", last, f" [{skipped} more not logged]" if skipped else "")
        if self.routes is not None:
            st = self.routes.stats
            self.metrics.routes_programmed.set(st.programmed)
            self.metrics.routes_failing.set(st.failing)

    # -- lifecycle -----------------------------------------------------------------------------------
    @property
    def ready(self) -> bool:
        return self.not_ready_because() is None

    def not_ready_because(self) -> str | None:
        if not self.in_sync:
            return "not yet in sync with typha"
        if self.client.connected_to is None:
            return "not connected to typha"
        if not self.node_known:
            return f"node name {self.nodename!r} is not a Node typha knows"
        if not self.programmed_once:
            return "routes not yet programmed"
        if self.policy is not None and not self.policy.ready:
            return self.policy.not_ready_reason or "policy not yet programmed"
        if self.bgp is not None and (why := self.bgp.not_ready_because()):
            return why
        late = self.problems.overdue(self._clock())
        if late:
            p = late[0]
            return (
                f"{len(late)} problems for more than {self.problems.grace:g}s, e.g. "
                f"{p.what}: {p.detail} ({p.reason}); see /status"
            )
        return None

    def status(self) -> dict[str, Any]:
        """What `/status` shows: readiness, the sync state, and every problem with its age."""
        now = self._clock()
        routes = self.routes
        return {
            "node": self.nodename,
            "ready": self.ready,
            "not_ready_because": self.not_ready_because(),
            "in_sync": self.in_sync,
            "typha": None if self.typha_address is None else "{}:{}".format(*self.typha_address),
            "routes": {
                "desired": len(self.calc.desired()),
                "programmed": routes.stats.programmed if routes else 0,
                "failing": routes.stats.failing if routes else 0,
                "adopted": routes.stats.adopted if routes else 0,
                "last_error": routes.stats.last_error if routes else "",
            },
            "pending_by_reason": dict(self.problems.by_reason(routes_only=False)),
            "problems_total": len(self.problems),
            "problems": self.problems.listing(now),
            "bgp": self.bgp.status() if self.bgp is not None else {"backend": "none"},
        }

    async def run(self) -> None:
        self._loop = asyncio.get_running_loop()
        if self.routes is not None:
            self._loop.add_reader(self.routes.fileno(), self._on_link_events)
        housekeeping = asyncio.create_task(self._housekeeping())
        bgp = asyncio.create_task(self.bgp.run(), name="felix-bgp") if self.bgp is not None else None
        try:
            await self.client.run()
        finally:
            self._stopping.set()
            if bgp is not None and self.bgp is not None:
                self.bgp.stop()
                await bgp
            await housekeeping
            if self.routes is not None:
                self._loop.remove_reader(self.routes.fileno())

    def stop(self) -> None:
        self._stopping.set()
        self.client.stop()
        if self.bgp is not None:
            self.bgp.stop()

    @property
    def typha_address(self) -> Address | None:
        return self.client.connected_to
