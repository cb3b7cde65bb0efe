"""Property tests: garbage selectors, bodies and patches yield 4xx Status errors only.

The request-parsing functions are plain functions (see loadtest.apiserver.decode) so
hypothesis here, and atheris targets in fuzz/, can drive them directly; the last test
drives the whole store with garbage writes and checks that whatever was accepted can
still be listed, selected and watched.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from loadtest.apiserver import ApiError, Store, make_pod
from loadtest.apiserver.decode import decode_body, decode_patch, delete_preconditions
from loadtest.apiserver.patch import JSON_PATCH, MERGE, STRATEGIC, apply_patch
from loadtest.apiserver.selectors import parse_field_selector, parse_label_selector

pytestmark = pytest.mark.timeout(120)
FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

_scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**53), 2**53)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12)
)
_WORDS = ["metadata", "name", "labels", "annotations", "spec", "status", "containers", "image", "ports",
          "containerPort", "env", "finalizers", "namespace", "generateName", "volumes", "$patch", "replace",
          "delete", "merge", "$retainKeys", "$setElementOrder/containers", "$setElementOrder/finalizers",
          "$deleteFromPrimitiveList/finalizers", "app", "a/b", "web", "", "resourceVersion", "uid", "op", "path",
          "value", "from", "add", "remove", "/metadata/labels", "/spec/containers/0"]  # fmt: skip
_keys = st.sampled_from(_WORDS) | st.text(max_size=8)
_json = st.recursive(
    _scalars | st.sampled_from(_WORDS),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_keys, inner, max_size=5),
    max_leaves=30,
)
_selector_text = st.lists(
    st.sampled_from([*"abc/=!(),<> .-_09\\", "in", "notin", "a.io/k", "x" * 64]), max_size=12
).map("".join) | st.text(max_size=30)


def _is_4xx(e: ApiError) -> bool:
    return 400 <= e.code < 500 and e.status["kind"] == "Status" and e.status["code"] == e.code


@FUZZ
@given(text=_selector_text)
def test_garbage_selectors_are_400(text: str) -> None:
    for parse in (
        parse_label_selector,
        lambda t: parse_field_selector(t, ("spec.nodeName", "status.phase")),
        lambda t: parse_field_selector(t, (), namespaced=False),
    ):
        try:
            parse(text)
        except ApiError as e:
            assert e.code == 400 and _is_4xx(e)


@FUZZ
@given(raw=st.binary(max_size=200) | _json.map(lambda d: json.dumps(d).encode()), ct=st.sampled_from(
    [None, "", "application/json", "text/plain", "application/merge-patch+json", "application/json-patch+json",
     "application/strategic-merge-patch+json", "application/apply-patch+yaml", "application/json; charset=x"]))  # fmt: skip
def test_garbage_bodies_are_4xx(raw: bytes, ct: str | None) -> None:
    for decode in (decode_body, decode_patch, delete_preconditions):
        try:
            decode(raw, ct)
        except ApiError as e:
            assert _is_4xx(e)


def _pod() -> dict[str, Any]:
    return make_pod("default", "web", "n1", "10.0.0.1", labels={"app": "web"}) | {
        "metadata": {"name": "web", "namespace": "default", "labels": {"app": "web"}, "finalizers": ["a.io/x"]}
    }


@FUZZ
@given(patch=_json, ct=st.sampled_from([MERGE, STRATEGIC, JSON_PATCH]), schema=st.sampled_from(["Pod", None]))
def test_garbage_patches_are_4xx(patch: Any, ct: str, schema: str | None) -> None:
    target = _pod()
    before = json.dumps(target, sort_keys=True)
    try:
        out = apply_patch(target, patch, ct, schema)
        assert isinstance(out, dict)
    except ApiError as e:
        assert _is_4xx(e)
    assert json.dumps(target, sort_keys=True) == before  # the target is never mutated


@FUZZ
@given(
    bodies=st.lists(_json, min_size=1, max_size=4),
    patches=st.lists(st.tuples(_json, st.sampled_from([MERGE, STRATEGIC, JSON_PATCH])), max_size=4),
    resource=st.sampled_from(["pods", "namespaces", "ippools"]),
)
def test_garbage_writes_are_4xx_and_never_break_reads(
    bodies: list[Any], patches: list[tuple[Any, str]], resource: str
) -> None:
    s = Store()
    watch = s.watch(resource, resource_version=str(s.rv), label_selector="app")
    ns = "default" if resource == "pods" else None
    base = {"metadata": {"name": "web", "labels": {"app": "web"}}}
    s.create_object(resource, base, namespace=ns, strategy=True)
    for body in bodies:
        try:
            s.create_object(resource, body, namespace=ns, strategy=True)
        except ApiError as e:
            assert _is_4xx(e)
    for patch, ct in patches:
        try:
            s.patch_object(resource, "web", patch, namespace=ns, content_type=ct, strategy=True)
        except ApiError as e:
            assert _is_4xx(e)
    # whatever was accepted is readable through selectors, lists and watches
    listed = s.list(resource, label_selector="app").items
    for o in s.list(resource).items:
        d = o.to_dict()
        assert all(isinstance(k, str) and isinstance(v, str) for k, v in d["metadata"].get("labels", {}).items())
    again = s.watch(resource, label_selector="app")
    assert len(again.next_initial(1000)) == len(listed)
    assert not watch.closed and s.stats.resource(s.resource(resource).key).watches_failed == 0
