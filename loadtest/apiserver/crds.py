"""CustomResourceDefinitions: checking one, the resource it serves, and the status it gets.

Design note
-----------
A CRD is an ordinary stored object (``apiextensions.k8s.io/v1``); what makes it special is
what happens around its writes, and that lives in :mod:`.lifecycle`. This module holds the
pure parts:

- :func:`crd_problems`: what kube-apiserver's CRD validation would refuse, for the fields
  the emulator relies on (the name is ``<plural>.<group>``, a scope, a kind, exactly one
  storage version, and a *structural* schema: every field declares its type);
- :func:`resource_type`: the :class:`~.resources.ResourceType` row a CRD serves. Only
  the storage version is served (the emulator keeps one stored form per resource and does
  no conversion), with the CRD's names, short names, categories and status subresource;
- :func:`established_status`: the conditions kube's apiextensions controllers set a moment
  after a create (NamesAccepted, Established), set here at once, so ``kubectl wait
  --for condition=Established`` returns immediately;
- :func:`printer_columns`: the ``additionalPrinterColumns`` for Table output.
"""

from __future__ import annotations

from typing import Any

from . import errors
from .errors import Cause, field_invalid, field_required
from .resources import ResourceType
from .schema import Schema
from .validation import dns1035_label_errors, dns1123_subdomain_errors

CRD_KEY = "customresourcedefinitions.apiextensions.k8s.io"
_SCOPES = ("Namespaced", "Cluster")


def _versions(crd: dict[str, Any]) -> list[dict[str, Any]]:
    v = (crd.get("spec") or {}).get("versions")
    return [x for x in v if isinstance(x, dict)] if isinstance(v, list) else []


def storage_version(crd: dict[str, Any]) -> dict[str, Any] | None:
    found = [v for v in _versions(crd) if v.get("storage") is True]
    return found[0] if len(found) == 1 else None


def structural_problems(schema: Any, path: str = "spec.versions[0].schema.openAPIV3Schema") -> list[Cause]:
    """Where ``schema`` is not structural: a field without a type (unless it is int-or-string or
    keeps unknown fields), an array without ``items``, an object with both properties and
    additionalProperties."""
    if not isinstance(schema, dict):
        return [field_invalid(path, schema, "must be an object")]
    out: list[Cause] = []
    untyped_ok = schema.get("x-kubernetes-int-or-string") or schema.get("x-kubernetes-preserve-unknown-fields")
    t = schema.get("type")
    if not t and not untyped_ok:
        out.append(field_required(f"{path}.type", "must not be empty for specified object fields"))
    if t == "array" and not isinstance(schema.get("items"), dict):
        out.append(field_required(f"{path}.items", "must be specified"))
    if isinstance(schema.get("properties"), dict) and isinstance(schema.get("additionalProperties"), dict):
        out.append(
            (
                f"{path}.additionalProperties",
                "FieldValueForbidden",
                "Forbidden: additionalProperties and properties are mutual exclusive",
            )
        )
    for k, sub in (schema.get("properties") or {}).items():
        out.extend(structural_problems(sub, f"{path}.properties[{k}]"))
    for key in ("items", "additionalProperties"):
        if isinstance(schema.get(key), dict):
            out.extend(structural_problems(schema[key], f"{path}.{key}"))
    return out


def crd_problems(crd: dict[str, Any]) -> list[Cause]:
    """The 422 causes kube-apiserver would give for this CRD (empty: acceptable)."""
    spec: dict[str, Any] = crd["spec"] if isinstance(crd.get("spec"), dict) else {}
    names: dict[str, Any] = spec["names"] if isinstance(spec.get("names"), dict) else {}
    group, plural, kind = spec.get("group"), names.get("plural"), names.get("kind")
    out: list[Cause] = []
    if not isinstance(group, str) or not group:
        out.append(field_required("spec.group"))
    elif "." not in group or dns1123_subdomain_errors(group):
        out.append(field_invalid("spec.group", group, "should be a domain with at least one dot"))
    if not isinstance(plural, str) or not plural:
        out.append(field_required("spec.names.plural"))
    elif dns1035_label_errors(plural):
        out.append(field_invalid("spec.names.plural", plural, "a lowercase RFC 1035 label is required"))
    if not isinstance(kind, str) or not kind:
        out.append(field_required("spec.names.kind"))
    if spec.get("scope") not in _SCOPES:
        out.append(
            (
                "spec.scope",
                "FieldValueNotSupported",
                f'Unsupported value: "{spec.get("scope")}": supported values: "Cluster", "Namespaced"',
            )
        )
    if (
        isinstance(group, str)
        and isinstance(plural, str)
        and crd.get("metadata", {}).get("name") != f"{plural}.{group}"
    ):
        out.append(
            field_invalid("metadata.name", crd["metadata"].get("name"), 'must be spec.names.plural+"."+spec.group')
        )
    versions = _versions(crd)
    if not versions:
        out.append(field_required("spec.versions", "must have exactly one version marked as storage version"))
    elif sum(1 for v in versions if v.get("storage") is True) != 1:
        out.append(
            field_invalid("spec.versions", len(versions), "must have exactly one version marked as storage version")
        )
    for i, v in enumerate(versions):
        if not isinstance(v.get("name"), str) or not v["name"]:
            out.append(field_required(f"spec.versions[{i}].name"))
        schema = (v.get("schema") or {}).get("openAPIV3Schema")
        if schema is None:
            out.append(field_required(f"spec.versions[{i}].schema.openAPIV3Schema", "schemas are required"))
        else:
            out.extend(structural_problems(schema, f"spec.versions[{i}].schema.openAPIV3Schema"))
    return out


def check(rt: ResourceType, crd: dict[str, Any]) -> None:
    """422 Invalid unless ``crd`` is a CRD kube-apiserver would accept (see :func:`crd_problems`)."""
    causes = crd_problems(crd)
    if causes:
        raise errors.invalid_causes(rt, crd.get("metadata", {}).get("name") or "", causes)


def resource_type(crd: dict[str, Any]) -> ResourceType:
    """The resource a (valid) CRD serves: its storage version."""
    spec, version = crd["spec"], storage_version(crd)
    assert version is not None, "check() the CRD first"
    names = spec["names"]
    return ResourceType(
        spec["group"],
        version["name"],
        names["plural"],
        names["kind"],
        spec["scope"] == "Namespaced",
        short_names=tuple(names.get("shortNames") or ()),
        status_subresource="status" in (version.get("subresources") or {}),
        custom=True,
        categories=tuple(names.get("categories") or ()),
        crd=crd["metadata"]["name"],
    )


def schema_of(crd: dict[str, Any]) -> Schema | None:
    version = storage_version(crd)
    return ((version or {}).get("schema") or {}).get("openAPIV3Schema")


def printer_columns(crd: dict[str, Any]) -> list[dict[str, Any]]:
    version = storage_version(crd) or {}
    return [c for c in version.get("additionalPrinterColumns") or () if isinstance(c, dict)]


def established_status(crd: dict[str, Any], timestamp: str) -> dict[str, Any]:
    """The status kube's apiextensions controllers give an accepted CRD."""
    names = dict(crd["spec"]["names"])
    names.setdefault("singular", names["kind"].lower())
    names.setdefault("listKind", names["kind"] + "List")
    version = storage_version(crd) or {}

    def condition(type_: str, reason: str, message: str) -> dict[str, Any]:
        return {"type": type_, "status": "True", "lastTransitionTime": timestamp, "reason": reason, "message": message}

    return {
        "conditions": [
            condition("NamesAccepted", "NoConflicts", "no conflicts found"),
            condition("Established", "InitialNamesAccepted", "the initial names have been accepted"),
        ],
        "acceptedNames": names,
        "storedVersions": [version.get("name", "")],
    }


__all__ = [
    "CRD_KEY",
    "check",
    "crd_problems",
    "established_status",
    "printer_columns",
    "resource_type",
    "schema_of",
    "storage_version",
    "structural_problems",
]
