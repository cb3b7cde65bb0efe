"""``python -m loadtest.apiserver``: run the emulator until SIGTERM/SIGINT.

Prints the server URL on stdout (one line, flushed) once it is listening.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys

from .fixtures import make_node, make_pod, pod_ip
from .server import start_apiserver


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m loadtest.apiserver", description=__doc__)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0, help="0 picks a free port")
    p.add_argument("--token", default=None, help="bearer token (default: random)")
    p.add_argument("--kubeconfig-out", default=None, help="write a kubeconfig here")
    p.add_argument("--window-size", type=int, default=10_000, help="events retained per resource")
    p.add_argument("--max-watch-queue", type=int, default=10_000, help="events a watcher may lag before it is closed")
    p.add_argument("--bookmark-interval", type=float, default=60.0, help="seconds between BOOKMARK events")
    p.add_argument("--min-request-timeout", type=float, default=1800.0)
    p.add_argument("--forbid", action="append", default=[], help='403 rule, e.g. "pods" or "list:nodes" (repeatable)')
    p.add_argument("--seed-nodes", type=int, default=0, help="bulk-load N synthetic nodes")
    p.add_argument("--seed-pods", type=int, default=0, help="bulk-load N synthetic pods spread over the nodes")
    p.add_argument("--loop", choices=("asyncio", "uvloop"), default="asyncio", help="event loop implementation")
    return p


async def _run(args: argparse.Namespace) -> None:
    handle = await start_apiserver(
        host=args.host,
        port=args.port,
        token=args.token,
        forbidden=args.forbid,
        bookmark_interval=args.bookmark_interval,
        window_size=args.window_size,
        max_watch_queue=args.max_watch_queue,
        min_request_timeout=args.min_request_timeout,
        kubeconfig_path=args.kubeconfig_out,
    )
    store = handle.store
    if args.seed_nodes:
        store.bulk_load(
            "nodes", (make_node(f"node-{i}", pod_ip(i, "10.0.0.0")) for i in range(args.seed_nodes)), emit_events=False
        )
    if args.seed_pods:
        nn = max(args.seed_nodes, 1)
        store.bulk_load(
            "pods",
            (make_pod("default", f"pod-{i}", f"node-{i % nn}", pod_ip(i)) for i in range(args.seed_pods)),
            emit_events=False,
        )
    print(handle.url, flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await handle.stop()


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.loop == "uvloop":
        import uvloop

        uvloop.run(_run(args))
    else:
        asyncio.run(_run(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
