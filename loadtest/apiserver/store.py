"""The pure (socket-free) object store behind the emulator: etcd + watch cache in one.

Design note
-----------
The store sequences the pieces that hold the semantics, one concern per module:

- :mod:`.objects`: stored objects as JSON bytes plus filter data, committed events, the
  sorted key table of a resource;
- :mod:`.history`: the retained window of events (watch replay, MVCC list snapshots, 410s);
- :mod:`.listing`: which revision a list reads and one consistent page of it;
- :mod:`.watch`: bounded watcher queues and the indexed, exception-safe fan-out;
- :mod:`.strategy`: per-type create/update rules (system metadata, status, generation);
- :mod:`.schema` and :mod:`.defaults`: HTTP writes are admitted against their kind's schema
  (unknown fields, types, ``fieldValidation``) and defaulted;
- :mod:`.lifecycle`: what controllers do around some writes (namespace deletion, CRDs).

*Dry run.* Every write method takes ``dry_run``: the write goes through every check,
default and strategy, and the would-be object is returned, but nothing is committed (no
revision taken, no event, no cascade), as ``?dryRun=All`` does in kube-apiserver.

*Revisions.* One global integer counter, like an etcd revision: every write takes the
next value, stamps it into ``metadata.resourceVersion`` and records an Event in its
resource's history, then offers it to that resource's watchers, all synchronously. Since
nothing awaits between a commit and its fan-out, a bookmark queued behind a watcher's
events can never overtake one.

*Two write modes.* Methods with a ``strategy`` keyword implement REST semantics when
``strategy=True`` (the HTTP shell's choice); ``strategy=False``, the default for
in-process callers, stores what it is given like writing straight to etcd, but still
stamps system metadata and emits the same watch events.

The store is single-threaded and synchronous: call it from the event loop that runs the
HTTP shell (``server.py``); the shell only turns watcher queues into chunked responses.
"""

from __future__ import annotations

import builtins
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from . import errors, lifecycle
from . import strategy as strat
from .crds import CRD_KEY
from .defaults import apply_defaults
from .listing import ListResult, TooLargeResourceVersion, parse_rv
from .objects import (
    ADDED,
    BOOKMARK,
    DELETED,
    ERROR,
    MODIFIED,
    Event,
    StoredObject,
    dumps,
    encode_event,
    make_key,
)
from .patch import MERGE, apply_patch
from .resources import ResourceType
from .schema import WARN
from .selectors import extract_fields
from .state import DEFAULT_NAMESPACES, StoreState, _ResourceState
from .validation import validate_object
from .watch import Watcher

_EMPTY_LABELS: dict[str, str] = {}


@dataclass
class Admission:
    """How an HTTP write is admitted against its schema: the ``fieldValidation`` mode, and
    the warnings (unknown fields dropped) the response carries."""

    mode: str = WARN
    warnings: builtins.list[str] = field(default_factory=list)


class Store(StoreState):
    """The emulator's state and its writes (reads, watches and fault injection: :class:`StoreState`,
    which also takes the constructor's arguments)."""

    def _seed(self, namespaces: Iterable[str]) -> None:
        for ns in namespaces:
            self.create("namespaces", {"metadata": {"name": ns}})

    def _make(self, rt: ResourceType, d: dict[str, Any], dry_run: bool = False) -> StoredObject:
        """Validate ``d`` and stamp it with the next revision: the one way into storage.
        A dry run takes no revision: the object keeps the resourceVersion it has, if any."""
        validate_object(rt, d)
        md = d["metadata"]
        if dry_run:
            rv = int(md.get("resourceVersion") or 0)
        else:
            rv = self._next_rv()
            md["resourceVersion"] = str(rv)
        labels = md.get("labels") or _EMPTY_LABELS
        fields = extract_fields(d, rt.field_labels) if rt.field_labels else ()
        return StoredObject(make_key(md.get("namespace", ""), md["name"]), rv, dumps(d), labels, fields)

    # ---- writes ----------------------------------------------------------------------

    def _commit(self, rs: _ResourceState, etype: str, obj: StoredObject, prev: StoredObject | None) -> Event:
        if etype == DELETED:
            rs.table.remove(obj.key)
        else:
            rs.table.put(obj)
        ev = Event(etype, obj.rv, obj, prev)
        rs.history.record(ev)
        rs.stats.events_generated += 1
        if rs.watchers.count:
            rs.watchers.dispatch(ev)
        self._notify_listeners(ev.rv)
        if etype == DELETED:
            rs.stats.deletes += 1
            lifecycle.after_delete(self, rs.rt, obj)
        elif rs.rt.key == CRD_KEY:
            lifecycle.after_crd_write(self, obj.to_dict())
        return ev

    def commit_write(self, resource: str, d: dict[str, Any], etype: str, prev: StoredObject) -> StoredObject:
        """Store ``d`` as a new version of ``prev`` (MODIFIED) or its last state (DELETED)."""
        rs = self._state(resource)
        stored = self._make(rs.rt, d)
        self._commit(rs, etype, stored, prev)
        return stored

    def remove_now(self, rt: ResourceType, obj: StoredObject) -> StoredObject:
        """Delete ``obj`` at once, finalizers or not (its CRD is going away)."""
        return self._delete_now(self._states[rt.key], obj, obj.to_dict())

    def _admit(self, rt: ResourceType, d: dict[str, Any], admission: Admission | None) -> dict[str, Any]:
        if admission is None:
            return d
        out, warnings = self.schemas.admit(rt, d, admission.mode)
        admission.warnings.extend(warnings)
        return out

    def _next_rv(self) -> int:
        self._rv += 1
        return self._rv

    def create(
        self,
        resource: str,
        obj: Mapping[str, Any],
        *,
        namespace: str | None = None,
        strategy: bool = False,
        dry_run: bool = False,
    ) -> dict[str, Any]:
        """Create ``obj``; returns the stored object. 409 AlreadyExists if present."""
        return self.create_object(resource, obj, namespace=namespace, strategy=strategy, dry_run=dry_run).to_dict()

    def create_object(
        self,
        resource: str | ResourceType,
        obj: Mapping[str, Any],
        *,
        namespace: str | None = None,
        strategy: bool = False,
        dry_run: bool = False,
        admission: Admission | None = None,
    ) -> StoredObject:
        """Create; ``admission`` (HTTP writes) checks the object against its kind's schema."""
        rs = self._state(resource)
        rt = rs.rt
        d = self._admit(rt, strat.normalize(rt, obj, namespace), admission)
        md = d["metadata"]
        name = md.get("name")
        if not name and md.get("generateName"):
            name = md["name"] = strat.generate_name(md["generateName"])
        if not name:
            raise errors.invalid(rt, "", "metadata.name", "Required value: name or generateName is required")
        ns = md.get("namespace", "")
        key = make_key(ns, name)
        if key in rs.table.objects:
            raise errors.already_exists(rt, name)
        if ns and self.require_namespace and make_key("", ns) not in self._states["namespaces"].table.objects:
            raise errors.namespace_not_found(ns)
        if ns:
            lifecycle.check_namespace_open(self, ns)
        if strategy:
            apply_defaults(rt, d, None, self._cluster_ips)
        strat.prepare_create(rt, d, strategy)
        if rt.key == CRD_KEY:
            lifecycle.before_crd_write(self, rt, d, create=True)
        stored = self._make(rt, d, dry_run)
        if not dry_run:
            self._commit(rs, ADDED, stored, None)
            rs.stats.creates += 1
        return stored

    def update(
        self,
        resource: str,
        obj: Mapping[str, Any],
        *,
        namespace: str | None = None,
        subresource: str | None = None,
        strategy: bool = False,
        dry_run: bool = False,
    ) -> dict[str, Any]:
        """PUT semantics: 409 Conflict if metadata.resourceVersion is set and stale."""
        return self.update_object(
            resource, obj, namespace=namespace, subresource=subresource, strategy=strategy, dry_run=dry_run
        ).to_dict()

    def update_object(
        self,
        resource: str | ResourceType,
        obj: Mapping[str, Any],
        *,
        namespace: str | None = None,
        name: str | None = None,
        subresource: str | None = None,
        strategy: bool = False,
        dry_run: bool = False,
        admission: Admission | None = None,
    ) -> StoredObject:
        rs = self._state(resource)
        rt = rs.rt
        d = strat.normalize(rt, obj, namespace)
        md = d["metadata"]
        body_name = md.get("name")
        if name is not None and body_name and body_name != name:
            raise errors.bad_request(
                f"the name of the object ({body_name}) does not match the name on the URL ({name})"
            )
        name = name or body_name
        if not name:
            raise errors.invalid(rt, "", "metadata.name", "Required value: name is required")
        md["name"] = name
        cur = rs.table.get(make_key(md.get("namespace", ""), name))
        if cur is None:
            raise errors.not_found(rt, name)
        rv_in = md.get("resourceVersion")
        if rv_in:
            if parse_rv(str(rv_in)) != cur.rv:
                raise errors.conflict(rt, name, errors.STALE_RV)
        elif strategy and not rt.unconditional_update:
            raise errors.invalid(
                rt, name, "metadata.resourceVersion", "Invalid value: 0x0: must be specified for an update"
            )
        stored = self._update_from(rs, cur, d, subresource, strategy, dry_run, admission)
        if not dry_run:
            rs.stats.updates += 1
        return stored

    def _update_from(
        self,
        rs: _ResourceState,
        cur: StoredObject,
        d: dict[str, Any],
        subresource: str | None,
        strategy: bool,
        dry_run: bool = False,
        admission: Admission | None = None,
    ) -> StoredObject:
        rt = rs.rt
        old = cur.to_dict()
        d = self._admit(rt, d, admission)
        if strategy:
            apply_defaults(rt, d, old, self._cluster_ips)
        new = strat.prepare_update(rt, old, d, subresource, strategy)
        if new == old:
            return cur  # no-op update: no new revision, no event (as kube-apiserver)
        if rt.key == CRD_KEY:
            lifecycle.before_crd_write(self, rt, new, create=False)
        nmd = new["metadata"]
        if nmd.get("deletionTimestamp") and not nmd.get("finalizers"):
            # Last finalizer removed from an object being deleted: it goes away now.
            return self._make(rt, new, dry_run) if dry_run else self._delete_now(rs, cur, new)
        stored = self._make(rt, new, dry_run)
        if not dry_run:
            self._commit(rs, MODIFIED, stored, cur)
        return stored

    def patch(
        self,
        resource: str,
        name: str,
        patch: Any,
        *,
        namespace: str | None = None,
        content_type: str = MERGE,
        subresource: str | None = None,
        strategy: bool = False,
        dry_run: bool = False,
    ) -> dict[str, Any]:
        """Apply a merge / strategic-merge / JSON patch (``content_type`` says which)."""
        return self.patch_object(
            resource,
            name,
            patch,
            namespace=namespace,
            content_type=content_type,
            subresource=subresource,
            strategy=strategy,
            dry_run=dry_run,
        ).to_dict()

    def patch_object(
        self,
        resource: str | ResourceType,
        name: str,
        patch: Any,
        *,
        namespace: str | None = None,
        content_type: str = MERGE,
        subresource: str | None = None,
        strategy: bool = False,
        dry_run: bool = False,
        admission: Admission | None = None,
    ) -> StoredObject:
        rs = self._state(resource)
        rt = rs.rt
        cur = self.get_object(rt, name, namespace)
        new = apply_patch(cur.to_dict(), patch, content_type, rt.strategic_type)
        md = new.get("metadata")
        if not isinstance(md, dict):
            raise errors.invalid(rt, name, "metadata", "Required value")
        if md.get("name") != name or (rt.namespaced and md.get("namespace") != cur.namespace):
            raise errors.bad_request("metadata.name and metadata.namespace are immutable")
        # A resourceVersion in the patch is an optimistic-concurrency precondition.
        if str(md.get("resourceVersion", "")) != str(cur.rv):
            raise errors.conflict(rt, name, errors.STALE_RV)
        d = strat.normalize(rt, new, cur.namespace or None)
        stored = self._update_from(rs, cur, d, subresource, strategy, dry_run, admission)
        if not dry_run:
            rs.stats.patches += 1
        return stored

    def upsert(self, resource: str, obj: Mapping[str, Any], *, namespace: str | None = None) -> dict[str, Any]:
        """Create, or unconditionally replace (ignoring resourceVersion). Load-test helper."""
        rt = self.resource(resource)
        md = obj.get("metadata") or {}
        ns = (namespace or md.get("namespace") or "") if rt.namespaced else ""
        if make_key(ns, md.get("name") or "") in self._states[rt.key].table.objects:
            o = dict(obj)
            o["metadata"] = {k: v for k, v in md.items() if k != "resourceVersion"}
            return self.update(resource, o, namespace=namespace)
        return self.create(resource, obj, namespace=namespace)

    def delete(
        self, resource: str, name: str, *, namespace: str | None = None, preconditions: Mapping[str, Any] | None = None
    ) -> dict[str, Any]:
        """Delete; returns the final object. Objects with finalizers only get deletionTimestamp."""
        return self.delete_object(resource, name, namespace=namespace, preconditions=preconditions)[0].to_dict()

    def delete_object(
        self,
        resource: str | ResourceType,
        name: str,
        *,
        namespace: str | None = None,
        preconditions: Mapping[str, Any] | None = None,
        dry_run: bool = False,
    ) -> tuple[StoredObject, bool]:
        """Returns (object, deleted_now). deleted_now is False when finalizers defer it
        (or a namespace waits for its contents to go)."""
        rs = self._state(resource)
        rt = rs.rt
        cur = self.get_object(rt, name, namespace)
        d = cur.to_dict()
        md = d["metadata"]
        if preconditions:
            if preconditions.get("uid") and preconditions["uid"] != md.get("uid"):
                raise errors.conflict(
                    rt,
                    name,
                    f"Precondition failed: UID in precondition: {preconditions['uid']}, UID in object meta: {md.get('uid')}",
                )
            prv = preconditions.get("resourceVersion")
            if prv and str(prv) != str(cur.rv):
                raise errors.conflict(
                    rt,
                    name,
                    f"Precondition failed: ResourceVersion in precondition: {prv}, ResourceVersion in object meta: {cur.rv}",
                )
        if dry_run:
            return cur, not md.get("finalizers")
        if rt.key == "namespaces":
            return lifecycle.delete_namespace(self, cur)
        if md.get("finalizers"):
            if md.get("deletionTimestamp"):
                return cur, False
            md["deletionTimestamp"] = strat.now()
            md["deletionGracePeriodSeconds"] = 0
            stored = self._make(rt, d)
            self._commit(rs, MODIFIED, stored, cur)
            return stored, False
        if rt.key == CRD_KEY:
            lifecycle.delete_crd_objects(self, cur)
        return self._delete_now(rs, cur, d), True

    def _delete_now(self, rs: _ResourceState, cur: StoredObject, final: dict[str, Any]) -> StoredObject:
        # The DELETED event carries the last state stamped with the deletion's revision.
        tomb = self._make(rs.rt, final)
        self._commit(rs, DELETED, tomb, cur)
        return tomb

    def delete_collection(
        self,
        resource: str,
        namespace: str | None = None,
        *,
        label_selector: str | None = None,
        field_selector: str | None = None,
    ) -> builtins.list[StoredObject]:
        res = self.list(resource, namespace, label_selector=label_selector, field_selector=field_selector)
        return [self.delete_object(resource, o.name, namespace=o.namespace or None)[0] for o in res.items]

    def run_namespace_controller(self, now: float | None = None) -> int:
        """Empty the terminating namespaces whose cleanup is due (see ``namespace_cleanup_delay``)."""
        return lifecycle.run_namespace_controller(self, now)

    def bulk_load(
        self,
        resource: str,
        objs: Iterable[Mapping[str, Any]],
        *,
        namespace: str | None = None,
        emit_events: bool = True,
    ) -> int:
        """Create many objects fast; returns how many.

        With ``emit_events=False`` no per-object events are recorded or sent; instead the
        resource's history is truncated at the new revision and its open watches are cut,
        so every client relists and sees a consistent state (like an etcd restore).
        """
        rs = self._state(resource)
        rt = rs.rt
        n = 0
        if emit_events:
            for o in objs:
                self.create_object(rt, o, namespace=namespace)
                n += 1
            return n
        ts = strat.now()
        for o in objs:
            d = strat.normalize(rt, o, namespace)
            md = d["metadata"]
            name = md.get("name")
            if not name:
                raise errors.invalid(rt, "", "metadata.name", "Required value")
            key = make_key(md.get("namespace", ""), name)
            if key in rs.table.objects:
                raise errors.already_exists(rt, name)
            strat.prepare_create(rt, d, False, ts)
            rs.table.put(self._make(rt, d))
            n += 1
        rs.stats.creates += n
        rs.history.reset(self._rv)
        self.cut_watches(rt.key, reason="reload")
        self._notify_listeners(self._rv)
        return n


__all__ = [
    "ADDED",
    "BOOKMARK",
    "DEFAULT_NAMESPACES",
    "DELETED",
    "ERROR",
    "MODIFIED",
    "Event",
    "ListResult",
    "Store",
    "StoredObject",
    "TooLargeResourceVersion",
    "Watcher",
    "encode_event",
]
