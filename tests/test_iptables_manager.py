"""felix.dataplane.iptables.manager and backend, without root: a model kernel behind a fake runner.

The fake runner executes iptables-restore and ipset restore input on the models of
tests/test_iptables_plan.py and tests/test_ipsets_plan.py, and can be told to fail, so the shell's
failure handling (readiness, retries with backoff, re-reading the kernel) is tested directly. The
kernel tests cover the same paths with the real tools.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Iterator, Sequence

import pytest

from felix.dataplane.ipsets.save import KernelSet
from felix.dataplane.iptables import names as N
from felix.dataplane.iptables.backend import Backend, CommandResult, detect_backend
from felix.dataplane.iptables.manager import PolicyConfig, PolicyDataplane
from felix.dataplane.iptables.save import KernelTable, parse_save
from felix.policy.messages import (
    ActivePolicyUpdate,
    ActiveProfileUpdate,
    IpSetDeltaUpdate,
    IpSetRemove,
    IpSetUpdate,
    Policy,
    PolicyID,
    Rule,
    TierInfo,
    WorkloadEndpoint,
    WorkloadEndpointUpdate,
)

from .test_ipsets_plan import run_script
from .test_iptables_plan import apply_restore

ALLOW_ALL = Policy(inbound_rules=(Rule("allow"),), outbound_rules=(Rule("allow"),))


class FakeKernel:
    def __init__(self) -> None:
        base = "*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\nCOMMIT\n"
        self.tables: dict[str, KernelTable] = parse_save(base + "*nat\n:POSTROUTING ACCEPT [0:0]\nCOMMIT\n")
        self.sets: dict[str, KernelSet] = {}
        self.fail: set[str] = set()  # "restore", "ipset", "save"
        self.calls: list[str] = []
        self.lock = threading.Lock()  # the dataplane runs some tools side by side

    def __call__(self, argv: Sequence[str], stdin: str | None) -> CommandResult:
        with self.lock:
            return self._run(argv, stdin)

    def _run(self, argv: Sequence[str], stdin: str | None) -> CommandResult:
        tool = argv[0]
        self.calls.append(tool)
        if tool.endswith("-save"):
            if "save" in self.fail:
                return CommandResult(1, "", "boom")
            return CommandResult(0, self.save(), "")
        if tool.endswith("-restore"):
            if "restore" in self.fail:
                return CommandResult(1, "", "iptables-restore: line 2 failed")
            assert "--noflush" in argv and "-w" in argv
            for block in (stdin or "").split("COMMIT\n"):
                if block.strip():
                    name = block.split("\n", 1)[0][1:]
                    self.tables[name] = apply_restore(self.tables[name], block)
            return CommandResult(0, "", "")
        if tool == "ipset":
            if argv[1] == "save":
                text = "".join(
                    f"create {n} {s.type} family {s.family} maxelem {s.maxelem}\n"
                    + "".join(f"add {n} {m}\n" for m in s.members)
                    for n, s in self.sets.items()
                )
                return CommandResult(0, text, "")
            if "ipset" in self.fail:
                return CommandResult(1, "", "ipset v7.17: Error in line 1")
            self.sets = run_script(self.sets, (stdin or "").split("\n")[:-1])
            return CommandResult(0, "", "")
        raise AssertionError(argv)

    def save(self) -> str:
        out = []
        for name, t in self.tables.items():
            out.append(f"*{name}")
            out += [f":{c} - [0:0]" for c in t.chains]
            for c, hashes in t.chains.items():
                if c in t.lines:
                    out += t.lines[c]
                else:
                    out += [f'-A {c} -m comment --comment "cali:{h}" -j ACCEPT' for h in hashes]
            out.append("COMMIT")
        return "\n".join(out) + "\n"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def make(cfg: PolicyConfig | None = None) -> tuple[PolicyDataplane, FakeKernel, Clock]:
    k, clock = FakeKernel(), Clock()
    dp = PolicyDataplane(None, cfg, run=k, backend=Backend("nft"), clock=clock)
    return dp, k, clock


def batch() -> list:
    return [
        IpSetUpdate("s", "hash:net", frozenset({"10.0.0.1/32"})),
        ActiveProfileUpdate("kns.default", ALLOW_ALL),
        ActivePolicyUpdate(PolicyID("default", "p"), Policy(inbound_rules=(Rule("allow", src_ip_set_ids=("s",)),))),
        WorkloadEndpointUpdate(
            "a", WorkloadEndpoint("cali0000000000a", ("kns.default",), (TierInfo("default", ("p",)),))
        ),
    ]


def test_nothing_is_written_before_programming_starts() -> None:
    dp, k, _ = make()
    assert dp.apply(batch()) is None
    assert k.calls == [] and not dp.ready
    assert dp.not_ready_reason == "policy not programmed yet"
    report = dp.start_programming()
    assert report.ok and dp.ready
    assert k.calls[:2] == ["iptables-nft-save", "ipset"], "reads the kernel back before the first write"
    tables, sets, members = dp.programmed()
    assert tables[(4, "filter")][1] > 0 and (sets, members) == (1, 1)
    reg = dp.metrics.registry
    assert (
        reg.get_sample_value("felix_iptables_rules", {"ip_version": "4", "table": "filter"}) == tables[(4, "filter")][1]
    )
    assert reg.get_sample_value("felix_ipset_members") == 1
    assert reg.get_sample_value("felix_policy_dataplane_ready") == 1
    assert reg.get_sample_value("felix_policy_apply_seconds_count") == 1


def test_restore_failure_makes_unready_retries_with_backoff_then_recovers() -> None:
    dp, k, clock = make()
    dp.apply(batch())
    dp.start_programming()
    k.fail.add("restore")
    report = dp.apply([WorkloadEndpointUpdate("b", WorkloadEndpoint("cali0000000000b", ("kns.default",)))])
    assert report is not None and not report.ok
    assert not dp.ready and "iptables-nft-restore failed" in dp.not_ready_reason
    assert dp.stats.restore_failures == 1
    assert dp.metrics.registry.get_sample_value("felix_iptables_restore_errors_total") == 1
    assert dp.metrics.registry.get_sample_value("felix_policy_dataplane_ready") == 0
    first = dp.next_deadline()
    assert first is not None and first == pytest.approx(clock.now + 0.05)
    assert dp.apply([IpSetDeltaUpdate("s", added=frozenset({"10.0.0.2/32"}))]) is None, "queued for the retry"
    clock.now = first
    dp.tick()
    assert dp.stats.restore_failures == 2
    second = dp.next_deadline()
    assert second is not None and second - clock.now == pytest.approx(0.1)  # doubled
    k.fail.clear()
    calls = len(k.calls)
    clock.now = second
    dp.tick()
    assert dp.ready and k.calls[calls] == "iptables-nft-save", "re-reads the kernel before retrying"
    assert "cali-fw-cali0000000000b" in k.tables["filter"].chains
    assert k.sets[next(iter(k.sets))].members == {"10.0.0.1", "10.0.0.2"}


def test_ipset_failure_stops_before_iptables() -> None:
    dp, k, _ = make()
    dp.apply(batch())
    k.fail.add("ipset")
    assert not dp.start_programming().ok
    assert "iptables-nft-restore" not in k.calls, "rules must not refer to sets that failed to appear"
    assert dp.stats.ipset_failures == 1 and not dp.ready


def test_periodic_read_back_counts_and_repairs_drift() -> None:
    dp, k, clock = make(PolicyConfig(refresh_interval=90))
    dp.apply(batch())
    dp.start_programming()
    assert dp.next_deadline() == clock.now + 90
    k.tables["filter"].chains["cali-fw-cali0000000000a"].pop()
    next(iter(k.sets.values())).members.clear()
    clock.now += 90
    dp.tick()
    assert dp.stats.resyncs == 1 and dp.stats.drift_repaired == 2
    assert dp.metrics.registry.get_sample_value("felix_policy_drift_repaired_total") == 2
    assert next(iter(k.sets.values())).members == {"10.0.0.1"}
    clock.now += 90
    dp.tick()
    assert dp.stats.drift_repaired == 2, "nothing more"


def test_backend_detection() -> None:
    def runner(outputs: dict[str, str]):  # type: ignore[no-untyped-def]
        def run(argv: Sequence[str], stdin: str | None) -> CommandResult:
            key = " ".join(argv)
            for k, v in outputs.items():
                if key.startswith(k):
                    return CommandResult(0, v, "")
            return CommandResult(0, "", "")

        return run

    kube = "*mangle\n:KUBE-IPTABLES-HINT - [0:0]\nCOMMIT\n"
    rules = "*filter\n-A FORWARD -j X\n-A FORWARD -j Y\nCOMMIT\n"
    cases = [
        ("legacy", {}, "legacy"),
        ("auto", {"iptables-nft-save -t mangle": kube}, "nft"),
        ("auto", {"iptables-legacy-save -t mangle": kube, "cat": "mangle\n"}, "legacy"),
        ("auto", {"iptables-legacy-save -t mangle": kube}, "nft"),  # no legacy tables: never probed
        ("auto", {"iptables-legacy-save": rules, "cat": "filter\n"}, "legacy"),
        ("auto", {"iptables --version": "iptables v1.8.7 (legacy)"}, "legacy"),
        ("auto", {"iptables --version": "iptables v1.8.9 (nf_tables)"}, "nft"),
    ]
    for setting, outputs, expect in cases:
        backend, why = detect_backend(setting, runner(outputs))
        assert backend.name == expect, (setting, outputs, why)
    old = Backend("nft", (1, 8, 2))
    assert not old.reliable_replace and Backend("legacy", (1, 4, 21)).restore_argv(4)[-1] == "--noflush"
    assert Backend("nft", (1, 8, 9), lock_timeout=5).restore_argv(6)[2:] == ["-w", "5", "-W", "50000"]


def test_settings_use_calicos_names_and_reach_the_dataplane() -> None:
    from felix.config import load_config
    from felix.dataplane.iptables.manager import config_from_settings

    env = {
        "FELIX_CHAININSERTMODE": "Append",
        "FELIX_DEFAULTENDPOINTTOHOSTACTION": "accept",
        "FELIX_IPTABLESBACKEND": "Legacy",
        "FELIX_IPTABLESREFRESHINTERVAL": "30",
        "FELIX_IPTABLESMARKMASK": "0xff000000",
        "FELIX_INTERFACEPREFIX": "cali,tap",
        "FELIX_IPV6SUPPORT": "false",
    }
    cfg = config_from_settings(load_config(["--typha-addresses", "127.0.0.1:5473"], environ=env))
    assert (cfg.chain_insert_mode, cfg.backend, cfg.refresh_interval, cfg.ipv6) == ("append", "legacy", 30.0, False)
    assert cfg.render.endpoint_to_host == "ACCEPT" and cfg.render.iface_prefixes == ("cali", "tap")
    assert (cfg.render.marks.accept, cfg.render.marks.scratch1) == (0x1000000, 0x8000000)
    defaults = config_from_settings(load_config(["--typha-addresses", "127.0.0.1:5473"], environ={}))
    assert defaults.ipv6 and defaults.render.endpoint_to_host == "DROP" and defaults.chain_insert_mode == "insert"


def test_a_big_ip_set_script_is_split_between_two_processes() -> None:
    dp, k, _ = make()
    big = frozenset(f"10.{i // 65536}.{i // 256 % 256}.{i % 256}/32" for i in range(30_000))
    dp.apply([*batch(), IpSetUpdate("big", "hash:net", big), IpSetUpdate("small", "hash:net", frozenset({"10.9.9.9"}))])
    report = dp.start_programming()
    assert report.ok and k.calls.count("ipset") == 3  # save, then two restores side by side
    members = {len(s.members) for s in k.sets.values()}
    assert members == {30_000, 1}


def test_unused_sets_are_destroyed_by_the_next_tick_unless_wanted_again() -> None:
    dp, k, clock = make()
    dp.apply(batch())
    dp.start_programming()
    pol = PolicyID("default", "p")
    other = Policy(inbound_rules=(Rule("allow", src_ip_set_ids=("t",)),))
    dp.apply([IpSetUpdate("t", "hash:net", frozenset({"10.0.0.7/32"})), ActivePolicyUpdate(pol, other)])
    old = [n for n, s in k.sets.items() if s.members == {"10.0.0.1"}]
    dp.apply([IpSetRemove("s")])
    assert old and old[0] in k.sets and dp.next_deadline() == clock.now
    dp.tick()
    assert old[0] not in k.sets and dp.next_deadline() == clock.now + 90  # next: the read-back
    # A set that is wanted again before the tick is spared.
    dp.apply([ActivePolicyUpdate(pol, Policy(inbound_rules=(Rule("allow"),))), IpSetRemove("t")])
    dp.apply([IpSetUpdate("t", "hash:net", frozenset({"10.0.0.8/32"}))])
    dp.tick()
    assert any(s.members == {"10.0.0.8"} for s in k.sets.values())


def test_missing_tools_are_a_start_up_error(monkeypatch: pytest.MonkeyPatch) -> None:
    import shutil

    from felix.dataplane.iptables import manager
    from felix.dataplane.iptables.backend import ToolError

    real = shutil.which
    monkeypatch.setattr(manager.shutil, "which", lambda t: None if "legacy" in t or t == "ip6tables-save" else real(t))
    with pytest.raises(ToolError, match="ip6tables-save not installed"):
        PolicyDataplane(
            None, PolicyConfig(backend="legacy", ipv6=True), run=lambda argv, stdin: CommandResult(0, "", "")
        )


def test_chains_render_while_ipset_creates_the_sets_and_every_set_exists_before_the_rules() -> None:
    """The write starts ``ipset restore`` in the background and renders the chains meanwhile (the
    kernel spends most of a cold start's set creation waiting); a set only a rule names, never
    announced, is created (empty) by a second script -- still before ``iptables-restore``."""
    k = FakeKernel()
    dp = PolicyDataplane(None, None, run=k, backend=Backend("nft"))
    seen_at_restore: list[set[str]] = []
    ipset_saw_unrendered: list[bool] = []
    real_run = k._run

    def run(argv: Sequence[str], stdin: str | None) -> CommandResult:
        if argv[0] == "ipset" and argv[1] != "save":
            ipset_saw_unrendered.append(dp.state.unrendered)
            deadline = time.monotonic() + 5
            while dp.state.unrendered and time.monotonic() < deadline:  # the render runs meanwhile
                time.sleep(0.001)
        with k.lock:
            if argv[0].endswith("-restore"):
                seen_at_restore.append(set(k.sets))
            return real_run(argv, stdin)

    dp.run = run
    ghost = Policy(inbound_rules=(Rule("allow", src_ip_set_ids=("ghost",)),))
    dp.apply([*batch(), ActivePolicyUpdate(PolicyID("default", "p"), ghost)])
    assert dp.state.unrendered, "nothing is rendered before programming starts"
    report = dp.start_programming()
    assert report.ok and not dp.state.unrendered
    assert ipset_saw_unrendered[0], "ipset restore started before the chains were rendered"
    ghost_set, s_set = N.set_name(4, "ghost"), N.set_name(4, "s")
    assert k.sets[ghost_set].members == set() and k.sets[s_set].members == {"10.0.0.1"}
    assert seen_at_restore and ghost_set in seen_at_restore[0], "the set existed before the rules using it"
    assert k.calls.count("ipset") == 3  # save, the announced sets, the set only a rule names


class StreamingKernel(FakeKernel):
    """A model kernel whose runner streams restore input, as ``backend.Runner`` does: records what
    each iptables-restore had received when each ipset restore ran."""

    def __init__(self) -> None:
        super().__init__()
        self.received: dict[str, list[str]] = {}  # restore tool -> chunks received so far
        self.at_ipset: list[dict[str, int]] = []
        self.aborted: list[str] = []

    def _run(self, argv: Sequence[str], stdin: str | None) -> CommandResult:
        if argv[0] == "ipset" and argv[1] != "save":
            time.sleep(0.05)  # the restores are fed their first part meanwhile
            self.at_ipset.append({tool: len(chunks) for tool, chunks in self.received.items()})
        return super()._run(argv, stdin)

    def stream(self, argv: Sequence[str], chunks: Iterable[str]) -> CommandResult:
        got = self.received.setdefault(argv[0], [])
        try:
            for chunk in chunks:
                got.append(chunk)
        except BaseException:
            self.aborted.append(argv[0])
            raise
        return self(argv, "".join(got))


def test_with_nft_iptables_restore_parses_while_the_sets_are_created_and_commits_after() -> None:
    k = StreamingKernel()
    dp = PolicyDataplane(None, PolicyConfig(ipv6=True), run=k, backend=Backend("nft"))
    dp.apply(batch())
    assert dp.start_programming().ok and dp.ready
    assert k.at_ipset and k.at_ipset[0] == {"iptables-nft-restore": 1, "ip6tables-nft-restore": 1}, k.at_ipset
    first, rest = k.received["iptables-nft-restore"]
    assert "--match-set" not in first and "COMMIT" not in first, "nothing naming a set, nothing committed"
    assert "--match-set" in rest and rest.rstrip().endswith("COMMIT")
    assert "cali-tw-cali0000000000a" in k.tables["filter"].chains
    # An ip set failure aborts the restores before their COMMIT: nothing is written.
    k2 = StreamingKernel()
    dp2 = PolicyDataplane(None, PolicyConfig(ipv6=True), run=k2, backend=Backend("nft"))
    dp2.apply(batch())
    k2.fail.add("ipset")
    assert not dp2.start_programming().ok
    assert sorted(k2.aborted) == ["ip6tables-nft-restore", "iptables-nft-restore"]
    assert not any(c.startswith("cali-") for c in k2.tables["filter"].chains)
    assert dp2.stats.ipset_failures == 1 and dp2.stats.restore_failures == 0


def test_runner_streams_input_and_kills_the_tool_when_the_input_is_aborted() -> None:
    from felix.dataplane.iptables.backend import Runner

    def chunks(fail: bool) -> Iterator[str]:
        yield "first\n"
        if fail:
            raise RuntimeError("the sets could not be created")
        yield "second\n"

    r = Runner().stream(["cat"], chunks(False))
    assert (r.rc, r.out) == (0, "first\nsecond\n")
    with pytest.raises(RuntimeError, match="could not be created"):
        Runner().stream(["cat"], chunks(True))
    r = Runner().stream(["sh", "-c", "head -c1 >/dev/null; echo broken >&2; exit 3"], iter(["x" * 200_000] * 4))
    assert (r.rc, r.err.strip()) == (3, "broken")


def test_a_started_restore_is_never_left_waiting_when_the_write_breaks() -> None:
    k = StreamingKernel()
    dp = PolicyDataplane(None, PolicyConfig(ipv6=True), run=k, backend=Backend("nft"))
    dp.apply(batch())
    real, calls = dp._plan_sets, []

    def plan_sets(only: dict[int, set[str]] | None) -> dict:
        calls.append(only)
        if len(calls) == 2:  # after the restores started, before the gate opens
            raise RuntimeError("a bug")
        return real(only)

    dp._plan_sets = plan_sets  # type: ignore[method-assign]
    with pytest.raises(RuntimeError, match="a bug"):
        dp.start_programming()
    deadline = time.monotonic() + 5
    while len(k.aborted) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert sorted(k.aborted) == ["ip6tables-nft-restore", "iptables-nft-restore"]
    assert not any(c.startswith("cali-") for c in k.tables["filter"].chains), "nothing committed"
