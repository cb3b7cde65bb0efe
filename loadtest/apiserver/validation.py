"""Write-time validation: every object is checked before it is stored, so a bad one never is.

Design note
-----------
kube-apiserver decodes a request into a typed Go struct and then runs the type's
validation; nothing invalid reaches etcd, so nothing invalid can later break a label
selector, a watch or a write. The emulator stores JSON and has no Go structs, so this
module checks what the rest of the emulator relies on, on every write path (HTTP and
in-process, create, update, patch, bulk load):

- *shape* (what Go's decoder would refuse): ``metadata`` is an object; its strings are
  strings; ``labels`` and ``annotations`` are string-to-string maps; ``finalizers`` a list
  of strings; ``ownerReferences`` a list of objects; ``spec`` and ``status`` are objects.
  For built-in kinds a violation is a 400 BadRequest worded like kube's decoder error
  ("Pod in version "v1" cannot be handled as a Pod: json: cannot unmarshal ..."); for
  custom resources it is a 422 Invalid, as the CRD schema check answers.
- *values* (apimachinery's ObjectMeta validation): the kind's name rule (DNS-1123
  subdomain; label for namespaces; DNS-1035 label for services), ``generateName`` as a
  name prefix, the namespace as a DNS-1123 label, label keys as qualified names and
  values as label values (63 characters), annotation keys as qualified names with 256 KiB
  for all annotations together, finalizers as qualified names, and the required fields
  of owner references. All problems are reported at once in a 422 Invalid whose
  ``details.causes`` name each field, as kube-apiserver answers.

The rule helpers (:func:`qualified_name_errors`, :func:`label_value_errors`) are shared
with the selector parser, which checks the same grammar in ``?labelSelector=``.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from . import errors
from .errors import Cause, field_invalid, field_required, field_too_long
from .resources import ResourceType

TOTAL_ANNOTATION_SIZE_LIMIT = 256 * 1024
_LABEL_NAME = r"([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]"
_LABEL_NAME_RE = re.compile(_LABEL_NAME)
_LABEL_VALUE_RE = re.compile(r"(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?")
_DNS1123_LABEL = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"
_DNS1123_LABEL_RE = re.compile(_DNS1123_LABEL)
_DNS1123_SUBDOMAIN = _DNS1123_LABEL + r"(\." + _DNS1123_LABEL + r")*"
_DNS1123_SUBDOMAIN_RE = re.compile(_DNS1123_SUBDOMAIN)
_DNS1035_LABEL = r"[a-z]([-a-z0-9]*[a-z0-9])?"
_DNS1035_LABEL_RE = re.compile(_DNS1035_LABEL)

_QUALIFIED_FMT = (
    "must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an "
    f"alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for validation is '{_LABEL_NAME}')"
)


def _too_long(limit: int) -> str:
    return f"must be no more than {limit} characters"


def dns1123_label_errors(v: str) -> list[str]:
    out = [_too_long(63)] if len(v) > 63 else []
    if not _DNS1123_LABEL_RE.fullmatch(v):
        out.append(
            "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must "
            "start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for "
            f"validation is '{_DNS1123_LABEL}')"
        )
    return out


def dns1123_subdomain_errors(v: str) -> list[str]:
    out = [_too_long(253)] if len(v) > 253 else []
    if not _DNS1123_SUBDOMAIN_RE.fullmatch(v):
        out.append(
            "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', "
            "and must start and end with an alphanumeric character (e.g. 'example.com', regex used for "
            f"validation is '{_DNS1123_SUBDOMAIN}')"
        )
    return out


def dns1035_label_errors(v: str) -> list[str]:
    out = [_too_long(63)] if len(v) > 63 else []
    if not _DNS1035_LABEL_RE.fullmatch(v):
        out.append(
            "a DNS-1035 label must consist of lower case alphanumeric characters or '-', start with an "
            "alphabetic character, and end with an alphanumeric character (e.g. 'my-name',  or 'abc-123', "
            f"regex used for validation is '{_DNS1035_LABEL}')"
        )
    return out


def path_segment_errors(v: str) -> list[str]:
    """apimachinery's ValidatePathSegmentName (RBAC kinds: ``system:controller:x`` is a name)."""
    if v in (".", ".."):
        return [f"may not be '{v}'"]
    return [f"may not contain '{c}'" for c in "/%" if c in v]


NAME_RULES: dict[str, Callable[[str], list[str]]] = {
    "subdomain": dns1123_subdomain_errors,
    "label": dns1123_label_errors,
    "label1035": dns1035_label_errors,
    "path": path_segment_errors,
}


def qualified_name_errors(v: str) -> list[str]:
    """apimachinery's IsQualifiedName: ``[prefix/]name``, prefix a DNS subdomain, name <= 63."""
    parts = v.split("/")
    if len(parts) == 1:
        name = parts[0]
    elif len(parts) == 2:
        prefix, name = parts
        if not prefix:
            return ["prefix part must be non-empty"]
        bad = dns1123_subdomain_errors(prefix)
        if bad:
            return ["prefix part " + m for m in bad]
    else:
        return [
            "a qualified name " + _QUALIFIED_FMT + " with an optional DNS subdomain prefix and '/' "
            "(e.g. 'example.com/MyName')"
        ]
    if not name:
        return ["name part must be non-empty"]
    out = ["name part " + _too_long(63)] if len(name) > 63 else []
    if not _LABEL_NAME_RE.fullmatch(name):
        out.append("name part " + _QUALIFIED_FMT)
    return out


def label_value_errors(v: str) -> list[str]:
    out = [_too_long(63)] if len(v) > 63 else []
    if not _LABEL_VALUE_RE.fullmatch(v):
        out.append(
            "a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', "
            "and must start and end with an alphanumeric character (e.g. 'MyValue',  or 'my_value',  or "
            "'12345', regex used for validation is '(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?')"
        )
    return out


def name_prefix_errors(rule: Callable[[str], list[str]], prefix: str) -> list[str]:
    """generateName: a trailing '-' is allowed (a random suffix follows it)."""
    if len(prefix) > 1 and prefix.endswith("-"):
        prefix = prefix[:-1] + "a"
    return rule(prefix)


# ---- shape --------------------------------------------------------------------------------

_JSON_TYPE = {dict: "object", list: "array", str: "string", bool: "bool", int: "number", float: "number"}
# metadata field -> the Go type its JSON must decode into (fields not listed are not checked)
_META_TYPES = {
    "name": "string",
    "generateName": "string",
    "namespace": "string",
    "resourceVersion": "string",
    "uid": "string",
    "selfLink": "string",
    "labels": "map[string]string",
    "annotations": "map[string]string",
    "generation": "int64",
    "deletionGracePeriodSeconds": "int64",
    "finalizers": "[]string",
    "ownerReferences": "[]v1.OwnerReference",
    "managedFields": "[]v1.ManagedFieldsEntry",
}


def _json_type(v: Any) -> str:
    return _JSON_TYPE.get(type(v), type(v).__name__)


def _shape_error(rt: ResourceType, name: str, path: str, value: Any, go_type: str) -> errors.ApiError:
    got = _json_type(value)
    if rt.custom:
        want = {"string": "string", "int64": "integer"}.get(go_type) or ("array" if go_type[:2] == "[]" else "object")
        return errors.invalid_causes(rt, name, [field_invalid(path, got, f"{path} in body must be of type {want}")])
    struct = "ObjectMeta." + path if path.startswith("metadata.") else f"{rt.kind}.{path}"
    return errors.bad_request(
        f'{rt.kind} in version "{rt.version}" cannot be handled as a {rt.kind}: json: cannot unmarshal '
        f"{got} into Go struct field {struct} of type {go_type}"
    )


def _bad_meta_value(go_type: str, v: Any) -> Any:
    """The offending (sub)value if ``v`` does not decode into ``go_type``, else None."""
    if go_type == "string":
        return None if type(v) is str else v
    if go_type == "int64":
        return None if type(v) is int else v
    if go_type == "map[string]string":
        if type(v) is not dict:
            return v
        return next((x for x in v.values() if type(x) is not str), None)
    if type(v) is not list:
        return v
    item = str if go_type == "[]string" else dict
    return next((x for x in v if type(x) is not item), None)


def check_shape(rt: ResourceType, d: dict[str, Any]) -> None:
    """400 (built-in kinds) or 422 (custom resources) if ``d`` does not have the shape of an object."""
    md = d.get("metadata")
    if type(md) is not dict:
        raise _shape_error(rt, "", "metadata", md, "v1.ObjectMeta")
    for f, v in md.items():
        go_type = _META_TYPES.get(f)
        if go_type is None or v is None:
            continue
        bad = _bad_meta_value(go_type, v)
        if bad is not None:
            name = md.get("name")
            if bad is not v:  # an element of a map or list: say which Go type it missed
                go_type = go_type.rpartition("]")[2]
            raise _shape_error(rt, name if type(name) is str else "", f"metadata.{f}", bad, go_type)
    for f in ("spec", "status"):
        v = d.get(f)
        if v is not None and type(v) is not dict:
            raise _shape_error(rt, "", f, v, f"v1.{rt.kind}{f.capitalize()}")


# ---- values -------------------------------------------------------------------------------


# Label keys and values repeat across objects (app=web on thousands of pods); remembering
# the good ones keeps bulk loads near their old speed. Bounded: cleared when full.
_GOOD: set[tuple[bool, str]] = set()
_GOOD_MAX = 50_000


def _label_causes(labels: dict[str, str]) -> list[Cause]:
    causes: list[Cause] = []
    good = _GOOD
    for k, v in labels.items():
        if (True, k) not in good:
            bad = qualified_name_errors(k)
            causes.extend(field_invalid("metadata.labels", k, m) for m in bad)
            if not bad:
                _remember(True, k)
        if (False, v) not in good:
            bad = label_value_errors(v)
            causes.extend(field_invalid("metadata.labels", v, m) for m in bad)
            if not bad:
                _remember(False, v)
    return causes


def _remember(is_key: bool, s: str) -> None:
    if len(_GOOD) >= _GOOD_MAX:
        _GOOD.clear()
    _GOOD.add((is_key, s))


def _meta_causes(rt: ResourceType, md: dict[str, Any]) -> list[Cause]:
    causes: list[Cause] = []
    rule = NAME_RULES[rt.name_rule]
    name = md.get("name")
    if not name:
        causes.append(field_required("metadata.name", "name or generateName is required"))
    else:
        causes.extend(field_invalid("metadata.name", name, m) for m in rule(name))
    gen = md.get("generateName")
    if gen:
        causes.extend(field_invalid("metadata.generateName", gen, m) for m in name_prefix_errors(rule, gen))
    if rt.namespaced:
        ns = md.get("namespace")
        if not ns:
            causes.append(field_required("metadata.namespace"))
        else:
            causes.extend(field_invalid("metadata.namespace", ns, m) for m in dns1123_label_errors(ns))
    labels = md.get("labels")
    if labels:
        causes.extend(_label_causes(labels))
    annotations = md.get("annotations")
    if annotations:
        size = 0
        for k, v in annotations.items():
            causes.extend(field_invalid("metadata.annotations", k, m) for m in qualified_name_errors(k.lower()))
            size += len(k.encode()) + len(v.encode())
        if size > TOTAL_ANNOTATION_SIZE_LIMIT:
            causes.append(field_too_long("metadata.annotations", TOTAL_ANNOTATION_SIZE_LIMIT))
    for i, f in enumerate(md.get("finalizers") or ()):
        causes.extend(field_invalid(f"metadata.finalizers[{i}]", f, m) for m in qualified_name_errors(f))
    for i, ref in enumerate(md.get("ownerReferences") or ()):
        for f in ("apiVersion", "kind", "name", "uid"):
            if not isinstance(ref.get(f), str) or not ref[f]:
                causes.append(field_required(f"metadata.ownerReferences[{i}].{f}"))
    return causes


def validate_object(rt: ResourceType, d: dict[str, Any]) -> None:
    """422 Invalid unless the values of ``d`` may be stored as a ``rt`` object.

    ``d`` must have passed :func:`check_shape` (``strategy.normalize`` runs it on every
    request object; stored objects passed it when they were written).
    """
    md = d["metadata"]
    causes = _meta_causes(rt, md)
    if causes:
        name = md.get("name") or md.get("generateName") or ""
        raise errors.invalid_causes(rt, name, causes)


__all__ = [
    "NAME_RULES",
    "TOTAL_ANNOTATION_SIZE_LIMIT",
    "check_shape",
    "dns1035_label_errors",
    "dns1123_label_errors",
    "dns1123_subdomain_errors",
    "label_value_errors",
    "qualified_name_errors",
    "validate_object",
]
