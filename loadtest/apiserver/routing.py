"""Request paths to resources, HTTP methods to Kubernetes verbs, and the 403 rules.

Design note
-----------
kube-apiserver's REST layout is regular enough to parse by hand in one pass:
``/api/v1/...`` for the core group, ``/apis/{group}/{version}/...`` for the others, then
``[namespaces/{ns}/]{plural}[/{name}[/{subresource}]]`` (plus the deprecated ``watch/``
prefix). :func:`parse_path` is a pure function of the registry and the path, so it is
unit-tested without a socket and can be fuzzed; anything it does not recognise is the
same 404 Status kube answers for an unknown path.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from . import errors
from .resources import ResourceRegistry, ResourceType


@dataclass
class Route:
    kind: str  # "resource" | "discovery"
    rt: ResourceType | None = None
    namespace: str | None = None
    name: str | None = None
    subresource: str | None = None
    legacy_watch: bool = False
    doc: dict[str, Any] | None = None


def parse_path(reg: ResourceRegistry, path: str) -> Route:
    """Map a request path to a Route; raises ApiError(404) for unknown paths."""
    segs = [s for s in path.split("/") if s]
    if not segs or segs[0] not in ("api", "apis"):
        raise errors.path_not_found()
    if segs[0] == "api":
        if len(segs) == 1:
            return Route("discovery", doc={"kind": "APIVersions", "versions": ["v1"]})
        group, version, rest = "", segs[1], segs[2:]
    else:
        if len(segs) == 1:
            return Route("discovery", doc=reg.api_group_list())
        if len(segs) == 2:
            doc = reg.api_group(segs[1])
            if doc is None:
                raise errors.path_not_found()
            return Route("discovery", doc=doc)
        group, version, rest = segs[1], segs[2], segs[3:]
    if not rest:
        doc = reg.api_resource_list(group, version)
        if doc is None:
            raise errors.path_not_found()
        return Route("discovery", doc=doc)
    legacy_watch = False
    if rest[0] == "watch":  # deprecated /watch/ prefix paths
        legacy_watch, rest = True, rest[1:]
        if not rest:
            raise errors.path_not_found()
    ns = None
    if rest[0] == "namespaces" and len(rest) >= 3:
        nrt = reg.lookup(group, version, rest[2])
        if nrt is not None and nrt.namespaced:
            ns, rest = rest[1], rest[2:]
    if len(rest) > 3:
        raise errors.path_not_found()
    rt = reg.lookup(group, version, rest[0])
    if rt is None:
        raise errors.path_not_found()
    name = rest[1] if len(rest) > 1 else None
    sub = rest[2] if len(rest) > 2 else None
    if not rt.namespaced and ns is not None:
        raise errors.path_not_found()
    if rt.namespaced and ns is None and name is not None:
        raise errors.path_not_found()
    if sub is not None and (sub != "status" or not rt.status_subresource):
        raise errors.path_not_found()
    return Route("resource", rt, ns, name, sub, legacy_watch)


def verb_of(method: str, route: Route, is_watch: bool) -> str:
    """The Kubernetes verb of a request on a resource route (405 for other methods)."""
    if method == "GET":
        return "watch" if is_watch else ("get" if route.name else "list")
    if method == "POST":
        return "create"
    if method == "PUT":
        return "update"
    if method == "PATCH":
        return "patch"
    if method == "DELETE":
        return "delete" if route.name else "deletecollection"
    raise errors.method_not_allowed(method)


def check_forbidden(rules: Iterable[str] | set[str], verb: str, route: Route, user: str) -> None:
    """403 Forbidden if a rule covers this request.

    A rule is ``plural`` or ``plural.group`` (all verbs), ``verb:plural``, ``*:plural``, or
    ``plural/status`` (the subresource only).
    """
    rules = rules if isinstance(rules, set) else set(rules)
    if not rules:
        return
    rt, sub = route.rt, route.subresource
    assert rt is not None
    names = [rt.plural, rt.key]
    if sub:
        names = [f"{n}/{sub}" for n in names] + names
    for n in names:
        if n in rules or f"{verb}:{n}" in rules or f"*:{n}" in rules:
            raise errors.forbidden(rt, rt.plural + (f"/{sub}" if sub else ""), verb, route.name, route.namespace, user)


__all__ = ["Route", "check_forbidden", "parse_path", "verb_of"]
