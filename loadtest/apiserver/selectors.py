"""Label and field selectors (``?labelSelector=`` / ``?fieldSelector=``), parsed once, matched often.

Design note
-----------
Both selectors are parsed into a list of requirements once per request and then matched
against every candidate object (list) or every event (watch), so matching must be cheap:
requirements are plain tuples and ``matches`` is a tight loop over a dict lookup.

Label selector grammar follows k8s.io/apimachinery/pkg/labels: comma-separated
requirements of the forms ``k``, ``!k``, ``k=v``, ``k==v``, ``k!=v``, ``k in (a,b)``,
``k notin (a,b)``, ``k>n``, ``k<n``. Field selectors support ``f=v``, ``f==v``, ``f!=v``
(fields are a fixed per-resource set of labels, as in kube-apiserver; an unsupported field
is a 400). Values from objects are pre-extracted into a small dict at write time, so a
field selector never decodes an object.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Mapping
from typing import Any

from .errors import ApiError, bad_request
from .validation import label_value_errors, qualified_name_errors

# op codes
EXISTS, NOT_EXISTS, IN, NOT_IN, GT, LT = "exists", "!", "in", "notin", "gt", "lt"

_SPECIAL = set("(),!=<> \t\n")


def _tokenize(s: str) -> list[str]:
    toks: list[str] = []
    i, n = 0, len(s)
    while i < n:
        c = s[i]
        if c in " \t\n":
            i += 1
        elif c in "(),":
            toks.append(c)
            i += 1
        elif c == "!":
            if i + 1 < n and s[i + 1] == "=":
                toks.append("!=")
                i += 2
            else:
                toks.append("!")
                i += 1
        elif c == "=":
            if i + 1 < n and s[i + 1] == "=":
                toks.append("==")
                i += 2
            else:
                toks.append("=")
                i += 1
        elif c in "<>":
            toks.append(c)
            i += 1
        else:
            j = i
            while j < n and s[j] not in _SPECIAL:
                j += 1
            toks.append(
                "\x00" + s[i:j]
            )  # \x00 marks an identifier, so "in" != keyword "in" ambiguity is resolved by position
            i = j
    return toks


def _check_key(key: str) -> None:
    bad = qualified_name_errors(key)
    if bad:
        raise bad_request(f"unable to parse requirement: invalid label key {key!r}: {'; '.join(bad)}")


def _check_value(v: str) -> None:
    bad = label_value_errors(v)
    if bad:
        raise bad_request(f"unable to parse requirement: invalid label value: {v!r}: {'; '.join(bad)}")


class LabelSelector:
    """Parsed label selector; ``matches(labels)`` tests one object's labels."""

    __slots__ = ("reqs", "text")

    def __init__(self, reqs: list[tuple[str, str, frozenset[str]]], text: str = "") -> None:
        self.reqs = reqs
        self.text = text

    @property
    def empty(self) -> bool:
        return not self.reqs

    def matches(self, labels: Mapping[str, str] | None) -> bool:
        labels = labels or {}
        for key, op, values in self.reqs:
            v = labels.get(key)
            if op == IN:
                if v is None or v not in values:
                    return False
            elif op == NOT_IN:
                if v is not None and v in values:
                    return False
            elif op == EXISTS:
                if v is None:
                    return False
            elif op == NOT_EXISTS:
                if v is not None:
                    return False
            else:  # GT / LT: integer comparison, non-integers never match
                if v is None:
                    return False
                try:
                    lhs, rhs = int(v), int(next(iter(values)))
                except ValueError:
                    return False
                if (op == GT and not lhs > rhs) or (op == LT and not lhs < rhs):
                    return False
        return True

    def equality_value(self, key: str) -> str | None:
        for k, op, values in self.reqs:
            if k == key and op == IN and len(values) == 1:
                return next(iter(values))
        return None


def parse_label_selector(text: str | None) -> LabelSelector:
    if not text:
        return LabelSelector([], "")
    toks = _tokenize(text)
    reqs: list[tuple[str, str, frozenset[str]]] = []
    i = 0

    def ident(pos: int, what: str) -> str:
        if pos >= len(toks) or not toks[pos].startswith("\x00"):
            raise bad_request(f"unable to parse requirement: expected {what} in {text!r}")
        return toks[pos][1:]

    while i < len(toks):
        if toks[i] == "!":
            key = ident(i + 1, "key")
            _check_key(key)
            reqs.append((key, NOT_EXISTS, frozenset()))
            i += 2
        else:
            key = ident(i, "key")
            _check_key(key)
            i += 1
            op = toks[i] if i < len(toks) else ","
            if op == ",":
                reqs.append((key, EXISTS, frozenset()))
            elif op in ("=", "==", "!="):
                i += 1
                # "k=" with an empty value is legal and means "label is empty string".
                if i < len(toks) and toks[i].startswith("\x00"):
                    val = toks[i][1:]
                    i += 1
                else:
                    val = ""
                _check_value(val)
                reqs.append((key, NOT_IN if op == "!=" else IN, frozenset([val])))
            elif op in ("\x00in", "\x00notin"):
                i += 1
                if i >= len(toks) or toks[i] != "(":
                    raise bad_request(f"unable to parse requirement: expected '(' in {text!r}")
                i += 1
                vals: list[str] = []
                while True:
                    if i < len(toks) and toks[i].startswith("\x00"):
                        vals.append(toks[i][1:])
                        i += 1
                    else:
                        vals.append("")
                    if i < len(toks) and toks[i] == ",":
                        i += 1
                        continue
                    if i < len(toks) and toks[i] == ")":
                        i += 1
                        break
                    raise bad_request(f"unable to parse requirement: expected ')' in {text!r}")
                for v in vals:
                    _check_value(v)
                reqs.append((key, IN if op == "\x00in" else NOT_IN, frozenset(vals)))
            elif op in ("<", ">"):
                val = ident(i + 1, "integer value")
                try:
                    int(val)
                except ValueError:
                    raise bad_request(
                        f"unable to parse requirement: for 'gt', 'lt' operators, the value must be an integer: {val!r}"
                    ) from None
                reqs.append((key, GT if op == ">" else LT, frozenset([val])))
                i += 2
            else:
                raise bad_request(f"unable to parse requirement: unexpected {op.lstrip(chr(0))!r} in {text!r}")
        if i < len(toks):
            if toks[i] != ",":
                raise bad_request(f"unable to parse requirement: expected ',' in {text!r}")
            i += 1
            if i >= len(toks):
                raise bad_request(f"unable to parse requirement: trailing ',' in {text!r}")
    return LabelSelector(reqs, text)


class FieldSelector:
    """Parsed field selector: list of (slot, want_equal, value).

    ``slot`` is -1 for metadata.name, -2 for metadata.namespace, otherwise an index into
    the object's pre-extracted ``fields`` tuple (see :func:`extract_fields`).
    """

    __slots__ = ("names", "reqs", "text")

    def __init__(self, reqs: list[tuple[int, bool, str]], text: str = "", names: list[str] | None = None) -> None:
        self.reqs = reqs
        self.text = text
        self.names = names or []

    @property
    def empty(self) -> bool:
        return not self.reqs

    def matches(self, name: str, namespace: str, fields: tuple[str | None, ...]) -> bool:
        for slot, eq, v in self.reqs:
            if slot == -1:
                actual = name
            elif slot == -2:
                actual = namespace
            else:
                actual = fields[slot] or ""
            if (actual == v) != eq:
                return False
        return True

    def equality_value(self, slot: int) -> str | None:
        for s, eq, v in self.reqs:
            if s == slot and eq:
                return v
        return None


def _split_unescaped(s: str, sep: str) -> list[str]:
    out, cur, i = [], [], 0
    while i < len(s):
        c = s[i]
        if c == "\\" and i + 1 < len(s):
            cur.append(s[i : i + 2])
            i += 2
            continue
        if c == sep:
            out.append("".join(cur))
            cur = []
        else:
            cur.append(c)
        i += 1
    out.append("".join(cur))
    return out


def _unescape(s: str) -> str:
    return re.sub(r"\\(.)", r"\1", s)


def parse_field_selector(text: str | None, field_labels: tuple[str, ...], namespaced: bool = True) -> FieldSelector:
    """Parse ``text``; ``field_labels`` are the resource's extra selectable fields (in slot order)."""
    if not text:
        return FieldSelector([], "")
    supported = (("metadata.name", "metadata.namespace") if namespaced else ("metadata.name",)) + field_labels
    reqs: list[tuple[int, bool, str]] = []
    names: list[str] = []
    for term in _split_unescaped(text, ","):
        if not term:
            continue
        for op, eq in (("!=", False), ("==", True), ("=", True)):  # noqa: B007 - `eq` of the matching operator is used after the break
            idx = term.find(op)
            if idx > 0:
                f, v = term[:idx].strip(), _unescape(term[idx + len(op) :].strip())
                break
        else:
            raise bad_request(f"invalid selector: '{text}'; can't understand '{term}'")
        if f == "metadata.namespace" and not namespaced:
            # kube accepts metadata.namespace on cluster-scoped lists; it only matches "".
            slot = -2
        elif f not in supported:
            raise bad_request(f'"{f}" is not a known field selector: only ' + ", ".join(f'"{s}"' for s in supported))
        else:
            slot = -1 if f == "metadata.name" else -2 if f == "metadata.namespace" else field_labels.index(f)
        reqs.append((slot, eq, v))
        names.append(f)
    return FieldSelector(reqs, text, names)


_PATHS: dict[tuple[str, ...], tuple[tuple[str, ...], ...]] = {}


def extract_fields(obj: Mapping[str, Any], field_labels: tuple[str, ...]) -> tuple[str | None, ...]:
    """Pull selectable field values out of an object, in ``field_labels`` order.

    Bools render as "true"/"false" (as kube does); values are interned because most are
    shared by many objects (node names, phases, scheduler names) and 150k pods add up.
    """
    paths = _PATHS.get(field_labels)
    if paths is None:
        paths = _PATHS[field_labels] = tuple(tuple(p.split(".")) for p in field_labels)
    out: list[str | None] = []
    append = out.append
    intern = sys.intern
    for parts in paths:
        cur: Any = obj
        for part in parts:
            # dict, not Mapping: an ABC isinstance check is ~10x slower and this runs per write.
            if type(cur) is not dict:
                cur = None
                break
            cur = cur.get(part)
        t = type(cur)
        if t is str:
            append(intern(cur))
        elif cur is None or t is dict or t is list:
            append(None)
        elif t is bool:
            append("true" if cur else "false")
        else:
            append(intern(str(cur)))
    return tuple(out)


__all__ = [
    "ApiError",
    "FieldSelector",
    "LabelSelector",
    "extract_fields",
    "parse_field_selector",
    "parse_label_selector",
]
