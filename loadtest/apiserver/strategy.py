"""Per-type REST strategies: what a create or an update does to the object it is given.

Design note
-----------
kube-apiserver runs every write through a per-type ``RESTCreateStrategy`` /
``RESTUpdateStrategy``: system metadata is stamped and protected, status is owned by the
``/status`` subresource, ``generation`` counts spec changes, and a few types default
fields (a Namespace gets the ``kubernetes`` finalizer, a new Pod's status is reset to
Pending). These are pure functions of (type, old object, new object) here, so the store
only sequences them and commits the result.

``strategy=False`` is the in-process "write straight to etcd" mode load tests use (a pod
can be created with ``status.podIP`` already set); system metadata is still stamped, so
watch events look the same either way.
"""

from __future__ import annotations

import random
import time
import uuid
from collections.abc import Mapping
from typing import Any

from . import errors
from .resources import ResourceType
from .validation import check_shape

_GEN_CHARS = "bcdfghjklmnpqrstvwxz2456789"  # kube's utilrand alphabet (no vowels, no confusables)
# Fields a client never writes: kept from the stored object on every update.
SYSTEM_FIELDS = ("uid", "creationTimestamp", "deletionTimestamp", "deletionGracePeriodSeconds", "generation")


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def normalize(rt: ResourceType, obj: Mapping[str, Any], namespace: str | None) -> dict[str, Any]:
    """A fresh top-level copy of a request object with kind, apiVersion and namespace settled.

    400 if the body is not an object or names another kind, version or namespace, or if
    its fields do not have the types of an object (:func:`.validation.check_shape`); 422
    if a namespaced object has no namespace at all.
    """
    if type(obj) is not dict and not isinstance(obj, Mapping):  # ABC check is slow; dicts skip it
        raise errors.bad_request("the body of the request must be a JSON object")
    kind, api_version = obj.get("kind"), obj.get("apiVersion")
    if kind not in (None, "", rt.kind):
        raise errors.bad_request(f"the kind in the data ({kind}) does not match the expected kind ({rt.kind})")
    if api_version not in (None, "", rt.api_version):
        raise errors.bad_request(
            f"the API version in the data ({api_version}) does not match the expected API version ({rt.api_version})"
        )
    # JSON nulls are absent fields, as Go's decoder makes them (``spec: null`` is no spec).
    md_in = obj.get("metadata")
    md: Any = {k: v for k, v in md_in.items() if v is not None} if isinstance(md_in, Mapping) else md_in or {}
    d: dict[str, Any] = {"kind": rt.kind, "apiVersion": rt.api_version, "metadata": md}
    for k, v in obj.items():
        if k not in d and v is not None:
            d[k] = v
    check_shape(rt, d)  # everything below may rely on the types
    if rt.namespaced:
        body_ns = md.get("namespace")
        if namespace and body_ns and body_ns != namespace:
            raise errors.bad_request(
                "the namespace of the provided object does not match the namespace sent on the request"
            )
        ns = namespace or body_ns
        if not ns:
            raise errors.invalid(rt, _str(md.get("name")), "metadata.namespace", "Required value")
        md["namespace"] = ns
    else:
        md.pop("namespace", None)
    return d


def _str(v: Any) -> str:
    return v if isinstance(v, str) else ""


def generate_name(prefix: str) -> str:
    return prefix + "".join(random.choices(_GEN_CHARS, k=5))


def prepare_create(rt: ResourceType, d: dict[str, Any], strategy: bool, timestamp: str | None = None) -> None:
    """Stamp system metadata and apply the type's create defaults, in place."""
    md = d["metadata"]
    if strategy and md.get("resourceVersion"):
        # kube-apiserver answers this one with a 500 from its etcd layer; a 400 says the same.
        raise errors.bad_request("resourceVersion should not be set on objects to be created")
    md["uid"] = str(uuid.uuid4())
    md["creationTimestamp"] = timestamp or now()
    md["generation"] = 1
    for f in ("deletionTimestamp", "deletionGracePeriodSeconds", "managedFields"):
        md.pop(f, None)
    if rt.key == "namespaces":
        spec = d.get("spec")
        if not isinstance(spec, dict):
            spec = d["spec"] = {}
        spec.setdefault("finalizers", ["kubernetes"])
        status = d.get("status")
        if not isinstance(status, dict):
            status = d["status"] = {}
        status.setdefault("phase", "Active")
    elif strategy and rt.key == "pods":
        d["status"] = {"phase": "Pending"}  # PodStrategy.PrepareForCreate resets status


def prepare_update(
    rt: ResourceType, old: dict[str, Any], d: dict[str, Any], subresource: str | None, strategy: bool
) -> dict[str, Any]:
    """The object an update of ``old`` with ``d`` stores (``resourceVersion`` still the old one).

    The caller compares the result with ``old``: equal means a no-op update.
    """
    old_md = old["metadata"]
    md = d["metadata"]
    if md.get("uid") and md["uid"] != old_md.get("uid"):
        raise errors.conflict(
            rt,
            _str(old_md.get("name")),
            f"Precondition failed: UID in precondition: {md['uid']}, UID in object meta: {old_md.get('uid')}",
        )
    if subresource is not None:
        if subresource != "status" or not rt.status_subresource:
            raise errors.path_not_found()
        # /status: only status changes; everything else stays as stored.
        new = dict(old)
        if "status" in d:
            new["status"] = d["status"]
        else:
            new.pop("status", None)
    else:
        new = d
        if strategy and rt.status_subresource:
            # Main-resource PUT/PATCH ignores status (the status strategy owns it).
            if "status" in old:
                new["status"] = old["status"]
            else:
                new.pop("status", None)
        for f in SYSTEM_FIELDS:
            if f in old_md:
                md[f] = old_md[f]
            else:
                md.pop(f, None)
    new["metadata"] = dict(new["metadata"], resourceVersion=old_md.get("resourceVersion"))
    if new == old:
        return new
    # generation counts changes outside metadata (and outside status, where /status owns it).
    spec_keys = ("metadata", "status") if rt.status_subresource else ("metadata",)
    if any(new.get(k) != old.get(k) for k in set(new) | set(old) if k not in spec_keys):
        new["metadata"]["generation"] = int(old_md.get("generation", 1)) + 1
    return new


__all__ = ["SYSTEM_FIELDS", "generate_name", "normalize", "now", "prepare_create", "prepare_update"]
