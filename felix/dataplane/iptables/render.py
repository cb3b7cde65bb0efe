"""Felix's chains: the static skeleton, interface dispatch, endpoint, policy and profile chains. Pure.

Design note
-----------
The layout is Calico's, so anyone who has read a Calico node's ``iptables-save`` can read ours:

* ``FORWARD``, ``INPUT`` and ``OUTPUT`` each get one hook rule jumping to ``cali-FORWARD``,
  ``cali-INPUT``, ``cali-OUTPUT``; nat ``POSTROUTING`` jumps to ``cali-POSTROUTING``. Nothing
  else outside ``cali-`` chains is ever written.
* ``cali-FORWARD`` clears felix's mark bits, sends traffic *from* a workload interface to
  ``cali-from-wl-dispatch`` and traffic *to* one to ``cali-to-wl-dispatch``, and finally accepts
  what carries the accept mark. Traffic between two local pods runs the sender's egress chain and
  then the receiver's ingress chain, because a dispatch chain *returns* when policy allows.
* The dispatch chains ``goto`` the endpoint chains (``cali-fw-<iface>``, ``cali-tw-<iface>``) and
  end in a drop: an interface with the workload prefix that felix does not know is dropped (fail
  closed, e.g. a pod whose endpoint has not arrived yet).
* An endpoint chain accepts conntrack ESTABLISHED/RELATED at once and drops INVALID, so only the
  first packet of a connection walks the policy; then, per tier, it jumps to each policy chain
  until one sets the accept mark (return: allowed) or the pass mark (skip to the next tier); a
  policy chain that matches nothing falls through, and the tier ends in a drop for packets no
  policy passed. Profiles follow the tiers (reached when no tier applies, or every applying tier
  passed); the chain ends with a drop.
* Policy and profile chains are shared by every endpoint that uses them and written once.
* ``cali-INPUT`` sends workload traffic to ``cali-wl-to-host``: the workload's egress policy
  (through the same dispatch), then ``DefaultEndpointToHostAction`` (drop, return to INPUT, or
  accept). ``cali-OUTPUT`` returns host-to-workload traffic unpoliced, as Calico does; it is where
  host-endpoint policy would go.
* ``cali-nat-outgoing`` masquerades traffic from a natOutgoing pool to a destination outside every
  pool (two ip sets: the masquerading pools and all pools).

Dispatch scales with a tree. A linear list of 1,000 interfaces costs an average packet 500 rule
evaluations before it reaches its endpoint chain. Calico splits the list once, on the character
after the names' common prefix (16 buckets of hex names, ~60 rules each at 1,000 pods). We split
recursively, like a trie, until a chain holds at most ``dispatch_leaf`` entries, so a packet sees
about 16 rules per level and log16(n) levels: ~20 evaluations at 1,000 interfaces instead of
~40 (Calico) or ~500 (linear). The tree depends only on the set of names, so it is
deterministic, and adding or removing one interface rewrites one leaf chain (one rule).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Literal

from felix.policy.messages import Policy, WorkloadEndpoint

from . import names as N
from .rules import Marks, RuleContext, mark_clear, match_mark_clear, match_mark_set, render_rule

__all__ = ["Chain", "RenderConfig", "Renderer"]

EndpointToHost = Literal["DROP", "RETURN", "ACCEPT"]


@dataclass(frozen=True, slots=True)
class Chain:
    """One chain as felix wants it: its rules (text after ``-A <name>``), the ip sets and chains
    they use."""

    name: str
    rules: tuple[str, ...] = ()
    sets: frozenset[str] = frozenset()
    refs: frozenset[str] = frozenset()
    hashes: tuple[str, ...] = ()  # N.rule_hash of each rule, computed once by ``chain()``


@dataclass(frozen=True, slots=True)
class RenderConfig:
    marks: Marks = field(default_factory=Marks)
    iface_prefixes: tuple[str, ...] = ("cali",)
    endpoint_to_host: EndpointToHost = "DROP"
    log_prefix: str = "calico-packet"
    dispatch_leaf: int = 16  # most entries in one dispatch chain before it splits; 0 = one linear chain
    deny: str = "-j DROP"


_COMMENT_UNSAFE = re.compile(r"[^A-Za-z0-9 ._/:=,+-]")


def comment(text: str) -> str:
    return f'-m comment --comment "{_COMMENT_UNSAFE.sub("_", text)[:200]}"'


_JUMP = re.compile(r"(?:^| )-[jg] (" + re.escape(N.CHAIN_PREFIX) + r"\S*)", re.MULTILINE)


def _jump_targets(rules: Sequence[str]) -> frozenset[str]:
    """Our chains that these rules jump or go to (one regex pass over the chain)."""
    return frozenset(_JUMP.findall("\n".join(rules)))


def _common_prefix_len(names: Sequence[str]) -> int:
    """Length of the longest prefix of every name (sorted input: the first and last decide)."""
    first, last = min(names), max(names)
    n = 0
    while n < len(first) and n < len(last) and first[n] == last[n]:
        n += 1
    return n


def chain(name: str, rules: Sequence[str], sets: Iterable[str] = ()) -> Chain:
    return Chain(name, tuple(rules), frozenset(sets), _jump_targets(rules), tuple(N.rule_hash(name, r) for r in rules))


class Renderer:
    def __init__(self, cfg: RenderConfig | None = None) -> None:
        self.cfg = cfg or RenderConfig()

    # -- hooks and static chains -------------------------------------------------------------------
    @staticmethod
    def hooks(table: str) -> dict[str, tuple[str, ...]]:
        """Kernel chain -> the rules felix puts into it (the only rules outside ``cali-`` chains)."""
        if table == "filter":
            return {k: (f"-j cali-{k}",) for k in ("INPUT", "FORWARD", "OUTPUT")}
        if table == "nat":
            return {"POSTROUTING": (f"-j {N.CHAIN_NAT_POSTROUTING}",)}
        return {}

    def static_filter(self, version: int) -> list[Chain]:
        c, m = self.cfg, self.cfg.marks
        fwd = [mark_clear(m.all)]
        inp, out = [], []
        for p in c.iface_prefixes:
            fwd += [f"-i {p}+ -j {N.CHAIN_FROM_WL_DISPATCH}", f"-o {p}+ -j {N.CHAIN_TO_WL_DISPATCH}"]
            inp.append(f"-i {p}+ -g {N.CHAIN_WL_TO_HOST}")
            out.append(f"-o {p}+ {comment('host to workload: not policed')} -j RETURN")
        fwd.append(f"{match_mark_set(m.accept)} {comment('Policy explicitly accepted packet.')} -j ACCEPT")
        to_host = []
        if version == 6:  # neighbour discovery and MLD, which a router must answer
            to_host += [f"-p ipv6-icmp -m icmp6 --icmpv6-type {t} -j ACCEPT" for t in (130, 131, 132, 133, 135, 136)]
        to_host.append(f"-j {N.CHAIN_FROM_WL_DISPATCH}")
        to_host.append(f"{comment('Configured DefaultEndpointToHostAction')} -j {c.endpoint_to_host}")
        return [
            chain(N.CHAIN_FORWARD, fwd),
            chain(N.CHAIN_INPUT, inp),
            chain(N.CHAIN_OUTPUT, out),
            chain(N.CHAIN_WL_TO_HOST, to_host),
        ]

    def nat(self, version: int, masquerade: bool) -> list[Chain]:
        rules, sets = [], []
        if masquerade:
            masq, every = N.set_name(version, N.SET_MASQ_POOLS), N.set_name(version, N.SET_ALL_POOLS)
            sets = [masq, every]
            rules.append(f"-m set --match-set {masq} src -m set ! --match-set {every} dst -j MASQUERADE --random-fully")
        return [
            chain(N.CHAIN_NAT_POSTROUTING, [f"-j {N.CHAIN_NAT_OUTGOING}"]),
            chain(N.CHAIN_NAT_OUTGOING, rules, sets),
        ]

    # -- dispatch ----------------------------------------------------------------------------------
    def dispatch(self, ifaces: Iterable[str]) -> list[Chain]:
        """Both dispatch trees (from and to workloads) for these interface names."""
        names = sorted(set(ifaces))
        return self._tree(N.CHAIN_FROM_WL_DISPATCH, "-i", False, names) + self._tree(
            N.CHAIN_TO_WL_DISPATCH, "-o", True, names
        )

    def _tree(self, root: str, opt: str, ingress: bool, names: list[str]) -> list[Chain]:
        end = f"{comment('Unknown interface')} {self.cfg.deny}"
        leaf = self.cfg.dispatch_leaf
        out: list[Chain] = []
        base = _common_prefix_len(names) if names else 0

        def build(name: str, members: list[str]) -> None:
            rules: list[str] = []
            if leaf <= 0 or len(members) <= leaf or len(name) >= N.MAX_CHAIN_NAME:
                rules = [f"{opt} {m} -g {N.endpoint_chain_name(ingress, m)}" for m in members]
            else:
                common = _common_prefix_len(members)
                groups: dict[str, list[str]] = {}
                for m in members:
                    groups.setdefault(m[: common + 1], []).append(m)
                for prefix, group in groups.items():
                    if len(group) == 1:
                        rules += [f"{opt} {m} -g {N.endpoint_chain_name(ingress, m)}" for m in group]
                        continue
                    child = N.limited_name(root + "-", prefix[base:])
                    rules.append(f"{opt} {prefix}+ -g {child}")
                    build(child, group)
            out.append(chain(name, [*rules, end]))

        build(root, names)
        return out

    # -- endpoints ---------------------------------------------------------------------------------
    def endpoint(self, ep: WorkloadEndpoint, ingress: bool, known: Callable[[str], bool], problems: list[str]) -> Chain:
        """``cali-tw-``/``cali-fw-`` chain of one endpoint. ``known(chain)`` says whether a policy or
        profile chain exists; a missing policy fails closed (drop), a missing profile is skipped."""
        m, deny = self.cfg.marks, self.cfg.deny
        rules = [
            "-m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT",
            f"-m conntrack --ctstate INVALID {deny}",
            mark_clear(m.accept | m.pass_),
        ]
        first = True
        for tier in ep.tiers:
            policies = tier.ingress_policies if ingress else tier.egress_policies
            if not policies:
                continue
            if not first:  # the first tier starts with pass clear already (the rule above)
                rules.append(f"{comment('Start of tier ' + tier.name)} {mark_clear(m.pass_)}")
            first = False
            for pol in policies:
                target = N.policy_chain_name(ingress, tier.name, pol)
                if known(target):
                    rules += [f"{match_mark_clear(m.pass_)} -j {target}", f"{match_mark_set(m.accept)} -j RETURN"]
                else:
                    problems.append(f"endpoint {ep.name}: unknown policy {tier.name}/{pol}: dropping in its place")
                    rules.append(f"{match_mark_clear(m.pass_)} {comment('unknown policy ' + pol)} {deny}")
            rules.append(f"{match_mark_clear(m.pass_)} {comment('End of tier ' + tier.name)} {deny}")
        for prof in ep.profile_ids:
            target = N.profile_chain_name(ingress, prof)
            if known(target):
                rules += [f"-j {target}", f"{match_mark_set(m.accept)} -j RETURN"]
            else:
                problems.append(f"endpoint {ep.name}: unknown profile {prof}: skipped")
        rules.append(f"{comment('Drop if no profiles matched')} {deny}")
        return chain(N.endpoint_chain_name(ingress, ep.name), rules)

    # -- policies and profiles ---------------------------------------------------------------------
    def policy(
        self,
        ingress: bool,
        name: str,
        label: str,
        policy: Policy,
        version: int,
        set_name: Callable[[str, bool], str],
        problems: list[str],
    ) -> Chain:
        """One direction of a policy or profile as a chain named ``name``; ``label`` names it in the
        first rule's comment and in problem reports."""
        ctx = RuleContext(version, self.cfg.marks, set_name, self.cfg.log_prefix, self.cfg.deny)
        rules: list[str] = []
        for r in policy.inbound_rules if ingress else policy.outbound_rules:
            rules += render_rule(r, ctx)
        problems += [f"{label}: {p}" for p in ctx.problems]
        if rules:
            direction = "ingress" if ingress else "egress"
            rules[0] = f"{comment(f'{label} {direction}')} {rules[0]}"
        return chain(name, rules, ctx.sets_used)
