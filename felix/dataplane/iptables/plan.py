"""Desired chains + what the kernel holds -> one ``iptables-restore --noflush`` transaction. Pure.

Design note
-----------
A table is written in one transaction (``*filter`` ... ``COMMIT``): iptables-restore applies it
atomically or not at all, so a packet never sees half an update and a failure leaves the previous
state whole. ``--noflush`` keeps every chain the transaction does not mention, so rules of other
programs are untouched. Inside the transaction, in this order:

1. a forward reference (``:chain - [0:0]``) creates each new chain and empties each chain about to
   be deleted, so jumps to new chains resolve and chains being deleted stop jumping elsewhere;
2. each changed chain is edited in place: its rule hashes are compared with the kernel's as
   *sequences* (``difflib``), and only the differing stretch is written, as ``-R`` (replace),
   ``-I`` (insert) and ``-D`` (delete) by rule number, applied from the end of the chain backwards
   so earlier numbers stay valid. Unchanged rules keep their counters; a one-interface change to a
   dispatch chain is one line, where a whole-chain rewrite would be dozens;
3. hook rules in the kernel's own chains (``FORWARD``, ``INPUT``, ``OUTPUT``, nat ``POSTROUTING``)
   are checked for position: with ``ChainInsertMode=insert`` ours must come first, with ``append``
   last, exactly once. If not (a foreign rule was inserted above ours, or ours was deleted), every
   rule of ours in that chain is deleted *by value* and put back where it belongs. Rules of other
   programs are never written;
4. chains nobody wants any more are deleted (``-X``), except one a foreign rule still jumps to,
   which stays empty (deleting it would fail the whole transaction).

Edits of chains whose rules name ip sets come after the others (``TablePlan.parts``): the shell
feeds iptables-restore everything before them while ``ipset restore`` is still creating the sets
(iptables looks a set up as it parses the rule naming it), and the rest, with the COMMIT, once the
sets exist. At a cold start that is three rules in five parsed in the shadow of set creation.

The planner also returns what the transaction changes (only the chains it touches, so a small
change costs little however large the table), which updates felix's belief of the kernel if
``iptables-restore`` succeeds; a periodic ``iptables-save`` checks that belief (drift repair).
"""

from __future__ import annotations

import difflib
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field

from . import names as N
from .render import Chain
from .save import KernelTable

__all__ = ["TablePlan", "drifted_chains", "plan_table"]


@dataclass(slots=True)
class TablePlan:
    table: str
    lines: list[str] = field(default_factory=list)  # the transaction; empty when nothing changes
    # lines[:set_free] name no ip set: the header, new chains, and the edits of chains naming none
    set_free: int = 0
    # What the transaction changes in felix's belief (None: the chain is gone). Only the chains
    # touched, so planning a small change costs nothing in proportion to the table's size.
    chains: dict[str, list[str] | None] = field(default_factory=dict)
    lines_of: dict[str, list[str]] = field(default_factory=dict)  # new "-A" lines of hooked kernel chains
    chains_written: int = 0  # chains created or edited
    chains_deleted: int = 0
    rule_ops: int = 0  # -A/-I/-R/-D lines
    hooks_repaired: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def text(self) -> str:
        return "\n".join(self.lines) + "\n" if self.lines else ""

    def parts(self) -> tuple[str, str]:
        """The transaction as two texts fed to iptables-restore in turn: the first names no ip set,
        so the tool can parse it while the sets are still being created (it looks each set up as
        it parses a rule); nothing is committed before the second, which ends with COMMIT."""
        if not self.lines:
            return "", ""
        head, tail = self.lines[: self.set_free], self.lines[self.set_free :]
        return "\n".join(head) + "\n" if head else "", "\n".join(tail) + "\n"

    def apply_to(self, kernel: KernelTable) -> None:
        """Record in ``kernel`` (felix's belief) what the transaction did, once it succeeded."""
        for name, hashes in self.chains.items():
            if hashes is None:
                kernel.chains.pop(name, None)
            else:
                kernel.chains[name] = hashes
        kernel.lines.update(self.lines_of)


_SET_MATCH = "--match-set "


def _line(op: str, chain: str, rule: str, h: str, num: int | None = None) -> str:
    at = f" {num}" if num is not None else ""
    body = f" {rule}" if rule else ""
    return f'{op} {chain}{at} -m comment --comment "{N.HASH_PREFIX}{h}"{body}'


def _diff(name: str, old: Sequence[str], c: Chain, whole: bool) -> list[str]:
    """Lines turning the kernel's rules (hashes ``old``) into ``c``'s, applied back to front."""
    new = c.hashes
    if whole or not old:
        head = [f"-D {name} 1"] * len(old) if whole and old else []
        return head + [_line("-A", name, r, h) for r, h in zip(c.rules, new)]
    out: list[str] = []
    ops = difflib.SequenceMatcher(None, old, new, autojunk=False).get_opcodes()
    for tag, i1, i2, j1, j2 in reversed(ops):
        if tag == "equal":
            continue
        n_old, n_new = i2 - i1, j2 - j1
        common = min(n_old, n_new)
        for k in range(common):
            out.append(_line("-R", name, c.rules[j1 + k], new[j1 + k], i1 + k + 1))
        out += [f"-D {name} {i1 + common + 1}"] * (n_old - common)
        for k in range(common, n_new):
            if i2 == len(old):  # at the tail: append (the chain's current end is i1 + k)
                out.append(_line("-A", name, c.rules[j1 + k], new[j1 + k]))
            else:
                out.append(_line("-I", name, c.rules[j1 + k], new[j1 + k], i1 + k + 1))
    return out


def _foreign_targets(kernel: KernelTable) -> set[str]:
    """``cali-`` chains that rules outside ``cali-`` chains (other than ours) jump to."""
    out = set()
    for chain, lines in kernel.lines.items():
        hashes = kernel.chains.get(chain, [])
        for i, line in enumerate(lines):
            if i < len(hashes) and hashes[i]:
                continue  # ours: a hook rule, rewritten as needed
            for word in (" -j ", " -g ", " --jump ", " --goto "):
                at = line.find(word)
                if at >= 0:
                    target = line[at + len(word) :].split(" ", 1)[0]
                    if target.startswith(N.CHAIN_PREFIX):
                        out.add(target)
    return out


def plan_table(
    table: str,
    desired: Mapping[str, Chain],
    hooks: Mapping[str, Sequence[str]],
    kernel: KernelTable,
    only: Collection[str] | None = None,
    insert: bool = True,
    whole_chains: bool = False,
) -> TablePlan:
    """The transaction making ``kernel`` hold ``desired`` (chains named in ``only``, or all of ours)
    and ``hooks`` (kernel chain -> our rules in it, always checked).

    ``whole_chains`` rewrites a changed chain from scratch instead of editing it (for iptables-nft
    older than 1.8.3, whose ``-R`` is unreliable).
    """
    plan = TablePlan(table)
    names = set(desired) | set(kernel.ours()) if only is None else set(only)
    refs: list[str] = []
    edits: list[str] = []
    set_edits: list[str] = []
    deletes: list[str] = []
    for name in sorted(names):
        want = desired.get(name)
        have = kernel.chains.get(name)
        if want is not None:
            if have is not None and list(want.hashes) == have:
                continue
            if have is None:
                refs.append(f":{name} - [0:0]")
            lines = _diff(name, have or [], want, whole_chains)
            (set_edits if any(_SET_MATCH in line for line in lines) else edits).extend(lines)
            plan.rule_ops += len(lines)
            plan.chains_written += 1
            plan.chains[name] = list(want.hashes)
        elif have is not None and name.startswith(N.CHAIN_PREFIX):
            refs.append(f":{name} - [0:0]")
            deletes.append(name)
    kept = set()
    if deletes:
        pinned = _foreign_targets(kernel)
        for name in deletes:
            if name in pinned:
                plan.problems.append(f"{table} chain {name} is unused but a foreign rule jumps to it: left empty")
                plan.chains[name] = []
                kept.add(name)
            else:
                plan.chains[name] = None
                plan.chains_deleted += 1
    hook_lines = []
    for kchain, rules in sorted(hooks.items()):
        lines = _plan_hook(kchain, rules, kernel, insert, plan)
        if lines:
            plan.hooks_repaired += 1
            hook_lines += lines
    delete_lines = [f"-X {n}" for n in deletes if n not in kept]
    # Edits of chains that name ip sets after the others (in one transaction, the order of edits
    # to different chains does not matter: every new chain is declared first).
    body = refs + edits + set_edits + hook_lines + delete_lines
    if body:
        plan.lines = [f"*{table}", *body, "COMMIT"]
        plan.set_free = 1 + len(refs) + len(edits)
    return plan


def _plan_hook(kchain: str, rules: Sequence[str], kernel: KernelTable, insert: bool, plan: TablePlan) -> list[str]:
    """Lines putting our ``rules`` once at the top (or bottom) of kernel chain ``kchain``."""
    want = [N.rule_hash(kchain, r) for r in rules]
    have = kernel.chains.get(kchain, [])
    lines = kernel.lines.get(kchain, [])
    foreign = [i for i, h in enumerate(have) if not h]
    expected = want + [""] * len(foreign) if insert else [""] * len(foreign) + want
    if have == expected:
        return []
    out = []
    for i, h in enumerate(have):
        if h and i < len(lines):
            out.append("-D" + lines[i][2:])  # "-A chain ..." -> "-D chain ...": delete by value
    ours = [_line("-A", kchain, r, h) for r, h in zip(rules, want)]
    if insert:
        out += [_line("-I", kchain, r, h, 1) for r, h in reversed(list(zip(rules, want)))]
    else:
        out += ours
    kept = [lines[i] for i in foreign if i < len(lines)]
    plan.chains[kchain] = expected
    plan.lines_of[kchain] = ours + kept if insert else kept + ours
    return out


def drifted_chains(
    believed: KernelTable, actual: KernelTable, hooks: Mapping[str, Sequence[str]], insert: bool = True
) -> list[str]:
    """Our chains that differ from what felix believes, and kernel chains whose hook is misplaced
    (missing, duplicated, or with a foreign rule above it in insert mode)."""
    out = [
        name
        for name in sorted(set(believed.ours()) | set(actual.ours()))
        if believed.chains.get(name) != actual.chains.get(name)
    ]
    scratch = TablePlan("")
    out += [k for k, rules in sorted(hooks.items()) if _plan_hook(k, rules, actual, insert, scratch)]
    return out
