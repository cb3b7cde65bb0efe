"""Decoding untrusted request input: bodies, query parameters, DeleteOptions.

Design note
-----------
Everything a client sends passes through plain functions here (and in
:mod:`.selectors` and :mod:`.patch`) before it reaches the store, each either returning a
value or raising :class:`~.errors.ApiError` with a 4xx Status, never anything else. They
take bytes and strings, not aiohttp requests, so tests and fuzz targets call them
directly: ``decode_body(raw, content_type)``, ``decode_patch(raw, content_type)``,
``delete_preconditions(raw, content_type)``, ``parse_label_selector(text)``,
``parse_field_selector(text, fields)``, ``apply_patch(obj, patch, content_type, schema)``.

Limits, as kube-apiserver sets them: a body over 3 MiB is 413 RequestEntityTooLarge (the
shell checks Content-Length before reading, and aiohttp stops reading at the same
limit); a media type the server does not decode is 415. On top of kube's limits, JSON
nested deeper than :data:`MAX_DEPTH` is a 400: the patch and validation code recurse,
and a cap far below Python's recursion limit keeps every path clear of it (real
objects nest about 15 levels; kube's own decoder stops at 10,000).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson

from . import errors

MERGE = "application/merge-patch+json"
STRATEGIC = "application/strategic-merge-patch+json"
JSON_PATCH = "application/json-patch+json"
APPLY = "application/apply-patch+yaml"  # server-side apply: not implemented (415)
PATCH_TYPES = (JSON_PATCH, MERGE, STRATEGIC)
MAX_BODY_BYTES = 3 * 1024 * 1024  # kube-apiserver's maxRequestBodyBytes
MAX_DEPTH = 100
JSON = "application/json"
_TRUE = frozenset({"1", "t", "T", "TRUE", "true", "True"})  # Go's strconv.ParseBool


def media_type(content_type: str | None) -> str:
    """The bare, lower-cased media type of a Content-Type header ("" when absent)."""
    return (content_type or "").split(";", 1)[0].strip().lower()


def check_size(n: int | None) -> None:
    if n is not None and n > MAX_BODY_BYTES:
        raise errors.request_entity_too_large(MAX_BODY_BYTES)


def json_depth(doc: Any) -> int:
    """Nesting depth of a decoded JSON document (a scalar is 0, ``[]`` is 1)."""
    depth = 0
    stack: list[tuple[Any, int]] = [(doc, 0)]
    while stack:
        v, d = stack.pop()
        t = type(v)
        if t is dict:
            d += 1
            stack.extend((x, d) for x in v.values())
        elif t is list:
            d += 1
            stack.extend((x, d) for x in v)
        if d > depth:
            depth = d
            if depth > MAX_DEPTH:
                return depth
    return depth


def check_depth(doc: Any) -> None:
    if json_depth(doc) > MAX_DEPTH:
        raise errors.bad_request(f"the object is nested more than {MAX_DEPTH} levels deep")


def _loads(raw: bytes) -> Any:
    check_size(len(raw))
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError as e:
        raise errors.bad_request(f"couldn't get version/kind; json parse error: {e}") from None
    check_depth(doc)
    return doc


def decode_body(raw: bytes, content_type: str | None) -> Any:
    """A create/update body: JSON only (no Content-Type means JSON, as in kube); else 415."""
    ct = media_type(content_type)
    if ct not in ("", JSON):
        raise errors.unsupported_media_type(ct, (JSON,))
    if not raw:
        raise errors.bad_request("the request body is empty")
    return _loads(raw)


def decode_patch(raw: bytes, content_type: str | None) -> tuple[Any, str]:
    """A PATCH body and its patch type; 415 for anything but the three JSON patch types."""
    ct = media_type(content_type)
    if ct not in PATCH_TYPES:
        raise errors.unsupported_media_type(ct, PATCH_TYPES)
    if not raw:
        raise errors.bad_request("the request body is empty")
    return _loads(raw), ct


def delete_preconditions(raw: bytes, content_type: str | None) -> Mapping[str, Any] | None:
    """``preconditions`` of an optional DeleteOptions body (uid / resourceVersion strings)."""
    if not raw:
        return None
    opts = decode_body(raw, content_type)
    if not isinstance(opts, dict):
        raise errors.bad_request("DeleteOptions must be a JSON object")
    pre = opts.get("preconditions")
    if pre is None:
        return None
    if not isinstance(pre, dict) or any(
        not isinstance(pre.get(k), (str, type(None))) for k in ("uid", "resourceVersion")
    ):
        raise errors.bad_request("DeleteOptions.preconditions must be an object of uid and resourceVersion strings")
    return pre


def query_bool(v: str | None) -> bool:
    return v in _TRUE


def query_int(q: Mapping[str, str], name: str) -> int | None:
    v = q.get(name)
    if v in (None, ""):
        return None
    try:
        return int(v)
    except ValueError:
        raise errors.bad_request(f"invalid {name} parameter: {v!r}") from None


def rule_list(body: Any, key: str) -> list[str]:
    """``body[key]`` of a ``/emulator/forbidden`` request: a list of rule strings."""
    v = body.get(key, []) if isinstance(body, dict) else None
    if not isinstance(v, list) or not all(isinstance(r, str) for r in v):
        raise errors.bad_request(f'"{key}" must be a list of rule strings')
    return v


__all__ = [
    "JSON",
    "MAX_BODY_BYTES",
    "MAX_DEPTH",
    "check_depth",
    "check_size",
    "decode_body",
    "decode_patch",
    "delete_preconditions",
    "json_depth",
    "media_type",
    "query_bool",
    "query_int",
    "rule_list",
]
