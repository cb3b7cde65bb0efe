"""PATCH bodies: JSON merge patch (RFC 7386), JSON patch (RFC 6902), strategic merge patch.

Design note
-----------
The three patch types kube-apiserver accepts for JSON are applied here as pure functions
of (object, patch document), never mutating their inputs. Strategic merge patch, which
needs the per-type merge keys of the built-in kinds, lives in :mod:`.strategic`;
:func:`apply_patch` refuses it (415) for a type without such a schema, as kube does for
custom resources. Every malformed patch is a 4xx Status: 400 when the document cannot be
a patch of its type, 422 when a well-formed patch does not apply (a JSON patch ``test``
that fails, a path that does not exist).

JSON patch is small enough to keep here rather than take a dependency: it follows
RFC 6902 the way kube's json-patch library does (array indices are decimal without
leading zeros, ``-`` appends, a ``move`` into its own child is refused).
"""

from __future__ import annotations

import copy
from typing import Any

from .decode import APPLY, JSON_PATCH, MERGE, PATCH_TYPES, STRATEGIC, check_depth, media_type
from .errors import ApiError, bad_request, unsupported_media_type
from .strategic import strategic_merge


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386: objects merge recursively, null deletes, anything else replaces."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for k, v in patch.items():
        if v is None:
            result.pop(k, None)
        elif isinstance(v, dict):
            result[k] = merge_patch(result.get(k), v)
        else:
            result[k] = copy.deepcopy(v)
    return result


def _unprocessable(msg: str) -> ApiError:
    return ApiError(422, "Invalid", f"jsonpatch: {msg}")


def _split_pointer(ptr: Any) -> list[str]:
    if not isinstance(ptr, str):
        raise bad_request(f"invalid JSON patch: path must be a string, got {ptr!r}")
    if ptr == "":
        return []
    if not ptr.startswith("/"):
        raise bad_request(f"invalid JSON pointer {ptr!r}")
    return [t.replace("~1", "/").replace("~0", "~") for t in ptr[1:].split("/")]


def _index(tok: str, size: int, ptr: str) -> int:
    if not tok.isascii() or not tok.isdigit() or (len(tok) > 1 and tok[0] == "0"):
        raise _unprocessable(f"invalid array index {tok!r} in {ptr!r}")
    i = int(tok)
    if i >= size:
        raise _unprocessable(f"index out of range in {ptr!r}")
    return i


def _parent(doc: Any, parts: list[str], ptr: str) -> Any:
    cur = doc
    for p in parts[:-1]:
        if isinstance(cur, dict) and p in cur:
            cur = cur[p]
        elif isinstance(cur, list):
            cur = cur[_index(p, len(cur), ptr)]
        else:
            raise _unprocessable(f"path {ptr!r} not found")
    return cur


def _get(doc: Any, ptr: Any) -> Any:
    parts = _split_pointer(ptr)
    if not parts:
        return doc
    parent = _parent(doc, parts, ptr)
    last = parts[-1]
    if isinstance(parent, dict) and last in parent:
        return parent[last]
    if isinstance(parent, list):
        return parent[_index(last, len(parent), ptr)]
    raise _unprocessable(f"path {ptr!r} not found")


def _remove(doc: Any, ptr: Any) -> Any:
    parts = _split_pointer(ptr)
    if not parts:
        raise _unprocessable("cannot remove the whole document")
    parent = _parent(doc, parts, ptr)
    last = parts[-1]
    if isinstance(parent, dict) and last in parent:
        return parent.pop(last)
    if isinstance(parent, list):
        return parent.pop(_index(last, len(parent), ptr))
    raise _unprocessable(f"unable to remove nonexistent key {ptr!r}")


def _add(doc: Any, ptr: Any, value: Any, replace: bool = False) -> Any:
    parts = _split_pointer(ptr)
    if not parts:
        return value
    parent = _parent(doc, parts, ptr)
    last = parts[-1]
    if isinstance(parent, dict):
        if replace and last not in parent:
            raise _unprocessable(f"replace operation does not apply: doc is missing key: {ptr}")
        parent[last] = value
    elif isinstance(parent, list):
        if last == "-" and not replace:
            parent.append(value)
        elif replace:
            parent[_index(last, len(parent), ptr)] = value
        else:
            parent.insert(_index(last, len(parent) + 1, ptr), value)
    else:
        raise _unprocessable(f"path {ptr!r} not found")
    return doc


def json_patch(target: Any, ops: Any) -> Any:
    """RFC 6902 on a deep copy of ``target``."""
    if not isinstance(ops, list):
        raise bad_request("json: cannot unmarshal object into Go value of type jsonpatch.Patch")
    doc = copy.deepcopy(target)
    for op in ops:
        if not isinstance(op, dict) or "op" not in op or "path" not in op:
            raise bad_request(f"invalid JSON patch operation {op!r}")
        kind, path = op["op"], op["path"]
        if kind == "add":
            doc = _add(doc, path, copy.deepcopy(op.get("value")))
        elif kind == "remove":
            _remove(doc, path)
        elif kind == "replace":
            doc = _add(doc, path, copy.deepcopy(op.get("value")), replace=True)
        elif kind == "test":
            if _get(doc, path) != op.get("value"):
                raise _unprocessable(f"testing value {path} failed")
        elif kind in ("move", "copy"):
            src = op.get("from", "")
            if kind == "move" and isinstance(src, str) and isinstance(path, str) and path.startswith(src + "/"):
                raise _unprocessable(f"cannot move {src!r} into its own child {path!r}")
            val = _remove(doc, src) if kind == "move" else copy.deepcopy(_get(doc, src))
            doc = _add(doc, path, val)
        else:
            raise bad_request(f"unexpected JSON patch operation {kind!r}")
    return doc


def apply_patch(target: dict[str, Any], patch: Any, content_type: str, schema: str | None = None) -> dict[str, Any]:
    """Apply a PATCH body of the given Content-Type to ``target`` (not mutated).

    ``schema`` names the strategic-merge type of the object (:mod:`.patchschema`); None
    (custom resources) makes a strategic merge patch a 415, as in kube-apiserver.
    """
    ct = media_type(content_type)
    if ct == MERGE:
        if not isinstance(patch, dict):
            raise bad_request("merge patch body must be a JSON object")
        out = merge_patch(target, patch)
    elif ct == STRATEGIC:
        if schema is None:
            raise unsupported_media_type(ct, (JSON_PATCH, MERGE))
        if not isinstance(patch, dict):
            raise bad_request("strategic merge patch body must be a JSON object")
        out = strategic_merge(target, patch, schema)
    elif ct == JSON_PATCH:
        out = json_patch(target, patch)
        check_depth(out)  # the one patch type that can nest deeper than its inputs
    else:
        raise unsupported_media_type(ct, PATCH_TYPES if schema else (JSON_PATCH, MERGE))
    if not isinstance(out, dict):
        raise bad_request("patch result is not an object")
    return out


__all__ = ["APPLY", "JSON_PATCH", "MERGE", "PATCH_TYPES", "STRATEGIC", "apply_patch", "json_patch", "merge_patch"]
