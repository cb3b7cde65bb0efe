"""Per-workload-interface sysctls, written as Calico's Felix writes them.

Design note
-----------
A pod's only neighbour is the host end of its veth, and the pod's default gateway is the
fictitious 169.254.1.1.  For that to work the host side must answer ARP for any address
(``proxy_arp=1``) without the kernel's random proxy delay of up to 0.8 s (``proxy_delay=0``),
and must forward what the pod sends (``forwarding=1``).  For IPv6 the equivalents are
``proxy_ndp=1`` and ``forwarding=1``; ``accept_ra=0`` stops the host from configuring itself from
router advertisements sent by a pod (with forwarding on, the default ``accept_ra=1`` already
ignores them; 0 says so explicitly and survives a later ``forwarding`` change).
Proxy ARP only answers for addresses the host itself has a route to, which in a real node is
its default route: a test namespace without one leaves pods unable to resolve 169.254.1.1.

How.  The files live under ``/proc/sys/net`` of the *interface's* namespace, and ``/proc/sys/net``
resolves against the network namespace of the task that opens it.  We therefore open and write
them from a short-lived thread that has ``setns()``-ed into the namespace
(:func:`felix.dataplane.netns.run_in_netns`): no ``ip netns exec`` child process per interface (a fork
and exec per pod start would dominate the cost at 600 pods per node) and no chance of leaving
the calling thread in the wrong namespace.  Several interfaces can be configured in one switch.

Interface names come from the datastore, so they are validated before they become paths.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable

from .netns import run_in_netns

__all__ = [
    "InterfaceMissing",
    "configure_workload_interface",
    "configure_workload_interfaces",
    "read_sysctl",
    "workload_sysctls",
]

_IFNAME = re.compile(r"^[A-Za-z0-9_.:@-]{1,15}$")


class InterfaceMissing(FileNotFoundError):
    """The interface has no sysctl directory (yet): retry when it appears."""


def workload_sysctls(iface: str, *, ipv4: bool = True, ipv6: bool = True) -> list[tuple[str, str, bool]]:
    """``(path, value, required)`` for one workload interface.  IPv6 entries are optional: the
    kernel may have IPv6 disabled, in which case the files do not exist."""
    if not _IFNAME.match(iface) or iface in (".", ".."):
        raise ValueError(f"bad interface name {iface!r}")
    out = []
    if ipv4:
        out += [
            (f"/proc/sys/net/ipv4/conf/{iface}/proxy_arp", "1", True),
            (f"/proc/sys/net/ipv4/neigh/{iface}/proxy_delay", "0", True),
            (f"/proc/sys/net/ipv4/conf/{iface}/forwarding", "1", True),
        ]
    if ipv6:
        out += [
            (f"/proc/sys/net/ipv6/conf/{iface}/proxy_ndp", "1", False),
            (f"/proc/sys/net/ipv6/conf/{iface}/forwarding", "1", False),
            (f"/proc/sys/net/ipv6/conf/{iface}/accept_ra", "0", False),
        ]
    return out


def _write_all(items: list[tuple[str, str, str, bool]]) -> dict[str, list[str] | BaseException]:
    results: dict[str, list[str] | BaseException] = {}
    for iface, path, value, required in items:
        if isinstance(results.get(iface), BaseException):
            continue
        written = results.setdefault(iface, [])
        try:
            # Compare first: rewriting an unchanged value is harmless but costs a syscall each
            # on every resync.
            with open(path, "r+") as f:
                if f.read().strip() != value:
                    f.seek(0)
                    f.write(value)
                    written.append(path)  # type: ignore[union-attr]
        except FileNotFoundError:
            if required:
                results[iface] = InterfaceMissing(f"no sysctl {path}: interface {iface} does not exist")
        except OSError as e:
            results[iface] = e
    return results


def configure_workload_interfaces(
    ifaces: Iterable[str], *, netns: str | None = None, ipv4: bool = True, ipv6: bool = True
) -> dict[str, list[str] | BaseException]:
    """Configure several interfaces in one namespace switch.

    Returns, per interface, the paths whose value changed, or the exception that stopped it
    (:class:`InterfaceMissing` if the interface does not exist).  Never raises for one bad
    interface, so one vanished pod cannot block the others.
    """
    items = [(i, path, value, req) for i in ifaces for path, value, req in workload_sysctls(i, ipv4=ipv4, ipv6=ipv6)]
    return run_in_netns(netns, lambda: _write_all(items))


def configure_workload_interface(
    iface: str, *, netns: str | None = None, ipv4: bool = True, ipv6: bool = True
) -> list[str]:
    """Configure one interface; returns the paths changed.  Raises :class:`InterfaceMissing`
    if it does not exist, or the OSError that stopped it."""
    result = configure_workload_interfaces([iface], netns=netns, ipv4=ipv4, ipv6=ipv6)[iface]
    if isinstance(result, BaseException):
        raise result
    return result


def read_sysctl(path: str, *, netns: str | None = None) -> str:
    """Read one /proc/sys value as seen from ``netns`` (for checks and tests)."""

    def read() -> str:
        with open(path) as f:
            return f.read().strip()

    if not path.startswith("/proc/sys/") or ".." in path.split(os.sep):
        raise ValueError(f"not a sysctl path: {path!r}")
    return run_in_netns(netns, read)
