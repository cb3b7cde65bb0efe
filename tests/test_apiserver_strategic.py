"""Strategic merge patch in the API emulator (issue 9, item 14).

``kubectl apply`` sends strategic merge patches; applied as JSON merge patches, changing one
container's image dropped the second container and the first's ports and env. Cases follow
the Kubernetes strategic-merge-patch spec and its "preserve order" design.
"""

from __future__ import annotations

from typing import Any

import pytest
from kubernetes_asyncio import client, config
from kubernetes_asyncio.client.exceptions import ApiException

from loadtest.apiserver import ApiError, Store, make_calico_object, start_apiserver
from loadtest.apiserver.patch import STRATEGIC, apply_patch
from loadtest.apiserver.strategic import strategic_merge

pytestmark = pytest.mark.timeout(60)


def pod_doc() -> dict[str, Any]:
    return {
        "metadata": {"name": "web", "namespace": "default", "finalizers": ["a.io/x", "b.io/y"]},
        "spec": {
            "containers": [
                {
                    "name": "app",
                    "image": "app:1",
                    "ports": [{"containerPort": 80, "name": "http"}, {"containerPort": 443}],
                    "env": [{"name": "A", "value": "1"}, {"name": "B", "value": "2"}],
                },
                {"name": "sidecar", "image": "side:1"},
            ],
            "volumes": [{"name": "data", "emptyDir": {}}],
            "tolerations": [{"key": "a"}, {"key": "b"}],
        },
    }


def names(items: list[dict[str, Any]], key: str = "name") -> list[Any]:
    return [i[key] for i in items]


def test_changing_one_image_keeps_the_other_container_and_its_ports_and_env() -> None:
    out = strategic_merge(pod_doc(), {"spec": {"containers": [{"name": "app", "image": "app:2"}]}}, "Pod")
    app, side = out["spec"]["containers"]
    assert (app["name"], app["image"], side["name"]) == ("app", "app:2", "sidecar")
    assert names(app["ports"], "containerPort") == [80, 443] and names(app["env"]) == ["A", "B"]


def test_merge_keys_per_field_and_replace_by_default() -> None:
    patch = {
        "spec": {
            "containers": [
                {
                    "name": "app",
                    "ports": [{"containerPort": 443, "name": "https"}],
                    "env": [{"name": "C", "value": "3"}],
                }
            ],
            "volumes": [{"name": "cache", "emptyDir": {}}],
            "tolerations": [{"key": "c"}],  # no patch strategy: replaced
        }
    }
    out = strategic_merge(pod_doc(), patch, "Pod")
    app = out["spec"]["containers"][0]
    assert app["ports"] == [{"containerPort": 80, "name": "http"}, {"containerPort": 443, "name": "https"}]
    # A new item has no live position, so it goes before the live-only ones, as in kube
    # (kubectl sends $setElementOrder, which places it; see the next test).
    assert names(app["env"]) == ["C", "A", "B"]
    assert names(out["spec"]["volumes"]) == ["cache", "data"]
    assert out["spec"]["tolerations"] == [{"key": "c"}]


def test_directives_delete_replace_and_primitive_lists() -> None:
    doc = pod_doc()
    out = strategic_merge(doc, {"spec": {"containers": [{"name": "sidecar", "$patch": "delete"}]}}, "Pod")
    assert names(out["spec"]["containers"]) == ["app"]
    out = strategic_merge(doc, {"spec": {"containers": [{"name": "only", "image": "o"}, {"$patch": "replace"}]}}, "Pod")
    assert out["spec"]["containers"] == [{"name": "only", "image": "o"}]
    out = strategic_merge(doc, {"spec": {"$patch": "replace", "containers": [{"name": "x"}]}}, "Pod")
    assert out["spec"] == {"containers": [{"name": "x"}]}
    out = strategic_merge(doc, {"spec": {"volumes": [{"name": "data", "emptyDir": None}]}}, "Pod")
    assert out["spec"]["volumes"] == [{"name": "data"}]
    out = strategic_merge(doc, {"metadata": {"finalizers": ["c.io/z", "a.io/x"]}}, "Pod")
    assert out["metadata"]["finalizers"] == ["c.io/z", "a.io/x", "b.io/y"]  # a set; patch order first
    out = strategic_merge(doc, {"metadata": {"$deleteFromPrimitiveList/finalizers": ["a.io/x"]}}, "Pod")
    assert out["metadata"]["finalizers"] == ["b.io/y"]
    out = strategic_merge(
        doc,
        {"spec": {"volumes": [{"name": "data", "$retainKeys": ["name", "hostPath"], "hostPath": {"path": "/d"}}]}},
        "Pod",
    )
    assert out["spec"]["volumes"] == [{"name": "data", "hostPath": {"path": "/d"}}]
    out = strategic_merge(doc, {"spec": {"volumes": {"$patch": "delete"}}}, "Pod")
    assert "volumes" not in out["spec"]
    assert doc == pod_doc()  # inputs are never mutated


def test_set_element_order_on_the_design_examples() -> None:
    """The design's examples; live-only items interleave by live position (as kube-apiserver
    implements it) rather than all going first (as the design text sketches)."""
    live = {"metadata": {"finalizers": ["b", "e", "a", "c", "d"]}}
    patch = {
        "metadata": {
            "$setElementOrder/finalizers": ["a", "b", "f"],
            "$deleteFromPrimitiveList/finalizers": ["c"],
            "finalizers": ["f"],
        }
    }
    assert strategic_merge(live, patch, "Pod")["metadata"]["finalizers"] == ["e", "a", "b", "f", "d"]
    env = [{"name": n, "value": n.lower()} for n in ("ENV2", "ENV5", "ENV1", "ENV3", "ENV4")]
    patch2 = {
        "$setElementOrder/env": [{"name": "ENV1"}, {"name": "ENV2"}, {"name": "ENV6"}],
        "env": [{"name": "ENV3", "$patch": "delete"}, {"name": "ENV6", "value": "new"}],
    }
    out = strategic_merge({"env": env}, patch2, "Container")
    assert names(out["env"]) == ["ENV5", "ENV1", "ENV2", "ENV6", "ENV4"]
    # reorder only: the order list may name live items the patch does not touch
    out = strategic_merge({"env": env[:2]}, {"$setElementOrder/env": [{"name": "ENV5"}, {"name": "ENV2"}]}, "Container")
    assert names(out["env"]) == ["ENV5", "ENV2"]
    # without an order list, the patch's own order is kept and live-only items interleave
    out = strategic_merge(
        {"env": [{"name": "B"}, {"name": "C"}, {"name": "A"}]},
        {"env": [{"name": "A", "v": 1}, {"name": "B", "v": 2}, {"name": "D"}]},
        "Container",
    )
    assert names(out["env"]) == ["C", "A", "B", "D"]


@pytest.mark.parametrize(
    "patch",
    [
        {"spec": {"containers": [{"image": "no-name"}]}},
        {"spec": {"containers": ["app"]}},
        {"spec": {"containers": [{"name": "app", "$patch": "bogus"}]}},
        {"spec": {"$patch": 3}},
        {"metadata": {"$deleteFromPrimitiveList/finalizers": "a"}},
        {"metadata": {"$setElementOrder/finalizers": {"a": 1}}},
        {"metadata": {"$setElementOrder/finalizers": ["b.io/y"], "finalizers": ["zzz"]}},
        {"spec": {"volumes": [{"name": "data", "$retainKeys": ["name"], "hostPath": {}}]}},
        {"spec": {"volumes": [{"name": "data", "$retainKeys": "name"}]}},
        {"metadata": {"finalizers": [{"a": 1}]}},
        {"spec": {"containers": [[1]]}},
    ],
)
def test_malformed_strategic_patches_are_4xx(patch: dict[str, Any]) -> None:
    with pytest.raises(ApiError) as ei:
        apply_patch(pod_doc(), patch, STRATEGIC, "Pod")
    assert ei.value.code in (400, 422), ei.value


def test_store_strategic_patch_and_custom_resources_get_415() -> None:
    s = Store()
    s.create("pods", {"metadata": pod_doc()["metadata"], "spec": pod_doc()["spec"]})
    out = s.patch(
        "pods",
        "web",
        {"spec": {"containers": [{"name": "app", "image": "app:3"}]}},
        namespace="default",
        content_type=STRATEGIC,
    )
    assert [c["image"] for c in out["spec"]["containers"]] == ["app:3", "side:1"]
    s.create("ippools", make_calico_object("IPPool", "p", {"cidr": "10.0.0.0/16"}))
    with pytest.raises(ApiError) as ei:
        s.patch("ippools", "p", {"spec": {"cidr": "10.1.0.0/16"}}, content_type=STRATEGIC)
    assert ei.value.code == 415


@pytest.mark.slow
async def test_kubernetes_client_patch_is_strategic(tmp_path) -> None:
    """kubernetes-asyncio (like kubectl) sends a dict patch as a strategic merge patch."""
    h = await start_apiserver(token="t")
    try:
        cfg = client.Configuration()
        await config.load_kube_config(config_file=h.write_kubeconfig(str(tmp_path / "kc")), client_configuration=cfg)
        async with client.ApiClient(cfg) as api:
            v1 = client.CoreV1Api(api)
            doc = pod_doc()
            await v1.create_namespaced_pod("default", {"metadata": {"name": "web"}, "spec": doc["spec"]})
            p = await v1.patch_namespaced_pod(
                "web", "default", {"spec": {"containers": [{"name": "app", "image": "app:2"}]}}
            )
            app, side = p.spec.containers
            assert (app.image, side.name) == ("app:2", "sidecar")
            assert [x.container_port for x in app.ports] == [80, 443] and [e.name for e in app.env] == ["A", "B"]
            co = client.CustomObjectsApi(api)
            await co.create_cluster_custom_object(
                "crd.projectcalico.org", "v1", "ippools", make_calico_object("IPPool", "p", {"cidr": "10.0.0.0/16"})
            )
            with pytest.raises(ApiException) as ei:
                await co.patch_cluster_custom_object(
                    "crd.projectcalico.org", "v1", "ippools", "p", {"spec": {}}, _content_type=STRATEGIC
                )
            assert ei.value.status == 415
    finally:
        await h.stop()
