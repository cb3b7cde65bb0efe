"""typha.k8s.wire: decoding only the projected fields changes nothing the projection produces."""

from __future__ import annotations

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.support.k8s_objects import VALID, garbled
from typha.datastores.kubernetes import ResourceStats, parse_watch_lines
from typha.ingest import _ident, _revision
from typha.k8s.projection import ProjectionError, project, project_delete
from typha.k8s.wire import WatchLines, decode_event, decode_list, fast_resources

FAST = sorted(fast_resources())


def outcome(fn, resource: str, obj: object) -> object:
    try:
        return fn(resource, obj)
    except ProjectionError as exc:
        return f"ProjectionError: {exc}"


def same_projection(resource: str, trimmed: object, full: object) -> None:
    assert outcome(project, resource, trimmed) == outcome(project, resource, full)
    assert outcome(project_delete, resource, trimmed) == outcome(project_delete, resource, full)
    if isinstance(trimmed, dict) and isinstance(full, dict):
        assert _ident(resource, trimmed) == _ident(resource, full)
        assert _revision(trimmed) == _revision(full)


def test_the_high_volume_kinds_are_decoded_by_shape() -> None:
    assert FAST == ["ipamblocks", "namespaces", "nodes", "pods"]
    pod = VALID["pods"][0]
    assert "managedFields" in pod["metadata"] and "conditions" in pod["status"]
    ev = decode_event("pods", orjson.dumps({"type": "MODIFIED", "object": pod}))
    obj = ev["object"]
    assert ev["type"] == "MODIFIED" and "managedFields" not in obj["metadata"] and "conditions" not in obj["status"]
    same_projection("pods", obj, pod)
    # Other kinds keep everything (their value is often the spec as it is).
    policy = VALID["networkpolicies"][0]
    assert decode_event("networkpolicies", orjson.dumps({"type": "ADDED", "object": policy}))["object"] == policy


@pytest.mark.parametrize("resource", FAST)
def test_every_valid_object_projects_identically(resource: str) -> None:
    items = VALID[resource]
    page = decode_list(resource, orjson.dumps({"metadata": {"resourceVersion": "9", "continue": "c"}, "items": items}))
    assert page["metadata"] == {"resourceVersion": "9", "continue": "c"}
    assert len(page["items"]) == len(items)
    for trimmed, full in zip(page["items"], items):
        same_projection(resource, trimmed, full)
        assert outcome(project, resource, trimmed) == outcome(project, resource, full)


@settings(max_examples=600, deadline=None)
@given(garbled(FAST), st.sampled_from(["ADDED", "MODIFIED", "DELETED"]))
def test_any_object_projects_the_same_however_it_was_decoded(item: tuple[str, object], etype: str) -> None:
    resource, obj = item
    line = orjson.dumps({"type": etype, "object": obj})
    fast = decode_event(resource, line)
    full = orjson.loads(line)
    assert fast["type"] == full["type"]
    same_projection(resource, fast["object"], full["object"])
    # Through the watch parser (what the datastore calls) and as one item of a listed page.
    st_fast, st_full = ResourceStats(), ResourceStats()
    ev_fast, rv_fast = parse_watch_lines([line], st_fast, resource)
    ev_full, rv_full = parse_watch_lines([line], st_full)
    assert rv_fast == rv_full and st_fast.malformed == st_full.malformed and len(ev_fast) == len(ev_full)
    for (t1, o1), (t2, o2) in zip(ev_fast, ev_full):
        assert t1 == t2
        same_projection(resource, o1, o2)
    page = decode_list(
        resource, orjson.dumps({"metadata": {"resourceVersion": "1"}, "items": [obj, VALID[resource][0]]})
    )
    same_projection(resource, page["items"][0], obj)


def test_errors_and_bookmarks_keep_what_the_watch_needs() -> None:
    st_ = ResourceStats()
    bookmark = b'{"type":"BOOKMARK","object":{"kind":"Pod","metadata":{"resourceVersion":"77","annotations":{"k8s.io/initial-events-end":"true"}}}}'
    assert parse_watch_lines([bookmark], st_, "pods") == ([], "77")
    gone = b'{"type":"ERROR","object":{"kind":"Status","code":410,"message":"too old resource version: 5 (9)"}}'
    with pytest.raises(Exception, match="too old"):
        parse_watch_lines([gone], st_, "pods")
    assert parse_watch_lines([b"not json", b'{"type":"ADDED","object":[]}'], st_, "pods") == ([], None)
    assert st_.malformed == 2


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.sampled_from([b'{"a":1}', b"", b" ", b"x" * 40, b'{"type":"ADDED"}']), max_size=12),
    st.binary(max_size=6).filter(lambda b: b"\n" not in b),
    st.lists(st.integers(0, 400), max_size=6),
)
def test_watch_lines_are_the_same_however_the_stream_is_cut(lines: list[bytes], tail: bytes, cuts: list[int]) -> None:
    data = b"".join(line + b"\n" for line in lines) + tail
    points = sorted({min(c, len(data)) for c in cuts})
    pieces = [data[a:b] for a, b in zip([0, *points], [*points, len(data)])]
    stream = WatchLines()
    got = [bytes(line) for piece in pieces for line in stream.feed(piece)]
    assert got == [line for line in lines if line]  # empty lines are no events; the unfinished tail waits
    assert [bytes(x) for x in stream.feed(b"\n")] == ([tail] if tail else [])
