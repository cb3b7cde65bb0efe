"""Kubernetes ``Status`` error objects.

Design note
-----------
kube-apiserver reports every failure as a ``metav1.Status`` body whose ``code`` equals the
HTTP status and whose ``reason`` is a machine-readable CamelCase word (NotFound,
AlreadyExists, Conflict, Expired, ...). Clients (client-go, kubernetes-asyncio) branch on
those, so the emulator builds them in exactly one place. :class:`ApiError` carries a Status
dict through the pure store code; the HTTP shell just serialises ``err.status``. The same
Status is what a watch ``ERROR`` event carries as its object.
"""

from __future__ import annotations

from typing import Any

from .resources import ResourceType


class ApiError(Exception):
    """A failure with a ready-made Status body (``.status``) and HTTP code (``.code``)."""

    def __init__(
        self,
        code: int,
        reason: str,
        message: str,
        details: dict[str, Any] | None = None,
        list_meta: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(f"{code} {reason}: {message}")
        self.code = code
        self.reason = reason
        self.message = message
        self.status: dict[str, Any] = {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": list_meta or {},
            "status": "Failure",
            "message": message,
            "reason": reason,
            "code": code,
        }
        if details is not None:
            self.status["details"] = details


def _qualified(rt: ResourceType) -> str:
    # kube messages name the resource as "plural" or "plural.group".
    return rt.key


def _details(rt: ResourceType, name: str | None) -> dict[str, Any]:
    d: dict[str, Any] = {}
    if name:
        d["name"] = name
    if rt.group:
        d["group"] = rt.group
    d["kind"] = rt.plural
    return d


def not_found(rt: ResourceType, name: str) -> ApiError:
    return ApiError(404, "NotFound", f'{_qualified(rt)} "{name}" not found', _details(rt, name))


def namespace_not_found(ns: str) -> ApiError:
    return ApiError(404, "NotFound", f'namespaces "{ns}" not found', {"name": ns, "kind": "namespaces"})


def already_exists(rt: ResourceType, name: str) -> ApiError:
    return ApiError(409, "AlreadyExists", f'{_qualified(rt)} "{name}" already exists', _details(rt, name))


def conflict(rt: ResourceType, name: str, why: str) -> ApiError:
    return ApiError(
        409, "Conflict", f'Operation cannot be fulfilled on {_qualified(rt)} "{name}": {why}', _details(rt, name)
    )


STALE_RV = "the object has been modified; please apply your changes to the latest version and try again"


Cause = tuple[str, str, str]  # (field, reason, message) as in a StatusCause


def field_invalid(field: str, value: Any, detail: str) -> Cause:
    """A ``FieldValueInvalid`` cause worded like apimachinery's ``field.Invalid``."""
    return field, "FieldValueInvalid", f"Invalid value: {_show(value)}: {detail}"


def field_required(field: str, detail: str = "") -> Cause:
    return field, "FieldValueRequired", "Required value" + (f": {detail}" if detail else "")


def field_too_long(field: str, limit: int) -> Cause:
    return field, "FieldValueTooLong", f"Too long: must have at most {limit} bytes"


def _show(value: Any) -> str:
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return repr(value)


def invalid_causes(rt: ResourceType | None, name: str, causes: list[Cause]) -> ApiError:
    """422 Invalid with one ``details.causes`` entry per problem, as kube-apiserver answers."""
    kind = rt.kind if rt else "Object"
    parts = [f"{f}: {m}" for f, _, m in causes]
    summary = parts[0] if len(parts) == 1 else "[" + ", ".join(parts) + "]"
    details: dict[str, Any] = {
        "name": name,
        "kind": kind,
        "causes": [{"reason": r, "message": m, "field": f} for f, r, m in causes],
    }
    if rt and rt.group:
        details["group"] = rt.group
    return ApiError(422, "Invalid", f'{kind} "{name}" is invalid: {summary}', details)


def invalid(rt: ResourceType | None, name: str, field: str, msg: str) -> ApiError:
    """422 Invalid for one field; ``msg`` is the cause text ("Required value", "Invalid value: ...")."""
    reason = "FieldValueRequired" if msg.startswith("Required value") else "FieldValueInvalid"
    if msg.startswith("Forbidden"):
        reason = "FieldValueForbidden"
    return invalid_causes(rt, name, [(field, reason, msg)])


def bad_request(message: str) -> ApiError:
    return ApiError(400, "BadRequest", message)


def expired(message: str, list_meta: dict[str, Any] | None = None) -> ApiError:
    return ApiError(410, "Expired", message, list_meta=list_meta)


def too_old_rv(requested: int, oldest: int) -> ApiError:
    return expired(f"too old resource version: {requested} ({oldest})")


CONTINUE_EXPIRED_MSG = (
    "The provided continue parameter is too old to display a consistent list result. "
    "You can start a new list without the continue parameter, or use the continue token in "
    "this response to retrieve the remainder of the results. Continuing with the provided "
    "token results in an inconsistent list - objects that were created, modified, or deleted "
    "between the time the first chunk was returned and now may show up in the list."
)


def too_large_rv(requested: int, current: int) -> ApiError:
    return ApiError(
        504,
        "Timeout",
        f"Too large resource version: {requested}, current: {current}",
        {
            "causes": [{"reason": "ResourceVersionTooLarge", "message": "Too large resource version"}],
            "retryAfterSeconds": 1,
        },
    )


def unauthorized() -> ApiError:
    return ApiError(401, "Unauthorized", "Unauthorized")


def forbidden(
    rt: ResourceType | None, resource: str, verb: str, name: str | None, namespace: str | None, user: str
) -> ApiError:
    group = rt.group if rt else ""
    what = f'{resource} "{name}"' if name else resource
    scope = f'in the namespace "{namespace}"' if namespace else "at the cluster scope"
    msg = f'{what} is forbidden: User "{user}" cannot {verb} resource "{resource}" in API group "{group}" {scope}'
    details: dict[str, Any] = {"kind": resource}
    if name:
        details["name"] = name
    if group:
        details["group"] = group
    return ApiError(403, "Forbidden", msg, details)


def method_not_allowed(verb: str) -> ApiError:
    return ApiError(
        405, "MethodNotAllowed", f"the server does not allow this method on the requested resource ({verb})"
    )


def unsupported_media_type(ct: str, accepted: tuple[str, ...]) -> ApiError:
    return ApiError(
        415,
        "UnsupportedMediaType",
        f"the body of the request was in an unknown format - accepted media types include: {', '.join(accepted)} (got {ct!r})",
    )


def request_entity_too_large(limit: int) -> ApiError:
    return ApiError(413, "RequestEntityTooLarge", f"Request entity too large: limit is {limit}")


def internal_error(message: str) -> ApiError:
    return ApiError(500, "InternalError", f"Internal error occurred: {message}")


def path_not_found() -> ApiError:
    return ApiError(
        404,
        "NotFound",
        "the server could not find the requested resource",
        {"causes": [{"reason": "UnexpectedServerResponse", "message": "404 page not found"}]},
    )
