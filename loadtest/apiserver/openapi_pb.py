"""The Swagger 2.0 document in the protobuf form kubectl asks for (gnostic's ``openapi_v2.Document``).

Design note
-----------
kubectl fetches ``/openapi/v2`` as ``application/com.github.proto-openapi.spec.v2@v1.0+protobuf``
and nothing else (client-go's discovery client decodes it with gnostic's generated Go
types; a 406 or a JSON body is an error). kubectl 1.29 and newer use it for the cases
``/openapi/v3`` does not settle: a custom resource whose CRD does not exist yet (kubectl
then validates client-side, finds no schema, and goes on to its clear "ensure CRDs are
installed first"), and ``kind: List``. kubectl 1.27 and 1.28 use it for everything: which
kinds take ``fieldValidation``, and client-side validation. Without it, ``kubectl apply``
refuses to run at all ("error validating data").

:func:`encode_document` writes the JSON document :mod:`.openapi` builds, field by field,
with the field numbers of gnostic's ``openapiv2/OpenAPIv2.proto`` (the message types a
Kubernetes document uses: Document, Info, Paths, PathItem, Operation, parameters,
Responses, Definitions, Schema and its parts, NamedAny for ``x-`` extensions, whose
values travel as YAML text, of which JSON is a subset).
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterable
from typing import Any

MEDIA_TYPES = (
    "application/com.github.proto-openapi.spec.v2@v1.0+protobuf",
    "application/com.github.proto-openapi.spec.v2.v1.0+protobuf",
)


def _varint(n: int) -> bytes:
    n &= (1 << 64) - 1  # negative int64s are ten-byte varints, as in protobuf
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _bytes(number: int, data: bytes) -> bytes:
    return _varint(number << 3 | 2) + _varint(len(data)) + data


def _str(number: int, value: str) -> bytes:
    return _bytes(number, value.encode())


def _bool(number: int, value: bool) -> bytes:
    return _varint(number << 3) + (b"\x01" if value else b"\x00")


def _int(number: int, value: int) -> bytes:
    return _varint(number << 3) + _varint(int(value))


def _double(number: int, value: float) -> bytes:
    return _varint(number << 3 | 1) + struct.pack("<d", float(value))


def _strings(number: int, values: Iterable[str]) -> bytes:
    return b"".join(_str(number, v) for v in values)


def _any(number: int, value: Any) -> bytes:
    """gnostic's Any: the value as YAML text (field 2); JSON is YAML."""
    return _bytes(number, _str(2, json.dumps(value)))


def _extensions(number: int, d: dict[str, Any]) -> bytes:
    return b"".join(_bytes(number, _str(1, k) + _any(2, v)) for k, v in d.items() if k.startswith("x-"))


def schema(s: dict[str, Any]) -> bytes:
    out = bytearray()
    if "$ref" in s:
        out += _str(1, s["$ref"])
    for number, key in ((2, "format"), (3, "title"), (4, "description"), (13, "pattern")):
        if isinstance(s.get(key), str):
            out += _str(number, s[key])
    if "default" in s:
        out += _any(5, s["default"])
    for number, key in ((7, "maximum"), (9, "minimum")):
        if isinstance(s.get(key), (int, float)) and not isinstance(s.get(key), bool):
            out += _double(number, s[key])
    for number, key in ((11, "maxLength"), (12, "minLength"), (14, "maxItems"), (15, "minItems")):
        if isinstance(s.get(key), int) and not isinstance(s.get(key), bool):
            out += _int(number, s[key])
    if s.get("uniqueItems") is True:
        out += _bool(16, True)
    out += _strings(19, s.get("required") or ())
    for v in s.get("enum") or ():
        out += _any(20, v)
    extra = s.get("additionalProperties")
    if isinstance(extra, dict):
        out += _bytes(21, _bytes(1, schema(extra)))
    elif isinstance(extra, bool):
        out += _bytes(21, _bool(2, extra))
    types = s.get("type")
    if types:
        out += _bytes(22, _strings(1, [types] if isinstance(types, str) else types))
    items = s.get("items")
    if isinstance(items, dict):
        out += _bytes(23, _bytes(1, schema(items)))
    for sub in s.get("allOf") or ():
        if isinstance(sub, dict):
            out += _bytes(24, schema(sub))
    props = s.get("properties")
    if isinstance(props, dict) and props:
        out += _bytes(25, b"".join(_bytes(1, _str(1, k) + _bytes(2, schema(v))) for k, v in props.items()))
    out += _extensions(31, s)
    return bytes(out)


def _parameter(p: dict[str, Any]) -> bytes:
    if p.get("in") == "body":
        body = _str(2, p["name"]) + _str(3, "body") + _bool(4, bool(p.get("required"))) + _bytes(5, schema(p["schema"]))
        return _bytes(1, _bytes(1, body))
    if p.get("in") == "path":  # PathParameterSubSchema
        sub = _bool(1, True) + _str(2, "path") + _str(4, p["name"]) + _str(5, p.get("type", "string"))
        sub += _bool(19, bool(p.get("uniqueItems")))
        return _bytes(1, _bytes(2, _bytes(4, sub)))
    sub = _bool(1, bool(p.get("required"))) + _str(2, "query") + _str(4, p["name"]) + _str(6, p.get("type", "string"))
    sub += _bool(20, bool(p.get("uniqueItems")))
    return _bytes(1, _bytes(2, _bytes(3, sub)))  # Parameter.non_body -> query sub-schema


def _operation(op: dict[str, Any]) -> bytes:
    out = bytearray()
    if op.get("operationId"):
        out += _str(5, op["operationId"])
    out += _strings(7, op.get("consumes") or ())
    for p in op.get("parameters") or ():
        out += _bytes(8, _parameter(p))
    responses = b""
    for code, r in (op.get("responses") or {}).items():
        response = _str(1, r.get("description", ""))
        if isinstance(r.get("schema"), dict):
            response += _bytes(2, _bytes(1, schema(r["schema"])))
        responses += _bytes(1, _str(1, code) + _bytes(2, _bytes(1, response)))
    out += _bytes(9, responses)
    out += _extensions(13, op)
    return bytes(out)


_METHODS = {"get": 2, "put": 3, "post": 4, "delete": 5, "options": 6, "head": 7, "patch": 8}


def _path_item(item: dict[str, Any]) -> bytes:
    out = bytearray()
    for method, number in _METHODS.items():
        if isinstance(item.get(method), dict):
            out += _bytes(number, _operation(item[method]))
    for p in item.get("parameters") or ():
        out += _bytes(9, _parameter(p))
    return bytes(out)


def encode_document(doc: dict[str, Any]) -> bytes:
    """A Swagger 2.0 document (as :class:`.openapi.OpenAPI` builds it) as gnostic protobuf."""
    info = doc.get("info") or {}
    out = _str(1, doc.get("swagger", "2.0"))
    out += _bytes(2, _str(1, info.get("title", "")) + _str(2, info.get("version", "")))
    paths = b"".join(_bytes(2, _str(1, p) + _bytes(2, _path_item(i))) for p, i in (doc.get("paths") or {}).items())
    out += _bytes(8, paths)
    defs = b"".join(_bytes(1, _str(1, n) + _bytes(2, schema(s))) for n, s in (doc.get("definitions") or {}).items())
    out += _bytes(9, defs)
    return out


__all__ = ["MEDIA_TYPES", "encode_document", "schema"]
