"""rtnetlink for the dataplane: the messages felix writes and reads, and the socket that carries them.

Design note
-----------
Two layers in one module, because each is small and they change together:

* the **codec** -- pure functions that pack the request bodies felix sends (routes, neighbours and
  FDB entries, links and addresses for its tunnel devices) and parse the ones the kernel sends back
  into small named tuples (:class:`KernelRoute`, :class:`KernelLink`, :class:`KernelNeigh`,
  :class:`KernelAddr`).  No I/O; ``tests/test_felix_netlink_oracle.py`` checks every encoder and
  parser against pyroute2 as an independent oracle, with hypothesis generating the messages;
* the **socket** -- :class:`NetlinkSocket`: one ``NETLINK_ROUTE`` socket sending requests in
  batches and running dumps.  :class:`felix.dataplane.fakenetlink.FakeNetlink` has the same
  interface over an in-memory kernel, so the managers are tested without root as well.

Why raw netlink and not pyroute2's ``IPRoute``: pyroute2 0.9 costs ~300 us per route request and
~50 us per decoded route here (it runs an asyncio loop per call), and 69 us just to encode a route
message, i.e. ~3.5 s to program and read back 10,000 routes.  Route messages are tiny fixed
structures, so the codec packs them with ``struct`` and the socket sends hundreds per ``sendmsg``:
only the last message of a batch asks for an ack and the kernel reports failures of the others on
its own (``netlink_rcv_skb`` acks every error), so a clean batch costs one receive.  Dumps are
decoded just as directly, with the kernel filtering by table (strict checking).  Measured: a
10,050-route cold start programs in ~0.15 s and a clean resync dump of 10k routes takes ~0.1 s.
pyroute2 earns its place as the test oracle instead (the ``test`` extra only).
"""

from __future__ import annotations

import errno
import os
import socket
import struct
from collections.abc import Iterator
from typing import NamedTuple, Protocol

from felix.calc import Route

from .netns import run_in_netns

__all__ = [
    "RTPROT_FELIX",
    "KernelAddr",
    "KernelLink",
    "KernelNeigh",
    "KernelRoute",
    "Netlink",
    "NetlinkError",
    "NetlinkSocket",
    "VxlanAttrs",
]

RTPROT_FELIX = 80
MAIN_TABLE = 254

# netlink / rtnetlink constants (linux/netlink.h, linux/rtnetlink.h, linux/if_link.h, linux/neighbour.h)
NETLINK_ROUTE = 0
SOL_NETLINK = 270
NETLINK_CAP_ACK, NETLINK_EXT_ACK, NETLINK_GET_STRICT_CHK = 10, 11, 12
NLMSG_ERROR, NLMSG_DONE = 2, 3
NLM_F_REQUEST, NLM_F_MULTI, NLM_F_ACK = 0x1, 0x2, 0x4
NLM_F_DUMP_INTR, NLM_F_REPLACE, NLM_F_EXCL, NLM_F_CREATE, NLM_F_DUMP = 0x10, 0x100, 0x200, 0x400, 0x300
NLM_F_CAPPED, NLM_F_ACK_TLVS = 0x100, 0x200
RTM_NEWLINK, RTM_DELLINK, RTM_GETLINK = 16, 17, 18
RTM_NEWADDR, RTM_DELADDR, RTM_GETADDR = 20, 21, 22
RTM_NEWROUTE, RTM_DELROUTE, RTM_GETROUTE = 24, 25, 26
RTM_NEWNEIGH, RTM_DELNEIGH, RTM_GETNEIGH = 28, 29, 30
RTMGRP_LINK = 0x1
RTA_DST, RTA_OIF, RTA_GATEWAY, RTA_PRIORITY, RTA_METRICS, RTA_MULTIPATH, RTA_TABLE = 1, 4, 5, 6, 8, 9, 15
RTAX_MTU = 2
RTN_UNICAST, RTN_BLACKHOLE = 1, 6
RT_SCOPE_UNIVERSE, RT_SCOPE_LINK, RT_SCOPE_NOWHERE = 0, 253, 255
RTNH_F_ONLINK = 0x4
IFLA_ADDRESS, IFLA_IFNAME, IFLA_MTU, IFLA_LINKINFO = 1, 3, 4, 18
IFLA_INFO_KIND, IFLA_INFO_DATA = 1, 2
IFLA_VXLAN_ID, IFLA_VXLAN_LOCAL, IFLA_VXLAN_LEARNING, IFLA_VXLAN_PORT, IFLA_VXLAN_LOCAL6 = 1, 4, 7, 15, 17
IFF_UP = 0x1
IFA_ADDRESS, IFA_LOCAL = 1, 2
NDA_DST, NDA_LLADDR = 1, 2
NUD_PERMANENT = 0x80
NTF_SELF = 0x02
NLMSGERR_ATTR_MSG = 1
AF_BRIDGE = 7

HDR = struct.Struct("=IHHII")  # nlmsghdr
RTMSG = struct.Struct("=BBBBBBBBI")  # rtmsg
IFINFO = struct.Struct("=BxHiII")  # ifinfomsg
IFADDR = struct.Struct("=BBBBI")  # ifaddrmsg
NDMSG = struct.Struct("=BxxxiHBB")  # ndmsg
_ATTR = struct.Struct("=HH")
_U32 = struct.Struct("=I")
_BE16 = struct.Struct("!H")
_BATCH = 512  # requests per sendmsg: bounds the error burst we must buffer
# IPv6 gives user routes metric 1024; a foreign route only collides with ours at the same metric.
OUR_PRIORITY: dict[int, int] = {socket.AF_INET: 0, socket.AF_INET6: 1024}

Request = tuple[int, int, bytes]  # (message type, flags beyond NLM_F_REQUEST/ACK, body)


# --- attributes -------------------------------------------------------------------------------------


def attr(kind: int, data: bytes) -> bytes:
    n = 4 + len(data)
    return _ATTR.pack(n, kind) + data + b"\0" * (-n % 4)


def attrs(buf: bytes | memoryview, off: int) -> Iterator[tuple[int, bytes | memoryview]]:
    """(type without the nested/byte-order flags, payload) of each attribute from ``off``."""
    end = len(buf)
    while off + 4 <= end:
        alen, kind = _ATTR.unpack_from(buf, off)
        if alen < 4:
            break
        yield kind & 0x3FFF, buf[off + 4 : off + alen]
        off += (alen + 3) & ~3


def message(mtype: int, flags: int, seq: int, body: bytes) -> bytes:
    """A whole netlink message: header + body."""
    return HDR.pack(16 + len(body), mtype, flags, seq, 0) + body


def split_messages(data: bytes | memoryview) -> Iterator[tuple[int, int, int, memoryview]]:
    """(type, flags, seq, message incl. header) of each message in a datagram."""
    view = memoryview(data)
    off = 0
    while off + 16 <= len(view):
        mlen, mtype, flags, seq, _ = HDR.unpack_from(view, off)
        if mlen < 16:
            break
        yield mtype, flags, seq, view[off : off + mlen]
        off += (mlen + 3) & ~3


def family_of(ip: str) -> int:
    return socket.AF_INET6 if ":" in ip else socket.AF_INET


def _text(data: bytes | memoryview) -> str:
    return bytes(data).split(b"\0", 1)[0].decode(errors="replace")


def mac_bytes(mac: str) -> bytes:
    return bytes.fromhex(mac.replace(":", ""))


def mac_text(b: bytes | memoryview) -> str:
    return ":".join(f"{x:02x}" for x in bytes(b))


# --- routes -----------------------------------------------------------------------------------------


class KernelRoute(NamedTuple):
    """A main-table route as the kernel reports it."""

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
    family = family_of(addr)
    return family, socket.inet_pton(family, addr), int(plen)


def route_body(r: Route, oif: int | None, proto: int) -> bytes:
    """RTM_NEWROUTE body for ``r`` in the main table, through interface ``oif``."""
    family, addr, plen = _dst(r.dst)
    blackhole = r.type == "blackhole"
    scope = RT_SCOPE_LINK if r.scope == "link" else RT_SCOPE_UNIVERSE
    rtype = RTN_BLACKHOLE if blackhole else RTN_UNICAST
    parts = [
        RTMSG.pack(family, plen, 0, 0, MAIN_TABLE, proto, scope, rtype, RTNH_F_ONLINK if r.onlink else 0),
        attr(RTA_DST, addr),
    ]
    if not blackhole:
        if oif is not None:
            parts.append(attr(RTA_OIF, _U32.pack(oif)))
        if r.gateway is not None:
            parts.append(attr(RTA_GATEWAY, socket.inet_pton(family, r.gateway)))
        if r.mtu is not None:
            parts.append(attr(RTA_METRICS, attr(RTAX_MTU, _U32.pack(r.mtu))))
    return b"".join(parts)


def delroute_body(dst: str, proto: int) -> bytes:
    """RTM_DELROUTE body.  It carries our protocol: the kernel then only deletes a route with it."""
    family, addr, plen = _dst(dst)
    return RTMSG.pack(family, plen, 0, 0, MAIN_TABLE, proto, RT_SCOPE_NOWHERE, 0, 0) + attr(RTA_DST, addr)


def route_dump_body(family: int) -> bytes:
    """RTM_GETROUTE dump filter: the main table (honoured under strict checking; re-checked anyway)."""
    return RTMSG.pack(family, 0, 0, 0, MAIN_TABLE, 0, 0, 0, 0)


def parse_route(body: bytes | memoryview) -> KernelRoute | None:
    """A route message body -> KernelRoute; None if it is not an IPv4/IPv6 main-table route."""
    family, plen, _, _, table, proto, scope, rtype, flags = RTMSG.unpack_from(body, 0)
    if family not in (socket.AF_INET, socket.AF_INET6):
        return None
    dst = gw = mtu = None
    oif = priority = 0
    multipath = False
    for kind, data in attrs(body, RTMSG.size):
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
            for mkind, mdata in attrs(data, 0):
                if mkind == RTAX_MTU:
                    mtu = _U32.unpack_from(mdata)[0]
        elif kind == RTA_MULTIPATH:
            multipath = True
    if table != MAIN_TABLE:
        return None
    if dst is None:
        dst = "0.0.0.0" if family == socket.AF_INET else "::"
    onlink = bool(flags & RTNH_F_ONLINK)
    return KernelRoute(f"{dst}/{plen}", family, rtype, proto, scope, oif, gw, onlink, mtu, priority, multipath)


# --- neighbours (ARP/NDP and FDB) -----------------------------------------------------------------------


class KernelNeigh(NamedTuple):
    family: int  # AF_INET / AF_INET6 for ARP/NDP, AF_BRIDGE for FDB
    ifindex: int
    state: int
    flags: int
    dst: str | None
    lladdr: str | None


def neigh_body(family: int, ifindex: int, flags: int, dst: str, mac: str) -> bytes:
    """A permanent ARP/NDP entry (``family`` AF_INET/AF_INET6) or FDB entry (AF_BRIDGE, NTF_SELF)."""
    dst_attr = attr(NDA_DST, socket.inet_pton(family_of(dst), dst))
    mac_attr = attr(NDA_LLADDR, mac_bytes(mac))
    body = dst_attr + mac_attr if family != AF_BRIDGE else mac_attr + dst_attr
    return NDMSG.pack(family, ifindex, NUD_PERMANENT, flags, 0) + body


def neigh_dump_body(family: int) -> bytes:
    return NDMSG.pack(family, 0, 0, 0, 0)


def parse_neigh(body: bytes | memoryview) -> KernelNeigh:
    family, ifindex, state, flags, _ = NDMSG.unpack_from(body, 0)
    dst = mac = None
    for kind, data in attrs(body, NDMSG.size):
        if kind == NDA_DST and len(data) in (4, 16):
            dst = socket.inet_ntop(socket.AF_INET6 if len(data) == 16 else socket.AF_INET, bytes(data))
        elif kind == NDA_LLADDR:
            mac = mac_text(data)
    return KernelNeigh(family, ifindex, state, flags, dst, mac)


# --- links and addresses (felix's tunnel devices) ------------------------------------------------------


class VxlanAttrs(NamedTuple):
    vni: int
    port: int
    local: str | None  # underlay source address (IPv4 or IPv6)
    learning: bool


class KernelLink(NamedTuple):
    ifindex: int
    name: str
    up: bool
    kind: str  # IFLA_INFO_KIND ("vxlan", "ipip", "veth", ...); "" when the kernel reports none
    mtu: int
    mac: str | None
    vxlan: VxlanAttrs | None


def link_dump_body() -> bytes:
    return IFINFO.pack(socket.AF_UNSPEC, 0, 0, 0, 0)


def parse_link(body: bytes | memoryview) -> KernelLink | None:
    _, _, index, flags, _ = IFINFO.unpack_from(body, 0)
    name = kind = ""
    mtu = 0
    mac = None
    vxlan = None
    for k, data in attrs(body, IFINFO.size):
        if k == IFLA_IFNAME:
            name = _text(data)
        elif k == IFLA_MTU:
            mtu = _U32.unpack_from(data)[0]
        elif k == IFLA_ADDRESS and len(data) == 6:
            mac = mac_text(data)
        elif k == IFLA_LINKINFO:
            info_data = None
            for ik, idata in attrs(data, 0):
                if ik == IFLA_INFO_KIND:
                    kind = _text(idata)
                elif ik == IFLA_INFO_DATA:
                    info_data = idata
            if kind == "vxlan" and info_data is not None:
                vxlan = _parse_vxlan(info_data)
    if not name:
        return None
    return KernelLink(index, name, bool(flags & IFF_UP), kind, mtu, mac, vxlan)


def _parse_vxlan(data: bytes | memoryview) -> VxlanAttrs:
    vni = port = 0
    local = None
    learning = True
    for k, v in attrs(data, 0):
        if k == IFLA_VXLAN_ID:
            vni = _U32.unpack_from(v)[0]
        elif k == IFLA_VXLAN_PORT:
            port = _BE16.unpack_from(v)[0]
        elif k == IFLA_VXLAN_LOCAL and len(v) == 4:
            local = socket.inet_ntop(socket.AF_INET, bytes(v))
        elif k == IFLA_VXLAN_LOCAL6 and len(v) == 16:
            local = socket.inet_ntop(socket.AF_INET6, bytes(v))
        elif k == IFLA_VXLAN_LEARNING and len(v) >= 1:
            learning = bool(v[0])
    return VxlanAttrs(vni, port, local, learning)


def new_vxlan_body(name: str, vx: VxlanAttrs, mac: str | None, mtu: int, up: bool = True) -> bytes:
    """RTM_NEWLINK body creating a VXLAN device (with NLM_F_CREATE | NLM_F_EXCL)."""
    data = [attr(IFLA_VXLAN_ID, _U32.pack(vx.vni)), attr(IFLA_VXLAN_PORT, _BE16.pack(vx.port))]
    if vx.local is not None:
        fam = family_of(vx.local)
        kind = IFLA_VXLAN_LOCAL if fam == socket.AF_INET else IFLA_VXLAN_LOCAL6
        data.append(attr(kind, socket.inet_pton(fam, vx.local)))
    data.append(attr(IFLA_VXLAN_LEARNING, bytes([int(vx.learning)])))
    info = attr(IFLA_INFO_KIND, b"vxlan") + attr(IFLA_INFO_DATA, b"".join(data))
    return _new_link_body(name, "vxlan", info, mac, mtu, up)


def new_link_body(name: str, kind: str, mtu: int, up: bool = True) -> bytes:
    """RTM_NEWLINK body creating a device of ``kind`` with no kind-specific data (``ipip``)."""
    return _new_link_body(name, kind, attr(IFLA_INFO_KIND, kind.encode()), None, mtu, up)


def _new_link_body(name: str, kind: str, info: bytes, mac: str | None, mtu: int, up: bool) -> bytes:
    parts = [IFINFO.pack(socket.AF_UNSPEC, 0, 0, IFF_UP if up else 0, IFF_UP), attr(IFLA_IFNAME, name.encode() + b"\0")]
    parts.append(attr(IFLA_MTU, _U32.pack(mtu)))
    if mac is not None:
        parts.append(attr(IFLA_ADDRESS, mac_bytes(mac)))
    parts.append(attr(IFLA_LINKINFO, info))
    return b"".join(parts)


def set_link_body(index: int, *, up: bool | None = None, mtu: int | None = None, mac: str | None = None) -> bytes:
    """RTM_NEWLINK body changing an existing device (no NLM_F_CREATE)."""
    flags, change = (IFF_UP if up else 0, IFF_UP) if up is not None else (0, 0)
    parts = [IFINFO.pack(socket.AF_UNSPEC, 0, index, flags, change)]
    if mtu is not None:
        parts.append(attr(IFLA_MTU, _U32.pack(mtu)))
    if mac is not None:
        parts.append(attr(IFLA_ADDRESS, mac_bytes(mac)))
    return b"".join(parts)


def del_link_body(index: int) -> bytes:
    return IFINFO.pack(socket.AF_UNSPEC, 0, index, 0, 0)


class KernelAddr(NamedTuple):
    ifindex: int
    family: int
    address: str
    plen: int


def addr_body(index: int, address: str, plen: int) -> bytes:
    """RTM_NEWADDR / RTM_DELADDR body for ``address/plen`` on interface ``index``."""
    fam = family_of(address)
    raw = socket.inet_pton(fam, address)
    return IFADDR.pack(fam, plen, 0, RT_SCOPE_UNIVERSE, index) + attr(IFA_LOCAL, raw) + attr(IFA_ADDRESS, raw)


def addr_dump_body(family: int) -> bytes:
    return IFADDR.pack(family, 0, 0, 0, 0)


def parse_addr(body: bytes | memoryview) -> KernelAddr | None:
    family, plen, _, _, index = IFADDR.unpack_from(body, 0)
    if family not in (socket.AF_INET, socket.AF_INET6):
        return None
    found: dict[int, str] = {}
    for kind, data in attrs(body, IFADDR.size):
        if kind in (IFA_ADDRESS, IFA_LOCAL) and len(data) in (4, 16):
            found[kind] = socket.inet_ntop(family, bytes(data))
    address = found.get(IFA_LOCAL) or found.get(IFA_ADDRESS)  # IFA_LOCAL is ours on point-to-point links
    return KernelAddr(index, family, address, plen) if address else None


# --- the socket -----------------------------------------------------------------------------------------


class NetlinkError(OSError):
    pass


class Netlink(Protocol):
    """What the managers use of a netlink socket (:class:`NetlinkSocket`, or the fake for tests)."""

    def requests(self, reqs: list[Request]) -> list[tuple[int, str]]: ...
    def dump(self, mtype: int, body: bytes) -> list[memoryview]: ...
    def events(self) -> tuple[list[tuple[int, memoryview]], bool]: ...
    def fileno(self) -> int: ...
    def close(self) -> None: ...


def error_of(msg: bytes | memoryview) -> tuple[int, int, str]:
    """(errno, seq of the failed request, extended-ack text) of an NLMSG_ERROR message."""
    flags = HDR.unpack_from(msg, 0)[2]
    err = -struct.unpack_from("=i", msg, 16)[0]
    orig_len, _, _, seq, _ = HDR.unpack_from(msg, 20)
    text = ""
    if flags & NLM_F_ACK_TLVS:
        off = 20 + (16 if flags & NLM_F_CAPPED else ((orig_len + 3) & ~3))
        for kind, data in attrs(msg, off):
            if kind == NLMSGERR_ATTR_MSG:
                text = _text(data)
    return err, seq, text


class NetlinkSocket:
    """One NETLINK_ROUTE socket in namespace ``netns``: batched requests with per-request results,
    dumps, and (with ``groups``) multicast events."""

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
        if groups:
            s.setblocking(False)
        else:
            s.settimeout(10.0)  # the kernel always answers; if not, fail (and retry) rather than hang
        self.seq = (os.getpid() << 8) & 0x7FFFFFFF
        self.buf = bytearray(1 << 20)

    def close(self) -> None:
        self.sock.close()

    def fileno(self) -> int:
        return self.sock.fileno()

    def _next_seq(self) -> int:
        self.seq = (self.seq + 1) & 0xFFFFFFFF
        return self.seq

    def _recv(self) -> memoryview:
        n = self.sock.recv_into(self.buf)
        return memoryview(self.buf)[:n]

    def requests(self, reqs: list[Request]) -> list[tuple[int, str]]:
        """Send ``(type, flags, body)`` requests in batches; ``(errno, text)`` per request, 0 = ok.

        Only the last request of a batch asks for an ack; failures of the others are reported
        by the kernel regardless, and arrive before that ack because requests run in order.
        Raises OSError if the socket fails (then nobody knows what the kernel did).
        """
        results: list[tuple[int, str]] = [(0, "")] * len(reqs)
        for start in range(0, len(reqs), _BATCH):
            chunk = reqs[start : start + _BATCH]
            first = self.seq + 1
            parts = []
            for i, (mtype, flags, body) in enumerate(chunk):
                ack = NLM_F_ACK if i == len(chunk) - 1 else 0
                parts.append(message(mtype, NLM_F_REQUEST | flags | ack, self._next_seq(), body))
            last = self.seq
            self.sock.sendall(b"".join(parts))
            done = False
            while not done:
                for mtype, _, _, msg in split_messages(self._recv()):
                    if mtype != NLMSG_ERROR:
                        continue
                    err, seq, text = error_of(msg)
                    if first <= seq <= last:
                        if err:
                            results[start + seq - first] = (err, text)
                        if seq == last:
                            done = True
        return results

    def dump(self, mtype: int, body: bytes) -> list[memoryview]:
        """Run a dump; the bodies (after nlmsghdr) of its messages.  Retries interrupted dumps."""
        for _ in range(5):
            seq = self._next_seq()
            self.sock.sendall(message(mtype, NLM_F_REQUEST | NLM_F_DUMP, seq, body))
            out: list[memoryview] = []
            interrupted = finished = False
            while not finished:
                data = bytes(self._recv())  # copied: the receive buffer is reused
                for t, flags, mseq, msg in split_messages(data):
                    if mseq != seq:
                        continue
                    if flags & NLM_F_DUMP_INTR:
                        interrupted = True
                    if t == NLMSG_DONE:
                        finished = True
                    elif t == NLMSG_ERROR:
                        err, _, text = error_of(msg)
                        raise NetlinkError(err, f"dump failed: {os.strerror(err)} {text}".strip())
                    else:
                        out.append(msg[16:])
            if not interrupted:
                return out
        raise NetlinkError(errno.EAGAIN, "dump kept being interrupted")

    def events(self) -> tuple[list[tuple[int, memoryview]], bool]:
        """Drain a multicast socket: ((type, body) of each message, whether the kernel dropped some).

        A dropped-events flag (ENOBUFS) means the caller must re-read the state it follows.
        """
        out: list[tuple[int, memoryview]] = []
        overrun = False
        while True:
            try:
                data = self.sock.recv(1 << 16)
            except BlockingIOError:
                return out, overrun
            except OSError as e:
                if e.errno != errno.ENOBUFS:
                    raise
                overrun = True
                continue
            out.extend((mtype, msg[16:]) for mtype, _, _, msg in split_messages(data))
