"""An incremental index of which items (endpoints, network sets) each selector matches.

Design note
-----------
Items carry labels and may inherit more from *parents* (profiles: an endpoint's effective labels
are its own plus each parent's, in parent order, where it has no label of that name -- Calico's
rule). Selectors come and go. The index reports every change of the relation "selector S matches
item I" through two callbacks, ``on_match(S, I)`` and ``on_unmatch(S, I)``, and answers
``matches(S)`` / ``selectors_of(I)`` at any time.

The obvious implementation evaluates every selector against every changed item and every item
against every changed selector: O(selectors) per label change and O(items) per selector change, at
1,000s x 10,000s that is too slow for a label change to reach the kernel before a pod's first
packet. Instead, as in Calico's labelindex, both sides are indexed by *label restrictions*
(:meth:`Selector.restrictions`): most selectors can only match items carrying some label, often
with one of a few values (``app == 'web'``, ``projectcalico.org/namespace == 'prod'``). Each
selector is filed under one such restriction, the one with the fewest items at the time it is
added, and items are indexed by (key, value) and by key:

* an item changes -> evaluate only the selectors filed under one of its old or new labels, plus
  the few that have no restriction (``!has(x)``, ``a != 'b'``);
* a selector is added -> evaluate only the items carrying its restriction's label/values;
* a parent's labels change -> re-evaluate its children as changed items.

A new selector's candidates are the intersection (in C, smallest first) of the items carrying each
label it requires; for ``has(k)``-like requirements the index keeps the items carrying ``k`` from
the first time a selector asks, and keeps that set current (at a cold start, building it afresh
for every such selector was 2,330 unions of 4,000 items). The matches a new selector starts are
reported in one ``on_matches`` call when the caller gives one (the ip set calculator counts them
in C).

Correctness does not depend on the choice of restriction, only on restrictions being sound (a
selector filed under label L never matches an item without L), which the selector module
guarantees and a hypothesis test checks against brute force.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping
from typing import Any, Generic, TypeVar

from .selector import Selector

__all__ = ["LabelIndex"]

I = TypeVar("I", bound=Hashable)  # item id  # noqa: E741
S = TypeVar("S", bound=Hashable)  # selector id

_EMPTY: frozenset[Any] = frozenset()


class _Item:
    __slots__ = ("effective", "own", "parents")

    def __init__(self, own: Mapping[str, str], parents: tuple[str, ...]) -> None:
        self.own = own
        self.parents = parents
        self.effective: dict[str, str] | None = None  # None until indexed


class LabelIndex(Generic[I, S]):
    def __init__(
        self,
        on_match: Callable[[S, I], None],
        on_unmatch: Callable[[S, I], None],
        on_matches: Callable[[S, set[I]], None] | None = None,
    ) -> None:
        self._on_match = on_match
        self._on_unmatch = on_unmatch
        # Optional: the items a new or changed selector starts matching, in one call (a cold start
        # adds 100k matches through here: one call per selector instead of one per match).
        self._on_matches = on_matches
        self._items: dict[I, _Item] = {}
        self._parents: dict[str, Mapping[str, str]] = {}
        self._children: dict[str, set[I]] = {}
        # items by effective label
        self._by_kv: dict[tuple[str, str], set[I]] = {}
        # by key: only the values in use and the item count; "items with key k" is the union of
        # _by_kv over those values, built when a has()-like selector first needs it and kept up
        # to date from then on (only for such keys: a set per label per item would be about a
        # tenth of the index's memory)
        self._key_values: dict[str, set[str]] = {}
        self._key_count: dict[str, int] = {}
        self._by_key: dict[str, set[I]] = {}
        # selectors: id -> (selector, where it is filed)
        self._sels: dict[S, tuple[Selector, list[tuple[str, str | None]] | None]] = {}
        self._sel_by_kv: dict[tuple[str, str], set[S]] = {}
        self._sel_by_key: dict[str, set[S]] = {}
        self._sel_anywhere: set[S] = set()  # no restriction: a candidate for every item
        # the relation
        self._matches: dict[S, set[I]] = {}
        self._item_sels: dict[I, set[S]] = {}

    # -- queries ---------------------------------------------------------------------------------

    def matches(self, sid: S) -> frozenset[I] | set[I]:
        return self._matches.get(sid, _EMPTY)

    def selectors_of(self, iid: I) -> frozenset[S] | set[S]:
        return self._item_sels.get(iid, _EMPTY)

    def labels(self, iid: I) -> Mapping[str, str] | None:
        item = self._items.get(iid)
        return item.effective if item is not None else None

    def has_selector(self, sid: S) -> bool:
        return sid in self._sels

    def __len__(self) -> int:
        return len(self._items)

    # -- parents ---------------------------------------------------------------------------------

    def update_parent(self, pid: str, labels: Mapping[str, str] | None) -> None:
        """Set (None: remove) a parent's labels; its children are re-evaluated if they changed."""
        old = self._parents.get(pid)
        if labels:
            self._parents[pid] = dict(labels)
        else:
            self._parents.pop(pid, None)
        if (old or {}) == (labels or {}):
            return
        for iid in list(self._children.get(pid, ())):
            self._relabel(iid, self._items[iid])

    # -- items -----------------------------------------------------------------------------------

    def update_item(self, iid: I, labels: Mapping[str, str], parents: tuple[str, ...] = ()) -> None:
        item = self._items.get(iid)
        if item is None:
            item = self._items[iid] = _Item(labels, parents)
        else:
            if item.parents != parents:
                for pid in item.parents:
                    self._unchild(pid, iid)
            item.own = labels
            item.parents = parents
        for pid in parents:
            self._children.setdefault(pid, set()).add(iid)
        self._relabel(iid, item)

    def remove_item(self, iid: I) -> None:
        item = self._items.pop(iid, None)
        if item is None:
            return
        for pid in item.parents:
            self._unchild(pid, iid)
        self._unindex_labels(iid, item.effective or {})
        for sid in self._item_sels.pop(iid, ()):
            self._matches[sid].discard(iid)
            self._on_unmatch(sid, iid)

    def _unchild(self, pid: str, iid: I) -> None:
        kids = self._children.get(pid)
        if kids is not None:
            kids.discard(iid)
            if not kids:
                del self._children[pid]

    def _effective(self, item: _Item) -> dict[str, str]:
        if not item.parents:
            return dict(item.own)
        out: dict[str, str] = {}
        for pid in reversed(item.parents):  # earlier parents win, own labels win over all
            parent = self._parents.get(pid)
            if parent:
                out.update(parent)
        out.update(item.own)
        return out

    def _relabel(self, iid: I, item: _Item) -> None:
        new = self._effective(item)
        old = item.effective
        if new == old:
            return
        old = old or {}
        self._unindex_labels(iid, old)
        item.effective = new
        by_kv, key_count = self._by_kv, self._key_count
        for kv in new.items():
            s = by_kv.get(kv)
            if s is None:
                s = by_kv[kv] = set()
                self._key_values.setdefault(kv[0], set()).add(kv[1])
            s.add(iid)
            key_count[kv[0]] = key_count.get(kv[0], 0) + 1
            s = self._by_key.get(kv[0])
            if s is not None:
                s.add(iid)
        # Candidates: selectors filed under any old or new label, and the unrestricted ones.
        # Every selector matching the item now was filed under one of its old labels, so this
        # also finds each match that stops.
        cands = set(self._sel_anywhere)
        sel_by_kv, sel_by_key = self._sel_by_kv, self._sel_by_key
        for labels in (old, new) if old else (new,):
            for kv in labels.items():
                found = sel_by_kv.get(kv)
                if found:
                    cands.update(found)
                found = sel_by_key.get(kv[0])
                if found:
                    cands.update(found)
        current = self._item_sels.get(iid, _EMPTY)  # created on the first match: most items match little
        sels = self._sels
        for sid in cands:
            hit = sels[sid][0].matches(new)
            if hit != (sid in current):
                self._set(sid, iid, hit)

    def _unindex_labels(self, iid: I, labels: Mapping[str, str]) -> None:
        by_kv, key_count = self._by_kv, self._key_count
        for kv in labels.items():
            s = by_kv.get(kv)
            if s is None:
                continue
            s.discard(iid)
            if not s:
                del by_kv[kv]
                values = self._key_values[kv[0]]
                values.discard(kv[1])
                if not values:
                    del self._key_values[kv[0]]
            n = key_count[kv[0]] - 1
            if n:
                key_count[kv[0]] = n
                s = self._by_key.get(kv[0])
                if s is not None:
                    s.discard(iid)
            else:
                del key_count[kv[0]]
                self._by_key.pop(kv[0], None)

    def _set(self, sid: S, iid: I, hit: bool) -> None:
        if hit:
            self._item_sels.setdefault(iid, set()).add(sid)
            self._matches[sid].add(iid)
            self._on_match(sid, iid)
        else:
            sels = self._item_sels[iid]
            sels.discard(sid)
            if not sels:
                del self._item_sels[iid]
            self._matches[sid].discard(iid)
            self._on_unmatch(sid, iid)

    # -- selectors -------------------------------------------------------------------------------

    def update_selector(self, sid: S, selector: Selector) -> None:
        """Add or change a selector; reports the matches that start and stop."""
        prev = self._sels.get(sid)
        if prev is not None:
            if prev[0] == selector:
                return
            self._unfile(sid, prev[1])
        filed = self._file(sid, selector)
        self._sels[sid] = (selector, filed)
        current = self._matches.setdefault(sid, set())
        cands = self._candidates(selector)
        items = self._items
        match = selector.matches
        new = {iid for iid in (items if cands is None else cands) if match(items[iid].effective or {})}
        for iid in current - new:
            self._set(sid, iid, False)
        started = new - current if current else new
        if not started:
            return
        item_sels = self._item_sels
        for iid in started:
            sels = item_sels.get(iid)
            if sels is None:
                item_sels[iid] = {sid}
            else:
                sels.add(sid)
        current |= started
        if self._on_matches is not None:
            self._on_matches(sid, started)
        else:
            for iid in started:
                self._on_match(sid, iid)

    def _candidates(self, selector: Selector) -> set[I] | None:
        """Items carrying every label the selector requires (None: no requirement, all items).

        The intersection runs in C over the smallest sets first, so a selector like
        ``app == 'web' && projectcalico.org/namespace == 'prod'`` evaluates only the web pods of
        prod, not every web pod or every pod of prod.
        """
        groups: list[set[I]] = []
        for key, values in selector.restrictions().items():
            if values is None:
                groups.append(self._items_with(key))
            elif len(values) == 1:
                groups.append(self._by_kv.get((key, next(iter(values)))) or set())
            else:
                groups.append(set().union(*(self._by_kv.get((key, v)) or () for v in values)))
        if not groups:
            return None
        groups.sort(key=len)
        out = set(groups[0])
        for g in groups[1:]:
            if not out:
                break
            out &= g
        return out

    def _items_with(self, key: str) -> set[I]:
        """Items carrying ``key`` (any value), kept from the first time a selector asks."""
        found = self._by_key.get(key)
        if found is None:
            by_kv = self._by_kv
            found = set().union(*(by_kv[(key, v)] for v in self._key_values.get(key, ())))
            if found:  # an entry lives while the key is in use (see _unindex_labels)
                self._by_key[key] = found
        return found

    def remove_selector(self, sid: S) -> None:
        prev = self._sels.pop(sid, None)
        if prev is None:
            return
        self._unfile(sid, prev[1])
        for iid in self._matches.pop(sid, ()):
            sels = self._item_sels[iid]
            sels.discard(sid)
            if not sels:
                del self._item_sels[iid]
            self._on_unmatch(sid, iid)

    def _file(self, sid: S, selector: Selector) -> list[tuple[str, str | None]] | None:
        """File the selector under its cheapest restriction; None: a candidate for every item."""
        restr = selector.restrictions()
        if not restr:
            self._sel_anywhere.add(sid)
            return None
        best: list[tuple[str, str | None]] | None = None
        best_cost = -1
        for key, values in restr.items():
            if values is None:
                cost = self._key_count.get(key, 0)
                entries: list[tuple[str, str | None]] = [(key, None)]
            else:
                cost = sum(len(self._by_kv.get((key, v), ())) for v in values)
                entries = [(key, v) for v in sorted(values)]
                cost = cost * 2 + len(entries)  # prefer values: the key alone may be common later
            if best is None or cost < best_cost:
                best, best_cost = entries, cost
        assert best is not None
        for key, value in best:
            if value is None:
                self._sel_by_key.setdefault(key, set()).add(sid)
            else:
                self._sel_by_kv.setdefault((key, value), set()).add(sid)
        return best

    def _unfile(self, sid: S, filed: list[tuple[str, str | None]] | None) -> None:
        if filed is None:
            self._sel_anywhere.discard(sid)
            return
        for key, value in filed:
            bucket = self._sel_by_key if value is None else self._sel_by_kv
            k: object = key if value is None else (key, value)
            s = bucket.get(k)  # type: ignore[call-overload]
            if s is not None:
                s.discard(sid)
                if not s:
                    del bucket[k]  # type: ignore[arg-type]
