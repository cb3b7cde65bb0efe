"""felix's netlink codec checked against pyroute2, an independent implementation, as the oracle.

Both directions, on messages hypothesis generates: everything felix encodes (routes, route deletes,
ARP/NDP and FDB entries, VXLAN and plain links, link changes, addresses) is decoded by pyroute2 to
the same fields, and felix's parsers read what pyroute2 encodes (routes, links, neighbours, FDB
entries, addresses) the same way.  No kernel needed.
"""

from __future__ import annotations

import ipaddress
import socket
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from felix.calc import Route
from felix.dataplane import netlink as nl

pytest.importorskip("pyroute2")
from pyroute2.netlink.rtnl.ifaddrmsg import ifaddrmsg
from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg
from pyroute2.netlink.rtnl.ndmsg import ndmsg
from pyroute2.netlink.rtnl.rtmsg import rtmsg

u32 = st.integers(0, 2**32 - 1)
ifindex = st.integers(1, 2**31 - 1)
macs = st.binary(min_size=6, max_size=6).map(nl.mac_text)
names = st.text("abcdefghijklmnopqrstuvwxyz0123456789.-_", min_size=1, max_size=15)
v4 = st.ip_addresses(v=4).map(str)
v6 = st.ip_addresses(v=6).map(str)
ips = st.one_of(v4, v6)


def ip(text: str | None) -> object:
    """Canonical form for comparison (libraries spell ::ffff:0:0 and ::ffff:0.0.0.0 differently)."""
    return None if text is None else ipaddress.ip_address(text)


def decode(cls: Any, mtype: int, body: bytes) -> Any:
    msg = cls(nl.message(mtype, nl.NLM_F_REQUEST, 1, body))
    msg.decode()
    assert msg["header"]["length"] == 16 + len(body)
    return msg


def encoded_body(msg: Any, mtype: int) -> memoryview:
    msg["header"]["type"] = mtype
    msg.encode()
    return memoryview(bytes(msg.data))[16 : msg["header"]["length"]]


def network(draw: Any, family: int) -> tuple[str, int]:
    plen = draw(st.integers(0, 32 if family == socket.AF_INET else 128))
    return draw(v4 if family == socket.AF_INET else v6), plen


@st.composite
def routes(draw: Any) -> tuple[Route, int | None, int]:
    family = draw(st.sampled_from([socket.AF_INET, socket.AF_INET6]))
    addr, plen = network(draw, family)
    blackhole = draw(st.booleans())
    r = Route(
        f"{addr}/{plen}",
        type="blackhole" if blackhole else "unicast",
        dev="x",
        gateway=draw(st.none() | (v4 if family == socket.AF_INET else v6)),
        onlink=draw(st.booleans()),
        scope=draw(st.sampled_from(["link", "universe"])),
        mtu=draw(st.none() | st.integers(68, 65535)),
    )
    return r, draw(st.none() | ifindex), draw(st.integers(0, 255))


# --- felix encodes, pyroute2 decodes ------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(routes())
def test_route_requests_decode_the_same_in_pyroute2(case: tuple[Route, int | None, int]) -> None:
    r, oif, proto = case
    m = decode(rtmsg, nl.RTM_NEWROUTE, nl.route_body(r, oif, proto))
    addr, _, plen = r.dst.partition("/")
    family = nl.family_of(addr)
    assert (m["family"], m["dst_len"], m["table"], m["proto"]) == (family, int(plen), nl.MAIN_TABLE, proto)
    assert m["scope"] == (nl.RT_SCOPE_LINK if r.scope == "link" else nl.RT_SCOPE_UNIVERSE)
    assert m["flags"] == (nl.RTNH_F_ONLINK if r.onlink else 0)
    assert ip(m.get_attr("RTA_DST")) == ip(addr)
    if r.type == "blackhole":
        assert m["type"] == nl.RTN_BLACKHOLE
        assert [name for name, _ in m["attrs"]] == ["RTA_DST"]
        return
    assert m["type"] == nl.RTN_UNICAST
    assert m.get_attr("RTA_OIF") == oif
    assert ip(m.get_attr("RTA_GATEWAY")) == ip(r.gateway)
    metrics = m.get_attr("RTA_METRICS")
    assert (metrics.get_attr("RTAX_MTU") if metrics else None) == r.mtu


@settings(max_examples=100, deadline=None)
@given(st.one_of(v4.map(lambda a: f"{a}/32"), v6.map(lambda a: f"{a}/64")), st.integers(0, 255))
def test_route_deletes_decode_the_same_in_pyroute2(dst: str, proto: int) -> None:
    m = decode(rtmsg, nl.RTM_DELROUTE, nl.delroute_body(dst, proto))
    addr, _, plen = dst.partition("/")
    assert (m["dst_len"], m["proto"], m["table"], m["scope"]) == (int(plen), proto, nl.MAIN_TABLE, nl.RT_SCOPE_NOWHERE)
    assert ip(m.get_attr("RTA_DST")) == ip(addr)


@st.composite
def neighbours(draw: Any) -> tuple[int, str]:
    """(family, destination): ARP (IPv4), NDP (IPv6) or FDB (bridge, underlay of either family)."""
    family = draw(st.sampled_from([socket.AF_INET, socket.AF_INET6, nl.AF_BRIDGE]))
    return family, draw({socket.AF_INET: v4, socket.AF_INET6: v6}.get(family, ips))


@settings(max_examples=200, deadline=None)
@given(neighbours(), ifindex, st.integers(0, 255), macs)
def test_neighbour_and_fdb_requests_decode_the_same_in_pyroute2(
    case: tuple[int, str], index: int, flags: int, mac: str
) -> None:
    family, dst = case
    m = decode(ndmsg, nl.RTM_NEWNEIGH, nl.neigh_body(family, index, flags, dst, mac))
    assert (m["family"], m["ifindex"], m["state"], m["flags"]) == (family, index, nl.NUD_PERMANENT, flags)
    assert ip(m.get_attr("NDA_DST")) == ip(dst) and m.get_attr("NDA_LLADDR") == mac


@settings(max_examples=200, deadline=None)
@given(names, u32, st.integers(1, 65535), st.none() | ips, st.booleans(), st.none() | macs, st.integers(68, 65535))
def test_vxlan_devices_decode_the_same_in_pyroute2(
    name: str, vni: int, port: int, local: str | None, learning: bool, mac: str | None, mtu: int
) -> None:
    vx = nl.VxlanAttrs(vni, port, local, learning)
    m = decode(ifinfmsg, nl.RTM_NEWLINK, nl.new_vxlan_body(name, vx, mac, mtu, up=True))
    assert (m["index"], m["flags"] & nl.IFF_UP, m["change"] & nl.IFF_UP) == (0, nl.IFF_UP, nl.IFF_UP)
    assert (m.get_attr("IFLA_IFNAME"), m.get_attr("IFLA_MTU"), m.get_attr("IFLA_ADDRESS")) == (name, mtu, mac)
    info = m.get_attr("IFLA_LINKINFO")
    assert info.get_attr("IFLA_INFO_KIND") == "vxlan"
    data = info.get_attr("IFLA_INFO_DATA")
    assert (data.get_attr("IFLA_VXLAN_ID"), data.get_attr("IFLA_VXLAN_PORT")) == (vni, port)
    assert data.get_attr("IFLA_VXLAN_LEARNING") == int(learning)
    local_attr = "IFLA_VXLAN_LOCAL6" if local and ":" in local else "IFLA_VXLAN_LOCAL"
    assert ip(data.get_attr(local_attr)) == ip(local)


@settings(max_examples=100, deadline=None)
@given(ifindex, st.none() | st.booleans(), st.none() | st.integers(68, 65535), st.none() | macs)
def test_link_changes_decode_the_same_in_pyroute2(
    index: int, up: bool | None, mtu: int | None, mac: str | None
) -> None:
    m = decode(ifinfmsg, nl.RTM_NEWLINK, nl.set_link_body(index, up=up, mtu=mtu, mac=mac))
    assert m["index"] == index
    assert m["change"] & nl.IFF_UP == (0 if up is None else nl.IFF_UP)
    assert m["flags"] & nl.IFF_UP == (nl.IFF_UP if up else 0)
    assert (m.get_attr("IFLA_MTU"), m.get_attr("IFLA_ADDRESS")) == (mtu, mac)
    assert decode(ifinfmsg, nl.RTM_DELLINK, nl.del_link_body(index))["index"] == index


@settings(max_examples=100, deadline=None)
@given(ifindex, ips, st.integers(0, 32))
def test_address_requests_decode_the_same_in_pyroute2(index: int, address: str, plen: int) -> None:
    m = decode(ifaddrmsg, nl.RTM_NEWADDR, nl.addr_body(index, address, plen))
    assert (m["index"], m["prefixlen"], m["family"]) == (index, plen, nl.family_of(address))
    assert ip(m.get_attr("IFA_LOCAL")) == ip(address) and ip(m.get_attr("IFA_ADDRESS")) == ip(address)


# --- pyroute2 encodes, felix parses --------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_felix_reads_pyroute2_routes(data: st.DataObject) -> None:
    family = data.draw(st.sampled_from([socket.AF_INET, socket.AF_INET6]))
    addr, plen = network(data.draw, family)
    table = data.draw(st.sampled_from([nl.MAIN_TABLE, 255, 1000]))
    gw = data.draw(st.none() | (v4 if family == socket.AF_INET else v6))
    oif, prio, mtu = data.draw(st.none() | ifindex), data.draw(st.none() | u32), data.draw(st.none() | u32)
    m = rtmsg()
    m["family"], m["dst_len"], m["proto"] = family, plen, data.draw(st.integers(0, 255))
    m["scope"], m["type"] = data.draw(st.sampled_from([0, 253, 254])), data.draw(st.sampled_from([1, 6]))
    m["flags"] = data.draw(st.sampled_from([0, nl.RTNH_F_ONLINK]))
    m["table"] = min(table, 255)
    m["attrs"] = [("RTA_TABLE", table)] + ([("RTA_DST", addr)] if plen else [])
    m["attrs"] += [(k, v) for k, v in (("RTA_OIF", oif), ("RTA_GATEWAY", gw), ("RTA_PRIORITY", prio)) if v is not None]
    if mtu is not None:
        m["attrs"].append(("RTA_METRICS", {"attrs": [("RTAX_MTU", mtu)]}))
    k = nl.parse_route(encoded_body(m, nl.RTM_NEWROUTE))
    if table != nl.MAIN_TABLE:
        assert k is None
        return
    assert k is not None
    zero = "0.0.0.0" if family == socket.AF_INET else "::"
    k_addr, _, k_plen = k.dst.partition("/")
    assert (ip(k_addr), int(k_plen)) == (ip(addr if plen else zero), plen)
    assert (k.family, k.proto, k.scope, k.rtype, k.onlink) == (
        family,
        m["proto"],
        m["scope"],
        m["type"],
        m["flags"] == nl.RTNH_F_ONLINK,
    )
    assert (k.oif, ip(k.gateway), k.priority, k.mtu, k.multipath) == (oif or 0, ip(gw), prio or 0, mtu, False)


@settings(max_examples=200, deadline=None)
@given(ifindex, names, st.booleans(), st.integers(0, 2**31), st.none() | macs, st.data())
def test_felix_reads_pyroute2_links(
    index: int, name: str, up: bool, mtu: int, mac: str | None, data: st.DataObject
) -> None:
    m = ifinfmsg()
    m["family"], m["index"], m["flags"] = 0, index, (nl.IFF_UP if up else 0) | 0x1000
    m["attrs"] = [("IFLA_IFNAME", name), ("IFLA_MTU", mtu)] + ([("IFLA_ADDRESS", mac)] if mac else [])
    vx = None
    kind = data.draw(st.sampled_from(["", "vxlan", "veth"]))
    if kind == "vxlan":
        local = data.draw(st.none() | ips)
        vx = nl.VxlanAttrs(data.draw(u32), data.draw(st.integers(0, 65535)), local, data.draw(st.booleans()))
        attrs: list[tuple[str, Any]] = [
            ("IFLA_VXLAN_ID", vx.vni),
            ("IFLA_VXLAN_PORT", vx.port),
            ("IFLA_VXLAN_LEARNING", int(vx.learning)),
        ]
        if local:
            attrs.append(("IFLA_VXLAN_LOCAL6" if ":" in local else "IFLA_VXLAN_LOCAL", local))
        m["attrs"].append(
            ("IFLA_LINKINFO", {"attrs": [("IFLA_INFO_KIND", "vxlan"), ("IFLA_INFO_DATA", {"attrs": attrs})]})
        )
    elif kind:
        m["attrs"].append(("IFLA_LINKINFO", {"attrs": [("IFLA_INFO_KIND", kind)]}))
    k = nl.parse_link(encoded_body(m, nl.RTM_NEWLINK))
    assert k is not None and k._replace(vxlan=None) == nl.KernelLink(index, name, up, kind, mtu, mac, None)
    if vx is None:
        assert k.vxlan is None
    else:
        assert k.vxlan is not None and k.vxlan._replace(local=None) == vx._replace(local=None)
        assert ip(k.vxlan.local) == ip(vx.local)


@settings(max_examples=200, deadline=None)
@given(neighbours(), ifindex, st.integers(0, 255), macs)
def test_felix_reads_pyroute2_neighbours_and_fdb(case: tuple[int, str], index: int, flags: int, mac: str) -> None:
    family, dst = case
    m = ndmsg()
    m["family"], m["ifindex"], m["state"], m["flags"] = family, index, nl.NUD_PERMANENT, flags
    m["attrs"] = [("NDA_DST", dst), ("NDA_LLADDR", mac)]
    n = nl.parse_neigh(encoded_body(m, nl.RTM_NEWNEIGH))
    assert n._replace(dst=None) == nl.KernelNeigh(family, index, nl.NUD_PERMANENT, flags, None, mac)
    assert ip(n.dst) == ip(dst)


@settings(max_examples=100, deadline=None)
@given(ifindex, ips, st.integers(0, 32))
def test_felix_reads_pyroute2_addresses(index: int, address: str, plen: int) -> None:
    m = ifaddrmsg()
    m["family"], m["prefixlen"], m["index"] = nl.family_of(address), plen, index
    m["attrs"] = [("IFA_ADDRESS", address), ("IFA_LOCAL", address)]
    a = nl.parse_addr(encoded_body(m, nl.RTM_NEWADDR))
    assert a is not None and (a.ifindex, a.family, ip(a.address), a.plen) == (index, m["family"], ip(address), plen)
