"""Tunnel devices: the pure planner (no root), the manager on the fake kernel (no root), and on a real one."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator

import pytest

from felix.dataplane.deviceplan import DeviceOp, DeviceSpec, desired_devices, plan_devices, unwanted
from felix.dataplane.devices import DeviceManager
from felix.dataplane.fakenetlink import FakeKernel
from felix.dataplane.netlink import KernelLink, VxlanAttrs
from felix.model import IPPool, Node, parse_net
from tests.conftest import kernel_skip
from tests.support.netlab import scratch_netns

MAC = "66:00:00:00:00:0a"
ME = Node(
    "n1",
    ipv4_ip="192.168.50.1",
    ipv4_subnet=parse_net("192.168.50.0/24"),
    ipv6_ip="fd00:50::1",
    vxlan_tunnel_addr="10.64.0.193",
    vxlan_mac=MAC,
    vxlan_tunnel_addr_v6="fd00:64::c1",
    vxlan_mac_v6="66:00:00:00:00:6a",
    ipip_tunnel_addr="10.64.0.1",
)
VX4 = VxlanAttrs(4096, 4789, "192.168.50.1", False)


def pool(cidr: str, vxlan: str = "Never", ipip: str = "Never", disabled: bool = False) -> IPPool:
    return IPPool(parse_net(cidr), ipip, vxlan, disabled, 26 if ":" not in cidr else 122, False)


# --- which devices ----------------------------------------------------------------------------------


def test_vxlan_device_as_calico_makes_it() -> None:
    wanted, waiting = desired_devices([pool("10.64.0.0/16", vxlan="CrossSubnet")], ME, "n1", 1500)
    assert waiting == {}
    assert wanted == {"vxlan.calico": DeviceSpec("vxlan.calico", "vxlan", 1450, MAC, VX4, ("10.64.0.193", 32))}


def test_every_encapsulation_in_use_gets_its_device() -> None:
    pools = [pool("10.64.0.0/16", ipip="Always"), pool("fd00:64::/48", vxlan="Always"), pool("10.65.0.0/16")]
    wanted, waiting = desired_devices(pools, ME, "n1", 9000)
    assert waiting == {}
    assert wanted["tunl0"] == DeviceSpec("tunl0", "ipip", 8980, address=("10.64.0.1", 32))
    v6 = wanted["vxlan-v6.calico"]
    assert (v6.mtu, v6.mac, v6.vxlan, v6.address) == (
        8930,
        "66:00:00:00:00:6a",
        VxlanAttrs(6096, 4789, "fd00:50::1", False),
        ("fd00:64::c1", 128),
    )
    assert "vxlan.calico" not in wanted


def test_no_pool_needing_a_device_means_no_device_and_disabled_pools_still_count() -> None:
    assert desired_devices([pool("10.64.0.0/16")], ME, "n1", 1500) == ({}, {})
    wanted, _ = desired_devices([pool("10.64.0.0/16", vxlan="Always", disabled=True)], ME, "n1", 1500)
    assert set(wanted) == {"vxlan.calico"}


def test_a_device_that_cannot_be_made_yet_says_why() -> None:
    pools = [pool("10.64.0.0/16", vxlan="Always")]
    no_vtep = Node("n1", ipv4_ip="192.168.50.1")
    assert desired_devices(pools, no_vtep, "n1", 1500)[1]["vxlan.calico"].detail == (
        "node n1 has no IPv4 VXLAN tunnel address for vxlan.calico"
    )
    assert (
        "no IPv4 address"
        in desired_devices(pools, Node("n1", vxlan_tunnel_addr="10.64.0.1"), "n1", 1500)[1]["vxlan.calico"].detail
    )
    assert "is unknown" in desired_devices(pools, None, "n1", 1500)[1]["vxlan.calico"].detail


# --- how to get there -------------------------------------------------------------------------------


SPEC = DeviceSpec("vxlan.calico", "vxlan", 1450, MAC, VX4, ("10.64.0.193", 32))


def link(name: str = "vxlan.calico", **kw: object) -> KernelLink:
    base = KernelLink(7, name, True, "vxlan", 1450, MAC, VX4)
    return base._replace(**kw)  # type: ignore[arg-type]


def test_plan_creates_then_addresses_a_missing_device() -> None:
    assert plan_devices({SPEC.name: SPEC}, {}, {}) == [DeviceOp("create", SPEC.name, SPEC)]
    assert plan_devices({SPEC.name: SPEC}, {SPEC.name: link()}, {}) == [
        DeviceOp("addr-add", SPEC.name, SPEC, ("10.64.0.193", 32))
    ]
    assert plan_devices({SPEC.name: SPEC}, {SPEC.name: link()}, {7: {("10.64.0.193", 32)}}) == []


def test_plan_changes_what_it_can_in_place_and_recreates_the_rest() -> None:
    wrong_addr = {7: {("10.64.0.9", 32)}}
    ops = plan_devices({SPEC.name: SPEC}, {SPEC.name: link(mtu=1500, up=False)}, wrong_addr)
    assert ops == [
        DeviceOp("set", SPEC.name, SPEC),
        DeviceOp("addr-del", SPEC.name, SPEC, ("10.64.0.9", 32)),
        DeviceOp("addr-add", SPEC.name, SPEC, ("10.64.0.193", 32)),
    ]
    for fixed in (link(vxlan=VX4._replace(vni=1)), link(vxlan=VX4._replace(learning=True)), link(kind="veth")):
        assert plan_devices({SPEC.name: SPEC}, {SPEC.name: fixed}, {}) == [
            DeviceOp("delete", SPEC.name),
            DeviceOp("create", SPEC.name, SPEC),
        ]


def test_plan_removes_unwanted_vxlan_devices_but_never_tunl0_or_foreign_ones() -> None:
    links = {"vxlan.calico": link(), "tunl0": link("tunl0", kind="ipip", vxlan=None), "eth0": link("eth0")}
    assert plan_devices({}, links, {}) == [DeviceOp("delete", "vxlan.calico")]
    assert plan_devices({}, links, {}, leave={"vxlan.calico"}) == []  # needed, just not makeable now
    assert unwanted({}, links) == {"vxlan.calico"} and unwanted({SPEC.name: SPEC}, links) == set()


def test_plan_keeps_an_unwanted_device_while_routes_still_go_through_it() -> None:
    links = {"vxlan.calico": link(), "vxlan-v6.calico": link("vxlan-v6.calico", ifindex=8)}
    # The kernel takes a device's routes with it: one whose move failed keeps its device.
    assert plan_devices({}, links, {}, in_use={"vxlan.calico"}) == [DeviceOp("delete", "vxlan-v6.calico")]
    # Still wanted, in use or not: made and repaired as usual.
    assert plan_devices({SPEC.name: SPEC}, {}, {}, in_use={"vxlan.calico"}) == [DeviceOp("create", SPEC.name, SPEC)]


# --- the manager on the fake kernel -------------------------------------------------------------------


def test_manager_creates_updates_and_removes_devices() -> None:
    k = FakeKernel()
    dm = DeviceManager(netlink=k.socket)
    assert dm.set_desired({SPEC.name: SPEC}, {})
    dev = k.link("vxlan.calico")
    assert (dev.kind, dev.mtu, dev.mac, dev.up, dev.vxlan) == ("vxlan", 1450, MAC, True, VX4)
    assert {(a.address, a.plen) for a in k.addrs if a.ifindex == dev.ifindex} == {("10.64.0.193", 32)}
    assert dm.problems() == {} and (dm.stats.created, dm.stats.updated) == (1, 1)
    assert not dm.set_desired({SPEC.name: SPEC}, {})  # unchanged: nothing to do
    bigger = DeviceSpec(SPEC.name, "vxlan", 8950, MAC, VX4, SPEC.address)
    dm.set_desired({SPEC.name: bigger}, {})
    assert k.link("vxlan.calico").mtu == 8950 and k.link("vxlan.calico").ifindex == dev.ifindex
    dm.set_desired({}, {})
    dm.remove_unwanted()
    with pytest.raises(KeyError):
        k.link("vxlan.calico")
    assert dm.stats.deleted == 1 and dm.stats.netlink_errors == 0


def test_a_device_the_kernel_refuses_is_a_problem_not_an_exception() -> None:
    k = FakeKernel()  # like this machine: no ipip module
    dm = DeviceManager(netlink=k.socket)
    dm.set_desired({"tunl0": DeviceSpec("tunl0", "ipip", 1480)}, {})
    why = dm.problems()["tunl0"]
    assert why.reason == "device-missing" and "Operation not supported" in why.detail and "ipip" in why.detail
    assert dm.stats.netlink_errors == 1 and k.requests_seen == 1  # not retried within one sync


# --- on a real kernel -----------------------------------------------------------------------------------


@pytest.fixture
def netns() -> Iterator[str]:
    with scratch_netns(
        "ptdev",
        ("link", "add", "eth0", "type", "veth", "peer", "name", "eth0p"),
        ("addr", "add", "192.168.50.1/24", "dev", "eth0"),
    ) as name:
        yield name


def details(ns: str, dev: str) -> dict:
    out = subprocess.run(["ip", "-n", ns, "-d", "-j", "addr", "show", "dev", dev], capture_output=True, text=True)
    return json.loads(out.stdout)[0] if out.returncode == 0 else {}


@pytest.mark.slow
@pytest.mark.kernel
def test_vxlan_calico_on_a_real_kernel(netns: str) -> None:
    dm = DeviceManager(netns)
    try:
        dm.set_desired({SPEC.name: SPEC}, {})
        if dm.problems():
            kernel_skip(f"this kernel cannot make a VXLAN device: {dm.problems()}")
        d = details(netns, "vxlan.calico")
        info = d["linkinfo"]["info_data"]
        assert (d["mtu"], d["address"], d["operstate"] != "DOWN" or "UP" in d["flags"]) == (1450, MAC, True)
        assert (info["id"], info["port"], info["local"], info["learning"]) == (4096, 4789, "192.168.50.1", False)
        assert [(a["local"], a["prefixlen"]) for a in d["addr_info"] if a["family"] == "inet"] == [("10.64.0.193", 32)]
        # Someone recreates it with another VNI: it is put back as it must be.
        subprocess.run(["ip", "-n", netns, "link", "del", "vxlan.calico"], check=True)
        subprocess.run(
            ["ip", "-n", netns, "link", "add", "vxlan.calico", "type", "vxlan", "id", "7", "dstport", "4789"],
            check=True,
        )
        dm.sync()
        assert details(netns, "vxlan.calico")["linkinfo"]["info_data"]["id"] == 4096 and dm.problems() == {}
        dm.set_desired({}, {})
        dm.remove_unwanted()
        assert details(netns, "vxlan.calico") == {}
    finally:
        dm.close()


@pytest.mark.slow
@pytest.mark.kernel
def test_tunl0_on_a_real_kernel(netns: str, capsys: pytest.CaptureFixture[str]) -> None:
    dm = DeviceManager(netns)
    try:
        dm.set_desired({"tunl0": DeviceSpec("tunl0", "ipip", 1480, address=("10.64.0.1", 32))}, {})
        problem = dm.problems().get("tunl0")
        if problem is not None:
            assert "ipip" in problem.detail  # the reason names what is missing
            with capsys.disabled():
                print(f"\nskipping the tunl0 device checks: {problem.detail}")
            pytest.skip(f"no IP-in-IP in this kernel: {problem.detail}")
        d = details(netns, "tunl0")
        assert d["mtu"] == 1480 and ("10.64.0.1", 32) in {(a["local"], a["prefixlen"]) for a in d["addr_info"]}
    finally:
        dm.close()


def test_unwanted_devices_go_only_when_asked_after_the_routes_moved() -> None:
    k = FakeKernel()
    dm = DeviceManager(netlink=k.socket)
    dm.set_desired({SPEC.name: SPEC}, {})
    dm.set_desired({}, {})  # the pool left VXLAN: the device stays until the routes are off it
    assert k.link("vxlan.calico").kind == "vxlan"
    dm.remove_unwanted()
    with pytest.raises(KeyError):
        k.link("vxlan.calico")
    seen = k.requests_seen
    dm.remove_unwanted()  # nothing pending: no kernel round trip
    assert k.requests_seen == seen


def test_an_unwanted_device_in_use_stays_until_it_is_free_and_sync_never_removes_one() -> None:
    k = FakeKernel()
    dm = DeviceManager(netlink=k.socket)
    dm.set_desired({SPEC.name: SPEC}, {})
    dm.set_desired({}, {})
    dm.remove_unwanted(in_use={"vxlan.calico"})  # a route still goes through it
    dm.sync()  # a periodic repair pass: makes and repairs, never deletes
    assert k.link("vxlan.calico").kind == "vxlan" and dm.removal_pending
    dm.remove_unwanted(in_use=set())  # the route moved
    with pytest.raises(KeyError):
        k.link("vxlan.calico")
    assert not dm.removal_pending and dm.stats.deleted == 1


def test_a_device_a_previous_run_left_goes_at_the_first_removal_pass() -> None:
    k = FakeKernel()
    DeviceManager(netlink=k.socket).set_desired({SPEC.name: SPEC}, {})  # the previous run
    dm = DeviceManager(netlink=k.socket)
    assert dm.removal_pending  # not known yet: the first pass looks
    dm.set_desired({}, {})  # nothing wanted, as before: no change, no sync
    dm.remove_unwanted()
    with pytest.raises(KeyError):
        k.link("vxlan.calico")
