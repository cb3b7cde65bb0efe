"""felix.status: problems with their age, grace before unready, grouped and rate-limited log lines."""

from __future__ import annotations

import logging

from felix.status import NODE_UNKNOWN, Problem, ProblemLog, RateLimiter


def waiting_for(dev: str, *dsts: str) -> dict[str, Problem]:
    return {d: Problem(d, "device-missing", f"encapsulation device {dev} does not exist") for d in dsts}


def test_one_line_per_new_kind_of_problem_and_one_when_it_clears() -> None:
    plog = ProblemLog(grace=30)
    lines = plog.update(waiting_for("vxlan.calico", "10.0.1.0/26", "10.0.2.0/26"), now=0)
    why = "encapsulation device vxlan.calico does not exist"
    assert lines == [(logging.WARNING, f"2 routes cannot be programmed (device-missing): {why}; e.g. 10.0.1.0/26")]
    # More routes of the same kind: nothing new to say.
    assert plog.update(waiting_for("vxlan.calico", "10.0.1.0/26", "10.0.2.0/26", "10.0.3.0/26"), now=1) == []
    node = Problem("node:n1", NODE_UNKNOWN, "not a Node typha knows", route=False)
    lines = plog.update({"node:n1": node}, now=2)
    assert lines == [
        (logging.ERROR, "n1: not a Node typha knows (node-unknown)"),
        (logging.INFO, "resolved (device-missing): encapsulation device vxlan.calico does not exist"),
    ]
    assert plog.by_reason() == {} and plog.by_reason(routes_only=False) == {NODE_UNKNOWN: 1}


def test_unready_only_after_the_grace_period_and_ages_in_the_listing() -> None:
    plog = ProblemLog(grace=5)
    plog.update(waiting_for("tunl0", "10.0.1.0/26"), now=100)
    plog.update(waiting_for("tunl0", "10.0.1.0/26", "10.0.2.0/26"), now=103)
    assert plog.overdue(105) == []
    assert [p.what for p in plog.overdue(105.5)] == ["10.0.1.0/26"]
    assert [p.what for p in plog.overdue(109)] == ["10.0.1.0/26", "10.0.2.0/26"]
    assert [(e["what"], e["seconds"]) for e in plog.listing(109)] == [("10.0.1.0/26", 9.0), ("10.0.2.0/26", 6.0)]
    assert len(plog.listing(109, limit=1)) == 1
    # A problem that clears and comes back starts its grace again.
    plog.update({}, now=110)
    plog.update(waiting_for("tunl0", "10.0.1.0/26"), now=111)
    assert plog.overdue(115) == [] and len(plog) == 1


def test_log_lines_are_rate_limited_and_the_suppressed_are_counted() -> None:
    plog = ProblemLog(grace=0, limiter=RateLimiter(burst=2, window=10))
    problems = {
        f"10.0.{i}.5/32": Problem(f"10.0.{i}.5/32", "interface-missing", f"interface cali{i}") for i in range(5)
    }
    assert len(plog.update(problems, now=0)) == 2  # 5 new kinds, 2 allowed
    assert plog.update({}, now=0.1) == []  # 5 "resolved" lines, all suppressed
    lines = plog.update(problems, now=5)  # one token back after 5 s
    assert len(lines) == 1 and lines[0][1].endswith("[8 more problem lines not logged; see /status]")


def test_rate_limiter_refills_over_its_window() -> None:
    rl = RateLimiter(burst=3, window=30)
    assert [rl.allow(0) for _ in range(4)] == [True, True, True, False]
    assert not rl.allow(5) and rl.allow(10)
    assert rl.take_suppressed() == 2 and rl.take_suppressed() == 0
