"""Desired ip sets + what the kernel holds -> ``ipset restore`` scripts. Pure.

Design note
-----------
Ip sets are written in two scripts around the iptables transaction, because a rule can only refer
to a set that exists and a set cannot be destroyed while a rule refers to it:

* ``before``: create new sets, then bring existing ones to their desired members with ``add`` and
  ``del`` lines -- a pod's label change is one ``add`` or ``del`` per family, never a set rewrite;
* ``after``: destroy sets that no rule uses any more (and scratch sets left by an interrupted run).

A set is rewritten whole only when that is the right tool: when its header differs from what
felix creates (another ``maxelem``, say) or when the change is bigger than the set itself (a
relist that replaced most members). Then the new contents go into a scratch set (``cali4t<n>``)
that is swapped in with ``ipset swap``, which exchanges the two sets' contents atomically under
the rules that use them, and the scratch set is destroyed. A set of another *type* cannot be
swapped; felix's names encode the type (``s:`` / ``n:``), so that only happens when someone else
recreated one of our sets, and the planner destroys and recreates it.

``ipset restore`` is not transactional (it stops at the first failing line), so the scripts run
with ``-exist``: creating an existing set, adding a present member or deleting a missing one is
not an error, and a script can be retried after a partial failure.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass, field

from felix.dataplane.iptables.desired import DesiredSet
from felix.dataplane.iptables.names import temp_set_name

from .save import KernelSet

__all__ = ["MAXELEM", "SetPlan", "plan_sets"]

MAXELEM = 1048576  # Calico's MaxIPSetSize


@dataclass(slots=True)
class SetPlan:
    # The "before" script, one group of lines per set: groups are independent of each other, so a
    # big script (a cold start's 100k members) can be split between processes run side by side.
    groups: list[list[str]] = field(default_factory=list)
    after: list[str] = field(default_factory=list)
    # The sets the scripts change (None: destroyed), for felix's belief once both scripts ran.
    changes: dict[str, KernelSet | None] = field(default_factory=dict)
    created: int = 0
    swapped: int = 0
    destroyed: int = 0
    added: int = 0
    removed: int = 0

    @property
    def before(self) -> list[str]:
        return [line for group in self.groups for line in group]

    @property
    def members_written(self) -> int:
        return self.added + self.removed

    def apply_to(self, kernel: dict[str, KernelSet], destroyed: bool | None = None) -> None:
        """Record the changes in ``kernel`` (felix's belief): the created and rewritten sets
        (``destroyed=False``), the destroyed ones (``True``), or both (``None``)."""
        for name, s in self.changes.items():
            if s is None and destroyed is not False:
                kernel.pop(name, None)
            elif s is not None and destroyed is not True:
                kernel[name] = s


def _family(version: int) -> str:
    return "inet" if version == 4 else "inet6"


def plan_sets(
    version: int,
    desired: Mapping[str, DesiredSet],
    kernel: Mapping[str, KernelSet],
    only: Collection[str] | None = None,
    maxelem: int = MAXELEM,
) -> SetPlan:
    """Scripts turning ``kernel`` (felix's sets of this IP version) into ``desired``, looking at the
    sets named in ``only`` (all of them if None)."""
    family = _family(version)
    prefix = f"cali{version}"
    plan = SetPlan()
    state = plan.changes
    names = set(desired) | {n for n in kernel if n.startswith(prefix)} if only is None else set(only)
    temps = iter(n for n in (temp_set_name(version, i) for i in range(1 << 16)) if n not in kernel and n not in desired)

    def create(name: str, kind: str) -> str:
        return f"create {name} {kind} family {family} maxelem {maxelem}"

    for name in sorted(names):
        want, have = desired.get(name), kernel.get(name)
        if want is None:
            if have is not None and name.startswith(prefix):
                plan.after.append(f"destroy {name}")
                plan.destroyed += 1
                state[name] = None
            continue
        fresh = KernelSet(want.type, family, maxelem, set(want.members))
        lines: list[str] = []
        if have is None:
            lines.append(create(name, want.type))
            lines += [f"add {name} {m}" for m in sorted(want.members)]
            plan.created += 1
            plan.added += len(want.members)
        elif have.type != want.type or have.family != family:
            lines += [f"destroy {name}", create(name, want.type)]
            lines += [f"add {name} {m}" for m in sorted(want.members)]
            plan.created += 1
            plan.added += len(want.members)
        else:
            adds = want.members - have.members
            dels = have.members - want.members
            if not adds and not dels and have.maxelem == maxelem:
                continue
            if have.maxelem != maxelem or len(adds) + len(dels) > max(len(want.members), 64):
                tmp = next(temps)
                lines.append(create(tmp, want.type))
                lines += [f"add {tmp} {m}" for m in sorted(want.members)]
                lines += [f"swap {tmp} {name}", f"destroy {tmp}"]
                plan.swapped += 1
                plan.added += len(want.members)
            else:
                lines += [f"del {name} {m}" for m in sorted(dels)]
                lines += [f"add {name} {m}" for m in sorted(adds)]
                plan.added += len(adds)
                plan.removed += len(dels)
        plan.groups.append(lines)
        state[name] = fresh
    return plan
