"""`loadtest bench policy`: network policy from cluster view to enforcing kernel, against a naive rewrite.

One node (a network namespace) with ``local`` workload endpoints in a cluster of ``local + remote``,
``policies`` namespaced policies whose selectors and rules use ``labels`` label keys, every pod
exposing a named port. The real pipeline runs: typha-shaped key/values -> ``felix.policy.calc``
(the calculation) -> ``felix.dataplane.iptables`` (render, plan, iptables-restore, ipset restore)
into the namespace. Measured:

1. cold start: all updates in -> every rule and set in the kernel;
2. one local pod's label changed (``changes`` times): time until the kernel holds the change, and
   how many chains, rule lines and set members were written;
3. one policy edited (a rule's selector and port): the same;
4. enforcement on real traffic: two probe pods (veth pairs) where a label change, then a policy
   edit, must open a TCP port; the clock runs from the update to the first completed handshake;
5. rules evaluated by a packet to the pod in the middle of the dispatch (a walk of the rendered
   tables), with felix's dispatch tree, Calico's one-level split and a linear list.

In the same run every change is also written the naive way -- re-render everything, flush and
rewrite every chain, rewrite every set through a swap -- so the gain is a ratio measured on the
same machine at the same moment. ``--cold-start-only`` stops after 1 (no naive rewrite), for
timing the cold start of two versions of felix against each other. Needs root.
"""

from __future__ import annotations

import hashlib
import random
import resource
import select
import socket
import statistics
import subprocess
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from typing import Any

import orjson

from felix.dataplane.iptables import names as N
from felix.dataplane.iptables.desired import DesiredState
from felix.dataplane.iptables.manager import ApplyReport, PolicyConfig, PolicyDataplane
from felix.dataplane.iptables.render import RenderConfig, Renderer
from felix.dataplane.iptables.walk import Packet, walk
from felix.dataplane.netns import run_in_netns
from felix.policy.calc import PolicyCalculator
from felix.policy.messages import (
    ActivePolicyRemove,
    ActivePolicyUpdate,
    ActiveProfileRemove,
    ActiveProfileUpdate,
    IPAMPoolRemove,
    IPAMPoolUpdate,
    IpSetDeltaUpdate,
    IpSetRemove,
    IpSetUpdate,
    Message,
    WorkloadEndpointRemove,
    WorkloadEndpointUpdate,
)
from loadtest.support.console import kv_table, out_console
from protocol import keys

ME = "bench-node"
NAMESPACES = 10
VALUES = ("a", "b", "c", "d", "e")
KV = tuple[str, bytes | None]
_REMOVES = {
    ActivePolicyRemove: ActivePolicyUpdate,
    ActiveProfileRemove: ActiveProfileUpdate,
    WorkloadEndpointRemove: WorkloadEndpointUpdate,
    IPAMPoolRemove: IPAMPoolUpdate,
}


@dataclass(frozen=True)
class PolicyBenchOptions:
    local: int = 1000
    remote: int = 9000
    policies: int = 500
    labels: int = 20
    changes: int = 20
    seed: int = 1
    ipv6: bool = True  # felix's default (Ipv6Support): the IPv6 tables mirror the IPv4 ones
    naive: bool = True
    cold_start_only: bool = False  # no changes, probes or dispatch walk (timing the cold start alone)


def _json(v: object) -> bytes:
    return orjson.dumps(v, option=orjson.OPT_SORT_KEYS)


class Cluster:
    """The synthetic cluster as typha would stream it (keys and canonical JSON values)."""

    def __init__(self, opts: PolicyBenchOptions) -> None:
        self.rng = random.Random(opts.seed)
        self.labels = [f"l{k}" for k in range(opts.labels)]
        self.pods: dict[int, dict[str, Any]] = {}
        for i in range(opts.local + opts.remote):
            ns = f"ns{i % NAMESPACES}"
            self.pods[i] = {
                "ns": ns,
                "pod": f"pod{i}",
                "node": ME if i < opts.local else f"remote{i % 50}",
                "name": "cali" + hashlib.sha1(f"{ns}.pod{i}".encode()).hexdigest()[:11],
                "ipNetworks": [f"10.{64 + (i >> 16)}.{(i >> 8) & 255}.{i & 255}/32"],
                "profiles": [f"kns.{ns}"],
                "labels": {k: self.rng.choice(VALUES) for k in self.labels if self.rng.random() < 0.4},
                "ports": [{"name": "http", "protocol": "TCP", "port": 8080}],
            }
        self.pols: dict[int, dict[str, Any]] = {n: self._policy(n) for n in range(opts.policies)}

    def _sel(self, ns: str | None = None) -> str:
        """Two label keys, as a Kubernetes podSelector; within ``ns`` (a peer in the policy's own
        namespace, as Kubernetes scopes podSelectors), or cluster-wide."""
        a, b = self.rng.sample(self.labels, 2)
        sel = f"{a} == '{self.rng.choice(VALUES)}' && has({b})"
        return f"{sel} && projectcalico.org/namespace == '{ns}'" if ns else sel

    def _policy(self, n: int) -> dict[str, Any]:
        ns = f"ns{n % NAMESPACES}"
        return {
            "ns": ns,
            "name": f"pol{n}",
            "order": float(n % 10),
            "selector": self._sel(),
            "types": ["ingress", "egress"],
            "inboundRules": [
                {"action": "allow", "protocol": "TCP", "srcSelector": self._sel(ns), "dstPorts": [80, "http"]},
                {
                    "action": "deny",
                    "protocol": "UDP",
                    "srcSelector": f"{self._sel()} && has({self.rng.choice(self.labels)})",
                },
            ],
            "outboundRules": [
                {"action": "allow", "dstSelector": self._sel(ns)},
                {"action": "allow", "protocol": "UDP", "dstPorts": [53]},
            ],
        }

    def pod_kv(self, i: int) -> KV:
        p = self.pods[i]
        value = {k: v for k, v in p.items() if k not in ("ns", "pod")}
        value["labels"] = {**p["labels"], "projectcalico.org/namespace": p["ns"]}
        return keys.workload_key(p["node"], p["ns"], p["pod"]), _json(value)

    def policy_kv(self, n: int) -> KV:
        p = self.pols[n]
        value = {k: v for k, v in p.items() if k not in ("ns", "name")}
        value["selector"] = f"({p['selector']}) && projectcalico.org/namespace == '{p['ns']}'"
        value["namespace"] = p["ns"]
        value["tier"] = "default"
        return keys.policy_key(p["name"], p["ns"]), _json(value)

    def all_kvs(self) -> list[KV]:
        allow = _json({"inboundRules": [{"action": "allow"}], "outboundRules": [{"action": "allow"}]})
        profiles: list[KV] = [(keys.profile_key(f"kns.ns{k}"), allow) for k in range(NAMESPACES)]
        pools: list[KV] = [(keys.ip_pool_key("10.64.0.0/14"), _json({"cidr": "10.64.0.0/14", "natOutgoing": True}))]
        return profiles + pools + [self.pod_kv(i) for i in self.pods] + [self.policy_kv(n) for n in self.pols]

    def relabel(self, i: int) -> KV:
        labels = self.pods[i]["labels"]
        key = self.rng.choice(self.labels)
        labels[key] = self.rng.choice([v for v in VALUES if v != labels.get(key)])
        return self.pod_kv(i)

    def edit_policy(self, n: int) -> KV:
        rules = self.pols[n]["inboundRules"]
        ns = self.pols[n]["ns"]
        rules[0] = {**rules[0], "srcSelector": self._sel(ns), "dstPorts": [self.rng.choice([80, 443, 8443]), "http"]}
        return self.policy_kv(n)


class Mirror:
    """The calculation's current output as one replayable list (what a naive dataplane re-renders)."""

    def __init__(self) -> None:
        self.items: dict[tuple[type, object], Message] = {}
        self.sets: dict[str, tuple[str, set[str]]] = {}

    def apply(self, messages: Iterable[Message]) -> None:
        for m in messages:
            if isinstance(m, IpSetUpdate):
                self.sets[m.id] = (m.type, set(m.members))
            elif isinstance(m, IpSetDeltaUpdate):
                members = self.sets[m.id][1]
                members -= m.removed
                members |= m.added
            elif isinstance(m, IpSetRemove):
                self.sets.pop(m.id, None)
            elif isinstance(m, ActivePolicyUpdate | ActiveProfileUpdate | WorkloadEndpointUpdate | IPAMPoolUpdate):
                self.items[(type(m), m.id)] = m
            elif type(m) in _REMOVES:
                self.items.pop((_REMOVES[type(m)], m.id), None)

    def replay(self) -> list[Message]:
        out: list[Message] = [IpSetUpdate(i, t, frozenset(m)) for i, (t, m) in self.sets.items()]  # type: ignore[arg-type]
        return out + list(self.items.values())


class NaiveWriter:
    """Everything re-rendered and rewritten on every change: chains flushed and refilled, sets swapped."""

    def __init__(self, dp: PolicyDataplane) -> None:
        self.dp = dp

    def write(self, mirror: Mirror) -> dict[str, int]:
        """Re-render and rewrite everything; what it wrote."""
        st = DesiredState(self.dp.renderer, self.dp.versions)
        st.apply(mirror.replay())
        wrote = {"chains": 0, "rule_lines": 0, "set_members": 0}
        for v in self.dp.versions:
            text = []
            for table in ("filter", "nat"):
                tbl = st.tables[(v, table)]
                text += [f"*{table}", *(f":{n} - [0:0]" for n in tbl)]  # a forward reference flushes
                for c in tbl.values():
                    text += [f'-A {c.name} -m comment --comment "cali:{h}" {r}' for r, h in zip(c.rules, c.hashes)]
                    wrote["rule_lines"] += len(c.rules)
                text.append("COMMIT")
                wrote["chains"] += len(tbl)
            self._tool(self.dp.backend.restore_argv(v), text)
            script = []
            family = "inet" if v == 4 else "inet6"
            for n, (name, s) in enumerate(sorted(st.sets[v].items())):
                tmp = N.temp_set_name(v, 1000 + n)
                script.append(f"create {tmp} {s.type} family {family} maxelem {self.dp.cfg.max_set_size}")
                script += [f"add {tmp} {m}" for m in s.members]
                script += [f"swap {tmp} {name}", f"destroy {tmp}"]
                wrote["set_members"] += len(s.members)
            self._tool(["ipset", "-exist", "restore"], script)
        return wrote

    def _tool(self, argv: list[str], lines: list[str]) -> None:
        r = self.dp.run(argv, "\n".join(lines) + "\n")
        if r.rc != 0:
            raise RuntimeError(f"naive write failed: {argv[0]}: {r.err.strip()[:300]}")


class Probes:
    """Two real pods (veth pairs, namespaces of their own) to see enforcement in TCP handshakes."""

    def __init__(self, node_ns: str, tag: str, pods: dict[int, dict[str, Any]], server: int, client: int) -> None:
        self.ends: dict[str, tuple[str, str]] = {}  # role -> (pod namespace, address)
        self.listeners: list[socket.socket] = []
        self.spare: list[socket.socket] = []  # unconnected sockets made in the client's namespace
        node_script: list[str] = []
        sysctls: list[str] = []
        for role, i in (("server", server), ("client", client)):
            ns, iface, ip = f"{tag}-{role}", pods[i]["name"], pods[i]["ipNetworks"][0].split("/")[0]
            subprocess.run(["ip", "netns", "add", ns], check=True)
            self.ends[role] = (ns, ip)
            node_script += [
                f"link add {iface} type veth peer name eth0 netns {ns}",
                f"link set {iface} up",
                f"route add {ip}/32 dev {iface}",
            ]
            sysctls += [f"net.ipv4.conf.{iface}.proxy_arp=1", f"net.ipv4.neigh.{iface}.proxy_delay=0"]
        self._ip(node_ns, node_script)
        subprocess.run(["ip", "netns", "exec", node_ns, "sysctl", "-qw", *sysctls], check=True)
        for ns, ip in self.ends.values():
            self._ip(
                ns,
                [
                    "link set lo up",
                    f"addr add {ip}/32 dev eth0",
                    "link set eth0 up",
                    "route add 169.254.1.1 dev eth0 scope link",
                    "route add default via 169.254.1.1 dev eth0",
                ],
            )
        ns, ip = self.ends["server"]
        for port in (80, 443, 8443, 8080):
            self.listeners.append(run_in_netns(ns, lambda p=port: self._listen(ip, p)))  # type: ignore[misc]

    @staticmethod
    def _ip(ns: str, script: list[str]) -> None:
        if script:
            subprocess.run(["ip", "-n", ns, "-batch", "-"], input="\n".join(script) + "\n", text=True, check=True)

    @staticmethod
    def _listen(ip: str, port: int) -> socket.socket:
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((ip, port))
        s.listen(128)
        return s

    def handshake(self, port: int, timeout: float) -> bool:
        """One TCP handshake attempt from the client pod. Its sockets were made in the pod's
        namespace in advance, so an attempt costs no thread or namespace switch."""
        if not self.spare:
            ns, _ = self.ends["client"]
            self.spare = run_in_netns(ns, lambda: [socket.socket() for _ in range(200)])
        s = self.spare.pop()
        try:
            s.setblocking(False)
            s.connect_ex((self.ends["server"][1], port))
            _, w, _ = select.select([], [s], [], timeout)
            return bool(w) and s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0
        finally:
            s.close()

    def time_until_open(self, port: int, since: float, limit: float = 5.0) -> float:
        while time.perf_counter() - since < limit:
            if self.handshake(port, 0.005):
                return time.perf_counter() - since
        return float("inf")

    def close(self) -> None:
        for s in self.listeners + self.spare:
            s.close()
        for ns, _ in self.ends.values():
            subprocess.run(["ip", "netns", "del", ns], check=False)


def _dispatch_cost(st: DesiredState, leaf: int, iface: str, sets: dict[str, tuple[str, frozenset[str]]]) -> list[int]:
    """Rules a NEW and an ESTABLISHED packet to ``iface`` meet from ``cali-FORWARD``, given this dispatch."""
    table = {n: c for n, c in st.tables[(4, "filter")].items() if "wl-dispatch" not in n}
    ifaces = [ep.name for ep in st.endpoints.values()]
    table.update({c.name: c for c in Renderer(RenderConfig(dispatch_leaf=leaf)).dispatch(ifaces)})
    return [
        walk(
            table,
            N.CHAIN_FORWARD,
            Packet("10.200.0.1", "10.64.0.1", dport=8080, iif="eth0", oif=iface, ctstate=s),
            sets,
        ).evaluated
        for s in ("NEW", "ESTABLISHED")
    ]


def _cpu() -> float:
    """CPU seconds of this process and its finished children (the tools): a load-independent clock."""
    me, tools = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + tools.ru_utime + tools.ru_stime


def _fmt(ts: list[float]) -> str:
    ts = sorted(ts)
    p95 = ts[min(len(ts) - 1, int(len(ts) * 0.95))]
    return f"median {statistics.median(ts) * 1e3:.1f} ms, p95 {p95 * 1e3:.1f} ms, max {ts[-1] * 1e3:.1f} ms"


def _written(r: ApplyReport) -> str:
    return (
        f"{r.chains_written} chains / {r.rule_ops} rule lines, {r.members_added + r.members_removed} set members, "
        f"{r.sets_created + r.sets_swapped} sets rewritten"
    )


def run_policy_bench(opts: PolicyBenchOptions) -> dict[str, Any]:
    tag = f"bp{uuid.uuid4().hex[:6]}"
    node_ns = f"{tag}-node"
    subprocess.run(["ip", "netns", "add", node_ns], check=True)
    try:
        # An uplink with a default route: proxy ARP answers for the pods' gateway only then.
        Probes._ip(
            node_ns,
            [
                "link add eth0 type veth peer name eth0p",
                "addr add 192.168.77.1/24 dev eth0",
                "link set eth0 up",
                "link set eth0p up",
                "route add default via 192.168.77.2",
            ],
        )
        subprocess.run(["ip", "netns", "exec", node_ns, "sysctl", "-qw", "net.ipv4.ip_forward=1"], check=True)
        return _run(opts, tag, node_ns)
    finally:
        subprocess.run(["ip", "netns", "del", node_ns], check=False)


class _Bench:
    def __init__(self, opts: PolicyBenchOptions, node_ns: str) -> None:
        self.opts = opts
        self.cluster = Cluster(opts)
        self.calc = PolicyCalculator(ME)
        self.dp = PolicyDataplane(node_ns, PolicyConfig(ipv6=opts.ipv6, refresh_interval=0))
        self.naive = NaiveWriter(self.dp)
        self.mirror = Mirror()
        self.rows: list[tuple[str, str]] = []
        self.results: dict[str, Any] = {"options": asdict(opts)}

    def update(self, kv: KV) -> ApplyReport:
        batch, _ = self.calc.apply([kv])
        report = self.dp.apply(batch) if batch.messages else ApplyReport()
        assert report is not None and report.ok, self.dp.stats.last_error
        self.mirror.apply(batch.messages)
        return report

    def housekeeping(self) -> None:
        """What felix's housekeeping does right after a write: destroy the sets it stopped using."""
        deadline = self.dp.next_deadline()
        if deadline is not None and deadline <= time.monotonic():
            self.dp.tick()

    def cold_start(self) -> None:
        dp = self.dp
        kvs = self.cluster.all_kvs()
        t0, c0 = time.perf_counter(), _cpu()
        batch, _ = self.calc.apply(kvs)
        t_calc = time.perf_counter() - t0
        t1 = time.perf_counter()
        dp.apply(batch)  # ip set members taken in; the chains are rendered by the write
        t_apply = time.perf_counter() - t1
        cold = dp.start_programming()
        total, cpu = time.perf_counter() - t0, _cpu() - c0
        assert cold.ok, dp.stats.last_error
        self.mirror.apply(batch.messages)
        tables, n_sets, n_members = dp.programmed()
        chains, rules = sum(c for c, _ in tables.values()), sum(r for _, r in tables.values())
        entry = {
            "seconds": total,
            "cpu_seconds": cpu,
            "calc_seconds": t_calc,
            "apply_seconds": t_apply,
            "write_seconds": cold.seconds,
            "chains": chains,
            "rules": rules,
            "write_breakdown": {
                "read": cold.read_seconds,
                "render": cold.render_seconds,
                "ipset": cold.ipset_seconds,
                "iptables": cold.iptables_seconds,
            },
            "sets": n_sets,
            "set_members": n_members,
            "active_policies": self.calc.active_policies,
        }
        self.rows += [
            ("cold start -> rules in the kernel", f"{total:.2f} s ({cpu:.2f} s CPU, felix and its tools)"),
            (
                "  calculation / ip sets in / write",
                f"{t_calc:.2f} s / {t_apply:.2f} s / {cold.seconds:.2f} s",
            ),
            (
                "  write: render+plan (beside ipset restore) / ipset restore / iptables-restore",
                f"{cold.render_seconds:.2f} s / {cold.ipset_seconds:.2f} s / {cold.iptables_seconds:.2f} s",
            ),
            (
                "  programmed",
                f"{chains} chains, {rules} rules, {n_sets} ip sets, {n_members} members",
            ),
            ("  active policies", str(self.calc.active_policies)),
        ]
        if self.opts.naive:
            t = time.perf_counter()
            self.naive.write(self.mirror)
            entry["naive_seconds"] = time.perf_counter() - t
            self.rows.append(("  naive: the same state re-rendered and rewritten", f"{entry['naive_seconds']:.2f} s"))
        self.results["cold_start"] = entry

    def changes(self, kind: str, make: Callable[[], KV]) -> None:
        """Incremental against naive on the same changes; the naive write follows each change."""
        times: list[float] = []
        cpus: list[float] = []
        naive_times: list[float] = []
        reports: list[ApplyReport] = []
        wrote: dict[str, int] = {}
        noop = 0
        while len(times) < self.opts.changes and noop < 100 * self.opts.changes:
            kv = make()
            t, c = time.perf_counter(), _cpu()
            report = self.update(kv)
            elapsed, cpu = time.perf_counter() - t, _cpu() - c
            self.housekeeping()
            if not report.members_added + report.members_removed + report.rule_ops:
                noop += 1  # the change moved no pod in or out of anything: nothing to enforce
                continue
            times.append(elapsed)
            cpus.append(cpu)
            reports.append(report)
            if self.opts.naive:
                t = time.perf_counter()
                wrote = self.naive.write(self.mirror)
                naive_times.append(time.perf_counter() - t)
        if not reports:
            self.rows.append((kind, f"none of {noop} changes affected anything on this node"))
            self.results[kind] = {"changes_with_nothing_to_enforce": noop}
            return
        worst = max(reports, key=lambda r: r.rule_ops + r.members_added + r.members_removed)
        entry: dict[str, Any] = {
            "seconds": times,
            "cpu_seconds": cpus,
            "median_chains_written": statistics.median(r.chains_written for r in reports),
            "median_rule_lines": statistics.median(r.rule_ops for r in reports),
            "median_set_members": statistics.median(r.members_added + r.members_removed for r in reports),
            "largest": _written(worst),
            "changes_with_nothing_to_enforce": noop,
        }
        what = f"{kind} ({len(times)}x, {noop} more changed nothing): calculation + kernel"
        self.rows.append((what, _fmt(times)))
        self.rows.append(("  CPU (felix + the tools it ran)", _fmt(cpus)))
        median = (
            f"{entry['median_chains_written']:g} chains / {entry['median_rule_lines']:g} rule lines, "
            f"{entry['median_set_members']:g} set members; largest: {entry['largest']}"
        )
        self.rows.append(("  written (median)", median))
        if self.opts.naive:
            entry["naive_seconds"], entry["naive_written"] = naive_times, wrote
            entry["ratio"] = statistics.median(naive_times) / statistics.median(times)
            self.rows.append(("  naive full rewrite", f"{_fmt(naive_times)}: {entry['ratio']:.0f}x the time"))
            self.rows.append(
                (
                    "  naive writes",
                    f"{wrote['chains']} chains / {wrote['rule_lines']} rule lines, {wrote['set_members']} set members",
                )
            )
        self.results[kind] = entry

    def rules_per_packet(self) -> None:
        st = self.dp.state
        ifaces = sorted(ep.name for ep in st.endpoints.values())
        middle = ifaces[len(ifaces) // 2]
        sets = {n: (s.type, frozenset(s.members)) for n, s in st.sets[4].items()}
        out = {}
        for name, leaf, label in (
            ("tree", 16, "felix's dispatch tree"),
            ("calico", 64, "Calico's one-level split"),
            ("linear", 0, "a linear list"),
        ):
            new, established = _dispatch_cost(st, leaf, middle, sets)
            out[name] = {"new": new, "established": established}
            self.rows.append(
                (f"rules met to the middle pod, {label}", f"{new} (first packet), {established} (established)")
            )
        self.results["rules_per_packet"] = out


def _run(opts: PolicyBenchOptions, tag: str, node_ns: str) -> dict[str, Any]:
    b = _Bench(opts, node_ns)
    cluster = b.cluster
    # Probe pods in the middle of the local pods: the server admits tcp/80 from role=probe-client.
    server, client = opts.local // 2, opts.local // 2 + 1
    # No other label: no generated policy selects the probes (their end-of-tier drop would interfere).
    cluster.pods[server]["labels"] = {"role": "probe-server"}
    cluster.pods[client]["labels"] = {}
    probe = len(cluster.pols)
    cluster.pols[probe] = {
        "ns": cluster.pods[server]["ns"],
        "name": "probe",
        "order": 0.0,
        "selector": "role == 'probe-server'",
        "types": ["ingress"],
        "inboundRules": [
            {"action": "allow", "protocol": "TCP", "srcSelector": "role == 'probe-client'", "dstPorts": [80]}
        ],
    }
    b.cold_start()
    if opts.cold_start_only:
        out_console().print(kv_table("loadtest bench policy (cold start)", b.rows))
        return b.results
    local = list(range(opts.local))
    b.changes(
        "label change", lambda: cluster.relabel(cluster.rng.choice([i for i in local if i not in (server, client)]))
    )
    b.changes("policy edit", lambda: cluster.edit_policy(cluster.rng.randrange(opts.policies)))
    probes = Probes(node_ns, tag, cluster.pods, server, client)
    try:
        assert not probes.handshake(80, 0.3), "probe: the client must start outside the allowed set"
        cluster.pods[client]["labels"]["role"] = "probe-client"
        t = time.perf_counter()
        b.update(cluster.pod_kv(client))
        label = probes.time_until_open(80, t)
        cluster.pols[probe]["inboundRules"][0]["dstPorts"] = [8443]
        t = time.perf_counter()
        b.update(cluster.policy_kv(probe))
        edit = probes.time_until_open(8443, t)
        closed = not probes.handshake(80, 0.3)
    finally:
        probes.close()
    b.results["enforced"] = {"label_change": label, "policy_edit": edit, "old_port_closed": closed}
    b.rows.append(("label change -> first TCP handshake (real pods)", f"{label * 1e3:.1f} ms"))
    b.rows.append(("policy edit -> new port open (real pods)", f"{edit * 1e3:.1f} ms; old port closed: {closed}"))
    b.rules_per_packet()
    out_console().print(kv_table("loadtest bench policy", b.rows))
    return b.results
