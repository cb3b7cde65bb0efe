"""Route dataplane: keep the kernel's main table (and the VXLAN neighbours) as felix's plan says.

Design note
-----------
``RouteManager`` is the thin shell around :mod:`felix.dataplane.routeplan`: it holds the plan and its
beliefs about the kernel, asks the planner for operations, encodes them (:mod:`.netlink`), sends
them in one batch, and records each result as a new belief.  Every decision lives in the planner;
this module only carries them out, keeps time (retries) and follows link events.

Ownership.  It owns the routes carrying protocol :data:`RTPROT_FELIX` in the main table of one
network namespace, and the permanent ARP/NDP and FDB entries on the VXLAN devices.  Nothing else
in the kernel is touched: deletes carry our protocol, so even a stale belief can never make the
kernel delete someone else's route (the kernel matches the protocol on delete), and a new route is
created with ``NLM_F_EXCL`` so it cannot silently overwrite a foreign route at the same destination
(it is reported instead).  A route we already own is changed with ``NLM_F_REPLACE``: the kernel
swaps it in place, so there is never a moment without a route.

State.  ``_desired`` is what felix wants, ``_kernel`` what we believe the kernel holds (our
protocol only).  ``apply(delta)`` updates the plan and touches only the destinations in the delta;
``resync()`` dumps the table, counts where the kernel drifted from our belief, and repairs it
(felix calls it periodically, default every 90 s).  A route whose interface does not exist yet, or
is down, or whose encapsulation device is missing is *pending* with a reason; link events (an
``RTMGRP_LINK`` socket, drained by ``process_link_events``; its fd goes into the event loop)
program it as soon as the interface appears.  Other netlink failures are retried with exponential
backoff (``tick``/``retry_due``), counted, and remembered as ``stats.last_error``; they are never
raised.  Nothing is written before ``start_programming()`` (felix's first in-sync), which also runs
the first full resync so that routes left by a previous run are adopted instead of re-created.

Not thread-safe: drive one manager from one thread (felix uses the event-loop thread; its calls
are short: a 10,050-route cold start takes ~0.15 s).

Protocol number.  :data:`RTPROT_FELIX` is 80, the value Calico's Felix uses for the routes it owns
exclusively (blackholes, VXLAN and same-subnet routes).  It is unassigned in iproute2's
``rt_protos`` (so no routing daemon uses it), it is not ``boot`` (3, what ``ip route add`` and
ifupdown write -- owning that would delete administrators' routes), nor ``bird`` (12) which a
BGP daemon beside us would use.  Sharing Calico's number is deliberate: a node switched from
Calico's Felix to ours adopts or cleans up the old routes instead of leaving orphans.
"""

from __future__ import annotations

import errno
import os
import socket
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from felix.calc import DEV_VXLAN, DEV_VXLAN_V6, Neighbor, Route, RouteDelta

from . import netlink as nl
from .netlink import RTPROT_FELIX, KernelRoute, Netlink, NetlinkSocket
from .routeplan import (
    Drift,
    Link,
    NeighborOp,
    Pending,
    RouteOp,
    backoff_delay,
    belief,
    find_drift,
    neighbor_drift,
    outcome,
    plan_neighbors,
    plan_routes,
)

__all__ = ["RTPROT_FELIX", "Drift", "RouteManager", "RouteStats"]


@dataclass(slots=True)
class RouteStats:
    """Plain counters for metrics; ``last_error`` is the most recent failure, for humans."""

    programmed: int = 0  # our routes the kernel holds, as far as we know
    pending: int = 0  # routes waiting for an interface / device / conflict to clear
    failing: int = 0  # routes waiting for a retry after an error
    created: int = 0
    replaced: int = 0
    deleted: int = 0
    drift_repaired: int = 0
    resyncs: int = 0
    netlink_errors: int = 0
    retries: int = 0
    conflicts: int = 0
    adopted: int = 0  # identical routes of another protocol (a CNI plugin's) taken over
    neighbors_programmed: int = 0
    neighbor_ops: int = 0
    link_events: int = 0
    last_error: str = ""


@dataclass(slots=True)
class _Retry:
    attempts: int
    at: float
    error: str = ""


class RouteManager:
    """Reconciles routes with protocol ``protocol`` in namespace ``netns``'s main table.

    ``netlink(netns, groups)`` opens a socket (:class:`NetlinkSocket`; tests pass the fake's).
    """

    def __init__(
        self,
        netns: str | None = None,
        *,
        protocol: int = RTPROT_FELIX,
        resync_interval: float = 90.0,
        clock: Callable[[], float] = time.monotonic,
        netlink: Callable[[str | None, int], Netlink] = NetlinkSocket,
    ) -> None:
        self.netns = netns
        self.protocol = protocol
        self.resync_interval = resync_interval
        self.stats = RouteStats()
        self._clock = clock
        self._open = netlink
        self._nl = netlink(netns, 0)
        try:
            self._events = netlink(netns, nl.RTMGRP_LINK)
        except OSError:
            self._nl.close()
            raise
        self._programming = False
        self._next_resync = 0.0
        self._resync_needed = False  # lost acks or an unexplained EEXIST: verify by dumping
        # plan and beliefs
        self._desired: dict[str, Route] = {}
        self._by_dev: dict[str, set[str]] = {}
        self._kernel: dict[str, KernelRoute] = {}
        self._uncertain: set[str] = set()  # may or may not still be in the kernel (link went down)
        self._foreign: dict[str, KernelRoute] = {}  # routes of other protocols at our destinations
        self._pending: dict[str, Pending] = {}
        self._retry: dict[str, _Retry] = {}
        # neighbours: vtep ip -> Neighbor wanted; beliefs about ARP (ip -> mac) and FDB
        self._neigh_desired: dict[str, Neighbor] = {}
        self._neigh_kernel: dict[str, str] = {}
        self._fdb_kernel: dict[tuple[str, str], str] = {}  # (dev, mac) -> underlay ip
        self._neigh_pending: dict[str, Pending] = {}
        self._links: dict[str, Link] = {}
        self._names: dict[int, str] = {}
        self.links_changed: set[str] = set()  # interfaces the last process_link_events saw change
        self._refresh_links()

    # --- public API ----------------------------------------------------------------------------

    def close(self) -> None:
        self._nl.close()
        self._events.close()

    def fileno(self) -> int:
        """The link-event socket: readable when ``process_link_events`` has work."""
        return self._events.fileno()

    @property
    def programming(self) -> bool:
        return self._programming

    def start_programming(self) -> Drift:
        """Allow writes (felix's first in-sync) and run the first full resync."""
        self._programming = True
        return self.resync()

    def apply(self, delta: RouteDelta) -> None:
        """Take a calculator delta; programs the changed destinations if programming."""
        for dst in delta.removed:
            old = self._desired.pop(dst, None)
            if old is not None and old.dev is not None:
                self._unindex(dst, old.dev)
        for dst, r in delta.routes.items():
            old = self._desired.get(dst)
            if old is not None and old.dev is not None and old.dev != r.dev:
                self._unindex(dst, old.dev)
            self._desired[dst] = r
            if r.dev is not None:
                self._by_dev.setdefault(r.dev, set()).add(dst)
        for ip in delta.neighbors_removed:
            self._neigh_desired.pop(ip, None)
        self._neigh_desired.update(delta.neighbors)
        if not self._programming:
            return
        if self._resync_needed:
            self.resync()
            return
        self._sync(set(delta.removed) | set(delta.routes) | self._due())
        if delta.neighbors or delta.neighbors_removed:
            self._sync_neighbors()
        self._update_counts()

    def set_desired(self, routes: Mapping[str, Route], neighbors: Mapping[str, Neighbor] | None = None) -> None:
        """Replace the whole plan (e.g. from ``RouteCalculator.desired()``)."""
        delta = RouteDelta(routes=dict(routes), removed=set(self._desired) - set(routes))
        if neighbors is not None:
            delta.neighbors = dict(neighbors)
            delta.neighbors_removed = set(self._neigh_desired) - set(neighbors)
        self.apply(delta)

    def resync(self) -> Drift:
        """Compare the kernel with the plan, repair differences; returns what drifted."""
        if not self._programming:
            return Drift()
        self.stats.resyncs += 1
        self._next_resync = self._clock() + self.resync_interval
        try:
            self._refresh_links()
            actual, foreign = self._dump_routes()
        except OSError as e:
            self._note_error(f"resync dump: {e}")
            self._resync_needed = True
            return Drift()
        self._resync_needed = False
        drift, drifted = find_drift(self._kernel, actual, self._desired, self._links, self._uncertain)
        self._kernel = actual
        self._foreign = foreign
        self._uncertain.clear()
        now = self._clock()
        for r in self._retry.values():  # a resync retries everything now, keeping the backoff growing
            r.at = now
        done = self._sync(set(self._desired) | set(actual))
        drift.repaired = len(drifted & done)
        drift.neighbors, neigh_fixed = self._resync_neighbors()
        drift.repaired += neigh_fixed
        self.stats.drift_repaired += drift.repaired
        self._update_counts()
        return drift

    def process_link_events(self) -> int:
        """Drain link events; program routes waiting for interfaces that appeared.  Returns the
        number of link messages handled."""
        try:
            msgs, overrun = self._events.events()
        except OSError as e:  # treat as lost events: re-read the link table
            self._note_error(f"link events: {e}")
            msgs, overrun = [], True
        changed: set[str] = set()
        n = 0
        for mtype, body in msgs:
            if mtype in (nl.RTM_NEWLINK, nl.RTM_DELLINK):
                n += 1
                changed |= self._link_msg(body, mtype == nl.RTM_DELLINK)
        if overrun:  # missed events: re-read the whole link table
            before = dict(self._links)
            try:
                self._refresh_links()
            except OSError as e:
                self._note_error(f"link dump: {e}")
                self._resync_needed = True
            changed |= {k for k in set(before) | set(self._links) if before.get(k) != self._links.get(k)}
        self.stats.link_events += n
        self.links_changed = changed
        if changed:
            self._on_links_changed(changed)
        return n

    def tick(self) -> None:
        """Periodic work: due retries, and the full resync when its interval has passed."""
        if not self._programming:
            return
        if self._resync_needed or self._clock() >= self._next_resync:
            self.resync()
            return
        self.retry_due()

    def retry_due(self) -> int:
        """Retry the failed routes whose backoff has expired; returns how many were tried."""
        if not self._programming:
            return 0
        due = self._due()
        if due:
            self._sync(due)
            self._update_counts()
        return len(due)

    def next_deadline(self) -> float | None:
        """Clock time at which ``tick`` next has work (None before programming starts)."""
        if not self._programming:
            return None
        return min([self._next_resync] + [r.at for r in self._retry.values()])

    def pending(self) -> dict[str, str]:
        """Routes (and ``neigh:<ip>`` entries) waiting for something, with the reason."""
        return {key: p.detail for key, p in self.pending_reasons().items()}

    def pending_reasons(self) -> dict[str, Pending]:
        """As :meth:`pending`, with the reason's category (``routeplan.REASONS``) beside the text."""
        out = dict(self._pending)
        out.update({f"neigh:{ip}": p for ip, p in self._neigh_pending.items()})
        return out

    def failing(self) -> dict[str, str]:
        return {dst: r.error for dst, r in self._retry.items()}

    def desired(self) -> dict[str, Route]:
        return dict(self._desired)

    def devices_in_use(self, names: Iterable[str]) -> set[str]:
        """Which of the interfaces ``names`` at least one of our routes goes through, as far as we
        know the kernel: a route whose move off a device failed, or is waiting for its retry, still
        uses it (deleting the device would take the route with it).  O(routes) when one exists."""
        index = {self._links[n].ifindex: n for n in names if n in self._links}
        if not index:
            return set()
        return {index[k.oif] for k in self._kernel.values() if k.oif in index}

    # --- links ----------------------------------------------------------------------------------

    def _refresh_links(self) -> None:
        links: dict[str, Link] = {}
        for body in self._nl.dump(nl.RTM_GETLINK, nl.link_dump_body()):
            k = nl.parse_link(body)
            if k is not None:
                links[k.name] = Link(k.ifindex, k.up)
        self._links = links
        self._names = {link.ifindex: name for name, link in links.items()}

    def _link_msg(self, body: memoryview, deleted: bool) -> set[str]:
        k = nl.parse_link(body)
        if k is None:
            return set()
        changed = set()
        old_name = self._names.get(k.ifindex)
        if old_name is not None and old_name != k.name:  # renamed: the old name is gone
            self._links.pop(old_name, None)
            changed.add(old_name)
        if deleted:
            link = self._links.get(k.name)
            if link is not None and link.ifindex == k.ifindex:
                del self._links[k.name]
            self._names.pop(k.ifindex, None)
        else:
            self._links[k.name] = Link(k.ifindex, k.up)
            self._names[k.ifindex] = k.name
        changed.add(k.name)
        return changed

    def _on_links_changed(self, names: set[str]) -> None:
        dsts: set[str] = set()
        for name in names:
            link = self._links.get(name)
            for dst in self._by_dev.get(name, ()):
                dsts.add(dst)
                # The kernel drops (IPv4) or may keep (IPv6) routes of a downed interface, and
                # drops all of a deleted one: stop believing they are there.
                if (link is None or not link.up) and self._kernel.pop(dst, None) is not None and link is not None:
                    self._uncertain.add(dst)
        if not self._programming:
            return
        self._sync(dsts)
        if names & {DEV_VXLAN, DEV_VXLAN_V6}:
            self._resync_neighbors()
        self._update_counts()

    def _unindex(self, dst: str, dev: str) -> None:
        s = self._by_dev.get(dev)
        if s is not None:
            s.discard(dst)
            if not s:
                del self._by_dev[dev]

    # --- routes ----------------------------------------------------------------------------------

    def _dump_routes(self) -> tuple[dict[str, KernelRoute], dict[str, KernelRoute]]:
        ours: dict[str, KernelRoute] = {}
        foreign: dict[str, KernelRoute] = {}
        for family in (socket.AF_INET, socket.AF_INET6):
            for body in self._nl.dump(nl.RTM_GETROUTE, nl.route_dump_body(family)):
                k = nl.parse_route(body)
                if k is None:
                    continue
                if k.proto == self.protocol:
                    ours[k.dst] = k
                elif k.priority == nl.OUR_PRIORITY[family]:
                    foreign[k.dst] = k
        return ours, foreign

    def _due(self) -> set[str]:
        now = self._clock()
        return {dst for dst, r in self._retry.items() if r.at <= now}

    def _request(self, op: RouteOp) -> nl.Request:
        if op.action == "delete":
            return nl.RTM_DELROUTE, 0, nl.delroute_body(op.dst, self.protocol)
        assert op.route is not None
        # A create never overwrites a route that is not ours; a replace swaps ours in place.
        flags = nl.NLM_F_CREATE | (nl.NLM_F_EXCL if op.action == "create" else nl.NLM_F_REPLACE)
        return nl.RTM_NEWROUTE, flags, nl.route_body(op.route, op.oif, self.protocol)

    def _sync(self, dsts: Iterable[str]) -> set[str]:
        """Bring ``dsts`` in line with the plan; returns those now correct in the kernel."""
        now = self._clock()
        backing_off = {dst for dst, r in self._retry.items() if r.at > now}
        plan = plan_routes(
            dsts,
            self._desired,
            self._kernel,
            self._links,
            foreign=self._foreign,
            uncertain=self._uncertain,
            backing_off=backing_off,
        )
        for dst in plan.examined:
            if dst in plan.pending:
                self._pending[dst] = plan.pending[dst]
            else:
                self._pending.pop(dst, None)
        for dst in plan.settled:
            self._retry.pop(dst, None)
        ok = set(plan.settled)
        if not plan.ops:
            return ok
        self.stats.retries += sum(1 for op in plan.ops if op.dst in self._retry)
        try:
            results = self._nl.requests([self._request(op) for op in plan.ops])
        except OSError as e:
            # Acks lost or socket broken: we no longer know what the kernel did.  Reopen, and
            # let the next resync find out; meanwhile back off these destinations.
            self._note_error(f"netlink batch of {len(plan.ops)}: {e}")
            self._reopen()
            self._resync_needed = True
            for op in plan.ops:
                self._backoff(op.dst, str(e), now)
            return ok
        for op, (err, text) in zip(plan.ops, results):
            if self._absorb(op, err, text, now):
                ok.add(op.dst)
        return ok

    def _absorb(self, op: RouteOp, err: int, text: str, now: float) -> bool:
        """Record one result as a belief; True if the destination is now as planned."""
        dst = op.dst
        state, waiting = outcome(op, err)
        if state == "gone":
            if err == 0:
                self.stats.deleted += 1
            self._kernel.pop(dst, None)
            self._uncertain.discard(dst)
            self._retry.pop(dst, None)
            return dst not in self._desired
        if state == "programmed":
            assert op.route is not None
            self._kernel[dst] = belief(op.route, op.oif, self.protocol)
            self._uncertain.discard(dst)
            self._retry.pop(dst, None)
            if op.action == "create":
                self.stats.created += 1
            elif op.action == "adopt":
                self.stats.adopted += 1
                self._foreign.pop(dst, None)
            else:
                self.stats.replaced += 1
            return True
        if state == "conflict":
            # Someone else's route here (or one of ours we lost track of): a resync tells which.
            self.stats.conflicts += 1
            self._foreign.setdefault(dst, KernelRoute(dst, 0, 0, 0, 0, 0, None, False, None, 0, False))
            self._resync_needed = True
        if waiting is not None:
            self._pending[dst] = waiting
            return False
        self._fail(dst, op.action, err, text, now)
        return False

    def _fail(self, dst: str, op: str, err: int, text: str, now: float) -> None:
        msg = f"{op} {dst}: {os.strerror(err)}" + (f" ({text})" if text else "")
        self._note_error(msg)
        self._backoff(dst, msg, now)

    def _backoff(self, dst: str, msg: str, now: float) -> None:
        prev = self._retry.get(dst)
        attempts = prev.attempts + 1 if prev else 1
        self._retry[dst] = _Retry(attempts, now + backoff_delay(attempts), msg)

    def _note_error(self, msg: str) -> None:
        self.stats.netlink_errors += 1
        self.stats.last_error = msg

    def _reopen(self) -> None:
        try:
            self._nl.close()
            self._nl = self._open(self.netns, 0)
        except OSError as e:
            self._note_error(f"reopening netlink socket: {e}")

    def _update_counts(self) -> None:
        self.stats.programmed = len(self._kernel)
        self.stats.pending = len(self._pending)
        self.stats.failing = len(self._retry)
        self.stats.neighbors_programmed = len(self._neigh_kernel)

    # --- VXLAN neighbours ---------------------------------------------------------------------

    def _dump_neighbors(self) -> tuple[dict[str, str], dict[tuple[str, str], str]]:
        vx = {self._links[d].ifindex: d for d in (DEV_VXLAN, DEV_VXLAN_V6) if d in self._links}
        arp: dict[str, str] = {}
        fdb: dict[tuple[str, str], str] = {}
        if not vx:
            return arp, fdb
        for family in (socket.AF_INET, socket.AF_INET6, nl.AF_BRIDGE):
            for body in self._nl.dump(nl.RTM_GETNEIGH, nl.neigh_dump_body(family)):
                n = nl.parse_neigh(body)
                if n.ifindex not in vx or not n.state & nl.NUD_PERMANENT or n.dst is None or n.lladdr is None:
                    continue
                if n.family == nl.AF_BRIDGE:
                    fdb[(vx[n.ifindex], n.lladdr)] = n.dst
                else:
                    arp[n.dst] = n.lladdr
        return arp, fdb

    def _resync_neighbors(self) -> tuple[int, int]:
        """Dump ARP/FDB on the VXLAN devices and reconcile; (drifted, repaired)."""
        try:
            arp, fdb = self._dump_neighbors()
        except OSError as e:
            self._note_error(f"neighbour dump: {e}")
            self._resync_needed = True
            return 0, 0
        drifted = neighbor_drift(self._neigh_kernel, self._fdb_kernel, arp, fdb, self._neigh_desired)
        self._neigh_kernel, self._fdb_kernel = arp, fdb
        failures = self._sync_neighbors()
        return drifted, max(0, drifted - failures)

    def _neigh_request(self, op: NeighborOp) -> nl.Request:
        index = self._links[op.dev].ifindex
        if op.action in ("arp", "arp-del"):
            body = nl.neigh_body(nl.family_of(op.ip), index, 0, op.ip, op.mac)
        else:
            body = nl.neigh_body(nl.AF_BRIDGE, index, nl.NTF_SELF, op.ip, op.mac)
        if op.action.endswith("-del"):
            return nl.RTM_DELNEIGH, 0, body
        return nl.RTM_NEWNEIGH, nl.NLM_F_CREATE | nl.NLM_F_REPLACE, body

    def _sync_neighbors(self) -> int:
        """Bring the neighbour entries in line with the plan; returns the number of failed operations."""
        plan = plan_neighbors(self._neigh_desired, self._neigh_kernel, self._fdb_kernel, self._links)
        self._neigh_pending = plan.pending
        if not plan.ops:
            return 0
        try:
            results = self._nl.requests([self._neigh_request(op) for op in plan.ops])
        except OSError as e:
            self._note_error(f"neighbour batch: {e}")
            self._reopen()
            self._resync_needed = True
            return len(plan.ops)
        failures = 0
        for op, (err, text) in zip(plan.ops, results):
            gone = err in (errno.ENOENT, errno.ESRCH)
            if err and not (gone and op.action.endswith("-del")):
                failures += 1
                what = f"{op.action} {op.ip} {op.mac} on {op.dev}"
                self._note_error(f"{what}: {os.strerror(err)}" + (f" ({text})" if text else ""))
                self._resync_needed = True  # neighbours are few: a full pass is the retry
                continue
            self.stats.neighbor_ops += 1
            if op.action == "arp":
                self._neigh_kernel[op.ip] = op.mac
            elif op.action == "arp-del":
                self._neigh_kernel.pop(op.ip, None)
            elif op.action == "fdb":
                self._fdb_kernel[(op.dev, op.mac)] = op.ip
            else:
                self._fdb_kernel.pop((op.dev, op.mac), None)
        return failures
