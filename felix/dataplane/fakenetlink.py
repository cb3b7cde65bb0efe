"""An in-memory rtnetlink kernel, for testing the dataplane managers without root.

Design note
-----------
The managers talk to the kernel only through :class:`felix.dataplane.netlink.Netlink` (batched
requests, dumps, link events).  :class:`FakeKernel` implements that interface over dictionaries,
decoding every request with the real codec and answering dumps with kernel-format messages, so a
test drives exactly the bytes the real socket would carry.  It models the kernel rules the managers
rely on -- ``NLM_F_EXCL`` / ``NLM_F_REPLACE`` / ``NLM_F_CREATE``, deletes that must match the
protocol, routes needing an existing, up interface and an on-link gateway, a deleted interface
taking its routes and neighbours with it, link events -- and lets a test inject what is hard to
provoke in a real kernel: a permission error on every write (``deny``), a failure for one
destination (``fail``), lost acknowledgements (``lose_acks``), unsupported device kinds.

It is a model, not a copy: the kernel tests (tests/test_felix_routes.py) remain the authority, and
behaviour is only trusted once both agree.
"""

from __future__ import annotations

import errno
import socket
from dataclasses import dataclass, field

from . import netlink as nl
from .netlink import KernelAddr, KernelLink, KernelNeigh, KernelRoute, Request

__all__ = ["FakeKernel", "FakeNetlink"]

_SUPPORTED_KINDS = frozenset({"veth", "vxlan", "bridge", "dummy"})  # like this machine: no ipip module


@dataclass
class FakeKernel:
    """Links, addresses, main-table routes and neighbours of one namespace."""

    links: dict[int, KernelLink] = field(default_factory=dict)
    addrs: set[KernelAddr] = field(default_factory=set)
    routes: dict[tuple[str, int], KernelRoute] = field(default_factory=dict)  # (dst, priority) ->
    neighbors: dict[tuple[int, int, str], KernelNeigh] = field(default_factory=dict)  # (family, ifindex, key)
    kinds: frozenset[str] = _SUPPORTED_KINDS
    deny: int = 0  # errno returned for every write (EPERM: NET_ADMIN dropped)
    fail: dict[str, int] = field(default_factory=dict)  # route dst -> errno for writes to it
    lose_acks: int = 0  # the next N request batches are applied but raise instead of answering
    requests_seen: int = 0
    _next_index: int = 1
    _listeners: list[FakeNetlink] = field(default_factory=list)

    # --- test set-up ----------------------------------------------------------------------------------

    def socket(self, netns: str | None = None, groups: int = 0) -> FakeNetlink:
        """A socket on this kernel (the ``netlink`` factory the managers take)."""
        s = FakeNetlink(self, groups)
        if groups:
            self._listeners.append(s)
        return s

    def add_link(self, name: str, *, up: bool = True, kind: str = "veth", mtu: int = 1500) -> int:
        index = self._next_index
        self._next_index += 1
        self._set(KernelLink(index, name, up, kind, mtu, None, None))
        return index

    def set_up(self, name: str, up: bool = True) -> None:
        self._set(self.link(name)._replace(up=up))
        if not up:
            self._drop_routes(self.link(name).ifindex, ipv6_too=False)

    def del_link(self, name: str) -> None:
        self._delete_link(self.link(name).ifindex)

    def add_addr(self, name: str, cidr: str) -> None:
        ip, _, plen = cidr.partition("/")
        self.addrs.add(KernelAddr(self.link(name).ifindex, nl.family_of(ip), ip, int(plen)))

    def add_route(self, route: KernelRoute) -> None:
        self.routes[(route.dst, route.priority)] = route

    def link(self, name: str) -> KernelLink:
        for k in self.links.values():
            if k.name == name:
                return k
        raise KeyError(name)

    def route(self, dst: str) -> KernelRoute | None:
        family = socket.AF_INET6 if ":" in dst else socket.AF_INET
        return self.routes.get((dst, nl.OUR_PRIORITY[family]))

    # --- the kernel's side ----------------------------------------------------------------------------

    def _set(self, link: KernelLink, event: int = nl.RTM_NEWLINK) -> None:
        if event == nl.RTM_DELLINK:
            self.links.pop(link.ifindex, None)
        else:
            self.links[link.ifindex] = link
        body = _link_msg(link)
        for s in self._listeners:
            s.queue(event, body)

    def _delete_link(self, index: int) -> None:
        link = self.links[index]
        self._drop_routes(index, ipv6_too=True)
        self.neighbors = {k: n for k, n in self.neighbors.items() if n.ifindex != index}
        self.addrs = {a for a in self.addrs if a.ifindex != index}
        self._set(link, nl.RTM_DELLINK)

    def _drop_routes(self, index: int, *, ipv6_too: bool) -> None:
        self.routes = {
            k: r for k, r in self.routes.items() if r.oif != index or (r.family == socket.AF_INET6 and not ipv6_too)
        }

    def _by_name(self, name: str) -> KernelLink | None:
        return next((k for k in self.links.values() if k.name == name), None)

    def handle(self, mtype: int, flags: int, body: bytes) -> int:
        """Apply one request; its errno (0 = done)."""
        if self.deny:
            return self.deny
        if mtype in (nl.RTM_NEWROUTE, nl.RTM_DELROUTE):
            return self._route_request(mtype, flags, body)
        if mtype in (nl.RTM_NEWNEIGH, nl.RTM_DELNEIGH):
            n = nl.parse_neigh(body)
            if n.ifindex not in self.links:
                return errno.ENODEV
            key = (n.family, n.ifindex, (n.lladdr if n.family == nl.AF_BRIDGE else n.dst) or "")
            if mtype == nl.RTM_DELNEIGH:
                return 0 if self.neighbors.pop(key, None) is not None else errno.ENOENT
            self.neighbors[key] = n
            return 0
        if mtype in (nl.RTM_NEWLINK, nl.RTM_DELLINK):
            return self._link_request(mtype, flags, body)
        if mtype in (nl.RTM_NEWADDR, nl.RTM_DELADDR):
            a = nl.parse_addr(body)
            if a is None or a.ifindex not in self.links:
                return errno.ENODEV
            if mtype == nl.RTM_DELADDR:
                if a not in self.addrs:
                    return errno.EADDRNOTAVAIL
                self.addrs.discard(a)
                return 0
            self.addrs.add(a)
            return 0
        return errno.EOPNOTSUPP

    def _route_request(self, mtype: int, flags: int, body: bytes) -> int:
        r = nl.parse_route(body)
        if r is None:
            return errno.EINVAL
        r = r._replace(priority=r.priority or nl.OUR_PRIORITY[r.family])
        if r.dst in self.fail:
            return self.fail[r.dst]
        key = (r.dst, r.priority)
        have = self.routes.get(key)
        if mtype == nl.RTM_DELROUTE:
            if have is None or (r.proto and have.proto != r.proto):
                return errno.ESRCH
            del self.routes[key]
            return 0
        if r.rtype == nl.RTN_UNICAST:
            if r.oif:
                link = self.links.get(r.oif)
                if link is None:
                    return errno.ENODEV
                if not link.up:
                    return errno.ENETDOWN
            if r.gateway is not None and not r.onlink:
                via = self._connected(r.gateway)
                if via is None or (r.oif and via != r.oif):
                    return errno.ENETUNREACH
                r = r._replace(oif=via)
        if have is not None and flags & nl.NLM_F_EXCL:
            return errno.EEXIST
        if have is None and not flags & nl.NLM_F_CREATE:
            return errno.ENOENT
        self.routes[key] = r
        return 0

    def _connected(self, ip: str) -> int | None:
        """The up interface whose subnet holds ``ip``."""
        fam = nl.family_of(ip)
        want = int.from_bytes(socket.inet_pton(fam, ip), "big")
        bits = 32 if fam == socket.AF_INET else 128
        for a in self.addrs:
            link = self.links.get(a.ifindex)
            if a.family != fam or link is None or not link.up:
                continue
            mask = ((1 << bits) - 1) ^ ((1 << (bits - a.plen)) - 1)
            if int.from_bytes(socket.inet_pton(fam, a.address), "big") & mask == want & mask:
                return a.ifindex
        return None

    def _link_request(self, mtype: int, flags: int, body: bytes) -> int:
        _, _, index, ifflags, change = nl.IFINFO.unpack_from(body, 0)
        if mtype == nl.RTM_DELLINK:
            if index not in self.links:
                return errno.ENODEV
            self._delete_link(index)
            return 0
        # A change request may name no device (it gives the index): parse it under a placeholder name.
        req = nl.parse_link(body + nl.attr(nl.IFLA_IFNAME, b"?\0") if index else body)
        if req is None:
            return errno.EINVAL
        if index:  # change an existing device
            old = self.links.get(index)
            if old is None:
                return errno.ENODEV
            up = bool(ifflags & nl.IFF_UP) if change & nl.IFF_UP else old.up
            self._set(old._replace(up=up, mtu=req.mtu or old.mtu, mac=req.mac or old.mac))
            return 0
        if self._by_name(req.name) is not None:
            return errno.EEXIST
        if not flags & nl.NLM_F_CREATE:
            return errno.ENODEV
        if req.kind not in self.kinds:
            return errno.EOPNOTSUPP
        new = req._replace(ifindex=self._next_index, up=bool(ifflags & nl.IFF_UP), mac=req.mac or "02:00:00:00:00:01")
        self._next_index += 1
        self._set(new)
        return 0

    def dump(self, mtype: int, body: bytes) -> list[bytes]:
        if mtype == nl.RTM_GETROUTE:
            family = body[0]
            return [_route_msg(r) for r in self.routes.values() if r.family == family]
        if mtype == nl.RTM_GETLINK:
            return [_link_msg(k) for k in self.links.values()]
        if mtype == nl.RTM_GETNEIGH:
            family = body[0]
            return [
                nl.neigh_body(n.family, n.ifindex, n.flags, n.dst, n.lladdr)
                for n in self.neighbors.values()
                if n.family == family and n.dst is not None and n.lladdr is not None
            ]
        if mtype == nl.RTM_GETADDR:
            family = body[0]
            return [nl.addr_body(a.ifindex, a.address, a.plen) for a in self.addrs if a.family == family]
        raise OSError(errno.EOPNOTSUPP, f"dump of message type {mtype}")


def _route_msg(r: KernelRoute) -> bytes:
    dst, _, plen = r.dst.partition("/")
    parts = [
        nl.RTMSG.pack(
            r.family,
            int(plen),
            0,
            0,
            nl.MAIN_TABLE,
            r.proto,
            r.scope,
            r.rtype,
            nl.RTNH_F_ONLINK if r.onlink else 0,
        ),
        nl.attr(nl.RTA_TABLE, nl.MAIN_TABLE.to_bytes(4, "little")),
        nl.attr(nl.RTA_DST, socket.inet_pton(r.family, dst)),
        nl.attr(nl.RTA_PRIORITY, r.priority.to_bytes(4, "little")),
    ]
    if r.oif:
        parts.append(nl.attr(nl.RTA_OIF, r.oif.to_bytes(4, "little")))
    if r.gateway:
        parts.append(nl.attr(nl.RTA_GATEWAY, socket.inet_pton(r.family, r.gateway)))
    if r.mtu:
        parts.append(nl.attr(nl.RTA_METRICS, nl.attr(nl.RTAX_MTU, r.mtu.to_bytes(4, "little"))))
    return b"".join(parts)


def _link_msg(k: KernelLink) -> bytes:
    if k.vxlan is not None:
        body = nl.new_vxlan_body(k.name, k.vxlan, k.mac, k.mtu, k.up)
    else:
        body = nl.new_link_body(k.name, k.kind, k.mtu, k.up)
        if k.mac is not None:
            body += nl.attr(nl.IFLA_ADDRESS, nl.mac_bytes(k.mac))
    return nl.IFINFO.pack(socket.AF_UNSPEC, 0, k.ifindex, nl.IFF_UP if k.up else 0, 0) + body[nl.IFINFO.size :]


class FakeNetlink:
    """A socket on a :class:`FakeKernel`, with :class:`felix.dataplane.netlink.Netlink`'s interface.

    Its ``fileno()`` is a real descriptor (one end of a socket pair) that is readable while events
    are queued, so an event loop can watch it as it watches the real socket.
    """

    def __init__(self, kernel: FakeKernel, groups: int = 0) -> None:
        self.kernel = kernel
        self.groups = groups
        self._queue: list[tuple[int, bytes]] = []
        self._r, self._w = socket.socketpair()
        self._r.setblocking(False)
        self.closed = False

    def queue(self, mtype: int, body: bytes) -> None:
        if self.groups & nl.RTMGRP_LINK and not self.closed:
            self._queue.append((mtype, body))
            self._w.send(b"!")

    def requests(self, reqs: list[Request]) -> list[tuple[int, str]]:
        if self.closed:
            raise OSError(errno.EBADF, "socket closed")
        k = self.kernel
        k.requests_seen += len(reqs)
        results = [(k.handle(mtype, flags, body), "") for mtype, flags, body in reqs]
        if k.lose_acks:
            k.lose_acks -= 1
            raise OSError(errno.ETIMEDOUT, "timed out waiting for the kernel's acknowledgement")
        return results

    def dump(self, mtype: int, body: bytes) -> list[memoryview]:
        if self.closed:
            raise OSError(errno.EBADF, "socket closed")
        return [memoryview(b) for b in self.kernel.dump(mtype, body)]

    def events(self) -> tuple[list[tuple[int, memoryview]], bool]:
        try:
            while self._r.recv(4096):
                pass
        except BlockingIOError:
            pass
        out = [(t, memoryview(b)) for t, b in self._queue]
        self._queue.clear()
        return out, False

    def fileno(self) -> int:
        return self._r.fileno()

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._r.close()
            self._w.close()
            if self in self.kernel._listeners:
                self.kernel._listeners.remove(self)
