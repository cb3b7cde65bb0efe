"""Route dataplane: reconcile the kernel's main routing table (and VXLAN neighbours) to Felix's plan.

Design note
-----------
``RouteManager`` owns the routes carrying protocol :data:`RTPROT_FELIX` in the main table of one
network namespace, and the permanent ARP/NDP and FDB entries on the VXLAN devices.  Nothing else
in the kernel is touched: deletes carry our protocol number, so even a stale belief can never
make the kernel delete someone else's route (the kernel matches the protocol on delete), and a
new route is created with ``NLM_F_EXCL`` so it cannot silently overwrite a foreign route at the
same destination (we report the conflict instead).  A route we already own is changed with
``NLM_F_REPLACE``: the kernel swaps it in place, so there is never a moment without a route.

Why raw netlink and not pyroute2's ``IPRoute``: pyroute2 0.9 costs ~300 us per route request and
~50 us per decoded route here (it runs an asyncio loop per call), i.e. ~3.5 s to program and
read back 10,000 routes.  Route messages are tiny fixed structures, so this module packs them
with ``struct`` and sends hundreds per ``sendmsg``: only the last message of a batch asks for an
ack and the kernel reports failures of the others on its own (``netlink_rcv_skb`` acks every
error), so a clean batch costs one receive.  Dumps are decoded just as directly.  This keeps the
kernel I/O layer thin (~250 lines), with no dependency on pyroute2's moving internals.

State.  ``_desired`` is what Felix wants, ``_kernel`` what we believe the kernel holds (our
protocol only).  ``apply(delta)`` updates the plan and touches only the destinations in the
delta; ``resync()`` dumps the table, counts where the kernel drifted from our belief, and repairs
it (Felix calls it periodically, default every 90 s).  A route whose interface does not exist
yet, or is down, or whose encapsulation device (``tunl0``, ``vxlan.calico``) is missing is
*pending* with a reason; link events (an ``RTMGRP_LINK`` socket, drained by
``process_link_events``; its fd can go into the event loop) program it as soon as the interface
appears.  Other netlink failures are retried with exponential backoff (``tick``/``retry_due``),
counted, and remembered as ``stats.last_error``; they are never raised.  Nothing is written
before ``start_programming()`` (Felix calls it on its first in-sync), which also runs the
first full resync so that routes left by a previous run are adopted instead of re-created.

Namespaces.  The netlink sockets are created inside the target namespace by a short-lived
thread that ``setns()``-es into it (:func:`run_in_netns`); a socket stays bound to the namespace
it was created in, so everything after that runs on the caller's thread with no further
switching.  Not thread-safe: drive one manager from one thread.

Protocol number.  :data:`RTPROT_FELIX` is 80, the value Calico's Felix uses for the routes it owns
exclusively (blackholes, VXLAN and same-subnet routes).  It is unassigned in iproute2's
``rt_protos`` (so no routing daemon uses it), it is not ``boot`` (3, what ``ip route add`` and
ifupdown write -- owning that would delete administrators' routes), nor ``bird`` (12) which a
BGP daemon beside us would use.  Sharing Calico's number is deliberate: a node switched from
Calico's Felix to ours adopts or cleans up the old routes instead of leaving orphans.
"""

from __future__ import annotations

import ctypes
import errno
import os
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import NamedTuple, TypeVar

from felix.calc import DEV_IPIP, DEV_VXLAN, DEV_VXLAN_V6, Neighbor, Route, RouteDelta

__all__ = ["RTPROT_FELIX", "Drift", "RouteManager", "RouteStats", "run_in_netns"]

RTPROT_FELIX = 80
MAIN_TABLE = 254

# netlink / rtnetlink constants (linux/netlink.h, linux/rtnetlink.h, linux/neighbour.h)
NETLINK_ROUTE = 0
SOL_NETLINK = 270
NETLINK_CAP_ACK, NETLINK_EXT_ACK, NETLINK_GET_STRICT_CHK = 10, 11, 12
NLMSG_ERROR, NLMSG_DONE = 2, 3
NLM_F_REQUEST, NLM_F_MULTI, NLM_F_ACK = 0x1, 0x2, 0x4
NLM_F_DUMP_INTR, NLM_F_REPLACE, NLM_F_EXCL, NLM_F_CREATE, NLM_F_DUMP = 0x10, 0x100, 0x200, 0x400, 0x300
NLM_F_CAPPED, NLM_F_ACK_TLVS = 0x100, 0x200
RTM_NEWLINK, RTM_DELLINK, RTM_GETLINK = 16, 17, 18
RTM_NEWROUTE, RTM_DELROUTE, RTM_GETROUTE = 24, 25, 26
RTM_NEWNEIGH, RTM_DELNEIGH, RTM_GETNEIGH = 28, 29, 30
RTMGRP_LINK = 0x1
RTA_DST, RTA_OIF, RTA_GATEWAY, RTA_PRIORITY, RTA_METRICS, RTA_MULTIPATH, RTA_TABLE = 1, 4, 5, 6, 8, 9, 15
RTAX_MTU = 2
RTN_UNICAST, RTN_BLACKHOLE = 1, 6
RT_SCOPE_UNIVERSE, RT_SCOPE_LINK, RT_SCOPE_NOWHERE = 0, 253, 255
RTNH_F_ONLINK = 0x4
IFLA_IFNAME = 3
IFF_UP = 0x1
NDA_DST, NDA_LLADDR = 1, 2
NUD_PERMANENT = 0x80
NTF_SELF = 0x02
NLMSGERR_ATTR_MSG = 1
AF_BRIDGE = 7

ENCAP_DEVICES = (DEV_IPIP, DEV_VXLAN, DEV_VXLAN_V6)
_FAMILY = {4: socket.AF_INET, 6: socket.AF_INET6}
_HDR = struct.Struct("=IHHII")  # nlmsghdr
_RTMSG = struct.Struct("=BBBBBBBBI")  # rtmsg
_IFINFO = struct.Struct("=BxHiII")  # ifinfomsg
_NDMSG = struct.Struct("=BBHiHBB")  # ndmsg
_ATTR = struct.Struct("=HH")
_U32 = struct.Struct("=I")
_BATCH = 512  # requests per sendmsg: bounds the error burst we must buffer
_BACKOFF_MIN, _BACKOFF_MAX = 0.05, 30.0
# IPv6 gives user routes metric 1024; a foreign route only collides with ours at the same metric.
_OUR_PRIORITY = {socket.AF_INET: 0, socket.AF_INET6: 1024}

T = TypeVar("T")
_libc = ctypes.CDLL(None, use_errno=True)
CLONE_NEWNET = 0x40000000


def run_in_netns(netns: str | None, fn: Callable[[], T]) -> T:
    """Run ``fn`` on a fresh thread that has ``setns()``-ed into ``netns`` (a name under
    /run/netns or a path such as /proc/<pid>/ns/net); ``None`` runs it here.

    A thread rather than the calling thread because setns would otherwise move the caller (and
    every socket it opens afterwards) into the namespace; rather than ``ip netns exec`` or a
    child process because sockets and /proc/sys files opened by the thread stay bound to the
    namespace and are directly usable by the caller.
    """
    if netns is None:
        return fn()
    if "/" not in netns and (netns in (".", "..") or not netns):
        raise ValueError(f"bad namespace name {netns!r}")
    path = netns if "/" in netns else f"/run/netns/{netns}"
    out: dict[str, object] = {}

    def target() -> None:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            try:
                if _libc.setns(fd, CLONE_NEWNET) != 0:
                    err = ctypes.get_errno()
                    raise OSError(err, f"setns({path}): {os.strerror(err)}")
            finally:
                os.close(fd)
            out["value"] = fn()
        except BaseException as e:  # handed to the caller's thread
            out["error"] = e

    t = threading.Thread(target=target, name=f"netns:{netns}", daemon=True)
    t.start()
    t.join()
    if "error" in out:
        raise out["error"]  # type: ignore[misc]
    return out["value"]  # type: ignore[return-value]


# --- the thin netlink layer ------------------------------------------------------------------------


def _attr(kind: int, data: bytes) -> bytes:
    n = 4 + len(data)
    return _ATTR.pack(n, kind) + data + b"\0" * (-n % 4)


def _attrs(buf: bytes | memoryview, off: int) -> Iterable[tuple[int, bytes | memoryview]]:
    end = len(buf)
    while off + 4 <= end:
        alen, kind = _ATTR.unpack_from(buf, off)
        if alen < 4:
            break
        yield kind & 0x3FFF, buf[off + 4 : off + alen]
        off += (alen + 3) & ~3


class NetlinkError(OSError):
    pass


class _Netlink:
    """One NETLINK_ROUTE socket: batched requests with error collection, and dumps."""

    def __init__(self, netns: str | None, groups: int = 0) -> None:
        self.sock = run_in_netns(
            netns, lambda: socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, NETLINK_ROUTE)
        )
        s = self.sock
        # Room for a batch's worth of error reports and for big dumps.  The FORCE variants need
        # CAP_NET_ADMIN, which a route manager has anyway; otherwise take what the limit allows.
        for force, plain, size in (
            (getattr(socket, "SO_SNDBUFFORCE", 32), socket.SO_SNDBUF, 1 << 20),
            (getattr(socket, "SO_RCVBUFFORCE", 33), socket.SO_RCVBUF, 8 << 20),
        ):
            try:
                s.setsockopt(socket.SOL_SOCKET, force, size)
            except OSError:
                s.setsockopt(socket.SOL_SOCKET, plain, size)
        for opt in (NETLINK_CAP_ACK, NETLINK_EXT_ACK, NETLINK_GET_STRICT_CHK):
            try:  # optional on old kernels: we filter dumps ourselves too
                s.setsockopt(SOL_NETLINK, opt, 1)
            except OSError:
                pass
        s.bind((0, groups))
        s.settimeout(10.0)  # the kernel always answers; if not, fail (and retry) rather than hang
        self.seq = (os.getpid() << 8) & 0x7FFFFFFF
        self.buf = bytearray(1 << 20)

    def close(self) -> None:
        self.sock.close()

    def _next_seq(self) -> int:
        self.seq = (self.seq + 1) & 0xFFFFFFFF
        return self.seq

    def _recv(self) -> memoryview:
        n = self.sock.recv_into(self.buf)
        return memoryview(self.buf)[:n]

    @staticmethod
    def _error(msg: memoryview) -> tuple[int, int, str]:
        """(errno, seq of the failed request, extended-ack text) of an NLMSG_ERROR body."""
        flags = _HDR.unpack_from(msg, 0)[2]
        err = -struct.unpack_from("=i", msg, 16)[0]
        seq = _HDR.unpack_from(msg, 20)[3]
        text = ""
        if flags & NLM_F_ACK_TLVS:
            orig_len = _HDR.unpack_from(msg, 20)[0]
            off = 20 + (16 if flags & NLM_F_CAPPED else ((orig_len + 3) & ~3))
            for kind, data in _attrs(msg, off):
                if kind == NLMSGERR_ATTR_MSG:
                    text = bytes(data).rstrip(b"\0").decode(errors="replace")
        return err, seq, text

    def requests(self, reqs: list[tuple[int, int, bytes]]) -> list[tuple[int, str]]:
        """Send ``(type, flags, body)`` requests in batches; ``(errno, text)`` per request, 0 = ok.

        Only the last request of a batch asks for an ack; failures of the others are reported
        by the kernel regardless, and arrive before that ack because requests run in order.
        """
        results: list[tuple[int, str]] = [(0, "")] * len(reqs)
        for start in range(0, len(reqs), _BATCH):
            chunk = reqs[start : start + _BATCH]
            first = self.seq + 1
            parts = []
            for i, (mtype, flags, body) in enumerate(chunk):
                ack = NLM_F_ACK if i == len(chunk) - 1 else 0
                parts.append(_HDR.pack(16 + len(body), mtype, NLM_F_REQUEST | flags | ack, self._next_seq(), 0))
                parts.append(body)
            last = self.seq
            self.sock.sendall(b"".join(parts))
            done = False
            while not done:
                data = self._recv()
                off = 0
                while off + 16 <= len(data):
                    mlen, mtype = _HDR.unpack_from(data, off)[:2]
                    if mlen < 16:
                        break
                    if mtype == NLMSG_ERROR:
                        err, seq, text = self._error(data[off : off + mlen])
                        if first <= seq <= last:
                            if err:
                                results[start + seq - first] = (err, text)
                            if seq == last:
                                done = True
                    off += (mlen + 3) & ~3
        return results

    def dump(self, mtype: int, body: bytes) -> list[memoryview]:
        """Run a dump; the bodies (after nlmsghdr) of its messages.  Retries interrupted dumps."""
        for _ in range(5):
            seq = self._next_seq()
            self.sock.sendall(_HDR.pack(16 + len(body), mtype, NLM_F_REQUEST | NLM_F_DUMP, seq, 0) + body)
            out: list[memoryview] = []
            interrupted = False
            while True:
                data = bytes(self._recv())  # copied: the receive buffer is reused
                view = memoryview(data)
                off, finished = 0, False
                while off + 16 <= len(data):
                    mlen, t, flags, mseq, _ = _HDR.unpack_from(data, off)
                    if mlen < 16:
                        break
                    if mseq == seq:
                        if flags & NLM_F_DUMP_INTR:
                            interrupted = True
                        if t == NLMSG_DONE:
                            finished = True
                        elif t == NLMSG_ERROR:
                            err, _, text = self._error(view[off : off + mlen])
                            raise NetlinkError(err, f"dump failed: {os.strerror(err)} {text}".strip())
                        else:
                            out.append(view[off + 16 : off + mlen])
                    off += (mlen + 3) & ~3
                if finished:
                    break
            if not interrupted:
                return out
        raise NetlinkError(errno.EAGAIN, "dump kept being interrupted")


# --- messages -----------------------------------------------------------------------------------


class _KRoute(NamedTuple):
    """A route as the kernel reports it (main table)."""

    dst: str
    family: int
    rtype: int
    proto: int
    scope: int
    oif: int
    gateway: str | None
    onlink: bool
    mtu: int | None
    priority: int
    multipath: bool


def _dst(dst: str) -> tuple[int, bytes, int]:
    addr, _, plen = dst.partition("/")
    family = socket.AF_INET6 if ":" in addr else socket.AF_INET
    return family, socket.inet_pton(family, addr), int(plen)


def _route_body(r: Route, oif: int | None, proto: int) -> bytes:
    family, addr, plen = _dst(r.dst)
    blackhole = r.type == "blackhole"
    scope = RT_SCOPE_LINK if r.scope == "link" else RT_SCOPE_UNIVERSE
    body = _RTMSG.pack(
        family,
        plen,
        0,
        0,
        MAIN_TABLE,
        proto,
        scope,
        RTN_BLACKHOLE if blackhole else RTN_UNICAST,
        RTNH_F_ONLINK if r.onlink else 0,
    )
    parts = [body, _attr(RTA_DST, addr)]
    if not blackhole:
        if oif is not None:
            parts.append(_attr(RTA_OIF, _U32.pack(oif)))
        if r.gateway is not None:
            parts.append(_attr(RTA_GATEWAY, socket.inet_pton(family, r.gateway)))
        if r.mtu is not None:
            parts.append(_attr(RTA_METRICS, _attr(RTAX_MTU, _U32.pack(r.mtu))))
    return b"".join(parts)


def _delroute_body(dst: str, proto: int) -> bytes:
    family, addr, plen = _dst(dst)
    # Our protocol in the request: the kernel then only deletes a route carrying it.
    return _RTMSG.pack(family, plen, 0, 0, MAIN_TABLE, proto, RT_SCOPE_NOWHERE, 0, 0) + _attr(RTA_DST, addr)


def _parse_route(body: memoryview) -> _KRoute | None:
    family, plen, _, _, table, proto, scope, rtype, flags = _RTMSG.unpack_from(body, 0)
    dst = oif = gw = mtu = None
    priority = 0
    multipath = False
    for kind, data in _attrs(body, _RTMSG.size):
        if kind == RTA_DST:
            dst = socket.inet_ntop(family, bytes(data))
        elif kind == RTA_OIF:
            oif = _U32.unpack_from(data)[0]
        elif kind == RTA_GATEWAY:
            gw = socket.inet_ntop(family, bytes(data))
        elif kind == RTA_PRIORITY:
            priority = _U32.unpack_from(data)[0]
        elif kind == RTA_TABLE:
            table = _U32.unpack_from(data)[0]
        elif kind == RTA_METRICS:
            for mkind, mdata in _attrs(data, 0):
                if mkind == RTAX_MTU:
                    mtu = _U32.unpack_from(mdata)[0]
        elif kind == RTA_MULTIPATH:
            multipath = True
    if table != MAIN_TABLE or family not in (socket.AF_INET, socket.AF_INET6):
        return None
    if dst is None:
        dst = "0.0.0.0" if family == socket.AF_INET else "::"
    return _KRoute(
        f"{dst}/{plen}",
        family,
        rtype,
        proto,
        scope,
        oif or 0,
        gw,
        bool(flags & RTNH_F_ONLINK),
        mtu,
        priority,
        multipath,
    )


def _matches(k: _KRoute, r: Route, oif: int | None) -> bool:
    """Does the kernel's route ``k`` implement ``r``?  (``oif`` None: any interface will do.)"""
    if r.type == "blackhole":
        return k.rtype == RTN_BLACKHOLE
    if k.rtype != RTN_UNICAST or k.multipath:
        return False
    if oif is not None and k.oif != oif:
        return False
    if k.gateway != r.gateway or k.onlink != r.onlink or k.mtu != r.mtu:
        return False
    # IPv6 reports every route with universe scope.
    return k.family == socket.AF_INET6 or k.scope == (RT_SCOPE_LINK if r.scope == "link" else RT_SCOPE_UNIVERSE)


def _mac_bytes(mac: str) -> bytes:
    return bytes.fromhex(mac.replace(":", ""))


def _mac_text(b: bytes | memoryview) -> str:
    return ":".join(f"{x:02x}" for x in bytes(b))


def _neigh_body(family: int, ifindex: int, flags: int, dst: str, mac: str, *, fdb: bool) -> bytes:
    fam = _FAMILY[6 if ":" in dst else 4]
    attrs = (
        (_attr(NDA_LLADDR, _mac_bytes(mac)) + _attr(NDA_DST, socket.inet_pton(fam, dst)))
        if fdb
        else (_attr(NDA_DST, socket.inet_pton(fam, dst)) + _attr(NDA_LLADDR, _mac_bytes(mac)))
    )
    return _NDMSG.pack(family, 0, 0, ifindex, NUD_PERMANENT, flags, 0) + attrs


# --- the manager ---------------------------------------------------------------------------------


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
    neighbors_programmed: int = 0
    neighbor_ops: int = 0
    link_events: int = 0
    last_error: str = ""


@dataclass(slots=True)
class Drift:
    """What a resync found different from what we believed, and repaired."""

    missing: int = 0  # our route vanished from the kernel
    wrong: int = 0  # our route was changed behind our back
    extra: int = 0  # a route with our protocol that we do not want
    neighbors: int = 0  # neighbour/FDB entries missing, wrong or extra
    repaired: int = 0  # how many of the above were fixed by this resync

    @property
    def total(self) -> int:
        return self.missing + self.wrong + self.extra + self.neighbors


@dataclass(slots=True)
class _Retry:
    attempts: int
    at: float
    error: str = field(default="")


class RouteManager:
    """Reconciles routes with protocol ``protocol`` in namespace ``netns``'s main table."""

    def __init__(
        self,
        netns: str | None = None,
        *,
        protocol: int = RTPROT_FELIX,
        resync_interval: float = 90.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.netns = netns
        self.protocol = protocol
        self.resync_interval = resync_interval
        self.stats = RouteStats()
        self._clock = clock
        self._nl = _Netlink(netns)
        self._events = _Netlink(netns, groups=RTMGRP_LINK)
        self._events.sock.setblocking(False)
        self._programming = False
        self._next_resync = 0.0
        self._resync_needed = False  # lost acks or an unexplained EEXIST: verify by dumping
        # plan and beliefs
        self._desired: dict[str, Route] = {}
        self._by_dev: dict[str, set[str]] = {}
        self._kernel: dict[str, _KRoute] = {}
        self._uncertain: set[str] = set()  # may or may not still be in the kernel (link went down)
        self._foreign: dict[str, int] = {}  # dst -> protocol of a colliding foreign route
        self._pending: dict[str, str] = {}
        self._retry: dict[str, _Retry] = {}
        # neighbours: vtep ip -> Neighbor wanted; beliefs about ARP (ip -> mac) and FDB
        self._neigh_desired: dict[str, Neighbor] = {}
        self._neigh_kernel: dict[str, str] = {}
        self._fdb_kernel: dict[tuple[str, str], str] = {}  # (dev, mac) -> underlay ip
        self._neigh_pending: dict[str, str] = {}
        # links: name -> (index, up)
        self._links: dict[str, tuple[int, bool]] = {}
        self._names: dict[int, str] = {}
        self._refresh_links()

    # --- public API ----------------------------------------------------------------------------

    def close(self) -> None:
        self._nl.close()
        self._events.close()

    def fileno(self) -> int:
        """The link-event socket: readable when ``process_link_events`` has work."""
        return self._events.sock.fileno()

    @property
    def programming(self) -> bool:
        return self._programming

    def start_programming(self) -> Drift:
        """Allow writes (Felix's first in-sync) and run the first full resync."""
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
        drift = Drift()
        if not self._programming:
            return drift
        self.stats.resyncs += 1
        self._next_resync = self._clock() + self.resync_interval
        try:
            self._refresh_links()
            actual, foreign = self._dump_routes()
        except OSError as e:
            self._note_error(f"resync dump: {e}")
            self._resync_needed = True
            return drift
        self._resync_needed = False
        drifted: set[str] = set()
        for dst in set(self._kernel) | set(actual):
            believed, real = self._kernel.get(dst), actual.get(dst)
            want = self._desired.get(dst)
            if real is None:
                if believed is not None and want is not None and dst not in self._uncertain:
                    drift.missing += 1
                    drifted.add(dst)
            elif want is None:
                drift.extra += 1
                drifted.add(dst)
            elif (
                believed is not None and not self._matches_desired(real, want) and self._matches_desired(believed, want)
            ):
                drift.wrong += 1
                drifted.add(dst)
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
        changed: set[str] = set()
        n = 0
        overrun = False
        while True:
            try:
                data = self._events.sock.recv(1 << 16)
            except BlockingIOError:
                break
            except OSError as e:
                if e.errno == errno.ENOBUFS:  # missed events: re-read the whole link table
                    overrun = True
                    continue
                self._note_error(f"link events: {e}")
                break
            off = 0
            while off + 16 <= len(data):
                mlen, mtype = _HDR.unpack_from(data, off)[:2]
                if mlen < 16:
                    break
                if mtype in (RTM_NEWLINK, RTM_DELLINK):
                    n += 1
                    changed |= self._link_msg(memoryview(data)[off + 16 : off + mlen], mtype == RTM_DELLINK)
                off += (mlen + 3) & ~3
        if overrun:
            before = dict(self._links)
            self._refresh_links()
            changed |= {k for k in set(before) | set(self._links) if before.get(k) != self._links.get(k)}
        self.stats.link_events += n
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
        due = self._due()
        if due:
            self._sync(due)
            self._update_counts()

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
        times = [self._next_resync] + [r.at for r in self._retry.values()]
        return min(times)

    def pending(self) -> dict[str, str]:
        """Routes (and ``neigh:<ip>`` entries) waiting for something, with the reason."""
        out = dict(self._pending)
        out.update({f"neigh:{ip}": why for ip, why in self._neigh_pending.items()})
        return out

    def failing(self) -> dict[str, str]:
        return {dst: r.error for dst, r in self._retry.items()}

    def desired(self) -> dict[str, Route]:
        return dict(self._desired)

    # --- links ----------------------------------------------------------------------------------

    def _refresh_links(self) -> None:
        links: dict[str, tuple[int, bool]] = {}
        for body in self._nl.dump(RTM_GETLINK, _IFINFO.pack(socket.AF_UNSPEC, 0, 0, 0, 0)):
            parsed = self._parse_link(body)
            if parsed:
                links[parsed[0]] = (parsed[1], parsed[2])
        self._links = links
        self._names = {idx: name for name, (idx, _) in links.items()}

    @staticmethod
    def _parse_link(body: memoryview) -> tuple[str, int, bool] | None:
        _, _, index, flags, _ = _IFINFO.unpack_from(body, 0)
        for kind, data in _attrs(body, _IFINFO.size):
            if kind == IFLA_IFNAME:
                return bytes(data).rstrip(b"\0").decode(errors="replace"), index, bool(flags & IFF_UP)
        return None

    def _link_msg(self, body: memoryview, deleted: bool) -> set[str]:
        parsed = self._parse_link(body)
        if parsed is None:
            return set()
        name, index, up = parsed
        changed = set()
        old_name = self._names.get(index)
        if old_name is not None and old_name != name:  # renamed: the old name is gone
            self._links.pop(old_name, None)
            changed.add(old_name)
        if deleted:
            if self._links.get(name, (None,))[0] == index:
                del self._links[name]
            self._names.pop(index, None)
        else:
            self._links[name] = (index, up)
            self._names[index] = name
        changed.add(name)
        return changed

    def _on_links_changed(self, names: set[str]) -> None:
        dsts: set[str] = set()
        for name in names:
            link = self._links.get(name)
            for dst in self._by_dev.get(name, ()):
                dsts.add(dst)
                if link is None or not link[1]:  # noqa: SIM102 - the comment belongs to the outer test
                    # The kernel drops (IPv4) or may keep (IPv6) routes of a downed interface,
                    # and drops all of a deleted one: stop believing they are there.
                    if self._kernel.pop(dst, None) is not None and link is not None:
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

    def _dump_routes(self) -> tuple[dict[str, _KRoute], dict[str, int]]:
        ours: dict[str, _KRoute] = {}
        foreign: dict[str, int] = {}
        for family in (socket.AF_INET, socket.AF_INET6):
            # Table filter in the header (honoured under strict checking); we re-check anyway.
            req = _RTMSG.pack(family, 0, 0, 0, MAIN_TABLE, 0, 0, 0, 0)
            for body in self._nl.dump(RTM_GETROUTE, req):
                k = _parse_route(body)
                if k is None:
                    continue
                if k.proto == self.protocol:
                    ours[k.dst] = k
                elif k.priority == _OUR_PRIORITY[family]:
                    foreign[k.dst] = k.proto
        return ours, foreign

    def _oif(self, r: Route) -> tuple[int | None, str | None]:
        """(ifindex or None, reason the route must wait)."""
        if r.dev is None:
            return None, None
        link = self._links.get(r.dev)
        if link is None:
            if r.dev in ENCAP_DEVICES:
                return None, f"encapsulation device {r.dev} does not exist"
            return None, f"interface {r.dev} does not exist yet"
        if not link[1]:
            return None, f"interface {r.dev} is down"
        return link[0], None

    def _matches_desired(self, k: _KRoute, r: Route) -> bool:
        oif, _ = self._oif(r)
        return _matches(k, r, oif)

    def _due(self) -> set[str]:
        now = self._clock()
        return {dst for dst, r in self._retry.items() if r.at <= now}

    def _sync(self, dsts: Iterable[str]) -> set[str]:
        """Bring ``dsts`` in line with the plan; returns those now correct in the kernel."""
        now = self._clock()
        ok: set[str] = set()
        ops: list[tuple[str, str]] = []
        reqs: list[tuple[int, int, bytes]] = []
        for dst in dsts:
            want = self._desired.get(dst)
            have = self._kernel.get(dst)
            retry = self._retry.get(dst)
            if retry is not None and retry.at > now:
                continue  # still backing off
            if want is None:
                self._pending.pop(dst, None)
                if have is None and dst not in self._uncertain:
                    self._retry.pop(dst, None)
                    ok.add(dst)
                    continue
                ops.append(("delete", dst))
                reqs.append((RTM_DELROUTE, 0, _delroute_body(dst, self.protocol)))
                continue
            oif, reason = self._oif(want)
            if reason is not None:
                self._pending[dst] = reason
                if have is not None or dst in self._uncertain:
                    # What the kernel holds is no longer the plan (e.g. the pool switched to an
                    # encapsulation whose device is missing): remove it rather than route stale.
                    ops.append(("delete", dst))
                    reqs.append((RTM_DELROUTE, 0, _delroute_body(dst, self.protocol)))
                continue
            if have is not None and _matches(have, want, oif):
                self._pending.pop(dst, None)
                self._retry.pop(dst, None)
                ok.add(dst)
                continue
            if have is None and dst in self._foreign:
                self._pending[dst] = f"a route with protocol {self._foreign[dst]} already exists here"
                continue
            self._pending.pop(dst, None)
            if have is not None or dst in self._uncertain:
                ops.append(("replace", dst))
                flags = NLM_F_CREATE | NLM_F_REPLACE
            else:
                ops.append(("create", dst))
                flags = NLM_F_CREATE | NLM_F_EXCL  # never overwrite a route that is not ours
            reqs.append((RTM_NEWROUTE, flags, _route_body(want, oif, self.protocol)))
        if not reqs:
            return ok
        self.stats.retries += sum(1 for _, dst in ops if dst in self._retry)
        try:
            results = self._nl.requests(reqs)
        except OSError as e:
            # Acks lost or socket broken: we no longer know what the kernel did.  Reopen, and
            # let the next resync find out; meanwhile back off these destinations.
            self._note_error(f"netlink batch of {len(reqs)}: {e}")
            self._reopen()
            self._resync_needed = True
            for _, dst in ops:
                self._backoff(dst, str(e), now)
            return ok
        for (op, dst), (err, text) in zip(ops, results):
            want = self._desired.get(dst)
            if op == "delete":
                if err in (0, errno.ESRCH, errno.ENOENT):  # gone either way
                    if err == 0:
                        self.stats.deleted += 1
                    self._kernel.pop(dst, None)
                    self._uncertain.discard(dst)
                    self._retry.pop(dst, None)
                    if want is None:
                        ok.add(dst)
                else:
                    self._fail(dst, op, err, text, now)
                continue
            assert want is not None
            if err == 0:
                oif, _ = self._oif(want)
                self._kernel[dst] = self._belief(want, oif)
                self._uncertain.discard(dst)
                self._retry.pop(dst, None)
                if op == "create":
                    self.stats.created += 1
                else:
                    self.stats.replaced += 1
                ok.add(dst)
            elif err == errno.EEXIST:
                # Someone else's route at this destination (or one of ours we lost track of):
                # leave it alone, and let a resync tell which.
                self.stats.conflicts += 1
                self._foreign.setdefault(dst, 0)
                self._pending[dst] = "a route with another protocol already exists here"
                self._resync_needed = True
            elif err in (errno.ENODEV, errno.ENETDOWN):
                self._pending[dst] = f"interface {want.dev} is {'down' if err == errno.ENETDOWN else 'gone'}"
            else:
                self._fail(dst, op, err, text, now)
        return ok

    def _belief(self, r: Route, oif: int | None) -> _KRoute:
        family = _dst(r.dst)[0]
        return _KRoute(
            r.dst,
            family,
            RTN_BLACKHOLE if r.type == "blackhole" else RTN_UNICAST,
            self.protocol,
            RT_SCOPE_LINK if r.scope == "link" else RT_SCOPE_UNIVERSE,
            oif or 0,
            r.gateway,
            r.onlink,
            r.mtu,
            _OUR_PRIORITY[family],
            False,
        )

    def _fail(self, dst: str, op: str, err: int, text: str, now: float) -> None:
        msg = f"{op} {dst}: {os.strerror(err)}" + (f" ({text})" if text else "")
        self._note_error(msg)
        self._backoff(dst, msg, now)

    def _backoff(self, dst: str, msg: str, now: float) -> None:
        prev = self._retry.get(dst)
        attempts = prev.attempts + 1 if prev else 1
        self._retry[dst] = _Retry(attempts, now + min(_BACKOFF_MAX, _BACKOFF_MIN * 2 ** (attempts - 1)), msg)

    def _note_error(self, msg: str) -> None:
        self.stats.netlink_errors += 1
        self.stats.last_error = msg

    def _reopen(self) -> None:
        try:
            self._nl.close()
            self._nl = _Netlink(self.netns)
        except OSError as e:
            self._note_error(f"reopening netlink socket: {e}")

    def _update_counts(self) -> None:
        self.stats.programmed = len(self._kernel)
        self.stats.pending = len(self._pending)
        self.stats.failing = len(self._retry)
        self.stats.neighbors_programmed = len(self._neigh_kernel)

    # --- VXLAN neighbours ---------------------------------------------------------------------

    def _vxlan_dev(self, ip: str) -> str:
        return DEV_VXLAN_V6 if ":" in ip else DEV_VXLAN

    def _dump_neighbors(self) -> tuple[dict[str, str], dict[tuple[str, str], str]]:
        vx = {self._links[d][0]: d for d in (DEV_VXLAN, DEV_VXLAN_V6) if d in self._links}
        arp: dict[str, str] = {}
        fdb: dict[tuple[str, str], str] = {}
        if not vx:
            return arp, fdb
        for family in (socket.AF_INET, socket.AF_INET6, AF_BRIDGE):
            for body in self._nl.dump(RTM_GETNEIGH, _NDMSG.pack(family, 0, 0, 0, 0, 0, 0)):
                fam, _, _, ifindex, state, _, _ = _NDMSG.unpack_from(body, 0)
                if ifindex not in vx or not state & NUD_PERMANENT:
                    continue
                dst = mac = None
                for kind, data in _attrs(body, _NDMSG.size):
                    if kind == NDA_DST:
                        dst = socket.inet_ntop(socket.AF_INET6 if len(data) == 16 else socket.AF_INET, bytes(data))
                    elif kind == NDA_LLADDR:
                        mac = _mac_text(data)
                if dst is None or mac is None:
                    continue
                if fam == AF_BRIDGE:
                    fdb[(vx[ifindex], mac)] = dst
                else:
                    arp[dst] = mac
        return arp, fdb

    def _resync_neighbors(self) -> tuple[int, int]:
        """Dump ARP/FDB on the VXLAN devices and reconcile; (drifted, repaired)."""
        try:
            arp, fdb = self._dump_neighbors()
        except OSError as e:
            self._note_error(f"neighbour dump: {e}")
            self._resync_needed = True
            return 0, 0
        drifted = 0
        for ip in set(self._neigh_kernel) | set(arp):
            if self._neigh_kernel.get(ip) != arp.get(ip):
                drifted += 1
        for key in set(self._fdb_kernel) | set(fdb):
            if self._fdb_kernel.get(key) != fdb.get(key):
                drifted += 1
        self._neigh_kernel, self._fdb_kernel = arp, fdb
        failures = self._sync_neighbors()
        return drifted, max(0, drifted - failures)

    def _sync_neighbors(self) -> int:
        """Full comparison of wanted vs believed neighbours (a few per node: cheap); returns
        the number of failed operations."""
        reqs: list[tuple[int, int, bytes]] = []
        ops: list[tuple[str, object]] = []
        want_fdb: dict[tuple[str, str], str] = {}
        self._neigh_pending.clear()
        for ip, n in self._neigh_desired.items():
            dev = self._vxlan_dev(ip)
            link = self._links.get(dev)
            if link is None:
                self._neigh_pending[ip] = f"encapsulation device {dev} does not exist"
                continue
            want_fdb[(dev, n.mac)] = n.node_ip
            if self._neigh_kernel.get(ip) != n.mac:
                fam = _FAMILY[6 if ":" in ip else 4]
                reqs.append(
                    (RTM_NEWNEIGH, NLM_F_CREATE | NLM_F_REPLACE, _neigh_body(fam, link[0], 0, ip, n.mac, fdb=False))
                )
                ops.append(("arp", (ip, n.mac)))
        for ip, mac in self._neigh_kernel.items():
            dev = self._vxlan_dev(ip)
            if ip not in self._neigh_desired and dev in self._links:
                fam = _FAMILY[6 if ":" in ip else 4]
                reqs.append((RTM_DELNEIGH, 0, _neigh_body(fam, self._links[dev][0], 0, ip, mac, fdb=False)))
                ops.append(("arp-del", ip))
        for (dev, mac), under in want_fdb.items():
            if self._fdb_kernel.get((dev, mac)) != under:
                reqs.append(
                    (
                        RTM_NEWNEIGH,
                        NLM_F_CREATE | NLM_F_REPLACE,
                        _neigh_body(AF_BRIDGE, self._links[dev][0], NTF_SELF, under, mac, fdb=True),
                    )
                )
                ops.append(("fdb", ((dev, mac), under)))
        for (dev, mac), under in self._fdb_kernel.items():
            if (dev, mac) not in want_fdb and dev in self._links:
                reqs.append(
                    (RTM_DELNEIGH, 0, _neigh_body(AF_BRIDGE, self._links[dev][0], NTF_SELF, under, mac, fdb=True))
                )
                ops.append(("fdb-del", (dev, mac)))
        if not reqs:
            return 0
        try:
            results = self._nl.requests(reqs)
        except OSError as e:
            self._note_error(f"neighbour batch: {e}")
            self._reopen()
            self._resync_needed = True
            return len(reqs)
        failures = 0
        for (op, arg), (err, text) in zip(ops, results):
            gone = err in (errno.ENOENT, errno.ESRCH)
            if err and not (gone and op.endswith("-del")):
                failures += 1
                self._note_error(f"{op} {arg}: {os.strerror(err)}" + (f" ({text})" if text else ""))
                self._resync_needed = True  # neighbours are few: a full pass is the retry
                continue
            self.stats.neighbor_ops += 1
            if op == "arp":
                ip, mac = arg  # type: ignore[misc]
                self._neigh_kernel[ip] = mac
            elif op == "arp-del":
                self._neigh_kernel.pop(arg, None)  # type: ignore[arg-type]
            elif op == "fdb":
                key, under = arg  # type: ignore[misc]
                self._fdb_kernel[key] = under
            else:
                self._fdb_kernel.pop(arg, None)  # type: ignore[arg-type]
        return failures
