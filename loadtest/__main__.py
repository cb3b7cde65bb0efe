"""The `loadtest` command: demo, benchmarks, and the API-server emulator."""

from __future__ import annotations

import argparse
import logging
import sys


def _bench(args: argparse.Namespace) -> int:
    import json

    import uvloop

    if args.which == "fanout":
        from .commands.bench_fanout import FanoutOptions, run_fanout

        opts = FanoutOptions(
            agents=args.agents,
            processes=args.processes,
            kvs=args.kvs,
            value_size=args.value_size,
            rate=args.rate,
            seconds=args.seconds,
            compression=not args.no_compression,
            full_decode=args.full_decode,
            output=args.output,
        )
        results = uvloop.run(run_fanout(opts))
        v = results["verification"]
        return (
            0 if v["sampled_agents_matching"] == v["sampled_agents"] and v["agents_at_final_seq"] == opts.agents else 1
        )
    if args.which == "apiload":
        from .commands.bench_apiload import ApiLoadOptions, run_apiload

        results = uvloop.run(
            run_apiload(
                ApiLoadOptions(
                    agents=args.agents,
                    processes=args.processes,
                    nodes=args.nodes,
                    pods_per_node=args.pods_per_node,
                    churn=args.churn,
                    seconds=args.seconds,
                    modes=tuple(args.modes.split(",")),
                )
            )
        )
        ok = all(r["all_agents_synced"] for r in results.values())
    elif args.which == "policy":
        from .commands.bench_policy import PolicyBenchOptions, run_policy_bench

        o = PolicyBenchOptions(args.local, args.remote, args.policies, args.labels, args.changes, args.seed, args.ipv6)
        results = run_policy_bench(o)
        ok = bool(results["enforced"]["old_port_closed"])
    elif args.which == "felix":
        from .commands.bench_felix import run_felix_bench

        results = uvloop.run(run_felix_bench(args.nodes, args.blocks_per_node, args.pods))
        ok = True
    else:
        from .commands.bench_apiload import run_ingest

        results = uvloop.run(run_ingest(args.nodes, args.pods_per_node, args.burst))
        ok = True
    if args.output:
        with open(args.output, "w") as f:
            json.dump(results, f, indent=2)
    return 0 if ok else 1


def _demo(args: argparse.Namespace) -> int:
    import uvloop

    from .commands.demo import DemoOptions, run_demo

    return uvloop.run(
        run_demo(
            DemoOptions(
                agents=args.agents,
                nodes=args.nodes,
                pods_per_node=args.pods_per_node,
                churn=args.churn,
                seconds=args.seconds,
                processes=args.processes,
                datastore=args.datastore,
                kubeconfig=args.kubeconfig,
            )
        )
    )


def _run(args: argparse.Namespace) -> int:
    import shlex

    import uvloop

    from .run.orchestrator import run_scenario
    from .run.scenario import Scenario, ScenarioError, parse_fault, parse_mix, parse_ramp

    try:
        sc = Scenario(
            mode=args.mode,
            nodes=args.nodes,
            pods_per_node=args.pods_per_node,
            namespaces=args.namespaces,
            policies=args.policies,
            agents=args.agents,
            direct_agents=args.direct_agents,
            processes=args.processes,
            full_decode=args.full_decode,
            replicas=args.replicas,
            rate=args.rate,
            mix=parse_mix(args.mix),
            duration=args.duration,
            ramp=parse_ramp(args.ramp),
            faults=[parse_fault(f) for f in args.fault],
            slo=args.slo,
            seed=args.seed,
            sample_interval=args.sample_interval,
            connect_spread=args.connect_spread,
            compression=not args.no_compression,
            window_size=args.window_size,
            sync_timeout=args.sync_timeout,
            drain_timeout=args.drain_timeout,
            timeout=args.timeout,
            out=args.out,
            typha_args=shlex.split(args.typha_args) if args.typha_args else [],
        )
        sc.validate()
    except ScenarioError as exc:
        print(f"loadtest run: error: {exc}", file=sys.stderr)
        return 2
    command = "loadtest " + " ".join(shlex.quote(a) for a in sys.argv[1:]) if sys.argv[1:] else None
    results = uvloop.run(run_scenario(sc, progress=not args.no_progress, command=command))
    return 0 if results.passed else 1


def _report(args: argparse.Namespace) -> int:
    from pathlib import Path

    from .report import render
    from .run.results import ResultsError

    if not (Path(args.dir) / "results.json").exists():
        print(f"loadtest report: error: no results.json in {args.dir}", file=sys.stderr)
        return 2
    try:
        results = render(args.dir)
    except ResultsError as exc:
        print(f"loadtest report: error: {exc}", file=sys.stderr)
        return 2
    return 0 if results.passed else 1


def _apiserver(args: argparse.Namespace, rest: list[str]) -> int:
    from .apiserver.__main__ import main as apiserver_main

    return apiserver_main(rest, prog="loadtest apiserver") or 0


# The `loadtest` extra: present wherever the load tests run, absent from a plain install and the image.
EXTRA_MODULES = ("rich", "matplotlib", "msgspec", "trustme")


def missing_extra() -> list[str]:
    """Modules of the `loadtest` extra that cannot be imported here."""
    import importlib.util

    return [m for m in EXTRA_MODULES if importlib.util.find_spec(m) is None]


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if missing := missing_extra():
        print(
            f"loadtest: error: the load tests need the 'loadtest' extra (missing: {', '.join(missing)}); "
            "install it with: pip install 'pytypha[loadtest]'",
            file=sys.stderr,
        )
        return 2
    parser = argparse.ArgumentParser(prog="loadtest", description="Typha load tests, benchmarks and demo.")
    parser.add_argument("--log-level", default="WARNING")
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="run typha on a synthetic cluster and serve it to simulated agents")
    demo.add_argument("--agents", type=int, default=300)
    demo.add_argument("--processes", type=int, default=2)
    demo.add_argument("--nodes", type=int, default=300)
    demo.add_argument("--pods-per-node", type=int, default=30)
    demo.add_argument("--churn", type=float, default=100.0, help="changes per second")
    demo.add_argument("--seconds", type=float, default=20.0)
    demo.add_argument(
        "--datastore",
        choices=["emulator", "synthetic"],
        default="emulator",
        help="emulator: typha watches the API-server emulator (default); synthetic: typha's embedded generator",
    )
    demo.add_argument(
        "--kubeconfig", help="follow a real cluster through this kubeconfig instead (no churn is written)"
    )

    bench = sub.add_parser("bench", help="benchmarks (results go in docs/benchmarks.md)")
    which = bench.add_subparsers(dest="which", required=True)
    fan = which.add_parser("fanout", help="snapshot throughput, update latency and memory per agent")
    fan.add_argument("--agents", type=int, default=1000)
    fan.add_argument("--processes", type=int, default=2)
    fan.add_argument("--kvs", type=int, default=100_000)
    fan.add_argument("--value-size", type=int, default=500)
    fan.add_argument("--rate", type=float, default=1000.0)
    fan.add_argument("--seconds", type=float, default=10.0)
    fan.add_argument("--full-decode", type=int, default=2)
    fan.add_argument("--no-compression", action="store_true")
    fan.add_argument("--output", help="write results JSON here")
    load = which.add_parser("apiload", help="API-server load through typha vs agents watching directly")
    load.add_argument("--agents", type=int, default=200)
    load.add_argument("--processes", type=int, default=2)
    load.add_argument("--nodes", type=int, default=200)
    load.add_argument("--pods-per-node", type=int, default=30)
    load.add_argument("--churn", type=float, default=50.0)
    load.add_argument("--seconds", type=float, default=20.0)
    load.add_argument("--modes", default="typha,direct")
    load.add_argument("--output")
    fx = which.add_parser("felix", help="felix cold start with N routes, and API event -> kernel route (root)")
    fx.add_argument("--nodes", type=int, default=500)
    fx.add_argument("--blocks-per-node", type=int, default=20)
    fx.add_argument("--pods", type=int, default=20)
    fx.add_argument("--output")
    pol = which.add_parser("policy", help="policy: cluster view -> iptables/ipsets, incremental vs naive (root)")
    pol.add_argument("--local", type=int, default=1000, help="workload endpoints on the node")
    pol.add_argument("--remote", type=int, default=9000, help="endpoints elsewhere in the cluster (ip set members)")
    pol.add_argument("--policies", type=int, default=500)
    pol.add_argument("--labels", type=int, default=20, help="label keys the selectors use")
    pol.add_argument("--changes", type=int, default=20, help="label changes and policy edits to time")
    pol.add_argument("--seed", type=int, default=1)
    pol.add_argument("--ipv6", action="store_true", help="program ip6tables and IPv6 sets too")
    pol.add_argument("--output")
    ing = which.add_parser("ingest", help="typha's list/project and watch ingest rate per CPU-second")
    ing.add_argument("--nodes", type=int, default=1000)
    ing.add_argument("--pods-per-node", type=int, default=30)
    ing.add_argument("--burst", type=int, default=20_000)
    ing.add_argument("--output")

    run = sub.add_parser(
        "run",
        help="API-server emulator + typha replicas + thousands of agents, churn and faults; writes a report",
        description="Stand up the API-server emulator with a synthetic cluster, typha replicas and simulated agents, "
        "drive churn and faults, verify every agent, and write results.json, PNG plots and summary.md into --out. "
        "Fault kinds: restart-typha[:I], kill-typha[:I], cut-watches[:RESOURCE], compact (410 relists); "
        "see loadtest/run/scenario.py.",
    )
    run.add_argument(
        "--mode",
        choices=["typha", "direct", "both"],
        default="typha",
        help="typha (default), direct (agents watch the API server), both (side by side)",
    )
    run.add_argument("--nodes", type=int, default=1000)
    run.add_argument("--pods-per-node", type=int, default=30)
    run.add_argument("--namespaces", type=int, default=20)
    run.add_argument("--policies", type=int, default=50)
    run.add_argument("--agents", type=int, default=None, help="typha agents (default: one per node)")
    run.add_argument(
        "--direct-agents",
        type=int,
        default=None,
        help="direct-mode agents (default: --agents with --mode direct, at most 100 with --mode both)",
    )
    run.add_argument("--processes", type=int, default=2, help="agent worker processes")
    run.add_argument("--full-decode", type=int, default=4, help="agents that decode and keep the full state")
    run.add_argument("--replicas", type=int, default=1, help="typha replicas")
    run.add_argument("--rate", type=float, default=100.0, help="churn, API events per second")
    run.add_argument(
        "--mix", default=None, help="churn mix, e.g. 'default,policy_edit=10' or 'create=1,delete=1,status=2'"
    )
    run.add_argument("--duration", type=float, default=60.0, help="seconds of churn")
    run.add_argument(
        "--ramp", default=None, help="comma-separated rates: equal steps over --duration; reports the knee"
    )
    run.add_argument(
        "--slo", type=float, default=1.0, help="p99 latency to the last agent that counts as broken (ramp)"
    )
    run.add_argument(
        "--fault",
        action="append",
        default=[],
        metavar="SECONDS:KIND[:ARG]",
        help="e.g. 30:restart-typha, 45:cut-watches, 60:compact (repeatable; seconds after churn starts)",
    )
    run.add_argument("--seed", type=int, default=1)
    run.add_argument("--sample-interval", type=float, default=1.0)
    run.add_argument(
        "--connect-spread", type=float, default=1.0, help="seconds over which each worker staggers its connects"
    )
    run.add_argument("--no-compression", action="store_true")
    run.add_argument("--window-size", type=int, default=10_000, help="API-server events kept per resource")
    run.add_argument(
        "--sync-timeout", type=float, default=None, help="bound for all agents to sync (default: from size)"
    )
    run.add_argument("--drain-timeout", type=float, default=60.0)
    run.add_argument(
        "--timeout", type=float, default=None, help="hard bound on the whole run (default: from the phases)"
    )
    run.add_argument("--typha-args", default="", help="extra flags for every typha replica")
    run.add_argument("--out", default="runs/latest", help="run directory (results.json, PNGs, summary.md)")
    run.add_argument("--no-progress", action="store_true")
    rep_p = sub.add_parser("report", help="re-render a saved run directory (tables, PNGs, summary.md)")
    rep_p.add_argument("dir")

    sub.add_parser("apiserver", help="run the Kubernetes API-server emulator (see its --help)", add_help=False)

    if argv and argv[0] == "apiserver":
        return _apiserver(argparse.Namespace(), argv[1:])
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.command == "bench":
        return _bench(args)
    if args.command == "demo":
        return _demo(args)
    if args.command == "run":
        return _run(args)
    if args.command == "report":
        return _report(args)
    return 2


if __name__ == "__main__":
    sys.exit(main())
