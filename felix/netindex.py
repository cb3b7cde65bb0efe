"""Indexes over networks for the route calculation: longest-prefix match, and "which of these lie inside C".

Design note
-----------
Both answer in O(1) dictionary lookups per prefix length in use (normally one or two: the pools'
block size), instead of scanning or keeping a radix tree: Calico's clusters use very few distinct
prefix lengths, and a dict keyed by the masked address is what CPython does fastest.  Split from
``felix.calc`` so the calculator module holds the rules and these hold the data structures.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterator

from felix.model import Net

__all__ = ["NO_NETS", "Lpm", "Within"]


class Lpm:
    """Longest-prefix match over a set of nets: one dict per prefix length in use (few)."""

    __slots__ = ("_plens", "_tables", "items")

    def __init__(self) -> None:
        self._tables: dict[tuple[int, int], dict[int, Net]] = {}
        self._plens: dict[int, list[int]] = {4: [], 6: []}  # ascending; searched from the end
        self.items: set[Net] = set()

    def __contains__(self, net: object) -> bool:
        return net in self.items

    def add(self, net: Net) -> None:
        if net in self.items:
            return
        self.items.add(net)
        t = self._tables.get((net.version, net.plen))
        if t is None:
            t = self._tables[(net.version, net.plen)] = {}
            bisect.insort(self._plens[net.version], net.plen)
        t[net.addr] = net

    def remove(self, net: Net) -> None:
        if net not in self.items:
            return
        self.items.discard(net)
        t = self._tables[(net.version, net.plen)]
        del t[net.addr]
        if not t:
            del self._tables[(net.version, net.plen)]
            self._plens[net.version].remove(net.plen)

    def lookup(self, net: Net) -> Net | None:
        """The longest member that contains ``net`` (itself included)."""
        plens = self._plens[net.version]
        for i in range(len(plens) - 1, -1, -1):
            plen = plens[i]
            if plen > net.plen:
                continue
            hit = self._tables[(net.version, plen)].get(net.supernet_addr(plen))
            if hit is not None:
                return hit
        return None


NO_NETS: frozenset[Net] = frozenset()


class Within:
    """Candidate host destinations, grouped by their supernet at each block prefix length in use.

    Answers "which candidates lie inside block C" in O(1).  Members are refcounted because an
    address can be both an endpoint's and a borrowed-list entry.
    """

    __slots__ = ("_groups", "_plen_refs", "_refs")

    def __init__(self) -> None:
        self._refs: dict[Net, int] = {}
        self._groups: dict[tuple[int, int], dict[int, set[Net]]] = {}
        self._plen_refs: dict[tuple[int, int], int] = {}

    def __iter__(self) -> Iterator[Net]:
        return iter(self._refs)

    def add(self, net: Net) -> None:
        n = self._refs.get(net, 0)
        self._refs[net] = n + 1
        if n:
            return
        for (v, plen), groups in self._groups.items():
            if v == net.version and net.plen >= plen:
                groups.setdefault(net.supernet_addr(plen), set()).add(net)

    def remove(self, net: Net) -> None:
        n = self._refs[net] - 1
        if n:
            self._refs[net] = n
            return
        del self._refs[net]
        for (v, plen), groups in self._groups.items():
            if v == net.version and net.plen >= plen:
                key = net.supernet_addr(plen)
                g = groups[key]
                g.discard(net)
                if not g:
                    del groups[key]

    def add_plen(self, version: int, plen: int) -> None:
        k = (version, plen)
        self._plen_refs[k] = self._plen_refs.get(k, 0) + 1
        if k in self._groups:
            return
        groups: dict[int, set[Net]] = {}
        for net in self._refs:  # a new block size: index once, O(members)
            if net.version == version and net.plen >= plen:
                groups.setdefault(net.supernet_addr(plen), set()).add(net)
        self._groups[k] = groups

    def remove_plen(self, version: int, plen: int) -> None:
        k = (version, plen)
        n = self._plen_refs[k] - 1
        if n:
            self._plen_refs[k] = n
        else:
            del self._plen_refs[k]
            del self._groups[k]

    def within(self, c: Net) -> frozenset[Net] | set[Net]:
        groups = self._groups.get((c.version, c.plen))
        if groups is None:
            return {n for n in self._refs if c.contains(n)}
        return groups.get(c.addr, NO_NETS)
