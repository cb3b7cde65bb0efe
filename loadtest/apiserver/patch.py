"""PATCH bodies: JSON merge patch (RFC 7386), JSON patch (RFC 6902), strategic merge patch.

Design note
-----------
Strategic merge patch needs Go struct tags (patchMergeKey/patchStrategy) to merge lists
such as ``spec.containers`` by name; this emulator deliberately treats it as a JSON merge
patch after dropping ``$``-prefixed directive keys ($patch, $setElementOrder/..., ...).
For the metadata/status/label patches that Calico and load tests issue this is equivalent.
Patches never mutate their input; they return a new document.
"""

from __future__ import annotations

import copy
from typing import Any

from .errors import ApiError, bad_request, unsupported_media_type

MERGE = "application/merge-patch+json"
STRATEGIC = "application/strategic-merge-patch+json"
JSON_PATCH = "application/json-patch+json"
APPLY = "application/apply-patch+yaml"


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


def _strip_directives(patch: Any) -> Any:
    if isinstance(patch, dict):
        return {k: _strip_directives(v) for k, v in patch.items() if not k.startswith("$")}
    if isinstance(patch, list):
        return [_strip_directives(v) for v in patch if not (isinstance(v, dict) and "$patch" in v)]
    return patch


def _unescape(tok: str) -> str:
    return tok.replace("~1", "/").replace("~0", "~")


def _split_pointer(ptr: str) -> list[str]:
    if ptr == "":
        return []
    if not ptr.startswith("/"):
        raise bad_request(f"invalid JSON pointer {ptr!r}")
    return [_unescape(t) for t in ptr[1:].split("/")]


def _parent(doc: Any, parts: list[str], ptr: str) -> Any:
    cur = doc
    for p in parts[:-1]:
        if isinstance(cur, dict) and p in cur:
            cur = cur[p]
        elif isinstance(cur, list) and p.isdigit() and int(p) < len(cur):
            cur = cur[int(p)]
        else:
            raise ApiError(422, "Invalid", f"jsonpatch: path {ptr!r} not found")
    return cur


def _get(doc: Any, ptr: str) -> Any:
    parts = _split_pointer(ptr)
    if not parts:
        return doc
    parent = _parent(doc, parts, ptr)
    last = parts[-1]
    if isinstance(parent, dict) and last in parent:
        return parent[last]
    if isinstance(parent, list) and last.isdigit() and int(last) < len(parent):
        return parent[int(last)]
    raise ApiError(422, "Invalid", f"jsonpatch: path {ptr!r} not found")


def _remove(doc: Any, ptr: str) -> Any:
    parts = _split_pointer(ptr)
    parent = _parent(doc, parts, ptr)
    last = parts[-1]
    if isinstance(parent, dict) and last in parent:
        return parent.pop(last)
    if isinstance(parent, list) and last.isdigit() and int(last) < len(parent):
        return parent.pop(int(last))
    raise ApiError(422, "Invalid", f"jsonpatch: unable to remove nonexistent key {ptr!r}")


def _add(doc: Any, ptr: str, value: Any, replace: bool = False) -> Any:
    parts = _split_pointer(ptr)
    if not parts:
        return value
    parent = _parent(doc, parts, ptr)
    last = parts[-1]
    if isinstance(parent, dict):
        if replace and last not in parent:
            raise ApiError(422, "Invalid", f"jsonpatch: replace operation does not apply: doc is missing key: {ptr}")
        parent[last] = value
    elif isinstance(parent, list):
        if last == "-" and not replace:
            parent.append(value)
        elif last.isdigit() and int(last) <= len(parent) - (1 if replace else 0):
            if replace:
                parent[int(last)] = value
            else:
                parent.insert(int(last), value)
        else:
            raise ApiError(422, "Invalid", f"jsonpatch: index out of range in {ptr!r}")
    else:
        raise ApiError(422, "Invalid", f"jsonpatch: path {ptr!r} not found")
    return doc


def json_patch(target: Any, ops: Any) -> Any:
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
                raise ApiError(422, "Invalid", f"jsonpatch: testing value {path} failed")
        elif kind in ("move", "copy"):
            src = op.get("from", "")
            val = _remove(doc, src) if kind == "move" else copy.deepcopy(_get(doc, src))
            doc = _add(doc, path, val)
        else:
            raise bad_request(f"unexpected JSON patch operation {kind!r}")
    return doc


def apply_patch(target: dict[str, Any], patch: Any, content_type: str) -> dict[str, Any]:
    """Apply a PATCH body of the given Content-Type to ``target`` (not mutated)."""
    ct = content_type.split(";", 1)[0].strip().lower()
    if ct == MERGE:
        if not isinstance(patch, dict):
            raise bad_request("merge patch body must be a JSON object")
        out = merge_patch(target, patch)
    elif ct == STRATEGIC:
        if not isinstance(patch, dict):
            raise bad_request("strategic merge patch body must be a JSON object")
        out = merge_patch(target, _strip_directives(patch))
    elif ct == JSON_PATCH:
        out = json_patch(target, patch)
    else:
        raise unsupported_media_type(ct)
    if not isinstance(out, dict):
        raise bad_request("patch result is not an object")
    return out
