"""Benchmark of felix's policy calculation alone (no kernel): cold start, a label change, a policy edit.

The scale of issue 11: one node with 1,000 local endpoints in a cluster of 10,000, 500 policies
whose selectors use 20 labels; the kernel's apply time comes on top (``loadtest bench policy``).
Prints each figure with what was changed, so a run is a table for docs/benchmarks.md:

    .venv/bin/python tools/bench_policy_calc.py [--endpoints 10000] [--local 1000] [--policies 500]
"""

from __future__ import annotations

import argparse
import gc
import random
import statistics
import time
import tracemalloc

import orjson

from felix.policy.calc import PolicyCalculator
from felix.policy.messages import Batch, IpSetDeltaUpdate, IpSetUpdate

ME = "node-0"
LABELS = [f"label{i}" for i in range(20)]
VALUES = [f"v{i}" for i in range(10)]


def j(v: object) -> bytes:
    return orjson.dumps(v, option=orjson.OPT_SORT_KEYS)


def endpoint(i: int, nodes: int, local: int, rng: random.Random) -> tuple[str, bytes]:
    node = ME if i < local else f"node-{1 + i % (nodes - 1)}"
    ns = f"ns{i % 20}"
    labels = {k: rng.choice(VALUES) for k in rng.sample(LABELS, 8)}
    labels.update({"projectcalico.org/namespace": ns, "projectcalico.org/orchestrator": "k8s", "app": f"app{i % 50}"})
    key = f"/calico/v1/host/{node}/workload/k8s/{ns}%2fpod{i}/endpoint/eth0"
    value = {
        "name": f"cali{i:011x}",
        "node": node,
        "ipNetworks": [f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}/32"],
        "profiles": [f"kns.{ns}"],
        "labels": labels,
        "ports": [{"name": "http", "protocol": "tcp", "port": 8080}],
    }
    return key, j(value)


def policy(n: int, rng: random.Random, edit: int = 0) -> tuple[str, bytes]:
    ns = f"ns{n % 20}"
    a, b, c = rng.sample(LABELS, 3)

    def sel() -> str:
        return f"{rng.choice(LABELS)} == '{rng.choice(VALUES)}' && projectcalico.org/namespace == '{ns}'"

    value = {
        "tier": "default",
        "order": float(n % 7 + edit),
        "selector": f"({a} == '{rng.choice(VALUES)}' || {b} in {{'v1', 'v2'}}) && projectcalico.org/namespace == '{ns}'",
        "types": ["ingress", "egress"],
        "inboundRules": [
            {"action": "allow", "protocol": "tcp", "srcSelector": sel(), "dstPorts": [80, "http"]},
            {"action": "allow", "srcSelector": f"has({c}) && app == 'app{rng.randrange(50)}'"},
        ],
        "outboundRules": [{"action": "allow", "dstSelector": sel()}, {"action": "deny", "dstNets": ["192.168.0.0/16"]}],
        "namespace": ns,
    }
    return f"/calico/v1/policy/tier/default/policy/{ns}%2fpol{n}", j(value)


def profiles() -> list[tuple[str, bytes]]:
    return [
        (
            f"/calico/v1/policy/profile/kns.ns{i}",
            j(
                {
                    "labels": {"pcns.team": f"t{i % 4}"},
                    "inboundRules": [{"action": "allow"}],
                    "outboundRules": [{"action": "allow"}],
                }
            ),
        )
        for i in range(20)
    ]


def summary(batch: Batch) -> str:
    members = sum(len(m.members) for m in batch.messages if isinstance(m, IpSetUpdate))
    members += sum(len(m.added) + len(m.removed) for m in batch.messages if isinstance(m, IpSetDeltaUpdate))
    kinds: dict[str, int] = {}
    for m in batch.messages:
        kinds[type(m).__name__] = kinds.get(type(m).__name__, 0) + 1
    return f"{len(batch.messages)} messages, {members} set members ({', '.join(f'{k} {v}' for k, v in sorted(kinds.items()))})"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--endpoints", type=int, default=10_000)
    ap.add_argument("--local", type=int, default=1_000)
    ap.add_argument("--policies", type=int, default=500)
    ap.add_argument("--nodes", type=int, default=10)
    ap.add_argument("--changes", type=int, default=50)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    rng = random.Random(args.seed)
    eps = [endpoint(i, args.nodes, args.local, rng) for i in range(args.endpoints)]
    pols = [policy(n, random.Random(n)) for n in range(args.policies)]
    calc = PolicyCalculator(ME)
    gc.collect()
    t0, c0 = time.perf_counter(), time.process_time()
    batch, _ = calc.apply(profiles() + eps + pols)
    cold, cold_cpu = time.perf_counter() - t0, time.process_time() - c0
    print(
        f"cold start: {cold * 1000:.0f} ms ({cold_cpu * 1000:.0f} ms CPU: the figure to trust on a shared machine) "
        f"for {len(eps)} endpoints ({args.local} local), {len(pols)} policies"
    )
    print(f"  {calc.active_policies} active policies, {calc.ip_set_count} ip sets; {summary(batch)}")

    label_times, edit_times = [], []
    last_label = last_edit = ""
    for k in range(args.changes):
        i = rng.randrange(args.local)  # a local pod: it moves in policies and in ip sets
        key, raw = eps[i]
        value = orjson.loads(raw)
        value["labels"][rng.choice(LABELS)] = rng.choice(VALUES)
        eps[i] = (key, j(value))
        t0 = time.perf_counter()
        batch, _ = calc.apply([eps[i]])
        label_times.append(time.perf_counter() - t0)
        last_label = summary(batch)
        n = rng.randrange(args.policies)
        edited = policy(n, random.Random(n * 1000 + k), edit=1)
        t0 = time.perf_counter()
        batch, _ = calc.apply([edited])
        edit_times.append(time.perf_counter() - t0)
        last_edit = summary(batch)

    def fmt(ts: list[float]) -> str:
        ts = sorted(ts)
        return f"median {statistics.median(ts) * 1000:.2f} ms, p95 {ts[int(len(ts) * 0.95)] * 1000:.2f} ms, max {ts[-1] * 1000:.2f} ms"

    print(f"one local pod's label changed ({args.changes}x): {fmt(label_times)}; last: {last_label}")
    print(f"one policy edited, new selectors ({args.changes}x): {fmt(edit_times)}; last: {last_edit}")
    # The obvious alternative: recompute everything from the current state after each change.
    naive = []
    for _ in range(3):
        t0 = time.perf_counter()
        PolicyCalculator(ME).apply(profiles() + eps + pols)
        naive.append(time.perf_counter() - t0)
    tracemalloc.start()
    held = PolicyCalculator(ME)
    held.apply(profiles() + eps + pols)
    gc.collect()
    size = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    print(f"memory held by the calculation: {size / 1e6:.1f} MB, {size / len(eps):.0f} B per endpoint")
    med = statistics.median(naive)
    print(
        f"naive full recomputation per change (3x): median {med * 1000:.0f} ms -> incremental is "
        f"{med / statistics.median(label_times):.0f}x faster for a label change, "
        f"{med / statistics.median(edit_times):.0f}x for a policy edit"
    )


if __name__ == "__main__":
    main()
