"""The `loadtest` command: demo, benchmarks, and the API-server emulator."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys


def _bench(args: argparse.Namespace) -> int:
    import json

    import uvloop

    if args.which == "fanout":
        from .bench import FanoutOptions, run_fanout

        opts = FanoutOptions(
            agents=args.agents, processes=args.processes, kvs=args.kvs, value_size=args.value_size, rate=args.rate,
            seconds=args.seconds, compression=not args.no_compression, full_decode=args.full_decode, output=args.output,
        )
        results = uvloop.run(run_fanout(opts))
        v = results["verification"]
        return 0 if v["sampled_agents_matching"] == v["sampled_agents"] and v["agents_at_final_seq"] == opts.agents else 1
    if args.which == "apiload":
        from .apiload import ApiLoadOptions, run_apiload

        results = uvloop.run(run_apiload(ApiLoadOptions(
            agents=args.agents, processes=args.processes, nodes=args.nodes, pods_per_node=args.pods_per_node,
            churn=args.churn, seconds=args.seconds, modes=tuple(args.modes.split(",")),
        )))
        ok = all(r["all_agents_synced"] for r in results.values())
    elif args.which == "felix":
        from .bench_felix import run_felix_bench

        results = uvloop.run(run_felix_bench(args.nodes, args.blocks_per_node, args.pods))
        ok = True
    else:
        from .apiload import run_ingest

        results = uvloop.run(run_ingest(args.nodes, args.pods_per_node, args.burst))
        ok = True
    if args.output:
        with open(args.output, "w") as f:
            json.dump(results, f, indent=2)
    return 0 if ok else 1


def _demo(args: argparse.Namespace) -> int:
    from .demo import DemoOptions, run_demo

    import uvloop

    return uvloop.run(run_demo(DemoOptions(
        agents=args.agents, nodes=args.nodes, pods_per_node=args.pods_per_node, churn=args.churn,
        seconds=args.seconds, processes=args.processes, datastore=args.datastore, kubeconfig=args.kubeconfig,
    )))


def _apiserver(args: argparse.Namespace, rest: list[str]) -> int:
    from .apiserver.__main__ import main as apiserver_main

    return apiserver_main(rest) or 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
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
    demo.add_argument("--datastore", choices=["emulator", "synthetic"], default="emulator",
                      help="emulator: typha watches the API-server emulator (default); synthetic: typha's embedded generator")
    demo.add_argument("--kubeconfig", help="follow a real cluster through this kubeconfig instead (no churn is written)")

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
    ing = which.add_parser("ingest", help="typha's list/project and watch ingest rate per CPU-second")
    ing.add_argument("--nodes", type=int, default=1000)
    ing.add_argument("--pods-per-node", type=int, default=30)
    ing.add_argument("--burst", type=int, default=20_000)
    ing.add_argument("--output")

    sub.add_parser("apiserver", help="run the Kubernetes API-server emulator (see its --help)", add_help=False)

    if argv and argv[0] == "apiserver":
        return _apiserver(argparse.Namespace(), argv[1:])
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.command == "bench":
        return _bench(args)
    if args.command == "demo":
        return _demo(args)
    return 2


if __name__ == "__main__":
    sys.exit(main())
