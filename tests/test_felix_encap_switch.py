"""A pool switched off VXLAN never leaves a destination without a route: make before use, remove after last use.

The agent with its real route and device managers on the in-memory kernel, fed by a real in-process
typha. The kernel checks the invariant at every write it applies, so a device deleted while one of
our routes still goes through it (the kernel drops such routes with the device) is caught at the
write that did it, not by a poll that happens to land in the gap. The cluster test
(test_felix_cluster.py) checks the same on a real kernel with felix processes.
"""

from __future__ import annotations

import errno

from felix.dataplane.devices import DeviceManager
from felix.dataplane.fakenetlink import FakeKernel
from felix.dataplane.routes import RouteManager
from typha.ingest import ADDED, MODIFIED

from .conftest import wait_for
from .test_felix_readiness import block, node, pool, run_felix

REMOTE = "10.200.1.0/26"  # the other node's block


class WatchedKernel(FakeKernel):
    """Records every write after which a watched destination has no route."""

    def __init__(self) -> None:
        super().__init__()
        self.watched: set[str] = set()
        self.gaps: list[str] = []

    def handle(self, mtype: int, flags: int, body: bytes) -> int:
        err = super().handle(mtype, flags, body)
        self.gaps += [f"no route to {dst} after request type {mtype}" for dst in self.watched if not self.route(dst)]
        return err

    def has_link(self, name: str) -> bool:
        return any(k.name == name for k in self.links.values())


def vxlan_cluster() -> list[tuple[str, str, dict]]:
    return [
        (ADDED, "ippools", pool(vxlan="Always")),
        (ADDED, "nodes", node("me", "198.18.0.1", vtep="10.200.0.1", mac="66:00:00:00:00:01")),
        (ADDED, "nodes", node("other", "198.18.0.2", vtep="10.200.1.1", mac="66:00:00:00:00:02")),
        *block("me", "10.200.0.0/26"),
        *block("other", REMOTE),
    ]


async def test_a_route_that_cannot_move_off_vxlan_calico_keeps_the_device_until_it_has() -> None:
    kernel = WatchedKernel()
    kernel.add_link("under0")
    kernel.add_addr("under0", "198.18.0.1/16")
    routes = RouteManager(netlink=kernel.socket, resync_interval=0.1)  # resyncs (and device syncs) keep coming
    gen = run_felix(vxlan_cluster(), "me", routes, DeviceManager(netlink=kernel.socket))
    felix = await gen.__anext__()
    try:
        await wait_for(lambda: (r := kernel.route(REMOTE)) is not None and r.gateway == "10.200.1.1", 5, "VXLAN route")
        kernel.watched.add(REMOTE)
        # The pool leaves VXLAN while the kernel refuses to change this route for a moment (out of
        # memory, say): the route stays on vxlan.calico, so the device must stay too.
        kernel.fail[REMOTE] = errno.ENOBUFS
        felix.ingest.handle([(MODIFIED, "ippools", pool())])
        await wait_for(lambda: REMOTE in routes.failing(), 5, "the replace to fail")
        seen = routes.stats.resyncs
        await wait_for(lambda: routes.stats.resyncs >= seen + 3, 5, "resyncs, each followed by a device sync")
        assert kernel.has_link("vxlan.calico"), "the device went while a route still used it"
        vxlan_route = kernel.route(REMOTE)
        assert vxlan_route is not None and vxlan_route.gateway == "10.200.1.1"
        del kernel.fail[REMOTE]  # the retry moves the route; then the device goes
        await wait_for(
            lambda: not kernel.has_link("vxlan.calico"), 5, "vxlan.calico removed after its last route moved"
        )
        native = kernel.route(REMOTE)
        assert native is not None and native.gateway == "198.18.0.2"
        assert kernel.gaps == []
    finally:
        await gen.aclose()


async def test_switching_off_vxlan_replaces_every_route_before_the_device_goes() -> None:
    kernel = WatchedKernel()
    kernel.add_link("under0")
    kernel.add_addr("under0", "198.18.0.1/16")
    routes = RouteManager(netlink=kernel.socket)
    gen = run_felix(vxlan_cluster(), "me", routes, DeviceManager(netlink=kernel.socket))
    felix = await gen.__anext__()
    try:
        await wait_for(lambda: (r := kernel.route(REMOTE)) is not None and r.gateway == "10.200.1.1", 5, "VXLAN route")
        kernel.watched.add(REMOTE)
        felix.ingest.handle([(MODIFIED, "ippools", pool())])
        await wait_for(lambda: not kernel.has_link("vxlan.calico"), 5, "vxlan.calico removed")
        native = kernel.route(REMOTE)
        assert native is not None and native.gateway == "198.18.0.2" and kernel.gaps == []
    finally:
        await gen.aclose()
