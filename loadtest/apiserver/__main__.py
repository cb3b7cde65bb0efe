"""``python -m loadtest.apiserver`` (or ``loadtest apiserver``): run the emulator until SIGTERM/SIGINT.

Prints the server URL on stdout (one line, flushed) once it is listening. A start-up
problem (a bad option, an address in use or not on this machine, an unwritable
kubeconfig path) is one line on stderr naming the option, and exit status 2.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from typing import NoReturn

from .fixtures import make_node, make_pod, pod_ip
from .kubeconfig import check_san
from .server import start_apiserver


class _StartupError(Exception):
    """The emulator cannot start as asked; the message names the option."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # one line, not usage + error
        self.exit(2, f"{self.prog}: error: {message}\n")


def _port(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a TCP port number (0-65535)") from None
    if not 0 <= v <= 65535:
        raise argparse.ArgumentTypeError(f"{v} is not a TCP port number (0-65535)")
    return v


def _count(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if v < 0:
        raise argparse.ArgumentTypeError(f"{v} must be 0 or more")
    return v


def _seconds(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not v > 0:
        raise argparse.ArgumentTypeError(f"{text} must be greater than 0")
    return v


def _san(text: str) -> str:
    try:
        return check_san(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _parser(prog: str) -> argparse.ArgumentParser:
    p = _Parser(prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=_port, default=0, help="TCP port; 0 picks a free one (default 0)")
    p.add_argument(
        "--san",
        type=_san,
        action="append",
        default=[],
        help="extra DNS name or IP address for the serving certificate, which always covers loopback "
        "and --host (repeatable)",
    )
    p.add_argument("--token", default=None, help="bearer token (default: random)")
    p.add_argument("--kubeconfig-out", default=None, help="write a kubeconfig here")
    p.add_argument("--window-size", type=_count, default=10_000, help="events retained per resource")
    p.add_argument(
        "--max-watch-queue", type=_count, default=10_000, help="events a watcher may lag before it is closed"
    )
    p.add_argument("--bookmark-interval", type=_seconds, default=60.0, help="seconds between BOOKMARK events")
    p.add_argument(
        "--min-request-timeout",
        type=_seconds,
        default=1800.0,
        help="seconds; a watch without timeoutSeconds lasts 1-2x this",
    )
    p.add_argument(
        "--require-crds",
        action="store_true",
        help="serve custom resources (the Calico kinds) only once their CRDs are created, as a real "
        "cluster does (for rehearsing an install); by default the Calico kinds are built in",
    )
    p.add_argument(
        "--namespace-cleanup-delay",
        type=_seconds,
        default=2.0,
        help="seconds between a namespace's deletion and the emptying of it (kube's namespace controller "
        "takes a few; kubectl delete -k deletes a namespace before its contents)",
    )
    p.add_argument("--forbid", action="append", default=[], help='403 rule, e.g. "pods" or "list:nodes" (repeatable)')
    p.add_argument("--seed-nodes", type=_count, default=0, help="bulk-load N synthetic nodes")
    p.add_argument("--seed-pods", type=_count, default=0, help="bulk-load N synthetic pods spread over the nodes")
    p.add_argument("--loop", choices=("asyncio", "uvloop"), default="asyncio", help="event loop implementation")
    return p


async def _run(args: argparse.Namespace) -> None:
    try:
        handle = await start_apiserver(
            host=args.host,
            port=args.port,
            token=args.token,
            forbidden=args.forbid,
            bookmark_interval=args.bookmark_interval,
            window_size=args.window_size,
            max_watch_queue=args.max_watch_queue,
            min_request_timeout=args.min_request_timeout,
            sans=args.san,
            require_crds=args.require_crds,
            namespace_cleanup_delay=args.namespace_cleanup_delay,
        )
    except OSError as e:
        why = e.strerror or str(e)
        raise _StartupError(f"cannot listen on --host {args.host} --port {args.port}: {why}") from None
    except ValueError as e:  # a --host that cannot be certified
        raise _StartupError(f"--host {args.host}: {e}") from None
    try:
        if args.kubeconfig_out:
            try:
                handle.write_kubeconfig(args.kubeconfig_out)
            except OSError as e:
                raise _StartupError(f"cannot write --kubeconfig-out {args.kubeconfig_out}: {e.strerror or e}") from None
        store = handle.store
        if args.seed_nodes:
            store.bulk_load(
                "nodes",
                (make_node(f"node-{i}", pod_ip(i, "10.0.0.0")) for i in range(args.seed_nodes)),
                emit_events=False,
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
        await stop.wait()
    finally:
        await handle.stop()


def main(argv: list[str] | None = None, prog: str = "python -m loadtest.apiserver") -> int:
    args = _parser(prog).parse_args(argv)
    try:
        if args.loop == "uvloop":
            import uvloop

            uvloop.run(_run(args))
        else:
            asyncio.run(_run(args))
    except _StartupError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
