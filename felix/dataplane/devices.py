"""Tunnel devices: the thin shell that makes the kernel's devices what :mod:`.deviceplan` says.

Design note
-----------
``DeviceManager.set_desired(wanted, waiting)`` takes the specs from
:func:`felix.dataplane.deviceplan.desired_devices` and makes or updates the devices.  Devices no
longer wanted go only at ``remove_unwanted(in_use)``, and only those none of felix's routes still
goes through: the agent calls it after handing the routes their new plan, and again after retries
and link events, with what the route manager knows the kernel holds -- so a route whose move failed
keeps its device until the retry has moved it (make before use, remove after last use: no moment
without a route).  ``sync()`` dumps the links and addresses, asks
:func:`~felix.dataplane.deviceplan.plan_devices` for operations, sends them as one batch and
repeats (a new device gets its address on the next pass) until nothing is left to do, at most three
passes.  A device whose operation fails is not retried within the same sync; it is reported by
``problems()`` (which the agent turns into log lines, ``/status`` entries and readiness) and tried
again at the next sync: when the wanted state changes, when one of its devices changes in the
kernel (the agent forwards link events), and at each periodic resync.  There are at most three
devices, so every sync reads the whole state; nothing here is on a hot path.
"""

from __future__ import annotations

import errno
import os
import socket
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass

from . import netlink as nl
from .deviceplan import MANAGED, DeviceOp, DeviceSpec, plan_devices, unwanted
from .netlink import KernelLink, Netlink, NetlinkSocket
from .routeplan import NO_DEVICE, Pending

__all__ = ["MANAGED", "DeviceManager", "DeviceStats"]

_PASSES = 3


@dataclass(slots=True)
class DeviceStats:
    created: int = 0
    deleted: int = 0
    updated: int = 0  # MTU / MAC / up / address changes
    netlink_errors: int = 0
    last_error: str = ""


class DeviceManager:
    """Creates, updates and removes felix's tunnel devices in namespace ``netns``."""

    def __init__(self, netns: str | None = None, *, netlink: Callable[[str | None, int], Netlink] = NetlinkSocket):
        self.netns = netns
        self.stats = DeviceStats()
        self._nl = netlink(netns, 0)
        self._wanted: dict[str, DeviceSpec] = {}
        self._waiting: dict[str, Pending] = {}
        self._errors: dict[str, str] = {}
        self._removal_pending = True  # until a dump has shown none: a previous run may have left one

    def close(self) -> None:
        self._nl.close()

    def set_desired(self, wanted: Mapping[str, DeviceSpec], waiting: Mapping[str, Pending]) -> bool:
        """Take the wanted devices; creates and updates (and returns True) only if they changed.

        Devices no longer wanted stay until :meth:`remove_unwanted`: the agent first moves the
        routes off them (a replace, in place), so removing a device never leaves a gap.
        """
        if dict(wanted) == self._wanted and dict(waiting) == self._waiting:
            return False
        self._wanted, self._waiting = dict(wanted), dict(waiting)
        self.sync()
        return True

    @property
    def removal_pending(self) -> bool:
        """A device nothing wants any more may still be there, waiting for :meth:`remove_unwanted`."""
        return self._removal_pending

    def remove_unwanted(self, in_use: Collection[str] = ()) -> None:
        """Delete the devices nothing wants any more, except those in ``in_use``: the devices
        felix's routes still go through (the kernel would take those routes with the device)."""
        if self._removal_pending:
            self._sync(in_use)

    def problems(self) -> dict[str, Pending]:
        """Devices that are needed but missing or wrong, with the reason."""
        out = dict(self._waiting)
        out.update({name: Pending(NO_DEVICE, msg) for name, msg in self._errors.items()})
        return out

    def sync(self) -> None:
        """Make and repair the wanted devices; unwanted ones stay for :meth:`remove_unwanted`."""
        self._sync(MANAGED)

    def _sync(self, in_use: Collection[str]) -> None:
        failed: dict[str, str] = {}
        for _ in range(_PASSES):
            try:
                links, addrs = self._dump()
            except OSError as e:
                self._note_error(f"device dump: {e}")
                failed.update(dict.fromkeys(self._wanted, f"cannot read the kernel's devices: {e}"))
                break
            self._removal_pending = bool(unwanted(self._wanted, links))
            plan = plan_devices(self._wanted, links, addrs, self._waiting, in_use)
            ops = [op for op in plan if op.name not in failed]
            if not ops:
                break
            try:
                results = self._nl.requests([self._request(op, links) for op in ops])
            except OSError as e:
                self._note_error(f"device batch: {e}")
                failed.update({op.name: f"netlink: {e}" for op in ops})
                break
            for op, (err, text) in zip(ops, results):
                if err and not (op.action == "delete" and err == errno.ENODEV):
                    msg = _message(op, err, text)
                    self._note_error(msg)
                    failed.setdefault(op.name, msg)
                elif op.action == "create":
                    self.stats.created += 1
                elif op.action == "delete":
                    self.stats.deleted += 1
                else:
                    self.stats.updated += 1
        self._errors = failed

    def _dump(self) -> tuple[dict[str, KernelLink], dict[int, set[tuple[str, int]]]]:
        links: dict[str, KernelLink] = {}
        for body in self._nl.dump(nl.RTM_GETLINK, nl.link_dump_body()):
            k = nl.parse_link(body)
            if k is not None and k.name in MANAGED:
                links[k.name] = k
        ours = {k.ifindex for k in links.values()}
        addrs: dict[int, set[tuple[str, int]]] = {}
        for family in (socket.AF_INET, socket.AF_INET6):
            for body in self._nl.dump(nl.RTM_GETADDR, nl.addr_dump_body(family)):
                a = nl.parse_addr(body)
                if a is not None and a.ifindex in ours and not a.address.startswith("fe80:"):
                    addrs.setdefault(a.ifindex, set()).add((a.address, a.plen))
        return links, addrs

    @staticmethod
    def _request(op: DeviceOp, links: Mapping[str, KernelLink]) -> nl.Request:
        if op.action == "create":
            spec = op.spec
            assert spec is not None
            if spec.vxlan is not None:
                body = nl.new_vxlan_body(spec.name, spec.vxlan, spec.mac, spec.mtu)
            else:
                body = nl.new_link_body(spec.name, spec.kind, spec.mtu)
            return nl.RTM_NEWLINK, nl.NLM_F_CREATE | nl.NLM_F_EXCL, body
        index = links[op.name].ifindex
        if op.action == "delete":
            return nl.RTM_DELLINK, 0, nl.del_link_body(index)
        if op.action == "set":
            assert op.spec is not None
            return nl.RTM_NEWLINK, 0, nl.set_link_body(index, up=True, mtu=op.spec.mtu, mac=op.spec.mac)
        assert op.address is not None
        body = nl.addr_body(index, *op.address)
        if op.action == "addr-add":
            return nl.RTM_NEWADDR, nl.NLM_F_CREATE | nl.NLM_F_REPLACE, body
        return nl.RTM_DELADDR, 0, body

    def _note_error(self, msg: str) -> None:
        self.stats.netlink_errors += 1
        self.stats.last_error = msg


def _message(op: DeviceOp, err: int, text: str) -> str:
    what = {"create": "create", "delete": "delete", "set": "configure"}.get(op.action, "set the address of")
    msg = f"cannot {what} {op.name}: {os.strerror(err)}" + (f" ({text})" if text else "")
    if op.action == "create" and err == errno.EOPNOTSUPP:
        msg += f"; this kernel has no {op.spec.kind if op.spec else ''} support (module not loaded?)"
    return msg
