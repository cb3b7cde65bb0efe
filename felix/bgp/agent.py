"""Felix's BGP side: follow typha's bgp syncer, render BIRD's configuration, keep BIRD running it.

Design note
-----------
The same split as Calico's calico-node, where confd follows the bgp syncer beside felix: a second
:class:`protocol.client.SyncClient` (syncer ``bgp``) feeds :class:`~felix.bgp.view.BgpView`; after
each burst of updates, and only once the syncer is in sync (a half-received view would tear down
sessions), :func:`~felix.bgp.render.render` produces the text and
:class:`~felix.bgp.bird.BirdManager` makes BIRD run it -- nothing happens when the text is
unchanged, which is most updates (another node's pod block is not in this node's configuration).
Rendering waits for the event loop to drain a burst, so a snapshot of thousands of keys becomes
one render and at most one ``configure``.

A status poll reads ``show protocols all`` every few seconds into metrics and ``/status``. Felix is
not ready while BIRD is not running, rejects the configuration, or -- after a grace period -- has no
session established with any of its peers; a single peer down is a metric and a ``/status`` line,
not a reason to pull the node out of service (Calico's bird-ready check is stricter; a top-of-rack
router being rebooted should not mark every node unready).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any

from prometheus_client import CollectorRegistry

from protocol import KV, SyncStatus
from protocol.client import AddressSource, SyncClient
from protocol.keys import SYNCER_BGP

from .bird import BirdManager
from .birdctl import BirdError, ProtocolStatus
from .metrics import BgpMetrics
from .render import Rendered, render
from .view import BgpView

__all__ = ["BgpAgent"]

log = logging.getLogger("felix.bgp")


class BgpAgent:
    def __init__(
        self,
        nodename: str,
        typha: AddressSource,
        manager: BirdManager,
        *,
        registry: CollectorRegistry | None = None,
        read_timeout: float | None = None,
        status_interval: float = 5.0,
        session_grace: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.nodename = nodename
        self.manager = manager
        self.view = BgpView()
        self.metrics = BgpMetrics(registry)
        self.status_interval = status_interval
        self.session_grace = session_grace
        self.client = SyncClient(
            typha,
            SYNCER_BGP,
            hostname=nodename,
            info="pyfelix-bgp",
            on_updates=self._on_updates,
            on_status=self._on_status,
            on_connection=self._on_connection,
            read_timeout=read_timeout,
        )
        self.in_sync = False
        self.rendered: Rendered | None = None
        self.protocols: dict[str, ProtocolStatus] = {}
        self.status_error = ""
        self._clock = clock
        self._none_up_since: float | None = None  # when "no session established" began
        self._dirty = asyncio.Event()
        self._stopping = asyncio.Event()

    # -- typha callbacks -----------------------------------------------------------------------------
    def _on_updates(self, kvs: list[KV]) -> None:
        self.metrics.updates.inc(len(kvs))
        bad = self.view.apply(kvs)
        if bad:
            self.metrics.malformed.inc(len(bad))
            for key, why in bad[:3]:
                log.warning("ignoring unusable bgp update for %s: %s", key, why)
        self._dirty.set()

    def _on_status(self, status: SyncStatus) -> None:
        if status is SyncStatus.IN_SYNC and not self.in_sync:
            self.in_sync = True
            log.info(
                "in sync with typha's bgp syncer: %d nodes, %d BGPPeers", len(self.view.nodes), len(self.view.peers)
            )
            self._dirty.set()

    def _on_connection(self, up: bool, detail: str) -> None:
        self.metrics.typha_connected.set(1 if up else 0)
        if not up:
            log.warning("lost typha (bgp syncer): %s", detail)

    # -- render and apply ------------------------------------------------------------------------------
    async def _render_loop(self) -> None:
        while not self._stopping.is_set():
            await self._dirty.wait()
            await asyncio.sleep(0)  # let the rest of a burst of updates arrive first
            self._dirty.clear()
            if not self.in_sync or self._stopping.is_set():
                continue
            t0 = time.perf_counter()
            r = render(self.view, self.nodename)
            self.metrics.render_seconds.observe(time.perf_counter() - t0)
            old = self.rendered
            for why in r.problems:
                if old is None or why not in old.problems:
                    log.warning("BGP: %s", why)
            self.rendered = r
            if r.config is None:
                continue
            ok = await self.manager.apply(r.config)
            self._export_manager()
            if not ok and self.manager.config_valid:  # BIRD could not start: try again soon
                asyncio.get_running_loop().call_later(2.0, self._dirty.set)
            else:
                await self._poll_status()

    def _export_manager(self) -> None:
        m = self.manager
        self.metrics.config_valid.set(1 if m.config_valid else 0)
        self.metrics.bird_running.set(1 if m.running else 0)
        self.metrics.counters_from(m.restarts, m.applies, m.rejects)

    async def _poll_status(self) -> None:
        try:
            rows = await self.manager.protocols() if self.manager.running else []
            self.status_error = "" if self.manager.running else "BIRD is not running"
        except BirdError as e:
            rows, self.status_error = [], str(e)
            self.metrics.bird_unreachable.inc()
        self.protocols = {p.name: p for p in rows}
        peers = self.rendered.peers if self.rendered else ()
        self.metrics.peers(peers, self.protocols)
        self._export_manager()
        up = any(self.protocols.get(p.name) and self.protocols[p.name].established for p in peers)
        if up or not peers:
            self._none_up_since = None
        elif self._none_up_since is None:
            self._none_up_since = self._clock()

    async def _status_loop(self) -> None:
        while not self._stopping.is_set():
            await self._poll_status()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), self.status_interval)

    # -- readiness and status --------------------------------------------------------------------------
    def not_ready_because(self) -> str | None:
        if not self.in_sync:
            return "BGP: not yet in sync with typha's bgp syncer"
        r = self.rendered
        if r is None:
            return "BGP: no configuration rendered yet"
        if r.config is None:
            return "BGP: " + "; ".join(r.problems)
        m = self.manager
        if not m.config_valid:
            return f"BGP: {m.last_error}"
        if not m.running:
            return f"BGP: BIRD is not running ({m.last_error or 'starting'})"
        since = self._none_up_since
        if since is not None and self._clock() - since > self.session_grace:
            return f"BGP: no session established with any of {len(r.peers)} peers for {self._clock() - since:.0f}s"
        return None

    def status(self) -> dict[str, Any]:
        r, m = self.rendered, self.manager
        peers = []
        for p in r.peers if r else ():
            st = self.protocols.get(p.name)
            peers.append(
                {
                    "name": p.name,
                    "type": p.kind,
                    "address": p.address,
                    "as_number": p.as_number,
                    "source": p.source,
                    "state": st.info.split()[0] if st and st.info else "Down",
                    "info": st.info if st else "",
                    "since": st.since if st else "",
                    "routes_imported": st.routes_imported if st else 0,
                    "routes_exported": st.routes_exported if st else 0,
                    "last_error": st.last_error if st else "",
                }
            )
        return {
            "backend": "bird",
            "in_sync": self.in_sync,
            "as_number": r.as_number if r else None,
            "route_reflector_cluster_id": r.route_reflector if r else None,
            "originated": list(r.originated) if r else [],
            "problems": list(r.problems) if r else [],
            "bird": {
                "running": m.running,
                "pid": m.pid,
                "adopted": m.adopted,
                "config": m.config_path,
                "config_valid": m.config_valid,
                "last_error": m.last_error or self.status_error,
                "restarts": m.restarts,
                "applies": m.applies,
                "rejects": m.rejects,
            },
            "peers": peers,
        }

    # -- lifecycle -----------------------------------------------------------------------------------
    async def run(self) -> None:
        tasks = [
            asyncio.create_task(self.manager.run(), name="bird-supervisor"),
            asyncio.create_task(self._render_loop(), name="bgp-render"),
            asyncio.create_task(self._status_loop(), name="bgp-status"),
        ]
        try:
            await self.client.run()
        finally:
            self._stopping.set()
            self._dirty.set()
            for t in tasks[1:]:
                t.cancel()
            await self.manager.stop()
            for t in tasks:
                with contextlib.suppress(asyncio.CancelledError):
                    await t

    def stop(self) -> None:
        self._stopping.set()
        self._dirty.set()
        self.client.stop()
