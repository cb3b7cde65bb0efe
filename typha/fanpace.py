"""When the next fan-out pass may start: passes paced by the fleet's size, within a latency budget.

Design note
-----------
A fan-out pass writes the breadcrumbs published since the last pass to every agent following a syncer,
one joined write each. Run as soon as a breadcrumb is ready, passes follow the datastore's rhythm: at
100 events/s a 5,000-agent replica ran ~33 passes a second, ~160,000 socket writes a second (5 us each
for typha, and a wake-up, a read and a decode for every agent), while one pass an interval later would
have carried the same bytes in fewer, larger writes. So each syncer's passes are spaced:

    interval = max(last pass's duration, min(latency_budget, agents / write_rate))

- it grows with the fleet (`agents / write_rate`), so the writes per second stay at about `write_rate`
  however many agents follow, and every agent gets at most one write per interval;
- it never exceeds the latency budget (a setting), which bounds what pacing adds to an update's delay;
- it is never shorter than the last pass took, so fan-out can never take more than half the loop's
  time (a pass, then at least as long for everything else) even when the budget is too small for the
  fleet on this machine.

A breadcrumb that arrives after a quiet spell (longer than the interval) is fanned out at once: pacing
costs latency only when passes would otherwise come faster than the interval. The alternative, a fixed
tick, would add half a tick on average to every update on a small, quiet cluster and still not adapt to
a large, busy one; a pass per breadcrumb (what the server did) adapts to nothing.

Pure: the server tells it when passes start and end, and asks how long to wait; the clock is the
caller's (monotonic seconds).
"""

from __future__ import annotations


class FanoutPacer:
    """One syncer's fan-out passes: when the next may start."""

    __slots__ = ("budget", "last_start", "last_took", "passes", "write_rate")

    def __init__(self, budget: float, write_rate: float) -> None:
        """`budget`: the longest interval between two passes (seconds); `write_rate`: the socket writes a
        second the passes aim at (the interval is agents / write_rate within the budget)."""
        self.budget = budget
        self.write_rate = write_rate
        self.last_start = float("-inf")
        self.last_took = 0.0
        self.passes = 0

    def interval(self, agents: int) -> float:
        """Seconds from the start of one pass to the start of the next."""
        return max(self.last_took, min(self.budget, agents / self.write_rate))

    def delay(self, now: float, agents: int) -> float:
        """Seconds to wait, from `now`, before the next pass may start (0: at once)."""
        return max(0.0, self.last_start + self.interval(agents) - now)

    def started(self, now: float) -> None:
        self.last_start = now
        self.passes += 1

    def ended(self, now: float) -> None:
        self.last_took = max(0.0, now - self.last_start)
