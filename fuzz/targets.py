"""The fuzz targets: one parser of untrusted input each, its documented errors allowed, anything else a crash.

Input layouts (what the seed corpus holds, and what the fuzzer mutates):
- frames:     [mode][piece][stream...]  mode bit 0: client end (else server end), bit 1: header-only
              client, bit 2: the client asked to resume, bit 3: the client offered a summary (a server
              end then accepts one WANT); piece: the size stream pieces are fed in.
- decode:     [type][flags][body...]    flags bit 7 set: header-only decode.
- projection: b"<resource>\\n<JSON object>" (what the bgp syncer carries also goes through felix's BGP view
              and renderer)
- selectors:  UTF-8 text: a label selector, a field selector, a continue token and a request path.
- patches:    [content type][JSON [target, patch]]
- bodies:     b"<resource>\\n<JSON object>", created in a fresh emulator store, then listed, watched,
              replaced and patched.
- kernelstate: [mode][text]  mode bit 0: `ipset save` output, else `iptables-save` output.
- admission:  [mode][...]  mode 0: [kind][protobuf create body]; mode 1: b"<resource>\\n<JSON object>"
              written as the HTTP shell writes it; mode 2: a CustomResourceDefinition as JSON.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import orjson

from felix.bgp.render import render
from felix.bgp.view import BgpView
from felix.dataplane.ipsets.plan import plan_sets
from felix.dataplane.ipsets.save import parse_ipset_save
from felix.dataplane.iptables.desired import DesiredState
from felix.dataplane.iptables.plan import drifted_chains, plan_table
from felix.dataplane.iptables.render import Renderer
from felix.dataplane.iptables.save import SaveError, parse_save
from felix.policy.calc import PolicyCalculator
from felix.policy.messages import Batch
from felix.policy.rules import RenderError, render_policy
from felix.policy.selector import SelectorError
from felix.policy.selector import parse as parse_calico_selector
from loadtest.apiserver import ApiError, Store, protobuf
from loadtest.apiserver.listing import decode_continue
from loadtest.apiserver.openapi import OpenAPI
from loadtest.apiserver.patch import JSON_PATCH, MERGE, STRATEGIC, apply_patch
from loadtest.apiserver.routing import parse_path
from loadtest.apiserver.schema import STRICT, WARN
from loadtest.apiserver.selectors import parse_field_selector, parse_label_selector
from loadtest.apiserver.store import Admission
from protocol import (
    ClientConnection,
    ClientHello,
    Frame,
    FrameReader,
    Message,
    ProtocolError,
    ServerConnection,
    decode,
)
from protocol.codec import Decompressor, encode
from protocol.keys import SYNCER_BGP, policy_key, profile_key, workload_key
from typha.k8s.projection import RESOURCES, ProjectionError, project, project_delete

Target = Callable[[bytes], None]

#: The hello a fuzzed client end sent; mode bit 2 makes it a resuming one (so resumed hellos pass).
FUZZ_HELLO = ClientHello("fuzz", "felix", compression=("zstd",))
FUZZ_RESUME_HELLO = ClientHello("fuzz", "felix", compression=("zstd",), resume_epoch="e1", resume_seq=7)
#: Mode bit 3: a client that offered the summary of its view (a reconcile, docs/protocol.md 12.2).
FUZZ_SUMMARY_HELLO = ClientHello("fuzz", "felix", compression=("zstd",), summary=bytes(1024), summary_version=1)


# -- protocol -----------------------------------------------------------------------------------------


def _drive(mode: int, pieces: list[bytes]) -> tuple[list[Message], str | None, int]:
    conn: ClientConnection | ServerConnection
    if mode & 1:
        hello = FUZZ_SUMMARY_HELLO if mode & 8 else FUZZ_RESUME_HELLO if mode & 4 else FUZZ_HELLO
        conn = ClientConnection(hello, 1 << 16, decode_kvs=not mode & 2)
    else:
        conn = ServerConnection(4096)
        if mode & 8:
            conn.expect_want()
    out: list[Message] = []
    try:
        for piece in pieces:
            out.extend(conn.receive_data(piece))
    except ProtocolError as exc:
        return out, f"{type(exc).__name__}: {exc}", conn.bytes_received
    return out, None, conn.bytes_received


def frames(data: bytes) -> None:
    """Bytes from a peer through FrameReader and a connection state machine; the split must not matter."""
    if len(data) < 2:
        return
    mode, size, stream = data[0], data[1] % 64 + 1, data[2:]
    whole_msgs, whole_err, whole_bytes = _drive(mode, [stream])
    msgs, err, nbytes = _drive(mode, [stream[i : i + size] for i in range(0, len(stream), size)])
    assert whole_err == err, f"feeding in {size}-byte pieces changed the error: {whole_err!r} != {err!r}"
    if err is None:
        assert whole_msgs == msgs, f"feeding in {size}-byte pieces changed the messages: {whole_msgs} != {msgs}"
        assert whole_bytes == nbytes == len(stream), "bytes_received does not count what was fed"
    else:
        # receive_data raises instead of returning the messages decoded before the error in the same
        # call, so fed whole, fewer messages come out; never different ones.
        assert msgs[: len(whole_msgs)] == whole_msgs, "messages before the error differ"


def decode_frame(data: bytes) -> None:
    """One frame's type, flags and body through the decoder; what decodes must survive re-encoding."""
    if len(data) < 2:
        return
    decode_kvs = not data[1] & 0x80
    frame = Frame(data[0] % 12, data[1] & 0x0F, data[2:])
    try:
        msg = decode(frame, Decompressor(1 << 20), decode_kvs)
    except ProtocolError:
        return
    if decode_kvs:
        reader = FrameReader(1 << 30)
        reader.feed(encode(msg))
        (again,) = reader.frames()
        assert decode(again, Decompressor(1 << 20)) == msg, f"{msg!r} does not survive re-encoding"


# -- typha's projection of Kubernetes objects -----------------------------------------------------------


def _resource_and_json(data: bytes) -> tuple[str, Any] | None:
    head, sep, body = data.partition(b"\n")
    if not sep:
        return None
    try:
        return head.decode(), orjson.loads(body)
    except (UnicodeDecodeError, orjson.JSONDecodeError):
        return None


def projection(data: bytes) -> None:
    """A (malformed) object as the API server could send it, through typha's projection."""
    parsed = _resource_and_json(data)
    if parsed is None or parsed[0] not in RESOURCES:
        return
    resource, obj = parsed
    before = orjson.dumps(obj)
    for fn in (project, project_delete):
        try:
            first = fn(resource, obj)
        except ProjectionError:
            continue
        assert orjson.dumps(obj) == before, f"{fn.__name__} modified the object it projected"
        assert fn(resource, copy.deepcopy(obj)) == first, f"{fn.__name__} is not deterministic"
        for item in first:
            key, value = item if isinstance(item, tuple) else (item, None)
            assert isinstance(key, str) and key, f"bad key {key!r}"
            if value is not None:
                orjson.dumps(value, option=orjson.OPT_SORT_KEYS)  # what typha's ingest does with it
    if SYNCER_BGP in RESOURCES[resource].syncers:
        _bgp_view(resource, obj)


_BGP_NODE = ("/calico/resources/v3/projectcalico.org/nodes/node1", b'{"name":"node1","ipv4Address":"10.0.0.1/24"}')


def _bgp_view(resource: str, obj: Any) -> None:
    """What the bgp syncer carries, through felix's BGP view and renderer: unusable values are reported."""
    try:
        updates = project(resource, obj)
    except ProjectionError:
        return
    view = BgpView()
    view.apply([_BGP_NODE])
    view.apply([(k, None if v is None else orjson.dumps(v, option=orjson.OPT_SORT_KEYS)) for k, v in updates])
    for name in {"node1", *view.nodes}:
        r = render(view, name)
        assert r.config is None or r.config.endswith("\n"), "a rendering ends with a newline"


# -- the API-server emulator's request parsing ------------------------------------------------------------

_STORE_FOR_PATHS = Store()
_LABELS: tuple[dict[str, str] | None, ...] = ({"app": "web", "tier": "", "k8s.io/name": "x"}, {}, None)


def selectors(data: bytes) -> None:
    """Query parameters and paths as a client sends them: label and field selectors, continue, path."""
    text = data.decode("utf-8", "replace")
    try:
        label = parse_label_selector(text)
    except ApiError:
        pass
    else:
        for labels in _LABELS:
            label.matches(labels)
        label.equality_value("app")
    for resource in ("pods", "nodes", "networkpolicies.crd.projectcalico.org"):
        rt = _STORE_FOR_PATHS.resource(resource)
        try:
            field = parse_field_selector(text, rt.field_labels, rt.namespaced)
        except ApiError:
            continue
        field.matches("name", "default", tuple("x" for _ in rt.field_labels))
    try:
        decode_continue(text)
    except ApiError:
        pass
    try:
        parse_path(_STORE_FOR_PATHS.registry, text)
    except ApiError:
        pass


PATCH_TYPES = (MERGE, STRATEGIC, JSON_PATCH, "application/apply-patch+yaml")


def patches(data: bytes) -> None:
    """A PATCH body of each content type applied to an object; the object itself is never modified."""
    if not data:
        return
    try:
        doc = orjson.loads(data[1:])
    except orjson.JSONDecodeError:
        return
    if not (isinstance(doc, list) and len(doc) == 2 and isinstance(doc[0], dict)):
        return
    target, patch = doc
    content_type = PATCH_TYPES[data[0] % len(PATCH_TYPES)]
    before = orjson.dumps(target)
    try:
        out = apply_patch(target, patch, content_type, "Pod")  # "Pod": strategic merge by its merge keys
    except ApiError:
        assert orjson.dumps(target) == before, "a failed patch modified its target"
        return
    assert orjson.dumps(target) == before, "apply_patch modified its target"
    assert isinstance(out, dict)
    orjson.dumps(out)  # stored as JSON: must serialise
    if content_type == MERGE:  # RFC 7386: applying a merge patch twice changes nothing more
        assert apply_patch(out, patch, content_type, "Pod") == out, "merge patch is not idempotent"


def bodies(data: bytes) -> None:
    """A request body created in a fresh store, then read back by every path that serves objects."""
    parsed = _resource_and_json(data)
    if parsed is None:
        return
    resource, obj = parsed
    store = Store()
    try:
        rt = store.resource(resource)
    except ApiError:
        return
    namespace = "default" if rt.namespaced else None
    try:
        created = store.create(resource, obj, namespace=namespace)
    except ApiError:
        return
    name = created["metadata"]["name"]
    labels = created["metadata"].get("labels")
    keys = [k for k in labels if isinstance(k, str)][:3] if isinstance(labels, dict) else []
    watchers = [
        store.watch(resource, namespace, resource_version="0", label_selector=selector)
        for selector in ("app", *keys)
        if _selector_ok(selector)
    ]
    # Every list that covers the object, by each of its own labels as well as by others.
    for selector in (
        "",
        "app",
        "app=web,tier!=db",
        "!app",
        *keys,
        *(f"{k}=x" for k in keys),
        *(f"{k} in (a)" for k in keys),
    ):
        if _selector_ok(selector):
            store.list(resource, namespace, label_selector=selector)
    store.list(resource, namespace, field_selector=f"metadata.name={name}")
    for watcher in watchers:
        watcher.drain()
    for op in (
        lambda: store.update(resource, obj, namespace=namespace),
        lambda: store.patch(resource, name, obj, namespace=namespace, content_type=MERGE),
        lambda: store.patch(resource, name, {"metadata": {"labels": {"app": "x"}}}, namespace=namespace),
    ):
        try:
            op()
        except ApiError:
            pass
    store.list(resource, namespace, label_selector="app=x")
    for watcher in watchers:
        watcher.drain()
    store.delete(resource, name, namespace=namespace)


def admission(data: bytes) -> None:
    """What the emulator does to an install's writes: protobuf bodies decoded (mode 0), JSON objects
    admitted against their schema and defaulted (mode 1: what is stored must pass Strict admission,
    so pruning left no unknown field behind), CRDs registered and served as OpenAPI (mode 2)."""
    if not data:
        return
    mode, rest = data[0] % 3, data[1:]
    store = Store()
    if mode == 0:
        if not rest:
            return
        kinds = sorted(protobuf.KINDS)
        rt = store.resource(kinds[rest[0] % len(kinds)])
        try:
            obj = protobuf.decode_protobuf(rest[1:], rt)
        except ApiError:
            return
        orjson.dumps(obj)
        try:
            store.create_object(
                rt, obj, namespace="default" if rt.namespaced else None, strategy=True, admission=Admission(WARN)
            )
        except ApiError:
            pass
        return
    if mode == 1:
        parsed = _resource_and_json(rest)
        if parsed is None:
            return
        resource, obj = parsed
        try:
            rt = store.resource(resource)
            stored = store.create_object(
                rt, obj, namespace="default" if rt.namespaced else None, strategy=True, admission=Admission(WARN)
            ).to_dict()
        except ApiError:
            return
        again, warnings = store.schemas.admit(rt, copy.deepcopy(stored), STRICT)
        assert not warnings and again == stored, "admission is not idempotent"
        return
    try:
        crd = orjson.loads(rest)
    except orjson.JSONDecodeError:
        return
    try:
        store.create("customresourcedefinitions", crd, strategy=True)
    except ApiError:
        return
    api = OpenAPI(store)
    api.v3_index()
    api.v2_protobuf()


def _selector_ok(selector: str) -> bool:
    try:
        parse_label_selector(selector)
    except ApiError:
        return False
    return True


# -- felix's policy calculation --------------------------------------------------------------------------

_POLICY_LABELS: tuple[dict[str, str], ...] = ({"app": "web", "pcns.team": "a"}, {"app": "", "x/y": "z"}, {})
_POLICY_KEYS = (
    policy_key("fuzzed", "ns"),
    profile_key("kns.ns"),
    workload_key("fuzz-node", "ns", "pod"),
)


def policy(data: bytes) -> None:
    """Mode byte 0: a Calico selector (its canonical form must mean the same and parse to itself).
    Modes 1-3: a policy, profile or workload-endpoint value through felix's policy calculation beside
    a valid endpoint: only MalformedUpdate (reported) or a rejection, never an exception."""
    if not data:
        return
    mode, body = data[0] % 4, data[1:]
    if mode == 0:
        try:
            sel = parse_calico_selector(body.decode())
        except (UnicodeDecodeError, SelectorError):
            return
        again = parse_calico_selector(sel.canonical)
        assert again.canonical == sel.canonical, f"canonical form is not a fixed point: {sel.canonical!r}"
        for labels in _POLICY_LABELS:
            assert again.matches(labels) == sel.matches(labels), f"canonical form changes meaning: {sel.canonical!r}"
        return
    if mode == 1:
        try:
            value = orjson.loads(body)
        except orjson.JSONDecodeError:
            value = None
        if isinstance(value, dict):
            try:
                render_policy("fuzzed", value)
            except RenderError:
                pass
    calc = PolicyCalculator("fuzz-node")
    endpoint = orjson.dumps(
        {"name": "cali0", "ipNetworks": ["10.0.0.1/32"], "profiles": ["kns.ns"], "labels": {"app": "web"}}
    )
    batch, _ = calc.apply([(workload_key("fuzz-node", "ns", "other"), endpoint), (_POLICY_KEYS[mode - 1], body)])
    assert isinstance(batch, Batch)
    calc.apply([(_POLICY_KEYS[mode - 1], None)])  # and its removal


# -- felix's read-back of the kernel (other programs write those tables) -----------------------------------


def kernelstate(data: bytes) -> None:
    """``iptables-save`` or ``ipset save`` output as any program could leave it, read back and planned
    against: parsing raises only SaveError, and the plans never touch what is not felix's (no foreign
    rule deleted or rewritten, no foreign chain or set written)."""
    if not data:
        return
    text = data[1:].decode(errors="replace")
    st = DesiredState()
    if data[0] & 1:
        sets = parse_ipset_save(text)
        assert all(name.startswith("cali") for name in sets)
        set_plan = plan_sets(4, st.sets[4], sets)
        for line in set_plan.before + set_plan.after:
            assert line.split()[1].startswith("cali4"), line
        return
    try:
        tables = parse_save(text)
    except SaveError:
        return
    for table in ("filter", "nat"):
        kernel = tables.get(table)
        if kernel is None:
            continue
        hooks = Renderer.hooks(table)
        plan = plan_table(table, st.tables[(4, table)], hooks, kernel)
        drifted_chains(kernel, kernel, hooks)
        foreign = {line for lines in kernel.lines.values() for line in lines if "cali:" not in line}
        for line in plan.lines[1:-1]:
            op, _, rest = line.partition(" ")
            chain = rest.split(" ", 1)[0]
            if op in ("-A", "-I", "-R", "-X") or line.startswith(":"):
                assert chain.startswith("cali-") or chain in hooks or line.startswith(":cali-"), line
            if op == "-D":
                assert chain.startswith("cali-") or "-A" + line[2:] not in foreign, line


TARGETS: dict[str, Target] = {
    "frames": frames,
    "decode": decode_frame,
    "projection": projection,
    "selectors": selectors,
    "patches": patches,
    "bodies": bodies,
    "policy": policy,
    "kernelstate": kernelstate,
    "admission": admission,
}
