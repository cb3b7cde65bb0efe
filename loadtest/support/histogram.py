"""A mergeable log-bucketed histogram for latencies measured in many processes.

Each bucket spans 2% of its value, so any percentile is known to within 2% whatever the range
(microseconds to minutes), the histogram stays a few hundred integers, and merging the reports of
several agent processes is adding counts. Raw samples would be exact but cost memory in proportion to
the run; a fixed-bucket histogram would be small but lose precision at one end of the range.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

_GROWTH = 1.02
_LOG_GROWTH = math.log(_GROWTH)
_MIN = 1e-6  # one microsecond: anything faster lands in bucket 0


class LogHistogram:
    __slots__ = ("count", "counts", "max", "total")

    def __init__(self) -> None:
        self.counts: dict[int, int] = {}
        self.count = 0
        self.total = 0.0
        self.max = 0.0

    def add(self, value: float, n: int = 1) -> None:
        b = 0 if value <= _MIN else int(math.log(value / _MIN) / _LOG_GROWTH) + 1
        self.counts[b] = self.counts.get(b, 0) + n
        self.count += n
        self.total += value * n
        if value > self.max:
            self.max = value

    def extend(self, values: Iterable[float]) -> None:
        for v in values:
            self.add(v)

    def merge(self, other: LogHistogram) -> None:
        for b, n in other.counts.items():
            self.counts[b] = self.counts.get(b, 0) + n
        self.count += other.count
        self.total += other.total
        self.max = max(self.max, other.max)

    @staticmethod
    def _bucket_value(b: int) -> float:
        # Upper edge of the bucket: percentiles err on the pessimistic side.
        return _MIN if b == 0 else _MIN * _GROWTH**b

    def percentile(self, p: float) -> float:
        """Value at or below which `p` percent of samples lie (0 when empty)."""
        if not self.count:
            return 0.0
        rank = max(1, math.ceil(self.count * p / 100.0))
        seen = 0
        for b in sorted(self.counts):
            seen += self.counts[b]
            if seen >= rank:
                return min(self._bucket_value(b), self.max)
        return self.max

    @property
    def mean(self) -> float:
        return self.total / self.count if self.count else 0.0

    def cdf(self) -> list[tuple[float, float]]:
        """(value, cumulative fraction) points for plotting."""
        out = []
        seen = 0
        for b in sorted(self.counts):
            seen += self.counts[b]
            out.append((min(self._bucket_value(b), self.max), seen / self.count))
        return out

    def to_dict(self) -> dict[str, object]:
        return {
            "counts": {str(k): v for k, v in self.counts.items()},
            "count": self.count,
            "total": self.total,
            "max": self.max,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> LogHistogram:
        """The inverse of `to_dict` (bucket keys may be strings, as JSON leaves them)."""
        h = cls()
        h.counts = {int(k): int(v) for k, v in d["counts"].items()}
        h.count = int(d["count"])
        h.total = float(d["total"])
        h.max = float(d["max"])
        return h

    def summary(self) -> dict[str, float]:
        return {
            "count": self.count,
            "mean": self.mean,
            "p50": self.percentile(50),
            "p90": self.percentile(90),
            "p99": self.percentile(99),
            "max": self.max,
        }


def merge_arrivals(into: dict[int, int], new: Mapping[int, int]) -> None:
    """Keep, per key (a seq or resourceVersion), the latest arrival time seen by any agent."""
    for key, t in new.items():
        if into.get(key, 0) < t:
            into[key] = t


def arrival_latency(arrivals: Mapping[int, int], created: Mapping[int, int], since_ns: int = 0) -> LogHistogram:
    """For every key with both times: creation (or write) to the last arrival, in seconds."""
    h = LogHistogram()
    for key, arrival in arrivals.items():
        t0 = created.get(key)
        if t0 is not None and t0 >= since_ns:
            h.add(max(0, arrival - t0) / 1e9)
    return h
