"""Felix that cannot program what it should is never silent and ready (issue 9, items 2 and 4).

A real typha serves a small cluster; felix runs as an agent in this process with its health app.
The dataplane is a real network namespace where the scenario needs the kernel's own refusal (a
missing interface, a VXLAN device that cannot be configured), and the in-memory kernel where it
needs something a test cannot do to a real one (every write refused, as with NET_ADMIN dropped).
"""

from __future__ import annotations

import asyncio
import errno
import hashlib
import logging
import os
import shutil
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest

from felix.agent import FelixAgent
from felix.dataplane.devices import DeviceManager
from felix.dataplane.fakenetlink import FakeKernel
from felix.dataplane.routes import RouteManager
from loadtest.apiserver.fixtures import make_calico_object, make_namespace, make_node, make_pod
from protocol import SYNCER_FELIX, SyncStatus
from typha.ingest import ADDED, Ingestor
from typha.snapcache import SnapCache
from typha.syncserver import ServerConfig, SyncServer

from .conftest import kernel_skip, wait_for
from .support.felix_lab import FelixEndpoints, serving, typha_serving
from .support.netlab import UNDERLAY, scratch_netns

GRACE = 0.5


def iface(pod: str) -> str:
    return "cali" + hashlib.sha1(f"default.{pod}".encode()).hexdigest()[:11]


def node(name: str, ip: str, vtep: str | None = None, mac: str | None = None) -> dict[str, Any]:
    obj = make_node(name, ip)
    if vtep:
        obj["metadata"]["annotations"]["projectcalico.org/IPv4VXLANTunnelAddr"] = vtep
    if mac:
        obj["metadata"]["annotations"]["projectcalico.org/VXLANTunnelMACAddr"] = mac
    return obj


def pool(vxlan: str = "Never") -> dict[str, Any]:
    spec = {"cidr": "10.200.0.0/16", "ipipMode": "Never", "vxlanMode": vxlan, "blockSize": 26}
    return make_calico_object("IPPool", "p", spec)


def block(owner: str, cidr: str) -> list[tuple[str, str, dict[str, Any]]]:
    aff = {"node": owner, "cidr": cidr, "state": "confirmed"}
    spec = {"cidr": cidr, "affinity": f"host:{owner}", "allocations": [], "attributes": []}
    return [
        (ADDED, "blockaffinities", make_calico_object("BlockAffinity", f"{owner}-{cidr[:-3]}", aff)),
        (ADDED, "ipamblocks", make_calico_object("IPAMBlock", cidr.replace("/", "-"), spec)),
    ]


@dataclass
class Felix(FelixEndpoints):
    ingest: Ingestor


async def run_felix(
    events: list[tuple[str, str, dict[str, Any]]], nodename: str, routes: RouteManager, devices: DeviceManager
) -> AsyncIterator[Felix]:
    try:
        async with typha_serving([(ADDED, "namespaces", make_namespace("default")), *events]) as (
            cache,
            ingest,
            server,
        ):
            cache.set_status(SyncStatus.IN_SYNC)
            agent = FelixAgent(
                nodename, [("127.0.0.1", server.port)], routes=routes, devices=devices, pending_grace=GRACE
            )
            async with serving(agent, stop_timeout=5) as felix:
                await wait_for(lambda: agent.in_sync, 5, "in sync")
                yield Felix(agent, felix.http, felix.health, felix.metrics, ingest)
    finally:
        routes.close()
        devices.close()


@pytest.fixture
def netns() -> Iterator[str]:
    with scratch_netns("ptready", *UNDERLAY) as name:
        yield name


@pytest.mark.slow
@pytest.mark.kernel
async def test_a_route_whose_interface_never_appears_makes_felix_unready_and_says_why(
    netns: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="felix")
    events = [
        (ADDED, "ippools", pool()),
        (ADDED, "nodes", node("me", "198.18.0.1")),
        *block("me", "10.200.0.0/26"),
        (ADDED, "pods", make_pod("default", "web", "me", "10.200.0.5")),  # its interface does not exist
    ]
    gen = run_felix(events, "me", RouteManager(netns), DeviceManager(netns))
    felix = await gen.__anext__()
    try:
        await wait_for(lambda: felix.agent.programmed_once, 5, "first programming")
        await wait_for(lambda: not felix.agent.ready, 5, "unready after the grace period")
        code, text = await felix.get("/readiness")
        assert code == 503 and "10.200.0.5/32" in text and "interface-missing" in text
        st = await felix.status()
        assert st["ready"] is False and st["pending_by_reason"] == {"interface-missing": 1}
        [p] = st["problems"]
        assert (p["what"], p["reason"]) == ("10.200.0.5/32", "interface-missing") and p["seconds"] >= GRACE
        assert iface("web") in p["detail"]
        assert await felix.metric('felix_routes_pending{reason="interface-missing"}') == 1.0
        assert await felix.metric('felix_routes_pending{reason="device-missing"}') == 0.0
        warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert [m for m in warnings if "10.200.0.5/32" in m and "interface-missing" in m], warnings
        # The CNI plugin makes the interface: programmed, ready, and the log says it cleared.
        subprocess.run(
            ["ip", "-n", netns, "link", "add", iface("web"), "type", "veth", "peer", "name", "p0"], check=True
        )
        subprocess.run(["ip", "-n", netns, "link", "set", iface("web"), "up"], check=True)
        await wait_for(lambda: felix.agent.ready, 5, "ready once the route is programmed")
        assert (await felix.status())["problems"] == []
        assert any(r.getMessage().startswith("resolved (interface-missing)") for r in caplog.records)
    finally:
        await gen.aclose()


@pytest.mark.slow
@pytest.mark.kernel
async def test_a_vxlan_device_that_cannot_be_made_makes_felix_unready_and_says_why(netns: str) -> None:
    events = [
        (ADDED, "ippools", pool(vxlan="Always")),
        (ADDED, "nodes", node("me", "198.18.0.1")),  # no VXLAN tunnel address: the device cannot be made
        (ADDED, "nodes", node("other", "198.18.0.2", vtep="10.200.1.1", mac="66:00:00:00:00:02")),
        *block("me", "10.200.0.0/26"),
        *block("other", "10.200.1.0/26"),
    ]
    gen = run_felix(events, "me", RouteManager(netns), DeviceManager(netns))
    felix = await gen.__anext__()
    try:
        await wait_for(lambda: not felix.agent.ready and felix.agent.programmed_once, 5, "unready")
        st = await felix.status()
        by_what = {p["what"]: p for p in st["problems"]}
        assert by_what["device:vxlan.calico"]["detail"] == "node me has no IPv4 VXLAN tunnel address for vxlan.calico"
        assert by_what["10.200.1.0/26"]["reason"] == "device-missing"
        assert await felix.metric('felix_routes_pending{reason="device-missing"}') == 1.0
        # The Node gets its annotations: felix makes the device and routes through it.
        felix.ingest.handle([(ADDED, "nodes", node("me", "198.18.0.1", vtep="10.200.0.1", mac="66:00:00:00:00:01"))])
        await wait_for(lambda: felix.agent.ready, 5, "ready once vxlan.calico exists")
        routes = subprocess.run(["ip", "-n", netns, "route"], capture_output=True, text=True).stdout
        assert "10.200.1.0/26 via 10.200.1.1 dev vxlan.calico" in routes
    finally:
        await gen.aclose()


async def test_writes_refused_as_without_net_admin_are_logged_counted_and_unready(
    caplog: pytest.LogCaptureFixture,
) -> None:
    kernel = FakeKernel()
    kernel.add_link("under0")
    kernel.add_addr("under0", "198.18.0.1/16")
    kernel.deny = errno.EPERM
    events = [
        (ADDED, "ippools", pool()),
        (ADDED, "nodes", node("me", "198.18.0.1")),
        (ADDED, "nodes", node("other", "198.18.0.2")),
        *block("me", "10.200.0.0/26"),
        *block("other", "10.200.1.0/26"),
    ]
    routes = RouteManager(netlink=kernel.socket)
    gen = run_felix(events, "me", routes, DeviceManager(netlink=kernel.socket))
    felix = await gen.__anext__()
    try:
        await wait_for(lambda: not felix.agent.ready and felix.agent.programmed_once, 5, "unready")
        assert (await felix.metric("felix_netlink_errors_total") or 0) >= 2
        code, text = await felix.get("/readiness")
        assert code == 503 and "netlink-error" in text
        st = await felix.status()
        assert {p["what"] for p in st["problems"]} == {"10.200.0.0/26", "10.200.1.0/26"}
        assert all("Operation not permitted" in p["detail"] for p in st["problems"])
        assert any("Operation not permitted" in r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING)
        kernel.deny = 0  # privileges back: the retries succeed
        await wait_for(lambda: felix.agent.ready, 5, "ready after the retries succeed")
        assert len(kernel.routes) == 2
    finally:
        await gen.aclose()


async def test_an_unknown_node_name_programs_nothing_and_stays_unready(caplog: pytest.LogCaptureFixture) -> None:
    kernel = FakeKernel()
    kernel.add_link("under0")
    kernel.add_addr("under0", "198.18.0.1/16")
    events = [
        (ADDED, "ippools", pool()),
        (ADDED, "nodes", node("node-1", "198.18.0.1")),
        (ADDED, "nodes", node("other", "198.18.0.2")),
        *block("node-1", "10.200.0.0/26"),
        *block("other", "10.200.1.0/26"),
    ]
    # felix was given its hostname, not its Kubernetes node name: every block would look remote.
    gen = run_felix(
        events, "node-1.example.com", RouteManager(netlink=kernel.socket), DeviceManager(netlink=kernel.socket)
    )
    felix = await gen.__anext__()
    try:
        await wait_for(lambda: any(r.levelno == logging.ERROR for r in caplog.records), 5, "an error logged")
        [err] = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
        assert "'node-1.example.com' is not a Node typha knows" in err
        code, text = await felix.get("/readiness")
        assert code == 503 and "is not a Node typha knows" in text
        assert kernel.routes == {} and not felix.agent.programmed_once
        # The Node appears under that name (or felix is restarted with the right one): it programs.
        felix.ingest.handle(
            [(ADDED, "nodes", node("node-1.example.com", "198.18.0.1")), *block("node-1.example.com", "10.200.2.0/26")]
        )
        await wait_for(lambda: felix.agent.ready, 5, "ready once the node is known")
        assert {r.dst for r in kernel.routes.values()} >= {"10.200.2.0/26", "10.200.0.0/26", "10.200.1.0/26"}
    finally:
        await gen.aclose()


async def test_vteps_of_other_nodes_are_no_problem_while_no_pool_uses_vxlan() -> None:
    kernel = FakeKernel()
    kernel.add_link("under0")
    kernel.add_addr("under0", "198.18.0.1/16")
    events = [
        (ADDED, "ippools", pool()),  # native routing...
        (ADDED, "nodes", node("me", "198.18.0.1", vtep="10.200.0.1", mac="66:00:00:00:00:01")),
        (ADDED, "nodes", node("other", "198.18.0.2", vtep="10.200.1.1", mac="66:00:00:00:00:02")),  # ...but VTEPs
        *block("me", "10.200.0.0/26"),
        *block("other", "10.200.1.0/26"),
    ]
    gen = run_felix(events, "me", RouteManager(netlink=kernel.socket), DeviceManager(netlink=kernel.socket))
    felix = await gen.__anext__()
    try:
        await wait_for(lambda: felix.agent.programmed_once, 5, "programmed")
        assert "neigh:10.200.1.1" in felix.agent.routes.pending()  # waiting for a device nobody needs...
        assert (await felix.status())["problems"] == []  # ...which is not a problem
        felix.ingest.handle([(ADDED, "ippools", pool(vxlan="Always"))])
        await wait_for(lambda: felix.agent.routes.pending() == {}, 5, "VXLAN programmed")
        assert kernel.link("vxlan.calico").mac == "66:00:00:00:00:01" and felix.agent.ready
    finally:
        await gen.aclose()


@pytest.mark.kernel
@pytest.mark.slow
async def test_the_felix_process_without_net_admin_logs_counts_and_is_unready(netns: str) -> None:
    """The issue's own scenario: felix with CAP_NET_ADMIN dropped (setpriv), on a real kernel."""
    if shutil.which("setpriv") is None:
        kernel_skip("setpriv (util-linux) is not installed")
    cache = SnapCache(SYNCER_FELIX)
    server = SyncServer({SYNCER_FELIX: cache}, ServerConfig(host="127.0.0.1", port=0))
    await server.start()
    Ingestor({SYNCER_FELIX: cache}).handle(
        [
            (ADDED, "ippools", pool()),
            (ADDED, "nodes", node("me", "198.18.0.1")),
            (ADDED, "nodes", node("other", "198.18.0.2")),
            *block("me", "10.200.0.0/26"),
            *block("other", "10.200.1.0/26"),
        ]
    )
    cache.set_status(SyncStatus.IN_SYNC)
    ports = []
    for _ in range(2):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            ports.append(s.getsockname()[1])
    env = {
        **os.environ,
        "FELIX_NODENAME": "me",
        "FELIX_TYPHA_ADDRESSES": f"127.0.0.1:{server.port}",
        "FELIX_NETNS": netns,
        "FELIX_HEALTH_PORT": str(ports[0]),
        "FELIX_METRICS_PORT": str(ports[1]),
        "FELIX_ROUTE_PENDING_GRACE": "0.5",
        "FELIX_POLICY_ENABLED": "false",
    }
    drop = ["setpriv", "--bounding-set=-net_admin", "--inh-caps=-net_admin"]
    proc = subprocess.Popen([*drop, sys.executable, "-m", "felix"], env=env, stderr=subprocess.PIPE)
    try:
        async with aiohttp.ClientSession() as http:

            async def get(port: int, path: str) -> tuple[int, str]:
                try:
                    async with http.get(f"http://127.0.0.1:{port}{path}") as r:
                        return r.status, await r.text()
                except aiohttp.ClientError:
                    return 0, ""

            verdict: list[tuple[int, str]] = []

            async def unready() -> bool:
                verdict[:] = [await get(ports[0], "/readiness")]
                return verdict[0][0] == 503 and "netlink-error" in verdict[0][1]

            loop = asyncio.get_running_loop()
            deadline = loop.time() + 15
            while not await unready():
                assert proc.poll() is None, "felix exited"
                assert loop.time() < deadline, f"felix did not report the refused writes: {verdict}"
                await asyncio.sleep(0.1)
            assert "Operation not permitted" in verdict[0][1]
            _, metrics = await get(ports[1], "/metrics")
            errors = [float(x.split()[-1]) for x in metrics.splitlines() if x.startswith("felix_netlink_errors_total ")]
            assert errors and errors[0] >= 2, metrics
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=10)
        await server.shutdown()
    assert "Operation not permitted" in err.decode()  # a log line, not silence
