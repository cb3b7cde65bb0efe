"""Bad input to the API emulator: every one a clean Kubernetes Status (4xx), never a 500, never stored.

Regression tests for issue 9, items 11 and 12: malformed metadata that used to answer 500
in plain text, invalid labels that used to be stored and then broke every selector list
and watch over them, bodies without a size limit, and Content-Types that were accepted.
"""

from __future__ import annotations

import json
from typing import Any

import aiohttp
import orjson
import pytest

from loadtest.apiserver import ApiError, Store, make_calico_object, make_pod, start_apiserver
from loadtest.apiserver.decode import MAX_BODY_BYTES, MAX_DEPTH, decode_body, delete_preconditions
from loadtest.apiserver.patch import JSON_PATCH, apply_patch
from loadtest.apiserver.selectors import LabelSelector

pytestmark = pytest.mark.timeout(60)
TOKEN = "t"


# ---- store level: validated on every write path -----------------------------------------


@pytest.mark.parametrize(
    ("body", "code", "reason"),
    [
        ({"metadata": "x"}, 400, "BadRequest"),
        ({"metadata": {"name": 123}}, 400, "BadRequest"),
        ({"metadata": {"generateName": 5}}, 400, "BadRequest"),
        ({"metadata": {"name": "a"}, "spec": [1]}, 400, "BadRequest"),
        ({"metadata": {"name": "a", "labels": ["x"]}}, 400, "BadRequest"),
        ({"metadata": {"name": "a", "labels": {"x": 1}}}, 400, "BadRequest"),
        ({"metadata": {"name": "a", "finalizers": "kubernetes"}}, 400, "BadRequest"),
        ({"metadata": {"name": "a", "labels": {"bad key": "v"}}}, 422, "Invalid"),
        ({"metadata": {"name": "a", "labels": {"k": "v" * 64}}}, 422, "Invalid"),
        ({"metadata": {"name": "a", "annotations": {"-bad": "v"}}}, 422, "Invalid"),
        ({"metadata": {"name": "a", "annotations": {"k": "v" * (256 * 1024)}}}, 422, "Invalid"),
        ({"metadata": {"name": "Bad_NS"}}, 422, "Invalid"),
        ({"metadata": {"name": "a" * 64}}, 422, "Invalid"),
        ({"metadata": {"name": "a.b"}}, 422, "Invalid"),  # a namespace name is a DNS-1123 label
        ({"metadata": {"generateName": "Bad_"}}, 422, "Invalid"),
    ],
)
def test_bad_namespace_is_a_status_and_not_stored(body: dict[str, Any], code: int, reason: str) -> None:
    s = Store()
    before, rv = s.count("namespaces"), s.rv
    with pytest.raises(ApiError) as ei:
        s.create_object("namespaces", body, strategy=True)
    assert (ei.value.code, ei.value.reason) == (code, reason), ei.value.message
    assert ei.value.status["kind"] == "Status" and ei.value.status["code"] == code
    if code == 422:
        causes = ei.value.status["details"]["causes"]
        assert causes and all(c["field"].startswith("metadata.") for c in causes)
    assert s.count("namespaces") == before and s.rv == rv  # nothing stored, no revision used


def test_invalid_label_causes_name_each_problem() -> None:
    s = Store()
    with pytest.raises(ApiError) as ei:
        s.create("pods", make_pod("default", "p", "n", None, labels={"a/b/c": "x", "ok": "-bad-"}))
    causes = ei.value.status["details"]["causes"]
    assert len(causes) == 2 and {c["reason"] for c in causes} == {"FieldValueInvalid"}
    assert ei.value.message.startswith('Pod "p" is invalid: [metadata.labels: Invalid value: "a/b/c"')


def test_custom_resource_shape_errors_are_422() -> None:
    s = Store()
    with pytest.raises(ApiError) as ei:
        s.create("ippools", {"metadata": {"name": "p", "labels": [1]}, "spec": {}})
    assert ei.value.code == 422
    assert ei.value.status["details"]["causes"][0]["field"] == "metadata.labels"


def test_bad_labels_via_update_and_patch_are_refused_and_the_object_is_unchanged() -> None:
    s = Store()
    p = s.create("pods", make_pod("default", "p", "n", None, labels={"app": "web"}))
    rv = s.rv
    p["metadata"]["labels"] = {"app": ["web"]}
    with pytest.raises(ApiError) as ei:
        s.update("pods", p)
    assert ei.value.code == 400
    with pytest.raises(ApiError) as ei:
        s.patch("pods", "p", {"metadata": {"labels": {"app": 7}}}, namespace="default")
    assert ei.value.code == 400
    with pytest.raises(ApiError) as ei:
        s.patch(
            "pods",
            "p",
            [{"op": "add", "path": "/metadata/labels/a~1b~1c", "value": "x"}],
            namespace="default",
            content_type=JSON_PATCH,
        )
    assert ei.value.code == 422
    assert s.rv == rv and s.get("pods", "p", "default")["metadata"]["labels"] == {"app": "web"}


def test_null_spec_and_labels_are_absent_fields() -> None:
    s = Store()
    ns = s.create_object("namespaces", {"metadata": {"name": "n1", "labels": None}, "spec": None}, strategy=True)
    d = ns.to_dict()
    # A null is an absent field; the only label is the one kube-apiserver gives every namespace.
    assert d["spec"] == {"finalizers": ["kubernetes"]} and d["metadata"]["labels"] == {
        "kubernetes.io/metadata.name": "n1"
    }


class _Exploding(LabelSelector):
    """A selector that raises, standing in for any bug met while rendering an event."""

    def matches(self, labels: Any) -> bool:
        raise RuntimeError("selector exploded")


def test_one_failing_watcher_never_breaks_the_fanout_or_the_write() -> None:
    s = Store()
    good = s.watch("pods", resource_version=str(s.rv))
    bad = s.watch("pods", resource_version=str(s.rv), label_selector="app=web")

    bad.label_selector = _Exploding(bad.label_selector.reqs)
    out = s.create("pods", make_pod("default", "p", "n", None, labels={"app": "web"}))
    assert out["metadata"]["name"] == "p"  # the write committed and returned
    assert bad.closed and bad.close_reason == "error"
    assert [json.loads(x)["type"] for x in good.drain()] == ["ADDED"]
    assert s.stats.resource("pods").watches_failed == 1
    # later events still reach the healthy watcher
    s.patch("pods", "p", {"metadata": {"labels": {"v": "2"}}}, namespace="default")
    assert [json.loads(x)["type"] for x in good.drain()] == ["MODIFIED"]


def test_a_failing_initial_listing_closes_only_that_watch() -> None:
    s = Store()
    s.create("pods", make_pod("default", "p", "n", None, labels={"app": "web"}))
    w = s.watch("pods", label_selector="app=web")
    ok = s.watch("pods")
    w.label_selector = _Exploding(w.label_selector.reqs)
    assert w.next_initial(10) == [] and w.closed and w.close_reason == "error"
    assert len(ok.next_initial(10)) == 1


# ---- request decoding as plain functions ------------------------------------------------


def test_decode_body_limits_and_media_types() -> None:
    assert decode_body(b'{"a":1}', None) == {"a": 1}
    assert decode_body(b'{"a":1}', "application/json; charset=utf-8") == {"a": 1}
    for ct in ("text/plain", "application/yaml", "application/vnd.kubernetes.protobuf", "application/merge-patch+json"):
        with pytest.raises(ApiError) as ei:
            decode_body(b"{}", ct)
        assert ei.value.code == 415 and ei.value.reason == "UnsupportedMediaType"
    with pytest.raises(ApiError) as ei:
        decode_body(b"{" + b" " * MAX_BODY_BYTES + b"}", None)
    assert ei.value.code == 413 and ei.value.reason == "RequestEntityTooLarge"
    deep = b"[" * (MAX_DEPTH + 1) + b"]" * (MAX_DEPTH + 1)
    with pytest.raises(ApiError) as ei:
        decode_body(deep, None)
    assert ei.value.code == 400
    for bad in (b"", b"{", b"\xff", b"NaN"):
        with pytest.raises(ApiError) as ei:
            decode_body(bad, None)
        assert ei.value.code == 400


def test_delete_options_and_json_patch_garbage_are_4xx() -> None:
    assert delete_preconditions(b"", None) is None
    assert delete_preconditions(b'{"preconditions":{"uid":"u"}}', None) == {"uid": "u"}
    for bad in (b"[1]", b'{"preconditions":5}', b'{"preconditions":{"uid":5}}'):
        with pytest.raises(ApiError) as ei:
            delete_preconditions(bad, None)
        assert ei.value.code == 400
    doc = {"metadata": {"name": "x"}, "a": [1]}
    for ops, code in (
        ([{"op": "remove", "path": ""}], 422),
        ([{"op": "add", "path": 5, "value": 1}], 400),
        ([{"op": "add", "path": "/a/01", "value": 1}], 422),
        ([{"op": "move", "from": "/metadata", "path": "/metadata/x"}], 422),
        ([{"op": "copy", "from": 7, "path": "/b"}], 400),
    ):
        with pytest.raises(ApiError) as ei:
            apply_patch(doc, ops, JSON_PATCH)
        assert ei.value.code == code, ops
    # a JSON patch cannot nest an object past the depth limit either
    deep: Any = 1
    for _ in range(MAX_DEPTH - 1):
        deep = [deep]
    with pytest.raises(ApiError) as ei:
        apply_patch(doc, [{"op": "add", "path": "/b", "value": [deep]}], JSON_PATCH)
    assert ei.value.code == 400


# ---- over HTTP ----------------------------------------------------------------------------


@pytest.fixture
async def server():
    h = await start_apiserver(token=TOKEN)
    try:
        yield h
    finally:
        await h.stop()


async def req(h: Any, method: str, path: str, **kw: Any) -> tuple[int, str, Any]:
    headers = {"Authorization": f"Bearer {TOKEN}", **kw.pop("headers", {})}
    async with (
        aiohttp.ClientSession() as sess,
        sess.request(method, h.url + path, ssl=h.client_ssl_context(), headers=headers, **kw) as r,
    ):
        body = await r.read()
        return r.status, r.content_type, orjson.loads(body) if body else None


@pytest.mark.slow
async def test_http_bad_namespaces_get_json_status_and_selectors_keep_working(server) -> None:
    h = server
    ok = {"metadata": {"name": "good", "labels": {"team": "a"}}}
    assert (await req(h, "POST", "/api/v1/namespaces", json=ok))[0] == 201
    for body in (
        {"metadata": "x"},
        {"metadata": {"name": 123}},
        {"metadata": {"generateName": 5}},
        {"metadata": {"name": "a"}, "spec": [1]},
        {"metadata": {"name": "b", "labels": ["team"]}},
        {"metadata": {"name": "c", "labels": {"team": 1}}},
        {"metadata": {"name": "d", "labels": {"te am": "a"}}},
    ):
        status, ctype, st = await req(h, "POST", "/api/v1/namespaces", json=body)
        assert 400 <= status < 500 and ctype == "application/json", (body, status)
        assert st["kind"] == "Status" and st["code"] == status
    status, _, lst = await req(h, "GET", "/api/v1/namespaces?labelSelector=team")
    assert status == 200 and [i["metadata"]["name"] for i in lst["items"]] == ["good"]
    async with (
        aiohttp.ClientSession() as sess,
        sess.get(
            h.url + "/api/v1/namespaces?watch=1&resourceVersion=0&labelSelector=team&timeoutSeconds=1",
            ssl=h.client_ssl_context(),
            headers={"Authorization": f"Bearer {TOKEN}"},
        ) as r,
    ):
        lines = [json.loads(x) for x in (await r.read()).splitlines()]
    assert [(e["type"], e["object"]["metadata"]["name"]) for e in lines] == [("ADDED", "good")]
    assert (
        await req(
            h,
            "PATCH",
            "/api/v1/namespaces/good",
            json={"metadata": {"labels": {"x": "y"}}},
            headers={"Content-Type": "application/merge-patch+json"},
        )
    )[0] == 200
    assert h.stats.internal_errors == 0


@pytest.mark.slow
async def test_http_body_limit_media_types_and_garbage_endpoints(server) -> None:
    h = server
    big = {"metadata": {"name": "big", "annotations": {"k": "v" * MAX_BODY_BYTES}}}
    status, _, st = await req(h, "POST", "/api/v1/namespaces", json=big)
    assert (status, st["reason"]) == (413, "RequestEntityTooLarge") and st["kind"] == "Status"

    async def chunks():  # no Content-Length: aiohttp must stop reading at the limit too
        for _ in range(4):
            yield b" " * (1024 * 1024)

    status, _, st = await req(
        h, "POST", "/api/v1/namespaces", data=chunks(), headers={"Content-Type": "application/json"}
    )
    assert (status, st["reason"]) == (413, "RequestEntityTooLarge")
    body = orjson.dumps({"metadata": {"name": "plain"}})
    status, _, st = await req(h, "POST", "/api/v1/namespaces", data=body, headers={"Content-Type": "text/plain"})
    assert (status, st["reason"]) == (415, "UnsupportedMediaType")
    status, _, st = await req(h, "POST", "/api/v1/namespaces", data=body)  # aiohttp: application/octet-stream
    assert status == 415
    # no Content-Type at all: JSON, as in kube
    status, _, _ = await req(h, "POST", "/api/v1/namespaces", data=body, skip_auto_headers=("Content-Type",))
    assert status == 201
    status, _, st = await req(
        h, "PATCH", "/api/v1/namespaces/plain", data=b"{}", headers={"Content-Type": "application/json"}
    )
    assert status == 415
    status, _, st = await req(
        h,
        "DELETE",
        "/api/v1/namespaces/plain",
        data=b'{"preconditions": 3}',
        headers={"Content-Type": "application/json"},
    )
    assert status == 400
    status, _, st = await req(h, "POST", "/emulator/forbidden", json=["pods"])
    assert status == 400
    status, _, st = await req(h, "POST", "/emulator/forbidden", json={"add": "pods"})
    assert status == 400 and h.config.forbidden == set()
    status, _, _ = await req(
        h,
        "POST",
        "/apis/crd.projectcalico.org/v1/ippools",
        json=make_calico_object("IPPool", "p", {"cidr": "10.0.0.0/16"}),
    )
    assert status == 201
    assert h.stats.internal_errors == 0 and h.store.count("namespaces") == 5
