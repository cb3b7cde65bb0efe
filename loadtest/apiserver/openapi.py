"""The OpenAPI documents: ``/openapi/v3`` (an index and one document per group-version) and
``/openapi/v2`` (one Swagger 2.0 document), built from the schemas admission uses.

Design note
-----------
kubectl reads these for three things, so they carry what each needs:

- *Server-side field validation.* Before it sends ``fieldValidation=Strict``, kubectl
  looks in the group-version's v3 document for a PATCH operation tagged with the kind's
  ``x-kubernetes-group-version-kind`` that takes a ``fieldValidation`` query parameter.
  Without the documents, kubectl falls back to validating client-side against
  ``/openapi/v2``, and refuses to apply anything if that fails too ("failed to download
  openapi").
- *Strategic merge patches.* ``kubectl apply`` builds its patch for a built-in kind from
  the v3 component schema tagged with that kind, reading ``x-kubernetes-patch-merge-key``
  and ``x-kubernetes-patch-strategy``; a PATCH operation whose request body does not list
  ``application/strategic-merge-patch+json`` (custom resources) makes it send a JSON merge
  patch instead.
- *kubectl explain*: descriptions and types.

Each document holds the paths of its resources and the closure of the component schemas
they refer to. A custom resource's schema is its CRD's ``openAPIV3Schema`` with
``metadata`` pointing at ObjectMeta, named like kube-apiserver names it
(``io.projectcalico.crd.v1.IPPool``). Documents are built on first request and cached
until a CRD changes; the index gives each a ``hash`` of its content, which clients use as
a cache key.

The v2 document is served as JSON, or as the gnostic protobuf kubectl asks for
(:mod:`.openapi_pb`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from typing import Any

import orjson

from .openapi_pb import encode_document
from .resources import VERSION_INFO, ResourceType
from .schema import OBJECT_META, REF_PREFIX, Schema, SchemaSet, walk_refs
from .state import StoreState

_PATCH_TYPES = (
    "application/json-patch+json",
    "application/merge-patch+json",
    "application/strategic-merge-patch+json",
    "application/apply-patch+yaml",
)
_WRITE_PARAMS = ("dryRun", "fieldManager", "fieldValidation")
_LIST_PARAMS = (
    "allowWatchBookmarks",
    "continue",
    "fieldSelector",
    "labelSelector",
    "limit",
    "resourceVersion",
    "resourceVersionMatch",
    "sendInitialEvents",
    "timeoutSeconds",
    "watch",
)


def _query(name: str) -> dict[str, Any]:
    kind = "integer" if name in ("limit", "timeoutSeconds") else "boolean" if name in ("watch",) else "string"
    return {"name": name, "in": "query", "schema": {"type": kind, "uniqueItems": True}}


def _path_param(name: str) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "schema": {"type": "string", "uniqueItems": True}}


def custom_schema_name(rt: ResourceType) -> str:
    """kube-apiserver's component name for a custom kind: reversed group, version, kind."""
    return ".".join([*reversed(rt.group.split(".")), rt.version, rt.kind])


class OpenAPI:
    """Builds and caches the documents for one store."""

    def __init__(self, store: StoreState) -> None:
        self.store = store
        self._cache: dict[tuple[Any, ...], bytes] = {}

    @property
    def schemas(self) -> SchemaSet:
        return self.store.schemas

    def _state_key(self) -> tuple[Any, ...]:
        return (self.schemas.generation, tuple(sorted(rt.key for rt in self.store.registry)))

    def _cached(self, key: tuple[Any, ...], build: Any) -> bytes:
        full = (*key, self._state_key())
        if full not in self._cache:
            if len(self._cache) > 256:
                self._cache.clear()
            self._cache[full] = orjson.dumps(build())
        return self._cache[full]

    # ---- what is served --------------------------------------------------------------

    def group_versions(self) -> dict[str, list[ResourceType]]:
        """``api/v1`` / ``apis/<group>/<version>`` -> the resources with a schema there."""
        out: dict[str, list[ResourceType]] = {}
        for rt in self.store.registry:
            if self._kind_schema(rt) is None:
                continue
            gv = f"api/{rt.version}" if not rt.group else f"apis/{rt.group}/{rt.version}"
            out.setdefault(gv, []).append(rt)
        return out

    def _kind_schema(self, rt: ResourceType) -> tuple[str, Schema] | None:
        """(component name, schema) of ``rt``'s kind, or None if it has no schema."""
        if rt.custom:
            crd = self.schemas.crd_schema(rt.key)
            if crd is None:
                return None
            s = dict(crd)
            props = dict(s.get("properties") or {})
            props["metadata"] = {"$ref": REF_PREFIX + OBJECT_META}
            s["properties"] = props
            gvk = {"group": rt.group, "version": rt.version, "kind": rt.kind}
            s["x-kubernetes-group-version-kind"] = [gvk]
            return custom_schema_name(rt), s
        name = self.schemas.builtin_name(rt.group, rt.version, rt.kind)
        return (name, self.schemas.definitions[name]) if name else None

    def _closure(self, roots: dict[str, Schema]) -> dict[str, Schema]:
        defs = self.schemas.definitions
        out = dict(roots)
        todo = [r for s in roots.values() for r in walk_refs(s)]
        while todo:
            name = todo.pop()
            if name in out or name not in defs:
                continue
            out[name] = defs[name]
            todo.extend(walk_refs(defs[name]))
        return out

    # ---- v3 --------------------------------------------------------------------------

    def v3_index(self) -> bytes:
        def build() -> dict[str, Any]:
            paths = {}
            for gv in sorted(self.group_versions()):
                digest = hashlib.sha512(self.v3_document(gv) or b"").hexdigest().upper()
                paths[gv] = {"serverRelativeURL": f"/openapi/v3/{gv}?hash={digest}"}
            return {"paths": paths}

        return self._cached(("v3",), build)

    def v3_document(self, gv: str) -> bytes | None:
        """The document of ``gv`` (``api/v1``, ``apis/apps/v1``), None if nothing is served there."""
        rts = self.group_versions().get(gv.strip("/"))
        if not rts:
            return None
        return self._cached(("v3", gv), lambda: self._v3(rts))

    def _v3(self, rts: list[ResourceType]) -> dict[str, Any]:
        roots: dict[str, Schema] = {}
        paths: dict[str, Any] = {}
        for rt in sorted(rts, key=lambda r: r.plural):
            found = self._kind_schema(rt)
            assert found is not None
            name, schema = found
            roots[name] = schema
            paths.update(_paths(rt, REF_PREFIX + name))
        return {
            "openapi": "3.0.0",
            "info": {"title": "Kubernetes", "version": VERSION_INFO["gitVersion"]},
            "paths": paths,
            "components": {"schemas": self._closure(roots)},
        }

    # ---- v2 --------------------------------------------------------------------------

    def v2_protobuf(self) -> bytes:
        """The v2 document as gnostic protobuf, the only form kubectl reads (:mod:`.openapi_pb`)."""
        key = ("v2pb", self._state_key())
        if key not in self._cache:
            self._cache[key] = encode_document(orjson.loads(self.v2_document()))
        return self._cache[key]

    def v2_document(self) -> bytes:
        def build() -> dict[str, Any]:
            roots: dict[str, Schema] = {}
            paths: dict[str, Any] = {}
            for rts in self.group_versions().values():
                for rt in rts:
                    found = self._kind_schema(rt)
                    assert found is not None
                    roots[found[0]] = found[1]
                    paths.update(_v2_paths(_paths(rt, "#/definitions/" + found[0])))
            defs = {k: _to_v2(v) for k, v in self._closure(roots).items()}
            return {
                "swagger": "2.0",
                "info": {"title": "Kubernetes", "version": VERSION_INFO["gitVersion"]},
                "paths": paths,
                "definitions": defs,
            }

        return self._cached(("v2",), build)


def _gvk(rt: ResourceType) -> dict[str, str]:
    return {"group": rt.group, "version": rt.version, "kind": rt.kind}


def _ok(ref: str) -> dict[str, Any]:
    return {"200": {"description": "OK", "content": {"application/json": {"schema": {"$ref": ref}}}}}


def _op(rt: ResourceType, action: str, ref: str, params: Iterable[str], body: Iterable[str] = ()) -> dict[str, Any]:
    op: dict[str, Any] = {
        "operationId": f"{action}{rt.kind}",
        "parameters": [_query(p) for p in params],
        "responses": _ok(ref),
        "x-kubernetes-action": action,
        "x-kubernetes-group-version-kind": _gvk(rt),
    }
    body = list(body)
    if body:
        op["requestBody"] = {"content": {ct: {"schema": {"$ref": ref}} for ct in body}, "required": True}
    return op


def _paths(rt: ResourceType, ref: str) -> dict[str, Any]:
    base = f"/api/{rt.version}" if not rt.group else f"/apis/{rt.group}/{rt.version}"
    scope = f"{base}/namespaces/{{namespace}}/{rt.plural}" if rt.namespaced else f"{base}/{rt.plural}"
    common = [_path_param("namespace")] if rt.namespaced else []
    patch_types = [t for t in _PATCH_TYPES if rt.strategic_type or "strategic" not in t]
    item = {
        "get": _op(rt, "get", ref, ()),
        "put": _op(rt, "put", ref, _WRITE_PARAMS, ["application/json"]),
        "patch": _op(rt, "patch", ref, (*_WRITE_PARAMS, "force"), patch_types),
        "delete": _op(rt, "delete", ref, ("dryRun", "gracePeriodSeconds", "propagationPolicy")),
        "parameters": [_path_param("name"), *common],
    }
    collection = {
        "get": _op(rt, "list", ref, _LIST_PARAMS),
        "post": _op(rt, "post", ref, _WRITE_PARAMS, ["application/json"]),
        "delete": _op(rt, "deletecollection", ref, ("dryRun", "labelSelector", "fieldSelector")),
        "parameters": common,
    }
    out = {scope: collection, f"{scope}/{{name}}": item}
    if rt.status_subresource:
        out[f"{scope}/{{name}}/status"] = {k: v for k, v in item.items() if k != "delete"}
    return out


def _v2_paths(paths: dict[str, Any]) -> dict[str, Any]:
    """v3 operations as Swagger 2.0 ones (body parameters, consumes lists)."""
    out: dict[str, Any] = {}
    for path, item in paths.items():
        v2item: dict[str, Any] = {}
        for method, op in item.items():
            if method == "parameters":
                v2item[method] = [_v2_param(p) for p in op]
                continue
            new = {k: v for k, v in op.items() if k not in ("requestBody", "responses", "parameters")}
            new["parameters"] = [_v2_param(p) for p in op["parameters"]]
            ref = op["responses"]["200"]["content"]["application/json"]["schema"]["$ref"]
            new["responses"] = {"200": {"description": "OK", "schema": {"$ref": ref}}}
            if "requestBody" in op:
                new["consumes"] = list(op["requestBody"]["content"])
                new["parameters"].append({"name": "body", "in": "body", "required": True, "schema": {"$ref": ref}})
            v2item[method] = new
        out[path] = v2item
    return out


def _v2_param(p: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in p.items() if k != "schema"} | p.get("schema", {})


def _to_v2(node: Any) -> Any:
    """An OpenAPI v3 schema as a Swagger 2.0 one: refs into definitions, no allOf wrapper,
    int-or-string as kube's v2 writes it, no oneOf/anyOf/nullable."""
    if isinstance(node, list):
        return [_to_v2(x) for x in node]
    if not isinstance(node, dict):
        return node
    out = {k: _to_v2(v) for k, v in node.items() if k not in ("oneOf", "anyOf", "nullable")}
    alternatives = node.get("oneOf") or node.get("anyOf")
    if alternatives and "type" not in out:
        types = {a.get("type") for a in alternatives if isinstance(a, dict)}
        out["type"] = "string"
        if "integer" in types:
            out["format"] = "int-or-string"
    all_of = out.get("allOf")
    if isinstance(all_of, list) and len(all_of) == 1 and "$ref" in all_of[0]:
        out.pop("allOf")
        out["$ref"] = all_of[0]["$ref"]
    ref = out.get("$ref")
    if isinstance(ref, str):
        out["$ref"] = "#/definitions/" + ref.rsplit("/", 1)[-1]
    return out


__all__ = ["OpenAPI", "custom_schema_name"]
