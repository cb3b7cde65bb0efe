"""The API-server emulator: no path answers without the bearer token, and only over TLS with a
certificate that names the address it listens on (issue 12 item 5)."""

from __future__ import annotations

import asyncio
import ssl

import aiohttp
import pytest

from loadtest.apiserver.server import start_apiserver

pytestmark = pytest.mark.slow  # an HTTPS server on loopback

TOKEN = "the-token"
METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS")


def every_path(h) -> list[str]:
    """Health, version, discovery, every resource's collection, item and status paths, the emulator's
    own endpoints, the legacy watch prefix, and paths that do not exist."""
    paths = ["/healthz", "/livez", "/readyz", "/version", "/api", "/apis", "/api/v1", "/openapi/v2", "/metrics"]
    paths += ["/emulator/stats", "/emulator/cut-watches", "/emulator/compact", "/emulator/forbidden"]
    paths += ["/", "/nope", "/api/v1/nope", "/apis/nope.example.com/v1/things"]
    for rt in h.store.registry:
        base = f"/api/{rt.version}" if not rt.group else f"/apis/{rt.group}/{rt.version}"
        paths.append(base)
        if rt.group:
            paths.append(f"/apis/{rt.group}")
        scoped = f"{base}/namespaces/default/{rt.plural}" if rt.namespaced else f"{base}/{rt.plural}"
        paths += [f"{base}/{rt.plural}", scoped, f"{scoped}/x", f"{scoped}/x/status", f"{scoped}?watch=1"]
        paths.append(f"{base}/watch/{rt.plural}")
    return sorted(set(paths))


async def test_no_path_answers_without_the_token() -> None:
    h = await start_apiserver(token=TOKEN)
    try:
        paths = every_path(h)
        assert len(paths) > 100
        ctx = h.client_ssl_context()
        seen: dict[int, int] = {}
        async with aiohttp.ClientSession() as sess:
            for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {TOKEN}"}):
                for path in paths:
                    for method in METHODS:
                        async with sess.request(method, h.url + path, ssl=ctx, headers=headers, data=b"{}") as r:
                            body = await r.read()
                            seen[r.status] = seen.get(r.status, 0) + 1
                            if r.status != 401:
                                raise AssertionError(f"{method} {path} answered {r.status} without the token")
                            if method != "HEAD":
                                assert b'"reason":"Unauthorized"' in body
            # The right token still works, health checks included.
            async with sess.get(h.url + "/healthz", ssl=ctx, headers={"Authorization": f"Bearer {TOKEN}"}) as r:
                assert r.status == 200
        assert seen == {401: 3 * len(paths) * len(METHODS)}
        assert h.stats.unauthorized == 3 * len(paths) * len(METHODS)
    finally:
        await h.stop()


async def test_only_tls_and_the_certificate_names_the_listen_address() -> None:
    h = await start_apiserver(token=TOKEN, host="127.0.0.1")
    try:
        # Verified as a browser or client-go would: the certificate must name 127.0.0.1.
        ctx = ssl.create_default_context(cadata=h.ca_pem.decode())
        assert ctx.check_hostname
        _, writer = await asyncio.open_connection("127.0.0.1", h.port, ssl=ctx, server_hostname="127.0.0.1")
        writer.close()
        # Plain HTTP to the port is not served (the TLS layer rejects it before any HTTP is read).
        reader, writer = await asyncio.open_connection("127.0.0.1", h.port)
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        reply = await asyncio.wait_for(reader.read(), 5)
        assert b"200" not in reply and b"ok" not in reply
        writer.close()
    finally:
        await h.stop()
