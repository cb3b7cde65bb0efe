"""What keeps felix from doing its job: the problems, since when, and what to tell people about them.

Design note
-----------
Felix must never be silent and ready while it cannot program what it should.  Every pass the agent
collects the current *problems* -- a route pending with a reason, a route failing with a netlink
error, a route the calculation cannot build, a tunnel device that cannot be made, a node name typha
does not know -- and hands them to :class:`ProblemLog`, which is pure (the clock is an argument):

* it remembers when each problem was first seen, so readiness can turn false only once something
  has been wrong for longer than a grace period (a pod whose interface is a moment late must not
  flap the node), and ``/status`` can say for how long;
* it says what to log: one line when a new *kind* of problem appears (problems with the same
  reason and detail are one kind: 500 routes waiting for ``vxlan.calico`` are one line, not 500),
  one when a kind clears, all through a :class:`RateLimiter` whose suppressed lines are counted
  and reported with the next line that gets through;
* it counts problems by reason for the ``felix_routes_pending{reason=...}`` gauge.

Why a separate pure module and not counters inside the managers: the managers each know one part
(routes, devices, the calculation), while readiness and ``/status`` need the whole picture; and the
grace and rate-limit logic is exactly the kind of time-dependent code that is only trustworthy
when it is tested with a fake clock.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass

__all__ = ["FAILING", "NODE_UNKNOWN", "UNRESOLVED", "Problem", "ProblemLog", "RateLimiter"]

UNRESOLVED = "unresolved"  # the calculation cannot build the route (no pool, unknown node, no VTEP)
FAILING = "netlink-error"  # the kernel refused it; retried with backoff
NODE_UNKNOWN = "node-unknown"


@dataclass(frozen=True, slots=True)
class Problem:
    what: str  # a destination, "neigh:<ip>", "device:<name>" or "node:<name>"
    reason: str  # a short label (routeplan.REASONS, UNRESOLVED, FAILING, NODE_UNKNOWN)
    detail: str  # for people
    route: bool = True  # a route that should exist (counted in felix_routes_pending)


class RateLimiter:
    """At most ``burst`` events per ``window`` seconds; counts what it refused."""

    def __init__(self, burst: int = 10, window: float = 60.0) -> None:
        self.burst = burst
        self.window = window
        self._tokens = float(burst)
        self._last: float | None = None
        self.suppressed = 0

    def allow(self, now: float) -> bool:
        if self._last is not None:
            self._tokens = min(self.burst, self._tokens + (now - self._last) * self.burst / self.window)
        self._last = now
        if self._tokens >= 1:
            self._tokens -= 1
            return True
        self.suppressed += 1
        return False

    def take_suppressed(self) -> int:
        n, self.suppressed = self.suppressed, 0
        return n


def _plural(n: int, word: str) -> str:
    if n == 1:
        return f"{n} {word}"
    return f"{n} {word[:-1]}ies" if word.endswith("y") else f"{n} {word}s"


class ProblemLog:
    """Current problems with their age, log lines for changes, and readiness after ``grace`` seconds."""

    def __init__(self, grace: float, limiter: RateLimiter | None = None) -> None:
        self.grace = grace
        self.limiter = limiter or RateLimiter()
        self._since: dict[str, float] = {}
        self._problems: dict[str, Problem] = {}
        self._kinds: Counter[tuple[str, str]] = Counter()

    def update(self, problems: Mapping[str, Problem], now: float) -> list[tuple[int, str]]:
        """Take the current problems; returns ``(log level, line)`` pairs to log now."""
        for what in list(self._since):
            if what not in problems:
                del self._since[what]
        for what in problems:
            self._since.setdefault(what, now)
        self._problems = dict(problems)
        kinds: Counter[tuple[str, str]] = Counter((p.reason, p.detail) for p in problems.values())
        example: dict[tuple[str, str], str] = {}
        for p in problems.values():
            example.setdefault((p.reason, p.detail), p.what)
        lines: list[tuple[int, str]] = []
        for kind in sorted(set(kinds) - set(self._kinds)):
            reason, detail = kind
            level = logging.ERROR if reason == NODE_UNKNOWN else logging.WARNING
            what = example[kind]
            if what.startswith(("node:", "device:")):
                lines.append((level, f"{what.split(':', 1)[1]}: {detail} ({reason})"))
            else:
                noun = "route" if self._problems[what].route else "entry"
                n = kinds[kind]
                lines.append((level, f"{_plural(n, noun)} cannot be programmed ({reason}): {detail}; e.g. {what}"))
        for kind in sorted(set(self._kinds) - set(kinds)):
            lines.append((logging.INFO, f"resolved ({kind[0]}): {kind[1]}"))
        self._kinds = kinds
        out = []
        for level, line in lines:
            if self.limiter.allow(now):
                skipped = self.limiter.take_suppressed()
                if skipped:
                    line += f" [{skipped} more problem lines not logged; see /status]"
                out.append((level, line))
        return out

    def overdue(self, now: float) -> list[Problem]:
        """Problems that have lasted longer than the grace period, oldest first."""
        late = [(since, what) for what, since in self._since.items() if now - since > self.grace]
        return [self._problems[what] for _, what in sorted(late)]

    def by_reason(self, routes_only: bool = True) -> Counter[str]:
        return Counter(p.reason for p in self._problems.values() if p.route or not routes_only)

    def __len__(self) -> int:
        return len(self._problems)

    def listing(self, now: float, limit: int = 1000) -> list[dict[str, object]]:
        """The problems for ``/status``, oldest first, at most ``limit`` of them."""
        items = sorted(self._problems.values(), key=lambda p: (self._since[p.what], p.what))[:limit]
        return [
            {"what": p.what, "reason": p.reason, "detail": p.detail, "seconds": round(now - self._since[p.what], 1)}
            for p in items
        ]
