"""Strategic merge patch (what ``kubectl apply``, ``edit`` and ``patch`` send for built-in kinds).

Design note
-----------
A JSON merge patch replaces every list it touches; changing one container's image that
way drops the other containers. Strategic merge patch (SMP) merges lists whose schema
says so (:mod:`.patchschema`): containers by ``name``, ports by ``containerPort``,
finalizers as a set, and so on. Semantics, from the Kubernetes SMP spec and its
"preserve order" design, implemented here from that description:

- *maps* merge key by key, recursively; ``null`` deletes a key. ``$patch: replace`` in a
  map replaces it with the patch's content, ``$patch: delete`` deletes it.
  ``$retainKeys: [...]`` clears every key not listed (a patch key outside the list is a
  400).
- *lists* without a merge strategy are replaced. A merging list of maps matches patch
  items to live items by the merge key: a match is merged recursively, a new key is
  added, ``{key: v, $patch: delete}`` deletes every live item with that key, and a
  ``{$patch: replace}`` item makes the list exactly the patch's other items. A merging
  list of primitives is a set union; ``$deleteFromPrimitiveList/<field>`` removes values.
- *order.* Items named by the patch (or by ``$setElementOrder/<field>``, which may
  name unchanged live items too, and must list the patch's items in the same relative
  order) come in the order given; the live items it does not name keep their relative
  order and are interleaved by their live positions: scanning both sequences, a live-only
  item goes first while it stood before the next named item in the live list.
- a patch value whose JSON type differs from the live value's replaces it; a value with
  no live counterpart is taken as a merge into nothing, so directives inside it are
  applied (and never stored).

Every malformed patch is a 400 BadRequest (422 for a list of lists), never a 500. The
functions build new containers and never mutate their inputs (unchanged sub-trees are
shared with them, which is safe because nothing here writes into a container it did not
create).
"""

from __future__ import annotations

from typing import Any

import orjson

from . import errors
from .errors import ApiError
from .patchschema import FieldMeta, field_meta

DIRECTIVE = "$patch"
RETAIN_KEYS = "$retainKeys"
SET_ORDER = "$setElementOrder/"
DELETE_FROM = "$deleteFromPrimitiveList/"


class _Deleted:
    """Marker: the value asked to be deleted (``$patch: delete``)."""


_DELETED = _Deleted()


def _bad(msg: str) -> ApiError:
    return errors.bad_request(f"strategic merge patch: {msg}")


def strategic_merge(target: dict[str, Any], patch: dict[str, Any], type_name: str) -> dict[str, Any]:
    """``target`` with ``patch`` applied; ``type_name`` is the object's schema type."""
    out = _merge_map(target, patch, type_name)
    return {} if isinstance(out, _Deleted) else out


def _ident(v: Any) -> Any:
    """A hashable identity for a merge-key value or a set member (JSON equality)."""
    if isinstance(v, bool):
        return ("bool", v)  # true must not equal 1, as in Go's interface comparison
    if v is None or isinstance(v, (str, int, float)):
        return v
    return ("json", orjson.dumps(v, option=orjson.OPT_SORT_KEYS))


def _merge_map(orig: Any, patch: dict[str, Any], type_name: str | None) -> dict[str, Any] | _Deleted:
    if DIRECTIVE in patch:
        d = patch[DIRECTIVE]
        rest = {k: v for k, v in patch.items() if k != DIRECTIVE}
        if d == "replace":
            return _merge_map(None, rest, type_name)
        if d == "delete":
            return _DELETED
        if d != "merge":
            raise _bad(f"unknown patch type: {d!r} in map")
        patch = rest
    out: dict[str, Any] = dict(orig) if isinstance(orig, dict) else {}
    orders: dict[str, list[Any]] = {}
    deletions: dict[str, list[Any]] = {}
    plain: list[tuple[str, Any]] = []
    for k, v in patch.items():
        if k.startswith((SET_ORDER, DELETE_FROM)):
            if not isinstance(v, list):
                raise _bad(f"{k} must be a list")
            (orders if k.startswith(SET_ORDER) else deletions)[k.split("/", 1)[1]] = v
        elif k != RETAIN_KEYS:
            plain.append((k, v))
    if RETAIN_KEYS in patch:
        keep = patch[RETAIN_KEYS]
        if not isinstance(keep, list) or not all(isinstance(x, str) for x in keep):
            raise _bad("$retainKeys must be a list of field names")
        keep_set = set(keep)
        if any(v is not None and k not in keep_set for k, v in plain):
            raise _bad("every field of a patch with $retainKeys must be listed in it")
        out = {k: v for k, v in out.items() if k in keep_set}
    for f, values in deletions.items():
        cur = out.get(f)
        if isinstance(cur, list):
            gone = {_ident(x) for x in values}
            out[f] = [x for x in cur if _ident(x) not in gone]
    for k, v in plain:
        fm = field_meta(type_name, k)
        if v is None:
            out.pop(k, None)
            continue
        cur = out.get(k)
        if isinstance(v, dict) and isinstance(cur, dict):
            merged: Any = _merge_map(cur, v, fm.type)
        elif isinstance(v, list) and isinstance(cur, list):
            merged = _merge_list(cur, v, fm, orders.get(k))
        else:
            merged = _fresh(v, fm)  # absent, or a JSON type change: the patch value wins
        if isinstance(merged, _Deleted):
            out.pop(k, None)
        else:
            out[k] = merged
    patched = {k for k, _ in plain}
    for f, order in orders.items():
        if f not in patched and isinstance(out.get(f), list):
            out[f] = _merge_list(out[f], [], field_meta(type_name, f), order)
    return out


def _fresh(v: Any, fm: FieldMeta) -> Any:
    """A patch value with nothing live to merge into: directives applied, never stored."""
    if isinstance(v, dict):
        return _merge_map(None, v, fm.type)
    if isinstance(v, list):
        if fm.merges:
            return _merge_list([], v, fm, None)
        item = FieldMeta(type=fm.type)
        return [x for x in (_fresh(x, item) for x in v) if not isinstance(x, _Deleted)]
    return v


def _merge_list(orig: list[Any], patch: list[Any], fm: FieldMeta, order: list[Any] | None) -> list[Any]:
    if not fm.merges:
        return _fresh(patch, fm) if patch or order is None else orig
    if any(isinstance(x, list) for x in patch) or any(isinstance(x, list) for x in orig):
        raise errors.ApiError(422, "Invalid", "strategic merge patch: lists of lists are not supported")
    if fm.merge_key is None:
        return _merge_set(orig, patch, order)
    return _merge_keyed(orig, patch, fm, order)


def _merge_set(orig: list[Any], patch: list[Any], order: list[Any] | None) -> list[Any]:
    if any(isinstance(x, dict) for x in patch):
        raise _bad("a list of primitives cannot merge objects")
    merged: list[Any] = []
    seen: set[Any] = set()
    for x in [*orig, *patch]:
        i = _ident(x)
        if i not in seen:
            seen.add(i)
            merged.append(x)
    named = order if order is not None else patch
    if order is not None:
        _check_order([_ident(x) for x in patch], [_ident(x) for x in order])
    return _arrange(merged, [_ident(x) for x in named], [_ident(x) for x in orig], _ident)


def _merge_keyed(orig: list[Any], patch: list[Any], fm: FieldMeta, order: list[Any] | None) -> list[Any]:
    key = fm.merge_key
    assert key is not None
    item_type = fm.type
    items: list[Any] = list(orig)
    updates: list[dict[str, Any]] = []
    replace = False
    for p in patch:
        if not isinstance(p, dict):
            raise _bad(f"items of a list merged by {key!r} must be objects")
        d = p.get(DIRECTIVE)
        if d is None:
            if key not in p:
                raise _bad(f"map: {p!r} does not contain declared merge key: {key}")
            updates.append(p)
        elif d == "delete":
            if key not in p:
                raise _bad(f"map: {p!r} does not contain declared merge key: {key}")
            gone = _ident(p[key])
            items = [x for x in items if not (isinstance(x, dict) and _ident(x.get(key)) == gone)]
        elif d == "replace":
            replace = True
        else:
            raise _bad(f"unknown patch type: {d!r} in a list merged by {key!r}")
    if replace:
        return [x for x in (_merge_map(None, u, item_type) for u in updates) if not isinstance(x, _Deleted)]

    def ident(x: Any) -> Any:
        return _ident(x.get(key)) if isinstance(x, dict) else ("item", id(x))

    for u in updates:
        want = _ident(u[key])
        for i, x in enumerate(items):
            if isinstance(x, dict) and _ident(x.get(key)) == want:
                merged = _merge_map(x, u, item_type)
                if isinstance(merged, _Deleted):
                    del items[i]
                else:
                    items[i] = merged
                break
        else:
            fresh = _merge_map(None, u, item_type)
            if not isinstance(fresh, _Deleted):
                items.append(fresh)
    if order is not None:
        if not all(isinstance(o, dict) and key in o for o in order):
            raise _bad(f"$setElementOrder items must be objects with the merge key {key!r}")
        named = [_ident(o[key]) for o in order]
        _check_order([_ident(u[key]) for u in updates], named)
    else:
        named = [_ident(u[key]) for u in updates]
    return _arrange(items, named, [ident(x) for x in orig], ident)


def _check_order(patch_ids: list[Any], order_ids: list[Any]) -> None:
    """The patch's items must appear in ``$setElementOrder``, in the same relative order."""
    pos: dict[Any, int] = {}
    for i, o in enumerate(order_ids):
        pos.setdefault(o, i)
    last = -1
    for p in patch_ids:
        if p not in pos or pos[p] < last:
            raise _bad("invalid patch format of setElementOrder list")
        last = pos[p]


def _arrange(items: list[Any], named: list[Any], live: list[Any], ident: Any) -> list[Any]:
    """Named items in the order named, live-only items interleaved by their live positions."""
    rank: dict[Any, int] = {}
    for i, n in enumerate(named):
        rank.setdefault(n, i)
    live_pos: dict[Any, int] = {}
    for i, n in enumerate(live):
        live_pos.setdefault(n, i)
    chosen = sorted((x for x in items if ident(x) in rank), key=lambda x: rank[ident(x)])
    others = [x for x in items if ident(x) not in rank]
    out: list[Any] = []
    i = j = 0
    while i < len(others) and j < len(chosen):
        a, b = live_pos.get(ident(others[i])), live_pos.get(ident(chosen[j]))
        if a is not None and b is not None and a < b:
            out.append(others[i])
            i += 1
        else:
            out.append(chosen[j])
            j += 1
    out.extend(others[i:])
    out.extend(chosen[j:])
    return out


__all__ = ["strategic_merge"]
