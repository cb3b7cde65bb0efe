"""The typha Service's EndpointSlices: which replicas are ready, and where.

Felix reads them to find a replica to dial; typha reads them to count its peers when it computes how
many connections it should carry. Both must agree on what "ready" means, so it is written once, here:
an endpoint counts unless it is explicitly not ready or terminating (Kubernetes says a missing
`ready` condition is to be treated as ready).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, NamedTuple

import orjson


class Endpoint(NamedTuple):
    address: str
    port: int
    node: str


def ready_endpoints(slices: Iterable[dict[str, Any]], port_name: str) -> list[Endpoint]:
    """Ready endpoints (first address of each, which is the pod) with the port named `port_name`."""
    out: list[Endpoint] = []
    for sl in slices:
        ports = [p for p in sl.get("ports") or [] if p.get("name") == port_name and isinstance(p.get("port"), int)]
        if not ports:
            continue
        port = ports[0]["port"]
        for ep in sl.get("endpoints") or []:
            cond = ep.get("conditions") or {}
            if cond.get("ready") is False or cond.get("terminating") is True:
                continue
            addrs = ep.get("addresses") or []
            if addrs:
                out.append(Endpoint(addrs[0], port, ep.get("nodeName") or ""))
    return out


async def list_endpoint_slices(api: Any, namespace: str, service: str) -> list[dict[str, Any]]:
    """GET the EndpointSlices of `service` with a kubernetes-asyncio ApiClient. Raises OSError on failure."""
    path = f"/apis/discovery.k8s.io/v1/namespaces/{namespace}/endpointslices"
    resp = await api.call_api(
        path,
        "GET",
        query_params=[("labelSelector", f"kubernetes.io/service-name={service}")],
        header_params={"Accept": "application/json"},
        auth_settings=["BearerToken"],
        _preload_content=False,
        _return_http_data_only=True,
        _request_timeout=10,
    )
    try:
        body = await resp.read()
    finally:
        resp.release()
    if resp.status != 200:
        raise OSError(f"listing EndpointSlices of {namespace}/{service}: HTTP {resp.status}")
    try:
        items = orjson.loads(body).get("items") or []
    except (orjson.JSONDecodeError, AttributeError):
        raise OSError(f"malformed EndpointSlice list for {namespace}/{service}") from None
    return [i for i in items if isinstance(i, dict)]
