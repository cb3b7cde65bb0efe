"""What kube-apiserver's controllers do around some writes: namespaces and CRDs.

Design note
-----------
In kube-apiserver, deleting a namespace only marks it (``Terminating``); the namespace
controller then deletes everything in it and finally removes the namespace. Creating a
CRD makes the apiextensions server start serving a new resource, and deleting one
deletes all of its objects first. The emulator has no controllers, so it does the same
work synchronously, inside the write that triggers it, and the watch events come out in
the order a client of kube would see them (MODIFIED namespace, DELETED contents, DELETED
namespace). Kept apart from :mod:`.store` because it is policy on top of the store's
primitives, not storage.

- *Namespaces*: a delete marks the namespace Terminating; then (at once, or
  ``namespace_cleanup_delay`` seconds later when the HTTP server's namespace controller
  runs, which ``kubectl delete -k`` relies on: it deletes the namespace first and its
  contents right after) every namespaced object in it is deleted (one holding finalizers
  stays until they are removed), and the namespace goes once it is empty; its
  ``spec.finalizers`` (``kubernetes``) is the namespace controller's, its
  ``metadata.finalizers`` still hold it. Creating in a terminating namespace is 403, as
  in kube.
- *CRDs*: a CRD must be acceptable (:func:`.crds.check`) and may not claim a resource the
  server serves itself. Once stored, its storage version is served (registered in the
  store), its schema is used for admission and OpenAPI, and its printer columns for Table
  output. Deleting it deletes its objects (their finalizers are not waited for) and stops
  serving the resource, unless it is one of the built-in Calico kinds, which then stay
  served without a schema, as before the CRD existed.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from . import crds, errors
from . import strategy as strat
from .objects import DELETED, MODIFIED, StoredObject
from .resources import ResourceType

if TYPE_CHECKING:
    from .store import Store

NAMESPACES = "namespaces"


# ---- namespaces ---------------------------------------------------------------------------


def check_namespace_open(store: Store, ns: str) -> None:
    """403 if ``ns`` is terminating (kube's NamespaceLifecycle admission)."""
    cur = store.namespace_object(ns)
    # Checked on every create: look at the bytes before decoding the namespace.
    if cur is not None and b'"deletionTimestamp"' in cur.raw and cur.to_dict()["metadata"].get("deletionTimestamp"):
        raise errors.ApiError(
            403,
            "Forbidden",
            f"unable to create new content in namespace {ns} because it is being terminated",
            {
                "name": ns,
                "kind": "namespaces",
                "causes": [{"reason": "NamespaceTerminating", "field": "metadata.namespace"}],
            },
        )


def delete_namespace(store: Store, cur: StoredObject) -> tuple[StoredObject, bool]:
    """Mark the namespace Terminating; empty and remove it now, or once its cleanup is due
    (``store.namespace_cleanup_delay`` seconds later, when :func:`run_namespace_controller` runs)."""
    d = cur.to_dict()
    md = d["metadata"]
    if not md.get("deletionTimestamp"):
        md["deletionTimestamp"] = strat.now()
        md["deletionGracePeriodSeconds"] = 0
        status: dict[str, Any] = d["status"] if isinstance(d.get("status"), dict) else {}
        d["status"] = {**status, "phase": "Terminating"}
        cur = store.commit_write(NAMESPACES, d, MODIFIED, cur)
    if store.namespace_cleanup_delay > 0:
        store.terminating.setdefault(cur.name, time.monotonic() + store.namespace_cleanup_delay)
        return cur, False
    return empty_namespace(store, cur.name) or (cur, False)


def run_namespace_controller(store: Store, now: float | None = None) -> int:
    """Empty the terminating namespaces whose cleanup is due; returns how many."""
    now = time.monotonic() if now is None else now
    due = [ns for ns, t in store.terminating.items() if t <= now]
    for ns in due:
        del store.terminating[ns]
        empty_namespace(store, ns)
    return len(due)


def empty_namespace(store: Store, ns: str) -> tuple[StoredObject, bool] | None:
    """Delete everything in ``ns``, then the namespace if nothing holds it."""
    store.cascading.add(ns)  # one emptiness check at the end, not one per deleted object
    try:
        for rt in list(store.registry):
            if rt.namespaced:
                for obj in store.objects_in(rt, ns):
                    store.delete_object(rt, obj.name, namespace=ns)
    finally:
        store.cascading.discard(ns)
    return finish_namespace(store, ns)


def finish_namespace(store: Store, ns: str) -> tuple[StoredObject, bool] | None:
    """Remove a terminating namespace that has become empty; None if it is not (yet)."""
    cur = store.namespace_object(ns)
    if cur is None:
        return None
    d = cur.to_dict()
    if not d["metadata"].get("deletionTimestamp"):
        return None
    if any(store.objects_in(rt, ns) for rt in store.registry if rt.namespaced):
        return None
    spec: dict[str, Any] = d["spec"] if isinstance(d.get("spec"), dict) else {}
    d["spec"] = {**spec, "finalizers": []}
    if d["metadata"].get("finalizers"):
        return store.commit_write(NAMESPACES, d, MODIFIED, cur), False
    return store.commit_write(NAMESPACES, d, DELETED, cur), True


def after_delete(store: Store, rt: ResourceType, obj: StoredObject) -> None:
    """An object is gone: its terminating namespace may now be empty (if its controller ran)."""
    if rt.namespaced and obj.namespace not in store.cascading and obj.namespace not in store.terminating:
        ns = obj.namespace
        nso = store.namespace_object(ns)
        if nso is not None and b'"deletionTimestamp"' in nso.raw and nso.to_dict()["metadata"].get("deletionTimestamp"):
            finish_namespace(store, ns)


# ---- CRDs ---------------------------------------------------------------------------------


def before_crd_write(store: Store, rt: ResourceType, d: dict[str, Any], create: bool) -> None:
    """422 unless the CRD is acceptable; a new one gets its Established status."""
    crds.check(rt, d)
    spec = d["spec"]
    key = f"{spec['names']['plural']}.{spec['group']}"
    served = store.registry.resolve(key) if key in store.registry else None
    if served is not None and not served.custom:
        raise errors.invalid(
            rt,
            d["metadata"]["name"],
            "spec.group",
            f'Invalid value: "{spec["group"]}": {key} is served by the API server itself',
        )
    if create:
        d["status"] = crds.established_status(d, strat.now())


def after_crd_write(store: Store, crd: dict[str, Any]) -> None:
    """Serve (or update) the resource a stored CRD defines."""
    new = crds.resource_type(crd)
    key = new.key
    store.schemas.set_crd_schema(key, crds.schema_of(crd))
    store.crd_columns[key] = crds.printer_columns(crd)
    if key not in store.registry:
        store.add_resource(new)
    elif store.registry.resolve(key).crd is not None:
        store.replace_resource(new)


def delete_crd_objects(store: Store, crd: StoredObject) -> None:
    """Before a CRD goes: its objects go, and its resource stops being served."""
    d = crd.to_dict()
    spec = d.get("spec") or {}
    key = f"{(spec.get('names') or {}).get('plural')}.{spec.get('group')}"
    if key not in store.registry:
        return
    rt = store.registry.resolve(key)
    for obj in store.objects_in(rt, None):
        store.remove_now(rt, obj)
    store.schemas.set_crd_schema(key, None)
    store.crd_columns.pop(key, None)
    if rt.crd is not None:
        store.remove_resource(key)


__all__ = [
    "after_crd_write",
    "after_delete",
    "before_crd_write",
    "check_namespace_open",
    "delete_crd_objects",
    "delete_namespace",
    "empty_namespace",
    "finish_namespace",
    "run_namespace_controller",
]
