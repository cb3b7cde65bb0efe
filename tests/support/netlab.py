"""Kernel-lab plumbing shared by the tests that build nodes and pods out of network namespaces.

A pod is wired the way Calico's CNI plugin wires one: a namespace whose ``eth0`` holds the pod's /32,
paired by a veth with ``cali<hash>`` in its node's namespace, and a default route via the fictitious
gateway 169.254.1.1 on a link-scope route (felix answers for it with proxy ARP). The node side's
routes and sysctls are felix's job, so the tests can check that felix does it.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import subprocess
import uuid
from collections.abc import Iterator, Sequence

from tests.conftest import kernel_skip

__all__ = ["POD_GATEWAY", "UNDERLAY", "add_pod_netns", "scratch_netns", "sh", "workload_iface"]

POD_GATEWAY = "169.254.1.1"

# A node's uplink for route tests: under0 holds the node's address 198.18.0.1/16, paired with under1
# (both up), so routes via its neighbours 198.18.x.y are accepted without any of them existing.
UNDERLAY: tuple[Sequence[str], ...] = (
    ("link", "add", "under0", "type", "veth", "peer", "name", "under1"),
    ("addr", "add", "198.18.0.1/16", "dev", "under0"),
    ("link", "set", "under1", "up"),
    ("link", "set", "under0", "up"),
)


def sh(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run a command, capturing its text output; raises CalledProcessError on failure when ``check``."""
    return subprocess.run(list(args), check=check, capture_output=True, text=True)


def workload_iface(namespace: str, pod: str) -> str:
    """The host-side interface Calico names for a pod (``typha.k8s.projection.interface_name``)."""
    return "cali" + hashlib.sha1(f"{namespace}.{pod}".encode()).hexdigest()[:11]


def add_pod_netns(node_ns: str, pod_ns: str, iface: str, ip: str) -> None:
    """Create ``pod_ns`` with eth0 = ``ip``/32, paired with ``iface`` (up) in ``node_ns``."""
    sh("ip", "netns", "add", pod_ns)
    sh("ip", "-n", node_ns, "link", "add", iface, "type", "veth", "peer", "name", "eth0", "netns", pod_ns)
    sh("ip", "-n", node_ns, "link", "set", iface, "up")
    for cmd in (
        ["addr", "add", f"{ip}/32", "dev", "eth0"],
        ["link", "set", "eth0", "up"],
        ["link", "set", "lo", "up"],
        ["route", "add", POD_GATEWAY, "dev", "eth0", "scope", "link"],
        ["route", "add", "default", "via", POD_GATEWAY, "dev", "eth0"],
    ):
        sh("ip", "-n", pod_ns, *cmd)


@contextlib.contextmanager
def scratch_netns(prefix: str, *setup: Sequence[str]) -> Iterator[str]:
    """A new namespace ``<prefix><random>``, each of ``setup`` (``ip`` arguments) run in it; deleted on exit.

    Without root the test is skipped (a failure under CI=true, see ``kernel_skip``).
    """
    if os.geteuid() != 0:
        kernel_skip("needs root for a network namespace")
    name = f"{prefix}{uuid.uuid4().hex[:6]}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        for cmd in setup:
            subprocess.run(["ip", "-n", name, *cmd], check=True)
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)
