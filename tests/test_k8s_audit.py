"""The periodic audit (issue 13 item 6): the cache compared with the API server at one version, any
divergence counted, logged and repaired by a relist; never a false alarm under churn."""

from __future__ import annotations

import copy

import aiohttp
import orjson
import pytest

from loadtest.apiserver import start_apiserver
from loadtest.support.cluster import churn_at_rate, seed
from typha import config as typha_config
from typha.datastores.audit import METADATA_ACCEPT, AuditPageError, compare, decode_page
from typha.datastores.failures import RELIST_AUDIT
from typha.ingest import ADDED, DELETED, MODIFIED
from typha.simcluster import SyntheticCluster

from .conftest import wait_for
from .test_deploy import typha_env
from .test_k8s_datastore import Rig, converged, rig, run_agents, stop_agents  # noqa: F401 (rig: a fixture)

AUDITED = pytest.mark.parametrize("rig", [{"audit_interval": 0.2}], indirect=True)


@pytest.fixture
def k8s(rig: Rig) -> Rig:  # noqa: F811 (the fixture above)
    """The datastore tests' rig: an emulator, typha's datastore and caches, a sync server."""
    return rig


def _list(items: list[dict], rv: str = "90", cont: str = "") -> bytes:
    md = {"resourceVersion": rv, **({"continue": cont} if cont else {})}
    return orjson.dumps({"kind": "PartialObjectMetadataList", "metadata": md, "items": items})


def test_a_page_gives_names_and_versions_from_metadata_or_whole_objects() -> None:
    meta = {"kind": "PartialObjectMetadata", "metadata": {"name": "a", "namespace": "ns", "resourceVersion": "7"}}
    whole = {"kind": "Pod", "metadata": {"name": "b", "resourceVersion": "8", "labels": {"x": "y"}}, "spec": {}}
    page = decode_page(_list([meta, whole], cont="tok"))
    assert page.versions == {("ns", "a"): "7", ("", "b"): "8"}
    assert (page.resource_version, page.continue_token) == ("90", "tok")
    assert decode_page(_list([])).versions == {} and decode_page(b'{"metadata": {}, "items": null}').versions == {}
    for bad in (b"[]", b"not json", _list([{"metadata": {"resourceVersion": "1"}}]), b'{"items": [3]}'):
        with pytest.raises(AuditPageError):
            decode_page(bad)


def test_compare_names_every_kind_of_divergence_and_nothing_else() -> None:
    cached = {("ns", "same"): "1", ("ns", "stale"): "2", ("", "phantom"): "3"}
    d = compare([{("ns", "same"): "1"}, {("ns", "stale"): "5", ("ns", "missing"): "6"}], cached)
    assert (d.missing, d.phantom, d.stale) == ([("ns", "missing")], [("", "phantom")], [("ns", "stale")])
    assert d.counts() == {"missing": 1, "phantom": 1, "stale": 1}
    assert d.describe() == "1 missing (ns/missing), 1 phantom (phantom), 1 stale (ns/stale)"
    assert not compare([{("ns", "same"): "1"}], {("ns", "same"): "1"})
    many = compare([{("ns", f"p{i}"): "1" for i in range(5)}], {})
    assert many.describe(examples=2) == "5 missing (ns/p0, ns/p1, ...)"


async def test_the_emulator_lists_metadata_only_when_asked_as_kube_apiserver_does() -> None:
    async with await start_apiserver() as api:
        seed(api.store, SyntheticCluster(nodes=2, pods_per_node=3, policies=1, seed=2))
        headers = {"Authorization": f"Bearer {api.token}", "Accept": METADATA_ACCEPT}
        async with aiohttp.ClientSession() as http:
            url = f"{api.url}/api/v1/pods?limit=4"
            async with http.get(url, headers=headers, ssl=api.client_ssl_context()) as r:
                body = await r.read()
    doc = orjson.loads(body)
    assert doc["kind"] == "PartialObjectMetadataList" and len(doc["items"]) == 4 and doc["metadata"]["continue"]
    assert all(set(i) == {"kind", "apiVersion", "metadata"} for i in doc["items"])  # no spec, no status
    assert len(decode_page(body).versions) == 4


def test_the_audit_interval_default_is_the_manifests() -> None:
    default = typha_config.load_config([], environ={}).k8s_audit_interval
    assert 60 <= default <= 600  # "every few minutes"
    assert float(typha_env()["TYPHA_K8S_AUDIT_INTERVAL"]) == default


@pytest.mark.slow
@AUDITED
async def test_audits_under_churn_find_nothing_to_repair(k8s: Rig) -> None:
    """The audit lists at the version the cache is at, so objects that change meanwhile are no
    divergence: a false alarm would cost a relist."""
    pods = k8s.datastore.stats["pods"]
    await wait_for(k8s.datastore.synced.is_set, 20, "first sync")
    ok = pods.audits["ok"]
    await churn_at_rate(k8s.store, k8s.cluster, rate=60, seconds=2.5)
    await wait_for(lambda: pods.audits["ok"] >= ok + 3, 15, "audits of pods under churn")
    stats = k8s.datastore.stats.values()
    assert not any(st.divergences for st in stats), {r: st.divergences for r, st in k8s.datastore.stats.items()}
    assert not any(st.relists[RELIST_AUDIT] for st in stats)
    assert sum(st.audits["ok"] for st in stats) > len(k8s.datastore.resources)  # every resource, not only pods


@pytest.mark.slow
@AUDITED
async def test_the_audit_finds_missing_phantom_and_stale_objects_and_repairs_them(k8s: Rig) -> None:
    """Events the cache got wrong behind the watch's back (lost, invented, out of date): the API
    server never says so; the audit sees each, and a relist gives the agents exactly the truth."""
    agents = k8s.agents(3)
    tasks = await run_agents(agents)
    await converged(k8s, agents)
    a, b, c = (o.to_dict() for o in k8s.store.list("pods").items[:3])
    ghost = copy.deepcopy(b)
    ghost["metadata"]["name"] = "ghost"
    stale = copy.deepcopy(c)
    stale["metadata"]["labels"] = {**stale["metadata"].get("labels", {}), "audit": "stale"}
    stale["metadata"]["resourceVersion"] = "2"
    k8s.datastore.ingestor.handle([(DELETED, "pods", a), (ADDED, "pods", ghost), (MODIFIED, "pods", stale)])
    pods = k8s.datastore.stats["pods"]
    await wait_for(lambda: pods.relists[RELIST_AUDIT] >= 1, 15, "a relist asked for by the audit")
    assert pods.divergences["missing"] >= 1 and pods.divergences["phantom"] >= 1 and pods.divergences["stale"] >= 1
    await converged(k8s, agents)
    await wait_for(lambda: pods.audits["ok"] >= 1 and pods.audits["diverged"] == 1, 10, "a clean audit after")
    await stop_agents(agents, tasks)
