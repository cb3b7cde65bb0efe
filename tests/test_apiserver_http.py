"""The API-server emulator over HTTPS on loopback, driven by the unmodified kubernetes-asyncio client
configured from the kubeconfig the emulator writes: discovery, CRUD with status bodies, Calico
objects, consistent pagination, authentication, selectors, stats, the command line, and scale.
Waiting is always on a condition with a timeout (``wait_for``), never a bare sleep.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from pathlib import Path

import aiohttp
import orjson
import pytest
from kubernetes_asyncio import client, config, watch
from kubernetes_asyncio.client.exceptions import ApiException

from loadtest.apiserver import make_calico_object, make_node, start_apiserver
from tests.conftest import wait_for
from tests.support import apiserver as lab
from tests.support.apiserver import CALICO, TOKEN, api_client, pod, raw_request, stream

server, api = lab.server, lab.api  # the fixtures, where pytest finds them

pytestmark = pytest.mark.timeout(30)


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
async def test_auth_401_and_403(server, api, tmp_path) -> None:
    async with await api_client(server, tmp_path / "bad", token="wrong") as bad:
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
        async with await api_client(h, tmp_path / "kc") as api:
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
            resps = await asyncio.gather(
                *(
                    stream(sess, h, f"/api/v1/nodes?watch=1&resourceVersion={rv}&timeoutSeconds=20")
                    for _ in range(n_watchers)
                )
            )
            await wait_for(lambda: h.stats.resource("nodes").open_watches == n_watchers, 10)
            store.patch("nodes", "node-0001", {"metadata": {"labels": {"fanout": "1"}}})
            lines = await asyncio.gather(*(r.content.readline() for r in resps))
            assert len(set(lines)) == 1 and json.loads(lines[0])["type"] == "MODIFIED"
            for r in resps:
                r.close()
        st_ = h.stats.resource("nodes")
        assert st_.events_sent == n_watchers and st_.bytes_sent == n_watchers * len(lines[0])
    finally:
        await h.stop()
