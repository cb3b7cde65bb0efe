"""Consistent, paginated lists: which revision a list reads, and one page of it.

Design note
-----------
A list is two decisions, both pure functions here:

1. :func:`choose_snapshot` maps ``resourceVersion``, ``resourceVersionMatch``, ``limit``
   and ``continue`` to the revision to read, following the table in the Kubernetes API
   Concepts doc (unset = most recent, "0" = any, ``N`` = not older than N, or exactly N
   with ``Exact`` or the legacy "RV + limit" rule), with kube's 400/410/422/504 answers
   for the combinations it rejects.
2. :func:`build_page` walks the sorted keys of the snapshot from the continue point,
   filters by selectors and stops at ``limit``. The state at a past revision is the
   current table with the retained changes since then undone (:meth:`History.state_at`),
   so every page of one list shows the same revision even while writes happen, without
   copying anything at the first page.

The continue token is opaque to clients but plain to us: base64 of
``{"v":"meta.k8s.io/v1","rv":N,"start":key}``, like kube's. ``rv`` -1 marks the
"inconsistent" continuation a 410 offers, which reads the newest state.
"""

from __future__ import annotations

import base64
import heapq
from bisect import bisect_right
from collections.abc import Iterator
from typing import Any

import orjson

from . import errors
from .errors import ApiError
from .objects import Key, ObjectTable, StoredObject
from .resources import ResourceType
from .selectors import FieldSelector, LabelSelector


class TooLargeResourceVersion(ApiError):
    """Requested RV is in the future; the HTTP shell waits for it before giving up (504)."""

    def __init__(self, requested: int, current: int) -> None:
        e = errors.too_large_rv(requested, current)
        super().__init__(e.code, e.reason, e.message, e.status.get("details"))
        self.requested = requested


class ListResult:
    """One page of a list: items at snapshot ``resource_version``."""

    __slots__ = ("continue_token", "items", "remaining", "resource_version", "rt")

    def __init__(
        self,
        rt: ResourceType,
        items: list[StoredObject],
        resource_version: int,
        continue_token: str | None,
        remaining: int | None,
    ) -> None:
        self.rt = rt
        self.items = items
        self.resource_version = resource_version
        self.continue_token = continue_token
        self.remaining = remaining

    def metadata(self) -> dict[str, Any]:
        md: dict[str, Any] = {"resourceVersion": str(self.resource_version)}
        if self.continue_token:
            md["continue"] = self.continue_token
            if self.remaining is not None:
                md["remainingItemCount"] = self.remaining
        return md

    def to_bytes(self) -> bytes:
        return list_body(self.rt, self.metadata(), self.items)

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = orjson.loads(self.to_bytes())
        return d


def list_body(rt: ResourceType, metadata: dict[str, Any], items: list[StoredObject]) -> bytes:
    """A ``<Kind>List`` body with the stored items spliced in (never re-encoded)."""
    head = orjson.dumps({"kind": rt.list_kind, "apiVersion": rt.api_version, "metadata": metadata})
    return head[:-1] + b',"items":[' + b",".join(o.raw for o in items) + b"]}"


def encode_continue(rv: int, start: Key) -> str:
    tok = orjson.dumps({"v": "meta.k8s.io/v1", "rv": rv, "start": start})
    return base64.urlsafe_b64encode(tok).decode().rstrip("=")


def decode_continue(token: str) -> tuple[int, Key]:
    """(rv, start key) of a continue token; 400 BadRequest for anything else."""
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        d = orjson.loads(raw)
        if not isinstance(d, dict) or d.get("v") != "meta.k8s.io/v1":
            raise ValueError("bad version")
        start, rv = d.get("start"), d.get("rv")
        if not isinstance(start, str) or "\x00" not in start:
            raise ValueError("bad start key")
        if type(rv) is not int:
            raise ValueError("bad resource version")
        return rv, start
    except Exception as e:
        raise errors.bad_request(f"continue key is not valid: {e}") from None


def parse_rv(s: str) -> int:
    """A resourceVersion as a non-negative integer; 400 BadRequest otherwise."""
    if not (isinstance(s, str) and s.isascii() and s.isdigit()):  # strconv.ParseUint's grammar
        raise errors.bad_request(f"invalid resource version: {s!r}")
    return int(s)


def _forbidden_match(why: str) -> ApiError:
    return errors.invalid(None, "", "resourceVersionMatch", f"Forbidden: {why}")


def choose_snapshot(
    current: int,
    window_start: int,
    rv_s: str | None,
    match: str | None,
    limit: int | None,
    continue_: str | None,
) -> tuple[int, Key | None]:
    """(revision to read, key to continue after) for a list request; see the design note."""
    if continue_:
        if match:
            raise _forbidden_match("resourceVersionMatch is forbidden when continue is provided")
        if rv_s not in (None, "", "0"):
            raise errors.bad_request("specifying resource version is not allowed when using continue")
        rv, start = decode_continue(continue_)
        if rv > current:
            raise errors.bad_request("continue key is not valid: its resource version is in the future")
        return (current if rv <= 0 else rv), start  # rv -1: the "inconsistent" continuation
    if match and not rv_s:
        raise _forbidden_match("resourceVersionMatch is forbidden unless resourceVersion is provided")
    if match not in (None, "", "NotOlderThan", "Exact"):
        raise errors.invalid(
            None,
            "",
            "resourceVersionMatch",
            f'Unsupported value: "{match}": supported values: "Exact", "NotOlderThan"',
        )
    if not rv_s:
        return current, None  # "Most Recent": a consistent read at the current revision
    rv = parse_rv(rv_s)
    if match == "Exact" or (not match and limit and rv != 0):
        # Exact (explicit, or legacy "RV + limit"): the state at exactly rv.
        if rv == 0:
            raise _forbidden_match('resourceVersionMatch "exact" is forbidden for resourceVersion "0"')
        if rv > current:
            raise TooLargeResourceVersion(rv, current)
        if rv < window_start:
            raise errors.too_old_rv(rv, window_start)
        return rv, None
    # "0" = Any, else NotOlderThan: serving the newest state satisfies both.
    if rv > current:
        raise TooLargeResourceVersion(rv, current)
    return current, None


def build_page(
    rt: ResourceType,
    table: ObjectTable,
    snap_rv: int,
    start: Key | None,
    ns: str | None,
    lsel: LabelSelector,
    fsel: FieldSelector,
    limit: int | None,
    overrides: dict[Key, StoredObject | None],
) -> ListResult:
    """One page at ``snap_rv``: ``overrides`` is the state at ``snap_rv`` of keys changed since."""
    keys = table.sorted_keys()
    objects = table.objects
    lo, hi = table.ns_range(keys, ns)
    if start is not None:
        lo = max(lo, bisect_right(keys, start, lo, hi))
    # Keys deleted since the snapshot are not in `keys` but existed at snap_rv.
    prefix = "" if ns is None else ns + "\x00"
    extra = sorted(k for k in overrides if k not in objects and k.startswith(prefix) and (start is None or k > start))
    it: Iterator[Key] = map(keys.__getitem__, range(lo, hi))
    if extra:
        it = heapq.merge(it, extra)
    filtered = not (lsel.empty and fsel.empty)
    items: list[StoredObject] = []
    more = False
    for k in it:
        obj = overrides[k] if k in overrides else objects[k]
        if obj is None:
            continue
        if limit is not None and len(items) >= limit:
            more = True
            break
        if filtered and not (
            (lsel.empty or lsel.matches(obj.labels))
            and (fsel.empty or fsel.matches(obj.name, obj.namespace, obj.fields))
        ):
            continue
        items.append(obj)
    token = remaining = None
    if more:
        last = items[-1].key
        token = encode_continue(snap_rv, last)
        if not filtered:
            # kube reports remainingItemCount only for unfiltered lists.
            remaining = hi - bisect_right(keys, last, lo, hi)
            for k, o in overrides.items():
                if k > last and k.startswith(prefix):
                    remaining += (o is not None) - (k in objects)
    return ListResult(rt, items, snap_rv, token, remaining)


__all__ = [
    "ListResult",
    "TooLargeResourceVersion",
    "build_page",
    "choose_snapshot",
    "decode_continue",
    "encode_continue",
    "list_body",
    "parse_rv",
]
