"""The audit: the cache compared with the API server, object by object, at one resourceVersion.

Design note
-----------
Relisting after every 410, 504 "too large" and outage (typha.datastores.kubernetes) covers every
failure the API server tells us about. The audit is for the ones it does not: an event lost between
etcd and a watch, a restore whose revisions had already passed ours before we asked, a bug of ours.
Every `--k8s-audit-interval` seconds, each resource being watched is listed again, names and
resourceVersions only, and compared with the versions the cache was built from; any difference is
counted by kind (missing: listed, not in the cache; phantom: in the cache, not listed; stale: both,
other version), logged, and repaired by a relist of that resource (which sends the agents exactly the
differences).

Comparing a list with a cache that keeps changing is a race, unless both are at the same version. So
the audit copies the cache's versions at the resourceVersion the watch has reached (a plain dict copy
between two chunks, when the cache is exactly at that version), then lists *at that version*
(`resourceVersionMatch=Exact`, paged): any difference is real, whatever churn goes on meanwhile. The
obvious alternative, listing the newest state and forgiving the objects that changed during the list,
either misses real divergences or reports false ones, and a false one costs a relist.

The list asks for `PartialObjectMetadataList` (what metadata informers use), so the API server sends
metadata only; a server that ignores the media type sends whole objects, and decoding the three fields
we read with msgspec skips the rest either way without building it.

This module is the pure part (decoding a page, comparing); the requests and the schedule are the
datastore's.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import msgspec

#: Ask for metadata only, and accept whole objects from a server that cannot do that.
METADATA_ACCEPT = "application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1,application/json"

Name = tuple[str, str]  # (namespace or "", name)

MISSING, PHANTOM, STALE = "missing", "phantom", "stale"


class _Meta(msgspec.Struct):
    name: str = ""
    namespace: str = ""
    resourceVersion: str = ""


class _Item(msgspec.Struct):
    metadata: _Meta = msgspec.field(default_factory=_Meta)


class _ListMeta(msgspec.Struct):
    resourceVersion: str = ""
    continue_: str = msgspec.field(default="", name="continue")


class _Page(msgspec.Struct):
    metadata: _ListMeta = msgspec.field(default_factory=_ListMeta)
    items: list[_Item] | None = None


_decode_page = msgspec.json.Decoder(_Page).decode


class AuditPageError(ValueError):
    """A list page that is not a list of objects with names."""


@dataclass(frozen=True, slots=True)
class Page:
    versions: dict[Name, str]  # (namespace, name) -> resourceVersion of every item of the page
    resource_version: str  # the list's
    continue_token: str  # "" on the last page


def decode_page(body: bytes) -> Page:
    """The names and versions of one list page (metadata-only or whole objects alike)."""
    try:
        page = _decode_page(body)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise AuditPageError(f"not a list: {exc}") from None
    versions: dict[Name, str] = {}
    for item in page.items or ():
        md = item.metadata
        if not md.name:
            raise AuditPageError("an item without metadata.name")
        versions[(md.namespace, md.name)] = md.resourceVersion
    return Page(versions, page.metadata.resourceVersion, page.metadata.continue_)


@dataclass(slots=True)
class Divergence:
    """What differs between the API server's objects and the cache's, by name."""

    missing: list[Name] = field(default_factory=list)  # on the server, not in the cache
    phantom: list[Name] = field(default_factory=list)  # in the cache, gone from the server
    stale: list[Name] = field(default_factory=list)  # in both, at another resourceVersion

    def __bool__(self) -> bool:
        return bool(self.missing or self.phantom or self.stale)

    def counts(self) -> dict[str, int]:
        return {MISSING: len(self.missing), PHANTOM: len(self.phantom), STALE: len(self.stale)}

    def describe(self, examples: int = 3) -> str:
        """`2 missing (ns/a, ns/b), 1 stale (c)`: counts with a few names of each kind."""
        parts = []
        for kind, names in ((MISSING, self.missing), (PHANTOM, self.phantom), (STALE, self.stale)):
            if names:
                shown = ", ".join(f"{ns}/{n}" if ns else n for ns, n in sorted(names)[:examples])
                more = ", ..." if len(names) > examples else ""
                parts.append(f"{len(names)} {kind} ({shown}{more})")
        return ", ".join(parts)


def compare(listed: Iterable[Mapping[Name, str]], cached: Mapping[Name, str]) -> Divergence:
    """Compare the pages of a list with the cache's versions (both at one resourceVersion)."""
    out = Divergence()
    seen: set[Name] = set()
    for page in listed:
        for name, rv in page.items():
            seen.add(name)
            have = cached.get(name)
            if have is None:
                out.missing.append(name)
            elif have != rv:
                out.stale.append(name)
    out.phantom = [name for name in cached if name not in seen]
    return out


__all__ = [
    "METADATA_ACCEPT",
    "MISSING",
    "PHANTOM",
    "STALE",
    "AuditPageError",
    "Divergence",
    "Name",
    "Page",
    "compare",
    "decode_page",
]
