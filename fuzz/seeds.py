"""Build the seed corpus: small valid inputs for every target, from the real encoders and fixtures.

Run `python -m fuzz.seeds` to rewrite `fuzz/corpus/<target>/seed-*`; files named otherwise (crash
regressions, `regress-*`) are left alone. The output is deterministic, so a rerun changes nothing
unless an encoder or fixture did.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson

from felix.dataplane.iptables.desired import DesiredState
from felix.dataplane.iptables.plan import plan_table
from felix.dataplane.iptables.render import Renderer
from felix.dataplane.iptables.save import KernelTable
from loadtest.apiserver.fixtures import make_calico_object, make_namespace, make_node, make_pod
from loadtest.apiserver.listing import encode_continue
from loadtest.apiserver.patch import JSON_PATCH, MERGE, STRATEGIC
from protocol import (
    KV,
    ClientHello,
    Digests,
    Goodbye,
    GoodbyeCode,
    Ping,
    Pong,
    ServerHello,
    SnapshotChunk,
    SyncStatus,
    SyncStatusChange,
    Updates,
    Want,
    encode,
)
from protocol.codec import Compressor, encode_snapshot_chunk, encode_sync_status, encode_updates
from typha.k8s.projection import project
from typha.simcluster import SyntheticCluster

from .targets import FUZZ_HELLO, FUZZ_RESUME_HELLO, FUZZ_SUMMARY_HELLO, PATCH_TYPES

CORPUS = Path(__file__).resolve().parent / "corpus"
T = 1_700_000_000_000_000_000
KVS = [
    KV(f"/calico/v1/host/node-1/workload/k8s/default%2fpod-{i}/endpoint/eth0", b'{"name":"cali%05d"}' % i, str(i))
    for i in range(12)
]


def _frames() -> Iterator[tuple[str, bytes]]:
    hello = encode(FUZZ_HELLO)
    yield "server-hello-ping-goodbye", b"\x00\x07" + hello + encode(Ping(T)) + encode(Pong(T)) + encode(Goodbye("x"))
    yield "server-resume-hello", b"\x00\x03" + encode(FUZZ_RESUME_HELLO)
    yield "server-garbage-after-hello", b"\x00\x40" + hello + encode(Updates(1, 2, T, SyncStatus.IN_SYNC, 0, []))
    sh = encode(ServerHello(1, "felix", None, "srv", 10.0, "e1"))
    zsh = encode(ServerHello(1, "felix", "zstd", "srv", 10.0, "e1"))
    stream = b"".join(
        (
            encode_snapshot_chunk(5, 0, T, SyncStatus.RESYNC_IN_PROGRESS, KVS[:6], False),
            encode(Ping(T)),
            encode_snapshot_chunk(5, 1, T, SyncStatus.RESYNC_IN_PROGRESS, KVS[6:], True),
            encode_updates(5, 6, T, SyncStatus.RESYNC_IN_PROGRESS, [(KVS[0].key, None, "9"), (KVS[1].key, b"{}", "9")]),
            encode_sync_status(6, 7, T, SyncStatus.IN_SYNC),
            encode(Goodbye(GoodbyeCode.REBALANCE, "bye")),
        )
    )
    compressed = b"".join(
        (
            encode_snapshot_chunk(5, 0, T, SyncStatus.IN_SYNC, KVS * 4, True, Compressor()),
            encode_updates(5, 6, T, SyncStatus.IN_SYNC, KVS * 3, Compressor()),
        )
    )
    yield "client-stream", b"\x01\x05" + sh + stream
    yield "client-stream-headers-only", b"\x03\x0b" + sh + stream
    yield "client-compressed", b"\x01\x3f" + zsh + compressed
    yield "client-compressed-headers-only", b"\x03\x10" + zsh + compressed
    resumed = encode(ServerHello(1, "felix", None, "srv", 10.0, "e1", resumed=True))
    yield "client-resumed", b"\x05\x02" + resumed + encode_updates(7, 8, T, SyncStatus.IN_SYNC, KVS[:2])
    yield "client-not-ready", b"\x01\x01" + encode(Goodbye(GoodbyeCode.NOT_READY, "loading"))
    reconcile = encode(ServerHello(1, "felix", "zstd", "srv", 10.0, "e2", reconcile=True))
    yield (
        "client-reconcile",
        b"\x09\x07"
        + reconcile
        + encode(Digests(7, (3, 90), bytes(range(256)) * 8))
        + encode_updates(7, 8, T, SyncStatus.IN_SYNC, KVS[:2])
        + encode_snapshot_chunk(8, 0, T, SyncStatus.IN_SYNC, KVS[2:4], False, partial=True)
        + encode_snapshot_chunk(8, 1, T, SyncStatus.IN_SYNC, [], True, Compressor(), partial=True),
    )
    yield "server-reconcile-want", b"\x08\x05" + encode(FUZZ_SUMMARY_HELLO) + encode(Want(bytes(2048)))


def _decode() -> Iterator[tuple[str, bytes]]:
    messages: list[tuple[str, Any]] = [
        ("client-hello", FUZZ_HELLO),
        ("client-hello-resume", FUZZ_RESUME_HELLO),
        ("client-hello-minimal", ClientHello("h", "bgp", compression=())),
        ("server-hello", ServerHello(1, "felix", "zstd", "srv", 10.0, "e1")),
        ("server-hello-resumed", ServerHello(1, "felix", None, "", 3.5, "e1", True)),
        ("client-hello-summary", FUZZ_SUMMARY_HELLO),
        # a summary in a layout this peer does not know decodes as none (what fuzz-ci once found)
        ("client-hello-later-summary", ClientHello("h", "felix", summary=b"\1" * 40, summary_version=36)),
        ("server-hello-reconcile", ServerHello(1, "felix", None, "", 3.5, "e1", reconcile=True)),
        ("digests", Digests(12, (0, 127), bytes(2048))),
        ("digests-none", Digests(0, (), b"")),
        ("want", Want(b"\x01" + bytes(2047))),
        ("snapshot-partial", SnapshotChunk(7, 0, T, SyncStatus.IN_SYNC, 1, True, KVS[:1], partial=True)),
        ("ping", Ping(T)),
        ("pong", Pong(-5)),
        ("goodbye", Goodbye(GoodbyeCode.TOO_SLOW, "2 s behind")),
        ("updates", Updates(41, 42, T, SyncStatus.IN_SYNC, 3, [KVS[0], KV("gone", None, ""), KVS[1]])),
        ("sync-status", SyncStatusChange(42, 43, T, SyncStatus.RESYNC_IN_PROGRESS)),
        ("snapshot-final", SnapshotChunk(7, 2, T, SyncStatus.IN_SYNC, 2, True, KVS[:2])),
        ("snapshot-empty", SnapshotChunk(0, 0, T, SyncStatus.WAIT_FOR_DATASTORE, 0, True, [])),
    ]
    for name, msg in messages:
        wire = encode(msg)
        yield name, bytes((wire[4], wire[5])) + wire[8:]
    for name, wire in (
        ("updates-zstd", encode_updates(1, 2, T, SyncStatus.IN_SYNC, KVS * 3, Compressor())),
        ("snapshot-zstd", encode_snapshot_chunk(9, 0, T, SyncStatus.IN_SYNC, KVS * 3, True, Compressor())),
    ):
        yield name, bytes((wire[4], wire[5])) + wire[8:]
        yield name + "-headers-only", bytes((wire[4], wire[5] | 0x80)) + wire[8:]


def _k8s_objects() -> Iterator[tuple[str, dict[str, Any]]]:
    cluster = SyntheticCluster(nodes=2, pods_per_node=2, namespaces=2, policies=2, global_policies=2, seed=1)
    seen: dict[str, int] = {}
    for resource, obj in cluster.initial_objects():
        if seen.get(resource, 0) < 2:
            seen[resource] = seen.get(resource, 0) + 1
            yield resource, obj
    yield (
        "calico-networkpolicies",
        make_calico_object(
            "NetworkPolicy",
            "allow-web",
            {
                "selector": "app == 'web'",
                "order": 100,
                "ingress": [{"action": "Allow", "protocol": "TCP", "source": {"selector": "role == 'lb'"}}],
                "egress": [{"action": "Deny", "destination": {"nets": ["10.0.0.0/8"], "ports": [80, "1000:2000"]}}],
            },
            namespace="shop",
        ),
    )
    yield (
        "globalnetworksets",
        make_calico_object("GlobalNetworkSet", "ext", {"nets": ["192.0.2.0/24"]}, labels={"a": "b"}),
    )
    yield "networksets", make_calico_object("NetworkSet", "ns1", {"nets": ["198.51.100.7/32"]}, namespace="shop")
    yield (
        "hostendpoints",
        make_calico_object(
            "HostEndpoint", "node-1-eth0", {"node": "node-1", "interfaceName": "eth0", "expectedIPs": ["192.0.2.1"]}
        ),
    )
    yield "bgppeers", make_calico_object("BGPPeer", "rr", {"peerIP": "192.0.2.254", "asNumber": 64512})
    yield "bgpconfigurations", make_calico_object("BGPConfiguration", "default", {"asNumber": 64512})


def _projection() -> Iterator[tuple[str, bytes]]:
    counts: dict[str, int] = {}
    for resource, obj in _k8s_objects():
        counts[resource] = counts.get(resource, 0) + 1
        yield f"{resource}-{counts[resource]}", resource.encode() + b"\n" + orjson.dumps(obj)


def _selectors() -> Iterator[tuple[str, bytes]]:
    for i, text in enumerate(
        (
            "app=web,tier in (frontend, backend),!legacy,env notin (dev),k8s.io/name",
            "app==web,version!=2",
            "metadata.name=web-1,metadata.namespace!=kube-system,spec.nodeName=node-1",
            "status.phase=Running",
            encode_continue(1234, "default\x00web-1"),
            "/api/v1/namespaces/default/pods/web-1/status",
            "/apis/crd.projectcalico.org/v1/ippools",
            "/api/v1/watch/namespaces/default/pods",
        )
    ):
        yield f"{i}", text.encode()


def _patches() -> Iterator[tuple[str, bytes]]:
    target = make_pod("shop", "web-1", "node-1", "10.128.0.5")
    cases = [
        (MERGE, {"metadata": {"labels": {"app": "web", "old": None}}, "spec": {"nodeName": "node-2"}}),
        (STRATEGIC, {"spec": {"containers": [{"name": "c", "image": "x:2"}]}, "$patch": "merge"}),
        (
            JSON_PATCH,
            [
                {"op": "add", "path": "/metadata/labels/x", "value": "1"},
                {"op": "replace", "path": "/spec/nodeName", "value": "n"},
                {"op": "copy", "from": "/metadata/name", "path": "/metadata/labels/name"},
                {"op": "move", "from": "/metadata/labels/x", "path": "/metadata/labels/y"},
                {"op": "test", "path": "/metadata/labels/y", "value": "1"},
                {"op": "remove", "path": "/metadata/labels/y"},
            ],
        ),
        (PATCH_TYPES[3], {"metadata": {"name": "web-1"}}),
    ]
    for content_type, patch in cases:
        yield content_type.rsplit("/", 1)[-1], bytes((PATCH_TYPES.index(content_type),)) + orjson.dumps([target, patch])


def _bodies() -> Iterator[tuple[str, bytes]]:
    objects: list[tuple[str, dict[str, Any]]] = [
        ("namespaces", make_namespace("shop", {"team": "a"})),
        ("nodes", make_node("node-1", "192.0.2.1", "10.244.1.0/24", {"kubernetes.io/hostname": "node-1"})),
        ("pods", make_pod("default", "web-1", "node-1", "10.128.0.5", labels={"app": "web"})),
        ("ippools", make_calico_object("IPPool", "pool", {"cidr": "10.64.0.0/10", "vxlanMode": "Always"})),
        ("configmaps", {"metadata": {"name": "c"}}),
    ]
    for resource, obj in objects:
        yield resource, resource.encode() + b"\n" + orjson.dumps(obj)


def _policy() -> Iterator[tuple[str, bytes]]:
    selectors = [
        "",
        "app == 'web' && has(pcns.team)",
        "a in {'x', 'y'} || !(b not in {\"z\"})",
        "x/y starts with 'a' && k contains \"b\" && e ends with 'c'",
        "global() && !all()",
    ]
    for i, text in enumerate(selectors):
        yield f"selector-{i}", b"\x00" + text.encode()
    spec = {
        "podSelector": {"matchLabels": {"app": "web"}},
        "policyTypes": ["Ingress", "Egress"],
        "ingress": [{"from": [{"namespaceSelector": {}}], "ports": [{"port": "http"}, {"port": 80, "endPort": 90}]}],
        "egress": [{"to": [{"ipBlock": {"cidr": "10.0.0.0/8", "except": ["10.1.0.0/16"]}}]}],
    }
    obj = {"metadata": {"name": "np", "namespace": "ns"}, "spec": spec}
    for _, value in project("networkpolicies", obj):
        yield "knp", b"\x01" + orjson.dumps(value)
    gnp = make_calico_object(
        "GlobalNetworkPolicy",
        "g",
        {"order": 10, "selector": "all()", "ingress": [{"action": "Pass", "protocol": "ICMP", "icmp": {"type": 8}}]},
    )
    for _, value in project("globalnetworkpolicies", gnp):
        yield "gnp", b"\x01" + orjson.dumps(value)
    for _, value in project("namespaces", make_namespace("ns", {"team": "a"})):
        yield "profile", b"\x02" + orjson.dumps(value)
    for _, value in project("pods", make_pod("ns", "pod", "fuzz-node", "10.0.0.2", {"app": "web"})):
        yield "endpoint", b"\x03" + orjson.dumps(value)


def _kernelstate() -> Iterator[tuple[str, bytes]]:
    """What felix itself writes (its first transaction, as iptables-save shows it), a node with
    kube-proxy's rules beside ours, and ip sets of both kinds."""
    st = DesiredState()
    ours = plan_table("filter", st.tables[(4, "filter")], Renderer.hooks("filter"), KernelTable()).lines
    saved = [line.replace("-I FORWARD 1", "-A FORWARD").replace("-I INPUT 1", "-A INPUT") for line in ours]
    yield "felix", b"\x00" + "\n".join(line for line in saved if not line.startswith("-I")).encode()
    yield (
        "kube",
        (
            b"\x00*filter\n:FORWARD DROP [0:0]\n:KUBE-FORWARD - [0:0]\n"
            b'-A FORWARD -m comment --comment "kubernetes forwarding rules" -j KUBE-FORWARD\n'
            b'-A FORWARD -m comment --comment "cali:bWsPalGqwXXo4CU2" -j cali-FORWARD\nCOMMIT\n'
        ),
    )
    yield (
        "ipsets",
        (
            b"\x01create cali40s:abc hash:net family inet hashsize 1024 maxelem 1048576\nadd cali40s:abc 10.0.0.1\n"
            b"create foo hash:ip family inet\nadd foo 1.2.3.4\ncreate cali4t0 hash:net family inet maxelem 65536\n"
        ),
    )


def _admission() -> Iterator[tuple[str, bytes]]:
    from loadtest.apiserver import protobuf

    kinds = sorted(protobuf.KINDS)
    f = protobuf.field
    meta = f(1, "x") + f(3, "default") + f(11, f(1, "app") + f(2, "web"))
    port = f(1, "http") + f(2, "TCP") + f(3, 80) + f(4, f(1, 1) + f(3, "web"))
    bodies = {
        "namespaces": protobuf.envelope("v1", "Namespace", f(1, meta)),
        "services": protobuf.envelope("v1", "Service", f(1, meta) + f(2, f(1, port) + f(4, "ClusterIP"))),
        "configmaps": protobuf.envelope("v1", "ConfigMap", f(1, meta) + f(2, f(1, "k") + f(2, "v"))),
    }
    for resource, raw in bodies.items():
        yield f"protobuf-{resource}", bytes((0, kinds.index(resource))) + raw
    objects: list[tuple[str, dict[str, Any]]] = [
        ("configmaps", {"metadata": {"name": "c"}, "data": {"a": "1"}, "datta": {}}),
        ("secrets", {"metadata": {"name": "s"}, "stringData": {"k": "v"}, "data": {"b": "Yg=="}}),
        ("services", {"metadata": {"name": "svc"}, "spec": {"ports": [{"port": 80}], "selector": {"a": "b"}}}),
        (
            "deployments",
            {
                "metadata": {"name": "d"},
                "spec": {
                    "replicas": 2,
                    "selector": {"matchLabels": {"a": "b"}},
                    "template": {
                        "spec": {"containers": [{"name": "c", "image": "i", "resources": {"limits": {"cpu": 1}}}]}
                    },
                },
            },
        ),
    ]
    for resource, obj in objects:
        yield f"json-{resource}", b"\x01" + resource.encode() + b"\n" + orjson.dumps(obj)
    crd = {
        "metadata": {"name": "widgets.example.com"},
        "spec": {
            "group": "example.com",
            "names": {"kind": "Widget", "plural": "widgets"},
            "scope": "Namespaced",
            "versions": [
                {
                    "name": "v1",
                    "served": True,
                    "storage": True,
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "properties": {
                                "spec": {
                                    "type": "object",
                                    "properties": {
                                        "size": {"type": "integer", "default": 1},
                                        "x": {"x-kubernetes-int-or-string": True},
                                    },
                                }
                            },
                        }
                    },
                }
            ],
        },
    }
    yield "crd", b"\x02" + orjson.dumps(crd)


SEEDS = {
    "frames": _frames,
    "decode": _decode,
    "projection": _projection,
    "selectors": _selectors,
    "patches": _patches,
    "bodies": _bodies,
    "policy": _policy,
    "kernelstate": _kernelstate,
    "admission": _admission,
}


def write(corpus: Path = CORPUS) -> int:
    written = 0
    for target, make in SEEDS.items():
        folder = corpus / target
        folder.mkdir(parents=True, exist_ok=True)
        for old in folder.glob("seed-*"):
            old.unlink()
        for name, data in make():
            (folder / f"seed-{name}").write_bytes(data)
            written += 1
    return written


if __name__ == "__main__":
    print(f"wrote {write()} seed files under {CORPUS}", file=sys.stderr)
