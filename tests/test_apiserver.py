"""Tests for the Kubernetes API-server emulator (loadtest.apiserver).

Two layers:
- pure store tests (no sockets): revisions, pagination snapshots, retained window / 410,
  selectors, patches, watch fan-out and selector transitions;
- end-to-end tests over HTTPS on loopback using the unmodified kubernetes-asyncio client
  configured from the kubeconfig the emulator writes.

Waiting is always on a condition with a timeout (``wait_until``), never a bare sleep.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from kubernetes_asyncio import client, config, watch
from kubernetes_asyncio.client.exceptions import ApiException

from loadtest.apiserver import ApiError, Store, make_calico_object, make_node, make_pod, start_apiserver
from loadtest.apiserver.listing import decode_continue
from loadtest.apiserver.patch import JSON_PATCH, MERGE, STRATEGIC, apply_patch, merge_patch
from loadtest.apiserver.routing import parse_path
from loadtest.apiserver.selectors import parse_field_selector, parse_label_selector

pytestmark = pytest.mark.timeout(30)

TOKEN = "test-token"
CALICO = "crd.projectcalico.org"


async def wait_until(pred: Callable[[], bool | Awaitable[bool]], timeout: float = 5.0, what: str = "condition") -> None:
    """Poll ``pred`` until true; fail after ``timeout`` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        r = pred()
        if asyncio.iscoroutine(r):
            r = await r
        if r:
            return
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


def pod(
    name: str,
    ns: str = "default",
    node: str = "node-1",
    ip: str | None = "10.0.0.1",
    labels: dict[str, str] | None = None,
) -> dict[str, Any]:
    return make_pod(ns, name, node, ip, labels=labels)


# ======================================================================================
# Pure store tests
# ======================================================================================


def test_create_stamps_metadata_and_bumps_rv() -> None:
    s = Store(seed_namespaces=())
    rv0 = s.rv
    p = s.create("pods", pod("a"))
    md = p["metadata"]
    assert md["resourceVersion"] == str(rv0 + 1) and s.rv == rv0 + 1
    assert md["uid"] and md["creationTimestamp"].endswith("Z") and md["generation"] == 1
    assert p["kind"] == "Pod" and p["apiVersion"] == "v1"
    # in-process create keeps status (like writing etcd directly) ...
    assert p["status"]["podIP"] == "10.0.0.1"
    # ... the REST strategy (HTTP path) resets it like PodStrategy.PrepareForCreate
    q = s.create_object("pods", pod("b"), strategy=True).to_dict()
    assert q["status"] == {"phase": "Pending"}
    with pytest.raises(ApiError) as ei:
        s.create("pods", pod("a"))
    assert ei.value.code == 409 and ei.value.reason == "AlreadyExists"
    assert ei.value.status["message"] == 'pods "a" already exists'
    ippool = s.create("ippools", make_calico_object("IPPool", "pool", {"cidr": "10.0.0.0/16"}))
    assert ippool["apiVersion"] == "crd.projectcalico.org/v1" and "namespace" not in ippool["metadata"]
    with pytest.raises(ApiError) as ei:
        s.create("pods", pod("Bad_Name"))
    assert ei.value.code == 422
    gen = s.create("pods", {"metadata": {"generateName": "web-", "namespace": "default"}})
    assert gen["metadata"]["name"].startswith("web-") and len(gen["metadata"]["name"]) == 9


def test_update_conflict_generation_and_noop() -> None:
    s = Store(seed_namespaces=())
    cur = s.create(
        "networkpolicies.crd.projectcalico.org",
        make_calico_object("NetworkPolicy", "np", {"order": 1}, namespace="default"),
    )
    rv1 = s.rv
    cur["spec"]["order"] = 2
    upd = s.update("networkpolicies.crd.projectcalico.org", cur)
    assert upd["metadata"]["generation"] == 2 and int(upd["metadata"]["resourceVersion"]) == rv1 + 1
    # stale resourceVersion -> 409 Conflict
    with pytest.raises(ApiError) as ei:
        s.update("networkpolicies.crd.projectcalico.org", cur)
    assert ei.value.code == 409 and ei.value.reason == "Conflict"
    assert "the object has been modified" in ei.value.message
    # label-only change: new RV, same generation
    upd["metadata"]["labels"] = {"x": "y"}
    upd2 = s.update("networkpolicies.crd.projectcalico.org", upd)
    assert upd2["metadata"]["generation"] == 2
    # no-op update: no new revision
    rv = s.rv
    same = s.update("networkpolicies.crd.projectcalico.org", upd2)
    assert s.rv == rv and same["metadata"]["resourceVersion"] == upd2["metadata"]["resourceVersion"]
    # CRs need a resourceVersion on PUT under REST semantics
    no_rv = dict(upd2, metadata={k: v for k, v in upd2["metadata"].items() if k != "resourceVersion"})
    with pytest.raises(ApiError) as ei:
        s.update_object("networkpolicies.crd.projectcalico.org", no_rv, strategy=True)
    assert ei.value.code == 422
    with pytest.raises(ApiError) as ei:
        s.update("pods", pod("missing"))
    assert ei.value.code == 404 and ei.value.reason == "NotFound"


def test_status_subresource_semantics() -> None:
    s = Store(seed_namespaces=())
    p = s.create("pods", pod("a", ip=None))
    p["status"] = {"phase": "Running", "podIP": "10.9.9.9"}
    p["spec"]["nodeName"] = "other"
    # main-resource PUT (REST strategy) ignores status
    out = s.update_object("pods", p, strategy=True).to_dict()
    assert out["status"]["phase"] == "Pending" and out["spec"]["nodeName"] == "other"
    # /status PUT changes only status
    out["status"] = {"phase": "Running", "podIP": "10.9.9.9"}
    out["spec"]["nodeName"] = "ignored"
    st_ = s.update_object("pods", out, subresource="status", strategy=True).to_dict()
    assert st_["status"]["podIP"] == "10.9.9.9" and st_["spec"]["nodeName"] == "other"
    assert st_["metadata"]["generation"] == out["metadata"]["generation"]
    with pytest.raises(ApiError) as ei:
        s.update_object("ippools", make_calico_object("IPPool", "x", {}), subresource="status")
    assert ei.value.code == 404


def test_patch_types_and_precondition() -> None:
    s = Store(seed_namespaces=())
    s.create("nodes", make_node("n1", "10.0.0.1"))
    out = s.patch("nodes", "n1", {"metadata": {"labels": {"a": "b", "kubernetes.io/os": None}}})
    assert out["metadata"]["labels"]["a"] == "b" and "kubernetes.io/os" not in out["metadata"]["labels"]
    out = s.patch(
        "nodes", "n1", [{"op": "add", "path": "/metadata/annotations/x", "value": "1"}], content_type=JSON_PATCH
    )
    assert out["metadata"]["annotations"]["x"] == "1"
    out = s.patch("nodes", "n1", {"$setElementOrder/x": [], "spec": {"unschedulable": True}}, content_type=STRATEGIC)
    assert out["spec"]["unschedulable"] is True and "$setElementOrder/x" not in out
    with pytest.raises(ApiError) as ei:
        s.patch("nodes", "n1", {"metadata": {"resourceVersion": "1"}, "spec": {}})
    assert ei.value.code == 409
    with pytest.raises(ApiError) as ei:
        s.patch("nodes", "n1", {"a": 1}, content_type=JSON_PATCH)  # object is not a JSON patch
    assert ei.value.code == 400
    with pytest.raises(ApiError) as ei:
        s.patch("nodes", "n1", {}, content_type="application/apply-patch+yaml")
    assert ei.value.code == 415


def test_merge_and_json_patch_units() -> None:
    assert merge_patch({"a": {"b": 1, "c": 2}, "l": [1]}, {"a": {"b": None, "d": 3}, "l": [2]}) == {
        "a": {"c": 2, "d": 3},
        "l": [2],
    }
    doc = {"a": [1, 2, 3], "b": {"c": 1}}
    out = apply_patch(
        doc,
        [
            {"op": "remove", "path": "/a/0"},
            {"op": "add", "path": "/a/-", "value": 4},
            {"op": "replace", "path": "/b/c", "value": 2},
            {"op": "test", "path": "/b/c", "value": 2},
            {"op": "copy", "from": "/b", "path": "/d"},
            {"op": "move", "from": "/d/c", "path": "/e"},
        ],
        JSON_PATCH,
    )
    assert out == {"a": [2, 3, 4], "b": {"c": 2}, "d": {}, "e": 2}
    assert doc == {"a": [1, 2, 3], "b": {"c": 1}}  # input untouched
    with pytest.raises(ApiError):
        apply_patch(doc, [{"op": "test", "path": "/b/c", "value": 9}], JSON_PATCH)
    assert apply_patch(doc, {"b": {"c": None}}, MERGE) == {"a": [1, 2, 3], "b": {}}


def test_delete_and_finalizers() -> None:
    s = Store(seed_namespaces=())
    s.create("pods", pod("a"))
    gone = s.delete("pods", "a", namespace="default")
    assert int(gone["metadata"]["resourceVersion"]) == s.rv
    with pytest.raises(ApiError) as ei:
        s.delete("pods", "a", namespace="default")
    assert ei.value.code == 404
    p = pod("f")
    p["metadata"]["finalizers"] = ["example.com/x"]
    s.create("pods", p)
    with pytest.raises(ApiError) as ei:
        s.delete("pods", "f", namespace="default", preconditions={"uid": "wrong"})
    assert ei.value.code == 409
    pending = s.delete("pods", "f", namespace="default")
    assert pending["metadata"]["deletionTimestamp"]
    assert s.get("pods", "f", "default")["metadata"]["deletionTimestamp"]
    pending["metadata"]["finalizers"] = []
    s.update("pods", pending)
    with pytest.raises(ApiError):
        s.get("pods", "f", "default")


def test_label_selector_parsing_and_matching() -> None:
    L = {"app": "web", "tier": "fe", "n": "5"}
    cases = {
        "": True,
        "app": True,
        "!app": False,
        "!missing": True,
        "app=web": True,
        "app==web": True,
        "app!=web": False,
        "app!=db": True,
        "missing!=x": True,
        "app in (web, db)": True,
        "app notin (web)": False,
        "tier notin (be)": True,
        "missing in (a)": False,
        "app=web,tier=fe": True,
        "app=web,tier=be": False,
        "n>4": True,
        "n<5": False,
        "example.com/role": False,
        "app in (db,)": False,
    }
    for sel, want in cases.items():
        assert parse_label_selector(sel).matches(L) is want, sel
    for bad in ("app=", "=x", "app in web", "app in (a", "a,,b", "app=web,", "n>x", "bad key=1"):
        if bad == "app=":  # empty value is legal: matches label == ""
            assert parse_label_selector(bad).matches({"app": ""})
            continue
        with pytest.raises(ApiError) as ei:
            parse_label_selector(bad)
        assert ei.value.code == 400, bad


def test_field_selector_parsing() -> None:
    fl = ("spec.nodeName", "status.phase")
    fs = parse_field_selector("spec.nodeName=n1,metadata.namespace!=kube-system", fl)
    assert fs.matches("p", "default", ("n1", "Running"))
    assert not fs.matches("p", "kube-system", ("n1", "Running"))
    assert not fs.matches("p", "default", ("n2", None))
    assert parse_field_selector("spec.nodeName=", fl).matches("p", "default", (None, None))
    with pytest.raises(ApiError) as ei:
        parse_field_selector("spec.foo=bar", fl)
    assert ei.value.code == 400 and "not a known field selector" in ei.value.message


def test_list_pagination_is_consistent_snapshot() -> None:
    s = Store(seed_namespaces=(), window_size=1000)
    for i in range(25):
        s.create("pods", pod(f"p{i:02d}"))
    page = s.list("pods", limit=10)
    snap = page.resource_version
    assert len(page.items) == 10 and page.continue_token and page.remaining == 15
    # concurrent writes after the snapshot: delete an unseen one, add new, modify one
    s.delete("pods", "p20", namespace="default")
    s.create("pods", pod("p12a"))
    s.patch("pods", "p15", {"metadata": {"labels": {"changed": "yes"}}}, namespace="default")
    names = [o.name for o in page.items]
    token = page.continue_token
    while token:
        page = s.list("pods", limit=10, continue_=token)
        assert page.resource_version == snap
        names += [o.name for o in page.items]
        for o in page.items:
            if o.name == "p15":
                assert "changed" not in o.to_dict()["metadata"].get("labels", {})
        token = page.continue_token
    assert names == [f"p{i:02d}" for i in range(25)]
    # a fresh list sees the new state
    now = [o.name for o in s.list("pods").items]
    assert "p20" not in now and "p12a" in now
    # namespaced list and all-namespaces list
    s.create("pods", pod("other", ns="kube-system"))
    assert [o.name for o in s.list("pods", "kube-system").items] == ["other"]
    assert len(s.list("pods").items) == 26
    with pytest.raises(ApiError) as ei:
        s.list("pods", continue_="garbage!")
    assert ei.value.code == 400


def test_continue_expires_when_window_rolls_over_or_compacts() -> None:
    s = Store(seed_namespaces=(), window_size=5)
    for i in range(10):
        s.create("nodes", make_node(f"n{i}", "10.0.0.1"))
    page = s.list("nodes", limit=3)
    for i in range(3):  # 3 events < window: still consistent
        s.patch("nodes", f"n{i + 5}", {"metadata": {"labels": {"x": "1"}}})
    assert len(s.list("nodes", limit=3, continue_=page.continue_token).items) == 3
    for i in range(6):  # roll the window past the snapshot
        s.patch("nodes", f"n{i}", {"metadata": {"labels": {"x": "2"}}})
    with pytest.raises(ApiError) as ei:
        s.list("nodes", limit=3, continue_=page.continue_token)
    e = ei.value
    assert e.code == 410 and e.reason == "Expired" and "continue parameter is too old" in e.message
    # the Status offers an inconsistent continuation, which works
    inconsistent = e.status["metadata"]["continue"]
    assert len(s.list("nodes", limit=100, continue_=inconsistent).items) == 7
    page = s.list("nodes", limit=3)
    s.compact()
    with pytest.raises(ApiError) as ei:
        s.list("nodes", limit=3, continue_=page.continue_token)
    assert ei.value.code == 410


def test_list_resource_version_semantics() -> None:
    s = Store(seed_namespaces=(), window_size=100)
    s.create("nodes", make_node("a", "10.0.0.1"))
    rv_a = s.rv
    s.create("nodes", make_node("b", "10.0.0.2"))
    assert [o.name for o in s.list("nodes", resource_version=str(rv_a), resource_version_match="Exact").items] == ["a"]
    # legacy: RV + limit without match == Exact
    assert len(s.list("nodes", resource_version=str(rv_a), limit=10).items) == 1
    # NotOlderThan / "0" / unset: newest
    assert len(s.list("nodes", resource_version=str(rv_a), resource_version_match="NotOlderThan").items) == 2
    assert s.list("nodes", resource_version="0").resource_version == s.rv
    with pytest.raises(ApiError) as ei:
        s.list("nodes", resource_version=str(s.rv + 10))
    assert ei.value.code == 504 and ei.value.status["details"]["causes"][0]["reason"] == "ResourceVersionTooLarge"
    with pytest.raises(ApiError) as ei:
        s.list("nodes", resource_version_match="Exact")
    assert ei.value.code == 422
    with pytest.raises(ApiError) as ei:
        s.list("nodes", resource_version="0", resource_version_match="Exact")
    assert ei.value.code == 422
    s.compact()
    with pytest.raises(ApiError) as ei:
        s.list("nodes", resource_version=str(rv_a), resource_version_match="Exact")
    assert ei.value.code == 410 and ei.value.message == f"too old resource version: {rv_a} ({s.rv})"


def _lines(w: Any) -> list[dict[str, Any]]:
    out = []
    while True:
        batch = w.next_initial(1000) if w.has_initial() else w.drain()
        if not batch:
            return out
        out += [orjson.loads(b) for b in batch]


def test_watch_initial_replay_and_too_old() -> None:
    s = Store(seed_namespaces=(), window_size=4)
    s.create("pods", pod("a"))
    rv = s.rv
    w_all = s.watch("pods")  # RV unset: synthetic ADDED for current state
    w_from = s.watch("pods", resource_version=str(rv))
    s.create("pods", pod("b"))
    s.patch("pods", "b", {"metadata": {"labels": {"x": "1"}}}, namespace="default")
    s.delete("pods", "a", namespace="default")
    evs = _lines(w_all)
    assert [(e["type"], e["object"]["metadata"]["name"]) for e in evs] == [
        ("ADDED", "a"),
        ("ADDED", "b"),
        ("MODIFIED", "b"),
        ("DELETED", "a"),
    ]
    assert [e["type"] for e in _lines(w_from)] == ["ADDED", "MODIFIED", "DELETED"]
    # a late watcher from rv replays retained events
    assert [e["type"] for e in _lines(s.watch("pods", resource_version=str(rv)))] == ["ADDED", "MODIFIED", "DELETED"]
    for i in range(5):
        s.create("pods", pod(f"x{i}"))
    with pytest.raises(ApiError) as ei:
        s.watch("pods", resource_version=str(rv))
    assert ei.value.code == 410 and ei.value.message.startswith(f"too old resource version: {rv} (")
    # the same bytes object is shared by every watcher of an event
    w1, w2 = s.watch("pods", resource_version=str(s.rv)), s.watch("pods", resource_version=str(s.rv))
    s.create("pods", pod("shared"))
    assert w1.drain()[0] is w2.drain()[0]


def test_watch_selectors_and_transitions() -> None:
    s = Store(seed_namespaces=())
    start = str(s.rv)
    w_lbl = s.watch("pods", resource_version=start, label_selector="app=web")
    w_node = s.watch("pods", resource_version=start, field_selector="spec.nodeName=n1")
    w_ns = s.watch("pods", "other", resource_version=start)
    s.create("pods", pod("p", node="n1", labels={"app": "db"}))
    s.patch("pods", "p", {"metadata": {"labels": {"app": "web"}}}, namespace="default")  # starts matching
    s.patch("pods", "p", {"spec": {"nodeName": "n2"}}, namespace="default")  # leaves n1
    s.patch("pods", "p", {"metadata": {"labels": {"app": "db"}}}, namespace="default")  # stops matching
    s.create("pods", pod("q", ns="other", node="n1"))
    lbl = _lines(w_lbl)
    assert [e["type"] for e in lbl] == ["ADDED", "MODIFIED", "DELETED"]
    # the synthetic DELETED carries the old object at the new revision
    assert lbl[-1]["object"]["metadata"]["labels"]["app"] == "web"
    assert int(lbl[-1]["object"]["metadata"]["resourceVersion"]) == s.rv - 1
    assert [(e["type"], e["object"]["metadata"]["name"]) for e in _lines(w_node)] == [
        ("ADDED", "p"),
        ("MODIFIED", "p"),
        ("DELETED", "p"),
        ("ADDED", "q"),
    ]
    assert [e["object"]["metadata"]["name"] for e in _lines(w_ns)] == ["q"]


def test_slow_watcher_closed_and_cut_and_unwatch() -> None:
    s = Store(seed_namespaces=(), max_watch_queue=3)
    w = s.watch("nodes", resource_version=str(s.rv))
    woken = []
    w.set_notify(lambda: woken.append(1))
    for i in range(5):
        s.create("nodes", make_node(f"n{i}", "10.0.0.1"))
    assert w.closed and w.close_reason == "slow" and woken
    assert s.stats.resource("nodes").watches_closed_slow == 1
    w2 = s.watch("nodes")
    assert s.cut_watches("nodes") == 1 and w2.close_reason == "cut"
    s.unwatch(w)
    s.unwatch(w2)
    s.unwatch(w2)  # idempotent
    assert s.stats.resource("nodes").open_watches == 0 and not s.watchers("nodes")


def test_bulk_load_without_events_forces_relist() -> None:
    s = Store(seed_namespaces=())
    old_rv = str(s.rv)
    w = s.watch("pods", resource_version=old_rv)
    n = s.bulk_load("pods", (pod(f"p{i}") for i in range(100)), emit_events=False)
    assert n == 100 and s.count("pods") == 100 and w.closed
    with pytest.raises(ApiError) as ei:
        s.watch("pods", resource_version=old_rv)
    assert ei.value.code == 410
    assert len(s.list("pods", limit=1000).items) == 100
    w2 = s.watch("pods", resource_version=str(s.rv))
    assert s.bulk_load("pods", [pod("more")]) == 1 and len(w2.drain()) == 1


def test_send_initial_events_bookmark() -> None:
    s = Store(seed_namespaces=())
    s.create("nodes", make_node("a", "10.0.0.1"))
    lines = _lines(s.watch("nodes", resource_version="", send_initial_events=True))
    assert [e["type"] for e in lines] == ["ADDED", "BOOKMARK"]
    assert lines[1]["object"]["metadata"]["annotations"] == {"k8s.io/initial-events-end": "true"}
    assert lines[1]["object"]["metadata"]["resourceVersion"] == str(s.rv)


def test_parse_path_routes() -> None:
    s = Store(seed_namespaces=()).registry
    r = parse_path(s, "/api/v1/namespaces/default/pods/p1/status")
    assert (r.rt.key, r.namespace, r.name, r.subresource) == ("pods", "default", "p1", "status")
    r = parse_path(s, "/api/v1/namespaces/default")
    assert (r.rt.key, r.namespace, r.name) == ("namespaces", None, "default")
    r = parse_path(s, "/api/v1/namespaces/default/status")
    assert (r.rt.key, r.name, r.subresource) == ("namespaces", "default", "status")
    r = parse_path(s, f"/apis/{CALICO}/v1/namespaces/ns1/networkpolicies")
    assert (r.rt.key, r.namespace) == (f"networkpolicies.{CALICO}", "ns1")
    r = parse_path(s, "/apis/networking.k8s.io/v1/networkpolicies")
    assert (r.rt.key, r.namespace) == ("networkpolicies.networking.k8s.io", None)
    assert parse_path(s, "/api/v1/watch/namespaces/x/pods").legacy_watch
    for bad in (
        "/api/v1/pods/p1",
        "/api/v1/nodes/n/status/x",
        "/apis/nope/v1/x",
        "/api/v1/namespaces/x/ippools",
        f"/apis/{CALICO}/v1/ippools/x/status",
        "/foo",
    ):
        with pytest.raises(ApiError) as ei:
            parse_path(s, bad)
        assert ei.value.code == 404, bad


_ops = st.lists(st.tuples(st.sampled_from(["create", "update", "delete"]), st.integers(0, 14)), min_size=1, max_size=40)


@settings(max_examples=60, deadline=None)
@given(before=_ops, during=_ops, limit=st.integers(1, 6))
def test_pagination_matches_reference_snapshot(
    before: list[tuple[str, int]], during: list[tuple[str, int]], limit: int
) -> None:
    """Property: paging through a list while writes happen yields exactly the state at
    the first page's resourceVersion (a reference dict tracks the state)."""
    s = Store(seed_namespaces=(), window_size=1000)
    ref: dict[str, int] = {}

    def apply(op: str, i: int) -> None:
        name = f"n{i:02d}"
        if op == "create" and name not in ref:
            ref[name] = s.create("nodes", make_node(name, "10.0.0.1"))["metadata"]["resourceVersion"]
        elif op == "update" and name in ref:
            ref[name] = s.patch("nodes", name, {"metadata": {"labels": {"v": str(s.rv)}}})["metadata"][
                "resourceVersion"
            ]
        elif op == "delete" and name in ref:
            s.delete("nodes", name)
            del ref[name]

    for op, i in before:
        apply(op, i)
    expected = dict(ref)
    page = s.list("nodes", limit=limit)
    got = {o.name: o.to_dict()["metadata"]["resourceVersion"] for o in page.items}
    remaining = page.remaining
    ops = iter(during)
    while page.continue_token:
        assert remaining == len(expected) - len(got)
        for op, i in [next(ops, ("noop", 0))]:
            apply(op, i)
        page = s.list("nodes", limit=limit, continue_=page.continue_token)
        got.update({o.name: o.to_dict()["metadata"]["resourceVersion"] for o in page.items})
        remaining = page.remaining
    assert got == expected


@settings(max_examples=60, deadline=None)
@given(before=_ops, after=_ops, label=st.sampled_from([None, "v", "!v"]))
def test_exact_list_plus_watch_replay_equals_current_state(
    before: list[tuple[str, int]], after: list[tuple[str, int]], label: str | None
) -> None:
    """Property (the informer contract): list at RV X (Exact), then apply a watch from X,
    gives exactly what a fresh list returns now, also under a label selector whose
    matches change as objects are updated."""
    s = Store(seed_namespaces=(), window_size=1000)

    def apply(op: str, i: int) -> None:
        name = f"n{i:02d}"
        exists = name in {o.name for o in s.list("nodes").items}
        if op == "create" and not exists:
            s.create("nodes", make_node(name, "10.0.0.1"))
        elif op == "update" and exists:
            labels = {"v": str(s.rv)} if s.rv % 2 else None  # toggles selector membership
            s.patch("nodes", name, {"metadata": {"labels": labels}})
        elif op == "delete" and exists:
            s.delete("nodes", name)

    for op, i in before:
        apply(op, i)
    x = str(s.rv)
    for op, i in after:
        apply(op, i)
    state = {
        o.name: o.rv
        for o in s.list("nodes", resource_version=x, resource_version_match="Exact", label_selector=label).items
    }
    for e in _lines(s.watch("nodes", resource_version=x, label_selector=label)):
        name, rv = e["object"]["metadata"]["name"], int(e["object"]["metadata"]["resourceVersion"])
        assert rv > int(x)
        if e["type"] == "DELETED":
            del state[name]
        else:
            assert (name in state) == (e["type"] == "MODIFIED")
            state[name] = rv
    assert state == {o.name: o.rv for o in s.list("nodes", label_selector=label).items}


# ======================================================================================
# HTTPS end-to-end tests with the real kubernetes-asyncio client
# ======================================================================================


@pytest.fixture
async def server():
    h = await start_apiserver(token=TOKEN, bookmark_interval=0.2, window_size=1000, too_large_rv_wait=0.3)
    try:
        yield h
    finally:
        await h.stop()


async def _api_client(h: Any, path: Path, token: str | None = None) -> client.ApiClient:
    kc = h.write_kubeconfig(str(path), token=token)
    cfg = client.Configuration()
    await config.load_kube_config(config_file=kc, client_configuration=cfg)
    return client.ApiClient(cfg)


@pytest.fixture
async def api(server, tmp_path):
    c = await _api_client(server, tmp_path / "kubeconfig")
    try:
        yield c
    finally:
        await c.close()


async def raw_request(h: Any, method: str, path: str, token: str | None = TOKEN, **kw: Any) -> tuple[int, Any]:
    headers = kw.pop("headers", {})
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    async with (
        aiohttp.ClientSession() as sess,
        sess.request(method, h.url + path, ssl=h.client_ssl_context(), headers=headers, **kw) as r,
    ):
        body = await r.read()
        try:
            return r.status, json.loads(body)
        except ValueError:
            return r.status, body


@pytest.mark.slow
async def test_kubeconfig_and_discovery(server, api, tmp_path) -> None:
    text = (tmp_path / "kubeconfig").read_text()
    assert f"https://127.0.0.1:{server.port}" in text and "certificate-authority-data" in text
    assert oct(os.stat(tmp_path / "kubeconfig").st_mode & 0o777) == "0o600"
    ver = await client.VersionApi(api).get_code()
    assert ver.major == "1"
    versions = await client.CoreApi(api).get_api_versions()
    assert versions.versions == ["v1"]
    groups = await client.ApisApi(api).get_api_versions()
    assert {g.name for g in groups.groups} >= {CALICO, "networking.k8s.io", "discovery.k8s.io"}
    res = await client.CoreV1Api(api).get_api_resources()
    names = {r.name for r in res.resources}
    assert {"pods", "pods/status", "nodes", "namespaces", "serviceaccounts"} <= names
    cres = await client.CustomObjectsApi(api).get_api_resources(CALICO, "v1")
    assert {"ippools", "globalnetworkpolicies", "ipamblocks", "bgppeers"} <= {r.name for r in cres.resources}


@pytest.mark.slow
async def test_list_and_crud_with_status_bodies(server, api) -> None:
    v1 = client.CoreV1Api(api)
    nss = await v1.list_namespace()
    assert {n.metadata.name for n in nss.items} >= {"default", "kube-system"}
    assert nss.metadata.resource_version == str(server.store.rv)
    created = await v1.create_namespaced_pod("default", pod("web-1"))
    assert created.status.phase == "Pending" and created.metadata.uid
    with pytest.raises(ApiException) as ei:
        await v1.create_namespaced_pod("default", pod("web-1"))
    body = json.loads(ei.value.body)
    assert ei.value.status == 409 and body["reason"] == "AlreadyExists" and body["kind"] == "Status"
    # PUT with a stale resourceVersion -> 409 Conflict
    fresh = await v1.read_namespaced_pod("web-1", "default")
    fresh.metadata.labels = {"v": "2"}
    await v1.replace_namespaced_pod("web-1", "default", fresh)
    fresh.metadata.labels = {"v": "3"}
    with pytest.raises(ApiException) as ei:
        await v1.replace_namespaced_pod("web-1", "default", fresh)
    assert ei.value.status == 409 and json.loads(ei.value.body)["reason"] == "Conflict"
    # strategic-merge patch (the client's default for dict bodies) and status subresource
    patched = await v1.patch_namespaced_pod("web-1", "default", {"metadata": {"labels": {"v": "4"}}})
    assert patched.metadata.labels == {"v": "4"}
    st_ = await v1.patch_namespaced_pod_status(
        "web-1", "default", {"status": {"phase": "Running", "podIP": "10.1.2.3"}}
    )
    assert st_.status.pod_ip == "10.1.2.3"
    st_.status.phase = "Succeeded"
    st2 = await v1.replace_namespaced_pod_status("web-1", "default", st_)
    assert st2.status.phase == "Succeeded"
    await v1.delete_namespaced_pod("web-1", "default")
    with pytest.raises(ApiException) as ei:
        await v1.read_namespaced_pod("web-1", "default")
    assert ei.value.status == 404 and json.loads(ei.value.body)["reason"] == "NotFound"
    with pytest.raises(ApiException) as ei:
        await v1.delete_namespaced_pod("web-1", "default")
    assert ei.value.status == 404
    # cluster-scoped resources and the all-namespaces path
    await v1.create_node(make_node("node-a", "10.0.0.1"))
    assert [n.metadata.name for n in (await v1.list_node()).items] == ["node-a"]
    await v1.create_namespaced_pod("kube-system", pod("sys", ns="kube-system"))
    await v1.create_namespaced_service_account("default", {"metadata": {"name": "sa1"}})
    assert [p.metadata.name for p in (await v1.list_pod_for_all_namespaces()).items] == ["sys"]
    assert len((await v1.list_namespaced_service_account("default")).items) == 1
    # deletecollection by label
    await v1.create_namespaced_pod("default", pod("d1", labels={"del": "y"}))
    await v1.delete_collection_namespaced_pod("default", label_selector="del=y")
    assert (await v1.list_namespaced_pod("default")).items == []


@pytest.mark.slow
async def test_calico_custom_objects(server, api) -> None:
    co = client.CustomObjectsApi(api)
    gnp = make_calico_object("GlobalNetworkPolicy", "default.allow-dns", {"order": 10, "selector": "all()"})
    out = await co.create_cluster_custom_object(CALICO, "v1", "globalnetworkpolicies", gnp)
    assert out["metadata"]["generation"] == 1
    np_ = make_calico_object("NetworkPolicy", "np1", {"selector": "app == 'x'"}, namespace="default")
    await co.create_namespaced_custom_object(CALICO, "v1", "default", "networkpolicies", np_)
    await co.create_cluster_custom_object(
        CALICO, "v1", "ippools", make_calico_object("IPPool", "pool", {"cidr": "10.0.0.0/16"})
    )
    for plural, kind in (
        ("felixconfigurations", "FelixConfiguration"),
        ("clusterinformations", "ClusterInformation"),
        ("bgpconfigurations", "BGPConfiguration"),
        ("hostendpoints", "HostEndpoint"),
        ("ipamblocks", "IPAMBlock"),
        ("blockaffinities", "BlockAffinity"),
        ("bgppeers", "BGPPeer"),
        ("globalnetworksets", "GlobalNetworkSet"),
    ):
        await co.create_cluster_custom_object(CALICO, "v1", plural, make_calico_object(kind, "default", {}))
    await co.create_namespaced_custom_object(
        CALICO, "v1", "default", "networksets", make_calico_object("NetworkSet", "ns1", {}, namespace="default")
    )
    lst = await co.list_cluster_custom_object(CALICO, "v1", "globalnetworkpolicies")
    assert lst["kind"] == "GlobalNetworkPolicyList" and [i["metadata"]["name"] for i in lst["items"]] == [
        "default.allow-dns"
    ]
    all_np = await co.list_cluster_custom_object(CALICO, "v1", "networkpolicies")  # all namespaces
    assert [i["metadata"]["name"] for i in all_np["items"]] == ["np1"]
    # CustomObjectsApi sends dict patches as application/json-patch+json unless told otherwise,
    # which a real apiserver rejects; the emulator is equally strict.
    with pytest.raises(ApiException) as ei:
        await co.patch_cluster_custom_object(
            CALICO, "v1", "globalnetworkpolicies", "default.allow-dns", {"spec": {"order": 20}}
        )
    assert ei.value.status == 400
    out = await co.patch_cluster_custom_object(
        CALICO,
        "v1",
        "globalnetworkpolicies",
        "default.allow-dns",
        {"spec": {"order": 20}},
        _content_type="application/merge-patch+json",
    )
    assert out["spec"]["order"] == 20 and out["metadata"]["generation"] == 2
    out["spec"]["order"] = 30
    out2 = await co.replace_cluster_custom_object(CALICO, "v1", "globalnetworkpolicies", "default.allow-dns", out)
    with pytest.raises(ApiException) as ei:  # stale RV
        await co.replace_cluster_custom_object(CALICO, "v1", "globalnetworkpolicies", "default.allow-dns", out)
    assert ei.value.status == 409
    del out2["metadata"]["resourceVersion"]
    with pytest.raises(ApiException) as ei:  # CRs require resourceVersion on update
        await co.replace_cluster_custom_object(CALICO, "v1", "globalnetworkpolicies", "default.allow-dns", out2)
    assert ei.value.status == 422
    # watching CRs through CustomObjectsApi (what a Typha-style syncer does)
    rv = str(server.store.rv)
    await co.delete_cluster_custom_object(CALICO, "v1", "globalnetworkpolicies", "default.allow-dns")
    async with watch.Watch() as w:
        async for ev in w.stream(
            co.list_cluster_custom_object, CALICO, "v1", "globalnetworkpolicies", resource_version=rv, timeout_seconds=5
        ):
            assert ev["type"] == "DELETED" and ev["object"]["metadata"]["name"] == "default.allow-dns"
            break
    with pytest.raises(ApiException) as ei:
        await co.get_cluster_custom_object(CALICO, "v1", "globalnetworkpolicies", "default.allow-dns")
    body = json.loads(ei.value.body)
    assert ei.value.status == 404 and body["details"] == {
        "name": "default.allow-dns",
        "group": CALICO,
        "kind": "globalnetworkpolicies",
    }


@pytest.mark.slow
async def test_pagination_consistent_across_concurrent_writes(server, api) -> None:
    v1 = client.CoreV1Api(api)
    server.store.bulk_load("pods", [pod(f"p{i:03d}") for i in range(120)])
    first = await v1.list_namespaced_pod("default", limit=50)
    snap = first.metadata.resource_version
    assert first.metadata.remaining_item_count == 70 and first.metadata._continue

    async def churn() -> None:
        for i in range(40):
            await v1.create_namespaced_pod("default", pod(f"new{i:02d}"))
            await v1.delete_namespaced_pod(f"p{119 - i:03d}", "default")

    names = [p.metadata.name for p in first.items]
    token = first.metadata._continue
    writer = asyncio.create_task(churn())
    while token:
        page = await v1.list_namespaced_pod("default", limit=7, _continue=token)
        assert page.metadata.resource_version == snap
        names += [p.metadata.name for p in page.items]
        token = page.metadata._continue
        await asyncio.sleep(0)  # let the writer interleave
    await writer
    assert names == [f"p{i:03d}" for i in range(120)]
    latest = await v1.list_namespaced_pod("default")
    assert len(latest.items) == 120 and int(latest.metadata.resource_version) > int(snap)


@pytest.mark.slow
async def test_watch_added_modified_deleted(server, api) -> None:
    v1 = client.CoreV1Api(api)
    await v1.create_namespaced_pod("default", pod("pre"))
    seen: list[tuple[str, str]] = []
    async with watch.Watch() as w:
        stream = w.stream(v1.list_namespaced_pod, "default", timeout_seconds=10)
        async for ev in stream:
            seen.append((ev["type"], ev["object"].metadata.name))
            if ev["object"].metadata.name == "pre" and ev["type"] == "ADDED":
                await v1.create_namespaced_pod("default", pod("new"))
                await v1.patch_namespaced_pod("new", "default", {"metadata": {"labels": {"a": "b"}}})
                await v1.delete_namespaced_pod("new", "default")
            if ev["type"] == "DELETED":
                break
    assert seen == [("ADDED", "pre"), ("ADDED", "new"), ("MODIFIED", "new"), ("DELETED", "new")]
    await wait_until(lambda: server.stats.resource("pods").open_watches == 0, what="watch released")


@pytest.mark.slow
async def test_watch_from_rv_bookmarks_and_in_process_writes(server, api) -> None:
    v1 = client.CoreV1Api(api)
    rv = str(server.store.rv)
    types: list[str] = []
    bookmark_rvs: list[int] = []
    async with watch.Watch() as w:
        async for ev in w.stream(v1.list_node, resource_version=rv, allow_watch_bookmarks=True, timeout_seconds=10):
            types.append(ev["type"])
            if ev["type"] == "BOOKMARK":
                bookmark_rvs.append(int(ev["raw_object"]["metadata"]["resourceVersion"]))
                if len(bookmark_rvs) == 1:
                    # in-process writes reach HTTP watchers exactly like API writes
                    server.store.create("nodes", make_node("n1", "10.0.0.1"))
                    server.store.patch("nodes", "n1", {"spec": {"unschedulable": True}})
                elif len(bookmark_rvs) == 2:
                    break
    assert types == ["BOOKMARK", "ADDED", "MODIFIED", "BOOKMARK"]
    assert bookmark_rvs[1] == server.store.rv and set(ev.keys()) >= {"type", "object", "raw_object"}
    bm = ev["raw_object"]
    assert bm["kind"] == "Node" and bm["apiVersion"] == "v1" and set(bm["metadata"]) == {"resourceVersion"}
    st_ = server.stats.resource("nodes")
    assert st_.bookmarks_sent >= 2 and st_.events_sent >= 2


@pytest.mark.slow
async def test_watch_too_old_rv_gets_410_error_event(server, api) -> None:
    v1 = client.CoreV1Api(api)
    old = str(server.store.rv)
    server.store.create("nodes", make_node("n1", "10.0.0.1"))
    server.store.compact()
    # with timeout_seconds set, kubernetes-asyncio surfaces the ERROR event as ApiException
    with pytest.raises(ApiException) as ei:
        async with watch.Watch() as w:
            async for _ in w.stream(v1.list_node, resource_version=old, timeout_seconds=5):
                pass
    assert ei.value.status == 410 and "too old resource version" in ei.value.reason
    # raw wire format: HTTP 200 + one ERROR event whose object is a Status, then EOF
    status, body = await raw_request(server, "GET", f"/api/v1/nodes?watch=1&resourceVersion={old}")
    assert status == 200
    assert body == {
        "type": "ERROR",
        "object": {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": f"too old resource version: {old} ({server.store.rv})",
            "reason": "Expired",
            "code": 410,
        },
    }
    assert server.stats.resource("nodes").watches_expired == 2


@pytest.mark.slow
async def test_continue_token_410_after_compaction(server, api) -> None:
    v1 = client.CoreV1Api(api)
    server.store.bulk_load("nodes", [make_node(f"n{i}", "10.0.0.1") for i in range(10)])
    page = await v1.list_node(limit=4)
    status, out = await raw_request(server, "POST", "/emulator/compact")
    assert status == 200 and out["compactedTo"] == str(server.store.rv)
    with pytest.raises(ApiException) as ei:
        await v1.list_node(limit=4, _continue=page.metadata._continue)
    body = json.loads(ei.value.body)
    assert ei.value.status == 410 and body["reason"] == "Expired" and body["metadata"]["continue"]
    # and the inconsistent continuation offered by the Status works
    rest = await v1.list_node(limit=100, _continue=body["metadata"]["continue"])
    assert [n.metadata.name for n in rest.items] == [f"n{i}" for i in range(4, 10)]
    assert server.stats.resource("nodes").list_expired == 1


@pytest.mark.slow
async def test_small_window_forces_relist(tmp_path) -> None:
    h = await start_apiserver(token=TOKEN, window_size=3)
    try:
        async with await _api_client(h, tmp_path / "kc") as api:
            v1 = client.CoreV1Api(api)
            rv = (await v1.list_node()).metadata.resource_version
            for i in range(5):
                h.store.create("nodes", make_node(f"n{i}", "10.0.0.1"))
            with pytest.raises(ApiException) as ei:
                async with watch.Watch() as w:
                    async for _ in w.stream(v1.list_node, resource_version=rv, timeout_seconds=5):
                        pass
            assert ei.value.status == 410
            # relist + watch from the new RV works
            lst = await v1.list_node()
            assert len(lst.items) == 5
    finally:
        await h.stop()


@pytest.mark.slow
async def test_auth_401_and_403(server, api, tmp_path) -> None:
    async with await _api_client(server, tmp_path / "bad", token="wrong") as bad:
        with pytest.raises(ApiException) as ei:
            await client.CoreV1Api(bad).list_node()
    body = json.loads(ei.value.body)
    assert ei.value.status == 401 and body == {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": "Unauthorized",
        "reason": "Unauthorized",
        "code": 401,
    }
    status, _ = await raw_request(server, "GET", "/api/v1/nodes", token=None)
    assert status == 401
    status, _ = await raw_request(server, "GET", "/emulator/stats", token=None)
    assert status == 401
    status, _ = await raw_request(server, "GET", "/healthz", token=None)
    assert status == 401
    status, body = await raw_request(server, "GET", "/healthz")
    assert status == 200 and body == b"ok"
    v1 = client.CoreV1Api(api)
    server.forbid("list:nodes", f"globalnetworkpolicies.{CALICO}")
    with pytest.raises(ApiException) as ei:
        await v1.list_node()
    body = json.loads(ei.value.body)
    assert ei.value.status == 403 and body["reason"] == "Forbidden"
    assert (
        body["message"].startswith('nodes is forbidden: User "') and 'cannot list resource "nodes"' in body["message"]
    )
    await v1.create_node(make_node("n1", "10.0.0.1"))  # other verbs still allowed
    with pytest.raises(ApiException) as ei:
        await client.CustomObjectsApi(api).list_cluster_custom_object(CALICO, "v1", "globalnetworkpolicies")
    assert ei.value.status == 403
    server.allow("list:nodes")
    assert len((await v1.list_node()).items) == 1
    assert server.stats.forbidden == 2 and server.stats.unauthorized == 4


@pytest.mark.slow
async def test_label_and_field_selectors_over_http(server, api) -> None:
    v1 = client.CoreV1Api(api)
    store = server.store
    store.create("pods", pod("a", node="n1", labels={"app": "web"}))
    store.create("pods", pod("b", node="n2", labels={"app": "web"}))
    store.create("pods", pod("c", ns="kube-system", node="n1", labels={"app": "db"}))
    names = lambda lst: sorted(p.metadata.name for p in lst.items)  # noqa: E731
    assert names(await v1.list_pod_for_all_namespaces(field_selector="spec.nodeName=n1")) == ["a", "c"]
    assert names(await v1.list_pod_for_all_namespaces(label_selector="app=web")) == ["a", "b"]
    assert names(
        await v1.list_pod_for_all_namespaces(
            label_selector="app in (db)", field_selector="metadata.namespace=kube-system"
        )
    ) == ["c"]
    assert names(await v1.list_namespaced_pod("default", field_selector="metadata.name=b")) == ["b"]
    with pytest.raises(ApiException) as ei:
        await v1.list_pod_for_all_namespaces(field_selector="spec.bogus=1")
    assert ei.value.status == 400
    with pytest.raises(ApiException) as ei:
        await v1.list_pod_for_all_namespaces(label_selector="app in (")
    assert ei.value.status == 400
    # EndpointSlices filtered by kubernetes.io/service-name
    dv1 = client.DiscoveryV1Api(api)
    for svc, n in (("svc-a", 2), ("svc-b", 1)):
        for i in range(n):
            await dv1.create_namespaced_endpoint_slice(
                "default",
                {
                    "metadata": {"name": f"{svc}-{i}", "labels": {"kubernetes.io/service-name": svc}},
                    "addressType": "IPv4",
                    "endpoints": [{"addresses": [f"10.0.0.{i + 1}"]}],
                },
            )
    es = await dv1.list_namespaced_endpoint_slice("default", label_selector="kubernetes.io/service-name=svc-a")
    assert sorted(e.metadata.name for e in es.items) == ["svc-a-0", "svc-a-1"]
    # a watch filtered by nodeName sees a pod move away as DELETED (events replayed from rv)
    rv = str(store.rv)
    store.patch("pods", "a", {"metadata": {"labels": {"touched": "1"}}}, namespace="default")
    store.patch("pods", "b", {"metadata": {"labels": {"touched": "1"}}}, namespace="default")
    store.patch("pods", "a", {"spec": {"nodeName": "n9"}}, namespace="default")
    seen: list[str] = []
    async with watch.Watch() as w:
        async for ev in w.stream(
            v1.list_pod_for_all_namespaces, field_selector="spec.nodeName=n1", resource_version=rv, timeout_seconds=10
        ):
            seen.append(f"{ev['type']}:{ev['object'].metadata.name}")
            if ev["type"] == "DELETED":
                break
    assert seen == ["MODIFIED:a", "DELETED:a"]
    assert ev["object"].spec.node_name == "n1"  # old object, new RV
    assert ev["object"].metadata.resource_version == str(store.rv)


@pytest.mark.slow
async def test_cut_watches_and_reconnect(server, api) -> None:
    v1 = client.CoreV1Api(api)
    got_added = asyncio.Event()
    ended = asyncio.Event()

    async def watcher() -> None:
        async with watch.Watch() as w:
            async for ev in w.stream(v1.list_node, timeout_seconds=30):
                if ev["type"] == "ADDED":
                    got_added.set()
        ended.set()

    server.store.create("nodes", make_node("n1", "10.0.0.1"))
    task = asyncio.create_task(watcher())
    await asyncio.wait_for(got_added.wait(), 5)
    assert server.stats.resource("nodes").open_watches == 1
    status, out = await raw_request(server, "POST", "/emulator/cut-watches")
    assert status == 200 and out == {"cut": 1}
    await asyncio.wait_for(ended.wait(), 5)  # with timeout_seconds the client stops at EOF
    await task
    await wait_until(lambda: server.stats.resource("nodes").open_watches == 0)
    assert server.stats.resource("nodes").watches_cut == 1
    # without timeout_seconds, kubernetes-asyncio reconnects from its last RV transparently
    events: list[str] = []
    async with watch.Watch() as w:
        async for ev in w.stream(v1.list_node):
            events.append(ev["type"] + ":" + ev["object"].metadata.name)
            if len(events) == 1:
                await wait_until(lambda: server.stats.resource("nodes").open_watches == 1)
                assert server.cut_watches() == 1
                # written while no watch is open: the re-watch from the last seen RV replays it
                server.store.create("nodes", make_node("n2", "10.0.0.2"))
            if len(events) == 2:
                break
    assert events == ["ADDED:n1", "ADDED:n2"]
    assert server.stats.resource("nodes").watches_total == 3


@pytest.mark.slow
async def test_slow_watcher_is_closed(tmp_path) -> None:
    h = await start_apiserver(token=TOKEN, max_watch_queue=5)
    try:
        rv = str(h.store.rv)
        async with (
            aiohttp.ClientSession() as sess,
            sess.get(
                f"{h.url}/api/v1/nodes?watch=true&resourceVersion={rv}",
                ssl=h.client_ssl_context(),
                headers={"Authorization": f"Bearer {TOKEN}"},
            ) as resp,
        ):
            assert resp.status == 200
            await wait_until(lambda: h.stats.resource("nodes").open_watches == 1)
            # a burst larger than the queue, with no chance for the writer to drain
            for i in range(20):
                h.store.create("nodes", make_node(f"n{i}", "10.0.0.1"))
            body = await asyncio.wait_for(resp.read(), 5)  # the server ends the stream
        assert body == b""
        assert h.stats.resource("nodes").watches_closed_slow == 1
        await wait_until(lambda: h.stats.resource("nodes").open_watches == 0)
    finally:
        await h.stop()


@pytest.mark.slow
async def test_client_disconnect_releases_idle_watch(server) -> None:
    async with (
        aiohttp.ClientSession() as sess,
        sess.get(
            f"{server.url}/api/v1/pods?watch=1",
            ssl=server.client_ssl_context(),
            headers={"Authorization": f"Bearer {TOKEN}"},
        ) as resp,
    ):
        assert resp.status == 200
        await wait_until(lambda: server.stats.resource("pods").open_watches == 1)
    # nothing is ever written to this watch; the server must still notice the hang-up
    await wait_until(lambda: server.stats.resource("pods").open_watches == 0, what="watch released")
    assert not server.store.watchers("pods")


@pytest.mark.slow
async def test_stats_endpoint_and_object(server, api) -> None:
    v1 = client.CoreV1Api(api)
    await v1.list_node()
    await v1.list_node()
    await v1.create_node(make_node("n1", "10.0.0.1"))
    async with watch.Watch() as w:
        async for ev in w.stream(v1.list_node, timeout_seconds=5):
            assert ev["type"] == "ADDED"
            break
    status, snap = await raw_request(server, "GET", "/emulator/stats")
    assert status == 200
    nodes = snap["resources"]["nodes"]
    assert nodes["list_requests"] == 2 and nodes["watches_total"] == 1 and nodes["events_sent"] == 1
    assert nodes["bytes_sent"] > 100 and nodes["creates"] == 1
    assert snap["totals"]["watches_total"] == 1 and snap["resourceVersion"] == str(server.store.rv)
    assert server.stats.resource("nodes").list_requests == 2
    assert server.stats.snapshot()["resources"]["nodes"]["creates"] == 1


@pytest.mark.slow
async def test_too_large_rv_waits_then_504(server, api) -> None:
    future = server.store.rv + 1
    status, body = await raw_request(server, "GET", f"/api/v1/nodes?resourceVersion={future + 5}")
    assert status == 504 and body["reason"] == "Timeout"

    async def later() -> None:
        await wait_until(lambda: server.stats.requests_total >= 2)
        server.store.create("nodes", make_node("n1", "10.0.0.1"))

    t = asyncio.create_task(later())
    status, body = await raw_request(
        server, "GET", f"/api/v1/nodes?resourceVersion={future}&resourceVersionMatch=NotOlderThan"
    )
    await t
    assert status == 200 and [i["metadata"]["name"] for i in body["items"]] == ["n1"]


@pytest.mark.slow
async def test_streaming_list_send_initial_events(server) -> None:
    server.store.create("nodes", make_node("n1", "10.0.0.1"))
    async with (
        aiohttp.ClientSession() as sess,
        sess.get(
            f"{server.url}/api/v1/nodes?watch=1&sendInitialEvents=true&allowWatchBookmarks=true"
            "&resourceVersionMatch=NotOlderThan&timeoutSeconds=5",
            ssl=server.client_ssl_context(),
            headers={"Authorization": f"Bearer {TOKEN}"},
        ) as resp,
    ):
        first = json.loads(await resp.content.readline())
        second = json.loads(await resp.content.readline())
    assert first["type"] == "ADDED" and second["type"] == "BOOKMARK"
    assert second["object"]["metadata"]["annotations"]["k8s.io/initial-events-end"] == "true"
    status, _body = await raw_request(server, "GET", "/api/v1/nodes?watch=1&sendInitialEvents=true")
    assert status == 422


@pytest.mark.slow
async def test_main_entry_point(tmp_path) -> None:
    kc = tmp_path / "kc"
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "loadtest.apiserver",
        "--port",
        "0",
        "--kubeconfig-out",
        str(kc),
        "--token",
        "cli-token",
        "--seed-nodes",
        "3",
        "--seed-pods",
        "10",
        stdout=asyncio.subprocess.PIPE,
        cwd=str(Path(__file__).resolve().parents[1]),
    )
    try:
        line = (await asyncio.wait_for(proc.stdout.readline(), 20)).decode().strip()
        assert line.startswith("https://127.0.0.1:")
        cfg = client.Configuration()
        await config.load_kube_config(config_file=str(kc), client_configuration=cfg)
        async with client.ApiClient(cfg) as api:
            v1 = client.CoreV1Api(api)
            assert len((await v1.list_node()).items) == 3
            assert len((await v1.list_pod_for_all_namespaces()).items) == 10
    finally:
        proc.send_signal(signal.SIGTERM)
        rc = await asyncio.wait_for(proc.wait(), 10)
    assert rc == 0


def test_decode_continue_roundtrip() -> None:
    s = Store(seed_namespaces=())
    for i in range(3):
        s.create("pods", pod(f"p{i}"))
    tok = s.list("pods", limit=1).continue_token
    assert tok is not None
    rv, start = decode_continue(tok)
    assert rv == s.rv and start == "default\x00p0"


@pytest.mark.slow
async def test_scale_150k_pods_5k_nodes_and_fanout(tmp_path) -> None:
    """150k pods + 5k nodes in memory, paginated over HTTP, and one event fanned out to
    many HTTP watchers as the same bytes."""
    h = await start_apiserver(token=TOKEN, window_size=1000)
    try:
        store = h.store
        store.bulk_load("nodes", (make_node(f"node-{i:04d}", "10.0.0.1") for i in range(5000)), emit_events=False)
        store.bulk_load(
            "pods",
            (
                {
                    "metadata": {"name": f"pod-{i:06d}", "namespace": f"ns-{i % 50}", "labels": {"app": f"a{i % 10}"}},
                    "spec": {"nodeName": f"node-{i % 5000:04d}"},
                    "status": {"phase": "Running", "podIP": f"10.{i >> 16}.{(i >> 8) & 255}.{i & 255}"},
                }
                for i in range(150_000)
            ),
            emit_events=False,
        )
        assert store.count("pods") == 150_000 and store.count("nodes") == 5000
        async with await _api_client(h, tmp_path / "kc") as api:
            v1 = client.CoreV1Api(api)
            total, token, snap = 0, None, None
            while True:
                page = await v1.list_pod_for_all_namespaces(limit=25_000, _continue=token, _preload_content=False)
                raw = await page.read()
                # decode only the list metadata (the head before "items"); decoding 150k
                # items client-side would dominate the test's run time
                head = orjson.loads(raw[: raw.index(b',"items":[')] + b"}")
                snap = snap or head["metadata"]["resourceVersion"]
                assert head["metadata"]["resourceVersion"] == snap
                total += raw.count(b'"kind":"Pod"')
                token = head["metadata"].get("continue")
                if not token:
                    break
            assert total == 150_000
        n_watchers = 300
        rv = str(store.rv)
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as sess:
            hdrs = {"Authorization": f"Bearer {TOKEN}"}
            resps = await asyncio.gather(
                *(
                    sess.get(
                        f"{h.url}/api/v1/nodes?watch=1&resourceVersion={rv}&timeoutSeconds=20",
                        ssl=h.client_ssl_context(),
                        headers=hdrs,
                    )
                    for _ in range(n_watchers)
                )
            )
            await wait_until(lambda: h.stats.resource("nodes").open_watches == n_watchers, 10)
            store.patch("nodes", "node-0001", {"metadata": {"labels": {"fanout": "1"}}})
            lines = await asyncio.gather(*(r.content.readline() for r in resps))
            assert len(set(lines)) == 1 and json.loads(lines[0])["type"] == "MODIFIED"
            for r in resps:
                r.close()
        st_ = h.stats.resource("nodes")
        assert st_.events_sent == n_watchers and st_.bytes_sent == n_watchers * len(lines[0])
    finally:
        await h.stop()
