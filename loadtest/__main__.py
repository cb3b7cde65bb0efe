"""The `loadtest` command: demo, scenarios at scale and their report, benchmarks, the API-server emulator.

Every command runs under one signal policy: SIGINT (Ctrl-C) or SIGTERM cancels it, its teardown
kills the processes it started instead of draining them, and it exits with one line on stderr and
status 128 + the signal number, within about a second. Options are checked before anything starts;
a bad one is a one-line error and status 2.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from collections.abc import Awaitable, Callable
from typing import Any

# The `loadtest` extra: present wherever the load tests run, absent from a plain install and the image.
EXTRA_MODULES = ("rich", "matplotlib", "trustme", "cryptography")


def missing_extra() -> list[str]:
    """Modules of the `loadtest` extra that cannot be imported here."""
    import importlib.util

    return [m for m in EXTRA_MODULES if importlib.util.find_spec(m) is None]


def run_until_signal(name: str, work: Callable[[], Awaitable[int]]) -> int:
    """Run `work()` on uvloop; on SIGINT/SIGTERM cancel it (its teardown runs) and return 128 + signal."""
    import uvloop

    received: list[int] = []

    async def main() -> int:
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        assert task is not None

        def on_signal(sig: int) -> None:
            received.append(sig)
            task.cancel()

        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, on_signal, sig)
        try:
            return await work()
        except asyncio.CancelledError:
            if not received:
                raise
            task.uncancel()
            return 128 + received[0]

    code = uvloop.run(main())
    if received:
        print(f"loadtest {name}: stopped by {signal.Signals(received[0]).name}", file=sys.stderr)
    return code


def _bench(args: argparse.Namespace) -> int:
    import json

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
            tls=args.tls,
        )
        fan: dict[str, Any] = {}

        async def fanout() -> int:
            fan.update(await run_fanout(opts))
            return 0

        code = run_until_signal("bench fanout", fanout)
        if code:
            return code
        v = fan["verification"]
        return (
            0 if v["sampled_agents_matching"] == v["sampled_agents"] and v["agents_at_final_seq"] == opts.agents else 1
        )
    results: dict[str, Any] = {}
    ok = [True]
    if args.which == "policy":  # synchronous: the kernel work runs in this thread
        from .commands.bench_policy import PolicyBenchOptions, run_policy_bench

        o = PolicyBenchOptions(
            args.local,
            args.remote,
            args.policies,
            args.labels,
            args.changes,
            args.seed,
            not args.ipv4_only,
            naive=not args.cold_start_only,
            cold_start_only=args.cold_start_only,
        )
        results.update(run_policy_bench(o))
        ok[0] = args.cold_start_only or bool(results["enforced"]["old_port_closed"])
        if args.output:
            with open(args.output, "w") as f:
                json.dump(results, f, indent=2)
        return 0 if ok[0] else 1

    async def work() -> int:
        if args.which == "apiload":
            from .commands.bench_apiload import ApiLoadOptions, run_apiload

            modes = tuple(args.modes.split(","))
            results.update(
                await run_apiload(
                    ApiLoadOptions(
                        agents=args.agents,
                        processes=args.processes,
                        nodes=args.nodes,
                        pods_per_node=args.pods_per_node,
                        churn=args.churn,
                        seconds=args.seconds,
                        modes=modes,
                    )
                )
            )
            ok[0] = all(r["all_agents_synced"] for r in results.values())
        elif args.which == "felix":
            from .commands.bench_felix import run_felix_bench

            results.update(await run_felix_bench(args.nodes, args.blocks_per_node, args.pods))
        else:
            from .commands.bench_apiload import run_ingest

            results.update(await run_ingest(args.nodes, args.pods_per_node, args.burst))
        return 0

    code = run_until_signal(f"bench {args.which}", work)
    if code:
        return code
    if args.output:
        with open(args.output, "w") as f:
            json.dump(results, f, indent=2)
    return 0 if ok[0] else 1


def _demo(args: argparse.Namespace) -> int:
    from .commands.demo import DemoOptions, run_demo

    opts = DemoOptions(
        agents=args.agents,
        nodes=args.nodes,
        pods_per_node=args.pods_per_node,
        churn=args.churn,
        seconds=args.seconds,
        processes=args.processes,
        datastore=args.datastore,
        kubeconfig=args.kubeconfig,
    )
    if problems := opts.problems():
        print(f"loadtest demo: error: {problems[0]}", file=sys.stderr)
        return 2
    return run_until_signal("demo", lambda: run_demo(opts))


def _run(args: argparse.Namespace) -> int:
    import shlex

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
            tls=args.tls,
        )
        sc.validate()
    except ScenarioError as exc:
        print(f"loadtest run: error: {exc}", file=sys.stderr)
        return 2
    command = "loadtest " + " ".join(shlex.quote(a) for a in sys.argv[1:]) if sys.argv[1:] else None
    passed = [False]

    async def work() -> int:
        passed[0] = (await run_scenario(sc, progress=not args.no_progress, command=command)).passed
        return 0

    code = run_until_signal("run", work)
    return code or (0 if passed[0] else 1)


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


def _hostile(args: argparse.Namespace) -> int:
    import shlex

    from .commands.hostile import HostileOptions, run_hostile

    opts = HostileOptions(
        kinds=tuple(k.strip() for k in args.kind.split(",") if k.strip()),
        connections=args.connections,
        agents=args.agents,
        processes=args.processes,
        seconds=args.seconds,
        nodes=args.nodes,
        pods_per_node=args.pods_per_node,
        churn=args.churn,
        tls=args.tls,
        typha_nofile=args.typha_nofile,
        typha_args=shlex.split(args.typha_args) if args.typha_args else [],
        output=args.output,
    )
    if problems := opts.problems():
        print(f"loadtest hostile: error: {problems[0]}", file=sys.stderr)
        return 2
    results: dict[str, Any] = {}

    async def work() -> int:
        results.update(await run_hostile(opts))
        return 0

    code = run_until_signal("hostile", work)
    if code:
        return code
    ok = all(r["agents_disconnects"] == 0 and r["agents_caught_up"] for r in results["kinds"].values())
    return 0 if ok else 1


def _count(minimum: int) -> Callable[[str], int]:
    """argparse type: an integer of at least `minimum`, with the bound in the error."""

    def parse(text: str) -> int:
        try:
            n = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if n < minimum:
            raise argparse.ArgumentTypeError(f"{n} is below the minimum of {minimum}")
        return n

    return parse


class _Help(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Defaults shown after each option's help; descriptions keep their line breaks."""


def _demo_parser(sub: Any) -> None:
    p = sub.add_parser(
        "demo",
        formatter_class=_Help,
        help="run typha on a synthetic cluster and serve it to simulated agents",
        description="Start the API-server emulator with a synthetic cluster, a real typha following it, and simulated "
        "agents in worker processes; churn for --seconds, then verify every agent. Progress on stderr, the summary "
        "on stdout.",
    )
    p.add_argument("--agents", type=_count(1), default=300, help="simulated agents (each a protocol client)")
    p.add_argument("--processes", type=_count(1), default=2, help="worker processes the agents are spread over")
    p.add_argument("--nodes", type=_count(1), default=300, help="nodes in the synthetic cluster")
    p.add_argument("--pods-per-node", type=_count(0), default=30, help="pods on each node")
    p.add_argument("--churn", type=float, default=100.0, help="changes written per second")
    p.add_argument("--seconds", type=float, default=20.0, help="seconds of churn")
    p.add_argument(
        "--datastore",
        choices=["emulator", "synthetic"],
        default="emulator",
        help="emulator: typha watches the API-server emulator; synthetic: typha's embedded generator",
    )
    p.add_argument("--kubeconfig", help="follow a real cluster through this kubeconfig instead (no churn is written)")


def _bench_parsers(sub: Any) -> None:
    bench = sub.add_parser("bench", help="benchmarks (results go in docs/benchmarks.md)")
    which = bench.add_subparsers(dest="which", required=True)
    fan = which.add_parser(
        "fanout", formatter_class=_Help, help="snapshot throughput, update latency and memory per agent"
    )
    fan.add_argument("--agents", type=_count(1), default=1000, help="simulated agents")
    fan.add_argument("--processes", type=_count(1), default=2, help="agent worker processes")
    fan.add_argument("--kvs", type=_count(1), default=100_000, help="KVs in the server's cache")
    fan.add_argument("--value-size", type=_count(1), default=500, help="bytes per value")
    fan.add_argument("--rate", type=float, default=1000.0, help="updates per second during churn")
    fan.add_argument("--seconds", type=float, default=10.0, help="seconds of churn")
    fan.add_argument("--full-decode", type=_count(0), default=2, help="agents that decode and verify every value")
    fan.add_argument("--no-compression", action="store_true", help="agents do not ask for zstd snapshots")
    fan.add_argument(
        "--tls",
        choices=["off", "on", "both"],
        default="off",
        help="mutual TLS between the server and the agents; both: plaintext then TLS, with the ratios",
    )
    fan.add_argument("--output", help="write the results as JSON here")
    load = which.add_parser(
        "apiload", formatter_class=_Help, help="API-server load through typha vs agents watching directly"
    )
    load.add_argument("--agents", type=_count(1), default=200, help="simulated agents in each mode")
    load.add_argument("--processes", type=_count(1), default=2, help="agent worker processes")
    load.add_argument("--nodes", type=_count(1), default=200, help="nodes in the synthetic cluster")
    load.add_argument("--pods-per-node", type=_count(0), default=30, help="pods on each node")
    load.add_argument("--churn", type=float, default=50.0, help="changes written per second")
    load.add_argument("--seconds", type=float, default=20.0, help="seconds of churn")
    load.add_argument("--modes", default="typha,direct", help="comma-separated: typha, direct")
    load.add_argument("--output", help="write the results as JSON here")
    fx = which.add_parser(
        "felix", formatter_class=_Help, help="felix cold start with N routes, and API event -> kernel route (root)"
    )
    fx.add_argument("--nodes", type=_count(1), default=500, help="remote nodes")
    fx.add_argument("--blocks-per-node", type=_count(1), default=20, help="/26 blocks each remote node owns")
    fx.add_argument("--pods", type=_count(1), default=20, help="pods added one at a time (latency samples)")
    fx.add_argument("--output", help="write the results as JSON here")
    pol = which.add_parser(
        "policy", formatter_class=_Help, help="policy: cluster view -> iptables/ipsets, incremental vs naive (root)"
    )
    pol.add_argument("--local", type=_count(1), default=1000, help="workload endpoints on the node")
    pol.add_argument(
        "--remote", type=_count(0), default=9000, help="endpoints elsewhere in the cluster (ip set members)"
    )
    pol.add_argument("--policies", type=_count(1), default=500, help="network policies")
    pol.add_argument("--labels", type=_count(1), default=20, help="label keys the selectors use")
    pol.add_argument("--changes", type=_count(1), default=20, help="label changes and policy edits to time")
    pol.add_argument("--seed", type=int, default=1, help="seed of the generated cluster")
    pol.add_argument("--ipv4-only", action="store_true", help="no ip6tables (felix's Ipv6Support=false)")
    pol.add_argument(
        "--cold-start-only", action="store_true", help="only the cold start, without its naive rewrite (A/B timing)"
    )
    pol.add_argument("--output", help="write the results as JSON here")
    ing = which.add_parser(
        "ingest", formatter_class=_Help, help="typha's list/project and watch ingest rate per CPU-second"
    )
    ing.add_argument("--nodes", type=_count(1), default=1000, help="nodes in the synthetic cluster")
    ing.add_argument("--pods-per-node", type=_count(0), default=30, help="pods on each node")
    ing.add_argument("--burst", type=_count(1), default=20_000, help="watch events written at once")
    ing.add_argument("--output", help="write the results as JSON here")


def _hostile_parser(sub: Any) -> None:
    from .fleets.hostile import KINDS

    kinds = "\n".join(f"  {k.name}: {k.help}" for k in KINDS.values())
    p = sub.add_parser(
        "hostile",
        formatter_class=_Help,
        help="what hostile connections cost a real typha while agents watch (docs/security.md)",
        description="For each --kind: start typha on a synthetic cluster with churn, let --agents agents sync, then hold "
        "--connections hostile connections of that kind open for --seconds while sampling typha's memory, kernel "
        "socket memory, open files, CPU, log volume and /liveness, and the agents' update latency; new agents "
        "connect halfway through. Exit status 1 if any agent lost its connection or fell behind.\n\n"
        f"Kinds:\n{kinds}",
    )
    p.add_argument("--kind", default=",".join(k for k in KINDS if k != "tls-silent"), help="comma-separated kinds")
    p.add_argument("--connections", type=_count(1), default=1000, help="hostile connections held open")
    p.add_argument("--agents", type=_count(1), default=50, help="well-behaved agents watching")
    p.add_argument("--processes", type=_count(1), default=1, help="agent worker processes")
    p.add_argument("--seconds", type=float, default=20.0, help="seconds each attack lasts")
    p.add_argument("--nodes", type=_count(1), default=50, help="nodes in typha's synthetic cluster")
    p.add_argument("--pods-per-node", type=_count(0), default=20, help="pods on each node")
    p.add_argument("--churn", type=float, default=20.0, help="changes per second during the attack")
    p.add_argument("--tls", action="store_true", help="typha and the agents use mutual TLS (generated certificates)")
    p.add_argument("--typha-nofile", type=_count(0), default=0, help="typha's open-files limit (0: inherited)")
    p.add_argument("--typha-args", default="", help="extra flags for typha (one string)")
    p.add_argument("--output", help="write the results as JSON here")


def _run_parser(sub: Any) -> None:
    from .run.scenario import FAULT_KINDS

    faults = "\n".join(
        f"  {k.name}{'[:' + k.arg.upper() + ']' if k.arg else ''}: {k.help}" for k in FAULT_KINDS.values()
    )
    run = sub.add_parser(
        "run",
        formatter_class=_Help,
        help="API-server emulator + typha replicas + thousands of agents, churn and faults; writes a report",
        description="Stand up the API-server emulator with a synthetic cluster, typha replicas and simulated agents, "
        "drive churn and faults, verify every agent, and write results.json, PNG plots and summary.md into --out.\n\n"
        f"Fault kinds (--fault SECONDS:KIND[:ARG], SECONDS after churn starts):\n{faults}",
    )
    run.add_argument(
        "--mode",
        choices=["typha", "direct", "both"],
        default="typha",
        help="typha; direct (agents watch the API server); both (typha, then direct, side by side)",
    )
    run.add_argument("--nodes", type=_count(1), default=1000, help="nodes in the synthetic cluster")
    run.add_argument("--pods-per-node", type=_count(0), default=30, help="pods on each node")
    run.add_argument("--namespaces", type=_count(1), default=20, help="namespaces the pods are spread over")
    run.add_argument("--policies", type=_count(0), default=50, help="network policies")
    run.add_argument("--agents", type=_count(1), default=None, help="typha agents (default: one per node)")
    run.add_argument(
        "--direct-agents",
        type=_count(1),
        default=None,
        help="direct-mode agents (default: --agents with --mode direct, at most 100 with --mode both)",
    )
    run.add_argument("--processes", type=_count(1), default=2, help="agent worker processes")
    run.add_argument("--full-decode", type=_count(0), default=4, help="agents that decode and keep the full state")
    run.add_argument("--replicas", type=_count(1), default=1, help="typha replicas")
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
        help="e.g. 30:restart-typha, 45:cut-watches, 60:compact (repeatable; kinds above)",
    )
    run.add_argument("--seed", type=int, default=1, help="seed of the synthetic cluster and its churn")
    run.add_argument("--sample-interval", type=float, default=1.0, help="seconds between time-series samples")
    run.add_argument(
        "--connect-spread", type=float, default=1.0, help="seconds over which each worker staggers its connects"
    )
    run.add_argument("--no-compression", action="store_true", help="agents do not ask for zstd snapshots")
    run.add_argument("--window-size", type=_count(1), default=10_000, help="API-server events kept per resource")
    run.add_argument(
        "--sync-timeout",
        type=float,
        default=None,
        help="bound for every agent to sync at start-up, per mode (default: from agents x objects; direct "
        "agents list every object themselves, so theirs is larger)",
    )
    run.add_argument(
        "--drain-timeout", type=float, default=60.0, help="bound after churn for every agent to reach the final state"
    )
    run.add_argument(
        "--timeout", type=float, default=None, help="hard bound on the whole run (default: sum of the phases' bounds)"
    )
    run.add_argument("--typha-args", default="", help="extra flags for every typha replica (one string)")
    run.add_argument(
        "--tls",
        choices=["off", "on", "both"],
        default="off",
        help="mutual TLS between typha and its agents (generated certificates); both: the typha mode in "
        "plaintext, then again over TLS (mode typha-tls), same cluster and churn",
    )
    run.add_argument("--out", default="runs/latest", help="run directory (results.json, PNGs, summary.md)")
    run.add_argument(
        "--no-progress", action="store_true", help="no live table (on a terminal) or progress lines (elsewhere)"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="loadtest", formatter_class=_Help, description="Typha load tests, benchmarks and demo."
    )
    parser.add_argument("--log-level", default="WARNING", help="logging level of this process (DEBUG, INFO, ...)")
    sub = parser.add_subparsers(dest="command", required=True)
    _demo_parser(sub)
    _bench_parsers(sub)
    _run_parser(sub)
    _hostile_parser(sub)
    rep = sub.add_parser("report", help="re-render a saved run directory (tables, PNGs, summary.md)")
    rep.add_argument("dir", help="a `loadtest run --out` directory holding results.json")
    sub.add_parser("apiserver", help="run the Kubernetes API-server emulator (see its --help)", add_help=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if missing := missing_extra():
        print(
            f"loadtest: error: the load tests need the 'loadtest' extra (missing: {', '.join(missing)}); "
            "install it with: pip install 'pytypha[loadtest]'",
            file=sys.stderr,
        )
        return 2
    if argv and argv[0] == "apiserver":
        from .apiserver.__main__ import main as apiserver_main

        return apiserver_main(argv[1:], prog="loadtest apiserver") or 0
    import logging

    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    commands: dict[str, Callable[[argparse.Namespace], int]] = {
        "bench": _bench,
        "demo": _demo,
        "run": _run,
        "report": _report,
        "hostile": _hostile,
    }
    return commands[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
