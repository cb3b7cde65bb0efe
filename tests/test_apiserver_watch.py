"""Watches on the API-server emulator over HTTPS: event types, bookmarks, 410 for a too-old
resourceVersion, relists when the window rolls over, cut and slow watchers, hang-ups, waits for a
future resourceVersion, and streaming lists (sendInitialEvents).
"""

from __future__ import annotations

import asyncio
import json

import aiohttp
import pytest
from kubernetes_asyncio import client, watch
from kubernetes_asyncio.client.exceptions import ApiException

from loadtest.apiserver import make_node, start_apiserver
from tests.conftest import wait_for
from tests.support import apiserver as lab
from tests.support.apiserver import TOKEN, api_client, pod, raw_request, stream

server, api = lab.server, lab.api  # the fixtures, where pytest finds them

pytestmark = pytest.mark.timeout(30)


@pytest.mark.slow
async def test_watch_added_modified_deleted(server, api) -> None:
    v1 = client.CoreV1Api(api)
    await v1.create_namespaced_pod("default", pod("pre"))
    seen: list[tuple[str, str]] = []
    async with watch.Watch() as w:
        stream = w.stream(v1.list_namespaced_pod, "default", timeout_seconds=10)
        async for ev in stream:
            seen.append((ev["type"], ev["object"].metadata.name))
            if ev["object"].metadata.name == "pre" and ev["type"] == "ADDED":
                await v1.create_namespaced_pod("default", pod("new"))
                await v1.patch_namespaced_pod("new", "default", {"metadata": {"labels": {"a": "b"}}})
                await v1.delete_namespaced_pod("new", "default")
            if ev["type"] == "DELETED":
                break
    assert seen == [("ADDED", "pre"), ("ADDED", "new"), ("MODIFIED", "new"), ("DELETED", "new")]
    await wait_for(lambda: server.stats.resource("pods").open_watches == 0, what="watch released")


@pytest.mark.slow
async def test_watch_from_rv_bookmarks_and_in_process_writes(server, api) -> None:
    v1 = client.CoreV1Api(api)
    rv = str(server.store.rv)
    types: list[str] = []
    bookmark_rvs: list[int] = []
    async with watch.Watch() as w:
        async for ev in w.stream(v1.list_node, resource_version=rv, allow_watch_bookmarks=True, timeout_seconds=10):
            types.append(ev["type"])
            if ev["type"] == "BOOKMARK":
                bookmark_rvs.append(int(ev["raw_object"]["metadata"]["resourceVersion"]))
                if len(bookmark_rvs) == 1:
                    # in-process writes reach HTTP watchers exactly like API writes
                    server.store.create("nodes", make_node("n1", "10.0.0.1"))
                    server.store.patch("nodes", "n1", {"spec": {"unschedulable": True}})
                elif len(bookmark_rvs) == 2:
                    break
    assert types == ["BOOKMARK", "ADDED", "MODIFIED", "BOOKMARK"]
    assert bookmark_rvs[1] == server.store.rv and set(ev.keys()) >= {"type", "object", "raw_object"}
    bm = ev["raw_object"]
    assert bm["kind"] == "Node" and bm["apiVersion"] == "v1" and set(bm["metadata"]) == {"resourceVersion"}
    st_ = server.stats.resource("nodes")
    assert st_.bookmarks_sent >= 2 and st_.events_sent >= 2


@pytest.mark.slow
async def test_watch_too_old_rv_gets_410_error_event(server, api) -> None:
    v1 = client.CoreV1Api(api)
    old = str(server.store.rv)
    server.store.create("nodes", make_node("n1", "10.0.0.1"))
    server.store.compact()
    # with timeout_seconds set, kubernetes-asyncio surfaces the ERROR event as ApiException
    with pytest.raises(ApiException) as ei:
        async with watch.Watch() as w:
            async for _ in w.stream(v1.list_node, resource_version=old, timeout_seconds=5):
                pass
    assert ei.value.status == 410 and "too old resource version" in ei.value.reason
    # raw wire format: HTTP 200 + one ERROR event whose object is a Status, then EOF
    status, body = await raw_request(server, "GET", f"/api/v1/nodes?watch=1&resourceVersion={old}")
    assert status == 200
    assert body == {
        "type": "ERROR",
        "object": {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": f"too old resource version: {old} ({server.store.rv})",
            "reason": "Expired",
            "code": 410,
        },
    }
    assert server.stats.resource("nodes").watches_expired == 2


@pytest.mark.slow
async def test_small_window_forces_relist(tmp_path) -> None:
    h = await start_apiserver(token=TOKEN, window_size=3)
    try:
        async with await api_client(h, tmp_path / "kc") as api:
            v1 = client.CoreV1Api(api)
            rv = (await v1.list_node()).metadata.resource_version
            for i in range(5):
                h.store.create("nodes", make_node(f"n{i}", "10.0.0.1"))
            with pytest.raises(ApiException) as ei:
                async with watch.Watch() as w:
                    async for _ in w.stream(v1.list_node, resource_version=rv, timeout_seconds=5):
                        pass
            assert ei.value.status == 410
            # relist + watch from the new RV works
            lst = await v1.list_node()
            assert len(lst.items) == 5
    finally:
        await h.stop()


@pytest.mark.slow
async def test_cut_watches_and_reconnect(server, api) -> None:
    v1 = client.CoreV1Api(api)
    got_added = asyncio.Event()
    ended = asyncio.Event()

    async def watcher() -> None:
        async with watch.Watch() as w:
            async for ev in w.stream(v1.list_node, timeout_seconds=30):
                if ev["type"] == "ADDED":
                    got_added.set()
        ended.set()

    server.store.create("nodes", make_node("n1", "10.0.0.1"))
    task = asyncio.create_task(watcher())
    await asyncio.wait_for(got_added.wait(), 5)
    assert server.stats.resource("nodes").open_watches == 1
    status, out = await raw_request(server, "POST", "/emulator/cut-watches")
    assert status == 200 and out == {"cut": 1}
    await asyncio.wait_for(ended.wait(), 5)  # with timeout_seconds the client stops at EOF
    await task
    await wait_for(lambda: server.stats.resource("nodes").open_watches == 0)
    assert server.stats.resource("nodes").watches_cut == 1
    # without timeout_seconds, kubernetes-asyncio reconnects from its last RV transparently
    events: list[str] = []
    async with watch.Watch() as w:
        async for ev in w.stream(v1.list_node):
            events.append(ev["type"] + ":" + ev["object"].metadata.name)
            if len(events) == 1:
                await wait_for(lambda: server.stats.resource("nodes").open_watches == 1)
                assert server.cut_watches() == 1
                # written while no watch is open: the re-watch from the last seen RV replays it
                server.store.create("nodes", make_node("n2", "10.0.0.2"))
            if len(events) == 2:
                break
    assert events == ["ADDED:n1", "ADDED:n2"]
    assert server.stats.resource("nodes").watches_total == 3


@pytest.mark.slow
async def test_slow_watcher_is_closed(tmp_path) -> None:
    h = await start_apiserver(token=TOKEN, max_watch_queue=5)
    try:
        rv = str(h.store.rv)
        async with (
            aiohttp.ClientSession() as sess,
            stream(sess, h, f"/api/v1/nodes?watch=true&resourceVersion={rv}") as resp,
        ):
            assert resp.status == 200
            await wait_for(lambda: h.stats.resource("nodes").open_watches == 1)
            # a burst larger than the queue, with no chance for the writer to drain
            for i in range(20):
                h.store.create("nodes", make_node(f"n{i}", "10.0.0.1"))
            body = await asyncio.wait_for(resp.read(), 5)  # the server ends the stream
        assert body == b""
        assert h.stats.resource("nodes").watches_closed_slow == 1
        await wait_for(lambda: h.stats.resource("nodes").open_watches == 0)
    finally:
        await h.stop()


@pytest.mark.slow
async def test_client_disconnect_releases_idle_watch(server) -> None:
    async with (
        aiohttp.ClientSession() as sess,
        stream(sess, server, "/api/v1/pods?watch=1") as resp,
    ):
        assert resp.status == 200
        await wait_for(lambda: server.stats.resource("pods").open_watches == 1)
    # nothing is ever written to this watch; the server must still notice the hang-up
    await wait_for(lambda: server.stats.resource("pods").open_watches == 0, what="watch released")
    assert not server.store.watchers("pods")


@pytest.mark.slow
async def test_too_large_rv_waits_then_504(server, api) -> None:
    future = server.store.rv + 1
    status, body = await raw_request(server, "GET", f"/api/v1/nodes?resourceVersion={future + 5}")
    assert status == 504 and body["reason"] == "Timeout"

    async def later() -> None:
        await wait_for(lambda: server.stats.requests_total >= 2)
        server.store.create("nodes", make_node("n1", "10.0.0.1"))

    t = asyncio.create_task(later())
    status, body = await raw_request(
        server, "GET", f"/api/v1/nodes?resourceVersion={future}&resourceVersionMatch=NotOlderThan"
    )
    await t
    assert status == 200 and [i["metadata"]["name"] for i in body["items"]] == ["n1"]


@pytest.mark.slow
async def test_streaming_list_send_initial_events(server) -> None:
    server.store.create("nodes", make_node("n1", "10.0.0.1"))
    async with (
        aiohttp.ClientSession() as sess,
        stream(
            sess,
            server,
            "/api/v1/nodes?watch=1&sendInitialEvents=true&allowWatchBookmarks=true"
            "&resourceVersionMatch=NotOlderThan&timeoutSeconds=5",
        ) as resp,
    ):
        first = json.loads(await resp.content.readline())
        second = json.loads(await resp.content.readline())
    assert first["type"] == "ADDED" and second["type"] == "BOOKMARK"
    assert second["object"]["metadata"]["annotations"]["k8s.io/initial-events-end"] == "true"
    status, _body = await raw_request(server, "GET", "/api/v1/nodes?watch=1&sendInitialEvents=true")
    assert status == 422
