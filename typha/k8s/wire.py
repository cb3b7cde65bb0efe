"""Decoding the API server's JSON: for the high-volume kinds, only the fields the projection reads.

Design note
-----------
A Pod as the API server sends it is 3-5 KB of JSON, mostly managedFields, conditions and container
statuses; the projection reads a dozen fields. `orjson.loads` builds every dict and string of it (about
150 us for a 4.6 KB watch event with managedFields on this machine) only for ingest to read those fields
and drop the rest. msgspec decodes straight into a *typed* shape and skips, without allocating, every
field the shape does not name: the same event decodes in a tenth of the time.

The shapes are `TypedDict`s, not `msgspec.Struct`s, on purpose: msgspec decodes both with the same
skip-what-is-unknown parser (a Struct is ~0.2 us faster per pod here), but a TypedDict decodes to the
plain dicts the projectors already read. The projection's code is therefore the same for every decoder,
so its output is the same byte for byte (a second projector per kind written against Structs would be a
twin to keep in step, and a place for the two to drift apart). Everything below a named field that the
projection validates itself is typed `Any`, so msgspec accepts exactly what orjson would.

When an object does not fit its shape (a field of the wrong JSON type, for example `spec: []`), msgspec
rejects it; then the page or the line is decoded again with orjson and goes the old way, so the
projection sees the same object and raises the same `ProjectionError` as before. ERROR watch events
carry a Status, not the resource, and are decoded again with orjson too (they are rare). Resources not
listed here (policies, pools, configuration: few, small, and often projected as their whole spec) are
decoded with orjson as before.

Which fields each shape keeps is checked against the projection by a property test
(tests/test_ingest_wire.py): for real objects with any of their fields replaced by any JSON, both
decoders give the same projection, or the same error.
"""

from __future__ import annotations

from typing import Any, Generic, TypedDict, TypeVar

import msgspec
import orjson

__all__ = ["DecodeError", "WatchLines", "decode_event", "decode_list", "fast_resources"]

T = TypeVar("T")

DecodeError = (orjson.JSONDecodeError, msgspec.DecodeError)


class _Meta(TypedDict, total=False):
    name: Any
    namespace: Any
    resourceVersion: Any
    labels: Any
    annotations: Any
    deletionTimestamp: Any


class _Port(TypedDict, total=False):
    containerPort: Any
    hostPort: Any
    name: Any
    protocol: Any
    hostIP: Any


class _Container(TypedDict, total=False):
    ports: list[_Port]


class _PodSpec(TypedDict, total=False):
    nodeName: Any
    hostNetwork: Any
    serviceAccountName: Any
    containers: list[_Container]
    initContainers: list[_Container]


class _PodStatus(TypedDict, total=False):
    podIP: Any
    podIPs: Any
    phase: Any


class _Pod(TypedDict, total=False):
    metadata: _Meta
    spec: _PodSpec
    status: _PodStatus


class _Namespace(TypedDict, total=False):
    metadata: _Meta


class _NodeSpec(TypedDict, total=False):
    podCIDR: Any
    podCIDRs: Any


class _NodeStatus(TypedDict, total=False):
    addresses: Any


class _Node(TypedDict, total=False):
    metadata: _Meta
    spec: _NodeSpec
    status: _NodeStatus


class _Secondary(TypedDict, total=False):
    node: Any


class _Attribute(TypedDict, total=False):
    handle_id: Any
    secondary: _Secondary | None


class _BlockSpec(TypedDict, total=False):
    cidr: Any
    deleted: Any
    affinity: Any
    allocations: Any
    attributes: list[_Attribute | None]  # of each allocation's attributes, only what says who holds it


class _Block(TypedDict, total=False):
    metadata: _Meta
    spec: _BlockSpec


# `continue` is a Python keyword: the functional form.
_ListMeta = TypedDict("_ListMeta", {"resourceVersion": Any, "continue": Any}, total=False)

_SHAPES: dict[str, type] = {"pods": _Pod, "namespaces": _Namespace, "nodes": _Node, "ipamblocks": _Block}


class _Event(TypedDict, Generic[T], total=False):
    type: Any
    object: T


class _Page(TypedDict, Generic[T], total=False):
    metadata: _ListMeta
    items: list[T]


def _decoders(shape: type) -> tuple[msgspec.json.Decoder[Any], msgspec.json.Decoder[Any]]:
    return msgspec.json.Decoder(_Event[shape]), msgspec.json.Decoder(_Page[shape])  # type: ignore[valid-type]


_DECODERS = {name: _decoders(shape) for name, shape in _SHAPES.items()}


def fast_resources() -> frozenset[str]:
    """The resources decoded by shape (the rest with orjson)."""
    return frozenset(_DECODERS)


def decode_event(resource: str, line: bytes | memoryview) -> Any:
    """One watch line: ``{"type": ..., "object": ...}`` with only what the projection reads of the object.

    Raises one of `DecodeError` for a line that is not JSON.
    """
    decoders = _DECODERS.get(resource)
    if decoders is not None:
        try:
            ev = decoders[0].decode(line)
        except msgspec.ValidationError:
            pass  # valid JSON of another shape: the full decode below, and the projection, judge it
        else:
            if ev.get("type") != "ERROR":
                return ev
    return orjson.loads(line)


def decode_list(resource: str, body: bytes) -> Any:
    """A list response: ``{"metadata": {...}, "items": [...]}``, items trimmed like `decode_event`'s objects.

    Raises one of `DecodeError` for a body that is not JSON.
    """
    decoders = _DECODERS.get(resource)
    if decoders is not None:
        try:
            return decoders[1].decode(body)
        except msgspec.ValidationError:
            pass
    return orjson.loads(body)


class WatchLines:
    """A watch stream's bytes -> its complete lines, as views into the chunks they arrived in.

    The API server writes whatever is queued in one go, so under load a chunk holds a thousand events
    (3.5 MB): `bytes.split` allocated and copied every line (2 us per event, measured), and
    `pending += chunk` copied the chunk again whenever the previous one ended mid-line, which is nearly
    always. Here the lines are memoryviews (msgspec and orjson decode them as they are), and only the
    one line that spans two chunks is joined.
    """

    __slots__ = ("_partial",)

    def __init__(self) -> None:
        self._partial: list[bytes] = []  # pieces of a line not yet ended

    def feed(self, chunk: bytes) -> list[memoryview | bytes]:
        find = chunk.find
        nl = find(b"\n")
        if nl < 0:
            if chunk:
                self._partial.append(chunk)
            return []
        view = memoryview(chunk)
        lines: list[memoryview | bytes] = []
        if self._partial:
            self._partial.append(chunk[:nl])
            lines.append(b"".join(self._partial))
            self._partial = []
        elif nl:
            lines.append(view[:nl])
        pos = nl + 1
        while (nl := find(b"\n", pos)) >= 0:
            if nl > pos:
                lines.append(view[pos:nl])
            pos = nl + 1
        if pos < len(chunk):
            self._partial.append(chunk[pos:])
        return lines
