"""Never serve a history that no longer exists (issue 13 item 6): typha against an API server whose
etcd is restored from a backup, so resourceVersions it saw are handed out again for other contents.

The pass condition is always the exact state: the cache and every agent hold the projection of the
emulator's final contents (no missing, phantom or stale key).
"""

from __future__ import annotations

import orjson
import pytest

from loadtest.support.cluster import apply_events
from typha.datastores.failures import (
    RELIST_OUTAGE,
    RELIST_TOO_LARGE,
    ApiError,
    Gone,
    TooLarge,
    is_outage,
)
from typha.datastores.kubernetes import ResourceStats, parse_watch_lines

from .conftest import wait_for
from .test_k8s_datastore import (
    Rig,
    converged,
    rig,  # noqa: F401 (a fixture: pytest finds it by this name)
    run_agents,
    stop_agents,
)


@pytest.fixture
def k8s(rig: Rig) -> Rig:  # noqa: F811 (the fixture above)
    """The datastore tests' rig: an emulator, typha's datastore and caches, a sync server."""
    return rig


def _error_event(status: dict) -> bytes:
    return orjson.dumps({"type": "ERROR", "object": {"kind": "Status", "apiVersion": "v1", **status}})


def test_a_too_large_resource_version_is_gone_by_its_cause_or_by_its_message() -> None:
    """kube-apiserver since 1.20 marks it with the ResourceVersionTooLarge cause; older ones only
    say so in the message (client-go checks both)."""
    cause = {"causes": [{"reason": "ResourceVersionTooLarge", "message": "Too large resource version"}]}
    with pytest.raises(TooLarge):
        parse_watch_lines([_error_event({"code": 504, "reason": "Timeout", "details": cause})], ResourceStats())
    with pytest.raises(TooLarge):
        parse_watch_lines(
            [_error_event({"code": 504, "message": "Too large resource version: 90, current: 40"})], ResourceStats()
        )
    with pytest.raises(ApiError) as plain:  # another timeout is an error, not a reason to relist
        parse_watch_lines([_error_event({"code": 504, "message": "request timed out"})], ResourceStats())
    assert not isinstance(plain.value, Gone) and plain.value.status == 504
    with pytest.raises(Gone) as gone:
        parse_watch_lines([_error_event({"code": 410, "message": "too old resource version"})], ResourceStats())
    assert not isinstance(gone.value, TooLarge)


@pytest.mark.parametrize(
    ("kind", "outage"),
    [
        ("unreachable", True),
        ("tls", True),
        ("timeout", True),
        ("watch-dropped", True),
        ("watch-silent", True),  # only counted when the probe got no answer either
        ("http-503", True),
        ("http-500", True),
        ("unauthorized", False),  # the server answered: it did not lose its history
        ("forbidden", False),
        ("http-429", False),
    ],
)
def test_which_failures_make_the_old_resource_version_untrusted(kind: str, outage: bool) -> None:
    assert is_outage(kind) is outage


@pytest.mark.slow
async def test_an_api_server_restarted_on_a_restored_etcd_is_relisted_not_resumed(k8s: Rig) -> None:
    """The restored server's revisions pass typha's before typha is back: resuming would succeed and
    stream a history the cache never saw (the writes between the backup and the outage missing)."""
    agents = k8s.agents(3)
    tasks = await run_agents(agents)
    backup = k8s.store.backup()
    apply_events(k8s.store, k8s.cluster.churn(150))  # what the backup will not have
    await converged(k8s, agents)
    seen = int(k8s.datastore.stats["pods"].resource_version)
    await k8s.api.restart(down=0.5, restore=backup)
    apply_events(k8s.store, k8s.cluster.churn(400))  # other writes, under revisions typha saw
    assert k8s.store.rv > seen > backup.rv
    await converged(k8s, agents)
    assert k8s.datastore.stats["pods"].relists[RELIST_OUTAGE] >= 1
    await stop_agents(agents, tasks)


@pytest.mark.slow
async def test_a_history_replaced_without_an_outage_is_relisted_on_too_large(k8s: Rig) -> None:
    """The same server, its store restored under it (an API server behind a load balancer moved to
    a restored etcd): no connection fails, the watch resumes, and the answer is 504 too large."""
    k8s.api.config.too_large_rv_wait = 0.3
    agents = k8s.agents(3)
    tasks = await run_agents(agents)
    backup = k8s.store.backup()
    apply_events(k8s.store, k8s.cluster.churn(150))
    await converged(k8s, agents)
    pods = k8s.datastore.stats["pods"]
    k8s.store.restore(backup)
    await wait_for(lambda: pods.relists[RELIST_TOO_LARGE] >= 1, 15, "a relist on 504 too large resource version")
    apply_events(k8s.store, k8s.cluster.churn(50))
    await converged(k8s, agents)
    assert not pods.errors  # a relist, not an error retried for ever
    await stop_agents(agents, tasks)
