"""Ip set membership: which addresses each rule selector (and named port) stands for, incrementally.

Design note
-----------
Every selector in an *active* rule (a rule of a policy or profile that applies to a local
endpoint) becomes an ip set; a named port becomes a ``hash:ip,port`` set of (address,
protocol:port) of the endpoints that match the rule's selector on that side and have a port of
that name. Sets are identified by what they contain -- ``s:<canonical selector>`` or
``n:<protocol>:<port name>:<canonical selector>`` -- so equal selectors anywhere share one set.

Membership comes from one :class:`LabelIndex` over every endpoint in the cluster and every network
set, keyed by canonical selector (a selector used by a plain set and by named-port sets is indexed
once). The index reports matches starting and stopping; each match adds or removes the item's
contribution to every set built on that selector. Members are reference-counted, because two items
can contribute the same address (a pod IP also inside a network set's CIDR, a pod moving between
nodes under the same IP), and the set must hold it while anyone does. A set created since the last
flush is sent whole, so when its selector is added the index hands over all its matches in one
call and they are counted in C (``Counter.update``), without the per-member delta bookkeeping: at a
cold start that is 100k members.

Output is incremental and batched: ``flush()`` returns full contents for sets created since the
last flush (``IpSetUpdate``), net deltas for the others (an address added and removed within one
batch is not sent), and the ids of sets no longer referenced. Sets are only computed while some
active rule refers to them (reference counts from the policy calculation), as Calico does: the
cluster's other 499 policies cost nothing on this node.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from itertools import chain
from typing import NamedTuple

from .labelindex import LabelIndex
from .messages import IpSetDeltaUpdate, IpSetRemove, IpSetType, IpSetUpdate
from .model import Endpoint, NetworkSet
from .selector import Selector

__all__ = ["IpSetCalculator", "IpSetSpec", "named_port_set", "selector_set"]


class IpSetSpec(NamedTuple):
    id: str
    selector: Selector
    port_name: str  # "" for a plain selector set
    protocol: str  # for named ports: tcp | udp | sctp

    @property
    def type(self) -> IpSetType:
        return "hash:ip,port" if self.port_name else "hash:net"


def selector_set(selector: Selector) -> IpSetSpec:
    return IpSetSpec(f"s:{selector.canonical}", selector, "", "")


def named_port_set(selector: Selector, protocol: str, port_name: str) -> IpSetSpec:
    return IpSetSpec(f"n:{protocol}:{port_name}:{selector.canonical}", selector, port_name, protocol)


Item = Endpoint | NetworkSet


def _members(spec: IpSetSpec, item: Item) -> list[str]:
    if not spec.port_name:
        return list(item.nets)
    if not isinstance(item, Endpoint):
        return []  # network sets have addresses but no ports
    out: list[str] = []
    for p in item.ports:
        if p.name == spec.port_name and p.protocol == spec.protocol:
            out.extend(f"{n.partition('/')[0]},{p.protocol}:{p.port}" for n in item.nets)
    return out


class _Set:
    __slots__ = ("added", "counts", "removed", "spec")

    def __init__(self, spec: IpSetSpec) -> None:
        self.spec = spec
        self.counts: Counter[str] = Counter()
        self.added: set[str] = set()
        self.removed: set[str] = set()


class IpSetCalculator:
    def __init__(self) -> None:
        self._index: LabelIndex[str, str] = LabelIndex(self._on_match, self._on_unmatch, self._on_matches)
        self._items: dict[str, Item] = {}
        self._sets: dict[str, _Set] = {}
        self._refs: Counter[str] = Counter()
        self._by_selector: dict[str, set[str]] = {}  # canonical selector -> set ids built on it
        self._created: set[str] = set()  # since the last flush
        self._gone: set[str] = set()

    # -- inputs ----------------------------------------------------------------------------------

    def update_parent(self, profile: str, labels: dict[str, str] | None) -> None:
        self._index.update_parent(profile, labels)

    def update_item(self, iid: str, item: Item | None) -> None:
        """An endpoint (by key) or network set (``netset:<name>``); None removes it."""
        old = self._items.get(iid)
        if item is None:
            if old is not None:
                self._index.remove_item(iid)  # unmatch callbacks remove its members
                del self._items[iid]
            return
        if old is not None and old.nets == item.nets and _ports(old) == _ports(item):
            self._items[iid] = item  # members unchanged: only labels may move matches
        elif old is not None:
            # Addresses or ports changed: swap the item's contribution in every set it is in.
            for sel in self._index.selectors_of(iid):
                self._contribute(sel, old, -1)
            self._items[iid] = item
            for sel in self._index.selectors_of(iid):
                self._contribute(sel, item, +1)
        else:
            self._items[iid] = item
        parents = item.profiles if isinstance(item, Endpoint) else item.parents
        self._index.update_item(iid, item.labels, parents)

    def ref(self, spec: IpSetSpec) -> None:
        self._refs[spec.id] += 1
        if self._refs[spec.id] > 1:
            return
        s = self._sets[spec.id] = _Set(spec)
        self._gone.discard(spec.id)
        self._created.add(spec.id)
        canon = spec.selector.canonical
        users = self._by_selector.setdefault(canon, set())
        users.add(spec.id)
        if len(users) == 1:
            self._index.update_selector(canon, spec.selector)  # match callbacks fill the set
        else:
            _count(s, self._index.matches(canon), self._items)

    def unref(self, spec: IpSetSpec) -> None:
        self._refs[spec.id] -= 1
        if self._refs[spec.id] > 0:
            return
        del self._refs[spec.id]
        del self._sets[spec.id]
        canon = spec.selector.canonical
        users = self._by_selector[canon]
        users.discard(spec.id)
        if not users:
            del self._by_selector[canon]
            self._index.remove_selector(canon)
        if spec.id in self._created:
            self._created.discard(spec.id)  # never sent: nothing to remove
        else:
            self._gone.add(spec.id)

    # -- queries ---------------------------------------------------------------------------------

    def members(self, set_id: str) -> frozenset[str]:
        s = self._sets.get(set_id)
        return frozenset(s.counts) if s is not None else frozenset()

    def set_ids(self) -> set[str]:
        return set(self._sets)

    def flush(self) -> tuple[list[IpSetUpdate | IpSetDeltaUpdate], list[IpSetRemove]]:
        updates: list[IpSetUpdate | IpSetDeltaUpdate] = []
        for sid in sorted(self._created):
            s = self._sets[sid]
            updates.append(IpSetUpdate(sid, s.spec.type, frozenset(s.counts)))
            s.added.clear()
            s.removed.clear()
        for sid, s in self._sets.items():
            if (s.added or s.removed) and sid not in self._created:
                updates.append(IpSetDeltaUpdate(sid, frozenset(s.added), frozenset(s.removed)))
                s.added.clear()
                s.removed.clear()
        removes = [IpSetRemove(sid) for sid in sorted(self._gone)]
        self._created.clear()
        self._gone.clear()
        return updates, removes

    # -- index callbacks -------------------------------------------------------------------------

    def _on_match(self, canon: str, iid: str) -> None:
        self._contribute(canon, self._items[iid], +1)

    def _on_matches(self, canon: str, iids: set[str]) -> None:
        """Many items start matching at once (a selector added or changed)."""
        for set_id in self._by_selector.get(canon, ()):
            s = self._sets[set_id]
            if set_id in self._created:
                _count(s, iids, self._items)  # sent whole at the next flush: no deltas to track
            else:
                for iid in iids:
                    self._contribute_one(s, self._items[iid], +1)

    def _on_unmatch(self, canon: str, iid: str) -> None:
        self._contribute(canon, self._items[iid], -1)

    def _contribute(self, canon: str, item: Item, sign: int) -> None:
        for set_id in self._by_selector.get(canon, ()):
            self._contribute_one(self._sets[set_id], item, sign)

    @staticmethod
    def _contribute_one(s: _Set, item: Item, sign: int) -> None:
        counts = s.counts
        for m in _members(s.spec, item):
            if sign > 0:
                counts[m] += 1
                if counts[m] == 1:
                    if m in s.removed:
                        s.removed.discard(m)
                    else:
                        s.added.add(m)
            else:
                counts[m] -= 1
                if counts[m] == 0:
                    del counts[m]
                    if m in s.added:
                        s.added.discard(m)
                    else:
                        s.removed.add(m)


def _count(s: _Set, iids: Iterable[str], items: Mapping[str, Item]) -> None:
    """Add the contributions of ``iids`` to a set's counts, without delta tracking (a new set)."""
    if s.spec.port_name:
        s.counts.update(m for iid in iids for m in _members(s.spec, items[iid]))
    else:  # Counter.update counts an iterable in C
        s.counts.update(chain.from_iterable(items[iid].nets for iid in iids))


def _ports(item: Item) -> tuple[object, ...]:
    return item.ports if isinstance(item, Endpoint) else ()
