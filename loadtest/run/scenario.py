"""What a `loadtest run` does: the scenario options, the churn mix and the fault schedule.

Pure data and parsing (no I/O), so the command line, the tests and `run.py` share one definition.

Churn mix
---------
``--mix`` weights the synthetic cluster's churn operations (`typha.simcluster.CHURN_OPS`). It is a
comma-separated list of ``op=weight`` entries; ``default`` starts from the generator's default mix
(which the other entries then override). Without ``default`` only the named operations run. Dashes
and underscores are interchangeable, and a few short aliases are accepted (``create``, ``delete``,
``label``, ``status``, ``policy``, ``join``, ``leave``)::

    --mix default,policy_edit=10        # the default mix with more policy edits
    --mix pod-status=1                  # status-only updates: typha should drop nearly all of them
    --mix create=1,delete=1             # pod create/delete only

Faults
------
``--fault SECONDS:KIND[:ARG]`` (repeatable), SECONDS after churn starts:

- ``restart-typha[:I]``: SIGTERM replica I (default: replicas in turn), which drains its agents over
  about two seconds, then start it again on the same port. Agents move to their next address.
- ``kill-typha[:I]``: the same with SIGKILL (no goodbye: agents notice a closed socket).
- ``cut-watches[:RESOURCE]``: the API server closes every watch (of RESOURCE only, if given); typha
  resumes each from its last resourceVersion, with no relist.
- ``compact``: the API server compacts its history and then cuts every watch, so every resume gets
  410 Gone and every watcher relists (the "forced 410 relist" fault).
- ``replace-datastore``: the API server is stopped and started again (1 s later, same address,
  certificate and token) on its contents as they were when churn started, the shape of an etcd
  restore from a backup: its resourceVersions rewind, and the writes that follow take versions its
  clients already saw, for other contents. Resuming a watch would be refused ("too large resource
  version") and then, once the new history passes the old versions, succeed into a history the
  client never followed; only a relist gets the new contents right.
- ``rolling-restart``: SIGTERM each replica in turn and start it again, the next one as soon as the
  previous is ready (a Deployment's rolling update with maxUnavailable 1, maxSurge 0: readiness
  gates it, the agents' moves do not).

Ramp
----
``--ramp 100,200,400,800`` replaces the constant ``--rate`` with equal-length steps over the churn
duration; the report then shows latency per step and the first step where the p99 update latency to
the last agent passed ``--slo`` seconds or an agent fell out of sync (the knee).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

from typha.simcluster import CHURN_OPS, DEFAULT_MIX

MODES = ("typha", "direct", "both")
TLS_MODES = ("off", "on", "both")


@dataclass(frozen=True)
class FaultKind:
    """One kind of fault a scenario can schedule. Its injection lives in `faults.py` under the same name."""

    name: str
    target: str  # "typha": needs typha replicas (skipped in direct mode); "api": the API server
    arg: str  # what ARG names: "" (takes none), "replica" (an index) or "resource"
    help: str
    aliases: tuple[str, ...] = ()
    backup: bool = False  # needs the API server's contents backed up when churn starts
    restarts_all: bool = False  # restarts every replica (else one)


FAULT_KINDS: dict[str, FaultKind] = {
    k.name: k
    for k in (
        FaultKind(
            "restart-typha", "typha", "replica", "SIGTERM replica I (default: in turn), start it again", ("restart",)
        ),
        FaultKind("kill-typha", "typha", "replica", "SIGKILL replica I (default: in turn), start it again", ("kill",)),
        FaultKind("cut-watches", "api", "resource", "the API server closes every watch (of RESOURCE only)", ("cut",)),
        FaultKind(
            "compact",
            "api",
            "",
            "compact the API history and cut every watch: every watcher relists (410)",
            ("relist", "410"),
        ),
        FaultKind(
            "replace-datastore",
            "api",
            "",
            "restart the API server on its contents at churn start: revisions rewind (an etcd restore)",
            ("restore",),
            backup=True,
        ),
        FaultKind(
            "rolling-restart",
            "typha",
            "",
            "SIGTERM and start every replica in turn, each once the previous is ready (a rolling update)",
            ("rollout",),
            restarts_all=True,
        ),
    )
}
TYPHA_FAULTS = tuple(name for name, k in FAULT_KINDS.items() if k.target == "typha")

_OP_ALIASES = {
    "create": "pod_create",
    "delete": "pod_delete",
    "label": "pod_label",
    "labels": "pod_label",
    "status": "pod_status",
    "policy": "policy_edit",
    "policies": "policy_edit",
    "join": "node_join",
    "leave": "node_leave",
    "node": "node_status",
}


class ScenarioError(ValueError):
    """A scenario option is invalid; the message names it."""


def parse_mix(text: str | None) -> dict[str, float]:
    """``"default,policy_edit=10"`` -> weights by churn operation (see the module docstring)."""
    if text is None or not text.strip():
        return dict(DEFAULT_MIX)
    mix: dict[str, float] = {}
    for raw in text.split(","):
        entry = raw.strip()
        if not entry:
            continue
        if entry == "default":
            mix = {**DEFAULT_MIX, **mix}
            continue
        name, sep, weight = entry.partition("=")
        op = name.strip().replace("-", "_").lower()
        op = _OP_ALIASES.get(op, op)
        if op not in CHURN_OPS:
            raise ScenarioError(f"--mix: unknown operation {name.strip()!r} (known: {', '.join(CHURN_OPS)})")
        try:
            w = float(weight) if sep else 1.0
        except ValueError:
            raise ScenarioError(f"--mix: weight of {name.strip()!r} is not a number: {weight!r}") from None
        if w < 0 or not math.isfinite(w):
            raise ScenarioError(f"--mix: weight of {name.strip()!r} must be a finite number >= 0")
        mix[op] = w
    if not any(w > 0 for w in mix.values()):
        raise ScenarioError("--mix: no operation has a positive weight")
    return {op: mix[op] for op in CHURN_OPS if op in mix}


def format_mix(mix: dict[str, float]) -> str:
    total = sum(mix.values()) or 1.0
    return ", ".join(f"{op} {w / total:.0%}" for op, w in mix.items() if w > 0)


@dataclass(frozen=True)
class Fault:
    at: float  # seconds after churn starts
    kind: str
    arg: str | None = None

    def describe(self) -> str:
        return f"{self.at:g}s {self.kind}" + (f":{self.arg}" if self.arg is not None else "")


def parse_fault(text: str) -> Fault:
    """``"30:restart-typha"``, ``"12.5:restart-typha:1"``, ``"45:cut-watches:pods"``, ``"60:compact"``."""
    parts = text.strip().split(":", 2)
    if len(parts) < 2:
        raise ScenarioError(f"--fault {text!r}: expected SECONDS:KIND[:ARG]")
    try:
        at = float(parts[0])
    except ValueError:
        raise ScenarioError(f"--fault {text!r}: {parts[0]!r} is not a number of seconds") from None
    if at < 0 or not math.isfinite(at):
        raise ScenarioError(f"--fault {text!r}: time must be >= 0")
    kind = parts[1].strip().lower().replace("_", "-")
    kind = next((k.name for k in FAULT_KINDS.values() if kind in k.aliases), kind)
    if kind not in FAULT_KINDS:
        raise ScenarioError(f"--fault {text!r}: unknown kind {parts[1]!r} (known: {', '.join(FAULT_KINDS)})")
    arg = parts[2].strip() if len(parts) > 2 and parts[2].strip() else None
    takes = FAULT_KINDS[kind].arg
    if takes == "replica" and arg is not None and not arg.isdigit():
        raise ScenarioError(f"--fault {text!r}: the replica index must be a number")
    if not takes and arg is not None:
        raise ScenarioError(f"--fault {text!r}: {kind} takes no argument")
    return Fault(at, kind, arg)


def parse_ramp(text: str | None) -> list[float]:
    if not text:
        return []
    try:
        rates = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ScenarioError(f"--ramp {text!r}: expected comma-separated rates (events/s)") from None
    if not rates or any(r <= 0 or not math.isfinite(r) for r in rates):
        raise ScenarioError(f"--ramp {text!r}: rates must be positive")
    return rates


@dataclass
class Scenario:
    mode: str = "typha"  # typha | direct | both (typha, then the same cluster and churn with direct agents)
    nodes: int = 1000
    pods_per_node: int = 30
    namespaces: int = 20
    policies: int = 50
    agents: int | None = None  # typha agents; default one per node
    direct_agents: int | None = None  # direct-mode agents; default: agents for --mode direct, min(agents, 100) for both
    processes: int = 2  # agent worker processes
    full_decode: int = 4  # typha agents that decode and keep the full state (at least one per replica)
    replicas: int = 1
    rate: float = 100.0  # churn, in API events per second
    mix: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_MIX))
    duration: float = 60.0  # seconds of churn
    ramp: list[float] = field(default_factory=list)  # rates of equal steps over `duration` (replaces `rate`)
    faults: list[Fault] = field(default_factory=list)
    slo: float = 1.0  # p99 update latency to the last agent that counts as "broken" for the ramp
    seed: int = 1
    sample_interval: float = 1.0
    connect_spread: float = 1.0  # seconds over which each worker staggers its agents' connects
    compression: bool = True
    window_size: int = 10_000  # API-server events kept per resource
    sync_timeout: float | None = None  # for all agents to hold the first snapshot (default: from size)
    drain_timeout: float = 60.0  # after churn, for every agent to reach the final state
    timeout: float | None = None  # hard bound on the whole run (default: from the phases' bounds)
    out: str = "runs/latest"
    typha_args: list[str] = field(default_factory=list)  # extra flags for every typha replica
    tls: str = "off"  # off | on (typha and its agents use mutual TLS) | both (typha, then typha-tls)

    # -- derived -------------------------------------------------------------------------------------
    @property
    def typha_agents(self) -> int:
        return self.agents if self.agents is not None else self.nodes

    @property
    def baseline_agents(self) -> int:
        if self.direct_agents is not None:
            return self.direct_agents
        return self.typha_agents if self.mode == "direct" else min(self.typha_agents, 100)

    @property
    def modes(self) -> tuple[str, ...]:
        base = ("typha", "direct") if self.mode == "both" else (self.mode,)
        if self.tls == "both" and "typha" in base:
            # The same cluster and churn, served in plaintext and then over mutual TLS: the TLS cost.
            return tuple(m for b in base for m in ((b, "typha-tls") if b == "typha" else (b,)))
        return base

    @property
    def objects_estimate(self) -> int:
        return self.nodes * (self.pods_per_node + 4) + self.policies + 100

    def agent_sync_timeout(self, mode: str) -> float:
        """Bound for every agent of `mode` to hold the initial state (--sync-timeout, else from size)."""
        if self.sync_timeout is not None:
            return self.sync_timeout
        if mode == "direct":
            # Each direct agent lists every object from the emulator, which builds every page in this
            # process: measured 48 us per agent-object (100 agents x 34,150 objects listed in 164 s on
            # two shared cores, issue 9); twice that, so a busy machine still passes.
            return 60.0 + self.baseline_agents * self.objects_estimate * 1e-4
        # Each agent pulls a snapshot of every object: allow for the whole fan-out on two cores.
        agents = self.typha_agents
        return 60.0 + agents * self.objects_estimate * 2e-6 + agents * 0.02

    def agent_sync_cap(self, mode: str) -> float:
        """How far the start-up bound may stretch while the agents still make progress (direct agents
        listing on a busy machine); --sync-timeout is a hard bound."""
        if self.sync_timeout is not None or mode != "direct":
            return self.agent_sync_timeout(mode)
        return 3 * self.agent_sync_timeout(mode)

    def typha_ready_timeout(self) -> float:
        return 60.0 + self.objects_estimate / 2_000

    def rate_at(self, elapsed: float) -> float:
        """Target churn rate (events/s) `elapsed` seconds into the churn."""
        if not self.ramp:
            return self.rate
        step = min(len(self.ramp) - 1, int(elapsed / (self.duration / len(self.ramp))))
        return self.ramp[step]

    def ramp_steps(self) -> list[tuple[float, float, float]]:
        """(start, end, rate) of each ramp step, in seconds after churn starts."""
        if not self.ramp:
            return []
        d = self.duration / len(self.ramp)
        return [(i * d, (i + 1) * d, r) for i, r in enumerate(self.ramp)]

    def replicas_restarted(self, f: Fault) -> int:
        if f.kind not in TYPHA_FAULTS:
            return 0
        return self.replicas if FAULT_KINDS[f.kind].restarts_all else 1

    def mode_budget(self, mode: str) -> float:
        seed = 10 + self.objects_estimate / 20_000
        typha = (
            self.typha_ready_timeout() * (1 + sum(self.replicas_restarted(f) for f in self.faults))
            if mode.startswith("typha")
            else 0
        )
        truth = 10 + self.objects_estimate / 10_000
        return seed + typha + self.agent_sync_cap(mode) + self.duration + self.drain_timeout + truth + 60

    def total_budget(self) -> float:
        if self.timeout is not None:
            return self.timeout
        return sum(self.mode_budget(m) for m in self.modes)

    def validate(self) -> None:
        if self.mode not in MODES:
            raise ScenarioError(f"--mode must be one of {', '.join(MODES)}")
        if self.tls not in TLS_MODES:
            raise ScenarioError(f"--tls must be one of {', '.join(TLS_MODES)}")
        if self.tls != "off" and self.mode == "direct":
            raise ScenarioError("--tls is about typha and its agents: it needs --mode typha or both")
        for name in ("nodes", "replicas", "processes"):
            if getattr(self, name) < 1:
                raise ScenarioError(f"--{name} must be at least 1")
        if self.pods_per_node < 0 or self.policies < 0 or self.namespaces < 1:
            raise ScenarioError("--pods-per-node and --policies must be >= 0, --namespaces >= 1")
        if self.typha_agents < 1 or self.baseline_agents < 1:
            raise ScenarioError("--agents and --direct-agents must be at least 1")
        if self.duration <= 0 or self.rate < 0:
            raise ScenarioError("--duration must be positive and --rate >= 0")
        if self.full_decode < 0:
            raise ScenarioError("--full-decode must be >= 0")
        for f in self.faults:
            if f.at > self.duration:
                raise ScenarioError(f"--fault {f.describe()}: after the end of churn ({self.duration:g}s)")
            if f.kind in TYPHA_FAULTS and f.arg is not None and int(f.arg) >= self.replicas:
                raise ScenarioError(f"--fault {f.describe()}: there are only {self.replicas} replicas")
        if self.sample_interval <= 0:
            raise ScenarioError("--sample-interval must be positive")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["faults"] = [asdict(f) for f in self.faults]
        d["typha_agents"] = self.typha_agents
        d["baseline_agents"] = self.baseline_agents
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Scenario:
        known = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        known["faults"] = [Fault(**f) for f in known.get("faults", [])]
        return cls(**known)

    def describe(self) -> str:
        churn = f"ramp {','.join(f'{r:g}' for r in self.ramp)} ev/s" if self.ramp else f"{self.rate:g} ev/s"
        parts = [
            f"{self.nodes:,} nodes x {self.pods_per_node} pods, {self.policies} policies",
            f"{self.typha_agents:,} agents / {self.replicas} typha" if "typha" in self.modes else "",
            f"{self.baseline_agents:,} direct agents" if "direct" in self.modes else "",
            f"churn {churn} for {self.duration:g}s",
        ]
        if self.faults:
            parts.append("faults " + ", ".join(f.describe() for f in self.faults))
        return "; ".join(p for p in parts if p)
