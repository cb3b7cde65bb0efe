"""Run a function inside another network namespace, on a thread of its own.

A socket (or a /proc/sys file) stays bound to the namespace it was opened in, so the dataplane opens
its netlink sockets and sysctl files from a short-lived thread that has ``setns()``-ed into the
target, and uses them afterwards from the caller's thread with no further switching.
"""

from __future__ import annotations

import ctypes
import os
import threading
from collections.abc import Callable
from typing import TypeVar

__all__ = ["run_in_netns"]

T = TypeVar("T")
_libc = ctypes.CDLL(None, use_errno=True)
CLONE_NEWNET = 0x40000000


def run_in_netns(netns: str | None, fn: Callable[[], T]) -> T:
    """Run ``fn`` on a fresh thread that has ``setns()``-ed into ``netns`` (a name under
    /run/netns or a path such as /proc/<pid>/ns/net); ``None`` runs it here.

    A thread rather than the calling thread because setns would otherwise move the caller (and
    every socket it opens afterwards) into the namespace; rather than ``ip netns exec`` or a
    child process because sockets and /proc/sys files opened by the thread stay bound to the
    namespace and are directly usable by the caller.
    """
    if netns is None:
        return fn()
    if "/" not in netns and (netns in (".", "..") or not netns):
        raise ValueError(f"bad namespace name {netns!r}")
    path = netns if "/" in netns else f"/run/netns/{netns}"
    out: list[T] = []
    err: list[BaseException] = []

    def target() -> None:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            try:
                if _libc.setns(fd, CLONE_NEWNET) != 0:
                    errno = ctypes.get_errno()
                    raise OSError(errno, f"setns({path}): {os.strerror(errno)}")
            finally:
                os.close(fd)
            out.append(fn())
        except BaseException as e:  # handed to the caller's thread
            err.append(e)

    t = threading.Thread(target=target, name=f"netns:{netns}", daemon=True)
    t.start()
    t.join()
    if err:
        raise err[0]
    return out[0]
