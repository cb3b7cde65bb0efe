"""Tests for typha.simcluster (the synthetic cluster): determinism, sizes, IPAM consistency, churn."""

from __future__ import annotations

import hashlib
import ipaddress
import time
from collections import Counter

import orjson
import pytest

from protocol import keys as K
from protocol.keys import ADDED, DELETED, MODIFIED
from typha.k8s.projection import project, project_all, project_delete
from typha.simcluster import CHURN_OPS, PoolExhausted, SyntheticCluster


def digest(items) -> str:
    h = hashlib.sha256()
    for x in items:
        h.update(orjson.dumps(x, option=orjson.OPT_SORT_KEYS))
    return h.hexdigest()


def small(**kw) -> SyntheticCluster:
    args = {"nodes": 40, "pods_per_node": 30, "namespaces": 6, "policies": 12, "seed": 7}
    args.update(kw)
    return SyntheticCluster(**args)


def replay(state: dict, events) -> None:
    """Apply watch events to a key/value map exactly as Typha's watcher would."""
    for typ, res, obj in events:
        if typ == DELETED:
            for k in project_delete(res, obj):
                state.pop(k, None)
        else:
            for k, v in project(res, obj):
                if v is None:
                    state.pop(k, None)
                else:
                    state[k] = v


def check_ipam(c: SyntheticCluster) -> dict:
    """Cross-check pods, nodes and IPAM blocks of the current truth; return some facts."""
    objs = c.objects()
    pool = ipaddress.ip_network(c.pool_cidr)
    blocks = {ipaddress.ip_network(b["spec"]["cidr"]): b for b in objs.get("ipamblocks", {}).values()}
    affinities = {(a["spec"]["node"], a["spec"]["cidr"]) for a in objs.get("blockaffinities", {}).values()}
    for net, b in blocks.items():
        assert net.prefixlen == c.block_size and net.subnet_of(pool)
        aff = b["spec"]["affinity"]
        if aff:
            assert (aff[5:], b["spec"]["cidr"]) in affinities
            assert aff[5:] in objs["nodes"]
    assert len(affinities) == sum(1 for b in blocks.values() if b["spec"]["affinity"])
    seen: dict[str, str] = {}
    borrowed = 0
    for key, pod in objs.get("pods", {}).items():
        ip = pod["status"].get("podIP")
        if not ip or pod["metadata"].get("deletionTimestamp"):
            continue
        assert ip not in seen, f"{ip} given to {key} and {seen[ip]}"
        seen[ip] = key
        addr = ipaddress.ip_address(ip)
        assert addr in pool
        net = ipaddress.ip_network(f"{ip}/{c.block_size}", strict=False)
        spec = blocks[net]["spec"]
        ordinal = int(addr) - int(net.network_address)
        attr = spec["attributes"][spec["allocations"][ordinal]]
        node = pod["spec"]["nodeName"]
        assert attr["secondary"]["pod"] == pod["metadata"]["name"]
        assert attr["secondary"]["namespace"] == pod["metadata"]["namespace"]
        assert attr["secondary"]["node"] == node
        assert ordinal not in spec["unallocated"]
        if spec["affinity"] != f"host:{node}":
            borrowed += 1
    # Every allocation in every block belongs to a live pod or a node's tunnel.
    tunnels = set()
    for n in objs.get("nodes", {}).values():
        ann = n["metadata"]["annotations"]
        t = ann.get("projectcalico.org/IPv4IPIPTunnelAddr") or ann.get("projectcalico.org/IPv4VXLANTunnelAddr")
        if t:
            assert t not in seen and t not in tunnels
            tunnels.add(t)
    allocated = 0
    for net, b in blocks.items():
        spec = b["spec"]
        used = [i for i, a in enumerate(spec["allocations"]) if a is not None]
        assert sorted(used + spec["unallocated"]) == list(range(net.num_addresses))
        allocated += len(used)
    assert allocated == len(seen) + len(tunnels)
    return {"pod_ips": len(seen), "borrowed": borrowed, "tunnels": len(tunnels)}


# --- determinism and shape --------------------------------------------------------------------------


def test_same_seed_same_cluster_and_churn() -> None:
    a, b = small(), small()
    assert digest(a.initial_objects()) == digest(b.initial_objects())
    assert digest(a.churn(300)) == digest(b.churn(300))
    assert digest(a.initial_objects()) == digest(b.initial_objects())
    assert digest(small(seed=8).initial_objects()) != digest(small().initial_objects())


def test_sizes() -> None:
    c = small()
    objs = c.objects()
    counts = {r: len(v) for r, v in objs.items()}
    assert counts["nodes"] == 40
    assert counts["pods"] == 40 * 30
    assert counts["namespaces"] == 6 + 2  # plus default and kube-system
    assert counts["networkpolicies"] == 12
    assert counts["globalnetworkpolicies"] == 4
    assert counts["ippools"] == counts["felixconfigurations"] == counts["clusterinformations"] == 1
    assert counts["ipamblocks"] == counts["blockaffinities"] == 40  # one block per node by default
    assert counts["serviceaccounts"] >= 8
    assert c.stats()["pods"] == 1200
    # Every pod's namespace and service account exists.
    for pod in objs["pods"].values():
        ns = pod["metadata"]["namespace"]
        assert ns in objs["namespaces"]
        assert f"{ns}/{pod['spec']['serviceAccountName']}" in objs["serviceaccounts"]


def test_objects_have_api_server_shape_and_noise() -> None:
    c = small(nodes=3, pods_per_node=2)
    objs = c.objects()
    pod = next(iter(objs["pods"].values()))
    assert pod["apiVersion"] == "v1" and pod["kind"] == "Pod"
    md = pod["metadata"]
    assert md["resourceVersion"].isdigit() and md["uid"] and md["creationTimestamp"].endswith("Z")
    assert md["managedFields"] and md["ownerReferences"][0]["kind"] == "ReplicaSet"
    assert md["annotations"]["cni.projectcalico.org/podIP"] == pod["status"]["podIP"] + "/32"
    assert pod["status"]["phase"] == "Running" and pod["status"]["conditions"]
    assert pod["status"]["containerStatuses"][0]["ready"] is True
    node = next(iter(objs["nodes"].values()))
    assert node["status"]["conditions"][-1]["type"] == "Ready"
    assert node["metadata"]["annotations"]["projectcalico.org/IPv4Address"].endswith("/24")
    addr = ipaddress.ip_address(node["status"]["addresses"][0]["address"])
    assert addr in ipaddress.ip_network("100.64.0.0/10")  # never a real, reachable address
    # Objects serialise as JSON (what an API server emulator will send).
    for _, obj in c.initial_objects():
        orjson.dumps(obj)
    rvs = [int(o["metadata"]["resourceVersion"]) for _, o in c.initial_objects()]
    assert max(rvs) <= c.resource_version


def test_every_initial_object_projects() -> None:
    c = small(encapsulation="VXLAN")
    n = 0
    for res, obj in c.initial_objects():
        ups = project(res, obj)
        assert all(v is not None for _, v in ups), (res, obj["metadata"]["name"])
        n += len(ups)
    kv = project_all(c.initial_objects())
    assert len(kv) == n
    node_vals = [v for k, v in kv.items() if K.parse_node_key(k)]
    assert all("ipv4VXLANTunnelAddr" in v and "vxlanTunnelMACAddr" in v for v in node_vals)
    assert len({v["vxlanTunnelMACAddr"] for v in node_vals}) == len(node_vals)


# --- IPAM -------------------------------------------------------------------------------------------


def test_ips_unique_and_consistent_with_blocks() -> None:
    c = small()
    facts = check_ipam(c)
    assert facts["pod_ips"] == 1200
    assert facts["tunnels"] == 40


def test_borrowing_happens_and_projects() -> None:
    c = small()
    facts = check_ipam(c)
    assert facts["borrowed"] > 0
    assert facts["borrowed"] == c.stats()["borrowed"]
    # The projected blocks list exactly the borrowed addresses, with the node hosting each.
    kv = project_all(c.initial_objects())
    from_blocks = set()
    for k, v in kv.items():
        cidr = K.parse_block_key(k)
        if cidr:
            base = int(ipaddress.ip_network(cidr).network_address)
            from_blocks.update((str(ipaddress.ip_address(base + o)), node) for o, node, _ in v["borrowed"])
    from_pods = set()
    for k, v in kv.items():
        wk = K.parse_workload_key(k)
        if wk:
            ip = v["ipNetworks"][0].split("/")[0]
            net = ipaddress.ip_network(f"{ip}/{c.block_size}", strict=False)
            aff = kv[K.ipam_block_key(str(net))]["affinity"]
            if aff != f"host:{wk.node}":
                from_pods.add((ip, wk.node))
    assert from_blocks == from_pods and from_pods


def test_no_borrowing_when_disabled_and_unlimited_blocks() -> None:
    c = small(hot_node_fraction=0)
    assert c.stats()["borrowed"] == 0
    c = small(pods_per_node=100, max_blocks_per_node=0)  # unlimited: nodes claim more blocks
    assert c.stats()["borrowed"] == 0 and c.stats()["blocks"] == 80
    check_ipam(c)


def test_exhausted_pool_borrows_then_fails() -> None:
    # 4 blocks of 64 for 5 nodes: the fifth node has no block of its own and borrows.
    c = SyntheticCluster(
        nodes=5, pods_per_node=10, namespaces=2, policies=0, seed=1, pool_cidr="10.64.0.0/24", hot_node_fraction=0
    )
    facts = check_ipam(c)
    assert facts["borrowed"] >= 10
    with pytest.raises(PoolExhausted):
        SyntheticCluster(nodes=5, pods_per_node=60, namespaces=2, policies=0, seed=1, pool_cidr="10.64.0.0/24")


# --- churn -----------------------------------------------------------------------------------------


def test_churn_replay_matches_truth() -> None:
    c = small()
    state = project_all(c.initial_objects())
    events = c.churn(1500)
    ops = Counter((t, r) for t, r, _ in events)
    for needed in [
        (ADDED, "pods"),
        (DELETED, "pods"),
        (MODIFIED, "pods"),
        (MODIFIED, "ipamblocks"),
        (ADDED, "nodes"),
        (DELETED, "nodes"),
        (ADDED, "blockaffinities"),
        (DELETED, "blockaffinities"),
        (MODIFIED, "networkpolicies"),
    ]:
        assert ops[needed] > 0, needed
    replay(state, events)
    assert state == project_all(c.initial_objects())
    check_ipam(c)


def test_node_leave_with_borrowers_orphans_block() -> None:
    # Find a node whose block lends addresses, then remove it through churn.
    for seed in range(20):
        c = small(seed=seed)
        state = project_all(c.initial_objects())
        events = c.churn(60, mix={"node_leave": 1})
        replay(state, events)
        assert state == project_all(c.initial_objects())
        check_ipam(c)
        if any(t == MODIFIED and r == "ipamblocks" and o["spec"]["affinity"] is None for t, r, o in events):
            break
    else:
        pytest.fail("no node with lent addresses ever left")
    # Orphaned blocks are deleted once their last borrowed address is released.
    events = c.churn(3000, mix={"pod_delete": 1})
    replay(state, events)
    assert c.stats()["pods"] == 0
    assert "ipamblocks" not in c.objects() or all(b["spec"]["affinity"] for b in c.objects()["ipamblocks"].values())
    assert state == project_all(c.initial_objects())


def test_resource_versions_increase() -> None:
    c = small()
    last = c.resource_version
    for _, _, obj in c.churn(500):
        rv = int(obj["metadata"]["resourceVersion"])
        assert rv > last
        last = rv
    assert last == c.resource_version


def test_status_only_events_project_identically() -> None:
    c = small()
    state = project_all(c.initial_objects())
    events = c.churn(300, mix={"pod_status": 1, "node_status": 1})
    assert {(t, r) for t, r, _ in events} == {(MODIFIED, "pods"), (MODIFIED, "nodes")}
    for _, res, obj in events:
        ((key, value),) = project(res, obj)
        assert orjson.dumps(value, option=orjson.OPT_SORT_KEYS) == orjson.dumps(state[key], option=orjson.OPT_SORT_KEYS)


def test_label_and_policy_events_project_differently() -> None:
    c = small()
    state = project_all(c.initial_objects())
    events = c.churn(100, mix={"pod_label": 1})
    for _, res, obj in events:
        ((key, value),) = project(res, obj)
        assert value != state[key]
        state[key] = value
    events = c.churn(100, mix={"policy_edit": 1})
    changed = sum(1 for _, res, obj in events if project(res, obj)[0][1] != state.get(project(res, obj)[0][0]))
    assert changed > 0


def test_pod_lifecycle_events() -> None:
    c = small()
    events = c.churn(1, mix={"pod_create": 1})
    assert [(t, r) for t, r, _ in events] == [(ADDED, "pods"), (MODIFIED, "ipamblocks"), (MODIFIED, "pods")]
    _key, v = project("pods", events[0][2])[0]
    assert v is None  # Pending, no IP yet
    assert project("pods", events[2][2])[0][1]["ipNetworks"]
    events = c.churn(1, mix={"pod_delete": 1})
    assert [(t, r) for t, r, _ in events] == [
        (MODIFIED, "pods"),
        (MODIFIED, "pods"),
        (MODIFIED, "ipamblocks"),
        (DELETED, "pods"),
    ]
    assert project("pods", events[0][2])[0][1] is not None  # terminating, IP still held
    assert project("pods", events[1][2])[0][1] is None  # CNI released it


def test_churn_counting_events() -> None:
    c = small()
    ops = c.churn(50)
    assert len(ops) > 50  # operations emit several events each
    for n in (1, 7, 200):
        ev = c.churn(n, count_events=True)
        assert n <= len(ev) <= n + 200  # the last operation may overshoot (a node leaving)
    # Nothing can happen (no policies to edit): stops instead of spinning.
    idle = SyntheticCluster(nodes=1, pods_per_node=1, namespaces=1, policies=0, global_policies=0, seed=1)
    assert idle.churn(10, mix={"policy_edit": 1}, count_events=True) == []


def test_churn_mix_validation() -> None:
    c = small(nodes=2, pods_per_node=1)
    with pytest.raises(ValueError):
        c.churn(1, mix={"explode": 1})
    with pytest.raises(ValueError):
        c.churn(1, mix={"pod_create": 0})
    assert set(CHURN_OPS) >= {
        "pod_create",
        "pod_delete",
        "pod_label",
        "pod_status",
        "policy_edit",
        "node_join",
        "node_leave",
    }


def test_full_scale_is_fast() -> None:
    t = time.perf_counter()
    c = SyntheticCluster(nodes=5000, pods_per_node=30, namespaces=100, policies=500, seed=3)
    pods = sum(1 for r, _ in c.initial_objects() if r == "pods")
    elapsed = time.perf_counter() - t
    assert pods == 150_000
    assert c.stats()["borrowed"] > 0
    assert elapsed < 20, elapsed  # typically ~3 s; generous for loaded CI machines
