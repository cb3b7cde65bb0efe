"""Typha's Kubernetes datastore against the API-server emulator, over HTTPS with kubernetes-asyncio.

Agents are real SyncClients on loopback; the truth is the projection of the emulator's contents.
"""

from __future__ import annotations

import asyncio
import itertools
import signal
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from kubernetes_asyncio import client as kclient
from kubernetes_asyncio import config as kconfig

from loadtest.apiserver import start_apiserver
from loadtest.support.cluster import apply_events, seed, store_key, truth
from protocol import KV, SYNCER_BGP, SYNCER_FELIX, SyncStatus
from protocol.client import SyncClient
from typha.datastores.kubernetes import ApiError, Gone, KubernetesDatastore, ResourceStats, parse_watch_lines
from typha.ingest import Ingestor
from typha.simcluster import SyntheticCluster
from typha.snapcache import SnapCache
from typha.syncserver import ServerConfig, SyncServer

from .conftest import wait_for


@dataclass
class Rig:
    api: object
    store: object
    cluster: SyntheticCluster
    caches: dict[str, SnapCache]
    datastore: KubernetesDatastore
    server: SyncServer
    task: asyncio.Task
    kubeconfig: Path

    def agents(self, n: int, syncer: str = SYNCER_FELIX, **kw) -> list[SyncClient]:
        return [SyncClient([("127.0.0.1", self.server.port)], syncer, hostname=f"node-{i}", **kw) for i in range(n)]


async def make_api_client(path: Path) -> kclient.ApiClient:
    conf = kclient.Configuration()
    await kconfig.load_kube_config(config_file=str(path), client_configuration=conf)
    return kclient.ApiClient(conf)


@pytest.fixture
async def rig(tmp_path: Path, request: pytest.FixtureRequest) -> AsyncIterator[Rig]:
    """Parametrize it indirectly with a dict of KubernetesDatastore options to change them."""
    api = await start_apiserver(window_size=200, bookmark_interval=0.5)
    cluster = SyntheticCluster(nodes=20, pods_per_node=10, policies=5, seed=3)
    seed(api.store, cluster)
    kc = tmp_path / "kubeconfig"
    api.write_kubeconfig(str(kc))
    caches = {SYNCER_FELIX: SnapCache(SYNCER_FELIX), SYNCER_BGP: SnapCache(SYNCER_BGP)}
    ingestor = Ingestor(caches)
    k8s = await make_api_client(kc)
    options = {"page_size": 50, "backoff_initial": 0.05, "backoff_max": 0.5, **getattr(request, "param", {})}
    datastore = KubernetesDatastore(ingestor, k8s, **options)
    server = SyncServer(caches, ServerConfig(host="127.0.0.1", port=0))
    await server.start()
    task = asyncio.create_task(datastore.run())
    rig = Rig(api, api.store, cluster, caches, datastore, server, task, kc)
    try:
        yield rig
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await server.shutdown()
        await k8s.close()
        await api.stop()


def values(c: SyncClient) -> dict[str, bytes]:
    return {k: kv.value for k, kv in c.state.items() if kv.value is not None}


async def run_agents(agents: list[SyncClient]) -> list[asyncio.Task]:
    tasks = [asyncio.create_task(a.run()) for a in agents]
    await asyncio.gather(*(a.wait_in_sync(20) for a in agents))
    return tasks


async def stop_agents(agents: list[SyncClient], tasks: list[asyncio.Task]) -> None:
    for a in agents:
        a.stop()
    await asyncio.wait_for(asyncio.gather(*tasks), 10)


async def converged(rig: Rig, agents: list[SyncClient], syncer: str = SYNCER_FELIX, timeout: float = 20) -> None:
    want = truth(rig.store, syncer)
    cache = rig.caches[syncer]
    await wait_for(
        lambda: (
            all(a.seq == cache.head.seq for a in agents) and {k: v for k, (_, v, _) in cache.items().items()} == want
        ),
        timeout,
        "agents and cache to match the emulator",
    )
    for a in agents:
        assert values(a) == want


def pod_watches(rig: Rig) -> int:
    return rig.api.stats.resource("pods").open_watches


# ---------------------------------------------------------------------------------------------------


@pytest.mark.slow
async def test_agents_hold_the_projection_of_the_api_server(rig: Rig) -> None:
    agents = rig.agents(30) + rig.agents(3, SYNCER_BGP)
    tasks = await run_agents(agents)
    await converged(rig, agents[:30])
    await converged(rig, agents[30:], SYNCER_BGP)

    # However many agents, one watch per resource type upstream.
    def one_watch_each() -> bool:
        return all(rig.api.stats.resource(store_key(r.name)).open_watches == 1 for r in rig.datastore.resources)

    await wait_for(one_watch_each, 10, "one watch per resource")
    assert {r: dict(s.errors) for r, s in rig.datastore.stats.items() if s.errors} == {}  # a clean start has no errors
    assert all(s.lists == 1 for s in rig.datastore.stats.values())
    assert rig.caches[SYNCER_FELIX].status is SyncStatus.IN_SYNC
    await stop_agents(agents, tasks)


@pytest.mark.slow
async def test_random_churn_no_update_lost_or_duplicated(rig: Rig) -> None:
    seen: dict[str, list[bytes | None]] = {}

    def record(kvs: list[KV]) -> None:
        for kv in kvs:
            seen.setdefault(kv.key, []).append(kv.value)

    recorder = rig.agents(1, on_updates=record)
    agents = rig.agents(10) + recorder
    tasks = await run_agents(agents)
    for _ in range(30):
        apply_events(rig.store, rig.cluster.churn(10))
        await asyncio.sleep(0.01)
    await converged(rig, agents)
    for key, history in seen.items():
        for a, b in itertools.pairwise(history):
            assert a != b, f"{key} reported the same value twice in a row"
    await stop_agents(agents, tasks)


@pytest.mark.slow
async def test_status_only_pod_updates_are_skipped_and_never_reach_agents(rig: Rig) -> None:
    reported: list[KV] = []
    agents = rig.agents(1, on_updates=reported.extend)
    tasks = await run_agents(agents)
    await converged(rig, agents)
    reported.clear()
    cache = rig.caches[SYNCER_FELIX]
    skipped0, seq0 = cache.stats.updates_skipped, cache.head.seq
    events = rig.cluster.churn(40, mix={"pod_status": 1})
    assert events and all(r == "pods" for _, r, _ in events)
    apply_events(rig.store, events)
    await wait_for(lambda: cache.stats.updates_skipped - skipped0 >= len(events), 10, "heartbeats counted as skipped")
    assert cache.head.seq == seq0
    assert reported == []
    await stop_agents(agents, tasks)


@pytest.mark.slow
async def test_watch_cut_mid_stream_resumes_without_relist(rig: Rig) -> None:
    agents = rig.agents(5)
    tasks = await run_agents(agents)
    lists = {r: s.lists for r, s in rig.datastore.stats.items()}
    for _ in range(5):
        rig.api.cut_watches()
        apply_events(rig.store, rig.cluster.churn(15))
        await wait_for(lambda: pod_watches(rig) == 1, 10, "pods watch re-established")
    await converged(rig, agents)
    assert {r: s.lists for r, s in rig.datastore.stats.items()} == lists  # resumed from the last version
    await stop_agents(agents, tasks)


@pytest.mark.slow
async def test_compaction_forces_relist_that_synthesizes_deletions(rig: Rig) -> None:
    agents = rig.agents(5)
    tasks = await run_agents(agents)
    stats = rig.datastore.stats["pods"]
    relists = stats.relists_410
    # Cut the watches, change the world (including deletions), and compact so resuming gets 410.
    rig.api.cut_watches()
    victims = list(rig.store.list("pods").items)[:15]
    victim_keys = {k for k in agents[0].state for v in victims if f"/{v.namespace}%2f{v.name}/" in k}
    assert victim_keys
    for v in victims:
        rig.store.delete("pods", v.name, namespace=v.namespace)
    apply_events(rig.store, rig.cluster.churn(100))
    rig.api.compact()
    statuses: list[SyncStatus] = []
    rig.caches[SYNCER_FELIX].on_breadcrumb = (lambda prev: lambda bc: (statuses.append(bc.status), prev(bc)))(
        rig.caches[SYNCER_FELIX].on_breadcrumb
    )
    await wait_for(lambda: stats.relists_410 > relists, 10, "a 410 relist")
    await converged(rig, agents)
    assert set(statuses) <= {SyncStatus.IN_SYNC}  # a relist while connected keeps the cache in sync
    still_gone = {k for k in victim_keys if k not in truth(rig.store)}
    assert still_gone
    for a in agents:
        assert not still_gone & a.state.keys()
    await stop_agents(agents, tasks)


@pytest.mark.slow
async def test_api_server_restart_drops_status_then_recovers(rig: Rig) -> None:
    agents = rig.agents(3)
    tasks = await run_agents(agents)
    statuses: list[SyncStatus] = []
    watcher = rig.agents(1, on_status=statuses.append)
    tasks += await run_agents(watcher)
    port = rig.api.port
    store = rig.store
    await rig.api.stop()
    cache = rig.caches[SYNCER_FELIX]
    await wait_for(lambda: cache.status is SyncStatus.WAIT_FOR_DATASTORE, 15, "typha to notice the API server is gone")
    await wait_for(lambda: SyncStatus.WAIT_FOR_DATASTORE in statuses, 5, "agents told")
    apply_events(store, rig.cluster.churn(20))  # changes while typha cannot see them
    # Same store, same port, same certificate: a restarted API server.
    rig.api = await start_apiserver(port=port, store=store, token=rig.api.token, tls=rig.api.tls)
    await wait_for(lambda: cache.status is SyncStatus.IN_SYNC, 20, "typha back in sync")
    await converged(rig, agents + watcher)
    await stop_agents(agents + watcher, tasks)


@pytest.mark.slow
async def test_back_in_sync_within_2s_of_the_api_server_returning_whatever_the_backoff(tmp_path: Path) -> None:
    """Issue 9 item 8: followers that backed off up to 30 s wake on a probe answer, not at their timers."""
    api = await start_apiserver(bookmark_interval=0.5)
    seed(api.store, SyntheticCluster(nodes=5, pods_per_node=4, policies=2, seed=4))
    kc = tmp_path / "kubeconfig"
    api.write_kubeconfig(str(kc))
    caches = {SYNCER_FELIX: SnapCache(SYNCER_FELIX), SYNCER_BGP: SnapCache(SYNCER_BGP)}
    k8s = await make_api_client(kc)
    ds = KubernetesDatastore(Ingestor(caches), k8s)  # production backoff: 0.5 s doubling up to 30 s
    task = asyncio.create_task(ds.run())
    port, store, token, tls = api.port, api.store, api.token, api.tls
    try:
        await wait_for(ds.synced.is_set, 20, "first sync")
        await api.stop()
        # Stay down until every follower has failed four times: its next backoff is up to 8 s or more.
        await wait_for(
            lambda: all(sum(st.errors.values()) >= 4 for st in ds.stats.values()), 60, "followers backing off"
        )
        assert caches[SYNCER_FELIX].status is SyncStatus.WAIT_FOR_DATASTORE
        api = await start_apiserver(port=port, store=store, token=token, tls=tls, bookmark_interval=0.5)
        t0 = asyncio.get_running_loop().time()
        await wait_for(ds.synced.is_set, 10, "back in sync")
        took = asyncio.get_running_loop().time() - t0
        assert took < 2.0, f"back in sync {took:.1f}s after the API server returned"
        assert all(c.status is SyncStatus.IN_SYNC for c in caches.values())
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await k8s.close()
        await api.stop()


async def _emulator_process(tmp_path: Path, *args: str) -> tuple[asyncio.subprocess.Process, Path]:
    kc = tmp_path / "kubeconfig"
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "loadtest.apiserver", "--kubeconfig-out", str(kc), *args,
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert proc.stdout is not None
    assert (await asyncio.wait_for(proc.stdout.readline(), 20)).startswith(b"https://"), "emulator did not start"
    return proc, kc


@pytest.mark.slow
async def test_a_frozen_api_server_is_noticed_and_recovered_from(tmp_path: Path) -> None:
    """Issue 9 item 9: process stopped, sockets open -- no error ever arrives, only silence."""
    proc, kc = await _emulator_process(tmp_path, "--bookmark-interval=0.2", "--seed-nodes=3", "--seed-pods=6")
    caches = {SYNCER_FELIX: SnapCache(SYNCER_FELIX)}
    k8s = await make_api_client(kc)
    ds = KubernetesDatastore(Ingestor(caches), k8s, silence_timeout=1.0, probe_timeout=0.5, connect_timeout=1.0)
    task = asyncio.create_task(ds.run())
    try:
        await wait_for(ds.synced.is_set, 20, "first sync")
        await asyncio.sleep(1.5)  # bookmarks keep quiet watches alive: nothing is mistaken for silence
        assert caches[SYNCER_FELIX].status is SyncStatus.IN_SYNC and not any(s.errors for s in ds.stats.values())
        proc.send_signal(signal.SIGSTOP)
        await wait_for(
            lambda: caches[SYNCER_FELIX].status is SyncStatus.WAIT_FOR_DATASTORE, 10, "the freeze to be noticed"
        )
        assert any(st.errors["watch-silent"] for st in ds.stats.values())
        proc.send_signal(signal.SIGCONT)
        await wait_for(ds.synced.is_set, 15, "recovery once the API server runs again")
        assert caches[SYNCER_FELIX].status is SyncStatus.IN_SYNC
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await k8s.close()
        proc.send_signal(signal.SIGCONT)
        proc.terminate()
        await proc.wait()


@pytest.mark.slow
async def test_a_quiet_watch_on_a_live_api_server_is_restarted_without_leaving_in_sync(tmp_path: Path) -> None:
    """No bookmarks (an API server that does not send them): silence, but the probe answers."""
    api = await start_apiserver(bookmark_interval=3600)
    seed(api.store, SyntheticCluster(nodes=2, pods_per_node=2, policies=1, seed=5))
    kc = tmp_path / "kubeconfig"
    api.write_kubeconfig(str(kc))
    cache = SnapCache(SYNCER_FELIX)
    k8s = await make_api_client(kc)
    ds = KubernetesDatastore(Ingestor({SYNCER_FELIX: cache}), k8s, silence_timeout=0.3)
    task = asyncio.create_task(ds.run())
    try:
        await wait_for(ds.synced.is_set, 20, "first sync")
        seq = cache.head.seq
        await wait_for(lambda: ds.stats["pods"].quiet_restarts >= 2, 10, "quiet watches restarted")
        assert cache.status is SyncStatus.IN_SYNC and cache.head.seq == seq  # no status change was published
        assert not any(st.errors for st in ds.stats.values())
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await k8s.close()
        await api.stop()


@pytest.mark.slow
async def test_bad_token_and_forbidden_resource_are_retried_not_fatal(tmp_path: Path) -> None:
    api = await start_apiserver()
    seed(api.store, SyntheticCluster(nodes=3, pods_per_node=2, seed=1))
    good, bad = tmp_path / "good", tmp_path / "bad"
    api.write_kubeconfig(str(good))
    api.write_kubeconfig(str(bad), token="wrong")
    caches = {SYNCER_FELIX: SnapCache(SYNCER_FELIX)}
    try:
        # 401: everything waits for the datastore; typha keeps running and retrying.
        k8s = await make_api_client(bad)
        ds = KubernetesDatastore(Ingestor(caches), k8s, backoff_initial=0.01, backoff_max=0.05)
        task = asyncio.create_task(ds.run())
        await wait_for(lambda: ds.stats["pods"].errors["unauthorized"] >= 3, 10, "401s retried")
        assert caches[SYNCER_FELIX].status is SyncStatus.WAIT_FOR_DATASTORE and not task.done()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await k8s.close()
        # 403 on one resource: the others sync, the cache does not claim in-sync.
        api.forbid("list:ippools.crd.projectcalico.org")
        k8s = await make_api_client(good)
        ds = KubernetesDatastore(Ingestor(caches), k8s, backoff_initial=0.01, backoff_max=0.05)
        task = asyncio.create_task(ds.run())
        await wait_for(
            lambda: ds.stats["ippools"].errors["forbidden"] >= 2 and ds.stats["pods"].state is SyncStatus.IN_SYNC,
            10,
            "403 retried",
        )
        assert caches[SYNCER_FELIX].status is SyncStatus.WAIT_FOR_DATASTORE
        api.allow("list:ippools.crd.projectcalico.org")
        await wait_for(lambda: caches[SYNCER_FELIX].status is SyncStatus.IN_SYNC, 10, "in sync once allowed")
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await k8s.close()
    finally:
        await api.stop()


@pytest.mark.slow
async def test_a_resource_that_keeps_failing_keeps_its_cache_waiting_not_flapping_to_resync(tmp_path: Path) -> None:
    """A retry is not a resync: only a listing the API server answers moves a cache to resync-in-progress."""
    api = await start_apiserver()
    seed(api.store, SyntheticCluster(nodes=3, pods_per_node=2, seed=1))
    api.forbid("list:ippools.crd.projectcalico.org")
    kc = tmp_path / "kubeconfig"
    api.write_kubeconfig(str(kc))
    cache = SnapCache(SYNCER_FELIX)
    seen: list[SyncStatus] = []
    set_status = cache.set_status

    def recording(status: SyncStatus) -> bool:
        seen.append(status)
        return set_status(status)

    cache.set_status = recording  # type: ignore[method-assign]
    k8s = await make_api_client(kc)
    ds = KubernetesDatastore(Ingestor({SYNCER_FELIX: cache}), k8s, backoff_initial=0.001, backoff_max=0.005)
    task = asyncio.create_task(ds.run())
    try:
        await wait_for(
            lambda: ds.stats["ippools"].errors["forbidden"] >= 20 and ds.stats["pods"].state is SyncStatus.IN_SYNC,
            10,
            "every other resource synced, ippools retried",
        )
        assert set(seen) == {SyncStatus.WAIT_FOR_DATASTORE}, "agents must not see wait -> resync -> wait per retry"
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await k8s.close()
        await api.stop()


@pytest.mark.slow
async def test_a_certificate_that_does_not_verify_is_a_tls_error_not_unreachable(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from loadtest.apiserver import make_tls, write_kubeconfig
    from typha.metrics import ServerMetrics
    from typha.ops import readiness, status

    api = await start_apiserver()
    kc = tmp_path / "kubeconfig"
    write_kubeconfig(kc, api.url, make_tls().ca_pem, api.token)  # another CA than the one that signed the server
    caches = {SYNCER_FELIX: SnapCache(SYNCER_FELIX)}
    k8s = await make_api_client(kc)
    ds = KubernetesDatastore(Ingestor(caches), k8s, backoff_initial=0.01, backoff_max=0.05)
    server = SyncServer(caches, ServerConfig(host="127.0.0.1", port=0))
    await server.start()
    task = asyncio.create_task(ds.run())
    try:
        await wait_for(lambda: ds.stats["pods"].errors["tls"] >= 2, 10, "TLS errors counted")
        assert all(not st.errors["unreachable"] for st in ds.stats.values())
        assert "pods: tls (" in caplog.text and "certificate verify failed" in caplog.text
        # The metric, /status and /readiness say so too.
        metrics = ServerMetrics()
        metrics.watch_datastore(ds.stats_view)
        tls_errors = metrics.registry.get_sample_value(
            "typha_datastore_errors_total", {"resource": "pods", "kind": "tls"}
        )
        assert tls_errors is not None and tls_errors >= 2
        pods = status(server, caches, False, ds.stats)["datastore"]["pods"]  # type: ignore[index]
        assert pods["status"] == "WAIT_FOR_DATASTORE" and pods["last_error"].startswith("tls: ")
        ready, why = readiness(server, caches, ds.stats)
        assert not ready and ": tls: " in why
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await server.shutdown()
        await k8s.close()
        await api.stop()


@pytest.mark.slow
async def test_objects_missing_fields_are_skipped_and_counted(rig: Rig) -> None:
    agents = rig.agents(1)
    tasks = await run_agents(agents)
    ingestor = rig.datastore.ingestor
    rig.store.create(
        "pods",
        {
            "metadata": {"name": "broken", "namespace": "default"},
            "spec": {"nodeName": 7},
            "status": {"podIP": "not-an-ip"},
        },
    )
    await wait_for(lambda: ingestor.errors["pods"] >= 1, 10, "malformed pod counted")
    apply_events(rig.store, rig.cluster.churn(10))
    await converged(rig, agents)  # the stream carried on past the bad object
    await stop_agents(agents, tasks)


def test_watch_line_parser_skips_garbage_and_raises_on_errors() -> None:
    st = ResourceStats()
    lines = [
        b'{"type":"ADDED","object":{"metadata":{"name":"a","resourceVersion":"5"}}}',
        b"not json at all",
        b'{"type":"WEIRD","object":{}}',
        b'["array"]',
        b"",
        b'{"type":"BOOKMARK","object":{"metadata":{"resourceVersion":"9"}}}',
    ]
    events, rv = parse_watch_lines(lines, st)
    assert [t for t, _ in events] == ["ADDED"] and rv == "9"
    assert st.malformed == 3 and st.bookmarks == 1
    with pytest.raises(Gone):
        parse_watch_lines([b'{"type":"ERROR","object":{"kind":"Status","code":410,"message":"too old"}}'], st)
    with pytest.raises(ApiError):
        parse_watch_lines([b'{"type":"ERROR","object":{"kind":"Status","code":500}}'], st)


def test_connection_target_formula() -> None:
    from typha.rebalance import connection_target

    assert connection_target(2, 0, 3) == 400  # small clusters: the floor
    assert connection_target(2, 1000, 3) == int(2 * (1 + 1000 * 1.2 / 2))  # 1,202: room to lose one replica
    assert connection_target(2, 1000, 1) == int(2 * (1 + 1000 * 1.2))  # one replica carries everything
    assert connection_target(2, 100_000, 3) == 10_000  # the ceiling


@pytest.mark.slow
async def test_rebalancer_counts_nodes_and_ready_replicas(rig: Rig) -> None:
    from loadtest.apiserver.fixtures import make_node
    from typha.rebalance import Rebalancer

    def slice_(ready: list[bool]) -> dict:
        return {
            "apiVersion": "discovery.k8s.io/v1",
            "kind": "EndpointSlice",
            "addressType": "IPv4",
            "metadata": {
                "name": "pytypha-x",
                "namespace": "pytypha",
                "labels": {"kubernetes.io/service-name": "pytypha"},
            },
            "ports": [{"name": "calico-typha", "port": 5473}],
            "endpoints": [{"addresses": [f"198.18.1.{i}"], "conditions": {"ready": r}} for i, r in enumerate(ready)],
        }

    rig.store.create("endpointslices", slice_([True, True, True, False]))
    for i in range(800):
        rig.store.create("nodes", make_node(f"extra-{i}", f"198.18.{2 + i // 250}.{i % 250}"))
    await wait_for(lambda: rig.datastore.ingestor.objects["nodes"] == 820, 10, "nodes ingested")
    rb = Rebalancer(rig.server, rig.datastore.ingestor, rig.datastore.api, "pytypha", "pytypha")
    target = await rb.update()
    assert rb.replicas == 3  # the not-ready endpoint does not count
    assert target == int(2 * (1 + 820 * 1.2 / 2)) == rig.server.rebalance_target
