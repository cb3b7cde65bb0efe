"""The Kubernetes API-server emulator's store (loadtest.apiserver), without sockets: revisions,
pagination snapshots, retained window / 410, selectors, patches, watch fan-out and selector
transitions. Over HTTPS with the real kubernetes-asyncio client: tests/test_apiserver_http.py and
tests/test_apiserver_watch.py.
"""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from loadtest.apiserver import ApiError, Store, make_calico_object, make_node
from loadtest.apiserver.listing import decode_continue
from loadtest.apiserver.patch import JSON_PATCH, MERGE, STRATEGIC, apply_patch, merge_patch
from loadtest.apiserver.routing import parse_path
from loadtest.apiserver.selectors import parse_field_selector, parse_label_selector
from tests.support.apiserver import CALICO, pod

pytestmark = pytest.mark.timeout(30)


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


def test_decode_continue_roundtrip() -> None:
    s = Store(seed_namespaces=())
    for i in range(3):
        s.create("pods", pod(f"p{i}"))
    tok = s.list("pods", limit=1).continue_token
    assert tok is not None
    rv, start = decode_continue(tok)
    assert rv == s.rv and start == "default\x00p0"
