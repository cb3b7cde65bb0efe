"""The install features of the emulator over HTTPS, as kubectl meets them: ?dryRun=All,
?fieldValidation= with Warning headers, Table output, /openapi/v2 and /openapi/v3 behind the
token, protobuf create bodies, and CRDs registering resources that discovery then lists."""

from __future__ import annotations

from typing import Any

import aiohttp
import orjson
import pytest

from loadtest.apiserver import start_apiserver
from loadtest.apiserver.openapi_pb import MEDIA_TYPES as OPENAPI_V2_PROTOBUF
from loadtest.apiserver.protobuf import MAGIC, PROTOBUF

from .test_install_emulator import CRD_POOL, _field, pool

pytestmark = [pytest.mark.timeout(60), pytest.mark.slow]
TOKEN = "t"
TABLE = (
    "application/json;as=Table;v=v1;g=meta.k8s.io,application/json;as=Table;v=v1beta1;g=meta.k8s.io,application/json"
)


@pytest.fixture
async def server() -> Any:
    h = await start_apiserver(token=TOKEN, require_crds=True)
    try:
        yield h
    finally:
        await h.stop()


async def req(h: Any, method: str, path: str, *, token: str = TOKEN, **kw: Any) -> tuple[int, Any, Any]:
    headers = {"Authorization": f"Bearer {token}", **kw.pop("headers", {})}
    if "json" in kw:
        kw["data"] = orjson.dumps(kw.pop("json"))
        headers.setdefault("Content-Type", "application/json")
    async with (
        aiohttp.ClientSession() as sess,
        sess.request(method, h.url + path, ssl=h.client_ssl_context(), headers=headers, **kw) as r,
    ):
        body = await r.read()
        return r.status, r.headers, orjson.loads(body) if body else None


CM = "/api/v1/namespaces/default/configmaps"


async def test_dry_run_over_http_and_its_one_accepted_value(server: Any) -> None:
    rv = server.store.rv
    status, _, body = await req(server, "POST", CM + "?dryRun=All", json={"metadata": {"name": "c"}})
    assert status == 201 and body["metadata"]["name"] == "c"
    assert server.store.rv == rv and server.store.count("configmaps") == 0
    status, _, body = await req(server, "POST", CM + "?dryRun=Some", json={"metadata": {"name": "c"}})
    assert status == 400 and "dryRun" in body["message"]


async def test_field_validation_over_http(server: Any) -> None:
    body = {"metadata": {"name": "c"}, "data": {"a": "1"}, "datta": {}, "extra": 1}
    status, _, out = await req(server, "POST", CM + "?fieldValidation=Strict", json=body)
    assert status == 400 and 'unknown field "datta", unknown field "extra"' in out["message"]
    status, headers, out = await req(server, "POST", CM, json=body)  # Warn, kube's default
    assert status == 201 and "datta" not in out
    assert headers.getall("Warning") == ['299 - "unknown field \\"datta\\""', '299 - "unknown field \\"extra\\""']
    status, _, out = await req(server, "POST", CM + "?fieldValidation=Loose", json=body)
    assert status == 400


async def test_table_output_for_get_and_list(server: Any) -> None:
    await req(server, "POST", CM, json={"metadata": {"name": "c"}, "data": {"a": "1", "b": "2"}})
    status, _, t = await req(server, "GET", CM, headers={"Accept": TABLE})
    assert status == 200 and t["kind"] == "Table" and t["apiVersion"] == "meta.k8s.io/v1"
    assert [c["name"] for c in t["columnDefinitions"]] == ["Name", "Data", "Age"]
    assert t["rows"][0]["cells"][:2] == ["c", 2] and t["metadata"]["resourceVersion"]
    status, _, t = await req(server, "GET", CM + "/c?includeObject=None", headers={"Accept": TABLE})
    assert status == 200 and len(t["rows"]) == 1 and "object" not in t["rows"][0]
    status, _, plain = await req(server, "GET", CM + "/c")  # no Table asked for: the object
    assert plain["kind"] == "ConfigMap"


async def test_openapi_needs_the_token_and_serves_both_versions(server: Any) -> None:
    status, _, _ = await req(server, "GET", "/openapi/v3", token="wrong")
    assert status == 401
    status, _, index = await req(server, "GET", "/openapi/v3")
    assert status == 200
    url = index["paths"]["apis/apps/v1"]["serverRelativeURL"]
    assert "?hash=" in url
    status, _, doc = await req(server, "GET", url)
    assert status == 200 and doc["openapi"].startswith("3.")
    status, _, _ = await req(server, "GET", "/openapi/v3/apis/nothing/v1")
    assert status == 404
    status, _, v2 = await req(server, "GET", "/openapi/v2", headers={"Accept": "application/json"})
    assert status == 200 and v2["swagger"] == "2.0"
    # kubectl asks for gnostic protobuf only, and reads nothing else.
    async with (
        aiohttp.ClientSession() as sess,
        sess.get(
            server.url + "/openapi/v2",
            ssl=server.client_ssl_context(),
            headers={"Authorization": f"Bearer {TOKEN}", "Accept": OPENAPI_V2_PROTOBUF[0]},
        ) as r,
    ):
        raw = await r.read()
    assert r.status == 200 and raw.startswith(b"\x0a\x032.0")  # Document.swagger = "2.0"
    assert b"x-kubernetes-group-version-kind" in raw and b"io.k8s.api.apps.v1.Deployment" in raw
    status, _, _ = await req(server, "GET", "/openapi/v2", headers={"Accept": "application/yaml"})
    assert status == 406


async def test_a_crd_over_http_registers_its_resource(server: Any) -> None:
    crds = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions"
    status, _, _ = await req(server, "GET", "/apis/crd.projectcalico.org/v1/ippools")
    assert status == 404
    status, _, crd = await req(server, "POST", crds, json=CRD_POOL)
    assert status == 201 and crd["status"]["acceptedNames"]["kind"] == "IPPool"
    status, _, groups = await req(server, "GET", "/apis")
    assert "crd.projectcalico.org" in {g["name"] for g in groups["groups"]}
    status, _, out = await req(
        server,
        "POST",
        "/apis/crd.projectcalico.org/v1/ippools?fieldValidation=Strict",
        json=pool(cidr="10.0.0.0/16", cdir=1),
    )
    assert status == 400 and 'unknown field "spec.cdir"' in out["message"]
    status, _, out = await req(server, "POST", "/apis/crd.projectcalico.org/v1/ippools", json=pool(cidr="10.0.0.0/16"))
    assert status == 201 and out["spec"]["vxlanMode"] == "Never"
    status, _, t = await req(server, "GET", "/apis/crd.projectcalico.org/v1/ippools", headers={"Accept": TABLE})
    assert [c["name"] for c in t["columnDefinitions"]] == ["Name", "CIDR"] and t["rows"][0]["cells"] == [
        "p",
        "10.0.0.0/16",
    ]


async def test_protobuf_create_over_http_answers_json(server: Any) -> None:
    meta = _field(1, "pb") + _field(5, "")
    raw = MAGIC + _field(1, _field(1, "v1") + _field(2, "Namespace")) + _field(2, _field(1, meta))
    status, headers, out = await req(
        server,
        "POST",
        "/api/v1/namespaces?fieldValidation=Strict",
        data=raw,
        headers={"Content-Type": PROTOBUF, "Accept": f"{PROTOBUF},application/json"},
    )
    assert status == 201 and headers["Content-Type"].startswith("application/json")
    assert out["metadata"]["name"] == "pb" and out["status"]["phase"] == "Active"
