"""Walk one packet through felix's rendered chains: its verdict and how many rules it met. Pure.

Design note
-----------
This is a small interpreter of exactly the iptables vocabulary ``render`` and ``rules`` emit
(interfaces with ``+`` wildcards, CIDRs, protocols, ``multiport``, ``set`` with ``src``/``dst``
and ``ip,port`` flags, ICMP types, conntrack state, marks with masks, ``MARK --set-xmark``, jumps,
gotos, ``RETURN``, ``ACCEPT``, ``DROP``, ``LOG``). It answers two questions the kernel cannot
answer cheaply: *what would this packet meet?* -- the benchmark reports rules evaluated per packet
for a pod in the middle of the dispatch tree -- and *does the rendering mean what the policy
says?* -- the tests compare its verdicts with the policy model's on generated rules and packets,
and the kernel tests check the kernel agrees with it on real traffic. It refuses any option it
does not know (``ValueError``), so it can never silently mis-evaluate a rule.
"""

from __future__ import annotations

import ipaddress
import shlex
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache

from .render import Chain

__all__ = ["Packet", "WalkResult", "walk"]

_PROTO_NUM = {"icmp": 1, "tcp": 6, "udp": 17, "ipv6-icmp": 58, "sctp": 132, "udplite": 136, "dccp": 33}


@dataclass(frozen=True, slots=True)
class Packet:
    src: str
    dst: str
    proto: str = "tcp"
    sport: int = 40000
    dport: int = 80
    iif: str = ""
    oif: str = ""
    ctstate: str = "NEW"
    icmp_type: int | None = None
    icmp_code: int | None = None
    mark: int = 0


@dataclass(frozen=True, slots=True)
class WalkResult:
    verdict: str  # "ACCEPT", "DROP", or "RETURN" (fell off the start chain)
    evaluated: int  # rules whose match was tested
    mark: int
    logged: int = 0


def _proto_num(p: str) -> int:
    return int(p) if p.isdigit() else _PROTO_NUM[p]


def _iface(pattern: str, name: str) -> bool:
    return name.startswith(pattern[:-1]) if pattern.endswith("+") else name == pattern


def _ports(spec: str, port: int) -> bool:
    for part in spec.split(","):
        lo, _, hi = part.partition(":")
        if int(lo) <= port <= int(hi or lo):
            return True
    return False


def _in_set(members: frozenset[str], set_type: str, key: str) -> bool:
    if set_type == "hash:ip,port":
        return key in members
    ip = ipaddress.ip_address(key.split(",")[0])
    return any(ip in ipaddress.ip_network(m, strict=False) for m in members)


@lru_cache(maxsize=65536)
def _parse(rule: str) -> tuple[tuple[tuple[str, bool, tuple[str, ...]], ...], tuple[str, ...]]:
    """rule text -> (matches as (option, negated, args)), target words."""
    words = shlex.split(rule)
    matches: list[tuple[str, bool, tuple[str, ...]]] = []
    i, neg = 0, False
    target: tuple[str, ...] = ()
    takes = {
        "-p": 1, "--source": 1, "-s": 1, "--destination": 1, "-d": 1, "-i": 1, "-o": 1, "--ctstate": 1,
        "--match-set": 2, "--source-ports": 1, "--destination-ports": 1, "--sports": 1, "--dports": 1,
        "--icmp-type": 1, "--icmpv6-type": 1, "--mark": 1, "--comment": 1,
    }  # fmt: skip
    while i < len(words):
        w = words[i]
        if w == "!":
            neg = True
            i += 1
            continue
        if w == "-m":
            i += 2
            continue
        if w in ("-j", "-g"):
            target = (w, *words[i + 1 :])
            break
        if w not in takes:
            raise ValueError(f"walk: unknown option {w!r} in {rule!r}")
        n = takes[w]
        matches.append((w, neg, tuple(words[i + 1 : i + 1 + n])))
        neg = False
        i += 1 + n
    return tuple(matches), target


def _matches(
    opt: str, args: tuple[str, ...], p: Packet, mark: int, sets: Mapping[str, tuple[str, frozenset[str]]]
) -> bool:
    if opt == "-p":
        return _proto_num(p.proto) == _proto_num(args[0])
    if opt in ("--source", "-s"):
        return ipaddress.ip_address(p.src) in ipaddress.ip_network(args[0], strict=False)
    if opt in ("--destination", "-d"):
        return ipaddress.ip_address(p.dst) in ipaddress.ip_network(args[0], strict=False)
    if opt == "-i":
        return _iface(args[0], p.iif)
    if opt == "-o":
        return _iface(args[0], p.oif)
    if opt == "--ctstate":
        return p.ctstate in args[0].split(",")
    if opt == "--match-set":
        name, flags = args
        set_type, members = sets.get(name, ("hash:net", frozenset()))
        side = flags.split(",")
        ip = p.src if side[0] == "src" else p.dst
        if len(side) == 2:
            port = p.sport if side[1] == "src" else p.dport
            return _in_set(members, set_type, f"{ip},{p.proto}:{port}")
        return _in_set(members, set_type, ip)
    if opt in ("--source-ports", "--sports"):
        return _ports(args[0], p.sport)
    if opt in ("--destination-ports", "--dports"):
        return _ports(args[0], p.dport)
    if opt in ("--icmp-type", "--icmpv6-type"):
        t, _, c = args[0].partition("/")
        return p.icmp_type == int(t) and (not c or p.icmp_code == int(c))
    if opt == "--mark":
        value, _, mask = args[0].partition("/")
        return mark & int(mask or "0xffffffff", 16) == int(value, 16)
    if opt == "--comment":
        return True
    raise ValueError(f"walk: cannot evaluate {opt}")


def walk(
    chains: Mapping[str, Chain],
    start: str,
    packet: Packet,
    sets: Mapping[str, tuple[str, frozenset[str]]] | None = None,
    max_steps: int = 1_000_000,
) -> WalkResult:
    """Run ``packet`` from chain ``start``; ``sets`` maps set names to (type, members)."""
    sets = sets or {}
    mark, evaluated, logged = packet.mark, 0, 0
    stack: list[tuple[str, int]] = [(start, 0)]  # (chain, next rule index)
    while stack:
        name, i = stack.pop()
        rules = chains[name].rules if name in chains else ()
        while i < len(rules):
            evaluated += 1
            if evaluated > max_steps:
                raise ValueError("walk: too many steps (a loop?)")
            matches, target = _parse(rules[i])
            i += 1
            if not all(_matches(o, a, packet, mark, sets) != neg for o, neg, a in matches):
                continue
            if not target:
                continue
            kind, what = target[0], target[1]
            if what in ("ACCEPT", "DROP"):
                return WalkResult(what, evaluated, mark, logged)
            if what == "RETURN":
                break
            if what == "LOG":
                logged += 1
                continue
            if what == "MARK":
                value, _, mask = target[3].partition("/")
                mark = (mark & ~int(mask, 16)) ^ int(value, 16)
                continue
            if what == "MASQUERADE":
                return WalkResult("ACCEPT", evaluated, mark, logged)
            if kind == "-j":
                stack.append((name, i))
            stack.append((what, 0))
            break
    return WalkResult("RETURN", evaluated, mark, logged)
