"""Properties of typha.k8s.projection: deterministic bytes that ignore an object's noise, and garbage
in gives ProjectionError out and nothing else (the fuzz target's contract)."""

from __future__ import annotations

import copy

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.support.k8s_objects import enc, garbled, make_node, make_np, make_pod
from typha.k8s.projection import RESOURCES, ProjectionError, project, project_delete

# --- properties -------------------------------------------------------------------------------------

_label_key = st.from_regex(r"[a-z]([a-z0-9.-]{0,10}[a-z0-9])?(/[a-z][a-z0-9]{0,8})?", fullmatch=True)
_label_val = st.from_regex(r"([A-Za-z0-9]([A-Za-z0-9_.-]{0,10}[A-Za-z0-9])?)?", fullmatch=True)
_labels = st.dictionaries(_label_key, _label_val, max_size=6)
_ts = st.datetimes().map(lambda d: d.strftime("%Y-%m-%dT%H:%M:%SZ"))
_noise = st.fixed_dictionaries(
    {
        "rv": st.integers(1, 10**9).map(str),
        "mf_time": _ts,
        "cond_time": _ts,
        "restarts": st.integers(0, 100),
        "extra_ann": st.dictionaries(
            st.sampled_from(["a.io/x", "kubectl.kubernetes.io/restartedAt", "b/y"]), st.text(max_size=8), max_size=2
        ),
        "phase": st.sampled_from(["Running", "Pending", "Unknown"]),
        "generation": st.integers(0, 50),
    }
)


def _noisy(obj: dict, n: dict) -> dict:
    o = copy.deepcopy(obj)
    md = o["metadata"]
    md["resourceVersion"] = n["rv"]
    md["generation"] = n["generation"]
    md["managedFields"] = [{"manager": "m", "operation": "Update", "time": n["mf_time"]}]
    md.setdefault("annotations", {}).update(n["extra_ann"])
    st_ = o.setdefault("status", {})
    st_["conditions"] = [
        {"type": "Ready", "status": "True", "lastTransitionTime": n["cond_time"], "lastHeartbeatTime": n["cond_time"]}
    ]
    st_["containerStatuses"] = [{"name": "c", "restartCount": n["restarts"]}]
    if o["kind"] == "Pod":
        st_["phase"] = n["phase"]
    return o


@settings(max_examples=150, deadline=None)
@given(
    labels=_labels,
    n1=_noise,
    n2=_noise,
    ip=st.ip_addresses(v=4).map(str),
    name=st.from_regex(r"[a-z][a-z0-9-]{0,20}[a-z0-9]", fullmatch=True),
)
def test_pod_projection_deterministic_and_ignores_noise(labels: dict, n1: dict, n2: dict, ip: str, name: str) -> None:
    pod = make_pod(name=name, ip=ip, labels=labels)
    a, b = project("pods", _noisy(pod, n1)), project("pods", _noisy(pod, n2))
    assert [(k, enc(v)) for k, v in a] == [(k, enc(v)) for k, v in b]
    assert project("pods", pod) == project("pods", pod)
    v = a[0][1]
    assert (
        v is not None
        and v["labels"].items() >= {k: x for k, x in labels.items() if not k.startswith("projectcalico.org/")}.items()
    )
    # ...but a label change is always visible.
    changed = make_pod(name=name, ip=ip, labels={**labels, "zz-changed": "1"})
    assert enc(project("pods", changed)[0][1]) != enc(v)


@settings(max_examples=100, deadline=None)
@given(labels=_labels, n1=_noise, n2=_noise)
def test_node_projection_ignores_noise(labels: dict, n1: dict, n2: dict) -> None:
    node = make_node(labels=labels)
    assert enc(project("nodes", _noisy(node, n1))) == enc(project("nodes", _noisy(node, n2)))


@settings(max_examples=100, deadline=None)
@given(ns_labels=_labels, pod_labels=_labels, n1=_noise, n2=_noise)
def test_policy_projection_ignores_noise(ns_labels: dict, pod_labels: dict, n1: dict, n2: dict) -> None:
    np_ = make_np(
        {
            "podSelector": {"matchLabels": pod_labels},
            "ingress": [{"from": [{"namespaceSelector": {"matchLabels": ns_labels}}]}],
        }
    )
    np_["status"] = {}
    a = project("networkpolicies", _noisy(np_, n1))
    assert enc(a) == enc(project("networkpolicies", _noisy(np_, n2)))
    sel = a[0][1]["inboundRules"][0]["srcSelector"]
    for k in ns_labels:
        assert f"pcns.{k} == " in sel


@settings(max_examples=300, deadline=None)
@given(garbled(sorted(RESOURCES)))
def test_garbage_objects_raise_only_projection_error(item: tuple[str, object]) -> None:
    resource, obj = item
    for fn in (project, project_delete):
        try:
            out = fn(resource, obj)  # type: ignore[arg-type]
        except ProjectionError:
            continue
        assert isinstance(out, list)
        for entry in out:
            key = entry[0] if isinstance(entry, tuple) else entry
            assert isinstance(key, str) and key.startswith("/calico/")
        orjson.dumps(out, option=orjson.OPT_SORT_KEYS)  # what ingest does with the values
