"""The policy dataplane: policy messages in, iptables and ip sets in the kernel. The thin shell.

Design note
-----------
``PolicyDataplane`` joins the pure parts: ``DesiredState`` (messages -> chains and sets), the
planners (``plan_table``, ``plan_sets``), and the tools (``iptables-restore``, ``ipset restore``,
and their ``save`` read-backs, run by ``backend.Runner``). ``apply`` takes a batch in (ip set
members at once, chains left to render); the write that follows is, in order:

1. ``ipset -exist restore`` of every set change that rules may need (creates, adds, deletes, swaps),
   started in the background; the chains are rendered and planned meanwhile. Creating a cold
   start's thousands of sets is mostly the kernel waiting -- it grows its table of sets 64 at a
   time and each growth waits for an RCU grace period (0.3-0.5 s for 2,800 sets, with almost no
   CPU) -- so the rendering costs no wall time there. A set only a rule names (never announced by
   the calculation) is created empty by a second, small script once rendering has found it;
2. one ``iptables-restore --noflush`` per IP version, holding one transaction per table
   (filter, nat), writing only the chains that changed. With nft both start during step 1: they
   are fed what names no ip set at once and the rest, with the COMMIT, once the sets exist (a
   ``_Gate``); a write that fails before then kills them before their COMMIT;
3. ``ipset restore`` of the destroys, now that no rule refers to those sets -- from ``tick``, just
   after the write returns, so a policy edit's latency does not include it (a set wanted again
   before that runs is spared).

Felix's belief of the kernel (hashes per chain, members per set) is updated only when a step
succeeds. A failure keeps the changes dirty, forgets the belief (it is re-read with
``iptables-save`` and ``ipset save`` before the retry), counts the failure, turns ``ready`` false,
and retries with exponential backoff (50 ms to 30 s) from ``tick``. Every ``IptablesRefreshInterval``
(90 s) the kernel is read back and compared with the belief: chains whose hashes differ, hook rules
that moved (a foreign rule inserted above ours), sets whose members differ are counted as drift and
repaired by the same planners. Nothing is written before ``start_programming`` (felix calls it at
its first in-sync); that call first reads the kernel, so a restarted felix adopts the chains and
sets of its previous run (same names, same hashes) and rewrites only what changed meanwhile: the
conntrack rules stay in place throughout, so established connections never notice the restart.
Felix never removes its rules when it stops.

Not thread-safe: drive it from one thread (felix's event loop). A write waits for its tools (some
run in a small pool, side by side): an incremental apply costs two or three process spawns (~10 ms); the cold start of 1,000 endpoints is
about a second of ``iptables-restore``. Taking a batch in and writing run with the cyclic garbage
collector paused (``felix.policy.gcpause``).
"""

from __future__ import annotations

import logging
import shutil
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Literal

from felix.dataplane.ipsets.plan import MAXELEM, SetPlan, plan_sets
from felix.dataplane.ipsets.save import KernelSet, parse_ipset_save
from felix.policy import gcpause
from felix.policy.messages import Batch, Message

from .backend import Backend, CommandResult, Run, Runner, ToolError, detect_backend
from .desired import TABLES, DesiredState
from .metrics import PolicyMetrics
from .plan import TablePlan, drifted_chains, plan_table
from .render import RenderConfig, Renderer
from .rules import Marks
from .save import KernelTable, SaveError, parse_save

__all__ = ["ApplyReport", "PolicyConfig", "PolicyDataplane", "PolicyStats", "config_from_settings"]

log = logging.getLogger("felix.policy")
_BACKOFF_MIN, _BACKOFF_MAX = 0.05, 30.0
_SPLIT_IPSET_LINES = 20_000  # above this, the ip set script is split between two processes


@dataclass(frozen=True, slots=True)
class PolicyConfig:
    chain_insert_mode: Literal["insert", "append"] = "insert"
    backend: Literal["auto", "nft", "legacy"] = "auto"
    refresh_interval: float = 90.0  # 0 = never read back
    lock_timeout: float = 10.0
    ipv6: bool = False
    max_set_size: int = MAXELEM
    render: RenderConfig = field(default_factory=RenderConfig)


def config_from_settings(cfg: Any) -> PolicyConfig:
    """felix's settings (``felix.config.FelixConfig``, Calico's names) -> ``PolicyConfig``."""
    return PolicyConfig(
        chain_insert_mode=cfg.chain_insert_mode,
        backend=cfg.iptables_backend,
        refresh_interval=cfg.iptables_refresh_interval,
        lock_timeout=cfg.iptables_lock_timeout,
        ipv6=cfg.ipv6_support,
        max_set_size=cfg.max_ipset_size,
        render=RenderConfig(
            marks=Marks.from_mask(cfg.iptables_mark_mask),
            iface_prefixes=tuple(p.strip() for p in cfg.interface_prefix.split(",") if p.strip()) or ("cali",),
            endpoint_to_host=cfg.default_endpoint_to_host_action,
            log_prefix=cfg.log_prefix,
        ),
    )


@dataclass(slots=True)
class ApplyReport:
    """What one apply wrote (the benchmark reports these)."""

    seconds: float = 0.0
    read_seconds: float = 0.0  # iptables-save and ipset save, when the belief had to be refreshed
    render_seconds: float = 0.0  # chains rendered and planned, while ipset restore runs
    ipset_seconds: float = 0.0
    iptables_seconds: float = 0.0
    chains_written: int = 0
    chains_deleted: int = 0
    rule_ops: int = 0
    hooks_repaired: int = 0
    sets_created: int = 0
    sets_swapped: int = 0
    sets_destroyed: int = 0
    members_added: int = 0
    members_removed: int = 0
    tool_runs: int = 0
    ok: bool = True

    def add_table(self, p: TablePlan) -> None:
        self.chains_written += p.chains_written
        self.chains_deleted += p.chains_deleted
        self.rule_ops += p.rule_ops
        self.hooks_repaired += p.hooks_repaired

    def add_sets(self, p: SetPlan) -> None:
        self.sets_created += p.created
        self.sets_swapped += p.swapped
        self.sets_destroyed += p.destroyed
        self.members_added += p.added
        self.members_removed += p.removed


@dataclass(slots=True)
class PolicyStats:
    applies: int = 0
    restore_failures: int = 0  # iptables-restore runs that failed
    ipset_failures: int = 0
    read_failures: int = 0
    resyncs: int = 0
    drift_repaired: int = 0  # chains, hook chains and sets found wrong by a read-back
    problems: int = 0  # rules or references that could not be rendered as sent
    last_error: str = ""
    last: ApplyReport = field(default_factory=ApplyReport)


class _Aborted(Exception):
    """The ip sets a streamed iptables-restore waits for could not be created."""


class _Gate:
    """Opened by the writer once the ip sets are in place (or could not be); restores wait on it."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self._ok = False

    def open(self, ok: bool) -> None:
        self._ok = ok
        self._event.set()

    def wait(self) -> bool:
        self._event.wait()
        return self._ok


def _parts(plans: list[TablePlan]) -> tuple[str, str]:
    """One IP version's transactions as the part that names no ip set and the rest: only the
    first table's head can go early (a table's COMMIT precedes the next table)."""
    texts = [p for p in plans if p.lines]
    if not texts:
        return "", ""
    first, rest = texts[0].parts()
    return first, rest + "".join(p.text for p in texts[1:])


class _Throttle:
    """Logs a message at most once per ``period`` per key (and says how many were suppressed)."""

    def __init__(self, period: float = 60.0) -> None:
        self.period = period
        self._last: dict[str, tuple[float, int]] = {}

    def warning(self, key: str, msg: str) -> None:
        now = time.monotonic()
        last, suppressed = self._last.get(key, (-1e9, 0))
        if now - last < self.period:
            self._last[key] = (last, suppressed + 1)
            return
        self._last[key] = (now, 0)
        if len(self._last) > 1000:
            self._last = {key: (now, 0)}
        log.warning("%s%s", msg, f" ({suppressed} similar messages suppressed)" if suppressed else "")


class PolicyDataplane:
    def __init__(
        self,
        netns: str | None = None,
        cfg: PolicyConfig | None = None,
        *,
        run: Run | None = None,
        backend: Backend | None = None,
        clock: Callable[[], float] = time.monotonic,
        metrics: PolicyMetrics | None = None,
    ) -> None:
        self.cfg = cfg = cfg or PolicyConfig()
        self.metrics = metrics or PolicyMetrics()
        self.metrics.bind(self)
        self.run: Run = run or Runner(netns)
        self.versions = (4, 6) if cfg.ipv6 else (4,)
        if backend is None:
            backend, why = detect_backend(cfg.backend, self.run, cfg.lock_timeout)
            log.info("iptables backend: %s (%s), version %s", backend.name, why, ".".join(map(str, backend.version)))
            tools = [backend.binary(v, t) for v in self.versions for t in ("restore", "save")] + ["ipset"]
            missing = [t for t in tools if shutil.which(t) is None]
            if missing:  # a start-up error, not an endless retry
                raise ToolError(f"{', '.join(missing)} not installed (IptablesBackend {backend.name})")
        self.backend = backend
        self.renderer = Renderer(cfg.render)
        self.state = DesiredState(self.renderer, self.versions)
        self.stats = PolicyStats()
        self.programming = False
        self.programmed_once = False
        self._clock = clock
        self._tables: dict[tuple[int, str], KernelTable] | None = None  # None: must read back first
        self._sets: dict[int, dict[str, KernelSet]] | None = None
        self._full = True  # plan everything (after a read-back), not just what is dirty
        self._failing = False
        self._backoff = _BACKOFF_MIN
        self._retry_at: float | None = None
        self._refresh_at: float | None = None
        self._doomed: set[tuple[int, str]] = set()  # (ip version, set) no rule uses any more
        self._destroy_at: float | None = None
        self._throttle = _Throttle()
        self.tool_runs = 0
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="policy-tools")  # 2 ipset, 2 restores

    def _exec(self, argv: list[str], stdin: str | None = None) -> CommandResult:
        with self._lock:
            self.tool_runs += 1
        return self.run(argv, stdin)

    # -- the agent's interface ---------------------------------------------------------------------
    def apply(self, batch: Batch | Iterable[Message]) -> ApplyReport | None:
        """Take one batch of messages; write the kernel at once if programming has started.

        The chains are rendered by the write, while the kernel creates the batch's ip sets."""
        with gcpause.paused():
            self.state.apply(batch.messages if isinstance(batch, Batch) else batch, render=False)
        self._log_problems()
        if not self.programming or self._failing:
            return None  # before start_programming, or waiting for the retry
        return self._write()

    def start_programming(self) -> ApplyReport:
        """First write (felix's first in-sync): read back the kernel, adopt, write the difference."""
        self.programming = True
        self._tables = self._sets = None
        report = self._write()
        self._refresh_at = self._clock() + self.cfg.refresh_interval if self.cfg.refresh_interval > 0 else None
        return report

    @property
    def ready(self) -> bool:
        """Everything felix wants is in the kernel (false while writes fail)."""
        return self.programmed_once and not self._failing

    @property
    def not_ready_reason(self) -> str:
        if not self.programming:
            return "policy not programmed yet"
        if self._failing:
            return f"iptables/ipset writes failing: {self.stats.last_error}"
        return ""

    def next_deadline(self) -> float | None:
        times = [t for t in (self._retry_at, self._refresh_at, self._destroy_at) if t is not None]
        return min(times) if times else None

    def tick(self) -> None:
        """Retries, destroying unused sets, the periodic read-back; call when ``next_deadline`` passes."""
        if not self.programming:
            return
        now = self._clock()
        if self._retry_at is not None and now >= self._retry_at:
            self._write()
        elif self._destroy_at is not None and now >= self._destroy_at and not self._failing:
            self._destroy_unused_sets()
        elif self._refresh_at is not None and now >= self._refresh_at:
            self.resync()

    def resync(self) -> int:
        """Read the kernel back, count what drifted from felix's belief, and repair it."""
        self.stats.resyncs += 1
        believed_tables, believed_sets = self._tables, self._sets
        if self.cfg.refresh_interval > 0:
            self._refresh_at = self._clock() + self.cfg.refresh_interval
        if not self._read_back():
            return 0
        drift = 0
        insert = self.cfg.chain_insert_mode == "insert"
        if believed_tables is not None and self._tables is not None:
            for key, actual in self._tables.items():
                believed = believed_tables.get(key, KernelTable())
                drifted = drifted_chains(believed, actual, Renderer.hooks(key[1]), insert)
                if drifted:
                    log.warning("iptables drift in %s v%d: %s", key[1], key[0], ", ".join(drifted[:10]))
                drift += len(drifted)
        if believed_sets is not None and self._sets is not None:
            for v, sets in self._sets.items():
                mine = believed_sets.get(v, {})
                wrong = [n for n in set(mine) | set(sets) if (mine.get(n) != sets.get(n))]
                if wrong:
                    log.warning("ip set drift v%d: %s", v, ", ".join(sorted(wrong)[:10]))
                drift += len(wrong)
        self.stats.drift_repaired += drift
        self.metrics.drift_repaired.inc(drift)
        self._write()
        return drift

    # -- writing -----------------------------------------------------------------------------------
    def _write(self) -> ApplyReport:
        t0 = time.perf_counter()
        report = ApplyReport()
        runs = self.tool_runs
        with gcpause.paused():  # a cold start renders 50,000 rules and plans 100,000 members
            ok = self._write_steps(report)
        report.ok = ok
        report.seconds = time.perf_counter() - t0
        report.tool_runs = self.tool_runs - runs
        self.stats.last = report
        self.stats.applies += 1
        m = self.metrics
        m.apply_seconds.observe(report.seconds)
        m.lines_executed.inc(report.rule_ops)
        m.chains_written.inc(report.chains_written)
        m.members_written.inc(report.members_added + report.members_removed)
        if ok:
            self.programmed_once = True
            self._failing = False
            self._retry_at = None
            self._backoff = _BACKOFF_MIN
        else:
            self._failing = True
            self._retry_at = self._clock() + self._backoff
            self._backoff = min(self._backoff * 2, _BACKOFF_MAX)
        return report

    def _write_steps(self, report: ApplyReport) -> bool:
        if self._doomed and self._sets is not None:  # left by an earlier write if tick() did not run
            self._destroy_unused_sets()
        if self._tables is None or self._sets is None:
            t = time.perf_counter()
            ok = self._read_back()
            report.read_seconds = time.perf_counter() - t
            if not ok:
                return False
        assert self._tables is not None and self._sets is not None
        st, full = self.state, self._full
        insert = self.cfg.chain_insert_mode == "insert"
        # 1. The ip sets the batches announced, in the background: creating thousands of sets is
        #    mostly the kernel waiting (it grows its table of sets 64 at a time, each growth
        #    waiting for an RCU grace period), so the chains are rendered and planned meanwhile.
        set_plans = self._plan_sets(None if full else st.dirty_sets)
        for v in self.versions:
            st.dirty_sets[v].clear()  # a failure forgets the belief: the retry plans everything
        pending = self._start_ipset([g for p in set_plans.values() for g in p.groups])
        # 2. The chains (and the sets only they name, never announced: created empty).
        t_render = time.perf_counter()
        st.render()
        self._log_problems()
        plans: dict[int, list[TablePlan]] = {}
        for v in self.versions:
            plans[v] = []
            for table in TABLES:
                key = (v, table)
                plan = plan_table(
                    table,
                    st.tables[key],
                    Renderer.hooks(table),
                    self._tables[key],
                    None if full else st.dirty[key],
                    insert,
                    whole_chains=not self.backend.reliable_replace,
                )
                for problem in plan.problems:
                    self._throttle.warning(problem, problem)
                plans[v].append(plan)
        report.render_seconds = time.perf_counter() - t_render
        # 3. iptables-restore. With nft, started now: the tool parses the rules that name no ip set
        #    while the sets are being created, and gets the rest (and COMMIT) once they exist.
        parts = {v: _parts(ps) for v, ps in plans.items()}
        parts = {v: p for v, p in parts.items() if p[0] or p[1]}
        gate = _Gate()
        stream = getattr(self.run, "stream", None) if self.backend.name == "nft" else None
        early = None
        if stream is not None and pending[1] and any(p[0] for p in parts.values()):
            early = {v: self._pool.submit(self._restore_streamed, v, a, b, gate) for v, (a, b) in parts.items()}
        ok = done = False
        late: dict[int, SetPlan] = {}
        try:
            ok = self._finish_ipset(pending, report)
            if ok:
                for v in self.versions:  # destroys are recorded once they ran (see _destroy_unused_sets)
                    set_plans[v].apply_to(self._sets[v], destroyed=False)
                late = self._plan_sets(st.dirty_sets)  # what rendering changed (rare)
                for v in self.versions:
                    st.dirty_sets[v].clear()
                ok = self._finish_ipset(self._start_ipset([g for p in late.values() for g in p.groups]), report)
                for v, lp in late.items():
                    if ok:
                        lp.apply_to(self._sets[v], destroyed=False)
            done = True
        finally:  # never leave a started restore waiting: on any failure it is killed before COMMIT
            gate.open(ok and done)
        t = time.perf_counter()
        if early is not None:
            restored = {v: f.result() for v, f in early.items()}
        elif ok:
            restored = self._restore_all({v: a + b for v, (a, b) in parts.items()})
        if not ok:
            return False
        report.iptables_seconds += time.perf_counter() - t
        for v, ps in plans.items():
            if restored.get(v, True):
                for p in ps:
                    p.apply_to(self._tables[(v, p.table)])
                    st.dirty[(v, p.table)].clear()
                    report.add_table(p)
        if not all(restored.values()):
            self._tables = None  # re-read before retrying: the kernel may hold something else
            return False
        for plan_of in (set_plans, late):
            for v, sp in plan_of.items():
                report.add_sets(sp)
                self._doomed.update((v, name) for name, s in sp.changes.items() if s is None)
        if self._doomed and self._destroy_at is None:
            self._destroy_at = self._clock()  # off the critical path: the rules no longer use them
        self._full = False
        return True

    def _destroy_unused_sets(self) -> None:
        """Destroy the sets the last writes stopped using -- unless one is wanted again meanwhile."""
        doomed, self._doomed, self._destroy_at = self._doomed, set(), None
        self.state.render()  # a batch applied since may name one of them again
        doomed = {(v, n) for v, n in doomed if n not in self.state.sets.get(v, {})}
        if not doomed or self._sets is None:
            return
        if not self._ipset([f"destroy {n}" for _, n in sorted(doomed)], "destroying unused ip sets"):
            return  # a set still in use by someone else's rule: not fatal for policy; re-read next time
        for v, n in doomed:
            self._sets[v].pop(n, None)

    def _read_back(self) -> bool:
        tables: dict[tuple[int, str], KernelTable] = {}
        try:
            for v in self.versions:
                r = self._exec(self.backend.save_argv(v))
                if r.rc != 0:
                    raise ToolError(f"{self.backend.binary(v, 'save')} exited {r.rc}: {r.err.strip()[:300]}")
                parsed = parse_save(r.out)
                for t in TABLES:
                    tables[(v, t)] = parsed.get(t, KernelTable())
            r = self._exec(["ipset", "save"])
            if r.rc != 0:
                raise ToolError(f"ipset save exited {r.rc}: {r.err.strip()[:300]}")
        except (ToolError, SaveError) as exc:
            self.stats.read_failures += 1
            self.metrics.save_errors.inc()
            self._note(f"reading back the kernel failed: {exc}")
            return False
        sets = parse_ipset_save(r.out)
        self._tables = tables
        self._sets = {v: {n: s for n, s in sets.items() if n.startswith(f"cali{v}")} for v in self.versions}
        self._full = True
        return True

    def _restore_all(self, texts: dict[int, str]) -> dict[int, bool]:
        """One iptables-restore per IP version; both at once when both have work (two cores, and
        the IPv6 tables mirror the IPv4 ones, so this halves a dual-stack cold start)."""
        if len(texts) > 1:
            futures = {v: self._pool.submit(self._restore, v, text) for v, text in texts.items()}
            return {v: f.result() for v, f in futures.items()}
        return {v: self._restore(v, text) for v, text in texts.items()}

    def _failure(self, argv: list[str], stdin: str) -> str:
        """Run a restore tool; "" if it succeeded, else what went wrong."""
        try:
            r = self._exec(argv, stdin)
        except ToolError as exc:
            return str(exc)
        return "" if r.rc == 0 else (r.err.strip() or f"exit status {r.rc}")

    def _restore(self, v: int, text: str) -> bool:
        argv = self.backend.restore_argv(v)
        return self._restored(argv, self._failure(argv, text), text)

    def _restore_streamed(self, v: int, first: str, rest: str, gate: _Gate) -> bool:
        """iptables-restore fed ``first`` at once and ``rest`` once ``gate`` opens (the ip sets
        exist); killed before reading ``rest`` if the gate opens on a failure."""

        def chunks() -> Iterator[str]:
            if first:
                yield first
            if not gate.wait():
                raise _Aborted
            yield rest

        argv = self.backend.restore_argv(v)
        with self._lock:
            self.tool_runs += 1
        try:
            r = self.run.stream(argv, chunks())  # type: ignore[attr-defined]
        except _Aborted:
            return False  # the ip set failure is the one counted and reported
        except ToolError as exc:
            return self._restored(argv, str(exc), first + rest)
        return self._restored(argv, "" if r.rc == 0 else (r.err.strip() or f"exit status {r.rc}"), first + rest)

    def _restored(self, argv: list[str], err: str, text: str) -> bool:
        if err:
            with self._lock:
                self.stats.restore_failures += 1
                self.metrics.restore_errors.inc()
                self._note(f"{argv[0]} failed: {err[:500]}", detail=text)
        return not err

    def _plan_sets(self, only: dict[int, set[str]] | None) -> dict[int, SetPlan]:
        assert self._sets is not None
        st = self.state
        return {
            v: plan_sets(v, st.sets[v], self._sets[v], None if only is None else only[v], self.cfg.max_set_size)
            for v in self.versions
        }

    def _start_ipset(self, groups: list[list[str]]) -> tuple[float, list[Future[bool]]]:
        """Start the "before" script in the background: one ``ipset restore``, or, when it is big,
        split by set between two run side by side (a cold start's members). ipset looks each
        line's set up in a list of the sets it has seen, so a process's parsing costs its lines
        times its sets: two processes with half the sets each cost half of one, and within each,
        the biggest sets come first, where the lookup is shortest."""
        started = time.perf_counter()
        total = sum(map(len, groups))
        if not total:
            return started, []
        if total < _SPLIT_IPSET_LINES:
            chunks = [[line for g in groups for line in g]]
        else:
            halves: list[list[str]] = [[], []]
            for g in sorted(groups, key=len, reverse=True):
                min(halves, key=len).extend(g)
            chunks = halves
        return started, [self._pool.submit(self._ipset, c, "creating and updating ip sets") for c in chunks]

    def _finish_ipset(self, pending: tuple[float, list[Future[bool]]], report: ApplyReport) -> bool:
        started, futures = pending
        results = [f.result() for f in futures]  # wait for all, even when one failed
        if futures:
            report.ipset_seconds += time.perf_counter() - started
        return all(results)

    def _ipset(self, lines: list[str], what: str) -> bool:
        err = self._failure(["ipset", "-exist", "restore"], "\n".join(lines) + "\n")
        if err:
            with self._lock:
                self.stats.ipset_failures += 1
                self.metrics.ipset_errors.inc()
                self._note(f"ipset restore ({what}) failed: {err[:500]}")
                self._sets = None
        return not err

    def _note(self, msg: str, detail: str = "") -> None:
        self.stats.last_error = msg
        self._throttle.warning(msg.split(":", 1)[0], msg)
        if detail:
            log.debug("input was:\n%s", detail)

    def _log_problems(self) -> None:
        problems = self.state.problems
        if problems:
            self.stats.problems += len(problems)
            self.metrics.problems.inc(len(problems))
            for p in problems[:5]:
                self._throttle.warning(p, p)
            problems.clear()

    def programmed(self) -> tuple[dict[tuple[int, str], tuple[int, int]], int, int]:
        """What felix believes it holds in the kernel: (ip version, table) -> (chains, rules) of its
        own chains; ip sets; members. Computed on demand (metrics scrapes), never on the write path."""
        tables: dict[tuple[int, str], tuple[int, int]] = {}
        for key, t in (self._tables or {}).items():
            ours = [h for c, h in t.chains.items() if c.startswith("cali-")]
            tables[key] = (len(ours), sum(map(len, ours)))
        sets = [s for per_version in (self._sets or {}).values() for s in per_version.values()]
        return tables, len(sets), sum(len(s.members) for s in sets)
