"""Process plumbing typha and felix share: start-up errors, logging, uvloop, a Kubernetes client.

Shared here (like `settings` and `ops`) because the two programs must not depend on each other.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, TypeVar

from .settings import SettingsError

C = TypeVar("C")


class StartupError(Exception):
    """The program cannot start as configured; the message says why."""


async def kubernetes_client(kubeconfig: str) -> Any:
    """A kubernetes-asyncio ApiClient from `kubeconfig`, or from the in-cluster service account."""
    from kubernetes_asyncio import client
    from kubernetes_asyncio import config as kconfig

    conf = client.Configuration()
    if kubeconfig and not os.path.exists(kubeconfig):  # noqa: ASYNC240 -- one stat, at start-up
        raise StartupError(f"--kubeconfig={kubeconfig!r}: the file does not exist")
    try:
        if kubeconfig:
            await kconfig.load_kube_config(config_file=kubeconfig, client_configuration=conf)
        else:
            kconfig.load_incluster_config(client_configuration=conf)
    except Exception as exc:  # the loaders raise ConfigException, OSError, YAML and key errors alike
        where = kubeconfig or "in-cluster config (no --kubeconfig given)"
        raise StartupError(f"cannot load {where}: {type(exc).__name__}: {exc}") from None
    return client.ApiClient(conf)


def run_main(
    prog: str,
    argv: Sequence[str] | None,
    load_config: Callable[[Sequence[str] | None], C],
    run: Callable[[C], Coroutine[Any, Any, None]],
) -> int:
    """Parse settings, set up logging, run `run(config)` on uvloop; exit 2 with a clear message on bad config."""
    try:
        cfg = load_config(argv)
    except SettingsError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=getattr(cfg, "log_level", "INFO"), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    import uvloop

    try:
        uvloop.run(run(cfg))
    except StartupError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2
    return 0
