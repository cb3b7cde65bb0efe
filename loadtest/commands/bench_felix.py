"""`loadtest bench felix`: felix's cold start with N routes, and API event -> route in the kernel.

Everything is real: the API-server emulator (in this process), a `typha --datastore kubernetes`
process, and a `felix` process inside a network namespace of its own. The cluster is `nodes` remote
nodes each owning `blocks_per_node` /26 blocks, so felix must program nodes x blocks routes `via`
their node (native routing, gateways on-link through an underlay interface), plus one local block.

1. Cold start: felix starts against a typha that already holds everything; we watch the kernel
   (a netlink socket in the namespace, subscribed to route events) until all routes exist.
2. One pod: a `cali*` veth is created, then a pod with an address on this node is written to the
   API server; the time until the kernel announces its /32 route is the end-to-end latency
   (API write -> typha watch -> projection -> fan-out -> felix -> netlink), repeated `pods` times.
Needs root (namespaces, netlink).
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import socket
import struct
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from rich.console import Console

from felix.dataplane.netlink import RTPROT_FELIX
from felix.dataplane.netns import run_in_netns
from loadtest.apiserver import start_apiserver
from loadtest.apiserver.fixtures import make_calico_object, make_namespace, make_node, make_pod
from loadtest.support.cluster import apply_events
from loadtest.support.console import err_console, kv_table, out_console
from loadtest.support.histogram import LogHistogram
from loadtest.support.processes import TyphaProcess
from typha.ingest import ADDED

RTMGRP_IPV4_ROUTE = 0x40
RTM_NEWROUTE = 24
_NLMSG = struct.Struct("=IHHII")
_RTMSG = struct.Struct("=BBBBBBBBI")


def _route_events(sock: socket.socket) -> list[tuple[int, int]]:
    """Drain a route-event socket: [(dst_len, protocol)] of the RTM_NEWROUTE messages read."""
    out: list[tuple[int, int]] = []
    while True:
        try:
            data = sock.recv(1 << 20)
        except BlockingIOError:
            return out
        off = 0
        while off + _NLMSG.size <= len(data):
            length, mtype, _, _, _ = _NLMSG.unpack_from(data, off)
            if length < _NLMSG.size:
                break
            if mtype == RTM_NEWROUTE:
                _family, dst_len, _src, _tos, _table, proto, _scope, _type, _ = _RTMSG.unpack_from(
                    data, off + _NLMSG.size
                )
                out.append((dst_len, proto))
            off += (length + 3) & ~3


def _sh(*args: str) -> None:
    subprocess.run(list(args), check=True, capture_output=True)


def _count_routes(ns: str) -> int:
    out = subprocess.run(
        ["ip", "-n", ns, "route", "show", "proto", str(RTPROT_FELIX)], capture_output=True, text=True
    ).stdout
    return out.count("\n")


async def run_felix_bench(
    nodes: int = 500, blocks_per_node: int = 20, pods: int = 20, console: Console | None = None
) -> dict[str, Any]:
    console = console or err_console()
    if os.geteuid() != 0:
        raise SystemExit("bench felix needs root (network namespaces and netlink)")
    tag = uuid.uuid4().hex[:4]
    ns = f"ptbench{tag}"
    me = "bench-node"
    api = await start_apiserver()
    workdir = tempfile.TemporaryDirectory(prefix="pytypha-felixbench-")
    typha: TyphaProcess | None = None
    felix: subprocess.Popen[bytes] | None = None
    out: dict[str, Any] = {"remote_routes": nodes * blocks_per_node}
    try:
        # The node: a namespace with an underlay interface on which every node IP is on-link (a veth
        # pair with both ends inside: this kernel has no dummy module).
        _sh("ip", "netns", "add", ns)
        for cmd in (
            ["ip", "link", "add", "under0", "type", "veth", "peer", "name", "under1"],
            ["ip", "addr", "add", "198.18.0.1/15", "dev", "under0"],
            ["ip", "link", "set", "under1", "up"],
            ["ip", "link", "set", "under0", "up"],
            ["ip", "link", "set", "lo", "up"],
        ):
            _sh("ip", "netns", "exec", ns, *cmd)
        store = api.store
        events: list[tuple[str, str, dict]] = [
            (ADDED, "namespaces", make_namespace("default")),
            (
                ADDED,
                "ippools",
                make_calico_object(
                    "IPPool",
                    "pool",
                    {"cidr": "10.128.0.0/9", "ipipMode": "Never", "vxlanMode": "Never", "blockSize": 26},
                ),
            ),
            (ADDED, "nodes", make_node(me, "198.18.0.1")),
        ]
        blocks = []
        for n in range(nodes + 1):
            name = me if n == 0 else f"node-{n:05d}"
            if n:
                events.append((ADDED, "nodes", make_node(name, f"198.18.{n // 250 + 1}.{n % 250 + 1}")))
            for b in range(blocks_per_node if n else 1):
                i = n * blocks_per_node + b
                cidr = f"10.{128 + (i >> 10)}.{(i >> 2) & 255}.{(i & 3) * 64}/26"
                blocks.append((name, cidr))
                events.append(
                    (
                        ADDED,
                        "blockaffinities",
                        make_calico_object(
                            "BlockAffinity",
                            f"{name}-{cidr.replace('/', '-')}",
                            {"node": name, "cidr": cidr, "state": "confirmed", "deleted": "false"},
                        ),
                    )
                )
                events.append(
                    (
                        ADDED,
                        "ipamblocks",
                        make_calico_object(
                            "IPAMBlock",
                            cidr.replace("/", "-"),
                            {
                                "cidr": cidr,
                                "affinity": f"host:{name}",
                                "allocations": [None] * 64,
                                "attributes": [],
                                "unallocated": [],
                            },
                        ),
                    )
                )
        apply_events(store, events)
        local_block = blocks[0][1]
        kc = str(Path(workdir.name) / "kubeconfig")
        api.write_kubeconfig(kc)
        typha = TyphaProcess(["--datastore", "kubernetes", "--kubeconfig", kc, "--log-level", "WARNING"])
        await typha.start()
        typha_port = typha.port

        # Cold start.
        # felix dials typha on loopback from the root namespace and programs the node namespace
        # through netlink sockets opened inside it (--netns): traffic stays on loopback.
        env = {
            **os.environ,
            "FELIX_NODENAME": me,
            "FELIX_TYPHA_ADDRESSES": f"127.0.0.1:{typha_port}",
            "FELIX_HEALTH_PORT": "0",
            "FELIX_METRICS_PORT": "0",
            "FELIX_LOG_LEVEL": "WARNING",
            "FELIX_NETNS": ns,
        }
        want = nodes * blocks_per_node + 1  # remote blocks + our own blackhole
        console.print(f"cold start: felix programs {want:,} routes")
        t0 = time.monotonic()
        felix = subprocess.Popen([sys.executable, "-m", "felix"], env=env, stderr=subprocess.PIPE)
        while _count_routes(ns) < want:
            if felix.poll() is not None:
                raise RuntimeError(f"felix exited: {felix.stderr.read().decode()[-2000:] if felix.stderr else ''}")
            if time.monotonic() - t0 > 120:
                raise RuntimeError("felix did not converge in 120 s")
            await asyncio.sleep(0.02)
        out["cold_start_seconds"] = time.monotonic() - t0
        console.print(
            f"  converged in {out['cold_start_seconds']:.2f}s (includes felix start-up, connect and snapshot)"
        )

        # One pod at a time: API write -> route in the kernel.
        sock = run_in_netns(ns, lambda: socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE))
        sock.bind((0, RTMGRP_IPV4_ROUTE))
        sock.setblocking(False)
        lat = LogHistogram()
        base = local_block.split("/")[0].rsplit(".", 1)
        for p in range(pods):
            pod = f"bench-pod-{p}"
            iface = "cali" + hashlib.sha1(f"default.{pod}".encode()).hexdigest()[:11]
            _sh("ip", "-n", ns, "link", "add", iface, "type", "veth", "peer", "name", f"pe{p}")
            _sh("ip", "-n", ns, "link", "set", iface, "up")
            _route_events(sock)  # drain
            ip = f"{base[0]}.{int(base[1]) + 2 + p}"
            t1 = time.perf_counter()
            store.create("pods", make_pod("default", pod, me, ip))
            while True:
                if any(dl == 32 and proto == RTPROT_FELIX for dl, proto in _route_events(sock)):
                    lat.add(time.perf_counter() - t1)
                    break
                if time.perf_counter() - t1 > 10:
                    raise RuntimeError(f"route for {ip} did not appear")
                await asyncio.sleep(0.0005)
        sock.close()
        out["pod_add_latency"] = lat.summary()
    finally:
        if felix is not None:
            felix.terminate()
            try:
                felix.wait(10)
            except subprocess.TimeoutExpired:
                felix.kill()
        if typha is not None:
            await typha.stop()
        await api.stop()
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        workdir.cleanup()
    t = kv_table("felix")
    t.add_row("routes at cold start", f"{want:,}")
    t.add_row("cold start to converged", f"{out['cold_start_seconds']:.2f} s")
    pl = out["pod_add_latency"]
    t.add_row(
        f"pod add: API write -> kernel route (n={pl['count']})",
        f"p50 {pl['p50'] * 1e3:.1f} ms, p99 {pl['p99'] * 1e3:.1f} ms, max {pl['max'] * 1e3:.1f} ms",
    )
    out_console().print(t)
    return out
