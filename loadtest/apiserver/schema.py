"""OpenAPI schemas of the served kinds, and admitting a written object against its schema.

Design note
-----------
*Two sources, one dialect.* Built-in kinds take the Kubernetes OpenAPI definitions that
kubernetes-validate ships, for the Kubernetes minor version the emulator reports, converted
once to OpenAPI v3 form (``#/components/schemas/`` references, one type per schema).
Custom resources take the ``openAPIV3Schema`` of their CRD's storage version. The served
``/openapi/v2`` and ``/openapi/v3`` documents (:mod:`.openapi`) are built from the same
schemas, so what kubectl checks client-side and what the server enforces cannot drift.

*Admission* walks the object once along its schema, the way kube-apiserver's strict JSON
decoder treats a built-in kind and structural-schema pruning treats a custom resource:

- unknown fields: ``fieldValidation=Strict`` is a 400 naming every one of them; ``Warn``
  (kube's default) drops them with one ``unknown field "spec.x"`` warning each (sent as
  ``Warning`` headers); ``Ignore`` drops them silently. So an unknown field is never
  stored over HTTP;
- JSON types: for a built-in kind the first mismatch is the decoder's 400 ("json: cannot
  unmarshal string into Go struct field DeploymentSpec.spec.replicas of type int32"); for
  a custom resource every mismatch is a 422 cause;
- custom resources also get the value rules of their schema (``required``, ``enum``,
  bounds, lengths, ``pattern``) as 422 causes, and ``default`` values filled in;
- JSON ``null`` is an absent field (as Go's decoder and pruning make it) unless the
  schema says ``nullable``.

Not done: built-in kinds' semantic validation beyond metadata (``required`` of a
built-in struct is kube's validation, not its decoder, and is not checked), duplicate
JSON keys (orjson keeps the last one), CEL rules (``x-kubernetes-validations``) and
formats other than base64 ``byte``.

Why not the jsonschema library: admission rewrites the object (pruning, defaults,
dropped nulls) and must word its errors as kube does; a single recursive walk does both.
"""

from __future__ import annotations

import base64
import binascii
import copy
import functools
import json
import re
from collections.abc import Iterator
from importlib import resources as importlib_resources
from pathlib import Path
from typing import Any

from . import errors
from .errors import Cause, field_invalid, field_required
from .resources import ResourceType

STRICT, WARN, IGNORE = "Strict", "Warn", "Ignore"
FIELD_VALIDATION = (STRICT, WARN, IGNORE)
OBJECT_META = "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"
REF_PREFIX = "#/components/schemas/"
Schema = dict[str, Any]

_DROP = object()
_GO_SCALARS = {"string": "string", "boolean": "bool", "number": "float64"}
_JSON_NAMES = {dict: "object", list: "array", str: "string", bool: "bool", int: "number", float: "number"}


def parse_field_validation(value: str | None) -> str:
    """``?fieldValidation=``: Strict, Warn (the default) or Ignore; 400 otherwise."""
    if not value:
        return WARN
    if value not in FIELD_VALIDATION:
        raise errors.bad_request(f'fieldValidation must be one of "Ignore", "Warn" or "Strict", not "{value}"')
    return value


# ---- built-in definitions ----------------------------------------------------------------


def _schema_dirs() -> dict[int, Path]:
    """kubernetes-validate's schema directories by Kubernetes minor version."""
    try:
        root = Path(str(importlib_resources.files("kubernetes_validate"))) / "kubernetes-json-schema"
    except ModuleNotFoundError:
        return {}
    out = {}
    for d in root.glob("v1.*.0-local"):
        minor = d.name.split(".")[1]
        if minor.isdigit() and (d / "_definitions.json").is_file():
            out[int(minor)] = d
    return out


def _to_openapi(node: Any) -> Any:
    """kubernetes-validate's JSON-Schema form -> OpenAPI v3: refs into components, one type."""
    if isinstance(node, list):
        return [_to_openapi(x) for x in node]
    if not isinstance(node, dict):
        return node
    out = {k: _to_openapi(v) for k, v in node.items()}
    t = out.get("type")
    if isinstance(t, list):
        types = [x for x in t if x != "null"]
        if len(types) == 1:
            out["type"] = types[0]
        else:
            out.pop("type")
    ref = out.get("$ref")
    if isinstance(ref, str):
        ref = REF_PREFIX + ref.rsplit("/", 1)[-1]
        rest = {k: v for k, v in out.items() if k != "$ref"}
        # OpenAPI 3.0 ignores siblings of $ref, so kube-apiserver wraps a described ref in allOf.
        out = {"allOf": [{"$ref": ref}], **rest} if rest else {"$ref": ref}
    return out


@functools.lru_cache(maxsize=4)
def load_definitions(minor: int) -> dict[str, Schema]:
    """The built-in definitions for Kubernetes 1.``minor`` (the nearest older one shipped, else
    the oldest); empty when kubernetes-validate is not installed. Loaded once per process (a few
    hundred ms) and shared by every store: nothing writes into them."""
    dirs = _schema_dirs()
    if not dirs:
        return {}
    older = [m for m in dirs if m <= minor]
    chosen = max(older) if older else min(dirs)
    raw = json.loads((dirs[chosen] / "_definitions.json").read_text())
    defs = raw.get("$defs") or raw.get("definitions") or {}
    return {name: _to_openapi(s) for name, s in defs.items()}


# ---- the schema set -------------------------------------------------------------------


class SchemaSet:
    """Schemas by resource: built-in definitions (loaded on first use) plus CRD schemas."""

    def __init__(self, k8s_minor: int) -> None:
        self.k8s_minor = k8s_minor
        self._defs: dict[str, Schema] | None = None
        self._by_gvk: dict[tuple[str, str, str], str] = {}
        self._crd: dict[str, Schema] = {}
        self.generation = 0  # bumped on every CRD schema change (openapi caches key on it)

    @property
    def definitions(self) -> dict[str, Schema]:
        if self._defs is None:
            self._defs = load_definitions(self.k8s_minor)
            for name, s in self._defs.items():
                for gvk in s.get("x-kubernetes-group-version-kind") or ():
                    self._by_gvk.setdefault((gvk.get("group", ""), gvk["version"], gvk["kind"]), name)
        return self._defs

    def builtin_name(self, group: str, version: str, kind: str) -> str | None:
        """The definition name of a built-in kind (None if kubernetes-validate has none)."""
        _ = self.definitions
        return self._by_gvk.get((group, version, kind))

    def set_crd_schema(self, key: str, schema: Schema | None) -> None:
        if schema is None:
            self._crd.pop(key, None)
        else:
            self._crd[key] = schema
        self.generation += 1

    def crd_schema(self, key: str) -> Schema | None:
        return self._crd.get(key)

    def root(self, rt: ResourceType) -> Schema | None:
        """The schema a ``rt`` object is admitted against (None: stored as given)."""
        if rt.custom:
            return self._crd.get(rt.key)
        name = self.builtin_name(rt.group, rt.version, rt.kind)
        return {"$ref": REF_PREFIX + name} if name else None

    def admit(self, rt: ResourceType, obj: dict[str, Any], mode: str) -> tuple[dict[str, Any], list[str]]:
        """``obj`` pruned (and defaulted) under ``mode``, with the warnings to send; raises ApiError."""
        root = self.root(rt)
        if root is None:
            return obj, []
        walk = _Walk(self.definitions, rt, mode)
        out = walk.value(root, obj, "", rt.custom, rt.kind, root=True)
        if walk.unknown and mode == STRICT:  # decoding comes before validation, as in kube
            listed = ", ".join(f'unknown field "{p}"' for p in walk.unknown)
            raise errors.bad_request(f"{_cannot_handle(rt)}: strict decoding error: {listed}")
        if walk.causes:
            name = obj.get("metadata", {}).get("name") or ""
            raise errors.invalid_causes(rt, name, walk.causes)
        warnings = [f'unknown field "{p}"' for p in walk.unknown] if mode == WARN else []
        return (out if isinstance(out, dict) else obj), warnings


def _cannot_handle(rt: ResourceType) -> str:
    return f'{rt.kind} in version "{rt.version}" cannot be handled as a {rt.kind}'


# ---- the walk -------------------------------------------------------------------------


class _Walk:
    """One admission: the pruned copy of an object, its unknown fields and its 422 causes."""

    def __init__(self, defs: dict[str, Schema], rt: ResourceType, mode: str) -> None:
        self.defs = defs
        self.rt = rt
        self.mode = mode
        self.unknown: list[str] = []
        self.causes: list[Cause] = []

    def resolve(self, s: Schema) -> tuple[Schema, str | None]:
        """Follow ``$ref`` (and kube's ``allOf: [{$ref}]`` wrapper) to a schema and its name."""
        name = None
        for _ in range(32):
            ref = s.get("$ref")
            if ref is None and len(s.get("allOf") or ()) == 1 and "properties" not in s:
                ref = s["allOf"][0].get("$ref")
            if not isinstance(ref, str):
                break
            name = ref.rsplit("/", 1)[-1]
            s = self.defs.get(name, {})
        return s, name

    def type_error(self, path: str, v: Any, s: Schema, struct: str, custom: bool) -> None:
        got = _JSON_NAMES.get(type(v), type(v).__name__)
        want = s.get("type") or "string or integer"
        if custom:
            self.causes.append(field_invalid(path, got, f"{path} in body must be of type {want}: {_show(v)}"))
            return
        raise errors.bad_request(
            f"{_cannot_handle(self.rt)}: json: cannot unmarshal {got} into Go struct field "
            f"{struct}.{path} of type {self._go_type(s)}"
        )

    def _go_type(self, s: Schema) -> str:
        s, name = self.resolve(s)
        if name:
            return "v1." + name.rsplit(".", 1)[-1] if s.get("type") == "object" else name.rsplit(".", 1)[-1]
        t = s.get("type")
        if t == "integer":
            return s.get("format") or "int"
        if t == "array":
            return "[]" + self._go_type(s.get("items") or {})
        if t == "object":
            return "map[string]" + self._go_type(s.get("additionalProperties") or {"type": "string"})
        return _GO_SCALARS.get(str(t), "string")

    def value(self, s: Schema, v: Any, path: str, custom: bool, struct: str, root: bool = False) -> Any:
        s, name = self.resolve(s)
        if name:
            struct = name.rsplit(".", 1)[-1]
        if v is None:
            return None if custom and s.get("nullable") else _DROP
        if s.get("x-kubernetes-int-or-string"):
            if type(v) not in (int, str):
                self.type_error(path, v, s, struct, custom)
            return v
        t = s.get("type")
        alternatives = s.get("oneOf") or s.get("anyOf")
        if t is None and alternatives:  # built-in IntOrString, Quantity: one of a few scalars
            allowed = {a.get("type") for a in alternatives if isinstance(a, dict)}
            if not any(_is(x, v) for x in allowed):
                self.type_error(path, v, {"type": " or ".join(sorted(map(str, allowed)))}, struct, custom)
            return v
        if t is None:
            return v  # no type: any JSON value (RawExtension, JSON)
        if not _is(t, v):
            self.type_error(path, v, s, struct, custom)
            return v
        if t == "object":
            return self.object(s, v, path, custom, struct, root)
        if t == "array":
            items = s.get("items")
            if isinstance(items, dict):
                out = [self.value(items, x, f"{path}[{i}]", custom, struct) for i, x in enumerate(v)]
                v = [x if x is not _DROP else None for x in out]
        if custom:
            self.value_rules(s, v, path)
        elif s.get("format") == "byte" and isinstance(v, str):
            # Go's decoder skips line breaks (kustomize folds long values); the stored form is
            # the canonical encoding of the bytes, as kube re-encodes them.
            try:
                v = base64.b64encode(base64.b64decode(v.replace("\r", "").replace("\n", ""), validate=True)).decode()
            except (binascii.Error, ValueError):
                raise errors.bad_request(
                    f"{_cannot_handle(self.rt)}: illegal base64 data in field {struct}.{path}"
                ) from None
        return v

    def object(self, s: Schema, v: dict[str, Any], path: str, custom: bool, struct: str, root: bool) -> Any:
        props: dict[str, Schema] = s.get("properties") or {}
        extra = s.get("additionalProperties")
        keep_unknown = bool(s.get("x-kubernetes-preserve-unknown-fields")) or extra is True
        if not custom and not props and extra is None:
            keep_unknown = True  # a built-in object without fields is free-form (FieldsV1, ...)
        embedded = root or s.get("x-kubernetes-embedded-resource")
        out: dict[str, Any] = {}
        for k, x in v.items():
            p = f"{path}.{k}" if path else k
            sub = props.get(k)
            if embedded and k == "metadata":
                sub, sub_custom = {"$ref": REF_PREFIX + OBJECT_META}, False
            else:
                sub_custom = custom
            if sub is None:
                if embedded and k in ("apiVersion", "kind"):
                    out[k] = x
                elif isinstance(extra, dict):
                    r = self.value(extra, x, p, custom, struct)
                    if r is not _DROP:
                        out[k] = r
                elif keep_unknown:
                    out[k] = x
                else:
                    self.unknown.append(p)
                continue
            r = self.value(sub, x, p, sub_custom, struct)
            if r is not _DROP:
                out[k] = r
        if custom:
            for k in s.get("required") or ():
                if k not in out:
                    self.causes.append(field_required(f"{path}.{k}" if path else k))
            for k, sub in props.items():
                if k not in out:
                    resolved, _ = self.resolve(sub)
                    if "default" in resolved:
                        out[k] = copy.deepcopy(resolved["default"])
            self.value_rules(s, out, path)
        return out

    def value_rules(self, s: Schema, v: Any, path: str) -> None:
        """A custom resource's value validations (422 causes)."""
        add = self.causes.append
        enum = s.get("enum")
        if enum is not None and v not in enum:
            supported = ", ".join(_show(e) for e in enum)
            add((path, "FieldValueNotSupported", f"Unsupported value: {_show(v)}: supported values: {supported}"))
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            if "minimum" in s and v < s["minimum"]:
                add(field_invalid(path, v, f"{path} in body should be greater than or equal to {s['minimum']}"))
            if "maximum" in s and v > s["maximum"]:
                add(field_invalid(path, v, f"{path} in body should be less than or equal to {s['maximum']}"))
        if isinstance(v, str):
            if "maxLength" in s and len(v) > s["maxLength"]:
                add((path, "FieldValueTooLong", f"Too long: may not be more than {s['maxLength']} bytes"))
            if "minLength" in s and len(v) < s["minLength"]:
                add(field_invalid(path, v, f"{path} in body should be at least {s['minLength']} chars long"))
            pattern = s.get("pattern")
            if isinstance(pattern, str) and not _search(pattern, v):
                add(field_invalid(path, v, f"{path} in body should match '{pattern}'"))
        if isinstance(v, list):
            if "maxItems" in s and len(v) > s["maxItems"]:
                add((path, "FieldValueTooMany", f"Too many: {len(v)}: must have at most {s['maxItems']} items"))
            if "minItems" in s and len(v) < s["minItems"]:
                add(field_invalid(path, len(v), f"{path} in body should have at least {s['minItems']} items"))


def _is(t: Any, v: Any) -> bool:
    if t == "object":
        return type(v) is dict
    if t == "array":
        return type(v) is list
    if t == "string":
        return type(v) is str
    if t == "boolean":
        return type(v) is bool
    if t == "integer":
        return type(v) is int
    if t == "number":
        return type(v) in (int, float)
    return True


def _search(pattern: str, v: str) -> bool:
    try:
        return re.search(pattern, v) is not None
    except re.error:
        return True  # a pattern Python cannot compile is not the client's fault


def _show(v: Any) -> str:
    return json.dumps(v) if isinstance(v, (str, int, float, bool)) or v is None else repr(v)


def walk_refs(node: Any) -> Iterator[str]:
    """Every definition name ``node`` refers to (directly)."""
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str):
            yield ref.rsplit("/", 1)[-1]
        for v in node.values():
            yield from walk_refs(v)
    elif isinstance(node, list):
        for v in node:
            yield from walk_refs(v)


__all__ = [
    "FIELD_VALIDATION",
    "IGNORE",
    "OBJECT_META",
    "REF_PREFIX",
    "STRICT",
    "WARN",
    "SchemaSet",
    "load_definitions",
    "parse_field_validation",
    "walk_refs",
]
