"""The emulator takes a whole install (issue 14 item 5), store level: the install's kinds, dry run,
schema admission (unknown fields, types, CRD value rules and defaults), defaulting, namespace
deletion that empties the namespace, CRDs that start and stop serving resources, Table output,
protobuf request bodies, and the strategic-merge metadata agreeing with the served OpenAPI."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from loadtest.apiserver import ApiError, Store, make_pod, patchschema, tables
from loadtest.apiserver.objects import DELETED, MODIFIED
from loadtest.apiserver.openapi import OpenAPI
from loadtest.apiserver.protobuf import MAGIC, decode_protobuf, envelope
from loadtest.apiserver.protobuf import field as pb_field
from loadtest.apiserver.resources import DEFAULT_RESOURCES
from loadtest.apiserver.schema import IGNORE, STRICT, WARN, walk_refs
from loadtest.apiserver.store import Admission

pytestmark = pytest.mark.timeout(60)

CRD_POOL: dict[str, Any] = {
    "apiVersion": "apiextensions.k8s.io/v1",
    "kind": "CustomResourceDefinition",
    "metadata": {"name": "ippools.crd.projectcalico.org"},
    "spec": {
        "group": "crd.projectcalico.org",
        "names": {"kind": "IPPool", "plural": "ippools", "singular": "ippool", "listKind": "IPPoolList"},
        "scope": "Cluster",
        "versions": [
            {
                "name": "v1",
                "served": True,
                "storage": True,
                "schema": {
                    "openAPIV3Schema": {
                        "type": "object",
                        "properties": {
                            "spec": {
                                "type": "object",
                                "required": ["cidr"],
                                "properties": {
                                    "cidr": {"type": "string"},
                                    "blockSize": {"type": "integer", "minimum": 20, "maximum": 32},
                                    "vxlanMode": {"type": "string", "enum": ["Never", "Always"], "default": "Never"},
                                    "extra": {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
                                },
                            }
                        },
                    }
                },
                "additionalPrinterColumns": [{"name": "CIDR", "type": "string", "jsonPath": ".spec.cidr"}],
            }
        ],
    },
}


def pool(name: str = "p", **spec: Any) -> dict[str, Any]:
    return {"apiVersion": "crd.projectcalico.org/v1", "kind": "IPPool", "metadata": {"name": name}, "spec": spec}


def events(w: Any) -> list[tuple[str, str]]:
    import orjson

    return [(e["type"], e["object"]["metadata"]["name"]) for e in map(orjson.loads, w.drain())]


# ---- the install's kinds ---------------------------------------------------------------------

INSTALL_KINDS = (
    "namespaces",
    "serviceaccounts",
    "services",
    "configmaps",
    "secrets",
    "endpointslices.discovery.k8s.io",
    "roles.rbac.authorization.k8s.io",
    "rolebindings.rbac.authorization.k8s.io",
    "clusterroles.rbac.authorization.k8s.io",
    "clusterrolebindings.rbac.authorization.k8s.io",
    "deployments.apps",
    "daemonsets.apps",
    "poddisruptionbudgets.policy",
    "customresourcedefinitions.apiextensions.k8s.io",
)


def test_every_kind_an_install_uses_is_served_and_discoverable() -> None:
    s = Store()
    for key in INSTALL_KINDS:
        rt = s.resource(key)
        doc = s.registry.api_resource_list(rt.group, rt.version)
        assert doc is not None and rt.plural in {r["name"] for r in doc["resources"]}
    # kubectl's short names resolve, and `kubectl get all` finds the workloads through categories.
    assert s.resource("deploy").key == "deployments.apps" and s.resource("crd").kind == "CustomResourceDefinition"
    apps = s.registry.api_resource_list("apps", "v1")
    assert apps is not None and all("all" in r.get("categories", ()) for r in apps["resources"] if "/" not in r["name"])


def test_rbac_names_may_hold_colons_and_deployments_default_their_spec() -> None:
    s = Store()
    s.create("clusterroles", {"metadata": {"name": "system:controller:x"}, "rules": []}, strategy=True)
    dep = s.create(
        "deployments",
        {"metadata": {"name": "d", "namespace": "default"}, "spec": {"selector": {}, "template": {}}},
        strategy=True,
    )
    assert dep["spec"]["replicas"] == 1 and dep["spec"]["revisionHistoryLimit"] == 10
    assert dep["spec"]["strategy"] == {
        "type": "RollingUpdate",
        "rollingUpdate": {"maxUnavailable": "25%", "maxSurge": "25%"},
    }


def test_services_get_a_cluster_ip_once_and_keep_it() -> None:
    s = Store()
    svc = s.create(
        "services",
        {"metadata": {"name": "a", "namespace": "default"}, "spec": {"ports": [{"port": 80}]}},
        strategy=True,
    )
    ip = svc["spec"]["clusterIP"]
    assert ip.startswith("10.") and svc["spec"]["type"] == "ClusterIP"
    assert svc["spec"]["ports"] == [{"port": 80, "protocol": "TCP", "targetPort": 80}]
    # An update that leaves clusterIP out (as `kubectl replace` of a manifest does) keeps it.
    again = s.update(
        "services",
        {"metadata": {"name": "a", "namespace": "default"}, "spec": {"ports": [{"port": 81}]}},
        strategy=True,
    )
    assert again["spec"]["clusterIP"] == ip
    headless = s.create(
        "services", {"metadata": {"name": "h", "namespace": "default"}, "spec": {"clusterIP": "None"}}, strategy=True
    )
    assert headless["spec"]["clusterIP"] == "None"


def test_secret_string_data_becomes_data_and_namespaces_get_their_name_label() -> None:
    s = Store()
    sec = s.create(
        "secrets", {"metadata": {"name": "s", "namespace": "default"}, "stringData": {"k": "v"}}, strategy=True
    )
    assert sec["data"] == {"k": "dg=="} and "stringData" not in sec and sec["type"] == "Opaque"
    ns = s.create("namespaces", {"metadata": {"name": "team-a"}}, strategy=True)
    assert ns["metadata"]["labels"]["kubernetes.io/metadata.name"] == "team-a"


# ---- dry run ---------------------------------------------------------------------------------


def test_dry_run_writes_change_nothing_and_emit_nothing() -> None:
    s = Store()
    s.create("configmaps", {"metadata": {"name": "c", "namespace": "default"}, "data": {"a": "1"}})
    w = s.watch("configmaps")
    w.next_initial(100)
    rv = s.rv
    made = s.create("configmaps", {"metadata": {"name": "new", "namespace": "default"}}, strategy=True, dry_run=True)
    assert made["metadata"]["uid"] and "resourceVersion" not in made["metadata"]
    changed = s.patch("configmaps", "c", {"data": {"a": "2"}}, namespace="default", strategy=True, dry_run=True)
    assert changed["data"] == {"a": "2"}
    gone = s.delete_object("configmaps", "c", namespace="default", dry_run=True)[0]
    assert gone.name == "c"
    ns_dry = s.delete_object("namespaces", "default", dry_run=True)[0]
    assert ns_dry.name == "default"
    assert s.rv == rv and w.drain() == []
    assert s.get("configmaps", "c", "default")["data"] == {"a": "1"}
    assert s.count("configmaps") == 1 and s.count("namespaces") == 4
    with pytest.raises(ApiError) as ei:  # a dry run is checked like a real write
        s.create("configmaps", {"metadata": {"name": "c", "namespace": "default"}}, strategy=True, dry_run=True)
    assert ei.value.code == 409


# ---- admission against schemas ------------------------------------------------------------------


def test_unknown_fields_of_built_in_kinds_per_field_validation_mode() -> None:
    s = Store()
    body = {
        "metadata": {"name": "c", "namespace": "default", "bogus": 1},
        "data": {"a": "1"},
        "datta": {"x": "y"},
    }
    with pytest.raises(ApiError) as ei:
        s.create_object("configmaps", copy.deepcopy(body), strategy=True, admission=Admission(STRICT))
    assert ei.value.code == 400
    assert 'strict decoding error: unknown field "metadata.bogus", unknown field "datta"' in ei.value.message
    assert s.count("configmaps") == 0

    warn = Admission(WARN)
    stored = s.create_object("configmaps", copy.deepcopy(body), strategy=True, admission=warn).to_dict()
    assert "datta" not in stored and "bogus" not in stored["metadata"] and stored["data"] == {"a": "1"}
    assert warn.warnings == ['unknown field "metadata.bogus"', 'unknown field "datta"']

    ignore = Admission(IGNORE)
    body["metadata"]["name"] = "c2"
    assert "datta" not in s.create_object("configmaps", body, strategy=True, admission=ignore).to_dict()
    assert ignore.warnings == []


def test_nested_unknown_fields_and_type_errors_in_a_deployment() -> None:
    s = Store()
    dep = {
        "metadata": {"name": "d", "namespace": "default"},
        "spec": {
            "selector": {"matchLabels": {"a": "b"}},
            "template": {
                "spec": {"containers": [{"name": "c", "image": "i", "imagePullPolicy": "Always", "imgae": "x"}]}
            },
        },
    }
    with pytest.raises(ApiError) as ei:
        s.create_object("deployments", copy.deepcopy(dep), strategy=True, admission=Admission(STRICT))
    assert 'unknown field "spec.template.spec.containers[0].imgae"' in ei.value.message
    bad = copy.deepcopy(dep)
    bad["spec"]["replicas"] = "3"
    with pytest.raises(ApiError) as ei:
        s.create_object("deployments", bad, strategy=True, admission=Admission(WARN))
    assert ei.value.code == 400
    assert "cannot unmarshal string into Go struct field DeploymentSpec.spec.replicas of type int32" in ei.value.message
    # int-or-string and quantities take either form; free-form fields (managedFields' FieldsV1) anything.
    ok = copy.deepcopy(dep)
    ok["spec"]["strategy"] = {"rollingUpdate": {"maxSurge": 1, "maxUnavailable": "10%"}}
    ok["spec"]["template"]["spec"]["containers"][0]["resources"] = {"limits": {"cpu": 1, "memory": "1Gi"}}
    del ok["spec"]["template"]["spec"]["containers"][0]["imgae"]
    s.create_object("deployments", ok, strategy=True, admission=Admission(STRICT))


def test_secret_data_must_be_base64() -> None:
    s = Store()
    with pytest.raises(ApiError) as ei:
        s.create_object(
            "secrets",
            {"metadata": {"name": "s", "namespace": "default"}, "data": {"k": "not base64!"}},
            strategy=True,
            admission=Admission(WARN),
        )
    assert ei.value.code == 400 and "illegal base64" in ei.value.message


def test_custom_resources_follow_their_crd_schema() -> None:
    s = Store()
    s.create("customresourcedefinitions", CRD_POOL, strategy=True)
    adm = Admission(WARN)
    stored = s.create_object(
        "ippools",
        pool(cidr="10.0.0.0/16", blockSize=26, cdir="x", extra={"anything": [1]}),
        strategy=True,
        admission=adm,
    ).to_dict()
    assert stored["spec"] == {"cidr": "10.0.0.0/16", "blockSize": 26, "extra": {"anything": [1]}, "vxlanMode": "Never"}
    assert adm.warnings == ['unknown field "spec.cdir"']
    with pytest.raises(ApiError) as ei:
        s.create_object("ippools", pool("q", blockSize="26", vxlanMode="Sometimes"), strategy=True, admission=adm)
    assert ei.value.code == 422
    causes = {c["field"]: c for c in ei.value.status["details"]["causes"]}
    assert set(causes) == {"spec.blockSize", "spec.vxlanMode", "spec.cidr"}
    assert causes["spec.vxlanMode"]["reason"] == "FieldValueNotSupported"
    assert causes["spec.cidr"]["reason"] == "FieldValueRequired"
    with pytest.raises(ApiError) as ei:
        s.create_object("ippools", pool("r", cidr="x", blockSize=8), strategy=True, admission=adm)
    assert "should be greater than or equal to 20" in ei.value.message
    # In-process writes (a load test writing "to etcd") are stored as given.
    assert s.create("ippools", pool("raw", cidr="x", whatever=True))["spec"]["whatever"] is True


def test_a_built_in_calico_kind_without_its_crd_is_stored_as_given() -> None:
    s = Store()
    adm = Admission(STRICT)
    out = s.create_object("ippools", pool(cidr="10.0.0.0/8", anything="goes"), strategy=True, admission=adm)
    assert out.to_dict()["spec"]["anything"] == "goes"


# ---- namespaces --------------------------------------------------------------------------------


def test_deleting_a_namespace_deletes_what_is_in_it_then_the_namespace() -> None:
    s = Store()
    s.create("namespaces", {"metadata": {"name": "app"}})
    s.create("namespaces", {"metadata": {"name": "other"}})
    for i in range(3):
        s.create("pods", make_pod("app", f"p{i}", "n1", f"10.0.0.{i}"))
    s.create("configmaps", {"metadata": {"name": "c", "namespace": "app"}})
    s.create("configmaps", {"metadata": {"name": "keep", "namespace": "other"}})
    wn, wp = s.watch("namespaces"), s.watch("pods")
    wn.next_initial(100)
    wp.next_initial(100)

    obj, gone = s.delete_object("namespaces", "app")
    assert gone and obj.to_dict()["status"]["phase"] == "Terminating"
    assert events(wn) == [(MODIFIED, "app"), (DELETED, "app")]
    assert events(wp) == [(DELETED, "p0"), (DELETED, "p1"), (DELETED, "p2")]
    assert s.count("pods") == 0 and [o.name for o in s.objects_in(s.resource("configmaps"), None)] == ["keep"]


def test_an_object_with_a_finalizer_holds_its_namespace_in_terminating() -> None:
    s = Store()
    s.create("namespaces", {"metadata": {"name": "app"}})
    s.create("configmaps", {"metadata": {"name": "held", "namespace": "app", "finalizers": ["example.com/x"]}})
    obj, gone = s.delete_object("namespaces", "app")
    assert not gone and obj.to_dict()["status"]["phase"] == "Terminating"
    with pytest.raises(ApiError) as ei:
        s.create("configmaps", {"metadata": {"name": "late", "namespace": "app"}}, strategy=True)
    assert ei.value.code == 403 and "being terminated" in ei.value.message
    s.patch("configmaps", "held", {"metadata": {"finalizers": None}}, namespace="app")
    with pytest.raises(ApiError):
        s.get("namespaces", "app")


# ---- CRDs --------------------------------------------------------------------------------------


def test_with_require_crds_a_custom_resource_is_served_only_while_its_crd_exists() -> None:
    s = Store(require_crds=True)
    with pytest.raises(ApiError) as ei:
        s.resource("ippools")
    assert ei.value.code == 404
    crd = s.create("customresourcedefinitions", CRD_POOL, strategy=True)
    conditions = {c["type"]: c["status"] for c in crd["status"]["conditions"]}
    assert conditions == {"NamesAccepted": "True", "Established": "True"}
    s.create("ippools", pool(cidr="10.0.0.0/16"), strategy=True)
    w = s.watch("ippools")
    w.next_initial(10)
    s.delete("customresourcedefinitions", "ippools.crd.projectcalico.org")
    assert w.closed
    with pytest.raises(ApiError):
        s.resource("ippools")
    # Created again: empty, as a new CRD is.
    s.create("customresourcedefinitions", CRD_POOL, strategy=True)
    assert s.count("ippools") == 0


def test_deleting_the_crd_of_a_built_in_calico_kind_deletes_its_objects_but_keeps_it_served() -> None:
    s = Store()
    s.create("customresourcedefinitions", CRD_POOL, strategy=True)
    s.create("ippools", pool(cidr="10.0.0.0/16"))
    w = s.watch("ippools")
    w.next_initial(10)
    s.delete("customresourcedefinitions", "ippools.crd.projectcalico.org")
    assert events(w) == [(DELETED, "p")]
    assert s.resource("ippools").custom and s.schemas.crd_schema("ippools.crd.projectcalico.org") is None


@pytest.mark.parametrize(
    ("change", "field"),
    [
        (lambda c: c["metadata"].update(name="wrong.crd.projectcalico.org"), "metadata.name"),
        (lambda c: c["spec"].update(group="nodots"), "spec.group"),
        (lambda c: c["spec"].update(scope="Galaxy"), "spec.scope"),
        (lambda c: c["spec"]["versions"][0].update(storage=False), "spec.versions"),
        (
            lambda c: c["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"].update(
                untyped={}
            ),
            "spec.versions[0].schema.openAPIV3Schema.properties[spec].properties[untyped].type",
        ),
    ],
)
def test_unacceptable_crds_are_422(change: Any, field: str) -> None:
    s = Store()
    crd = copy.deepcopy(CRD_POOL)
    change(crd)
    with pytest.raises(ApiError) as ei:
        s.create("customresourcedefinitions", crd, strategy=True)
    assert ei.value.code == 422
    assert field in {c["field"] for c in ei.value.status["details"]["causes"]}


def test_a_crd_cannot_claim_a_built_in_resource() -> None:
    s = Store()
    crd = copy.deepcopy(CRD_POOL)
    crd["metadata"]["name"] = "networkpolicies.networking.k8s.io"
    crd["spec"].update(group="networking.k8s.io", names={"kind": "NetworkPolicy", "plural": "networkpolicies"})
    with pytest.raises(ApiError) as ei:
        s.create("customresourcedefinitions", crd, strategy=True)
    assert ei.value.code == 422 and "served by the API server itself" in ei.value.message


# ---- Table output --------------------------------------------------------------------------------


def test_table_columns_for_built_in_kinds_and_crd_printer_columns() -> None:
    s = Store()
    s.create("pods", make_pod("default", "web-1", "node-1", "10.1.0.5"))
    page = s.list("pods", "default")
    t = tables.table(s.resource("pods"), page.items, page.metadata(), None)
    assert [c["name"] for c in t["columnDefinitions"]][:5] == ["Name", "Ready", "Status", "Restarts", "Age"]
    assert t["rows"][0]["cells"][:4] == ["web-1", "0/1", "Running", 0]
    assert t["rows"][0]["cells"][5:7] == ["10.1.0.5", "node-1"]  # wide (priority 1) columns
    assert t["rows"][0]["object"]["kind"] == "PartialObjectMetadata"

    s.create("customresourcedefinitions", CRD_POOL, strategy=True)
    s.create("ippools", pool(cidr="10.0.0.0/16"))
    objs = s.list("ippools").items
    t = tables.table(s.resource("ippools"), objs, {}, s.crd_columns["ippools.crd.projectcalico.org"], "Object")
    assert [c["name"] for c in t["columnDefinitions"]] == ["Name", "CIDR"]
    assert t["rows"][0]["cells"] == ["p", "10.0.0.0/16"] and t["rows"][0]["object"]["spec"]["cidr"]


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (5, "5s"),
        (119, "119s"),
        (150, "2m30s"),
        (600, "10m"),
        (3 * 3600 + 60, "3h1m"),
        (30 * 3600, "30h"),
        (3 * 86400, "3d"),
        (400 * 86400, "400d"),
    ],
)
def test_ages_read_like_kubectl(seconds: int, text: str) -> None:
    assert tables.human_duration(seconds) == text


def test_jsonpath_cells() -> None:
    o = {"spec": {"items": [{"x": 1}], "cidr": "c"}}
    assert tables.jsonpath_cell(".spec.cidr")(o) == "c"
    assert tables.jsonpath_cell(".spec.items[0].x")(o) == 1
    assert tables.jsonpath_cell(".spec.missing")(o) is None
    assert tables.jsonpath_cell(".status.conditions[?(@.type=='Ready')].status")(o) is None


# ---- protobuf request bodies ---------------------------------------------------------------------


_field = pb_field
_envelope = envelope


def test_protobuf_service_decodes_to_its_json_form() -> None:
    s = Store()
    meta = _field(1, "svc") + _field(3, "default") + _field(5, "") + _field(11, _field(1, "app") + _field(2, "web"))
    port = _field(1, "http") + _field(2, "TCP") + _field(3, 80) + _field(4, _field(1, 1) + _field(3, "web"))
    spec = _field(1, port) + _field(2, _field(1, "app") + _field(2, "web")) + _field(4, "ClusterIP")
    body = decode_protobuf(
        _envelope("v1", "Service", _field(1, meta) + _field(2, spec) + _field(3, b"")), s.resource("services")
    )
    assert body == {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "svc", "namespace": "default", "labels": {"app": "web"}},
        "spec": {
            "ports": [{"name": "http", "protocol": "TCP", "port": 80, "targetPort": "web"}],
            "selector": {"app": "web"},
            "type": "ClusterIP",
        },
    }


@pytest.mark.parametrize(
    ("raw", "code"),
    [
        (b"not protobuf", 400),
        (MAGIC + b"\x0a\xff", 400),  # a length past the end
        (MAGIC + b"\x0b", 400),  # wire type 3 (groups)
        (_envelope("v1", "Pod", b""), 400),  # another kind
        (_envelope("v1", "Namespace", _field(99, "x")), 415),  # a field the emulator cannot decode
    ],
)
def test_bad_protobuf_is_a_4xx(raw: bytes, code: int) -> None:
    with pytest.raises(ApiError) as ei:
        decode_protobuf(raw, Store().resource("namespaces"))
    assert ei.value.code == code


def test_protobuf_for_a_kind_without_a_table_is_415() -> None:
    with pytest.raises(ApiError) as ei:
        decode_protobuf(_envelope("v1", "Pod", b""), Store().resource("pods"))
    assert ei.value.code == 415


# ---- OpenAPI and the strategic merge metadata agree ---------------------------------------------------


def test_served_openapi_merge_keys_are_the_ones_strategic_merge_patch_uses() -> None:
    """kubectl builds its patches from the served x-kubernetes-patch-* extensions; the server applies
    them with patchschema.STRUCTS. Every merging list under every served built-in kind must agree."""
    s = Store()
    defs = s.schemas.definitions
    if not defs:
        pytest.skip("kubernetes-validate is not installed: no built-in schemas to compare")
    checked = 0
    for rt in DEFAULT_RESOURCES:
        if rt.custom or rt.strategic_type is None:
            continue
        name = s.schemas.builtin_name(rt.group, rt.version, rt.kind)
        assert name, f"no OpenAPI definition for {rt.key}"
        todo, seen = [(name, rt.strategic_type)], set()
        while todo:
            dname, stype = todo.pop()
            if (dname, stype) in seen:
                continue
            seen.add((dname, stype))
            for field, prop in (defs[dname].get("properties") or {}).items():
                fm = patchschema.field_meta(stype, field)
                strategy = prop.get("x-kubernetes-patch-strategy", "")
                if "merge" in strategy.split(","):
                    checked += 1
                    assert fm.merges and fm.merge_key == prop.get("x-kubernetes-patch-merge-key"), (
                        f"{rt.kind}: {dname}.{field} merges by {prop.get('x-kubernetes-patch-merge-key')!r} "
                        f"in OpenAPI but patchschema says {fm}"
                    )
                sub = prop.get("items", prop)
                for ref in walk_refs(sub):
                    if fm.type:
                        todo.append((ref, fm.type))
    assert checked >= 20


def test_openapi_v3_documents_carry_what_kubectl_looks_for() -> None:
    s = Store(require_crds=True)
    api = OpenAPI(s)
    if not s.schemas.definitions:
        pytest.skip("kubernetes-validate is not installed: no built-in schemas")
    import orjson

    index = orjson.loads(api.v3_index())["paths"]
    assert {"api/v1", "apis/apps/v1", "apis/rbac.authorization.k8s.io/v1"} <= set(index)
    assert "apis/crd.projectcalico.org/v1" not in index
    apps = orjson.loads(api.v3_document("apis/apps/v1") or b"")
    patch = apps["paths"]["/apis/apps/v1/namespaces/{namespace}/deployments/{name}"]["patch"]
    assert patch["x-kubernetes-group-version-kind"] == {"group": "apps", "version": "v1", "kind": "Deployment"}
    assert {"name": "fieldValidation", "in": "query"}.items() <= patch["parameters"][2].items()
    assert "application/strategic-merge-patch+json" in patch["requestBody"]["content"]
    assert "io.k8s.api.core.v1.Container" in apps["components"]["schemas"]

    s.create("customresourcedefinitions", CRD_POOL, strategy=True)
    index2 = orjson.loads(api.v3_index())["paths"]
    crd_doc = orjson.loads(api.v3_document("apis/crd.projectcalico.org/v1") or b"")
    pool_patch = crd_doc["paths"]["/apis/crd.projectcalico.org/v1/ippools/{name}"]["patch"]
    assert "application/strategic-merge-patch+json" not in pool_patch["requestBody"]["content"]
    schema = crd_doc["components"]["schemas"]["org.projectcalico.crd.v1.IPPool"]
    assert schema["properties"]["metadata"] == {
        "$ref": "#/components/schemas/io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"
    }
    assert index2["api/v1"] == index["api/v1"]  # unchanged documents keep their hash

    v2 = orjson.loads(api.v2_document())
    assert v2["swagger"] == "2.0" and "org.projectcalico.crd.v1.IPPool" in v2["definitions"]
    assert v2["definitions"]["io.k8s.apimachinery.pkg.util.intstr.IntOrString"]["format"] == "int-or-string"


def test_with_a_cleanup_delay_the_contents_stay_until_the_namespace_controller_runs() -> None:
    """`kubectl delete -k` deletes the namespace first and its objects right after: they must
    still be there, Terminating or not, as on a real cluster."""
    s = Store(namespace_cleanup_delay=5.0)
    s.create("namespaces", {"metadata": {"name": "app"}})
    s.create("configmaps", {"metadata": {"name": "a", "namespace": "app"}})
    s.create("configmaps", {"metadata": {"name": "b", "namespace": "app"}})
    obj, gone = s.delete_object("namespaces", "app")
    assert not gone and obj.to_dict()["status"]["phase"] == "Terminating"
    s.delete("configmaps", "a", namespace="app")  # what kubectl does next
    assert s.run_namespace_controller() == 0  # not due yet
    assert s.get("namespaces", "app")["status"]["phase"] == "Terminating"
    import time

    assert s.run_namespace_controller(time.monotonic() + 6) == 1
    assert s.count("configmaps") == 0
    with pytest.raises(ApiError):
        s.get("namespaces", "app")
