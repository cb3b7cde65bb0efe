"""`loadtest bench policy` at a tiny scale: the benchmark's own pipeline keeps working (root)."""

from __future__ import annotations

import os
import shutil

import pytest

from loadtest.commands.bench_policy import PolicyBenchOptions, run_policy_bench

from .conftest import kernel_skip

pytestmark = [pytest.mark.kernel, pytest.mark.slow]


def test_bench_policy_runs_and_enforces_on_real_pods() -> None:
    if os.geteuid() != 0 or shutil.which("iptables-restore") is None:
        kernel_skip("the policy benchmark needs root and iptables")
    r = run_policy_bench(PolicyBenchOptions(local=40, remote=40, policies=10, labels=4, changes=2))
    assert r["cold_start"]["rules"] > 0 and r["cold_start"]["set_members"] > 0
    assert r["enforced"]["old_port_closed"]
    assert r["enforced"]["label_change"] < 5 and r["enforced"]["policy_edit"] < 5  # seconds; inf = never
    tree, linear = r["rules_per_packet"]["tree"], r["rules_per_packet"]["linear"]
    assert tree["established"] <= linear["established"]
    for kind in ("label change", "policy edit"):
        assert r[kind]["naive_written"]["chains"] >= r[kind]["median_chains_written"]
