"""What can go wrong talking to the API server, and what each failure means for a follower.

Design note
-----------
The follower (typha.datastores.kubernetes) makes one decision per failure: resume from the version it
holds, or relist. Resuming is only right while the history that version belongs to is still the one
the API server serves, which only a normal watch expiry and a refusal by a live server (4xx) leave
certain. The decision and the names of failures (the `kind` counted in metrics and logs) live here,
apart from the I/O, so each can be read and tested on its own.
"""

from __future__ import annotations

import asyncio
import ssl
from typing import Any

import aiohttp
import orjson


class ApiError(Exception):
    """The API server answered with an error status (or something that is not the API)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"HTTP {status}: {message}")
        self.status = status
        self.message = message


class Gone(ApiError):
    """410: the resourceVersion we asked for is no longer in the API server's window."""


class TooLarge(Gone):
    """504 "Too large resource version": the API server has not reached the version we asked for.

    It waited for it (kube-apiserver: 3 s) and gave up. Either it lags behind another API server we
    read from before, or its history was replaced (etcd restored from a backup): the versions we hold
    belong to a history that may no longer exist. client-go's reflector relists with no version on
    this answer as on 410 (kubernetes/kubernetes#92537); so do we. Retrying the same version would loop
    for ever (kubernetes/kubernetes#107133), or worse, succeed once the new history reaches it and
    stream a history our cache never saw."""


_TOO_LARGE_CAUSE = "ResourceVersionTooLarge"
_TOO_LARGE_TEXT = "too large resource version"


def error_for(code: int, status: object) -> ApiError:
    """The exception for an API error answer (an HTTP status or a watch ERROR event's Status)."""
    st: dict[str, Any] = status if isinstance(status, dict) else {}
    msg = str(st.get("message") or st.get("reason") or f"HTTP {code}")
    if code == 410:
        return Gone(code, msg)
    details = st.get("details")
    causes = details.get("causes") if isinstance(details, dict) else None
    reasons = {c.get("reason") for c in causes if isinstance(c, dict)} if isinstance(causes, list) else set()
    # Servers before 1.20 left the cause's reason out: client-go matches the message too.
    if code == 504 and (_TOO_LARGE_CAUSE in reasons or _TOO_LARGE_TEXT in msg.lower()):
        return TooLarge(code, msg)
    return ApiError(code, msg)


class SilentWatch(Exception):
    """A watch delivered no event and no bookmark for the silence timeout."""


# Failures that mean "could not reach the API server": the follower waits on the probe, not a timer.
UNREACHED = frozenset({"unreachable", "tls", "timeout", "watch-dropped", "watch-silent"})

# Why a resource was listed again (ResourceStats.relists, typha_datastore_relists_total{reason}).
RELIST_GONE = "gone"  # 410: our version left the API server's window
RELIST_TOO_LARGE = "too-large"  # 504: the API server has not reached our version (history replaced?)
RELIST_OUTAGE = "outage"  # the connection failed: we cannot know what happened meanwhile
RELIST_AUDIT = "audit"  # the periodic audit found the cache diverging from the API server


def is_outage(kind: str) -> bool:
    """A failure after which the old resourceVersion is not trusted: the server could not be reached
    or could not serve (5xx), so it may have restarted on other contents. Not: 4xx answers (the
    server, alive, refused us), a silent watch on a server that answers (restarted quietly), a watch
    that ends normally."""
    return kind in UNREACHED or kind.startswith("http-5")


def status_error(code: int, body: bytes) -> ApiError:
    """The exception for an HTTP error answer, from its Status body (or its first bytes, if not one)."""
    try:
        obj = orjson.loads(body)
        if isinstance(obj, dict) and obj.get("kind") == "Status":
            return error_for(code, obj)
    except orjson.JSONDecodeError:
        pass
    return error_for(code, {"message": body[:200].decode("utf-8", "replace")})


def classify(exc: Exception) -> str:
    """The kind of a failure, as counted in typha_datastore_errors_total{kind} and named in logs."""
    if isinstance(exc, SilentWatch):
        return "watch-silent"
    if isinstance(exc, ApiError):
        return {401: "unauthorized", 403: "forbidden", 404: "not-found"}.get(exc.status, f"http-{exc.status}")
    # Before "unreachable": a certificate the API server presents but we cannot verify (wrong CA,
    # a name it does not cover) is a configuration problem, and retrying will not cure it.
    if isinstance(exc, (aiohttp.ClientSSLError, ssl.SSLError)):
        return "tls"
    if isinstance(exc, aiohttp.ClientConnectorError):
        return "unreachable"
    if isinstance(exc, (aiohttp.ClientPayloadError, aiohttp.ServerDisconnectedError, ConnectionResetError)):
        return "watch-dropped"
    if isinstance(exc, asyncio.TimeoutError):
        return "timeout"
    return type(exc).__name__


class RelistWanted(Gone):
    """The audit found the cache diverging from the API server: relist (raised by the follower)."""


__all__ = [
    "RELIST_AUDIT",
    "RELIST_GONE",
    "RELIST_OUTAGE",
    "RELIST_TOO_LARGE",
    "UNREACHED",
    "ApiError",
    "Gone",
    "RelistWanted",
    "SilentWatch",
    "TooLarge",
    "classify",
    "error_for",
    "is_outage",
    "status_error",
]
