"""felix.dataplane.ipsets: ``ipset restore`` scripts from desired sets and the kernel's, and read-back."""

from __future__ import annotations

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from felix.dataplane.ipsets.plan import MAXELEM, SetPlan, plan_sets
from felix.dataplane.ipsets.save import KernelSet, parse_ipset_save
from felix.dataplane.iptables.desired import DesiredSet, canonical_member


def run_script(kernel: dict[str, KernelSet], lines: list[str]) -> dict[str, KernelSet]:
    """A model of ``ipset -exist restore``."""
    k = {n: s.copy() for n, s in kernel.items()}
    for line in lines:
        op, name, *rest = line.split()
        if op == "create":
            opts = dict(zip(rest[1::2], rest[2::2]))
            k.setdefault(name, KernelSet(rest[0], opts["family"], int(opts["maxelem"])))
        elif op == "add":
            k[name].members.add(rest[0])
        elif op == "del":
            k[name].members.discard(rest[0])
        elif op == "swap":
            other = rest[0]
            assert k[name].type == k[other].type, "the kernel cannot swap sets of different types"
            k[name], k[other] = k[other], k[name]
        elif op == "destroy":
            del k[name]
        else:
            raise AssertionError(line)
    return k


def believed(kernel: dict[str, KernelSet], plan: SetPlan) -> dict[str, KernelSet]:
    out = {n: s.copy() for n, s in kernel.items()}
    plan.apply_to(out)
    return out


def want(*members: str, kind: str = "hash:net") -> DesiredSet:
    return DesiredSet(kind, set(members))


def test_new_sets_are_created_before_and_removed_after() -> None:
    kernel = {"cali40s:old": KernelSet("hash:net", "inet", MAXELEM, {"10.0.0.9"})}
    desired = {"cali40s:a": want("10.0.0.1", "10.0.1.0/24"), "cali40n:p": want("10.0.0.1,tcp:80", kind="hash:ip,port")}
    plan = plan_sets(4, desired, kernel)
    assert plan.before[0] == f"create cali40n:p hash:ip,port family inet maxelem {MAXELEM}"
    assert plan.after == ["destroy cali40s:old"]
    assert (plan.created, plan.destroyed, plan.added) == (2, 1, 3)
    after = run_script(run_script(kernel, plan.before), plan.after)
    assert after == believed(kernel, plan)
    assert {n: s.members for n, s in after.items()} == {n: s.members for n, s in desired.items()}


def test_membership_change_is_adds_and_deletes_not_a_rewrite() -> None:
    members = {f"10.0.{i // 250}.{i % 250}" for i in range(1000)}
    kernel = {"cali40s:a": KernelSet("hash:net", "inet", MAXELEM, set(members))}
    desired = {"cali40s:a": want(*(members - {"10.0.0.1"}), "10.9.9.9")}
    plan = plan_sets(4, desired, kernel, only={"cali40s:a"})
    assert plan.before == ["del cali40s:a 10.0.0.1", "add cali40s:a 10.9.9.9"]
    assert (plan.swapped, plan.members_written) == (0, 2)


def test_big_replacement_or_other_header_is_a_swap() -> None:
    kernel = {"cali40s:a": KernelSet("hash:net", "inet", MAXELEM, {f"10.1.0.{i}" for i in range(200)})}
    desired = {"cali40s:a": want(*(f"10.2.0.{i}" for i in range(100)))}
    plan = plan_sets(4, desired, kernel)
    assert plan.swapped == 1 and "swap cali4t0 cali40s:a" in plan.before and plan.before[-1] == "destroy cali4t0"
    assert run_script(kernel, plan.before)["cali40s:a"].members == desired["cali40s:a"].members
    kernel = {"cali40s:a": KernelSet("hash:net", "inet", 65536, {"10.0.0.1"})}
    plan = plan_sets(4, {"cali40s:a": want("10.0.0.1")}, kernel)
    assert plan.swapped == 1
    assert run_script(kernel, plan.before)["cali40s:a"] == believed(kernel, plan)["cali40s:a"]


def test_set_of_the_wrong_type_is_recreated_and_leftover_scratch_sets_removed() -> None:
    kernel = {
        "cali40s:a": KernelSet("hash:ip", "inet", MAXELEM, {"10.0.0.1"}),
        "cali4t3": KernelSet("hash:net", "inet", MAXELEM),
        "cali60s:b": KernelSet("hash:net", "inet6", MAXELEM),  # the other family: not this plan's
    }
    plan = plan_sets(4, {"cali40s:a": want("10.0.0.1")}, kernel)
    assert plan.before[:2] == ["destroy cali40s:a", f"create cali40s:a hash:net family inet maxelem {MAXELEM}"]
    assert plan.after == ["destroy cali4t3"]
    assert run_script(run_script(kernel, plan.before), plan.after) == believed(kernel, plan)


@settings(max_examples=200, deadline=None)
@given(
    st.dictionaries(st.sampled_from(["cali40s:a", "cali40s:b", "cali40s:c"]), st.sets(st.integers(0, 300))),
    st.dictionaries(st.sampled_from(["cali40s:a", "cali40s:b", "cali40s:d"]), st.sets(st.integers(0, 300))),
)
def test_any_kernel_state_converges(kernel_members: dict, desired_members: dict) -> None:
    kernel = {
        n: KernelSet("hash:net", "inet", MAXELEM, {f"10.0.{i // 256}.{i % 256}" for i in m})
        for n, m in kernel_members.items()
    }
    desired = {n: want(*(f"10.0.{i // 256}.{i % 256}" for i in m)) for n, m in desired_members.items()}
    plan = plan_sets(4, desired, kernel)
    after = run_script(run_script(kernel, plan.before), plan.after)
    assert {n: s.members for n, s in after.items()} == {n: s.members for n, s in desired.items()}
    assert after == believed(kernel, plan)
    assert plan_sets(4, desired, after).before == []


def test_parse_ipset_save_keeps_only_ours() -> None:
    text = """create foo hash:net family inet hashsize 1024 maxelem 65536
add foo 1.2.3.4
create cali40s:x hash:net family inet hashsize 1024 maxelem 1048576 bucketsize 12 initval 0x5adfda8f
add cali40s:x 10.0.0.1
add cali40s:x 0.0.0.0/1
create cali60n:y hash:ip,port family inet6 hashsize 1024 maxelem 1048576
add cali60n:y fd00::1,tcp:80
"""
    sets = parse_ipset_save(text)
    assert set(sets) == {"cali40s:x", "cali60n:y"}
    assert sets["cali40s:x"] == KernelSet("hash:net", "inet", 1048576, {"10.0.0.1", "0.0.0.0/1"})
    assert sets["cali60n:y"].family == "inet6" and sets["cali60n:y"].members == {"fd00::1,tcp:80"}


@pytest.mark.parametrize(
    "member, kind, expect",
    [
        ("10.0.0.1/32", "hash:net", [(4, "10.0.0.1")]),
        ("10.0.0.5/24", "hash:net", [(4, "10.0.0.0/24")]),
        ("0.0.0.0/0", "hash:net", [(4, "0.0.0.0/1"), (4, "128.0.0.0/1")]),
        ("fd00:0:0:1::/64", "hash:net", [(6, "fd00:0:0:1::/64")]),
        ("fd00::0001/128", "hash:net", [(6, "fd00::1")]),
        ("10.0.0.1,TCP:0080", "hash:ip,port", [(4, "10.0.0.1,tcp:80")]),
        ("fd00::1,udp:53", "hash:ip,port", [(6, "fd00::1,udp:53")]),
        ("::ffff:0:0/96", "hash:net", [(6, "::ffff:0.0.0.0/96")]),  # as ipset save prints it (inet_ntop)
    ],
)
def test_members_are_kept_in_the_kernels_notation(member: str, kind: str, expect: list) -> None:
    assert canonical_member(member, kind) == tuple(expect)


@given(st.ip_addresses(), st.data())
def test_member_notation_agrees_with_ipaddress(addr: object, data: st.DataObject) -> None:
    import ipaddress

    assume(getattr(addr, "ipv4_mapped", None) is None)  # see the case below: ipset prints those differently
    plen = data.draw(st.integers(1, addr.max_prefixlen))  # type: ignore[attr-defined]
    net = ipaddress.ip_network(f"{addr}/{plen}", strict=False)
    want = str(net.network_address) if plen == net.max_prefixlen else str(net)
    assert canonical_member(f"{addr}/{plen}", "hash:net") == ((net.version, want),)


@pytest.mark.parametrize("bad", ["10.0.0.1", "10.0.0.1,icmp:8", "10.0.0.1,tcp:70000", "x,tcp:1"])
def test_bad_ip_port_members_are_rejected(bad: str) -> None:
    with pytest.raises(ValueError):
        canonical_member(bad, "hash:ip,port")
