"""What one peer may cost the sync server before it has proved anything: the budgets, as plain objects.

Design note
-----------
Anyone who reaches the sync port can open connections, and until a connection has finished its hello
(and, with TLS, presented a certificate the CA signed) it has proved nothing. Each budget here bounds
one way such a peer could make typha spend memory, CPU, file descriptors or log volume, so that
10,000 hostile connections cost a bounded, small amount instead of crowding out the agents:

- `Handshakes`: connections that have not said hello (TLS handshake included) live in a budget of
  their own, apart from `--max-connections` (which counts agents past their hello), and when it is
  full the *oldest* is closed. A real agent says hello within milliseconds of connecting, so under a
  flood of idle sockets the oldest is almost always the flood's, and agents still get in.
- `InboundBudget`: a token bucket over the bytes a connection sends. A client sends its hello and
  then only PONGs and a GOODBYE (tens of bytes every ping interval), so a peer that sends more is
  closed before its bytes are buffered or decoded; a PING flood cannot turn into CPU or queued PONGs.
- `keepable`: what a connection keeps of its hello is cut to realistic sizes.
- `printable`: client-supplied text (hostname, GOODBYE reason, syncer type) is escaped and truncated
  before it reaches a log line, so it can neither forge lines nor grow the log by kilobytes a line.
- `LogLimiter`: log lines about peers are limited per kind per second, with a count of what was
  suppressed, so a flood of bad connections costs a few lines a second, not one line each.
- `fd_budget`: agents, handshakes and the health and metrics ports share one open-files limit;
  the budgets are sized at start so that accepting never fails with EMFILE (which stops the
  listener and starves the health port with it).

Each is a plain object with the clock passed in, so the rules are tested without sockets; the
server (`typha.syncserver`) applies them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Hashable
from typing import Generic, TypeVar

from protocol import ClientHello

K = TypeVar("K", bound=Hashable)

#: File descriptors kept free for everything that is not a sync connection: the listeners, health and
#: metrics connections (bounded separately), the datastore's connections, logs, the interpreter's own.
FD_RESERVE = 256


class Handshakes(Generic[K]):
    """Connections that have not finished their hello, oldest first, at most `limit` of them."""

    __slots__ = ("_conns", "limit")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._conns: dict[K, None] = {}  # insertion-ordered: the first key is the oldest

    def __len__(self) -> int:
        return len(self._conns)

    def __contains__(self, conn: object) -> bool:
        return conn in self._conns

    def add(self, conn: K) -> K | None:
        """Admit `conn`; returns the oldest connection to close if the budget is now exceeded."""
        self._conns[conn] = None
        if len(self._conns) > self.limit:
            return next(iter(self._conns))
        return None

    def discard(self, conn: K) -> None:
        self._conns.pop(conn, None)


class InboundBudget:
    """A token bucket over received bytes: `burst` at once, refilled at `rate` bytes per second."""

    __slots__ = ("burst", "rate", "stamp", "tokens")

    def __init__(self, burst: float, rate: float, now: float) -> None:
        self.burst = burst
        self.rate = rate
        self.tokens = burst
        self.stamp = now

    def take(self, n: int, now: float) -> bool:
        """Spend `n` bytes; False if the peer has sent more than its budget allows."""
        tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if n > tokens:
            self.tokens = 0.0
            return False
        self.tokens = tokens - n
        return True


def keepable(hello: ClientHello) -> ClientHello:
    """The hello as a connection keeps it for its lifetime: strings cut to what a real agent sends (a
    hostname is at most 253 characters), so ten thousand agents cannot make typha hold 16 KiB each."""
    if len(hello.hostname) <= 253 and len(hello.info) <= 256 and len(hello.connection_id) <= 64:
        return hello
    return dataclasses.replace(
        hello, hostname=hello.hostname[:253], info=hello.info[:256], connection_id=hello.connection_id[:64]
    )


def printable(text: object, limit: int = 64) -> str:
    """`text` safe for one log line: backslashes, control and non-ASCII characters escaped (``\\n``,
    ``\\x1b``, ``\\u2028``), and at most `limit` characters of it, the cut said."""
    s = text if isinstance(text, str) else str(text)
    extra = len(s) - limit
    if extra > 0:
        s = s[:limit]
    if not (s.isascii() and s.isprintable()) or "\\" in s:
        s = s.encode("unicode_escape").decode("ascii")
    return f"{s}...(+{extra} chars)" if extra > 0 else s


class LogLimiter(Generic[K]):
    """At most `per_second` lines per kind, each kind's surplus counted and reported with its next line."""

    __slots__ = ("_budgets", "_suppressed", "per_second")

    def __init__(self, per_second: float = 10.0) -> None:
        self.per_second = per_second
        self._budgets: dict[K, InboundBudget] = {}
        self._suppressed: dict[K, int] = {}

    def allow(self, kind: K, now: float) -> tuple[bool, int]:
        """(may log now, lines of this kind suppressed since the last one logged)."""
        budget = self._budgets.get(kind)
        if budget is None:
            budget = self._budgets[kind] = InboundBudget(self.per_second, self.per_second, now)
        if budget.take(1, now):
            return True, self._suppressed.pop(kind, 0)
        self._suppressed[kind] = self._suppressed.get(kind, 0) + 1
        return False, 0


def fd_budget(nofile: int, max_connections: int, max_handshakes: int, reserve: int = FD_RESERVE) -> tuple[int, int]:
    """(agents, handshakes) that fit in `nofile` open files beside `reserve` for everything else.

    Handshakes give way first (down to a tenth of what is left, at least 16), then agents.
    """
    room = max(2, nofile - reserve)
    if max_connections + max_handshakes <= room:
        return max_connections, max_handshakes
    handshakes = max(min(max_handshakes, 16), min(max_handshakes, room // 10), 1)
    return max(1, min(max_connections, room - handshakes)), handshakes
