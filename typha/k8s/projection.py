"""Kubernetes / Calico objects -> key/value updates for Typha's cache.

Design note
-----------
Each watched object is *projected*: a pure function builds, from scratch, a small
JSON-able dict holding only the fields agents act on, under a key modelled on
Calico's v1 data model (see :mod:`protocol.keys`).  Building the value up from
an allow-list, rather than copying the object and deleting known noise
(managedFields, status conditions, resourceVersion, ...), is deliberate:

* Typha drops an update whose encoded value equals the stored one, so any field
  that changes without meaning (heartbeats, probe timestamps, revision counters,
  annotations added by other controllers) would be fanned out to every agent.  An
  allow-list is immune to noise nobody thought of; a deny-list is not.
* Values stay a few hundred bytes, which is what every agent stores and what every
  snapshot carries.

Semantics follow Calico's KDD conversion plus its "v1" update processors, folded
into one step: a Kubernetes NetworkPolicy becomes a Calico policy
``knp.default.<name>`` at order 1000, and every selector is emitted already
resolved the way Felix consumes it (namespace restrictions ANDed in, namespace and
service-account selectors rewritten onto the ``pcns.``/``pcsa.`` profile labels).
Agents therefore never need the namespace of a rule to evaluate it.

Deliberate differences from Calico, each to keep values stable or small:

* One key per profile (labels and rules together) and one per node, FelixConfiguration,
  ClusterInformation, BGPPeer and BGPConfiguration, instead of Calico's per-field
  config keys.
* An IPAMBlock's value lists only the allocations that belong to a node *other*
  than the block's affine node ("borrowed" addresses, which need /32 routes).
  Allocations by the affine node itself change nothing an agent programs (the
  whole block is routed to that node), so pod churn inside a node's own block
  projects to an identical value and is suppressed by Typha instead of being sent
  to every node.

Errors: a malformed object raises :class:`ProjectionError`, and nothing else does
(a wrong-typed field deep inside an object is still "malformed", never a crash),
so the caller, or a fuzzer, can count and skip it.  Missing optional fields never
raise.  One object may map to several keys; callers that must cope with an
object's key set changing (none of the resources here do so during an object's
life) can diff successive key sets.

Layout: this module is the entry point.  The resource table is
:mod:`typha.k8s.resources`, Calico's naming conventions :mod:`typha.k8s.calico`,
the validating field readers :mod:`typha.k8s.fields`, selector rewriting
:mod:`typha.k8s.selectors`, rule conversion :mod:`typha.k8s.rules`, and the
per-kind code :mod:`typha.k8s.projectors`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TypeVar

from .calico import interface_name
from .fields import ProjectionError, Update, Value
from .projectors import PROJECTORS, Projector
from .resources import RESOURCES, SYNCER_TYPES, Resource, resources_for_syncer
from .rules import k8s_network_policy_to_calico, rule_to_v1
from .selectors import k8s_selector, prefix_selector

__all__ = [
    "RESOURCES",
    "SYNCER_TYPES",
    "ProjectionError",
    "Resource",
    "Update",
    "Value",
    "interface_name",
    "k8s_network_policy_to_calico",
    "k8s_selector",
    "prefix_selector",
    "project",
    "project_all",
    "project_delete",
    "projector",
    "resources_for_syncer",
    "rule_to_v1",
]

T = TypeVar("T")

# What a wrong-typed field deep inside an object can raise from the projectors' own code. Each means
# "malformed object"; anything else (a MemoryError, a bug's NameError) is not bad data and propagates.
_MALFORMED = (TypeError, AttributeError, KeyError, ValueError)


def projector(resource: str) -> Projector:
    """The projector of ``resource``; ``ValueError`` for a name not in :data:`RESOURCES`."""
    try:
        return PROJECTORS[resource]
    except KeyError:
        raise ValueError(f"unknown resource {resource!r}") from None  # a caller bug, not bad data


def _guarded(resource: str, step: Callable[[dict], T], obj: dict) -> T:
    try:
        return step(obj)
    except ProjectionError:
        raise
    except _MALFORMED as e:
        raise ProjectionError(f"{resource}: malformed object: {e}") from e


def project(resource: str, obj: dict) -> list[Update]:
    """Keys an added/modified object maps to, with values; ``None`` means "must not exist".

    Raises :class:`ProjectionError` for a malformed object and ``ValueError`` for an unknown
    resource name.
    """
    return _guarded(resource, projector(resource).upsert, obj)


def project_delete(resource: str, obj: dict) -> list[str]:
    """Keys to delete when ``obj`` (its last state, as a DELETED watch event carries it) is deleted."""
    return _guarded(resource, projector(resource).delete, obj)


def project_all(items: Iterable[tuple[str, dict]]) -> dict[str, Value]:
    """Project a whole listing into a key -> value map (``None`` values and bad objects skipped).

    Convenience for tests and demo sources; Typha's watchers use :func:`project` per event.
    """
    out: dict[str, Value] = {}
    for resource, obj in items:
        try:
            ups = project(resource, obj)
        except ProjectionError:
            continue
        for k, v in ups:
            if v is not None:
                out[k] = v
    return out
