"""A BGP lab on the real kernel: node namespaces on one fabric bridge, and a top-of-rack BIRD.

Layout (every name carries a random tag; nothing is created in the root namespace, so two runs --
or two engineers' suites -- never collide):

  fabric ns  <tag>-fab : bridge br0 with 198.18.9.254/24, forwarding on; the top-of-rack BIRD
                         (AS 65000) runs here, accepts any node of the subnet as a peer (dynamic
                         BGP, ``neighbor range``) and installs what it learns (``proto bird``)
  node ns    <tag>-n<i>: eth0 198.18.9.<i>/24 on the bridge, default route via the fabric,
                         forwarding on; its BIRD is driven by felix's BirdManager
  pod ns     <tag>-p-<name>: eth0 <ip>/32 paired with cali<hash> in its node, gateway 169.254.1.1

Typha, where a test needs it, listens inside the fabric namespace (see `listen_in`).
Addresses are from the benchmarking range 198.18.0.0/15 (RFC 2544).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import selectors
import shutil
import socket
import subprocess
import tempfile
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field

from .support.netlab import add_pod_netns, sh, workload_iface

NET = "198.18.9"
FABRIC_IP = f"{NET}.254"
TOR_AS = 65000
CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


def since_seconds(since: str) -> float:
    """BIRD's "since" (HH:MM:SS.mmm) as seconds of the day. BIRD converts it from its monotonic clock
    on every query, so it jitters by a millisecond: compare with a tolerance, never for equality."""
    h, m, s = since.split(":")
    return int(h) * 3600 + int(m) * 60 + float(s)


def lab_unavailable() -> str | None:
    """Why the lab cannot run here, or None."""
    if os.geteuid() != 0:
        return "needs root for network namespaces"
    if shutil.which("ip") is None:
        return "iproute2 is not installed"
    if shutil.which("bird") is None:
        return "bird2 is not installed (the README's commands install it)"
    return None


TOR_CONFIG = f"""\
router id {FABRIC_IP};
log stderr all;
protocol device {{ scan time 2; }}
protocol direct {{ ipv4; interface "br0"; }}
protocol kernel {{ ipv4 {{ import none; export filter {{ if source = RTS_BGP then accept; reject; }}; }}; }}
protocol bgp nodes {{
  local {FABRIC_IP} as {TOR_AS};
  neighbor range {NET}.0/24 external;
  graceful restart off;  # a removed node's routes go at once (a helper would keep them 120 s)
  ipv4 {{ import all; export all; }};
  connect retry time 3;
}}
"""


@contextlib.contextmanager
def listen_in(netns: str) -> Iterator[None]:
    """Create sockets in ``netns`` inside this block (this thread only): ``await server.start()``."""
    here = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    there = os.open(f"/run/netns/{netns}", os.O_RDONLY)
    try:
        if _libc.setns(there, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), "setns")
        try:
            yield
        finally:
            if _libc.setns(here, CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), "setns back")
    finally:
        os.close(here)
        os.close(there)


@dataclass
class Lab:
    tag: str = field(default_factory=lambda: "bl" + uuid.uuid4().hex[:5])
    dir: str = field(default_factory=lambda: tempfile.mkdtemp(prefix="pytypha-bgp-"))
    nodes: dict[int, str] = field(default_factory=dict)  # index -> node netns
    pods: dict[str, tuple[int, str, str]] = field(default_factory=dict)  # name -> (node, ip, netns)
    tor: subprocess.Popen[bytes] | None = None

    @property
    def fabric(self) -> str:
        return f"{self.tag}-fab"

    def node_ns(self, i: int) -> str:
        return f"{self.tag}-n{i}"

    def run_dir(self, i: int) -> str:
        return os.path.join(self.dir, f"n{i}")

    def up(self, tor: bool = True) -> None:
        sh("ip", "netns", "add", self.fabric)
        for cmd in (
            ["ip", "link", "add", "br0", "type", "bridge"],
            ["ip", "addr", "add", f"{FABRIC_IP}/24", "dev", "br0"],
            ["ip", "link", "set", "br0", "up"],
            ["ip", "link", "set", "lo", "up"],
            ["sysctl", "-qw", "net.ipv4.ip_forward=1"],
        ):
            sh("ip", "netns", "exec", self.fabric, *cmd)
        if tor:
            cfg = os.path.join(self.dir, "tor.cfg")
            with open(cfg, "w") as f:
                f.write(TOR_CONFIG)
            self.tor = subprocess.Popen(
                ["ip", "netns", "exec", self.fabric, "bird", "-f", "-c", cfg, "-s", self.tor_socket],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )

    @property
    def tor_socket(self) -> str:
        return os.path.join(self.dir, "tor.ctl")

    def add_node(self, i: int) -> str:
        ns = self.node_ns(i)
        sh("ip", "netns", "add", ns)
        sh("ip", "link", "add", "eth0", "netns", ns, "type", "veth", "peer", "name", f"n{i}", "netns", self.fabric)
        sh("ip", "-n", self.fabric, "link", "set", f"n{i}", "master", "br0", "up")
        for cmd in (
            ["ip", "addr", "add", f"{NET}.{i}/24", "dev", "eth0"],
            ["ip", "link", "set", "eth0", "up"],
            ["ip", "link", "set", "lo", "up"],
            ["ip", "route", "add", "default", "via", FABRIC_IP],
            ["sysctl", "-qw", "net.ipv4.ip_forward=1"],
        ):
            sh("ip", "netns", "exec", ns, *cmd)
        self.nodes[i] = ns
        os.makedirs(self.run_dir(i), exist_ok=True)
        return ns

    def remove_node(self, i: int) -> None:
        for pod in [p for p, (n, _, _) in self.pods.items() if n == i]:
            self.remove_pod(pod)
        sh("ip", "netns", "del", self.nodes.pop(i), check=False)

    def add_pod(self, name: str, i: int, ip: str) -> str:
        pod_ns = f"{self.tag}-p-{name}"
        add_pod_netns(self.nodes[i], pod_ns, workload_iface("default", name), ip)
        self.pods[name] = (i, ip, pod_ns)
        return pod_ns

    def remove_pod(self, name: str) -> None:
        _, _, pod_ns = self.pods.pop(name)
        sh("ip", "netns", "del", pod_ns, check=False)

    def routes(self, ns: str, proto: str = "bird") -> str:
        return sh("ip", "-n", ns, "route", "show", "proto", proto, check=False).stdout

    def tor_routes(self) -> str:
        return self.routes(self.fabric)

    def down(self) -> None:
        if self.tor is not None:
            self.tor.terminate()
            try:
                self.tor.wait(5)
            except subprocess.TimeoutExpired:
                self.tor.kill()
                self.tor.wait()
        for line in sh("ip", "netns", "list", check=False).stdout.splitlines():
            name = line.split()[0] if line.strip() else ""
            if name.startswith(f"{self.tag}-"):
                sh("ip", "netns", "del", name, check=False)
        shutil.rmtree(self.dir, ignore_errors=True)


def tcp_ok(src_ns: str, ip: str, port: int, timeout: float = 1.0) -> bool:
    from felix.dataplane.netns import run_in_netns

    def attempt() -> bool:
        with socket.socket() as s:
            s.settimeout(timeout)
            try:
                s.connect((ip, port))
                s.sendall(b"ping")
                return s.recv(4) == b"ping"
            except OSError:
                return False

    return run_in_netns(src_ns, attempt)


def udp_ok(src_ns: str, ip: str, port: int, timeout: float = 1.0) -> bool:
    from felix.dataplane.netns import run_in_netns

    def attempt() -> bool:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.settimeout(timeout)
            try:
                s.sendto(b"ping", (ip, port))
                return s.recvfrom(16)[0] == b"ping"
            except OSError:
                return False

    return run_in_netns(src_ns, attempt)


class Echo:
    """TCP and UDP echo on ``port`` inside a namespace: sockets made there, served by one thread here."""

    def __init__(self, ns: str, port: int) -> None:
        from felix.dataplane.netns import run_in_netns

        def make() -> tuple[socket.socket, socket.socket]:
            t = socket.socket()
            t.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            t.bind(("0.0.0.0", port))
            t.listen(64)
            u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            u.bind(("0.0.0.0", port))
            return t, u

        self.tcp, self.udp = run_in_netns(ns, make)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name=f"echo:{ns}", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        with selectors.DefaultSelector() as sel:
            sel.register(self.tcp, selectors.EVENT_READ)
            sel.register(self.udp, selectors.EVENT_READ)
            while not self._stop.is_set():
                for key, _ in sel.select(0.1):
                    try:
                        if key.fileobj is self.udp:
                            data, peer = self.udp.recvfrom(64)
                            self.udp.sendto(data, peer)
                        else:
                            conn, _ = self.tcp.accept()
                            with conn:
                                conn.settimeout(1.0)
                                conn.sendall(conn.recv(64))
                    except OSError:
                        continue

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self.tcp.close()
        self.udp.close()
