"""felix.dataplane.iptables.plan and save: transactions that turn any kernel state into the desired one.

A tiny model of iptables-restore (``apply_restore``) executes the planned lines on a ``KernelTable``,
so the tests check the *result* of a plan (every chain's rules in order, hooks in place, foreign rules
untouched), not its wording. The kernel tests run the same plans through the real tool.
"""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from felix.dataplane.iptables import names as N
from felix.dataplane.iptables.plan import drifted_chains, plan_table
from felix.dataplane.iptables.render import Chain, Renderer, chain
from felix.dataplane.iptables.save import KernelTable, SaveError, parse_save, rule_hash_of

HOOKS = Renderer.hooks("filter")


def apply_restore(kernel: KernelTable, text: str) -> KernelTable:
    """Execute an ``iptables-restore --noflush`` transaction on a model of one table."""
    k = kernel.copy()
    for line in text.splitlines():
        if line.startswith(("*", "COMMIT")):
            continue
        if line.startswith(":"):
            k.chains[line[1:].split()[0]] = []  # create, or flush
            continue
        op, name, rest = [*line.split(" ", 2), ""][:3]
        rules = k.chains[name]
        lines = k.lines.get(name)
        if op == "-X":
            assert not rules, f"deleting non-empty chain {name}"
            del k.chains[name]
        elif op == "-A":
            rules.append(rule_hash_of(line))
            if lines is not None:
                lines.append(line)
        elif op in ("-I", "-R"):
            num, _, body = rest.partition(" ")
            i = int(num) - 1
            assert 0 <= i <= len(rules) - (op == "-R"), line
            new = f"-A {name} {body}"
            if op == "-I":
                rules.insert(i, rule_hash_of(line))
                if lines is not None:
                    lines.insert(i, new)
            else:
                rules[i] = rule_hash_of(line)
                if lines is not None:
                    lines[i] = new
        elif op == "-D":
            if re.fullmatch(r"\d+", rest):
                i = int(rest) - 1
                assert 0 <= i < len(rules), line
            else:  # by value
                assert lines is not None
                i = lines.index("-A" + line[2:])
            del rules[i]
            if lines is not None:
                del lines[i]
        else:
            raise AssertionError(f"unexpected line {line!r}")
    return k


def chains_of(n: int) -> dict[str, Chain]:
    return {
        f"cali-c{i}": chain(f"cali-c{i}", [f"-j MARK --set-xmark {j:#x}/0xffffffff" for j in range(i + 1)])
        for i in range(n)
    }


def check_converged(after: KernelTable, desired: dict[str, Chain], insert: bool = True) -> None:
    for name, c in desired.items():
        assert after.chains[name] == list(c.hashes)
    assert set(after.ours()) == set(desired)
    for kchain, rules in HOOKS.items():
        ours = [N.rule_hash(kchain, r) for r in rules]
        got = after.chains[kchain]
        assert [h for h in got if h] == ours
        assert got[: len(ours)] == ours if insert else got[-len(ours) :] == ours


def empty_kernel() -> KernelTable:
    return parse_save("*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\nCOMMIT\n")["filter"]


def test_first_write_creates_chains_and_hooks_and_second_is_empty() -> None:
    desired = chains_of(3)
    plan = plan_table("filter", desired, HOOKS, empty_kernel())
    assert plan.lines[0] == "*filter" and plan.lines[-1] == "COMMIT"
    assert plan.chains_written == 3 and plan.hooks_repaired == 3
    after = apply_restore(empty_kernel(), plan.text)
    check_converged(after, desired)
    believed = empty_kernel()
    plan.apply_to(believed)
    assert after.chains == believed.chains and after.lines == believed.lines
    again = plan_table("filter", desired, HOOKS, after)
    assert again.lines == [] and again.chains_written == 0


rules_st = st.lists(st.integers(0, 6), max_size=25)


@settings(max_examples=300, deadline=None)
@given(rules_st, rules_st, st.booleans())
def test_edits_turn_any_chain_into_any_other(old: list[int], new: list[int], whole: bool) -> None:
    kernel = empty_kernel()
    start = chain("cali-x", [f"-j MARK --set-xmark {j:#x}/0xff" for j in old])
    kernel = apply_restore(kernel, plan_table("filter", {"cali-x": start}, {}, kernel).text)
    want = chain("cali-x", [f"-j MARK --set-xmark {j:#x}/0xff" for j in new])
    plan = plan_table("filter", {"cali-x": want}, {}, kernel, only={"cali-x"}, whole_chains=whole)
    after = apply_restore(kernel, plan.text)
    assert after.chains["cali-x"] == list(want.hashes) == plan.chains.get("cali-x", kernel.chains["cali-x"])


def test_one_inserted_rule_is_one_line() -> None:
    kernel = empty_kernel()
    old = chain("cali-d", [f"-i cali{i:02d} -g cali-tw-{i}" for i in range(0, 40, 2)])
    kernel = apply_restore(kernel, plan_table("filter", {"cali-d": old}, {}, kernel).text)
    new = chain("cali-d", sorted([*old.rules, "-i cali05 -g cali-tw-5"]))
    plan = plan_table("filter", {"cali-d": new}, {}, kernel, only={"cali-d"})
    assert plan.rule_ops == 1 and plan.lines[1].startswith("-I cali-d 4 ")


def test_unwanted_chains_are_deleted_unless_a_foreign_rule_jumps_there() -> None:
    text = (
        "*filter\n:FORWARD ACCEPT [0:0]\n:cali-old - [0:0]\n:cali-pinned - [0:0]\n:KUBE-X - [0:0]\n"
        '-A cali-old -m comment --comment "cali:aaaaaaaaaaaaaaaa" -j ACCEPT\n'
        '-A cali-pinned -m comment --comment "cali:bbbbbbbbbbbbbbbb" -j ACCEPT\n'
        "-A KUBE-X -j cali-pinned\nCOMMIT\n"
    )
    kernel = parse_save(text)["filter"]
    plan = plan_table("filter", {}, {}, kernel)
    after = apply_restore(kernel, plan.text)
    assert "cali-old" not in after.chains and after.chains["cali-pinned"] == []
    assert plan.chains_deleted == 1 and "foreign rule jumps" in plan.problems[0]
    assert after.lines["KUBE-X"] == ["-A KUBE-X -j cali-pinned"]


FOREIGN = "-A FORWARD -s 10.9.9.9/32 -j DROP"


@pytest.mark.parametrize("insert", [True, False])
def test_foreign_rule_above_our_hook_is_repaired_and_kept(insert: bool) -> None:
    desired = chains_of(1)
    kernel = empty_kernel()
    kernel = apply_restore(kernel, plan_table("filter", desired, HOOKS, kernel, insert=insert).text)
    # Someone inserts a rule at the top (or appends one at the bottom) of FORWARD.
    k2 = kernel.copy()
    if insert:
        k2.chains["FORWARD"].insert(0, "")
        k2.lines["FORWARD"].insert(0, FOREIGN)
    else:
        k2.chains["FORWARD"].append("")
        k2.lines["FORWARD"].append(FOREIGN)
    assert drifted_chains(kernel, k2, HOOKS, insert) == ["FORWARD"]
    plan = plan_table("filter", desired, HOOKS, k2, only=set(), insert=insert)
    assert plan.hooks_repaired == 1 and not any(FOREIGN[3:] in line for line in plan.lines)
    after = apply_restore(k2, plan.text)
    check_converged(after, desired, insert)
    assert FOREIGN in after.lines["FORWARD"]
    # A foreign rule on the far side of ours is not drift.
    k3 = after.copy()
    if insert:
        k3.chains["FORWARD"].append("")
        k3.lines["FORWARD"].append(FOREIGN)
    else:
        k3.chains["FORWARD"].insert(0, "")
        k3.lines["FORWARD"].insert(0, FOREIGN)
    assert drifted_chains(after, k3, HOOKS, insert) == []


def test_duplicate_and_stale_hooks_are_cleaned_up() -> None:
    stale = '-A FORWARD -m comment --comment "cali:oldoldoldoldoldo" -j cali-old-forward'
    ours = f'-A FORWARD -m comment --comment "cali:{N.rule_hash("FORWARD", "-j cali-FORWARD")}" -j cali-FORWARD'
    text = f"*filter\n:FORWARD ACCEPT [0:0]\n:INPUT ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n{ours}\n{FOREIGN}\n{stale}\n{ours}\nCOMMIT\n"
    kernel = parse_save(text)["filter"]
    plan = plan_table("filter", chains_of(0), HOOKS, kernel)
    after = apply_restore(kernel, plan.text)
    check_converged(after, {})
    assert after.lines["FORWARD"][1:] == [FOREIGN]


def test_drift_in_our_chains_is_found() -> None:
    desired = chains_of(3)
    kernel = apply_restore(empty_kernel(), plan_table("filter", desired, HOOKS, empty_kernel()).text)
    tampered = kernel.copy()
    tampered.chains["cali-c1"].pop()
    tampered.chains["cali-extra"] = [""]
    assert drifted_chains(kernel, tampered, HOOKS) == ["cali-c1", "cali-extra"]
    after = apply_restore(tampered, plan_table("filter", desired, HOOKS, tampered).text)
    check_converged(after, desired)


def test_parse_save_reads_hashes_and_keeps_foreign_lines() -> None:
    text = """# Generated by iptables-save v1.8.9 (nf_tables)
*nat
:POSTROUTING ACCEPT [0:0]
-A POSTROUTING -m comment --comment "cali:AbC-_0123456789x" -j cali-POSTROUTING
COMMIT
*filter
:FORWARD DROP [12:34]
:cali-FORWARD - [0:0]
-A FORWARD -m comment --comment kube -j KUBE-FORWARD
-A FORWARD
-A cali-FORWARD -i cali+ -m comment --comment "cali:AAAAAAAAAAAAAAAA" -j ACCEPT
COMMIT
"""
    t = parse_save(text)
    assert t["nat"].chains["POSTROUTING"] == ["AbC-_0123456789x"]
    assert t["filter"].chains == {"FORWARD": ["", ""], "cali-FORWARD": ["AAAAAAAAAAAAAAAA"]}
    assert t["filter"].lines["FORWARD"][0].endswith("KUBE-FORWARD") and "cali-FORWARD" not in t["filter"].lines
    with pytest.raises(SaveError):
        parse_save("# Table `filter' is incompatible, use 'nft' tool.\n")


@given(st.text())
def test_parse_save_never_fails_on_garbage(text: str) -> None:
    try:
        parse_save(text)
    except SaveError:
        pass
