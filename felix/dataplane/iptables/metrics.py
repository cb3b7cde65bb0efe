"""Prometheus metrics of the policy dataplane (Calico's names where Calico has one).

Counters and the apply-time histogram are updated as writes happen; the sizes (rules per table,
ip sets, members) are read from the dataplane only when Prometheus scrapes, by a collector, so a
write never pays for counting 30,000 rules.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Protocol

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

__all__ = ["PolicyMetrics", "Programmed"]

_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


class Programmed(Protocol):
    """What the dataplane reports at scrape time."""

    def programmed(self) -> tuple[dict[tuple[int, str], tuple[int, int]], int, int]:
        """((ip version, table) -> (chains, rules), ip sets, ip set members)."""
        ...

    @property
    def ready(self) -> bool: ...


class _Sizes(Collector):
    def __init__(self, source: Callable[[], Programmed | None]) -> None:
        self.source = source

    def collect(self) -> Iterator[Metric]:
        dp = self.source()
        if dp is None:
            return
        tables, sets, members = dp.programmed()
        chains = GaugeMetricFamily("felix_iptables_chains", "Chains felix programs.", labels=["ip_version", "table"])
        rules = GaugeMetricFamily("felix_iptables_rules", "Rules in felix's chains.", labels=["ip_version", "table"])
        for (v, table), (c, r) in sorted(tables.items()):
            chains.add_metric([str(v), table], c)
            rules.add_metric([str(v), table], r)
        yield chains
        yield rules
        yield GaugeMetricFamily("felix_ipsets_calico", "Ip sets felix programs.", value=sets)
        yield GaugeMetricFamily("felix_ipset_members", "Members of felix's ip sets.", value=members)
        yield GaugeMetricFamily(
            "felix_policy_dataplane_ready", "1 while every rule and set felix wants is programmed.", value=int(dp.ready)
        )


class PolicyMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = r = registry or CollectorRegistry()
        self.apply_seconds = Histogram(
            "felix_policy_apply_seconds",
            "Time to write one batch of policy changes to the kernel (ip sets and iptables).",
            buckets=_BUCKETS,
            registry=r,
        )
        self.restore_errors = Counter("felix_iptables_restore_errors", "iptables-restore runs that failed.", registry=r)
        self.ipset_errors = Counter("felix_ipset_errors", "ipset restore runs that failed.", registry=r)
        self.save_errors = Counter(
            "felix_iptables_save_errors", "Read-backs (iptables-save, ipset save) that failed.", registry=r
        )
        self.lines_executed = Counter(
            "felix_iptables_lines_executed", "Rule lines (-A/-I/-R/-D) written by iptables-restore.", registry=r
        )
        self.chains_written = Counter("felix_iptables_chains_written", "Chains created or edited.", registry=r)
        self.members_written = Counter(
            "felix_ipset_lines_executed", "Ip set members added, deleted or rewritten.", registry=r
        )
        self.drift_repaired = Counter(
            "felix_policy_drift_repaired",
            "Chains, hook rules and ip sets a read-back found changed behind felix's back, and repaired.",
            registry=r,
        )
        self.problems = Counter(
            "felix_policy_render_problems", "Rules or references that could not be rendered as sent.", registry=r
        )
        self._source: Programmed | None = None
        r.register(_Sizes(lambda: self._source))

    def bind(self, dp: Programmed) -> None:
        """Report this dataplane's sizes at scrape time."""
        self._source = dp
