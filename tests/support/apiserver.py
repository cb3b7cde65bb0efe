"""The API-server emulator for tests: one on loopback with a token, a kubernetes-asyncio client
configured from the kubeconfig it writes, raw HTTPS requests and watch streams.

``server`` and ``api`` are pytest fixtures: a test module imports them to use them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from kubernetes_asyncio import client, config

from loadtest.apiserver import make_pod, start_apiserver

TOKEN = "test-token"
CALICO = "crd.projectcalico.org"


def pod(
    name: str,
    ns: str = "default",
    node: str = "node-1",
    ip: str | None = "10.0.0.1",
    labels: dict[str, str] | None = None,
) -> dict[str, Any]:
    return make_pod(ns, name, node, ip, labels=labels)


# ======================================================================================
# Pure store tests
# ======================================================================================


@pytest.fixture
async def server():
    h = await start_apiserver(token=TOKEN, bookmark_interval=0.2, window_size=1000, too_large_rv_wait=0.3)
    try:
        yield h
    finally:
        await h.stop()


async def api_client(h: Any, path: Path, token: str | None = None) -> client.ApiClient:
    kc = h.write_kubeconfig(str(path), token=token)
    cfg = client.Configuration()
    await config.load_kube_config(config_file=kc, client_configuration=cfg)
    return client.ApiClient(cfg)


@pytest.fixture
async def api(server, tmp_path):
    c = await api_client(server, tmp_path / "kubeconfig")
    try:
        yield c
    finally:
        await c.close()


def stream(sess: aiohttp.ClientSession, h: Any, path: str) -> Any:
    """GET ``path`` with the token, for reading as a watch does (the response's lines as they come)."""
    return sess.get(h.url + path, ssl=h.client_ssl_context(), headers={"Authorization": f"Bearer {TOKEN}"})


async def raw_request(h: Any, method: str, path: str, token: str | None = TOKEN, **kw: Any) -> tuple[int, Any]:
    headers = kw.pop("headers", {})
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    async with (
        aiohttp.ClientSession() as sess,
        sess.request(method, h.url + path, ssl=h.client_ssl_context(), headers=headers, **kw) as r,
    ):
        body = await r.read()
        try:
            return r.status, json.loads(body)
        except ValueError:
            return r.status, body
